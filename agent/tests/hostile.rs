//! `ekattest-agent run` against a hostile broker (feature `it`): the test's fake server
//! publishes crafted Downlink frames on the agent's down topic through a real mosquitto
//! (malformed, oversized, unsolicited Challenges, forged Results, a Rejected flood). The
//! agent must keep running, write no identity for any of them, log each, and still attest
//! when the honest server finally answers. See `fake/mod.rs` for the harness.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly with the missing tool or the unexpected message"
)]

#[allow(dead_code, reason = "each test binary uses part of the harness")]
mod fake;

use std::path::Path;
use std::time::Duration;

use ekattest_fleet::broker::BrokerOptions;
use ekattest_protocol::encode;
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::DOWNLINK_FRAME_MAX;
use ekattest_protocol::msg::{Downlink, Outcome, SessionId};
use fake::*;

const SPIFFE: &str = "spiffe://td.example/device/1";

fn no_identity(data: &Path) {
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(!data.join(f).exists(), "{f} written for a hostile message");
    }
}

fn frame(msg: &Downlink) -> Vec<u8> {
    let mut buf = vec![0u8; DOWNLINK_FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
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
    let good = frame(&Downlink::Challenge(challenge(
        &login,
        &secret,
        SessionId([1; 16]),
    )));
    server.send_raw(&id, b"\x01garbage".to_vec());
    server.send_raw(&id, Vec::new());
    let mut version2 = good.clone();
    version2[0] = 2;
    server.send_raw(&id, version2);
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

    // 2. Larger than the agent's MQTT packet limit (mosquitto still forwards it): the
    // connection fails, the agent reconnects and logs in again.
    server.send_raw(&id, vec![1; ekattest_agent::daemon::mqtt::PACKET_MAX + 64]);
    let (id, login) = server.login(Duration::from_secs(60));
    assert!(
        agent.log().contains("connection to broker 127.0.0.1"),
        "{}",
        agent.log()
    );

    // 3. A Challenge naming a node that cannot be a topic level: ignored before the TPM is
    // used; the agent keeps waiting for the server's Challenge.
    let mut bad_node = challenge(&login, &secret, SessionId([2; 16]));
    bad_node.node = heapless::String::try_from("node/+/#").unwrap();
    server.send(&id, &Downlink::Challenge(bad_node));
    agent.wait_for_log(
        "ignoring a Challenge naming an unusable server node \"node/+/#\"",
        Duration::from_secs(30),
    );

    // 4. The real Challenge, immediately followed by a second one while it is answered.
    let session = SessionId([3; 16]);
    let second = challenge(&login, &secret, SessionId([4; 16]));
    server.send(
        &id,
        &Downlink::Challenge(challenge(&login, &secret, session)),
    );
    server.send(&id, &Downlink::Challenge(second));
    let (_, answer) = server.answer(Duration::from_secs(60));
    assert_eq!(answer.session, session);
    agent.wait_for_log(
        "ignoring an unexpected challenge message while waiting for a Result",
        Duration::from_secs(30),
    );

    // 5. A Rejected, then a Challenge for a session the agent never started (it is idle),
    // then a flood of Rejected.
    let unsolicited = challenge(&login, &secret, SessionId([5; 16]));
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
        &Downlink::Challenge(challenge(&login, &secret, session)),
    );
    let (_, answer) = server.answer(Duration::from_secs(60));
    assert_eq!(answer.session, session);
    let spki = login.svid_key.clone().unwrap();
    let good = ca.accepted(&id, &session, &spki, SPIFFE);
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
    let secret: Vec<u8> = (0u8..32).collect();
    let session = SessionId([9; 16]);
    server.send(
        &id,
        &Downlink::Challenge(challenge(&login, &secret, session)),
    );
    let (_, answer) = server.answer(Duration::from_secs(60));
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

    let not_signed = "the Result is not signed by a CA in the trust bundle";
    let mut cases = Vec::new();
    let mut unsigned = ca.accepted(&id, &session, &spki, SPIFFE);
    unsigned.signature.clear();
    cases.push(("unsigned", unsigned, not_signed));
    let mut flipped = ca.accepted(&id, &session, &spki, SPIFFE);
    flipped.signature[12] ^= 0x40;
    cases.push(("wrongly signed", flipped, not_signed));
    cases.push((
        "signed by another CA",
        other_ca.accepted(&id, &session, &spki, SPIFFE),
        not_signed,
    ));
    cases.push((
        "for another agent",
        ca.accepted(
            "ek-00000000000000000000000000000000",
            &session,
            &spki,
            SPIFFE,
        ),
        not_signed,
    ));
    cases.push((
        "for another session",
        ca.accepted(&id, &SessionId([10; 16]), &spki, SPIFFE),
        not_signed,
    ));
    cases.push((
        "SVID for another key",
        ca.accepted(&id, &session, &other_spki, SPIFFE),
        "it certifies another public key than the one this agent sent",
    ));
    let mut foreign_svid = ca.accepted(&id, &session, &spki, SPIFFE);
    foreign_svid.svid = heapless::Vec::from_slice(&other_ca.issue(&spki, SPIFFE)).unwrap();
    ca.sign(&id, &session, &mut foreign_svid);
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
    }

    // Still waiting for the same session: the honest Result is taken.
    let good = ca.accepted(&id, &session, &spki, SPIFFE);
    let svid = good.svid.to_vec();
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("Connected to server", Duration::from_secs(30));
    let pem = std::fs::read_to_string(data.join("svid.pem")).unwrap();
    let (_, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
    assert_eq!(der, svid);
    let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
    assert!(prom.contains("outcome=\"success\"} 1"), "{prom}");
    assert!(prom.contains("outcome=\"failed\"} 0"), "{prom}");
}
