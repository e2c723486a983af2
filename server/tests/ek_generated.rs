//! EK validation against certificates generated at test time with the `openssl` CLI:
//! algorithm coverage (RSA leaves under ECDSA issuers, P-384/P-521, SHA-384/512, RSA-PSS,
//! SHA-1 gating) and the negative cases of the TCG profile and the path builder (loops,
//! 20-deep chains, non-CA issuers, pathLen, unknown critical extensions).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod ek_support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use ek_support::{
    CA_EXT, EK_RSA_EXT, Key, Pki, Spec, TPM_ID, openssl_public_hash, spki_of, tpm2b_public,
};
use ekattest_server::ek::{
    ChainError, ChainOptions, Check, EkError, EkPolicy, Evidence, ProfileIssue, ProfileMode,
    TrustStore, Verdict, validate,
};

const ECC_EK_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyAgreement\nsubjectAltName=critical,dirName:tpm_id\nauthorityKeyIdentifier=keyid";

fn policy(
    anchors: Vec<Vec<u8>>,
    inters: Vec<Vec<u8>>,
    mode: ProfileMode,
    opts: ChainOptions,
) -> EkPolicy {
    EkPolicy {
        trust: Some(TrustStore::new(anchors, inters, opts).unwrap()),
        allowed_hashes: HashSet::new(),
        profile: mode,
        chain: opts,
    }
}

fn check(p: &EkPolicy, ek: &[u8]) -> Result<Verdict, EkError> {
    let ev = Evidence {
        ek_cert: Some(ek),
        ek_chain: &[],
        ek_public: None,
    };
    validate(p, &ev, SystemTime::now())
}

fn chain_err(r: Result<Verdict, EkError>) -> ChainError {
    match r {
        Err(EkError::Chain { source, .. }) => source,
        other => panic!("expected a chain failure, got {other:?}"),
    }
}

fn root(pki: &Pki, name: &str, key: Key, digest: &str) -> Vec<u8> {
    pki.cert(&Spec {
        name,
        subject: &format!("/O=Test/CN={name}"),
        key,
        digest,
        ..Spec::default()
    })
}

fn ca(pki: &Pki, name: &str, key: Key, issuer: &str, digest: &str, ext: &str) -> Vec<u8> {
    pki.cert(&Spec {
        name,
        subject: &format!("/O=Test/CN={name}"),
        key,
        issuer: Some(issuer),
        digest,
        ext,
        ..Spec::default()
    })
}

fn ek(pki: &Pki, name: &str, key: Key, issuer: &str, digest: &str, ext: &str) -> Vec<u8> {
    pki.cert(&Spec {
        name,
        subject: "/CN=unknown",
        key,
        issuer: Some(issuer),
        digest,
        ext,
        sections: TPM_ID,
        days: 3650,
        serial: "0x00ff01",
        ..Spec::default()
    })
}

#[test]
fn rsa_ek_under_ecdsa_issuers_with_mixed_hashes() {
    let pki = Pki::new();
    let r = root(&pki, "p384root", Key::P384, "sha384");
    let i = ca(&pki, "p256inter", Key::P256, "p384root", "sha512", CA_EXT);
    let e = ek(
        &pki,
        "rsaek",
        Key::Rsa(2048),
        "p256inter",
        "sha384",
        EK_RSA_EXT,
    );
    let p = policy(
        vec![r],
        vec![i],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let v = check(&p, &e).unwrap();
    assert_eq!(
        (v.passed, v.warnings.len()),
        (Check::Chain, 0),
        "{:?}",
        v.warnings
    );
    let attrs: Vec<_> = v.attributes.iter().collect();
    let expected_hash = openssl_public_hash(pki.dir(), &e);
    assert_eq!(
        attrs,
        [
            ("public_hash", expected_hash.as_str()),
            ("serial_number", "ff01"),
            ("manufacturer", "id:4E544300"),
            ("model", "NPCT75x"),
            ("version", "7.64"),
        ]
    );
    // The EK public area of the same key is accepted next to the certificate.
    let public = tpm2b_public(&spki_of(&e));
    let ev = Evidence {
        ek_cert: Some(&e),
        ek_chain: &[],
        ek_public: Some(&public),
    };
    assert!(validate(&p, &ev, SystemTime::now()).is_ok());
}

#[test]
fn p521_and_p384_ecc_ek_with_multi_valued_utf8_identity() {
    let pki = Pki::new();
    let r = root(&pki, "p521root", Key::P521, "sha512");
    let multi = "[tpm_id]\na.2.23.133.2.1=id:49465800\nb.+2.23.133.2.2=SLB9670\nc.+2.23.133.2.3=id:000D0005\n";
    let e = pki.cert(&Spec {
        name: "p384ek",
        subject: "/CN=unknown",
        key: Key::P384,
        issuer: Some("p521root"),
        digest: "sha256",
        ext: ECC_EK_EXT,
        sections: multi,
        string_mask: "utf8only",
        ..Spec::default()
    });
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let v = check(&p, &e).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    assert_eq!(v.attributes.manufacturer.as_deref(), Some("id:49465800"));
    assert_eq!(v.attributes.model.as_deref(), Some("SLB9670"));
    assert_eq!(v.attributes.version.as_deref(), Some("13.5"));
}

#[test]
fn rsa_pss_signatures_with_standard_parameters_verify() {
    let pki = Pki::new();
    let r = root(&pki, "rsaroot", Key::Rsa(2048), "sha256");
    let e = pki.cert(&Spec {
        name: "pssek",
        subject: "/CN=unknown",
        key: Key::Rsa(2048),
        issuer: Some("rsaroot"),
        digest: "sha384",
        sigopts: &["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"],
        ext: EK_RSA_EXT,
        sections: TPM_ID,
        ..Spec::default()
    });
    let p = policy(
        vec![r.clone()],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    assert_eq!(check(&p, &e).unwrap().passed, Check::Chain);
    let odd = pki.cert(&Spec {
        name: "pssodd",
        subject: "/CN=unknown",
        key: Key::Rsa(2048),
        issuer: Some("rsaroot"),
        sigopts: &["rsa_padding_mode:pss", "rsa_pss_saltlen:20"],
        ext: EK_RSA_EXT,
        sections: TPM_ID,
        ..Spec::default()
    });
    let err = chain_err(check(&p, &odd));
    assert!(err.to_string().contains("RSASSA-PSS"), "{err}");
}

#[test]
fn sha1_signatures_need_the_explicit_option() {
    let pki = Pki::new();
    let r = root(&pki, "sha1root", Key::Rsa(2048), "sha256");
    let e = ek(
        &pki,
        "sha1ek",
        Key::Rsa(2048),
        "sha1root",
        "sha1",
        EK_RSA_EXT,
    );
    let p = policy(
        vec![r.clone()],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = chain_err(check(&p, &e));
    assert!(err.to_string().contains("SHA-1"), "{err}");
    let opts = ChainOptions {
        allow_sha1: true,
        ..ChainOptions::default()
    };
    let p = policy(vec![r], vec![], ProfileMode::Enforce, opts);
    assert_eq!(check(&p, &e).unwrap().passed, Check::Chain);
}

#[test]
fn ecc_ek_with_key_encipherment_passes_with_a_warning_in_both_modes() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let ext = ECC_EK_EXT.replace("keyAgreement", "keyEncipherment");
    let e = ek(&pki, "swtpmlike", Key::P384, "root", "sha384", &ext);
    for mode in [ProfileMode::Enforce, ProfileMode::Warn] {
        let p = policy(vec![r.clone()], vec![], mode, ChainOptions::default());
        let v = check(&p, &e).unwrap();
        assert_eq!(v.passed, Check::Chain);
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(v.warnings[0].contains("keyEncipherment instead of keyAgreement"));
    }
}

#[test]
fn key_usage_without_the_challenge_usage_fails_in_enforce_mode() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let rsa = ek(
        &pki,
        "rsaek",
        Key::Rsa(2048),
        "root",
        "sha256",
        &EK_RSA_EXT.replace("keyEncipherment", "digitalSignature"),
    );
    let ecc = ek(
        &pki,
        "eccek",
        Key::P256,
        "root",
        "sha256",
        &ECC_EK_EXT.replace("keyAgreement", "digitalSignature"),
    );
    let p = policy(
        vec![r.clone()],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    for (e, key, want) in [
        (&rsa, "RSA", "keyEncipherment"),
        (&ecc, "ECC", "keyAgreement"),
    ] {
        let err = chain_err(check(&p, e));
        let ChainError::Profile(pe) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(pe.issues, [ProfileIssue::KeyUsage { key, want }]);
        assert!(err.to_string().contains(&format!("lacks {want}")), "{err}");
    }
    let p = policy(vec![r], vec![], ProfileMode::Warn, ChainOptions::default());
    let v = check(&p, &rsa).unwrap();
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("lacks keyEncipherment")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn missing_identity_fields_fail_enforce_and_warn_in_warn_mode() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let none = ek(
        &pki,
        "noid",
        Key::Rsa(2048),
        "root",
        "sha256",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment",
    );
    let partial = pki.cert(&Spec {
        name: "partial",
        subject: "/CN=unknown",
        key: Key::Rsa(2048),
        issuer: Some("root"),
        ext: EK_RSA_EXT,
        sections: "[tpm_id]\na.2.23.133.2.1=id:4E544300\n",
        ..Spec::default()
    });
    let p = policy(
        vec![r.clone()],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    for (e, missing) in [
        (&none, vec!["manufacturer", "model", "version"]),
        (&partial, vec!["model", "version"]),
    ] {
        let err = chain_err(check(&p, e));
        let ChainError::Profile(pe) = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(&pe.issues[..], [ProfileIssue::MissingIdentity { missing: m, .. }] if *m == missing),
            "{pe}"
        );
    }
    let p = policy(vec![r], vec![], ProfileMode::Warn, ChainOptions::default());
    let v = check(&p, &partial).unwrap();
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("lacks TPM identity fields (model, version)")),
        "{:?}",
        v.warnings
    );
    assert_eq!(v.attributes.manufacturer.as_deref(), Some("id:4E544300"));
    assert_eq!(v.attributes.model, None);
}

#[test]
fn chain_loop_fails_cleanly() {
    let pki = Pki::new();
    let other = root(&pki, "unrelated", Key::P256, "sha256");
    root(&pki, "loopa", Key::P256, "sha256");
    root(&pki, "loopb", Key::P256, "sha256");
    // Cross-certificates: A's name and key signed by B, B's name and key signed by A.
    std::fs::copy(pki.dir().join("loopa.key"), pki.dir().join("loopa-x.key")).unwrap();
    std::fs::copy(pki.dir().join("loopb.key"), pki.dir().join("loopb-x.key")).unwrap();
    let cross = |name: &str, subject: &str, issuer: &str| {
        pki.cert(&Spec {
            name,
            subject,
            issuer: Some(issuer),
            ..Spec::default()
        })
    };
    let a_by_b = cross("loopa-x", "/O=Test/CN=loopa", "loopb");
    let b_by_a = cross("loopb-x", "/O=Test/CN=loopb", "loopa");
    let e = ek(
        &pki,
        "loopek",
        Key::Rsa(2048),
        "loopa",
        "sha256",
        EK_RSA_EXT,
    );
    let p = policy(
        vec![other],
        vec![a_by_b, b_by_a],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let started = std::time::Instant::now();
    let err = chain_err(check(&p, &e));
    assert!(matches!(err, ChainError::Loop { depth: 2, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn twenty_deep_chain_fails_with_a_depth_error() {
    let pki = Pki::new();
    let r = root(&pki, "deep0", Key::P256, "sha256");
    let mut inters = Vec::new();
    for i in 1..20 {
        inters.push(ca(
            &pki,
            &format!("deep{i}"),
            Key::P256,
            &format!("deep{}", i - 1),
            "sha256",
            CA_EXT,
        ));
    }
    let e = ek(&pki, "deepek", Key::P256, "deep19", "sha256", ECC_EK_EXT);
    let p = policy(
        vec![r.clone()],
        inters.clone(),
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = chain_err(check(&p, &e));
    assert_eq!(err, ChainError::TooDeep { max_depth: 8 });
    // The chain itself is sound: with room for 21 certificates it verifies.
    let opts = ChainOptions {
        max_depth: 21,
        ..ChainOptions::default()
    };
    let p = policy(vec![r], inters, ProfileMode::Enforce, opts);
    assert_eq!(check(&p, &e).unwrap().passed, Check::Chain);
}

#[test]
fn issuers_must_be_cas_within_their_path_length() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let not_ca = ca(
        &pki,
        "notca",
        Key::P256,
        "root",
        "sha256",
        "basicConstraints=critical,CA:FALSE",
    );
    let no_sign = ca(
        &pki,
        "nosign",
        Key::P256,
        "root",
        "sha256",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature",
    );
    let len0 = ca(
        &pki,
        "len0",
        Key::P256,
        "root",
        "sha256",
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign",
    );
    let below = ca(&pki, "below", Key::P256, "len0", "sha256", CA_EXT);
    for (issuer, inters, want) in [
        ("notca", vec![not_ca], "basicConstraints does not say cA"),
        ("nosign", vec![no_sign], "keyUsage lacks keyCertSign"),
        ("below", vec![len0, below], "allows 0 intermediate"),
    ] {
        let e = ek(
            &pki,
            &format!("ek-{issuer}"),
            Key::P256,
            issuer,
            "sha256",
            ECC_EK_EXT,
        );
        let p = policy(
            vec![r.clone()],
            inters,
            ProfileMode::Enforce,
            ChainOptions::default(),
        );
        let err = chain_err(check(&p, &e));
        assert!(err.to_string().contains(want), "{issuer}: {err}");
    }
}

#[test]
fn unknown_critical_extension_and_explicit_default_boolean() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let crit = ek(
        &pki,
        "crit",
        Key::P256,
        "root",
        "sha256",
        &format!("{ECC_EK_EXT}\n1.2.3.4=critical,DER:05:00"),
    );
    let err = chain_err(check(&p, &crit));
    assert!(
        matches!(&err, ChainError::CriticalExtension { oid, .. } if oid == "1.2.3.4"),
        "{err}"
    );
    // basicConstraints with cA FALSE encoded explicitly (DER forbids it; real EKs do it).
    let ext = ECC_EK_EXT.replace(
        "basicConstraints=critical,CA:FALSE",
        "basicConstraints=critical,DER:30:03:01:01:00",
    );
    let explicit = ek(&pki, "explicit", Key::P256, "root", "sha256", &ext);
    assert!(
        explicit
            .windows(5)
            .any(|w| w == [0x30, 0x03, 0x01, 0x01, 0x00])
    );
    assert_eq!(check(&p, &explicit).unwrap().passed, Check::Chain);
}

#[test]
fn same_subject_issuers_are_tried_in_turn() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let no_ids = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none";
    let first = pki.cert(&Spec {
        name: "alt1",
        subject: "/CN=Alt CA",
        issuer: Some("root"),
        ext: no_ids,
        ..Spec::default()
    });
    let second = pki.cert(&Spec {
        name: "alt2",
        subject: "/CN=Alt CA",
        issuer: Some("root"),
        ext: no_ids,
        ..Spec::default()
    });
    let ext = ECC_EK_EXT.replace(
        "authorityKeyIdentifier=keyid",
        "authorityKeyIdentifier=none",
    );
    let e = ek(&pki, "altek", Key::P256, "alt2", "sha256", &ext);
    // Only the wrong one: its signature check fails, and that is the reason given.
    let p = policy(
        vec![r.clone()],
        vec![first.clone()],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = chain_err(check(&p, &e));
    assert!(
        matches!(&err, ChainError::Signature { depth: 0, .. }),
        "{err}"
    );
    let p = policy(
        vec![r],
        vec![first, second],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    assert_eq!(check(&p, &e).unwrap().passed, Check::Chain);
}

#[test]
fn expired_or_not_yet_valid_intermediates_fail() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let i = ca(&pki, "inter", Key::P256, "root", "sha256", CA_EXT);
    let e = ek(&pki, "ek", Key::P256, "inter", "sha256", ECC_EK_EXT);
    let p = policy(
        vec![r],
        vec![i],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let ev = Evidence {
        ek_cert: Some(&e),
        ek_chain: &[],
        ek_public: None,
    };
    // The intermediate and root live 30 days; the EK ten years.
    let later = SystemTime::now() + Duration::from_secs(40 * 86_400);
    let err = chain_err(validate(&p, &ev, later));
    assert!(matches!(err, ChainError::Time { depth: 1, .. }), "{err}");
    let earlier = SystemTime::now() - Duration::from_secs(86_400);
    let err = chain_err(validate(&p, &ev, earlier));
    assert!(matches!(err, ChainError::Time { depth: 0, .. }), "{err}");
}

#[test]
fn many_same_name_candidates_exhaust_the_budget_not_the_cpu() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let no_ids = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none";
    let decoys: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            pki.cert(&Spec {
                name: &format!("decoy{i}"),
                subject: "/CN=Same CA",
                issuer: Some("root"),
                ext: no_ids,
                ..Spec::default()
            })
        })
        .collect();
    // The real issuer has the same name but is not configured.
    pki.cert(&Spec {
        name: "real",
        subject: "/CN=Same CA",
        issuer: Some("root"),
        ext: no_ids,
        ..Spec::default()
    });
    let ext = ECC_EK_EXT.replace(
        "authorityKeyIdentifier=keyid",
        "authorityKeyIdentifier=none",
    );
    let e = ek(&pki, "ek", Key::P256, "real", "sha256", &ext);
    let p = policy(
        vec![r],
        decoys,
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = chain_err(check(&p, &e));
    assert!(
        matches!(err, ChainError::Budget { signatures: 32, .. }),
        "{err}"
    );
}
