//! EK validation of certificates made by swtpm_setup with a per-run swtpm-localca (feature
//! `it`: needs swtpm, swtpm_setup, swtpm_localca, tpm2-tools and openssl).
//!
//! RSA-2048, RSA-3072, P-384 (swtpm_setup) and P-256 (added by the harness) EK certificates
//! verify against the CA's root with its intermediate configured (or sent by the device), with
//! swtpm's identity attributes, and the EK public areas read from the TPM match them.

use crate::ek_support;

use std::collections::HashSet;
use std::time::SystemTime;

use ek_support::pem_certs;
use ekattest_protocol::tpm::public::Public;
use ekattest_server::ek::{
    ChainError, ChainOptions, Check, EkError, EkPolicy, Evidence, ProfileMode, TrustStore, validate,
};
use ekattest_testkit::swtpm::{Ca, Device, EkKind, ProvisionOptions, openssl_public_hash};
use x509_parser::prelude::{FromDer, X509Certificate};

fn policy(ca: &Ca, with_intermediate: bool) -> EkPolicy {
    let root = pem_certs(ca.root_cert_pem());
    let inter = if with_intermediate {
        pem_certs(ca.intermediate_cert_pem())
    } else {
        Vec::new()
    };
    EkPolicy {
        trust: Some(TrustStore::new(root, inter, ChainOptions::default()).unwrap()),
        allowed_hashes: HashSet::new(),
        profile: ProfileMode::Enforce,
        chain: ChainOptions::default(),
    }
}

fn check_device(ca: &Ca, dev: &Device, kinds: &[EkKind]) {
    let p = policy(ca, true);
    for &kind in kinds {
        let cert = dev
            .ek_cert_der(kind)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let public = dev
            .ek_public(kind)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let ev = Evidence {
            ek_cert: Some(&cert),
            ek_chain: &[],
            ek_public: Some(Public::decode(&public).unwrap()),
        };
        let v = validate(&p, &ev, SystemTime::now())
            .unwrap_or_else(|e| panic!("{kind}: {e}: {:?}", std::error::Error::source(&e)));
        assert_eq!(v.passed, Check::Chain, "{kind}");
        let file = dev.work_dir().join(format!("check-{kind}.der"));
        std::fs::write(&file, &cert).unwrap();
        let expected_hash = openssl_public_hash(&file).unwrap();
        let attrs = &v.attributes;
        assert_eq!(attrs.public_hash, expected_hash, "{kind}");
        assert_eq!(attrs.manufacturer.as_deref(), Some("id:00001014"), "{kind}");
        assert_eq!(attrs.model.as_deref(), Some("swtpm"), "{kind}");
        // id:20191023 under the TCG major.minor rule (see ek::attributes).
        assert_eq!(attrs.version.as_deref(), Some("8217.4131"), "{kind}");
        assert!(attrs.serial_number.as_ref().is_some_and(|s| !s.is_empty()));
        // Older swtpm_setup put keyEncipherment on its ECC EK; the installed one (and the
        // harness's P-256 certificate) use keyAgreement. Expect the warning exactly when an
        // ECC certificate lacks keyAgreement, read here with x509-parser.
        let ecc = matches!(kind, EkKind::P256 | EkKind::P384);
        let (_, x509) = X509Certificate::from_der(&cert).unwrap();
        let agreement = x509
            .key_usage()
            .unwrap()
            .is_some_and(|k| k.value.key_agreement());
        let warned = v
            .warnings
            .iter()
            .any(|w| w.contains("keyEncipherment instead of keyAgreement"));
        assert_eq!(warned, ecc && !agreement, "{kind}: {:?}", v.warnings);

        // Without the intermediate configured the chain stops at it, unless the device sends it.
        let bare = policy(ca, false);
        let e = validate(&bare, &ev, SystemTime::now()).unwrap_err();
        assert!(
            matches!(
                &e,
                EkError::Chain {
                    source: ChainError::NoIssuer { depth: 0, .. },
                    ..
                }
            ),
            "{kind}: {e:?}"
        );
        let inter = pem_certs(ca.intermediate_cert_pem()).remove(0);
        let sent = Evidence {
            ek_chain: &inter,
            ..ev
        };
        assert_eq!(
            validate(&bare, &sent, SystemTime::now()).unwrap().passed,
            Check::Chain
        );
    }
}

#[test]
fn swtpm_rsa2048_p256_p384_certificates_verify() {
    let ca = Ca::create().unwrap();
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    let dev = Device::provision(&ca, &opts).unwrap();
    check_device(&ca, &dev, &[EkKind::Rsa2048, EkKind::P256, EkKind::P384]);

    // The RSA certificate with the P-384 public area: a different key.
    let cert = dev.ek_cert_der(EkKind::Rsa2048).unwrap();
    let other = dev.ek_public(EkKind::P384).unwrap();
    let ev = Evidence {
        ek_cert: Some(&cert),
        ek_chain: &[],
        ek_public: Some(Public::decode(&other).unwrap()),
    };
    let e = validate(&policy(&ca, true), &ev, SystemTime::now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "EK public key does not match the EK certificate"
    );
}

#[test]
fn swtpm_rsa3072_certificate_verifies() {
    let ca = Ca::create().unwrap();
    let opts = ProvisionOptions {
        rsa_keysize: 3072,
        p256_ek_cert: false,
    };
    let dev = Device::provision(&ca, &opts).unwrap();
    check_device(&ca, &dev, &[EkKind::Rsa3072]);
}
