//! Known answers for the session crypto, each derived outside this code: KDFa, KDFe, cpHash
//! and the HMACs with Python's `hmac`/`hashlib` written from TPM 2.0 Part 1 (11.4.10,
//! 19.6), AES-128-CFB with `openssl enc -aes-128-cfb`, and RSA-OAEP with Python's `pow`
//! over an `openssl genpkey` key, whose ciphertext `openssl pkeyutl -decrypt` (OAEP,
//! SHA-256, label "SECRET\0") opened to the message. The ECDH salt is checked against the
//! p256 crate's own scalar multiplication. The end-to-end oracle is swtpm
//! (tests/it/swtpm.rs): it accepts our HMACs and salts and we decrypt its responses.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

const KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

#[test]
fn kdfa_matches_python_hmac_for_one_and_several_blocks() {
    let mut out = [0u8; 32];
    kdfa(
        HashAlg::Sha256,
        &KEY,
        b"ATH",
        &[0x11; 32],
        &[0x22; 32],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        hex::encode(out),
        "a8679444f320a6d0a02c03cac153c458f28758eca056594e887fcefdc2d7e95b"
    );
    // 400 bits: two blocks, the second truncated, and [bits]32 = 400 in every block.
    let mut out = [0u8; 50];
    kdfa(
        HashAlg::Sha256,
        &KEY,
        b"CFB",
        &[0x11; 32],
        &[0x22; 32],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        hex::encode(out),
        "4dcb9050fed90730cb87fbcb042a8a0ef643bada2c2862d437d199ecf74185f67bea8a1eeccdf92f1983e31f6e9f25707624"
    );
}

#[test]
fn kdfe_matches_python_hashlib() {
    let mut out = [0u8; 48];
    kdfe(
        HashAlg::Sha384,
        &[0x33; 48],
        b"SECRET",
        &[0x44; 48],
        &[0x55; 48],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        hex::encode(out),
        "b5914fd6d851f094460b484d64cd56cfc78dd4a37e9a3b6ade5d3f5216a3acf146c2b03b794634233d5f1d756f9306e7"
    );
    assert!(kdfe(HashAlg::Sha1, &[], b"", &[], &[], &mut out).is_err());
}

#[test]
fn cfb_matches_openssl_including_a_partial_block() {
    let key: [u8; 16] = core::array::from_fn(|i| i as u8);
    let iv: [u8; 16] = core::array::from_fn(|i| 16 + i as u8);
    let plain: Vec<u8> = (0..37).collect();
    let mut data = plain.clone();
    cfb_encrypt(&key, &iv, &mut data);
    assert_eq!(
        hex::encode(&data),
        "07ffed77e5d005699807e41a82999c9c66dc9d6bd70ba905d01b6805b1ed0e9b3102d940ac"
    );
    cfb_decrypt(&key, &iv, &mut data);
    assert_eq!(data, plain);
}

#[test]
fn oaep_with_a_fixed_seed_matches_the_openssl_checked_ciphertext() {
    let n = unhex(
        "d9c207fc2489584bbc01be61ab05417a03b1491daa7a7a5a43c171c8335e612c78757296ad3e8516a60820631a88e70d3c0477e193ff6703a7fc0ec9e0f5bb44d45d348b2b56fcf9a354ff1b7d0c31b0a88ce99a253888e8844de635a259466f59a1f5d7a697f5528c703e0192d8534ae4cdc5f9a1ad2ae11c38fbe63d07f3595fba1c3d062344953a8d13d8fcd1c97be622407a5ac6f030589b946d1786582e4a18121b3208892c17f04c5095a07cdc9b84d520151ce4f8802838cbbf1c7e85ed30bea1a361880a6c211a00935336ad8f65aa0c629ab12d5c8062c40e7f3cf366c85beec6922906c35573b914cf0537e8d6840acb796eec0f2bd7b2f185af4f",
    );
    let msg: Vec<u8> = (0..32).collect();
    let c = oaep_encrypt(HashAlg::Sha256, &n, 65537, b"SECRET\0", &msg, &[0x99; 32]).unwrap();
    assert_eq!(
        hex::encode(c),
        "b53796f08e525c1278aafdbd1c81848f5cb7236a506b069349a552187c4901199588599df58723be09863e39a714325f76cb14a52179081a5edd9d7e22eb358b7552952021dc3a7705b87275cae4e3199dea7f49b0393685b913ef2d6c8f3977ce4a1de3a90af39ef2676f517ea0218e0ce85813171ad6cba32d7a2b22bd0983b534aafb4fa12dd5501df21aeab95d8f822a61df646dc13de0a33cc175b9a0725d7e70496a2a36e514caead7c8d1d3b8d2e82ad701cc58fbf3d360d817d9014812a68f9e6644fcff2ce5080f011fce06f6893cc4750fe2a0880bc9067c2608c00d7581bbf605c1f85ec91a7f719ed698b4d7795f5a95d9f0daa2c2655bdba545"
    );
    // A message too long for the key, a wrong seed length, an even modulus: errors.
    assert!(oaep_encrypt(HashAlg::Sha256, &n, 65537, b"", &[0; 200], &[0; 32]).is_err());
    assert!(oaep_encrypt(HashAlg::Sha256, &n, 65537, b"", &msg, &[0; 31]).is_err());
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xFE;
    assert!(oaep_encrypt(HashAlg::Sha256, &even, 65537, b"", &msg, &[0; 32]).is_err());
}

fn session() -> Session {
    let salt: Vec<u8> = (100..132).collect();
    Session::new(0x0200_0000, &salt, &[0xA5; 32], &[0x5A; 32]).unwrap()
}

#[test]
fn session_key_and_command_hmac_match_python() {
    let s = session();
    assert_eq!(
        hex::encode(&s.key),
        "cf4f5e29989091d85bf6a3d518986616927a61c3d0ee1f01662a252f6a2a98f8"
    );
    let mut n1 = vec![0x00, 0x0b];
    n1.extend([0x01; 32]);
    let mut n2 = vec![0x00, 0x0b];
    n2.extend([0x02; 32]);
    let cp = cp_hash(HashAlg::Sha256, 0x147, &[&n1, &n2], b"\x00\x03abc").unwrap();
    assert_eq!(
        hex::encode(&cp),
        "b0713bc53788255701b1a36d80f3300a19bcb11f3bd2c78581a696720e7ecdc3"
    );
    let hmac = s.command_hmac(&cp, &[0x77; 32], ATTR_ENCRYPT).unwrap();
    assert_eq!(
        hex::encode(hmac),
        "e6fbbd1be776a7b8a7951b13b27899613d990cea90ec6097bac325c451a0dc0b"
    );
}

const RSP_PARAMS: &str = "0020325234a277d24a3337fad6e9a25dcad26c7819c66b0e12f044f45dbc306221f8";
const RSP_HMAC: &str = "47bb3af1d3d2a94e09d2e9b21667722f59b356672506f74102dc4311135db743";

#[test]
fn response_verifies_and_decrypts_to_the_secret() {
    let s = session();
    let mut params = unhex(RSP_PARAMS);
    s.open_response(
        0x147,
        &mut params,
        &[0xC3; 32],
        &[0x77; 32],
        0x40,
        &unhex(RSP_HMAC),
    )
    .unwrap();
    let secret: Vec<u8> = (200..232).collect();
    assert_eq!(&params[2..], &secret[..]);
}

#[test]
fn tampered_responses_are_refused_before_decryption() {
    let s = session();
    let hmac = unhex(RSP_HMAC);
    let open = |params: &mut Vec<u8>, nonce: u8, attrs: u8, hmac: &[u8]| {
        s.open_response(0x147, params, &[nonce; 32], &[0x77; 32], attrs, hmac)
    };
    // A flipped ciphertext bit, HMAC bit, nonce or attribute: refused, params untouched.
    for i in 0..34 {
        let mut p = unhex(RSP_PARAMS);
        p[i] ^= 1;
        let before = p.clone();
        assert!(open(&mut p, 0xC3, 0x40, &hmac).is_err(), "param byte {i}");
        assert_eq!(p, before);
    }
    let mut bad = hmac.clone();
    bad[31] ^= 0x80;
    assert!(open(&mut unhex(RSP_PARAMS), 0xC3, 0x40, &bad).is_err());
    assert!(open(&mut unhex(RSP_PARAMS), 0xC3, 0x40, &hmac[..31]).is_err());
    assert!(open(&mut unhex(RSP_PARAMS), 0xC4, 0x40, &hmac).is_err());
    assert!(open(&mut unhex(RSP_PARAMS), 0xC3, 0x41, &hmac).is_err());
    // Another session key (a wrong salt) does not verify either.
    let other = Session::new(0x0200_0000, &[0; 32], &[0xA5; 32], &[0x5A; 32]).unwrap();
    let mut p = unhex(RSP_PARAMS);
    assert!(
        other
            .open_response(0x147, &mut p, &[0xC3; 32], &[0x77; 32], 0x40, &hmac)
            .is_err()
    );
}

#[test]
fn open_response_never_panics_on_short_parameter_areas() {
    let s = session();
    for len in 0..4 {
        let mut p = vec![0xFF; len];
        let _ = s.open_response(0x147, &mut p, &[0; 32], &[0; 32], 0x40, &[0; 32]);
    }
}

/// A TPM2B_PUBLIC for an L-2 style P-256 decrypt key with the point (x, y).
fn ecc_public(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend(0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    t.extend(0x000bu16.to_be_bytes()); // SHA-256
    t.extend(0x0003_00B2u32.to_be_bytes()); // attributes (fixedTPM|... |decrypt|restricted)
    t.extend(0u16.to_be_bytes()); // authPolicy
    t.extend(SYMMETRIC_AES128_CFB);
    t.extend(0x0010u16.to_be_bytes()); // scheme NULL
    t.extend(0x0003u16.to_be_bytes()); // NIST P-256
    t.extend(0x0010u16.to_be_bytes()); // kdf NULL
    for c in [x, y] {
        t.extend(u16::try_from(c.len()).unwrap().to_be_bytes());
        t.extend(c);
    }
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend(t);
    out
}

#[test]
fn ecc_salt_is_kdfe_of_the_shared_x_as_the_tpm_derives_it() {
    use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
    let d = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let q = d.public_key().to_encoded_point(false);
    let salt = salt_for(&ecc_public(q.x().unwrap(), q.y().unwrap())).unwrap();
    assert_eq!(salt.secret.len(), 32);
    // The TPM's side: parse Qe, Z = x(d * Qe), KDFe(SHA-256, Z, "SECRET", Qe.x, Qek.x).
    let e = &salt.encrypted;
    assert_eq!(e.len(), 2 + 32 + 2 + 32);
    assert_eq!(&e[..2], &[0, 32]);
    let qe =
        p256::EncodedPoint::from_affine_coordinates((&e[2..34]).into(), (&e[36..68]).into(), false);
    let qe = p256::PublicKey::from_encoded_point(&qe).unwrap();
    let shared = (qe.to_projective() * *d.to_nonzero_scalar()).to_affine();
    let shared = shared.to_encoded_point(false);
    let z = shared.x().unwrap();
    let mut want = [0u8; 32];
    kdfe(
        HashAlg::Sha256,
        z,
        b"SECRET",
        &e[2..34],
        q.x().unwrap(),
        &mut want,
    )
    .unwrap();
    assert_eq!(salt.secret, want);
    // A point off the curve is refused, not panicked on.
    assert!(salt_for(&ecc_public(&[1; 32], &[2; 32])).is_err());
    assert!(salt_for(&[0, 1, 2]).is_err());
}
