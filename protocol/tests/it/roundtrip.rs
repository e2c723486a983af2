//! Property tests: every message kind survives encode then decode unchanged, and decode
//! never panics on any input (random bytes, and valid frames with bytes changed, cut or
//! inserted).
use crate::common;

use ekattest_protocol::error::RejectCode;
use ekattest_protocol::limits::{
    ACCEPTED_FRAME_MAX, ANSWER_FRAME_MAX, ATTEST_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX,
    CHALLENGE_FRAME_MAX, CREDENTIAL_BLOB_MAX, EK_CERT_MAX, EK_CHAIN_MAX, ENCRYPTED_SECRET_MAX,
    FRAME_MAX, LOGIN_FRAME_MAX, MESSAGE_MAX, METHODS_MAX, NODE_ID_MAX, REJECTED_FRAME_MAX,
    SIGNATURE_MAX, SIGNER_CERT_MAX, SPIFFE_ID_MAX, SVID_KEY_MAX, SVID_MAX, TPM_PUBLIC_MAX,
    TPM_SIGNATURE_MAX,
};
use ekattest_protocol::msg::{
    Accepted, Answer, Attribute, AttributeName, Challenge, Downlink, KeyCertify, Login, Message,
    Method, Outcome, Rejected, SessionId, Uplink, VERSION, decode, encode,
};
use heapless::{String, Vec};
use proptest::prelude::*;

fn bytes<const N: usize>() -> impl Strategy<Value = Vec<u8, N>> {
    prop::collection::vec(any::<u8>(), 0..=N).prop_map(|v| Vec::from_slice(&v).unwrap())
}

/// Any text (multi-byte UTF-8 included) cut at a character boundary to at most N bytes.
fn text<const N: usize>() -> impl Strategy<Value = String<N>> {
    prop::collection::vec(any::<char>(), 0..=N).prop_map(|chars| {
        let mut s = String::new();
        for ch in chars {
            if s.push(ch).is_err() {
                break;
            }
        }
        s
    })
}

fn session() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn login() -> impl Strategy<Value = Uplink> {
    (
        prop::collection::vec(prop::sample::select(Method::ALL), 0..=METHODS_MAX),
        bytes::<TPM_PUBLIC_MAX>(),
        prop::option::of(bytes::<EK_CERT_MAX>()),
        bytes::<EK_CHAIN_MAX>(),
        bytes::<TPM_PUBLIC_MAX>(),
        prop::option::of(bytes::<SVID_KEY_MAX>()),
        prop::option::of(key_certify()),
        any::<[u8; 16]>(),
        prop::option::of(any::<[u8; 8]>()),
    )
        .prop_map(
            |(
                methods,
                ek_public,
                ek_cert,
                ek_chain,
                ak_public,
                svid_key,
                key_certify,
                nonce,
                signer_hint,
            )| {
                Uplink::Login(Login {
                    methods: Vec::from_slice(&methods).unwrap(),
                    ek_public,
                    ek_cert,
                    ek_chain,
                    ak_public,
                    svid_key,
                    key_certify,
                    nonce,
                    signer_hint,
                })
            },
        )
}

fn key_certify() -> impl Strategy<Value = KeyCertify> {
    (
        bytes::<TPM_PUBLIC_MAX>(),
        bytes::<ATTEST_MAX>(),
        bytes::<TPM_SIGNATURE_MAX>(),
    )
        .prop_map(|(public, attest, signature)| KeyCertify {
            public,
            attest,
            signature,
        })
}

fn answer() -> impl Strategy<Value = Uplink> {
    (
        session(),
        any::<[u8; 32]>(),
        prop::option::of(bytes::<SIGNATURE_MAX>()),
    )
        .prop_map(|(session, mac, pop)| Uplink::Answer(Answer { session, mac, pop }))
}

fn challenge() -> impl Strategy<Value = Downlink> {
    (
        session(),
        text::<NODE_ID_MAX>(),
        bytes::<CREDENTIAL_BLOB_MAX>(),
        bytes::<ENCRYPTED_SECRET_MAX>(),
        any::<u32>(),
        any::<[u8; 32]>(),
        bytes::<SIGNER_CERT_MAX>(),
        bytes::<SIGNATURE_MAX>(),
    )
        .prop_map(
            |(
                session,
                node,
                credential_blob,
                encrypted_secret,
                expires_in,
                transcript,
                signer,
                signature,
            )| {
                Downlink::Challenge(Challenge {
                    session,
                    node,
                    credential_blob,
                    encrypted_secret,
                    expires_in,
                    transcript,
                    signer,
                    signature,
                })
            },
        )
}

fn attribute() -> impl Strategy<Value = Attribute> {
    (
        prop::sample::select(AttributeName::ALL),
        text::<ATTRIBUTE_VALUE_MAX>(),
    )
        .prop_map(|(name, value)| Attribute { name, value })
}

fn accepted() -> impl Strategy<Value = Downlink> {
    (
        text::<SPIFFE_ID_MAX>(),
        prop::collection::vec(attribute(), 0..=ATTRIBUTES_MAX),
        bytes::<SVID_MAX>(),
        bytes::<SIGNATURE_MAX>(),
    )
        .prop_map(|(spiffe_id, attributes, svid, signature)| {
            Downlink::Result(Outcome::Accepted(Accepted {
                spiffe_id,
                attributes: Vec::from_slice(&attributes).unwrap(),
                svid,
                signature,
            }))
        })
}

fn rejected() -> impl Strategy<Value = Downlink> {
    (prop::sample::select(RejectCode::ALL), text::<MESSAGE_MAX>())
        .prop_map(|(code, message)| Downlink::Result(Outcome::Rejected(Rejected { code, message })))
}

fn uplink() -> impl Strategy<Value = Uplink> {
    prop_oneof![login(), answer()]
}

fn downlink() -> impl Strategy<Value = Downlink> {
    prop_oneof![challenge(), accepted(), rejected()]
}

/// Encodes, checks the size bound, decodes, and requires equality.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: &M, bound: usize) {
    let mut buf = [0u8; FRAME_MAX];
    let frame = encode(msg, &mut buf).unwrap();
    assert!(frame.len() <= bound, "{} > {bound}", frame.len());
    assert_eq!(frame[0], VERSION);
    assert_eq!(&decode::<M>(frame).unwrap(), msg);
}

/// Decoding must not panic; whatever decodes must survive a round trip.
fn decode_is_total<M: Message + PartialEq + std::fmt::Debug>(frame: &[u8]) {
    if let Ok(msg) = decode::<M>(frame) {
        let mut buf = [0u8; FRAME_MAX];
        let again = encode(&msg, &mut buf).unwrap();
        assert!(again.len() <= frame.len(), "re-encoding grew the frame");
        assert_eq!(decode::<M>(again).unwrap(), msg);
    }
}

fn encoded<M: Message>(msg: &M) -> std::vec::Vec<u8> {
    let mut buf = [0u8; FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

/// A change to a valid frame: overwrite, cut, or insert bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Cut(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Cut),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn mutate(mut frame: std::vec::Vec<u8>, mutations: &[Mutation]) -> std::vec::Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Set(i, b) if !frame.is_empty() => {
                let i = i.index(frame.len());
                frame[i] = *b;
            }
            Mutation::Cut(i) if !frame.is_empty() => frame.truncate(i.index(frame.len())),
            Mutation::Insert(i, b) => {
                let i = i.index(frame.len() + 1);
                frame.insert(i, *b);
            }
            _ => {}
        }
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn login_round_trips(msg in login()) {
        round_trip(&msg, LOGIN_FRAME_MAX);
    }

    #[test]
    fn answer_round_trips(msg in answer()) {
        round_trip(&msg, ANSWER_FRAME_MAX);
    }

    #[test]
    fn challenge_round_trips(msg in challenge()) {
        round_trip(&msg, CHALLENGE_FRAME_MAX);
    }

    #[test]
    fn accepted_round_trips(msg in accepted()) {
        round_trip(&msg, ACCEPTED_FRAME_MAX);
    }

    #[test]
    fn rejected_round_trips(msg in rejected()) {
        round_trip(&msg, REJECTED_FRAME_MAX);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_is_total::<Uplink>(&frame);
        decode_is_total::<Downlink>(&frame);
    }

    #[test]
    fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut frame = vec![VERSION];
        frame.extend_from_slice(&body);
        decode_is_total::<Uplink>(&frame);
        decode_is_total::<Downlink>(&frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_uplinks_never_panic(
        msg in uplink(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let frame = mutate(encoded(&msg), &mutations);
        decode_is_total::<Uplink>(&frame);
        decode_is_total::<Downlink>(&frame);
    }

    #[test]
    fn mutated_downlinks_never_panic(
        msg in downlink(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let frame = mutate(encoded(&msg), &mutations);
        decode_is_total::<Downlink>(&frame);
        decode_is_total::<Uplink>(&frame);
    }
}

#[test]
fn golden_frames_mutated_at_every_byte_never_panic() {
    for msg in [common::golden_login(), common::golden_answer()] {
        let frame = encoded(&msg);
        for i in 0..frame.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut f = frame.clone();
                f[i] = b;
                decode_is_total::<Uplink>(&f);
            }
        }
    }
    for msg in [
        common::golden_challenge(),
        common::golden_accepted(),
        common::golden_rejected(),
    ] {
        let frame = encoded(&msg);
        for i in 0..frame.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut f = frame.clone();
                f[i] = b;
                decode_is_total::<Downlink>(&f);
            }
        }
    }
}
