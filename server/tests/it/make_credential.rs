//! MakeCredential against the known-answer vectors in ../shared/testdata/make-credential
//! (checked against tpm2-tools and swtpm when they were made), plus the production path
//! checked by decryption with the vectors' EK private keys.
#![cfg(test)]

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, UnparsedPublicKey};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OaepAlgorithm,
    OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::credential::{
    Credential, CredentialError, FixedRandom, SystemRandom, check_ek, make_credential,
    make_credential_traced,
};
use ekattest_testkit::testdata;
use serde_json::Value;

fn vector(case: &str) -> Value {
    serde_json::from_slice(&testdata::vector(format!("{case}/vector.json"))).unwrap()
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing"));
    hex::decode(s).unwrap()
}

fn pkcs8(case: &str) -> Vec<u8> {
    let text = testdata::vector(format!("{case}/ek_private.pk8.pem"));
    pem::parse(text).unwrap().contents().to_vec()
}

/// The fixed randomness of a case, in the order MakeCredential draws it.
fn fixed_inputs(case: &str) -> FixedRandom {
    match case {
        "rsa2048" => FixedRandom::new([
            testdata::vector("rsa2048/seed.bin"),
            testdata::vector("rsa2048/oaep_seed.bin"),
        ]),
        ecc => FixedRandom::new([testdata::vector(format!("{ecc}/ecc_ephemeral_scalar.bin"))]),
    }
}

fn assert_matches_expected(dir: &str, c: &Credential) {
    assert_eq!(
        c.blob,
        testdata::vector(format!("{dir}/expected_credential_blob.tpm2b_id_object")),
        "{dir}: blob"
    );
    assert_eq!(
        c.secret,
        testdata::vector(format!("{dir}/expected_secret.tpm2b_encrypted_secret")),
        "{dir}: secret"
    );
    assert_eq!(
        c.to_tpm2_tools_file(),
        testdata::vector(format!("{dir}/expected.tpm2tools_credential")),
        "{dir}: file"
    );
}

#[test]
fn software_ek_vectors_are_reproduced_byte_for_byte() {
    for case in ["rsa2048", "p256", "p384"] {
        let v = vector(case);
        let ek_bytes = testdata::vector(format!("{case}/ek.tpm2b_public"));
        let ek = Public::decode(&ek_bytes).unwrap();
        assert_eq!(ek.tpmt_bytes(), hex_field(&v, "ek_tpmt_public").as_slice());
        let ak_name = testdata::vector("ak.name");
        assert_eq!(ak_name, hex_field(&v, "ak_name"));
        let secret = testdata::vector("secret.bin");
        assert_eq!(secret, hex_field(&v, "credential"));

        let mut rng = fixed_inputs(case);
        let (c, t) = make_credential_traced(&ek, &ak_name, &secret, &mut rng).unwrap();
        assert_eq!(rng.remaining(), 0, "{case}: every fixed input is used");

        assert_eq!(t.seed, hex_field(&v, "seed"), "{case}: seed");
        assert_eq!(
            t.seed,
            testdata::vector(format!("{case}/seed.bin")),
            "{case}: seed.bin"
        );
        assert_eq!(
            t.sym_key,
            hex_field(&v, "kdfa_storage_sym_key"),
            "{case}: KDFa STORAGE"
        );
        assert_eq!(
            t.hmac_key,
            hex_field(&v, "kdfa_integrity_hmac_key"),
            "{case}: KDFa INTEGRITY"
        );
        assert_eq!(
            t.enc_identity,
            hex_field(&v, "enc_identity"),
            "{case}: encIdentity"
        );
        assert_eq!(
            t.integrity_hmac,
            hex_field(&v, "integrity_hmac"),
            "{case}: integrityHMAC"
        );
        if case != "rsa2048" {
            assert_eq!(t.ecdh_z, hex_field(&v, "ecdh_z"), "{case}: Z");
            assert_eq!(
                t.ecdh_z,
                testdata::vector(format!("{case}/ecdh_z.bin")),
                "{case}: ecdh_z.bin"
            );
            let qx = hex_field(&v, "ecc_ephemeral_qx");
            assert_eq!(&c.secret[4..4 + qx.len()], qx.as_slice(), "{case}: Qe.x");
        }
        assert_eq!(
            c.blob,
            hex_field(&v, "expected_credential_blob_tpm2b"),
            "{case}: blob"
        );
        assert_eq!(
            c.secret,
            hex_field(&v, "expected_encrypted_secret_tpm2b"),
            "{case}: secret"
        );
        assert_matches_expected(case, &c);
    }
}

#[test]
fn swtpm_bound_vectors_are_reproduced_byte_for_byte() {
    for (case, inputs) in [
        ("swtpm-bound-rsa2048", "rsa2048"),
        ("swtpm-bound-p256", "p256"),
        ("swtpm-bound-p384", "p384"),
    ] {
        let ek_bytes = testdata::vector(format!("{case}/ek.tpm2b_public"));
        let ek = Public::decode(&ek_bytes).unwrap();
        let ak_name = testdata::vector(format!("{case}/ak.name"));
        let c = make_credential(
            &ek,
            &ak_name,
            &testdata::vector("secret.bin"),
            &mut fixed_inputs(inputs),
        )
        .unwrap();
        assert_matches_expected(case, &c);
    }
}

fn oaep_for(case: &str) -> &'static OaepAlgorithm {
    if case.ends_with("3072") {
        &OAEP_SHA384_MGF1SHA384
    } else {
        &OAEP_SHA256_MGF1SHA256
    }
}

/// Decrypts a TPM2B_ENCRYPTED_SECRET with aws-lc's RSA-OAEP and label "IDENTITY\0".
fn rsa_decrypt(key: &PrivateDecryptingKey, alg: &'static OaepAlgorithm, tpm2b: &[u8]) -> Vec<u8> {
    let size = usize::from(u16::from_be_bytes([tpm2b[0], tpm2b[1]]));
    assert_eq!(size + 2, tpm2b.len(), "TPM2B size field");
    let oaep = OaepPrivateDecryptingKey::new(key.clone()).unwrap();
    let mut out = vec![0u8; oaep.min_output_size()];
    oaep.decrypt(alg, &tpm2b[2..], &mut out, Some(b"IDENTITY\0"))
        .unwrap()
        .to_vec()
}

#[test]
fn rsa_production_path_decrypts_to_its_seed_and_matches_the_fixed_path() {
    let key = PrivateDecryptingKey::from_pkcs8(&pkcs8("rsa2048")).unwrap();
    let ek_bytes = testdata::vector("rsa2048/ek.tpm2b_public");
    let ek = Public::decode(&ek_bytes).unwrap();
    let (ak_name, secret) = (testdata::vector("ak.name"), testdata::vector("secret.bin"));
    let (c, t) = make_credential_traced(&ek, &ak_name, &secret, &mut SystemRandom).unwrap();
    let seed = rsa_decrypt(&key, &OAEP_SHA256_MGF1SHA256, &c.secret);
    assert_eq!(seed, t.seed);
    assert_ne!(
        seed,
        testdata::vector("rsa2048/seed.bin"),
        "production must not reuse the vector seed"
    );
    // The blob depends only on the seed: the deterministic path with the recovered seed
    // (and any OAEP seed) must give the same blob.
    let mut rng = FixedRandom::new([seed.clone(), vec![0x5A; 32]]);
    let again = make_credential(&ek, &ak_name, &secret, &mut rng).unwrap();
    assert_eq!(again.blob, c.blob);
    // And the deterministic path's ciphertext decrypts with aws-lc too.
    assert_eq!(
        rsa_decrypt(&key, &OAEP_SHA256_MGF1SHA256, &again.secret),
        seed
    );
    // Two production runs differ (fresh seed and OAEP seed).
    let other = make_credential(&ek, &ak_name, &secret, &mut SystemRandom).unwrap();
    assert_ne!(other.secret, c.secret);
    assert_ne!(other.blob, c.blob);
}

#[test]
fn tpm2_tools_outputs_are_rebuilt_from_their_recovered_seed() {
    // tpm2-tools' own MakeCredential (random seed): recover its seed with the EK private key,
    // then our blob from that seed must equal tpm2-tools' blob.
    let key = PrivateDecryptingKey::from_pkcs8(&pkcs8("rsa2048")).unwrap();
    let file = testdata::vector("tpm2-tools/rsa2048.cred");
    assert_eq!(&file[..8], &[0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1]);
    let blob_len = 2 + usize::from(u16::from_be_bytes([file[8], file[9]]));
    let (blob, secret) = file[8..].split_at(blob_len);
    let seed = rsa_decrypt(&key, &OAEP_SHA256_MGF1SHA256, secret);
    let ek_bytes = testdata::vector("rsa2048/ek.tpm2b_public");
    let ek = Public::decode(&ek_bytes).unwrap();
    let mut rng = FixedRandom::new([seed, vec![0; 32]]);
    let ours = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &testdata::vector("secret.bin"),
        &mut rng,
    )
    .unwrap();
    assert_eq!(ours.blob, blob);
}

#[test]
fn ecc_production_path_shares_z_with_the_ek_private_key() {
    for (case, alg) in [("p256", &ECDH_P256), ("p384", &ECDH_P384)] {
        let ek_bytes = testdata::vector(format!("{case}/ek.tpm2b_public"));
        let ek = Public::decode(&ek_bytes).unwrap();
        let (c, t) = make_credential_traced(
            &ek,
            &testdata::vector("ak.name"),
            &testdata::vector("secret.bin"),
            &mut SystemRandom,
        )
        .unwrap();
        // secret = UINT16 size || UINT16 len || Qe.x || UINT16 len || Qe.y
        let fl = usize::from(u16::from_be_bytes([c.secret[2], c.secret[3]]));
        assert_eq!(c.secret.len(), 2 + 4 + 2 * fl);
        let mut qe = vec![0x04];
        qe.extend_from_slice(&c.secret[4..4 + fl]);
        qe.extend_from_slice(&c.secret[6 + fl..]);
        let ek_private = agreement::PrivateKey::from_private_key_der(alg, &pkcs8(case)).unwrap();
        let z = agreement::agree(&ek_private, UnparsedPublicKey::new(alg, &qe), (), |z| {
            Ok(z.to_vec())
        })
        .unwrap();
        assert_eq!(z, t.ecdh_z, "{case}: Z from the EK private key");
        assert_ne!(
            z,
            testdata::vector(format!("{case}/ecdh_z.bin")),
            "{case}: fresh ephemeral key"
        );
        assert_eq!(t.seed.len(), if case == "p256" { 32 } else { 48 });
    }
}

/// A TPM2B_PUBLIC for an RSA EK with the given nameAlg, symmetric key bits and modulus
/// (TCG H-6 style when SHA-384 / AES-256 / 3072 bits).
fn rsa_ek_public(name_alg: u16, sym_bits: u16, modulus: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
    t.extend_from_slice(&name_alg.to_be_bytes());
    t.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
    let policy = vec![0xAB; if name_alg == 0x000C { 48 } else { 32 }];
    t.extend_from_slice(&u16::try_from(policy.len()).unwrap().to_be_bytes());
    t.extend_from_slice(&policy);
    for v in [0x0006u16, sym_bits, 0x0043, 0x0010] {
        t.extend_from_slice(&v.to_be_bytes());
    }
    t.extend_from_slice(&u16::try_from(modulus.len() * 8).unwrap().to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&u16::try_from(modulus.len()).unwrap().to_be_bytes());
    t.extend_from_slice(modulus);
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

/// The modulus of an aws-lc RSA key, from its SPKI DER.
fn modulus_of(key: &PrivateDecryptingKey) -> Vec<u8> {
    use aws_lc_rs::encoding::AsDer;
    let der = key.public_key().as_der().unwrap();
    let spki = ekattest_protocol::spki::PublicKey::from_spki_der(der.as_ref()).unwrap();
    let ekattest_protocol::spki::PublicKey::Rsa { modulus, .. } = spki else {
        panic!("not RSA")
    };
    let start = modulus.iter().position(|&b| b != 0).unwrap();
    modulus[start..].to_vec()
}

#[test]
fn rsa3072_sha384_ek_works_on_both_paths() {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa3072).unwrap();
    let ek_bytes = rsa_ek_public(0x000C, 256, &modulus_of(&key));
    let ek = Public::decode(&ek_bytes).unwrap();
    let params = check_ek(&ek).unwrap();
    assert_eq!((params.hash.digest_len(), params.sym_key_len), (48, 32));
    let ak_name = testdata::vector("ak.name");
    let secret = [0x42u8; 48];
    let (c, t) = make_credential_traced(&ek, &ak_name, &secret, &mut SystemRandom).unwrap();
    assert_eq!(c.secret.len(), 2 + 384);
    assert_eq!(rsa_decrypt(&key, oaep_for("rsa3072"), &c.secret), t.seed);
    // blob: size || UINT16 48 || HMAC-SHA384 || AES-256-CFB(UINT16 48 || secret)
    assert_eq!(c.blob.len(), 2 + 2 + 48 + 2 + 48);
    let seed = t.seed.clone();
    let mut rng = FixedRandom::new([seed.clone(), vec![7; 48]]);
    let fixed = make_credential(&ek, &ak_name, &secret, &mut rng).unwrap();
    assert_eq!(fixed.blob, c.blob);
    assert_eq!(rsa_decrypt(&key, oaep_for("rsa3072"), &fixed.secret), seed);
}

#[test]
fn credential_longer_than_the_digest_is_refused() {
    let ek_bytes = testdata::vector("p256/ek.tpm2b_public");
    let ek = Public::decode(&ek_bytes).unwrap();
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &[1; 33],
        &mut SystemRandom,
    )
    .unwrap_err();
    assert_eq!(err, CredentialError::SecretTooLong { len: 33, max: 32 });
    let err =
        make_credential(&ek, &testdata::vector("ak.name"), &[], &mut SystemRandom).unwrap_err();
    assert_eq!(err, CredentialError::EmptySecret);
    // |H| itself is fine, and so is a short credential.
    make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &[1; 32],
        &mut SystemRandom,
    )
    .unwrap();
    make_credential(&ek, &testdata::vector("ak.name"), &[1], &mut SystemRandom).unwrap();
    // SHA-384 EK: 48 bytes allowed, 49 not.
    let ek_bytes = testdata::vector("p384/ek.tpm2b_public");
    let ek = Public::decode(&ek_bytes).unwrap();
    make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &[1; 48],
        &mut SystemRandom,
    )
    .unwrap();
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &[1; 49],
        &mut SystemRandom,
    )
    .unwrap_err();
    assert_eq!(err, CredentialError::SecretTooLong { len: 49, max: 48 });
}

/// Patches a TPM2B_PUBLIC at `offset` (counted from the start, size field included).
fn patched(rel: &str, offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = testdata::vector(rel);
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
    b
}

fn template_error(bytes: &[u8]) -> String {
    let ek = Public::decode(bytes).unwrap();
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &[1; 16],
        &mut SystemRandom,
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::EkTemplate { .. }), "{err:?}");
    assert_eq!(check_ek(&ek).unwrap_err(), err);
    err.to_string()
}

#[test]
fn bad_ek_templates_are_refused() {
    // Layout: size(2) type(2) nameAlg(2) attributes(4) policy size(2) policy(32) sym(6) ...
    let ek = "rsa2048/ek.tpm2b_public";
    // The AK is a signing key, not a storage key.
    assert!(template_error(&testdata::vector("ak.tpm2b_public")).contains("decrypt"));
    // decrypt cleared / sign set.
    assert!(template_error(&patched(ek, 6, &0x0001_00b2u32.to_be_bytes())).contains("decrypt"));
    assert!(template_error(&patched(ek, 6, &0x0007_00b2u32.to_be_bytes())).contains("sign"));
    // restricted cleared.
    assert!(template_error(&patched(ek, 6, &0x0002_00b2u32.to_be_bytes())).contains("restricted"));
    // nameAlg SHA-1 and SHA-512.
    assert!(template_error(&patched(ek, 4, &0x0004u16.to_be_bytes())).contains("nameAlg"));
    assert!(template_error(&patched(ek, 4, &0x000Du16.to_be_bytes())).contains("nameAlg"));
    // AES-192, and CBC mode instead of CFB.
    assert!(template_error(&patched(ek, 44, &[0x00, 0x06, 0x00, 0xC0])).contains("symmetric"));
    assert!(
        template_error(&patched(ek, 44, &[0x00, 0x06, 0x00, 0x80, 0x00, 0x42]))
            .contains("symmetric")
    );
    // Exponent 3.
    assert!(template_error(&patched(ek, 54, &3u32.to_be_bytes())).contains("exponent"));
    // RSA-1024 and RSA-4096 EKs.
    let small = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let m = modulus_of(&small);
    assert!(template_error(&rsa_ek_public(0x000B, 128, &m[..128])).contains("2048 or 3072"));
    let mut big = m.clone();
    big.extend_from_slice(&m);
    assert!(template_error(&rsa_ek_public(0x000B, 128, &big)).contains("2048 or 3072"));
}

#[test]
fn unusable_inputs_are_errors_not_panics() {
    let ek_bytes = testdata::vector("p256/ek.tpm2b_public");
    let ek = Public::decode(&ek_bytes).unwrap();
    let secret = testdata::vector("secret.bin");
    // AK Names of the wrong shape.
    for name in [
        vec![],
        vec![0x00, 0x0b],
        vec![0x00, 0x0b, 1, 2, 3],
        [&[0x12, 0x34][..], &[0; 32]].concat(),
    ] {
        let err = make_credential(&ek, &name, &secret, &mut SystemRandom).unwrap_err();
        assert!(matches!(err, CredentialError::AkName { .. }), "{err:?}");
    }
    // An EK point that is not on the curve.
    let mut off_curve = ek_bytes.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    let bad = Public::decode(&off_curve).unwrap();
    let err = make_credential(
        &bad,
        &testdata::vector("ak.name"),
        &secret,
        &mut SystemRandom,
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Crypto { .. }), "{err:?}");
    // Injected randomness of the wrong shape or exhausted.
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &secret,
        &mut FixedRandom::new([vec![1; 31]]),
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Random(_)), "{err:?}");
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &secret,
        &mut FixedRandom::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Random(_)), "{err:?}");
    // A scalar of zero is not a private key.
    let err = make_credential(
        &ek,
        &testdata::vector("ak.name"),
        &secret,
        &mut FixedRandom::new([vec![0; 32]]),
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Crypto { .. }), "{err:?}");
    let rsa_bytes = testdata::vector("rsa2048/ek.tpm2b_public");
    let rsa = Public::decode(&rsa_bytes).unwrap();
    let err = make_credential(
        &rsa,
        &testdata::vector("ak.name"),
        &secret,
        &mut FixedRandom::new([vec![1; 32]]),
    )
    .unwrap_err();
    assert!(matches!(err, CredentialError::Random(_)), "{err:?}");
}
