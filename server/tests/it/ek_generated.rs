//! EK validation against certificates generated at test time with the `openssl` CLI:
//! algorithm coverage (RSA leaves under ECDSA issuers, P-384/P-521, SHA-384/512, RSA-PSS,
//! SHA-1 gating) and the negative cases of the TCG profile and the path builder (loops,
//! 20-deep chains, non-CA issuers, pathLen, unknown critical extensions).

use crate::ek_support;

use std::collections::HashSet;
use std::error::Error as _;
use std::time::{Duration, SystemTime};

use ek_support::{
    CA_EXT, EK_RSA_EXT, Key, Pki, Spec, TPM_ID, assert_no_repeated_reason, openssl_public_hash,
    patch, spki_of, tpm2b_public, validity,
};
use ekattest_protocol::tpm::public::{Public, PublicError};
use ekattest_server::ek::{
    ChainError, ChainOptions, Check, EkError, EkPolicy, Evidence, ProfileIssue, ProfileMode,
    TrustStore, Verdict, validate,
};
use ekattest_server::policy::SpiffeIdTemplate;

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
    check_at(p, ek, SystemTime::now())
}

/// [`check`] at the time `at`.
fn check_at(p: &EkPolicy, ek: &[u8], at: SystemTime) -> Result<Verdict, EkError> {
    let ev = Evidence {
        ek_cert: Some(ek),
        ek_chain: &[],
        ek_public: None,
    };
    validate(p, &ev, at)
}

/// The Enforce policy with default options that trusts `root` alone, and its rejection of
/// `ek` at `secs` after the epoch (each reason said once).
fn rejected_under_root(root: Vec<u8>, ek: &[u8], secs: u64) -> (EkPolicy, EkError) {
    let p = policy(
        vec![root],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = check_at(&p, ek, epoch_plus(secs)).unwrap_err();
    assert_no_repeated_reason(&err);
    (p, err)
}

/// `secs` after the epoch.
fn epoch_plus(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
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
        ek_public: Some(Public::decode(&public).unwrap()),
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
    for (e, key, want, also) in [
        (&rsa, "RSA", "keyEncipherment", "keyAgreement"),
        (&ecc, "ECC", "keyAgreement", "keyEncipherment"),
    ] {
        let err = chain_err(check(&p, e));
        let ChainError::Profile(pe) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(pe.issues, [ProfileIssue::KeyUsage { key, want, also }]);
        assert!(
            err.to_string()
                .contains(&format!("lacks {want} (and {also}, also accepted)")),
            "{err}"
        );
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
    assert!(matches!(err, ChainError::EkNotYetValid { .. }), "{err}");
    // acceptExpiredEk covers the EK certificate only: an expired issuer still fails.
    let mut lenient = p.clone();
    lenient.chain.accept_expired_ek = true;
    let err = chain_err(validate(&lenient, &ev, later));
    assert!(matches!(err, ChainError::Time { depth: 1, .. }), "{err}");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A P-256 root valid for ten years and, under it, an RSA EK valid for `ek_days`.
fn long_root_short_ek(pki: &Pki, ek_days: u32) -> (Vec<u8>, Vec<u8>) {
    let r = pki.cert(&Spec {
        name: "root",
        subject: "/O=Test/CN=root",
        days: 3650,
        ..Spec::default()
    });
    let e = pki.cert(&Spec {
        name: "ek",
        subject: "/CN=unknown",
        key: Key::Rsa(2048),
        issuer: Some("root"),
        ext: EK_RSA_EXT,
        sections: TPM_ID,
        days: ek_days,
        serial: "0x0e0e",
        ..Spec::default()
    });
    (r, e)
}

#[test]
fn expired_ek_is_rejected_naming_not_after_and_the_option_unless_accept_expired_ek() {
    let pki = Pki::new();
    let (r, e) = long_root_short_ek(&pki, 30);
    let later = unix_now() + 40 * 86_400;
    // openssl agrees: the chain is sound, only the EK certificate has expired.
    let openssl = pki.openssl_verify(&["root"], &[], &e, later).unwrap_err();
    assert!(openssl.contains("certificate has expired"), "{openssl}");
    pki.openssl_verify(&["root"], &[], &e, unix_now() + 60)
        .unwrap();

    let (mut p, err) = rejected_under_root(r, &e, later);
    let EkError::Chain {
        source: ChainError::EkExpired { not_after, .. },
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    // The date is the certificate's notAfter, as openssl reads it (same year, month, day).
    let openssl_end = String::from_utf8(ek_support::run(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-inform", "DER", "-in"])
            .arg(pki.write("expired-ek", &e)),
    ))
    .unwrap();
    let day_of = |t: &str| t.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let year_of = |t: &str| {
        t.split_whitespace()
            .find(|w| w.len() == 4 && w.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
    };
    let openssl_end = openssl_end.trim().trim_start_matches("notAfter=");
    assert_eq!(
        day_of(not_after),
        day_of(openssl_end),
        "{not_after} vs {openssl_end}"
    );
    assert_eq!(year_of(not_after), year_of(openssl_end));
    let text = ekattest_protocol::ErrorChain(&err).to_string();
    for want in [
        "expired on",
        "(notAfter)",
        "acceptExpiredEk: true",
        not_after,
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }

    p.chain.accept_expired_ek = true;
    let v = check_at(&p, &e, epoch_plus(later)).unwrap();
    assert_eq!(v.passed, Check::Chain);
    assert_eq!(v.attributes.version.as_deref(), Some("7.64"));
    assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    assert!(
        v.warnings[0].contains(&format!("expired on {not_after} (notAfter)"))
            && v.warnings[0].contains("acceptExpiredEk"),
        "{:?}",
        v.warnings
    );
    // Inside its validity period nothing is flagged, with or without the option.
    let v = check(&p, &e).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn not_yet_valid_ek_is_rejected_naming_not_before_unless_accept_expired_ek() {
    let pki = Pki::new();
    let (r, short) = long_root_short_ek(&pki, 20);
    // Re-sign the EK valid from its old notAfter (now + 20 days) to the root's notAfter.
    let (_, ek_end) = validity(&short);
    let (_, root_end) = validity(&r);
    let e = pki.resign(&short, "root", "sha256", |tbs| {
        let (nb, na) = validity(tbs);
        let mut times = nb.to_vec();
        times.extend_from_slice(&na);
        let mut new = ek_end.to_vec();
        new.extend_from_slice(&root_end);
        patch(tbs, &times, &new);
    });
    let tomorrow = unix_now() + 86_400;
    let openssl = pki
        .openssl_verify(&["root"], &[], &e, tomorrow)
        .unwrap_err();
    assert!(openssl.contains("not yet valid"), "{openssl}");
    pki.openssl_verify(&["root"], &[], &e, unix_now() + 30 * 86_400)
        .unwrap();

    let (mut p, err) = rejected_under_root(r, &e, tomorrow);
    let EkError::Chain {
        source: ChainError::EkNotYetValid { not_before, .. },
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    let text = err.source().unwrap().to_string();
    for want in [
        "is not valid before",
        "(notBefore)",
        "acceptExpiredEk: true",
        not_before.as_str(),
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    // Thirty days later it is valid; tomorrow it passes only with the option.
    let later = epoch_plus(unix_now() + 30 * 86_400);
    assert_eq!(check_at(&p, &e, later).unwrap().passed, Check::Chain);
    p.chain.accept_expired_ek = true;
    let v = check_at(&p, &e, epoch_plus(tomorrow)).unwrap();
    assert_eq!(v.passed, Check::Chain);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains(&format!("not valid before {not_before} (notBefore)"))),
        "{:?}",
        v.warnings
    );
}

#[test]
fn rsa_ek_with_key_agreement_only_passes_enforce_with_a_warning() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let ext = EK_RSA_EXT.replace("keyEncipherment", "keyAgreement");
    let e = ek(&pki, "plutonlike", Key::Rsa(2048), "root", "sha256", &ext);
    // openssl reads the case as built: keyAgreement, no keyEncipherment, an RSA key.
    let text = pki.openssl_text(&e);
    assert!(text.contains("Key Agreement"), "{text}");
    assert!(!text.contains("Key Encipherment"), "{text}");
    assert!(text.contains("rsaEncryption"), "{text}");
    for mode in [ProfileMode::Enforce, ProfileMode::Warn] {
        let p = policy(vec![r.clone()], vec![], mode, ChainOptions::default());
        let v = check(&p, &e).unwrap();
        assert_eq!(v.passed, Check::Chain);
        assert_eq!(v.attributes.model.as_deref(), Some("NPCT75x"));
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(
            v.warnings[0].contains("keyAgreement instead of keyEncipherment"),
            "{:?}",
            v.warnings
        );
    }
    // Both bits: the profile's bit is there, nothing to flag.
    let both = EK_RSA_EXT.replace("keyEncipherment", "keyEncipherment,keyAgreement");
    let e = ek(&pki, "bothbits", Key::Rsa(2048), "root", "sha256", &both);
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    assert!(check(&p, &e).unwrap().warnings.is_empty());
}

#[test]
fn ca_certificate_as_ek_is_rejected_in_every_mode() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    // A CA certificate with the TPM identity and keyUsage an EK would have: only cA differs.
    let ca_ek = ek(
        &pki,
        "caek",
        Key::Rsa(2048),
        "root",
        "sha256",
        &EK_RSA_EXT.replace("CA:FALSE", "CA:TRUE"),
    );
    assert!(pki.openssl_text(&ca_ek).contains("CA:TRUE"));
    let inter = ca(&pki, "inter", Key::P256, "root", "sha256", CA_EXT);
    for mode in [ProfileMode::Enforce, ProfileMode::Warn] {
        let mut p = policy(
            vec![r.clone()],
            vec![inter.clone()],
            mode,
            ChainOptions::default(),
        );
        let err = chain_err(check(&p, &ca_ek));
        assert!(matches!(err, ChainError::EkIsCa { .. }), "{mode:?}: {err}");
        assert!(
            err.to_string()
                .contains("is a CA certificate (basicConstraints cA)"),
            "{err}"
        );
        // A configured CA certificate sent as the EK says which one it is.
        for (cert, field, index) in [(&r, "caCerts", 0), (&inter, "intermediateCerts", 0)] {
            let err = chain_err(check(&p, cert));
            assert!(
                matches!(&err, ChainError::EkIsConfiguredCa { field: f, index: i, .. } if *f == field && *i == index),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("is {field} certificate {index} of this policy")),
                "{text}"
            );
            assert!(!text.contains("no configured CA"), "{text}");
        }
        // With an allow-list configured too (not listing this key), the chain check's reason
        // is the same, printed once.
        p.allowed_hashes.insert([0x22; 32]);
        let e = check(&p, &ca_ek).unwrap_err();
        assert!(
            matches!(&e, EkError::NotTrusted { reasons, .. }
                if matches!(reasons.chain, Some(ChainError::EkIsCa { .. }))),
            "{e:?}"
        );
        assert_no_repeated_reason(&e);
    }
}

#[test]
fn self_signed_roots_and_eks_outside_the_configured_cas_say_so() {
    let pki = Pki::new();
    let trusted = root(&pki, "trusted", Key::P256, "sha256");
    let vendor = root(&pki, "vendor", Key::P384, "sha384");
    let inter = ca(&pki, "vendorinter", Key::P256, "vendor", "sha256", CA_EXT);
    let e = ek(
        &pki,
        "vendorek",
        Key::Rsa(2048),
        "vendorinter",
        "sha256",
        EK_RSA_EXT,
    );
    // openssl: the path ends at a self-signed root it was not told to trust.
    let now = unix_now() + 60;
    let openssl = pki
        .openssl_verify(&["trusted"], &["vendorinter", "vendor"], &e, now)
        .unwrap_err();
    assert!(
        openssl.contains("self-signed certificate in certificate chain"),
        "{openssl}"
    );
    // The vendor root arrives as an intermediate (configured, or sent by the device).
    let mut chain = inter.clone();
    chain.extend_from_slice(&vendor);
    for (inters, sent) in [
        (vec![inter.clone(), vendor.clone()], vec![]),
        (vec![], chain),
    ] {
        let p = policy(
            vec![trusted.clone()],
            inters,
            ProfileMode::Enforce,
            ChainOptions::default(),
        );
        let ev = Evidence {
            ek_cert: Some(&e),
            ek_chain: &sent,
            ek_public: None,
        };
        let err = chain_err(validate(&p, &ev, SystemTime::now()));
        assert!(
            matches!(err, ChainError::UntrustedRoot { depth: 2, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("'O=Test, CN=vendor' (depth 2) is a self-signed root"),
            "{text}"
        );
        assert!(text.contains("not among the configured caCerts"), "{text}");
        assert!(!text.contains("loop"), "{text}");
    }
    // A self-signed EK certificate.
    let selfek = pki.cert(&Spec {
        name: "selfek",
        subject: "/CN=self-made EK",
        key: Key::Rsa(2048),
        ext: &EK_RSA_EXT.replace("authorityKeyIdentifier=keyid", "subjectKeyIdentifier=hash"),
        sections: TPM_ID,
        ..Spec::default()
    });
    let openssl = pki
        .openssl_verify(&["trusted"], &[], &selfek, now)
        .unwrap_err();
    assert!(openssl.contains("self-signed certificate"), "{openssl}");
    let p = policy(
        vec![trusted],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = chain_err(check(&p, &selfek));
    assert!(matches!(err, ChainError::SelfSignedEk { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("'CN=self-made EK' is self-signed"), "{text}");
    assert!(
        !text.contains("no configured CA or intermediate certificate issued"),
        "{text}"
    );
}

#[test]
fn tpm12_ek_certificate_says_tpm_2_is_required() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let e = ek(&pki, "ek20", Key::Rsa(2048), "root", "sha256", EK_RSA_EXT);
    // A TPM 1.2 EK certificate: the same RSA key under id-RSAES-OAEP (1.2.840.113549.1.1.7)
    // with RSAES-OAEP-params (here the all-default empty SEQUENCE instead of rsaEncryption's
    // NULL), re-signed by the same CA.
    let rsa = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut oaep = rsa;
    oaep[12] = 0x07;
    oaep[13] = 0x30;
    let tpm12 = pki.resign(&e, "root", "sha256", |tbs| patch(tbs, &rsa, &oaep));
    // openssl names the key algorithm (it cannot load such keys, so `openssl verify` of a
    // TPM 1.2 EK certificate fails on the key, not the signature; the re-signing itself is
    // checked with openssl in not_yet_valid_ek_is_rejected_naming_not_before_...).
    let text = pki.openssl_text(&tpm12);
    assert!(text.contains("Public Key Algorithm: rsaesOaep"), "{text}");
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let err = check(&p, &tpm12).unwrap_err();
    assert!(
        matches!(err, EkError::UnsupportedKey(PublicError::Tpm12Key)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("the EK of a TPM 1.2"), "{text}");
    assert!(text.contains("TPM 2.0 is required"), "{text}");
    assert!(!text.contains("neither rsaEncryption"), "{text}");
    assert_no_repeated_reason(&err);
    // The TPM 2.0 original is fine.
    assert_eq!(check(&p, &e).unwrap().passed, Check::Chain);
}

#[test]
fn version_ids_of_every_length_render_the_same_in_either_case() {
    let pki = Pki::new();
    let r = root(&pki, "root", Key::P256, "sha256");
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let template = SpiffeIdTemplate::parse("/tpm/{{tpm_ek.version}}/{{tpm_ek.model}}").unwrap();
    let mut paths = Vec::new();
    for (i, (version, want)) in [
        ("id:073F", "7.63"),
        ("id:073f", "7.63"),
        ("ID:073F", "7.63"),
        ("id:00070040", "7.64"),
        ("id:0007004a", "7.74"),
        ("id:0007004A", "7.74"),
        ("id:7a3", "id:7A3"),
        ("id:7A3", "id:7A3"),
    ]
    .into_iter()
    .enumerate()
    {
        let sections = format!(
            "[tpm_id]\na.2.23.133.2.1=id:4E544300\nb.2.23.133.2.2=NPCT75x\nc.2.23.133.2.3={version}\n"
        );
        let e = pki.cert(&Spec {
            name: &format!("ver{i}"),
            subject: "/CN=unknown",
            key: Key::P256,
            issuer: Some("root"),
            ext: ECC_EK_EXT,
            sections: &sections,
            ..Spec::default()
        });
        assert!(pki.openssl_text(&e).contains(version), "{version}");
        let v = check(&p, &e).unwrap();
        assert_eq!(v.attributes.version.as_deref(), Some(want), "{version}");
        paths.push((version, template.render(&v.attributes, None).unwrap()));
    }
    // The same firmware gives the same SPIFFE path whatever the letter case.
    for pair in [(0, 1), (1, 2), (4, 5), (6, 7)] {
        assert_eq!(paths[pair.0].1, paths[pair.1].1, "{pair:?}");
    }
    assert_eq!(paths[0].1, "/tpm/7.63/NPCT75x");
    assert_eq!(paths[6].1, "/tpm/id_7A3/NPCT75x");
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

#[test]
fn ek_with_not_after_in_9999_is_valid() {
    let pki = Pki::new();
    let r = pki.cert(&Spec {
        name: "root",
        subject: "/O=Test/CN=root",
        days: 3650,
        ..Spec::default()
    });
    // notAfter on 9999-12-31 (GeneralizedTime), as some vendors write "no expiry".
    let days = u32::try_from((253_402_300_799 - unix_now()) / 86_400).unwrap();
    let e = pki.cert(&Spec {
        name: "forever",
        subject: "/CN=unknown",
        key: Key::Rsa(2048),
        issuer: Some("root"),
        ext: EK_RSA_EXT,
        sections: TPM_ID,
        days,
        ..Spec::default()
    });
    let text = pki.openssl_text(&e);
    assert!(text.contains("Not After : Dec 31"), "{text}");
    assert!(text.contains("9999 GMT"), "{text}");
    let p = policy(
        vec![r],
        vec![],
        ProfileMode::Enforce,
        ChainOptions::default(),
    );
    let v = check(&p, &e).unwrap();
    assert_eq!(v.passed, Check::Chain);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}
