//! EK validation against real-world data: the STMicro ST33HTPHAHB4 EK certificate (DER and
//! raw NV blob) and the 51 vendor CA certificates in ../shared/testdata/real-ek.

use crate::ek_support;

use std::collections::HashSet;

use ek_support::{JUNE_2024, at, ca, read, real_ek, spki_of, tpm2b_public};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::ek::{
    ChainError, ChainOptions, Check, EkError, EkPolicy, Evidence, ProfileMode, TrustStore, Verdict,
    validate,
};

const STM_HASH: &str = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";
const STM_SERIAL: &str = "4cbd0fe61ee762edb28d50b268fc3586ff3d5e82";

fn stm_der() -> Vec<u8> {
    read(&real_ek().join("leaf/stm-st33htphahb4-rsa2048.der"))
}

fn stm_blob() -> Vec<u8> {
    read(&real_ek().join("leaf/stm-st33htphahb4-rsa2048.nv.bin"))
}

fn hash(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

fn policy(anchors: &[&str], inters: &[&str], mode: ProfileMode) -> EkPolicy {
    let load = |names: &[&str]| names.iter().map(|n| ca(n)).collect::<Vec<_>>();
    EkPolicy {
        trust: Some(TrustStore::new(load(anchors), load(inters), ChainOptions::default()).unwrap()),
        allowed_hashes: HashSet::new(),
        profile: mode,
        chain: ChainOptions::default(),
    }
}

fn cert_only(cert: &[u8]) -> Evidence<'_> {
    Evidence {
        ek_cert: Some(cert),
        ek_chain: &[],
        ek_public: None,
    }
}

fn check_stm_attributes(v: &Verdict) {
    let got: Vec<(&str, &str)> = v.attributes.iter().collect();
    assert_eq!(
        got,
        [
            ("public_hash", STM_HASH),
            ("serial_number", STM_SERIAL),
            ("manufacturer", "id:53544D20"),
            ("model", "ST33HTPHAHB4"),
            ("version", "73.4"),
        ]
    );
}

/// The full error chain as one string, for assertions on reasons.
fn chain_text(e: &EkError) -> String {
    ekattest_protocol::ErrorChain(e).to_string()
}

#[test]
fn stm_der_verifies_through_05i_to_rt_with_seed_attributes() {
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let der = stm_der();
    let v = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::Chain);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    check_stm_attributes(&v);
    // The same public_hash as the seed's openssl pipeline, computed independently.
    let pki = ek_support::Pki::new();
    assert_eq!(ek_support::openssl_public_hash(pki.dir(), &der), STM_HASH);
}

#[test]
fn stm_root_is_cross_signed_yet_a_trust_anchor() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let rt = ca("STM_RSA_RT.pem");
    let (_, c) = X509Certificate::from_der(&rt).unwrap();
    assert_ne!(
        c.subject().as_raw(),
        c.issuer().as_raw(),
        "STM_RSA_RT must not be self-issued"
    );
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    assert!(validate(&p, &cert_only(&stm_der()), at(JUNE_2024)).is_ok());
}

#[test]
fn stm_raw_nv_blob_verifies_like_the_der() {
    let blob = stm_blob();
    assert_eq!(blob.len(), 1600);
    assert!(
        blob[stm_der().len()..].iter().all(|&b| b == 0xFF),
        "padding expected"
    );
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let v = validate(&p, &cert_only(&blob), at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::Chain);
    check_stm_attributes(&v);
}

#[test]
fn pc_client_wrapped_nv_blob_verifies() {
    let der = stm_der();
    let mut blob = vec![0x10, 0x01, 0x00];
    blob.extend_from_slice(&u16::try_from(der.len()).unwrap().to_be_bytes());
    blob.extend_from_slice(&der);
    blob.extend_from_slice(&[0x00; 40]);
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let v = validate(&p, &cert_only(&blob), at(JUNE_2024)).unwrap();
    check_stm_attributes(&v);
}

#[test]
fn intermediate_sent_by_the_device_is_used() {
    let der = stm_der();
    let mut chain = ca("STM_RSA_05I.pem");
    chain.extend_from_slice(&[0xFF; 300]);
    let p = policy(&["STM_RSA_RT.pem"], &[], ProfileMode::Enforce);
    let ev = Evidence {
        ek_cert: Some(&der),
        ek_chain: &chain,
        ek_public: None,
    };
    assert_eq!(
        validate(&p, &ev, at(JUNE_2024)).unwrap().passed,
        Check::Chain
    );
    // Without it the path stops at the EK certificate's issuer.
    let e = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap_err();
    assert_eq!(e.to_string(), "failed to verify EK certificate chain");
    assert!(
        chain_text(&e).contains("STM TPM EK Intermediate CA 05"),
        "{}",
        chain_text(&e)
    );
}

#[test]
fn globalsign_anchor_needs_the_stm_root_as_intermediate() {
    let der = stm_der();
    // GlobalSign alone cannot reach the leaf: STM_RSA_RT (which it signed) is missing.
    let p = policy(
        &["GS_TPM_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let e = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap_err();
    match &e {
        EkError::Chain {
            source: ChainError::NoIssuer { issuer, depth, .. },
            ..
        } => {
            assert!(issuer.contains("STM TPM EK Root CA"), "{issuer}");
            assert_eq!(*depth, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    // With the cross-signed STM root as an intermediate, GlobalSign anchors a 4-cert path.
    let p = policy(
        &["GS_TPM_RT.pem"],
        &["STM_RSA_05I.pem", "STM_RSA_RT.pem"],
        ProfileMode::Enforce,
    );
    let v = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap();
    check_stm_attributes(&v);
}

#[test]
fn wrong_ca_fails_with_the_seed_messages() {
    let der = stm_der();
    let mut p = policy(
        &["INTEL_RT.pem", "NUVO_2110.pem"],
        &["INTEL_I.pem"],
        ProfileMode::Enforce,
    );
    let e = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap_err();
    assert_eq!(e.to_string(), "failed to verify EK certificate chain");
    assert!(matches!(
        &e,
        EkError::Chain {
            source: ChainError::NoIssuer { depth: 0, .. },
            ..
        }
    ));
    // With an allow-list configured too, the combined message names neither check alone.
    p.allowed_hashes.insert([0x11; 32]);
    let e = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "EK did not pass any configured validation check"
    );
    let text = chain_text(&e);
    assert!(text.contains("caCerts: no configured CA"), "{text}");
    assert!(
        text.contains(&format!(
            "allowedHashes: EK public key hash {STM_HASH} is not listed"
        )),
        "{text}"
    );
}

#[test]
fn allow_list_alone_passes_or_fails_on_the_spki_hash() {
    let der = stm_der();
    let mut p = EkPolicy {
        allowed_hashes: HashSet::from([hash(STM_HASH)]),
        ..EkPolicy::default()
    };
    let v = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::AllowList);
    // The certificate was not verified, so its identity fields are not attributes.
    let got: Vec<(&str, &str)> = v.attributes.iter().collect();
    assert_eq!(got, [("public_hash", STM_HASH)]);
    p.allowed_hashes = HashSet::from([[0xde; 32]]);
    let e = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "EK did not pass any configured validation check"
    );
    assert!(matches!(&e, EkError::NotTrusted { reasons, .. } if reasons.chain.is_none()));
}

#[test]
fn allow_list_rescues_a_failed_chain_with_a_warning() {
    let der = stm_der();
    let mut p = policy(&["INTEL_RT.pem"], &[], ProfileMode::Enforce);
    p.allowed_hashes.insert(hash(STM_HASH));
    let v = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::AllowList);
    assert_eq!(v.warnings.len(), 1);
    assert!(
        v.warnings[0].contains("only tpm_ek.public_hash is emitted"),
        "{:?}",
        v.warnings
    );
    let got: Vec<(&str, &str)> = v.attributes.iter().collect();
    assert_eq!(got, [("public_hash", STM_HASH)]);
    // When both pass, the chain is reported and nothing is flagged.
    let mut p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    p.allowed_hashes.insert(hash(STM_HASH));
    let v = validate(&p, &cert_only(&der), at(JUNE_2024)).unwrap();
    assert_eq!((v.passed, v.warnings.len()), (Check::Chain, 0));
}

#[test]
fn validity_periods_are_enforced() {
    let der = stm_der();
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    // Leaf: 2018-07-11 .. 2028-07-11.
    let e = validate(&p, &cert_only(&der), at(1_500_000_000)).unwrap_err();
    assert!(
        matches!(
            &e,
            EkError::Chain {
                source: ChainError::EkNotYetValid { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = validate(&p, &cert_only(&der), at(1_847_000_000)).unwrap_err();
    assert!(
        matches!(
            &e,
            EkError::Chain {
                source: ChainError::EkExpired { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let text = chain_text(&e);
    assert!(
        text.contains("2028") && text.contains("acceptExpiredEk"),
        "{text}"
    );
}

#[test]
fn stm_ek_after_its_not_after_passes_with_accept_expired_ek() {
    // 2028-07-12: the leaf expired the day before; 05I and the root (2038+) are still valid.
    let when = at(1_846_972_800);
    let mut p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let der = stm_der();
    let e = validate(&p, &cert_only(&der), when).unwrap_err();
    assert!(chain_text(&e).contains("expired on"), "{}", chain_text(&e));
    p.chain.accept_expired_ek = true;
    let v = validate(&p, &cert_only(&der), when).unwrap();
    assert_eq!(v.passed, Check::Chain);
    check_stm_attributes(&v);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("accepted because acceptExpiredEk is true")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn ca_certificate_presented_as_ek_fails_in_every_mode() {
    let inter = ca("STM_RSA_05I.pem");
    for mode in [ProfileMode::Enforce, ProfileMode::Warn] {
        // Not configured: a CA certificate (basicConstraints cA) is never an EK certificate.
        let p = policy(&["STM_RSA_RT.pem"], &[], mode);
        let e = validate(&p, &cert_only(&inter), at(JUNE_2024)).unwrap_err();
        assert!(
            matches!(
                &e,
                EkError::Chain {
                    source: ChainError::EkIsCa { .. },
                    ..
                }
            ),
            "{mode:?}: {e:?}"
        );
        assert!(
            chain_text(&e).contains("'C=CH, O=STMicroelectronics NV, CN=STM TPM EK Intermediate CA 05' is a CA certificate"),
            "{}",
            chain_text(&e)
        );
        // Configured: the message names the list and position.
        let p = policy(&["STM_RSA_RT.pem"], &["STM_RSA_05I.pem"], mode);
        let e = validate(&p, &cert_only(&inter), at(JUNE_2024)).unwrap_err();
        let text = chain_text(&e);
        assert!(
            text.contains("the EK certificate is intermediateCerts certificate 0 of this policy"),
            "{text}"
        );
        let root = ca("STM_RSA_RT.pem");
        let e = validate(&p, &cert_only(&root), at(JUNE_2024)).unwrap_err();
        let text = chain_text(&e);
        assert!(
            text.contains("the EK certificate is caCerts certificate 0 of this policy"),
            "{text}"
        );
        assert!(!text.contains("no configured CA"), "{text}");
    }
}

#[test]
fn pc_client_seven_byte_header_nv_blob_verifies() {
    // 10 01 | 00 | LLLL = DER + 2 | 10 02 | DER | 0xFF padding, as many TPMs store it.
    let der = stm_der();
    let mut blob = vec![0x10, 0x01, 0x00];
    blob.extend_from_slice(&u16::try_from(der.len() + 2).unwrap().to_be_bytes());
    blob.extend_from_slice(&[0x10, 0x02]);
    blob.extend_from_slice(&der);
    blob.resize(1600, 0xFF);
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let v = validate(&p, &cert_only(&blob), at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::Chain);
    check_stm_attributes(&v);
    // LLLL without the tag's two bytes: the inconsistency is named, not "found byte 0x10".
    blob[3..5].copy_from_slice(&u16::try_from(der.len()).unwrap().to_be_bytes());
    let e = validate(&p, &cert_only(&blob), at(JUNE_2024)).unwrap_err();
    let text = chain_text(&e);
    assert!(
        text.contains("`10 01 00 LLLL 10 02` says LLLL = 1169 bytes"),
        "{text}"
    );
    assert!(!text.contains("found byte 0x10"), "{text}");
    ek_support::assert_no_repeated_reason(&e);
}

#[test]
fn device_ek_public_must_be_the_certificate_key() {
    let der = stm_der();
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let good = tpm2b_public(&spki_of(&der));
    let ev = Evidence {
        ek_cert: Some(&der),
        ek_chain: &[],
        ek_public: Some(Public::decode(&good).unwrap()),
    };
    check_stm_attributes(&validate(&p, &ev, at(JUNE_2024)).unwrap());
    // The same template with one modulus bit changed.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x02;
    let ev = Evidence {
        ek_public: Some(Public::decode(&bad).unwrap()),
        ..ev
    };
    let e = validate(&p, &ev, at(JUNE_2024)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "EK public key does not match the EK certificate"
    );
    // An ECC key against an RSA certificate.
    let ecc = tpm2b_public(&spki_of(&ca("NUVO_2110.pem")));
    let ev = Evidence {
        ek_public: Some(Public::decode(&ecc).unwrap()),
        ..ev
    };
    assert!(matches!(
        validate(&p, &ev, at(JUNE_2024)),
        Err(EkError::KeyMismatch { .. })
    ));
}

#[test]
fn raw_key_tpm_passes_only_the_allow_list_with_public_hash_only() {
    let public = tpm2b_public(&spki_of(&stm_der()));
    let ev = Evidence {
        ek_cert: None,
        ek_chain: &[],
        ek_public: Some(Public::decode(&public).unwrap()),
    };
    let mut p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    let e = validate(&p, &ev, at(JUNE_2024)).unwrap_err();
    assert!(
        matches!(
            &e,
            EkError::Chain {
                source: ChainError::NoCertificate,
                ..
            }
        ),
        "{e:?}"
    );
    p.allowed_hashes.insert(hash(STM_HASH));
    let v = validate(&p, &ev, at(JUNE_2024)).unwrap();
    assert_eq!(v.passed, Check::AllowList);
    assert_eq!(
        v.attributes.iter().collect::<Vec<_>>(),
        [("public_hash", STM_HASH)]
    );
    let none = Evidence {
        ek_public: None,
        ..ev
    };
    assert!(matches!(
        validate(&p, &none, at(JUNE_2024)),
        Err(EkError::NoKey)
    ));
}

#[test]
fn all_51_vendor_ca_certificates_parse() {
    let dir = real_ek().join("ca");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pem"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 51, "{}", dir.display());
    let all: Vec<Vec<u8>> = names.iter().map(|n| ca(n)).collect();
    for (name, der) in names.iter().zip(&all) {
        TrustStore::new(vec![der.clone()], vec![], ChainOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let store = TrustStore::new(all.clone(), all, ChainOptions::default()).unwrap();
    assert_eq!(store.len(), (51, 51));
}

// The signatures of the 51 vendor CA certificates among themselves are checked by the path
// search directly (`server/src/ek/chain.rs`, `tests::real_vendor_ca_signatures_verify`):
// presented as an EK certificate, a CA certificate is now refused before any signature check.

#[test]
fn garbled_certificates_fail_without_panicking() {
    let der = stm_der();
    let p = policy(
        &["STM_RSA_RT.pem"],
        &["STM_RSA_05I.pem"],
        ProfileMode::Enforce,
    );
    for len in (0..der.len()).step_by(3) {
        assert!(
            validate(&p, &cert_only(&der[..len]), at(JUNE_2024)).is_err(),
            "prefix {len}"
        );
    }
    for pos in 0..der.len() {
        let mut bad = der.clone();
        bad[pos] ^= 0x01;
        let r = validate(&p, &cert_only(&bad), at(JUNE_2024));
        assert!(r.is_err(), "flip at {pos} accepted");
    }
}

#[test]
fn device_chain_limits_and_garbage() {
    let der = stm_der();
    let inter = ca("STM_RSA_05I.pem");
    let p = policy(&["STM_RSA_RT.pem"], &[], ProfileMode::Enforce);
    let nine: Vec<u8> = std::iter::repeat_n(inter.clone(), 9).flatten().collect();
    let ev = Evidence {
        ek_cert: Some(&der),
        ek_chain: &nine,
        ek_public: None,
    };
    let e = validate(&p, &ev, at(JUNE_2024)).unwrap_err();
    assert!(
        matches!(
            &e,
            EkError::Chain {
                source: ChainError::TooManyChainCerts { limit: 8, .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A DER object that is not a certificate is skipped with a warning.
    let mut chain = vec![0x30, 0x03, 0x02, 0x01, 0x05];
    chain.extend_from_slice(&inter);
    let ev = Evidence {
        ek_chain: &chain,
        ..ev
    };
    let v = validate(&p, &ev, at(JUNE_2024)).unwrap();
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("chain certificate 0 ignored")),
        "{:?}",
        v.warnings
    );
}
