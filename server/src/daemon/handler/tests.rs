use std::sync::Mutex as StdMutex;

use ekattest_protocol::msg::{Method, SessionId};
use ekattest_protocol::{Downlink, decode, heapless};
use ekattest_testkit::testdata;
use sha2::{Digest, Sha256};

use super::*;
use crate::credential::FixedRandom;
use crate::daemon::reload::{Reloader, apply};
use crate::session::SessionConfig;

#[derive(Default)]
struct Recorder(StdMutex<Vec<(String, Vec<u8>)>>);

impl Outbox for Arc<Recorder> {
    fn send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String> {
        self.0.lock().unwrap().push((topic.to_owned(), frame));
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Downlink)> {
        self.0
            .lock()
            .unwrap()
            .drain(..)
            .map(|(t, f)| (t, decode::<Downlink>(&f).unwrap()))
            .collect()
    }
}

fn policy(hash: &str) -> Vec<u8> {
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
         requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"{hash}\"]\n"
    )
    .into_bytes()
}

fn ek_hash() -> String {
    hex::encode(Sha256::digest(testdata::vector("rsa2048/ek.spki.der")))
}

fn login() -> Login {
    Login {
        methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
        ek_public: heapless::Vec::from_slice(&testdata::vector("rsa2048/ek.tpm2b_public")).unwrap(),
        ek_cert: None,
        ek_chain: heapless::Vec::new(),
        ak_public: heapless::Vec::from_slice(&testdata::vector("ak.tpm2b_public")).unwrap(),
        svid_key: None,
        key_certify: None,
        nonce: [0x4e; 16],
        signer_hint: None,
    }
}

/// The transcript the tests' Logins are received with.
const T: ekattest_protocol::sign::Transcript = [0x33; 32];

fn handler(doc: Option<&[u8]>) -> (Handler, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let (authority, _, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    let state = Arc::new(PolicyState::default());
    let metrics = Arc::new(Metrics::default());
    if let Some(bytes) = doc {
        let d = Reloader::new().consider_files(&[("t".to_owned(), bytes.to_vec())], None);
        apply(&d, "t", &state, &metrics);
    }
    let h = Handler {
        attestor: Attestor::new("node-1", Some("example.org"), SessionConfig::default()).unwrap(),
        authority,
        policy: state,
        metrics,
        prefix: "ekattest/v1".to_owned(),
        cluster: "c-1".to_owned(),
        svid_ttl: Duration::from_secs(3600),
        outbox: Box::new(Arc::clone(&rec)),
        registry: None,
    };
    (h, rec)
}

fn metric(h: &Handler, series: &str) -> u64 {
    let text = h.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing"))
}

const SUCCESS: &str = "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"}";

fn failed(reason: &str) -> String {
    format!(
        "attestation_signer_proof{{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"{reason}\"}}"
    )
}

#[test]
fn login_gets_a_challenge_naming_the_node_on_the_down_topic() {
    let (h, rec) = handler(Some(&policy(&ek_hash())));
    h.handle(Job::Login {
        agent: "ek-1".to_owned(),
        login: Box::new(login()),
        transcript: T,
    });
    let out = rec.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "ekattest/v1/c-1/agents/ek-1/down");
    match &out[0].1 {
        Downlink::Challenge(c) => {
            assert_eq!(c.node.as_str(), "node-1");
            assert_eq!(c.expires_in, 300);
            assert!(!c.credential_blob.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, "attestation_sessions_active"), 1);
    assert_eq!(metric(&h, "attestation_login_duration_seconds_count"), 1);
}

#[test]
fn login_without_a_document_is_policy_not_found() {
    let (h, rec) = handler(None);
    h.handle(Job::Login {
        agent: "ek-1".to_owned(),
        login: Box::new(login()),
        transcript: T,
    });
    match &rec.take()[0].1 {
        Downlink::Result(Outcome::Rejected(r)) => assert_eq!(r.code, RejectCode::PolicyNotFound),
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, &failed("policy_not_found")), 1);
}

#[test]
fn login_with_an_unlisted_ek_is_rejected_and_counted() {
    let (h, rec) = handler(Some(&policy(&"ab".repeat(32))));
    h.handle(Job::Login {
        agent: "ek-1".to_owned(),
        login: Box::new(login()),
        transcript: T,
    });
    match &rec.take()[0].1 {
        Downlink::Result(Outcome::Rejected(r)) => {
            assert_eq!(r.code, RejectCode::EkNotTrusted);
            assert_eq!(
                r.message.as_str(),
                "EK did not pass any configured validation check"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, &failed("ek_not_trusted")), 1);
    assert_eq!(metric(&h, SUCCESS), 0);
    assert_eq!(metric(&h, "attestation_sessions_active"), 0);
}

/// Opens a session with the vector's fixed randomness, so the secret is `secret.bin`.
fn open_session(h: &Handler) -> SessionId {
    let doc = h.policy.current().unwrap();
    let mut rng = FixedRandom::new([
        testdata::vector("secret.bin"),
        vec![0x5a; 16],
        testdata::vector("rsa2048/seed.bin"),
        testdata::vector("rsa2048/oaep_seed.bin"),
    ]);
    let a = &h.attestor;
    let (c, _) = a
        .login(
            &doc,
            "ek-1",
            &login(),
            &T,
            Instant::now(),
            SystemTime::now(),
            &mut rng,
        )
        .unwrap();
    c.session
}

fn answer(session: SessionId, secret: &[u8]) -> Box<Answer> {
    Box::new(Answer {
        session,
        mac: ekattest_protocol::sign::answer_mac(secret, &T, &session, "node-1").unwrap(),
        pop: None,
    })
}

#[test]
fn right_answer_is_accepted_signed_and_counted_once() {
    let (h, rec) = handler(Some(&policy(&ek_hash())));
    let session = open_session(&h);
    h.handle(Job::Answer {
        agent: "ek-1".to_owned(),
        answer: answer(session, &testdata::vector("secret.bin")),
    });
    let out = rec.take();
    assert_eq!(out[0].0, "ekattest/v1/c-1/agents/ek-1/down");
    match &out[0].1 {
        Downlink::Result(Outcome::Accepted(a)) => {
            assert_eq!(
                a.spiffe_id.as_str(),
                format!("spiffe://example.org/agents/tpm/{}", ek_hash())
            );
            assert!(a.svid.is_empty(), "no svid_key, no SVID");
            assert!(!a.signature.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, SUCCESS), 1);
    assert_eq!(metric(&h, "attestation_answer_duration_seconds_count"), 1);
    // Replaying the same answer: the session is gone.
    h.handle(Job::Answer {
        agent: "ek-1".to_owned(),
        answer: answer(session, &testdata::vector("secret.bin")),
    });
    match &rec.take()[0].1 {
        Downlink::Result(Outcome::Rejected(r)) => assert_eq!(r.code, RejectCode::UnknownSession),
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, &failed("unknown_session")), 1);
    assert_eq!(metric(&h, SUCCESS), 1);
}

#[test]
fn wrong_secret_is_challenge_failed_logged_as_secret_mismatch() {
    let (h, rec) = handler(Some(&policy(&ek_hash())));
    let session = open_session(&h);
    h.handle(Job::Answer {
        agent: "ek-1".to_owned(),
        answer: answer(session, &[0u8; 32]),
    });
    match &rec.take()[0].1 {
        Downlink::Result(Outcome::Rejected(r)) => assert_eq!(r.code, RejectCode::ChallengeFailed),
        other => panic!("{other:?}"),
    }
    assert_eq!(metric(&h, &failed("challenge_failed")), 1);
    assert_eq!(
        reject_message(RejectCode::ChallengeFailed),
        "challenge response secret does not match"
    );
    assert_eq!(
        reject_message(RejectCode::EkNotTrusted),
        "EK did not pass any configured validation check"
    );
}

#[test]
fn policy_swap_applies_to_the_next_login() {
    let (h, rec) = handler(Some(&policy(&"ab".repeat(32))));
    let job = || Job::Login {
        agent: "ek-1".to_owned(),
        login: Box::new(login()),
        transcript: T,
    };
    h.handle(job());
    assert!(matches!(
        rec.take()[0].1,
        Downlink::Result(Outcome::Rejected(_))
    ));
    let d = Reloader::new().consider_files(&[("t".to_owned(), policy(&ek_hash()))], None);
    apply(&d, "t", &h.policy, &h.metrics);
    h.handle(job());
    assert!(matches!(rec.take()[0].1, Downlink::Challenge(_)));
}

// ---- cheap rejection before public-key work --------------------------------------------

/// A policy that needs the chain check: it trusts one real EK CA (which signs none of the
/// certificates below), so a path build would be needed to pass it.
fn chain_policy() -> Vec<u8> {
    let pem = String::from_utf8(testdata::real_ek("ca/IFX1.pem")).unwrap();
    let indented: String = pem.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
         requiredAttestors:\n    - type: tpm_ek\n      config:\n        caCerts: |\n{indented}"
    )
    .into_bytes()
}

fn rejection_of(h: &Handler, rec: &Recorder, login: Login) -> RejectCode {
    h.handle(Job::Login {
        agent: "ek-flood".to_owned(),
        login: Box::new(login),
        transcript: T,
    });
    let out = rec.take();
    assert_eq!(out.len(), 1, "{out:?}");
    match &out[0].1 {
        Downlink::Result(Outcome::Rejected(r)) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_garbage_certificate_is_refused_by_parsing_not_by_a_signature_check() {
    let (h, rec) = handler(Some(&chain_policy()));
    let mut l = login();
    l.ek_cert = Some(heapless::Vec::from_slice(&[0x30, 0x82, 0x01, 0x00, 0xde, 0xad]).unwrap());
    let code = rejection_of(&h, &rec, l);
    // The chain check's verdict comes from the certificate parser: a path build (the first
    // signature check) would have said the issuer is unknown instead.
    assert_eq!(code, RejectCode::EkChain);
    let log = h.metrics.render();
    assert_eq!(metric(&h, &failed("ek_chain")), 1, "{log}");
    // No session was opened, so MakeCredential never ran.
    assert_eq!(h.attestor.pending(), 0);
}

#[test]
fn a_valid_certificate_with_another_ek_public_fails_before_the_chain_and_makecredential() {
    let (h, rec) = handler(Some(&chain_policy()));
    let cert = testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
    let mut l = login();
    // A genuine EK certificate, but the EK public area is another key (the test vectors').
    l.ek_cert = Some(heapless::Vec::from_slice(&cert).unwrap());
    let code = rejection_of(&h, &rec, l);
    // The policy's CA does not sign this certificate: had the chain been built first, the
    // code would be ek_chain. The key comparison (no public-key operation) came first.
    assert_eq!(code, RejectCode::EkMismatch);
    assert_eq!(metric(&h, &failed("ek_mismatch")), 1);
    assert_eq!(metric(&h, &failed("ek_chain")), 0);
    assert_eq!(h.attestor.pending(), 0, "no session, so no MakeCredential");
}

#[test]
fn the_attestor_checks_the_garbage_certificate_reason_is_a_parse_error() {
    // The same order, through the sans-IO attestor, to read the full reason.
    let (h, _rec) = handler(None);
    let doc = {
        let d = Reloader::new().consider_files(&[("t".to_owned(), chain_policy())], None);
        let state = PolicyState::default();
        apply(&d, "t", &state, &h.metrics);
        state.current().unwrap()
    };
    let mut l = login();
    l.ek_cert = Some(heapless::Vec::from_slice(&[0x30, 0x03, 0x02, 0x01, 0x00]).unwrap());
    let err = h
        .attestor
        .login(
            &doc,
            "ek-flood",
            &l,
            &T,
            Instant::now(),
            SystemTime::now(),
            &mut SystemRandom,
        )
        .unwrap_err();
    assert_eq!(err.code, RejectCode::EkChain);
    let reason = err.reason.to_lowercase();
    assert!(
        !reason.contains("signature") && !reason.contains("issuer"),
        "reason mentions chain building: {}",
        err.reason
    );
    assert_eq!(h.attestor.pending(), 0);
}
