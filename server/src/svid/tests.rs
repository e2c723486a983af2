//! Unit tests of the SVID authority: certificates parsed back with x509-parser, signatures
//! cross-checked with the p256 crate (the agent's implementation), and every rejection path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ekattest_protocol::RejectCode;
use ekattest_protocol::msg::{Accepted, AttributeName, SessionId};
use ekattest_protocol::sign;
use ekattest_testkit::testdata;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::EncodePublicKey as _;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use super::*;
// Identity::accepted (attest) is the caller of issue and sign_result: its tests live here,
// with the Result signature checks (test-only dependency on attest).
use crate::attest::Identity;
use crate::ek::Check;

const ID: &str = "spiffe://example.org/agents/tpm/abc123";

/// An agent-style key: p256, as the agent makes it.
fn agent_key() -> (SigningKey, Vec<u8>) {
    let mut seed = [0u8; 32];
    loop {
        getrandom::getrandom(&mut seed).unwrap();
        if let Ok(key) = SigningKey::from_slice(&seed) {
            let spki = key
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec();
            return (key, spki);
        }
    }
}

fn new_ca() -> (Authority, String, String) {
    Authority::generate("example.org", Duration::from_secs(86_400)).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// The CA's public key as the p256 crate sees it.
fn ca_verifier(ca: &Authority) -> VerifyingKey {
    let cert = parse(ca.cert_der());
    VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data).unwrap()
}

/// Verifies `cert`'s signature with `issuer` (p256, not aws-lc which made it).
fn signed_by(cert: &X509Certificate<'_>, issuer: &VerifyingKey) -> bool {
    let Ok(sig) = Signature::from_der(&cert.signature_value.data) else {
        return false;
    };
    issuer.verify(cert.tbs_certificate.as_ref(), &sig).is_ok()
}

fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

#[test]
fn generated_ca_is_a_p256_ca_for_its_trust_domain() {
    let (ca, cert_pem, key_pem) = new_ca();
    assert_eq!(ca.trust_domain(), Some("example.org"));
    assert_eq!(ca.bundle_pem(), cert_pem);
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let cert = parse(ca.cert_der());
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(
        cert.basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(1)
    );
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert_eq!(cert.subject().to_string(), "O=ekattest, CN=example.org CA");
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
    assert!(signed_by(&cert, &ca_verifier(&ca)), "self-signed");
    assert!(ski(&cert).is_some());
    // Loading what it wrote gives the same CA.
    let again = Authority::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());

    for bad in ["", "Example.org", "a/b", "x y", &"a".repeat(256)] {
        assert!(
            matches!(
                Authority::generate(bad, Duration::from_secs(60)),
                Err(SvidError::TrustDomain(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Authority::generate("example.org", Duration::ZERO),
        Err(SvidError::Validity(_))
    ));
}

#[test]
fn issued_svid_parses_back_with_every_field() {
    let (ca, _, _) = new_ca();
    let (_, spki) = agent_key();
    let now = SystemTime::now();
    let unix = i64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let der = ca.issue(&spki, ID, now, Duration::from_secs(3600)).unwrap();
    assert!(der.len() <= SVID_MAX);
    let cert = parse(&der);
    let ca_cert = parse(ca.cert_der());

    // Key, names, validity.
    assert_eq!(cert.public_key().raw, spki.as_slice());
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    assert_eq!(san.value.general_names, [GeneralName::URI(ID)]);
    assert_eq!(cert.validity().not_before.timestamp(), unix - 60);
    assert_eq!(cert.validity().not_after.timestamp(), unix + 3600);

    // Usages and constraints.
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.key_encipherment());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(aki(&cert), ski(&ca_cert), "AKI names the CA key");

    // Serial: positive, at most 128 bits, fresh each time.
    assert!(cert.raw_serial().len() <= 17);
    assert!(cert.raw_serial()[0] & 0x80 == 0, "positive");
    let other = ca.issue(&spki, ID, now, Duration::from_secs(3600)).unwrap();
    assert_ne!(cert.raw_serial(), parse(&other).raw_serial());

    // Signature: by the CA's key, and only that.
    assert!(signed_by(&cert, &ca_verifier(&ca)));
    let (other_ca, _, _) = new_ca();
    assert!(!signed_by(&cert, &ca_verifier(&other_ca)));
    assert!(signed_by(&parse(&other), &ca_verifier(&ca)));
}

#[test]
fn svid_validity_is_clamped_to_the_ca_and_refused_once_it_expired() {
    let (ca, _, _) = Authority::generate("example.org", Duration::from_secs(3600)).unwrap();
    let ca_end = parse(ca.cert_der()).validity().not_after.timestamp();
    let (_, spki) = agent_key();
    let now = SystemTime::now();
    let der = ca
        .issue(&spki, ID, now, Duration::from_secs(10 * 3600))
        .unwrap();
    assert_eq!(parse(&der).validity().not_after.timestamp(), ca_end);

    let later = now + Duration::from_secs(2 * 3600);
    let e = ca
        .issue(&spki, ID, later, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(e, SvidError::Validity(_)), "{e}");
    assert!(e.to_string().contains("CA certificate expired"), "{e}");
    assert!(matches!(
        ca.issue(&spki, ID, now, Duration::ZERO),
        Err(SvidError::Validity(_))
    ));
    assert!(matches!(
        ca.issue(&spki, ID, now, Duration::from_secs(u64::MAX)),
        Err(SvidError::Validity(_))
    ));
}

#[test]
fn issue_refuses_bad_spiffe_ids_and_keys() {
    let (ca, _, _) = new_ca();
    let (_, spki) = agent_key();
    let now = SystemTime::now();
    let ttl = Duration::from_secs(60);
    let long = format!("spiffe://example.org/{}", "a".repeat(SPIFFE_ID_MAX));
    for id in [
        "/agents/tpm/abc",
        "spiffe://other.org/agents/x",
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://example.org/a//b",
        "spiffe://example.org/a b",
        "spiffe://EXAMPLE.org/a",
        "https://example.org/a",
        long.as_str(),
    ] {
        let e = ca.issue(&spki, id, now, ttl).unwrap_err();
        assert!(matches!(e, SvidError::SpiffeId { .. }), "{id}: {e}");
    }
    let e = ca
        .issue(&testdata::vector("rsa2048/ek.spki.der"), ID, now, ttl)
        .unwrap_err();
    assert!(matches!(e, SvidError::SvidKey(_)), "{e}");
}

#[test]
fn issue_fits_the_protocol_limit_or_says_so() {
    let (ca, _, _) = new_ca();
    let (_, spki) = agent_key();
    // The longest SPIFFE ID the protocol carries cannot fit an SVID of SVID_MAX bytes (the
    // 2048-byte SAN plus the rest of the certificate): the error must say so, not truncate.
    let path = "/a".repeat((SPIFFE_ID_MAX - "spiffe://example.org".len()) / 2);
    let id = format!("spiffe://example.org{path}");
    assert!(id.len() <= SPIFFE_ID_MAX);
    let e = ca
        .issue(&spki, &id, SystemTime::now(), Duration::from_secs(60))
        .unwrap_err();
    assert!(
        matches!(e, SvidError::TooLarge { len, max: SVID_MAX } if len > SVID_MAX),
        "{e}"
    );
}

fn identity(svid_key: Option<Vec<u8>>) -> Identity {
    Identity {
        policy: "p".to_owned(),
        check: Check::AllowList,
        attributes: vec![(AttributeName::PublicHash, "ab".repeat(32))],
        spiffe_id: ID.to_owned(),
        warnings: Vec::new(),
        svid_key,
        svid_key_in_tpm: false,
        agent: "agent-1".to_owned(),
        transcript: T,
        ek_hash: [0xab; 32],
    }
}

/// The Login transcript of [`identity`].
const T: sign::Transcript = [0x33; 32];

/// Verifies the Result signature with the CA's public key (p256).
fn result_verifies(ca: &Authority, agent: &str, session: &SessionId, a: &Accepted) -> bool {
    result_verifies_for(ca, agent, session, &T, a)
}

fn result_verifies_for(
    ca: &Authority,
    agent: &str,
    session: &SessionId,
    t: &sign::Transcript,
    a: &Accepted,
) -> bool {
    let Ok(bytes) = sign::result_signed_bytes(agent, session, t, a) else {
        return false;
    };
    let Ok(sig) = Signature::from_der(&a.signature) else {
        return false;
    };
    ca_verifier(ca).verify(&bytes, &sig).is_ok()
}

#[test]
fn signed_result_verifies_and_binds_every_covered_field() {
    let (ca, _, _) = new_ca();
    let (_, spki) = agent_key();
    let session = SessionId([3; 16]);
    let now = SystemTime::now();
    let a = identity(Some(spki.clone()))
        .accepted(&ca, "agent-1", &session, now, Duration::from_secs(600))
        .unwrap();
    assert!(a.signature.len() <= sign::ECDSA_P256_DER_MAX);
    assert!(result_verifies(&ca, "agent-1", &session, &a));
    assert_eq!(a.spiffe_id.as_str(), ID);
    assert_eq!(parse(&a.svid).public_key().raw, spki.as_slice());

    assert!(!result_verifies(&ca, "agent-2", &session, &a));
    assert!(!result_verifies(&ca, "agent-1", &SessionId([4; 16]), &a));
    assert!(!result_verifies_for(
        &ca,
        "agent-1",
        &session,
        &[0x34; 32],
        &a
    ));
    let mut m = a.clone();
    m.spiffe_id = heapless::String::try_from("spiffe://example.org/agents/x").unwrap();
    assert!(!result_verifies(&ca, "agent-1", &session, &m));
    let mut m = a.clone();
    m.attributes[0].value = heapless::String::try_from("cd").unwrap();
    assert!(!result_verifies(&ca, "agent-1", &session, &m));
    let mut m = a.clone();
    m.attributes.clear();
    assert!(!result_verifies(&ca, "agent-1", &session, &m));
    let mut m = a.clone();
    let last = m.svid.len() - 1;
    m.svid[last] ^= 1;
    assert!(!result_verifies(&ca, "agent-1", &session, &m));
    let (other, _, _) = new_ca();
    assert!(!result_verifies(&other, "agent-1", &session, &a));

    // Re-signing after a change makes it verify again: sign_result covers the new content.
    let mut m = a.clone();
    m.svid.clear();
    ca.sign_result("agent-1", &session, &T, &mut m).unwrap();
    assert!(result_verifies(&ca, "agent-1", &session, &m));
}

#[test]
fn accepted_without_key_has_no_svid_and_failures_are_internal() {
    let (ca, _, _) = new_ca();
    let session = SessionId([5; 16]);
    let now = SystemTime::now();
    let ttl = Duration::from_secs(60);
    let a = identity(None)
        .accepted(&ca, "agent-1", &session, now, ttl)
        .unwrap();
    assert!(a.svid.is_empty());
    assert!(result_verifies(&ca, "agent-1", &session, &a));

    let (_, spki) = agent_key();
    let mut paths_only = identity(Some(spki));
    paths_only.spiffe_id = "/agents/tpm/abc".to_owned();
    let r = paths_only
        .accepted(&ca, "agent-1", &session, now, ttl)
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Internal);
    assert!(r.reason.contains("not a spiffe:// URI"), "{}", r.reason);
    let r = identity(None)
        .accepted(&ca, &"a".repeat(1000), &session, now, ttl)
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Internal);
}

fn pop(key: &SigningKey, t: &sign::Transcript, session: &SessionId, mac: &[u8; 32]) -> Vec<u8> {
    let msg = sign::pop_signed_bytes(t, session, mac);
    let sig: Signature = key.sign(&msg);
    sig.to_der().as_bytes().to_vec()
}

#[test]
fn verify_pop_accepts_the_agents_signature_only_for_its_transcript_session_mac_and_key() {
    let (key, spki) = agent_key();
    let session = SessionId([9; 16]);
    let mac = [7u8; 32];
    let good = pop(&key, &T, &session, &mac);
    verify_pop(&spki, &T, &session, &mac, &good).unwrap();

    let bad =
        |spki: &[u8], t: &sign::Transcript, session: &SessionId, mac: &[u8; 32], pop: &[u8]| {
            matches!(
                verify_pop(spki, t, session, mac, pop),
                Err(SvidError::BadPop)
            )
        };
    assert!(bad(&spki, &T, &SessionId([8; 16]), &mac, &good));
    assert!(bad(&spki, &[0x34; 32], &session, &mac, &good));
    assert!(bad(&spki, &T, &session, &[6; 32], &good));
    let (_, other_spki) = agent_key();
    assert!(bad(&other_spki, &T, &session, &mac, &good));
    assert!(bad(&spki, &T, &session, &mac, &good[..good.len() - 1]));
    assert!(bad(&spki, &T, &session, &mac, &[]));
    assert!(bad(
        &spki,
        &T,
        &session,
        &mac,
        &[0x30, 0x06, 2, 1, 1, 2, 1, 1]
    ));
    assert!(bad(&spki, &T, &session, &mac, &[0xff; 72]));
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(bad(&spki, &T, &session, &mac, &flipped));
    // A signature over the same fields under another context (a Result) is not a pop.
    let msg = [sign::RESULT_CONTEXT, &T, &session.0, &mac].concat();
    let sig: Signature = key.sign(&msg);
    assert!(bad(&spki, &T, &session, &mac, sig.to_der().as_bytes()));

    assert!(matches!(
        verify_pop(
            &testdata::vector("rsa2048/ek.spki.der"),
            &T,
            &session,
            &mac,
            &good
        ),
        Err(SvidError::SvidKey(_))
    ));
}

#[test]
fn challenges_are_signed_and_carry_the_signer_unless_the_login_names_it() {
    let (ca, _, _) = new_ca();
    let mut c = ekattest_protocol::msg::Challenge {
        session: SessionId([1; 16]),
        node: heapless::String::try_from("node-1").unwrap(),
        credential_blob: heapless::Vec::from_slice(&[1, 2, 3]).unwrap(),
        encrypted_secret: heapless::Vec::from_slice(&[4, 5]).unwrap(),
        expires_in: 300,
        transcript: T,
        signer: heapless::Vec::new(),
        signature: heapless::Vec::new(),
    };
    ca.sign_challenge("agent-1", None, &mut c).unwrap();
    assert_eq!(
        c.signer.as_slice(),
        ca.cert_der(),
        "no hint: the certificate travels"
    );
    let bytes = sign::challenge_signed_bytes("agent-1", &c).unwrap();
    let sig = Signature::from_der(&c.signature).unwrap();
    assert!(ca_verifier(&ca).verify(&bytes, &sig).is_ok());
    let other = sign::challenge_signed_bytes("agent-2", &c).unwrap();
    assert!(ca_verifier(&ca).verify(&other, &sig).is_err());

    let hint = sign::signer_hint(ca.cert_der());
    ca.sign_challenge("agent-1", Some(hint), &mut c).unwrap();
    assert!(c.signer.is_empty(), "the agent holds it: left out");
    ca.sign_challenge("agent-1", Some([0; 8]), &mut c).unwrap();
    assert_eq!(
        c.signer.as_slice(),
        ca.cert_der(),
        "a stale hint: sent again"
    );
}

#[test]
fn a_signer_issued_by_the_root_loads_chains_and_signs_svids() {
    let (root, root_pem, root_key) = new_ca();
    assert!(root.is_root());
    let (cert_pem, key_pem) = root.issue_signer(Duration::from_secs(86_400)).unwrap();
    let signer = Authority::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    assert!(!signer.is_root());
    let cert = parse(signer.cert_der());
    let root_cert = parse(root.cert_der());
    assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(
        eku.other
            .iter()
            .any(|o| o.as_bytes() == sign::SIGNER_EKU_OID_DER)
    );
    assert!(signer.cert_der().len() <= ekattest_protocol::limits::SIGNER_CERT_MAX);
    // The signer issues SVIDs under itself.
    let (_, spki) = agent_key();
    let svid = signer
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(parse(&svid).issuer().as_raw(), cert.subject().as_raw());

    // An intermediate CA without the signer usage is refused at load.
    let (plain_cert, plain_key) = plain_intermediate(&root_pem, &root_key);
    let e = Authority::from_pem(plain_cert.as_bytes(), plain_key.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("issue-signer"), "{e}");
    // A signer cannot issue signers (pathlen 0).
    let e = signer.issue_signer(Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().contains("pathLenConstraint 0"), "{e}");
}

/// An intermediate CA under the root without the signer usage (what a generic PKI issues).
fn plain_intermediate(root_pem: &str, root_key: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let issuer = Issuer::from_ca_cert_pem(root_pem, KeyPair::from_pem(root_key).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "plain intermediate");
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn check_svid_key_accepts_p256_and_names_every_other_problem() {
    let (_, spki) = agent_key();
    check_svid_key(&spki).unwrap();
    let reason = |der: &[u8]| match check_svid_key(der) {
        Err(SvidError::SvidKey(r)) => r,
        other => panic!("expected SvidKey, got {other:?}"),
    };
    assert!(reason(&testdata::vector("rsa2048/ek.spki.der")).contains("RSA"));
    assert!(reason(&testdata::vector("p384/ek.spki.der")).contains("NistP384"));
    let mut off_curve = spki.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    assert!(reason(&off_curve).contains("not on the P-256 curve"));
    let mut trailing = spki.clone();
    trailing.push(0);
    assert!(reason(&trailing).contains("trailing"));
    // Compressed point: 0x02 || x in a correctly sized SPKI.
    let mut compressed = spki[..spki.len() - 65].to_vec();
    let n = compressed.len();
    compressed[1] -= 32;
    compressed[n - 2] -= 32;
    compressed.push(2);
    compressed.extend_from_slice(&spki[spki.len() - 64..spki.len() - 32]);
    assert!(reason(&compressed).contains("uncompressed"));
    reason(&[]);
    reason(b"garbage garbage garbage");
    reason(&spki[..spki.len() - 1]);
    let e = check_svid_key(&[0x30, 0x00]).unwrap_err();
    assert!(
        e.to_string().starts_with("Login svid_key is not usable"),
        "{e}"
    );
}

#[test]
fn load_rejects_mismatched_non_ca_rsa_and_garbage_inputs() {
    let (ca, cert_pem, key_pem) = new_ca();
    let (_, _, other_key) = new_ca();
    assert!(matches!(
        Authority::from_pem(cert_pem.as_bytes(), other_key.as_bytes()),
        Err(SvidError::KeyMismatch { .. })
    ));

    // An SVID is not a CA.
    let (_, spki) = agent_key();
    let svid = ca
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let svid_pem = pem::encode(&pem::Pem::new("CERTIFICATE", svid));
    let e = Authority::from_pem(svid_pem.as_bytes(), key_pem.as_bytes()).unwrap_err();
    assert!(matches!(e, SvidError::CaCertificate { .. }), "{e}");
    assert!(e.to_string().contains("CA:TRUE"), "{e}");

    // RSA keys, PKCS#8 and PKCS#1.
    let rsa_pk8 = testdata::vector("rsa2048/ek_private.pk8.pem");
    let e = Authority::from_pem(cert_pem.as_bytes(), &rsa_pk8).unwrap_err();
    assert!(matches!(e, SvidError::CaKey { .. }), "{e}");
    assert!(e.to_string().contains("P-256"), "{e}");
    let pkcs1 = pem::encode(&pem::Pem::new("RSA PRIVATE KEY", vec![0x30, 0x00]));
    let e = Authority::from_pem(cert_pem.as_bytes(), pkcs1.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("RSA key"), "{e}");
    // A P-384 key.
    let e = Authority::from_pem(
        cert_pem.as_bytes(),
        &testdata::vector("p384/ek_private.pk8.pem"),
    )
    .unwrap_err();
    assert!(matches!(e, SvidError::CaKey { .. }), "{e}");

    // Garbage and empty files.
    for garbage in [
        &b""[..],
        b"not pem at all",
        b"-----BEGIN CERTIFICATE-----\n!!\n",
    ] {
        let e = Authority::from_pem(garbage, key_pem.as_bytes()).unwrap_err();
        assert!(matches!(e, SvidError::Pem { .. }), "{e}");
        let e = Authority::from_pem(cert_pem.as_bytes(), garbage).unwrap_err();
        assert!(matches!(e, SvidError::Pem { .. }), "{e}");
    }
    let junk_cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3]));
    let e = Authority::from_pem(junk_cert.as_bytes(), key_pem.as_bytes()).unwrap_err();
    assert!(matches!(e, SvidError::CaCertificate { .. }), "{e}");

    // load names the files.
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("ca.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    let missing = dir.path().join("missing.key");
    let e = Authority::load(&cert_path, &missing).unwrap_err();
    assert!(e.to_string().contains("missing.key"), "{e}");
    let key_path = dir.path().join("wrong.key");
    std::fs::write(&key_path, &other_key).unwrap();
    let e = Authority::load(&cert_path, &key_path).unwrap_err();
    assert!(
        e.to_string().contains("wrong.key") && e.to_string().contains("ca.pem"),
        "{e}"
    );
}

#[test]
fn sec1_keys_load_and_debug_hides_the_key() {
    let (ca, cert_pem, key_pem) = new_ca();
    let pkcs8 = pem::parse(&key_pem).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.contents()).unwrap();
    let sec1 =
        aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'_>>::as_der(
            &key.private_key(),
        )
        .unwrap();
    let sec1_pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()));
    let loaded = Authority::from_pem(cert_pem.as_bytes(), sec1_pem.as_bytes()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    let debug = format!("{loaded:?}");
    assert!(
        debug.contains("example.org") && debug.contains("elided"),
        "{debug}"
    );
    assert!(!debug.contains(&hex::encode(&sec1.as_ref()[7..39])));
}
