//! Soft TPM: the test vectors of `testdata/make-credential`, round trips against the
//! server's MakeCredential, and malformed input.

use super::*;
use ekattest_server::credential::{SystemRandom, make_credential};
use ekattest_testkit::testdata;
use sha2::{Digest, Sha256};

fn vector_key(case: &str, alg: EkAlg) -> SoftEk {
    let pem = pem::parse(testdata::vector(format!("{case}/ek_private.pk8.pem"))).unwrap();
    SoftEk::from_pkcs8(alg, pem.contents()).unwrap()
}

#[test]
fn known_answer_vectors_activate() {
    let ak_name = testdata::vector("ak.name");
    let secret = testdata::vector("secret.bin");
    for (case, alg) in [("rsa2048", EkAlg::Rsa2048), ("p256", EkAlg::P256)] {
        let ek = vector_key(case, alg);
        // The public area is byte for byte the reference EK (template and unique).
        assert_eq!(
            hex::encode(ek.tpm2b_public()),
            hex::encode(testdata::vector(format!("{case}/ek.tpm2b_public"))),
            "{case}"
        );
        let spki_hash: [u8; 32] =
            Sha256::digest(testdata::vector(format!("{case}/ek.spki.der"))).into();
        assert_eq!(ek.public_hash(), &spki_hash, "{case}");
        let blob = testdata::vector(format!("{case}/expected_credential_blob.tpm2b_id_object"));
        let enc = testdata::vector(format!("{case}/expected_secret.tpm2b_encrypted_secret"));
        assert_eq!(
            ek.activate_credential(&ak_name, &blob, &enc).unwrap(),
            secret,
            "{case}"
        );
        let mut wrong = ak_name.clone();
        wrong[5] ^= 1;
        assert_eq!(
            ek.activate_credential(&wrong, &blob, &enc),
            Err(SoftTpmError::Integrity),
            "{case}"
        );
    }
}

#[test]
fn generated_keys_follow_the_reference_templates() {
    for (case, alg, unique_len) in [
        ("rsa2048", EkAlg::Rsa2048, 2 + 256),
        ("p256", EkAlg::P256, 2 + 32 + 2 + 32),
    ] {
        let ek = SoftEk::generate(alg).unwrap();
        let ours = ek.tpm2b_public();
        let theirs = testdata::vector(format!("{case}/ek.tpm2b_public"));
        assert_eq!(ours.len(), theirs.len(), "{case}");
        let head = ours.len() - unique_len;
        assert_eq!(hex::encode(&ours[..head]), hex::encode(&theirs[..head]));
        assert_ne!(ours, &theirs[..], "{case}: a fresh key");
        let public = Public::decode(ours).unwrap();
        ekattest_server::credential::check_ek(&public).unwrap();
    }
}

#[test]
fn ak_is_the_agents_default_ak_and_passes_the_servers_check() {
    let ak = SoftAk::generate().unwrap();
    let t = &ak.tpm2b_public()[2..];
    // Same bytes as the agent's AK_P256 template up to `unique`.
    assert_eq!(
        hex::encode(&t[..20]),
        "0023000b00050472000000100018000b00030010"
    );
    let checked = ekattest_server::ak::check_ak(ak.tpm2b_public()).unwrap();
    assert_eq!(checked.name.as_slice(), ak.name());
    assert_eq!(&ak.name()[..2], &[0x00, 0x0b]);
    assert_ne!(SoftAk::generate().unwrap().name(), ak.name());
}

#[test]
fn round_trip_with_the_servers_make_credential() {
    for alg in [EkAlg::Rsa2048, EkAlg::P256] {
        let ek = SoftEk::generate(alg).unwrap();
        let ak = SoftAk::generate().unwrap();
        let other = SoftAk::generate().unwrap();
        let public = Public::decode(ek.tpm2b_public()).unwrap();
        for len in [1usize, 16, 32] {
            let secret: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let c = make_credential(&public, ak.name(), &secret, &mut SystemRandom).unwrap();
            assert_eq!(
                ek.activate_credential(ak.name(), &c.blob, &c.secret)
                    .unwrap(),
                secret,
                "{alg:?} {len}"
            );
            assert_eq!(
                ek.activate_credential(other.name(), &c.blob, &c.secret),
                Err(SoftTpmError::Integrity),
                "{alg:?}: another AK's name"
            );
            // Another EK of the same kind cannot open it.
            let stranger = SoftEk::generate(alg).unwrap();
            assert!(
                stranger
                    .activate_credential(ak.name(), &c.blob, &c.secret)
                    .is_err()
            );
            // A flipped ciphertext bit fails the HMAC.
            let mut blob = c.blob.clone();
            let last = blob.len() - 1;
            blob[last] ^= 0x80;
            assert_eq!(
                ek.activate_credential(ak.name(), &blob, &c.secret),
                Err(SoftTpmError::Integrity)
            );
        }
    }
}

#[test]
fn truncated_or_padded_input_is_an_error_not_a_panic() {
    let ak = SoftAk::generate().unwrap();
    for alg in [EkAlg::Rsa2048, EkAlg::P256] {
        let ek = SoftEk::generate(alg).unwrap();
        let public = Public::decode(ek.tpm2b_public()).unwrap();
        let c = make_credential(&public, ak.name(), &[9; 32], &mut SystemRandom).unwrap();
        for n in 0..c.blob.len() {
            assert!(
                ek.activate_credential(ak.name(), &c.blob[..n], &c.secret)
                    .is_err()
            );
        }
        for n in 0..c.secret.len() {
            assert!(
                ek.activate_credential(ak.name(), &c.blob, &c.secret[..n])
                    .is_err()
            );
        }
        let mut padded = c.secret.clone();
        padded.push(0);
        assert!(matches!(
            ek.activate_credential(ak.name(), &c.blob, &padded),
            Err(SoftTpmError::Malformed(_))
        ));
    }
}
