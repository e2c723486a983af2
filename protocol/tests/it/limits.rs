//! The frame bounds in `limits` are exact: a message with every field full encodes to
//! precisely its `*_FRAME_MAX`, and a realistic Login has the size its parts add up to.
use crate::common;

use common::{
    bytes, max_accepted, max_answer, max_challenge, max_login, max_rejected, read_testdata,
};
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::limits::{
    ACCEPTED_FRAME_MAX, ANSWER_FRAME_MAX, CHALLENGE_FRAME_MAX, DOWNLINK_FRAME_MAX, FRAME_MAX,
    LOGIN_FRAME_MAX, REJECTED_FRAME_MAX, UPLINK_FRAME_MAX, varint_len,
};
use ekattest_protocol::msg::{
    AttributeName, Downlink, Login, Message, Method, Uplink, decode, encode,
};

fn encoded_len<M: Message + PartialEq + std::fmt::Debug>(msg: &M) -> usize {
    let mut buf = vec![0u8; FRAME_MAX];
    let frame = encode(msg, &mut buf).unwrap().to_vec();
    assert_eq!(
        &decode::<M>(&frame).unwrap(),
        msg,
        "full message round trip"
    );
    frame.len()
}

#[test]
fn full_login_is_exactly_login_frame_max() {
    assert_eq!(encoded_len(&max_login()), LOGIN_FRAME_MAX);
}

#[test]
fn full_answer_is_exactly_answer_frame_max() {
    assert_eq!(encoded_len(&max_answer()), ANSWER_FRAME_MAX);
}

#[test]
fn full_challenge_is_exactly_challenge_frame_max() {
    assert_eq!(encoded_len(&max_challenge()), CHALLENGE_FRAME_MAX);
}

#[test]
fn full_accepted_is_exactly_accepted_frame_max() {
    assert_eq!(encoded_len(&max_accepted()), ACCEPTED_FRAME_MAX);
}

#[test]
fn full_rejected_is_exactly_rejected_frame_max() {
    assert_eq!(encoded_len(&max_rejected()), REJECTED_FRAME_MAX);
}

#[test]
fn direction_bounds_cover_every_kind() {
    assert_eq!(
        UPLINK_FRAME_MAX,
        [LOGIN_FRAME_MAX, ANSWER_FRAME_MAX]
            .into_iter()
            .max()
            .unwrap()
    );
    assert_eq!(
        DOWNLINK_FRAME_MAX,
        [CHALLENGE_FRAME_MAX, ACCEPTED_FRAME_MAX, REJECTED_FRAME_MAX]
            .into_iter()
            .max()
            .unwrap()
    );
    assert_eq!(FRAME_MAX, UPLINK_FRAME_MAX.max(DOWNLINK_FRAME_MAX));
    assert_eq!(<Uplink as Message>::FRAME_MAX, UPLINK_FRAME_MAX);
    assert_eq!(<Downlink as Message>::FRAME_MAX, DOWNLINK_FRAME_MAX);
}

/// The bounds assume every enum tag is one byte (fewer than 128 variants).
#[test]
fn enum_tags_fit_one_byte() {
    assert!(RejectCode::ALL.len() < 128);
    assert!(AttributeName::ALL.len() < 128);
    assert!(Method::ALL.len() < 128);
}

/// A Login as a real device sends it: the STMicro ST33 RSA-2048 EK certificate, the
/// RSA-2048 EK TPM2B_PUBLIC and the P-256 AK TPM2B_PUBLIC of the MakeCredential vectors, no
/// NV chain, no SVID key. Run with `-- --nocapture login_size` to see the numbers.
#[test]
fn login_size() {
    let cert = read_testdata("real-ek/leaf/stm-st33htphahb4-rsa2048.der");
    let ek_public = read_testdata("make-credential/rsa2048/ek.tpm2b_public");
    let ak_public = read_testdata("make-credential/ak.tpm2b_public");
    assert_eq!(cert.len(), 1169, "the STM certificate changed");
    let login = Uplink::Login(Login {
        methods: bytes(&[Method::TpmEk]),
        ek_public: bytes(&ek_public),
        ek_cert: Some(bytes(&cert)),
        ek_chain: bytes(&[]),
        ak_public: bytes(&ak_public),
        svid_key: None,
        key_certify: None,
        nonce: [0x5a; 16],
        signer_hint: None,
    });
    let size = encoded_len(&login);
    let field = |n: usize| varint_len(n) + n;
    let expected = 1 // version
        + 1 // Uplink::Login tag
        + 1 + 1 // methods: count, TpmEk
        + field(ek_public.len())
        + 1 + field(cert.len()) // Some + certificate
        + field(0) // empty chain
        + field(ak_public.len())
        + 1 // svid_key: None
        + 1 // key_certify: None
        + 16 // nonce
        + 1; // signer_hint: None
    println!(
        "login_size: {size} bytes (EK cert {} B, EK TPM2B_PUBLIC {} B, AK TPM2B_PUBLIC {} B, \
         framing {} B); FRAME_MAX {FRAME_MAX} B",
        cert.len(),
        ek_public.len(),
        ak_public.len(),
        size - cert.len() - ek_public.len() - ak_public.len()
    );
    assert_eq!(size, expected);
    assert_eq!(size, 1605);
    assert!(size < FRAME_MAX);

    // With a P-256 SVID key (91-byte SubjectPublicKeyInfo) the Login grows by 92 bytes.
    let Uplink::Login(mut with_key) = login else {
        unreachable!()
    };
    with_key.svid_key = Some(bytes(&[0x30; 91]));
    let size_with_key = encoded_len(&Uplink::Login(with_key));
    println!("login_size: {size_with_key} bytes with a P-256 SVID key");
    assert_eq!(size_with_key, size + 1 + 91);
}
