//! `ekattest-agent run` against a hostile broker (feature `it`): the test's fake server
//! publishes crafted Downlink frames on the agent's down topic through a real mosquitto
//! (malformed, oversized, unsolicited Challenges, forged Results, a Rejected flood, and, wire
//! version 2, Challenges replayed from another Login, unsigned, forged, signed by a rogue
//! signer or by an intermediate without the signer usage). The agent must keep running,
//! write no identity for any of them, never use its TPM for a Challenge that does not
//! verify, log each, and still attest when the honest server finally answers. See
//! `fake/mod.rs` for the harness.

use crate::fake;

use std::path::Path;
use std::time::Duration;

use ekattest_protocol::encode;
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::DOWNLINK_FRAME_MAX;
use ekattest_protocol::msg::{Challenge, Downlink, Outcome, SessionId};
use ekattest_testkit::broker::BrokerOptions;
use fake::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

const SPIFFE: &str = "spiffe://td.example/device/1";

/// The `max_packet_size` of the fleet harness's mosquitto (`qemu/src/broker.rs`).
const HARNESS_BROKER_PACKET_MAX: usize = 32_768;

fn no_identity(data: &Path) {
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(!data.join(f).exists(), "{f} written for a hostile message");
    }
}

fn frame(msg: &Downlink) -> Vec<u8> {
    let mut buf = vec![0u8; DOWNLINK_FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

/// The agent's debug line when it takes a Challenge to its TPM (`on_challenge` logs it
/// before opening the TPM): absent for a session, the TPM never saw that Challenge.
fn tpm_used_for(session: &SessionId) -> String {
    format!("challenge for session {session}")
}

/// Waits until the agent has logged `n` ignored Challenges.
fn wait_ignored(agent: &Agent, n: usize) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while agent.log().matches("ignoring a Challenge").count() < n {
        assert!(
            std::time::Instant::now() < until,
            "fewer than {n} Challenges ignored; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends each `(what, challenge, expected log text)`, waits until the agent has ignored
/// all of them, and checks none reached the TPM or produced an Answer or an identity.
fn send_unverified(
    server: &mut FakeServer,
    agent: &Agent,
    id: &str,
    data: &Path,
    cases: &[(&str, Challenge, &str)],
) {
    let before = agent.log().matches("ignoring a Challenge").count();
    for (_, c, _) in cases {
        server.send(id, &Downlink::Challenge(c.clone()));
    }
    wait_ignored(agent, before + cases.len());
    let log = agent.log();
    for (what, c, expect) in cases {
        assert!(
            log.lines()
                .any(|l| l.contains("ignoring a Challenge") && l.contains(expect)),
            "{what}: not ignored with {expect:?}; log:\n{log}"
        );
        assert!(
            !log.contains(&tpm_used_for(&c.session)),
            "{what}: the TPM was used; log:\n{log}"
        );
    }
    no_identity(data);
}

#[test]
fn hostile_frames_and_challenges_are_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    // A slower login backoff (uniform in [0, 2 s]) keeps the agent idle between a Rejected
    // and its next Login while the test sends unsolicited frames.
    let cfg = config(broker.port(), &device, &ca, dir.path(), "").replace(
        "retry: {initial: 200ms, max: 1s}",
        "retry: {initial: 2s, max: 2s}",
    );
    let agent = Agent::start(dir.path(), &cfg, &[]);
    let data = dir.path().join("data");
    let secret: Vec<u8> = (0u8..32).collect();

    // 1. Malformed frames while the agent waits for its Challenge.
    let (id, login) = server.login(Duration::from_secs(60));
    let good = frame(&Downlink::Challenge(ca.challenge(
        &id,
        &login,
        &secret,
        SessionId([1; 16]),
    )));
    server.send_raw(&id, b"\x01garbage".to_vec());
    server.send_raw(&id, Vec::new());
    // The frame of wire version 1, and of a version not yet defined.
    for version in [1, 3] {
        let mut other_version = good.clone();
        other_version[0] = version;
        server.send_raw(&id, other_version);
    }
    server.send_raw(&id, good[..good.len() / 2].to_vec());
    let mut trailing = good.clone();
    trailing.push(0);
    server.send_raw(&id, trailing);
    // Larger than any Downlink, within the agent's MQTT packet limit.
    server.send_raw(&id, vec![1; DOWNLINK_FRAME_MAX + 1]);
    agent.wait_for_log(
        &format!("ignoring a {}-byte message", DOWNLINK_FRAME_MAX + 1),
        Duration::from_secs(30),
    );
    no_identity(&data);

    // 2. Larger than the agent's MQTT packet limit, if mosquitto still forwards it: the
    // connection fails, the agent reconnects and logs in again. The harness broker refuses
    // packets above its max_packet_size (and drops the publisher), so when the agent's limit
    // is above the broker's, no such packet can reach the agent through it.
    // The harness broker allows packets well above the agent's limit, so this step runs.
    let oversized = ekattest_agent::daemon::mqtt::PACKET_MAX + 64;
    assert!(
        oversized + 512 <= HARNESS_BROKER_PACKET_MAX,
        "raise max_packet_size in qemu/src/broker.rs above {oversized}"
    );
    server.send_raw(&id, vec![1; oversized]);
    let (id, login) = {
        let again = server.login(Duration::from_secs(60));
        assert!(
            agent.log().contains("connection to broker 127.0.0.1"),
            "{}",
            agent.log()
        );
        again
    };

    // 3. A Challenge naming a node that cannot be a topic level: ignored before the TPM is
    // used; the agent keeps waiting for the server's Challenge.
    let mut bad_node = ca.challenge(&id, &login, &secret, SessionId([2; 16]));
    bad_node.node = heapless::String::try_from("node/+/#").unwrap();
    ca.sign_challenge(&id, &mut bad_node);
    server.send(&id, &Downlink::Challenge(bad_node));
    agent.wait_for_log(
        "ignoring a Challenge naming an unusable server node \"node/+/#\"",
        Duration::from_secs(30),
    );

    // 4. The real Challenge, immediately followed by a second one while it is answered.
    let session = SessionId([3; 16]);
    let second = ca.challenge(&id, &login, &secret, SessionId([4; 16]));
    server.send(
        &id,
        &Downlink::Challenge(ca.challenge(&id, &login, &secret, session)),
    );
    server.send(&id, &Downlink::Challenge(second));
    let (_, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!(answer.session, session);
    agent.wait_for_log(
        "ignoring an unexpected challenge message while waiting for a Result",
        Duration::from_secs(30),
    );

    // 5. A Rejected, then a Challenge for a session the agent never started (it is idle),
    // then a flood of Rejected.
    let unsolicited = ca.challenge(&id, &login, &secret, SessionId([5; 16]));
    let rejected_frame = frame(&rejected(RejectCode::EkNotTrusted));
    server.send_raw(&id, rejected_frame.clone());
    server.send(&id, &Downlink::Challenge(unsolicited));
    const FLOOD: usize = 200;
    for _ in 0..FLOOD {
        server.send_raw(&id, rejected_frame.clone());
    }
    agent.wait_for_log(
        "ignoring an unexpected challenge message while waiting for nothing",
        Duration::from_secs(30),
    );
    agent.wait_for_log(
        "ignoring an unexpected rejected message while waiting for nothing",
        Duration::from_secs(30),
    );
    no_identity(&data);

    // 6. The honest server answers the agent's latest Login.
    let (id, login) = server.last_login(Duration::from_secs(60), Duration::from_secs(3));
    let session = SessionId([6; 16]);
    server.send(
        &id,
        &Downlink::Challenge(ca.challenge(&id, &login, &secret, session)),
    );
    let (_, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!(answer.session, session);
    let spki = login.svid_key.clone().unwrap();
    let good = ca.accepted(&id, &session, &login.transcript, &spki, SPIFFE);
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("Connected to server", Duration::from_secs(30));
    assert!(data.join("svid.pem").exists() && data.join("svid.key").exists());

    let log = agent.log();
    assert!(log.contains("that is not a Downlink"), "{log}");
    assert!(
        log.contains("attestation rejected: EK did not pass any configured validation check"),
        "{log}"
    );
    // The flood is logged sparsely: far fewer lines than ignored messages.
    let lines = log.matches("messages ignored since start").count();
    assert!((10..FLOOD / 4).contains(&lines), "{lines} lines; {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn forged_results_are_logged_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = TdCa::with_seed(other_dir.path(), 2);
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let agent = Agent::start(dir.path(), &cfg, &[]);
    let data = dir.path().join("data");

    let (id, login) = server.login(Duration::from_secs(60));
    let spki = login.svid_key.clone().unwrap();
    let t = login.transcript;
    let secret: Vec<u8> = (0u8..32).collect();
    let session = SessionId([9; 16]);
    server.send(
        &id,
        &Downlink::Challenge(ca.challenge(&id, &login, &secret, session)),
    );
    let (_, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!(answer.session, session);

    // An SVID key that is not the agent's.
    let other_key = p256::ecdsa::SigningKey::from_slice(&[0x33; 32]).unwrap();
    let other_spki = {
        use p256::pkcs8::EncodePublicKey as _;
        other_key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .to_vec()
    };

    let not_signed = "the Result is not signed by the server that signed the Challenge";
    let mut cases = Vec::new();
    let mut unsigned = ca.accepted(&id, &session, &t, &spki, SPIFFE);
    unsigned.signature.clear();
    cases.push(("unsigned", unsigned, not_signed));
    let mut flipped = ca.accepted(&id, &session, &t, &spki, SPIFFE);
    flipped.signature[12] ^= 0x40;
    cases.push(("wrongly signed", flipped, not_signed));
    cases.push((
        "signed by another CA",
        other_ca.accepted(&id, &session, &t, &spki, SPIFFE),
        not_signed,
    ));
    cases.push((
        "for another agent",
        ca.accepted(
            "ek-00000000000000000000000000000000",
            &session,
            &t,
            &spki,
            SPIFFE,
        ),
        not_signed,
    ));
    cases.push((
        "for another session",
        ca.accepted(&id, &SessionId([10; 16]), &t, &spki, SPIFFE),
        not_signed,
    ));
    cases.push((
        "for another Login (transcript)",
        ca.accepted(&id, &session, &[0x42; 32], &spki, SPIFFE),
        not_signed,
    ));
    cases.push((
        "SVID for another key",
        ca.accepted(&id, &session, &t, &other_spki, SPIFFE),
        "it certifies another public key than the one this agent sent",
    ));
    let mut foreign_svid = ca.accepted(&id, &session, &t, &spki, SPIFFE);
    foreign_svid.svid = heapless::Vec::from_slice(&other_ca.issue(&spki, SPIFFE)).unwrap();
    ca.sign(&id, &session, &t, &mut foreign_svid);
    cases.push((
        "SVID from another CA",
        foreign_svid,
        "its signature does not verify with the CA that signed the Result",
    ));

    for (i, (what, accepted, expect)) in cases.into_iter().enumerate() {
        server.send(&id, &Downlink::Result(Outcome::Accepted(accepted)));
        let n = i + 1;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while agent
            .log()
            .matches("still waiting for a Result that verifies")
            .count()
            < n
        {
            assert!(
                std::time::Instant::now() < until,
                "{what}: not refused; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = agent.log();
        let line = log
            .lines()
            .filter(|l| l.contains("still waiting for a Result that verifies"))
            .nth(i)
            .unwrap();
        assert!(
            line.contains("not accepting the server's Result") && line.contains(expect),
            "{what}: {line}"
        );
        no_identity(&data);
        // Counted at the first refusal, not again for the same attempt.
        let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
        assert!(prom.contains("outcome=\"failed\"} 1"), "{what}: {prom}");
    }

    // Still waiting for the same session: the honest Result is taken.
    let good = ca.accepted(&id, &session, &t, &spki, SPIFFE);
    let svid = good.svid.to_vec();
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("Connected to server", Duration::from_secs(30));
    let pem = std::fs::read_to_string(data.join("svid.pem")).unwrap();
    let (_, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
    assert_eq!(der, svid);
    let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
    // The refused Results count as one failed attempt (a real server would have counted a
    // success for the first: it cannot know), the honest one as a success.
    assert!(prom.contains("outcome=\"success\"} 1"), "{prom}");
    assert!(prom.contains("outcome=\"failed\"} 1"), "{prom}");
}

/// Attests the agent's current Login `login` honestly and checks the identity is written.
fn attest(
    server: &mut FakeServer,
    agent: &Agent,
    by: &TdCa,
    id: &str,
    login: &SeenLogin,
    session: SessionId,
) {
    let secret: Vec<u8> = (0u8..32).map(|i| i ^ 0xa5).collect();
    server.send(
        id,
        &Downlink::Challenge(by.challenge(id, login, &secret, session)),
    );
    // The first Answer the agent publishes is the honest Challenge's: none went out for the
    // ignored ones.
    let (from, answer) = server.checked_answer(Duration::from_secs(60), login, &secret);
    assert_eq!((from.as_str(), answer.session), (id, session));
    assert!(
        agent.log().contains(&tpm_used_for(&session)),
        "{}",
        agent.log()
    );
    let spki = login.svid_key.clone().unwrap();
    let good = by.accepted(id, &session, &login.transcript, &spki, SPIFFE);
    server.send(id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("Connected to server", Duration::from_secs(30));
}

#[test]
fn unverified_challenges_never_reach_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    // An attacker's signer: its own key and self-signed certificate, not in the bundle.
    let rogue = TdCa::self_signed(dir.path(), "rogue", 7);
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let agent = Agent::start(dir.path(), &cfg, &[]);
    let data = dir.path().join("data");
    let secret: Vec<u8> = (0u8..32).collect();

    // A first Login, rejected, so the agent logs in again: the attacker keeps the server's
    // signed Challenge for the first Login to replay it against the second.
    let (id, first) = server.login(Duration::from_secs(60));
    let replayed = ca.challenge(&id, &first, &secret, SessionId([0x11; 16]));
    server.send(&id, &rejected(RejectCode::EkNotTrusted));
    let (id, login) = server.login(Duration::from_secs(60));
    assert_ne!(login.nonce, first.nonce);
    assert_ne!(login.transcript, first.transcript);
    assert_eq!(login.signer_hint, Some(ca.hint()));

    // Forged: the server's Challenge with its signature removed, altered, or made by a key
    // that is not the server's; signed for another agent; a field changed after signing.
    let unsigned = unsigned_challenge(&login, &secret, SessionId([0x12; 16]));
    let mut flipped = ca.challenge(&id, &login, &secret, SessionId([0x13; 16]));
    let last = flipped.signature.len() - 1;
    flipped.signature[last] ^= 0x01;
    let mut by_rogue_key = unsigned_challenge(&login, &secret, SessionId([0x14; 16]));
    rogue.sign_challenge(&id, &mut by_rogue_key);
    let mut other_agent = unsigned_challenge(&login, &secret, SessionId([0x15; 16]));
    ca.sign_challenge("ek-00000000000000000000000000000000", &mut other_agent);
    let mut moved = ca.challenge(&id, &login, &secret, SessionId([0x16; 16]));
    moved.session = SessionId([0x17; 16]);
    // The rogue signer with its own certificate in `signer`.
    let rogue_signed = rogue.challenge(&id, &login, &secret, SessionId([0x18; 16]));
    assert_eq!(rogue_signed.signer.as_slice(), rogue.der.as_slice());
    // The server's own certificate carried with a rogue signature.
    let mut carried = by_rogue_key.clone();
    carried.session = SessionId([0x19; 16]);
    carried.signer = heapless::Vec::from_slice(&ca.der).unwrap();
    rogue.sign_challenge(&id, &mut carried);

    let bad_sig = "its signature does not verify with the signer's key";
    send_unverified(
        &mut server,
        &agent,
        &id,
        &data,
        &[
            (
                "replayed from another Login",
                replayed,
                "made for another Login than the one this agent sent",
            ),
            (
                "unsigned",
                unsigned,
                "its signature is not a DER ECDSA signature",
            ),
            ("signature altered", flipped, bad_sig),
            ("signed by a key not in the bundle", by_rogue_key, bad_sig),
            ("signed for another agent", other_agent, bad_sig),
            ("session changed after signing", moved, bad_sig),
            (
                "rogue self-signed signer",
                rogue_signed,
                "not issued by a CA of the trust bundle",
            ),
            (
                "the server's certificate, a rogue signature",
                carried,
                bad_sig,
            ),
        ],
    );

    // The agent still waits for its Challenge and attests when the server's arrives.
    attest(&mut server, &agent, &ca, &id, &login, SessionId([0x1a; 16]));
    assert!(data.join("svid.pem").exists() && data.join("svid.key").exists());
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("cannot answer the challenge"), "{log}");
}

#[test]
fn intermediate_signer_without_the_signer_usage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    // Issued by the bundle's CA with CA:TRUE, but without the ekattest signer usage (a CA
    // meant for something else, say TLS): it may not sign Challenges.
    let no_usage = ca.issue_signer("tls-ca", 5, false);
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let agent = Agent::start(dir.path(), &cfg, &[]);
    let data = dir.path().join("data");
    let secret: Vec<u8> = (0u8..32).collect();

    let (id, login) = server.login(Duration::from_secs(60));
    let refused = no_usage.challenge(&id, &login, &secret, SessionId([0x21; 16]));
    assert_eq!(refused.signer.as_slice(), no_usage.der.as_slice());
    // Left out of the Challenge, the agent checks the signature with its bundle's CA.
    let mut left_out = no_usage.challenge(&id, &login, &secret, SessionId([0x22; 16]));
    left_out.signer.clear();
    send_unverified(
        &mut server,
        &agent,
        &id,
        &data,
        &[
            (
                "intermediate without the signer usage",
                refused,
                "lacks the ekattest signer usage",
            ),
            (
                "its signature, no certificate",
                left_out,
                "its signature does not verify with the signer's key",
            ),
        ],
    );

    // A signer issued with the usage, for the same Login, is taken.
    let signer = ca.issue_signer("signer", 6, true);
    attest(
        &mut server,
        &agent,
        &signer,
        &id,
        &login,
        SessionId([0x23; 16]),
    );
    let pem = std::fs::read(data.join("svid.pem")).unwrap();
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1], signer.der);
}
