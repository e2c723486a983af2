//! ring's ECDSA against RustCrypto's p256 as the independent implementation: keys, signatures
//! and encodings must cross both ways.

use super::*;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};

fn p256_key(byte: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[byte; 32]).unwrap()
}

fn spki_of(point: &[u8]) -> Vec<u8> {
    let key = PublicKey::Ecc {
        curve: EccCurve::NistP256,
        x: &point[1..33],
        y: &point[33..65],
    };
    let mut buf = [0u8; ekattest_protocol::spki::SPKI_MAX];
    key.spki_der(&mut buf).unwrap().to_vec()
}

#[test]
fn our_signatures_verify_with_p256_and_theirs_with_ours() {
    let ours = SigningKey::generate().unwrap();
    let msg = b"transcript || session || mac";
    let sig = ours.sign(msg).unwrap();
    assert!(is_der_signature(&sig));
    let theirs = p256::ecdsa::VerifyingKey::from_sec1_bytes(ours.public_point()).unwrap();
    let parsed = p256::ecdsa::Signature::from_der(&sig).unwrap();
    theirs.verify(msg, &parsed).unwrap();

    let key = p256_key(0x42);
    let point = key.verifying_key().to_encoded_point(false);
    let vk = VerifyingKey::from_spki(&spki_of(point.as_bytes())).unwrap();
    let signature: p256::ecdsa::Signature = key.sign(msg);
    let der = signature.to_der();
    assert!(vk.verifies(msg, der.as_bytes()));
    assert!(!vk.verifies(b"another message", der.as_bytes()));
    let mut flipped = der.as_bytes().to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(!vk.verifies(msg, &flipped));
    // A key that is not on the curve verifies nothing.
    let mut off = point.as_bytes().to_vec();
    off[64] ^= 1;
    let bad = VerifyingKey::from_spki(&spki_of(&off)).unwrap();
    assert!(!bad.verifies(msg, der.as_bytes()));
}

#[test]
fn pkcs8_crosses_both_ways() {
    let key = p256_key(0x07);
    let der = key.to_pkcs8_der().unwrap();
    let ours = SigningKey::from_pkcs8(der.as_bytes()).unwrap();
    assert_eq!(
        ours.public_point(),
        key.verifying_key().to_encoded_point(false).as_bytes()
    );
    let generated = SigningKey::generate().unwrap();
    let back = p256::ecdsa::SigningKey::from_pkcs8_der(generated.pkcs8_der()).unwrap();
    assert_eq!(
        back.verifying_key().to_encoded_point(false).as_bytes(),
        generated.public_point()
    );
    assert!(SigningKey::from_pkcs8(b"not a key").is_err());
}

#[test]
fn pem_matches_the_rfc_7468_encoder_of_p256() {
    // (Empty contents never occur; p256 writes an empty line for them, this module none.)
    for len in [1usize, 2, 3, 47, 48, 49, 95, 138, 500] {
        let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let expected = p256::pkcs8::der::pem::encode_string(
            "CERTIFICATE",
            p256::pkcs8::der::pem::LineEnding::LF,
            &der,
        )
        .unwrap();
        assert_eq!(pem("CERTIFICATE", &der), expected, "{len} bytes");
    }
}

#[test]
fn der_signatures_from_scalars_match_p256() {
    for (r, s) in [
        ([0x01u8; 32], [0x7fu8; 32]),
        ([0x80; 32], [0x00; 32]),
        ([0x00; 32], [0x80; 32]),
    ] {
        let mut r = r;
        let mut s = s;
        r[31] |= 1;
        s[31] |= 1;
        let expected = p256::ecdsa::Signature::from_scalars(r, s).unwrap().to_der();
        assert_eq!(der_signature(&r, &s).unwrap(), expected.as_bytes());
        assert!(is_der_signature(expected.as_bytes()));
    }
    assert!(der_signature(&[0; 32], &[1; 32]).is_err(), "r = 0");
    assert!(der_signature(&ORDER, &[1; 32]).is_err(), "r = n");
    assert!(der_signature(&[1; 32], &[0xff; 32]).is_err(), "s > n");
}

#[test]
fn malformed_signatures_are_told_apart() {
    let good = der_signature(&[0x11; 32], &[0x22; 32]).unwrap();
    assert!(is_der_signature(&good));
    let mut trailing = good.clone();
    trailing.push(0);
    for (bad, why) in [
        (Vec::new(), "empty"),
        (trailing, "trailing byte"),
        (
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01],
            "r = 0",
        ),
        (
            vec![0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01],
            "negative r",
        ),
        (
            vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01],
            "non-minimal r",
        ),
        (vec![0x30, 0x03, 0x02, 0x01, 0x01], "no s"),
        (
            vec![0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            "a SET",
        ),
    ] {
        assert!(!is_der_signature(&bad), "{why}");
    }
    let mut n = vec![0x30, 0x25, 0x02, 0x21, 0x00];
    n.extend_from_slice(&ORDER);
    n.extend_from_slice(&[0x02, 0x01, 0x01]);
    n[1] = u8::try_from(n.len() - 2).unwrap();
    assert!(!is_der_signature(&n), "r = n");
}
