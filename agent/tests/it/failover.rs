//! Broker failover of `ekattest-agent run` (feature `it`): `broker:` lists two real
//! mosquitto brokers (started by the fleet harness on free ports); the first is stopped,
//! before the agent starts or in the middle of an attestation, and the agent gets its
//! identity through the second from the test's fake server (the harness of `daemon.rs`:
//! a real swtpm, credentials from tpm2_makecredential, SVIDs from openssl).

use crate::fake;

use std::path::Path;
use std::time::Duration;

use ekattest_protocol::msg::{Downlink, Outcome, SessionId};
use ekattest_testkit::broker::{Broker, BrokerOptions};
use fake::*;

const SPIFFE: &str = "spiffe://td.example/device/failover";

/// The agent's config with `broker: [first, second]` in place of the single URL.
fn two_broker_config(
    first: &Broker,
    second: &Broker,
    device: &ekattest_testkit::Device,
    ca: &TdCa,
    dir: &Path,
    extra: &str,
) -> String {
    let one = format!("broker: mqtt://127.0.0.1:{}\n", first.port());
    let cfg = config(first.port(), device, ca, dir, extra);
    assert!(cfg.contains(&one), "{cfg}");
    cfg.replace(
        &one,
        &format!(
            "broker: [mqtt://127.0.0.1:{}, mqtt://127.0.0.1:{}]\n",
            first.port(),
            second.port()
        ),
    )
}

/// Answers the agent's Login on `server` with a real Challenge and its Answer with a
/// signed Accepted Result; returns the agent id.
fn attest_through(server: &mut FakeServer, ca: &TdCa, session: SessionId) -> String {
    let (id, login) = server.login(Duration::from_secs(60));
    let secret: Vec<u8> = (100u8..132).collect();
    server.send(
        &id,
        &Downlink::Challenge(ca.challenge(&id, &login, &secret, session)),
    );
    let (from, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!((from.as_str(), answer.session), (id.as_str(), session));
    let spki = login
        .svid_key
        .clone()
        .expect("the Login carries an SVID key");
    let accepted = ca.accepted(&id, &session, &login.transcript, &spki, SPIFFE);
    server.send(&id, &Downlink::Result(Outcome::Accepted(accepted)));
    id
}

#[test]
fn first_broker_down_at_start_once_attests_through_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let mut first = broker(BrokerOptions::default());
    let second = broker(BrokerOptions::default());
    first.stop();
    let mut server = FakeServer::connect(second.port());
    let cfg = two_broker_config(&first, &second, &device, &ca, dir.path(), "");
    let mut agent = Agent::start(dir.path(), &cfg, &["--once", "--timeout", "60s"]);

    attest_through(&mut server, &ca, SessionId([7; 16]));
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(dir.path().join("data/svid.pem").exists(), "{log}");
    // It tried the first, said where it went next, and logged where it connected.
    assert!(
        log.contains(&format!(
            "connection to broker 127.0.0.1:{} failed",
            first.port()
        )),
        "{log}"
    );
    assert!(
        log.contains("reconnecting to the broker in")
            && log.contains(&format!("mqtt://127.0.0.1:{} (2 of 2)", second.port())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "connected to broker mqtt://127.0.0.1:{} as ek-",
            second.port()
        )),
        "{log}"
    );
    assert!(
        !log.contains(&format!(
            "connected to broker mqtt://127.0.0.1:{} ",
            first.port()
        )),
        "{log}"
    );
    assert!(log.contains(SPIFFE), "{log}");
}

#[test]
fn first_broker_stopped_mid_attestation_identity_through_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let mut first = broker(BrokerOptions::default());
    let second = broker(BrokerOptions::default());
    let mut on_first = FakeServer::connect(first.port());
    let mut on_second = FakeServer::connect(second.port());
    let cfg = two_broker_config(
        &first,
        &second,
        &device,
        &ca,
        dir.path(),
        "response-timeout: 20s\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg, &[]);

    // The Login arrives through the first broker; the first broker dies before the
    // Challenge goes out.
    let (id, _) = on_first.login(Duration::from_secs(60));
    assert!(
        agent.log().contains(&format!(
            "connected to broker mqtt://127.0.0.1:{}",
            first.port()
        )),
        "{}",
        agent.log()
    );
    drop(on_first);
    first.stop();

    // Well before the 20 s response timeout: the lost connection sends the agent to the
    // second broker, where it subscribes again and logs in again.
    let started = std::time::Instant::now();
    let again = attest_through(&mut on_second, &ca, SessionId([9; 16]));
    assert_eq!(again, id, "the same agent id on the second broker");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failover took {:?}; log:\n{}",
        started.elapsed(),
        agent.log()
    );
    agent.wait_for_log("Connected to server", Duration::from_secs(30));
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "connected to broker mqtt://127.0.0.1:{} as {id}",
            second.port()
        )),
        "{log}"
    );
    assert!(log.contains(SPIFFE), "{log}");
    assert!(dir.path().join("data/svid.pem").exists(), "{log}");
    // Still running (daemon mode), on the second broker.
    assert!(agent.child.try_wait().unwrap().is_none(), "{log}");
}
