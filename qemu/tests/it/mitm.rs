//! An attacker on the broker path (issue 13 acceptance): a proxy between a real
//! `ekattest-agent` (on a real swtpm) and mosquitto reads, drops and rewrites its frames
//! ([`MqttProxy::set_tamper`]), and a client of the broker publishes what the attacker
//! likes, against a real `ekattest-server`. Each attack of wire version 1 is tried as an
//! attacker would, and each must fail with a clear log line on the side that caught it,
//! no identity may be issued for a key the device does not hold, and the honest device must
//! then attest.
//!
//! - Attack 1, the svid_key swap: the attacker replaces the Login's `svid_key` with its own
//!   and relays the Challenge; with wire version 1 it read the secret from the Answer and
//!   signed its own proof of possession. Now the device's transcript differs from the
//!   server's, so the device ignores the Challenge (no TPM command, nothing sent), and the
//!   attacker, without the secret, can only guess a MAC.
//! - Attack 1b: the same, with the Challenge's transcript rewritten to the device's: its
//!   signature no longer verifies.
//! - Attack 2, the activation oracle: the attacker logs in with the device's EK and AK and
//!   pushes that Challenge to the device, which ignores it (another transcript).
//! - Attack 4: one captured Login replayed under many invented agent ids: refused before any
//!   session (`agent-id-from-ek`, the per-EK login limit); the session table stays empty.
//!
//! Attack 3 (an unsigned policy document on the config topic) is tested where the signed
//! policy documents are (`server/tests/it/policy_topic.rs`).
//!
//! Needs swtpm, swtpm_setup and mosquitto; the binaries come from this test's target folder.
use crate::attack_kit;
use crate::common;
use crate::mqtt_peer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attack_kit::{CLUSTER, SUCCESS, World, failed, topics};
use ekattest_agent::daemon::identity::SvidKey;
use ekattest_fleet::daemons::{AgentProcess, AgentSpec};
use ekattest_fleet::faults::mqtt_proxy::{Direction, MqttProxy, ProxyOptions, Tamper, Verdict};
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use ekattest_protocol::msg::{Answer, Downlink, Uplink};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::{decode, encode, heapless, limits};
use mqtt_peer::Via;

/// How long an attestation may take after the attack (swtpm, a response timeout, retries).
const AGENT_WAIT: Duration = Duration::from_secs(60);
/// How long to wait for a log line.
const LOG: Duration = Duration::from_secs(20);

/// Everything the proxy saw, in order: (direction, topic, payload).
type Seen = Arc<Mutex<Vec<(Direction, String, Vec<u8>)>>>;

/// One attack's world: mosquitto, one server trusting the swtpm CA, one swtpm device, and
/// the attacker's proxy in front of the broker for the device's agent.
struct Mitm {
    world: World,
    _ca: Ca,
    dev: Device,
    proxy: MqttProxy,
    seen: Seen,
}

impl Mitm {
    fn start() -> Mitm {
        let ca = Ca::create().unwrap();
        let world = World::start(&common::policy(Some(&ca), &[]), &["node-1"], None);
        let dev = Device::provision(
            &ca,
            &ProvisionOptions {
                rsa_keysize: 2048,
                p256_ek_cert: false,
            },
        )
        .unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"));
        let upstream: SocketAddr = format!("127.0.0.1:{}", world.broker.port())
            .parse()
            .unwrap();
        let proxy = MqttProxy::start(upstream, ProxyOptions::default()).unwrap();
        Mitm {
            world,
            _ca: ca,
            dev,
            proxy,
            seen: Arc::default(),
        }
    }

    /// Puts `attack` on the path; every PUBLISH is recorded first.
    fn attack(&self, attack: impl Fn(Direction, &str, &[u8]) -> Verdict + Send + Sync + 'static) {
        let seen = Arc::clone(&self.seen);
        let tamper: Tamper = Arc::new(move |dir, topic: &str, payload: &[u8]| {
            seen.lock()
                .unwrap()
                .push((dir, topic.to_owned(), payload.to_vec()));
            attack(dir, topic, payload)
        });
        self.proxy.set_tamper(Some(tamper));
    }

    /// Takes the attacker off the path.
    fn stop_attack(&self) {
        self.proxy.set_tamper(None);
    }

    /// The device's agent daemon, through the proxy. Not `--once`: the attacker's rejected
    /// Answer is answered with a `Rejected` on the device's downlink topic, which the device
    /// cannot tell from its own (rejections are not signed: a broker-path attacker can make
    /// a device give up one attempt, as it can by dropping frames), and `--once` stops at
    /// the first rejection. The daemon logs in again.
    fn agent(&self) -> AgentProcess {
        let data = self.world.dir.path().join("agent-data");
        std::fs::create_dir_all(&data).unwrap();
        let mut spec = AgentSpec::new(
            self.proxy.url(),
            CLUSTER,
            self.dev.spec(),
            &self.world.ca_cert,
            data,
        );
        spec.response_timeout = Some(Duration::from_secs(3));
        spec.retry_initial = Some(Duration::from_millis(200));
        spec.retry_max = Some(Duration::from_secs(1));
        spec.log_level = Some("debug".into());
        let dir = self.world.dir.path().join("agent-run");
        std::fs::create_dir_all(&dir).unwrap();
        AgentProcess::spawn(&common::bin("ekattest-agent"), &spec, &dir, false)
            .unwrap_or_else(|e| panic!("cannot start ekattest-agent: {e}"))
    }

    /// Waits for `needle` in the agent's log.
    fn agent_says(&self, agent: &AgentProcess, needle: &str) {
        agent.wait_for_log(needle, LOG).unwrap_or_else(|e| {
            panic!(
                "the agent never logged {needle:?}: {e}\nagent log:\n{}\nserver log:\n{}",
                agent.log(),
                self.world.logs()
            )
        });
    }

    /// The agent must attest once the attacker is gone (`Connected to server`), and the
    /// SVID certifies the key in its own `svid.key`, not `not_this_key` (the attacker's).
    fn attests_with_its_own_key(&self, agent: &mut AgentProcess, not_this_key: &[u8]) {
        agent
            .wait_for_log("Connected to server", AGENT_WAIT)
            .unwrap_or_else(|e| {
                panic!(
                    "the honest device did not attest after the attack: {e}\nagent log:\n{}\n\
                     server log:\n{}",
                    agent.log(),
                    self.world.logs()
                )
            });
        let data = self.world.dir.path().join("agent-data");
        let svid_spki = openssl_der(&data, &["x509", "-in", "svid.pem", "-pubkey", "-noout"]);
        let key_spki = openssl_der(&data, &["pkey", "-in", "svid.key", "-pubout"]);
        assert_eq!(
            svid_spki, key_spki,
            "the SVID does not certify the device's key"
        );
        assert_ne!(
            svid_spki, not_this_key,
            "the SVID certifies the attacker's key"
        );
        assert_eq!(self.world.metric("node-1", SUCCESS), 1.0);
    }

    /// The frames the proxy saw going `dir` on topics ending in `suffix`.
    fn frames(&self, dir: Direction, suffix: &str) -> Vec<(String, Vec<u8>)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, t, _)| *d == dir && t.ends_with(suffix))
            .map(|(_, t, p)| (t.clone(), p.clone()))
            .collect()
    }
}

/// The DER SubjectPublicKeyInfo openssl prints (PEM) for `args`, run in `dir`.
fn openssl_der(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let text = String::from_utf8(ekattest_testkit::testdata::openssl(dir, args)).unwrap();
    let pem = pem::parse(text.trim()).unwrap();
    pem.into_contents()
}

/// The agent id a login topic names (`{p}/{cluster}/agents/{agent}/login`).
fn agent_of(topic: &str) -> String {
    topic.rsplit('/').nth(1).unwrap().to_owned()
}

fn frame(msg: &Uplink) -> Vec<u8> {
    let mut buf = vec![0u8; limits::FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

fn downlink_frame(msg: &Downlink) -> Vec<u8> {
    let mut buf = vec![0u8; limits::FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

/// Rewrites every Login going up so its `svid_key` is `key` (the attacker's), and forwards
/// everything else.
fn swap_svid_key(key: Vec<u8>) -> impl Fn(Direction, &str, &[u8]) -> Verdict + Send + Sync {
    move |dir, topic, payload| {
        if dir != Direction::Up || !topic.ends_with("/login") {
            return Verdict::Forward;
        }
        let Ok(Uplink::Login(mut login)) = decode::<Uplink>(payload) else {
            return Verdict::Forward;
        };
        login.svid_key = Some(heapless::Vec::from_slice(&key).unwrap());
        Verdict::Replace(frame(&Uplink::Login(login)))
    }
}

/// The attacker's last move of attack 1: it holds the relayed Challenge, knows the
/// transcript of the Login it rewrote, and signs a proof of possession with its own key,
/// but has only a guess for the secret (the device never answered, and an Answer would
/// carry only a MAC). It publishes that Answer on the node's answer topic as the device.
fn answer_as_attacker(m: &Mitm, key: &SvidKey) -> Downlink {
    let (login_topic, rewritten) = m.frames(Direction::Up, "/login").pop().unwrap();
    let agent = agent_of(&login_topic);
    let rewritten = match decode::<Uplink>(&rewritten).unwrap() {
        Uplink::Login(mut l) => {
            l.svid_key = Some(heapless::Vec::from_slice(&key.spki_der().unwrap()).unwrap());
            frame(&Uplink::Login(l))
        }
        Uplink::Answer(_) => unreachable!(),
    };
    let t: Transcript = sign::transcript(CLUSTER, &agent, &rewritten).unwrap();
    let (_, down) = m.frames(Direction::Down, "/down").pop().unwrap();
    let Downlink::Challenge(c) = decode::<Downlink>(&down).unwrap() else {
        panic!("the attacker saw no Challenge")
    };
    assert_eq!(c.transcript, t, "the server challenged the rewritten Login");
    let guess = [0u8; 32];
    let answer: Answer =
        ekattest_agent::attest::answer_with_secret(&guess, &c, &t, Some(key.signing_key()))
            .unwrap();
    let mut attacker = mqtt_peer::connect(&m.world.broker, "attacker", None, Via::Plain).unwrap();
    let down_topic = topics().down(&agent).unwrap();
    attacker.subscribe(down_topic.as_str()).unwrap();
    let topic = topics().answer("node-1", &agent).unwrap();
    attacker
        .publish(topic.as_str(), &frame(&Uplink::Answer(answer)), false)
        .unwrap();
    let reply = attacker
        .expect_publish(down_topic.as_str(), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no reply to the attacker's Answer\n{}", m.world.logs()));
    decode::<Downlink>(&reply.payload).unwrap()
}

/// Attack 1: the svid_key swap of wire version 1, tried on a real device.
#[test]
fn a_swapped_svid_key_gets_no_identity_and_the_device_touches_no_tpm_for_it() {
    let m = Mitm::start();
    let attacker_key = SvidKey::generate().unwrap();
    let attacker_spki = attacker_key.spki_der().unwrap();
    m.attack(swap_svid_key(attacker_spki.clone()));
    let mut agent = m.agent();

    // The device refuses the relayed Challenge: it names the rewritten Login's transcript.
    m.agent_says(&agent, "ignoring a Challenge");
    m.agent_says(&agent, "transcript differs");
    assert!(
        !agent.log().contains("challenge for session"),
        "the device ran ActivateCredential for the attacker's Challenge:\n{}",
        agent.log()
    );
    assert!(
        m.frames(Direction::Up, "")
            .iter()
            .all(|(t, _)| !t.contains("/answer/")),
        "the device answered a Challenge for the rewritten Login"
    );

    // The attacker's best Answer: its own proof of possession, a guessed MAC.
    let reply = answer_as_attacker(&m, &attacker_key);
    assert_eq!(
        attack_kit::rejected(&reply),
        ekattest_protocol::RejectCode::ChallengeFailed
    );
    m.world
        .server("node-1")
        .wait_for_log("challenge response secret does not match", LOG)
        .unwrap();
    assert_eq!(
        m.world.metric("node-1", SUCCESS),
        0.0,
        "an identity was issued"
    );
    assert_eq!(m.world.metric("node-1", &failed("challenge_failed")), 1.0);

    m.stop_attack();
    m.attests_with_its_own_key(&mut agent, &attacker_spki);
}

/// Attack 1b: the attacker also rewrites the Challenge's transcript to the device's own, so
/// the device's check of `T` passes; the server's signature then does not.
#[test]
fn a_challenge_rewritten_to_the_devices_transcript_fails_its_signature() {
    let m = Mitm::start();
    let attacker_spki = SvidKey::generate().unwrap().spki_der().unwrap();
    let device_t: Arc<Mutex<Option<Transcript>>> = Arc::default();
    let swap = swap_svid_key(attacker_spki.clone());
    let t = Arc::clone(&device_t);
    m.attack(move |dir, topic, payload| {
        if dir == Direction::Up && topic.ends_with("/login") {
            *t.lock().unwrap() =
                Some(sign::transcript(CLUSTER, &agent_of(topic), payload).unwrap());
            return swap(dir, topic, payload);
        }
        if dir == Direction::Down
            && let Ok(Downlink::Challenge(mut c)) = decode::<Downlink>(payload)
            && let Some(own) = *t.lock().unwrap()
        {
            c.transcript = own;
            return Verdict::Replace(downlink_frame(&Downlink::Challenge(c)));
        }
        Verdict::Forward
    });
    let mut agent = m.agent();
    m.agent_says(&agent, "ignoring a Challenge");
    m.agent_says(&agent, "signature does not verify");
    assert!(device_t.lock().unwrap().is_some());
    assert!(
        !agent.log().contains("challenge for session"),
        "{}",
        agent.log()
    );
    assert!(
        m.frames(Direction::Up, "")
            .iter()
            .all(|(t, _)| !t.contains("/answer/"))
    );
    assert_eq!(m.world.metric("node-1", SUCCESS), 0.0);

    m.stop_attack();
    m.attests_with_its_own_key(&mut agent, &attacker_spki);
}

/// Attack 2: the device as an activation oracle. The attacker holds the device's Logins
/// back, logs in itself with the device's EK and AK (its own SVID key) and lets that
/// Challenge reach the device, which ignores it. Under the attacker's own agent id the
/// Login is refused outright.
#[test]
fn a_challenge_for_the_attackers_login_is_no_activation_oracle() {
    let m = Mitm::start();
    m.attack(|dir, topic, _| {
        if dir == Direction::Up && topic.ends_with("/login") {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    });
    let mut agent = m.agent();
    // Wait for a captured Login of the device.
    let mut captured = Vec::new();
    for _ in 0..100 {
        captured = m.frames(Direction::Up, "/login");
        if !captured.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (login_topic, device_login) = captured.pop().expect("the device never logged in");
    let agent_id = agent_of(&login_topic);
    let Uplink::Login(mut login) = decode::<Uplink>(&device_login).unwrap() else {
        panic!("not a Login")
    };
    let attacker_key = SvidKey::generate().unwrap();
    let attacker_spki = attacker_key.spki_der().unwrap();
    login.svid_key = Some(heapless::Vec::from_slice(&attacker_spki).unwrap());
    login.nonce = [0xa7; 16];

    // Under its own agent id: refused before any session.
    let mut own = mqtt_peer::connect(&m.world.broker, "ek-attacker", None, Via::Plain).unwrap();
    let own_down = topics().down("ek-attacker").unwrap();
    own.subscribe(own_down.as_str()).unwrap();
    own.publish(
        topics().login("ek-attacker").unwrap().as_str(),
        &frame(&Uplink::Login(login.clone())),
        false,
    )
    .unwrap();
    let reply = own
        .expect_publish(own_down.as_str(), Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        attack_kit::rejected(&decode::<Downlink>(&reply.payload).unwrap()),
        ekattest_protocol::RejectCode::AgentIdMismatch
    );

    // Under the device's id: the server challenges the attacker's Login, on the device's
    // downlink topic.
    let mut attacker = mqtt_peer::connect(&m.world.broker, "attacker-2", None, Via::Plain).unwrap();
    let down = topics().down(&agent_id).unwrap();
    attacker.subscribe(down.as_str()).unwrap();
    let attacker_frame = frame(&Uplink::Login(login));
    attacker
        .publish(
            topics().login(&agent_id).unwrap().as_str(),
            &attacker_frame,
            false,
        )
        .unwrap();
    let reply = attacker
        .expect_publish(down.as_str(), Duration::from_secs(10))
        .unwrap();
    let Downlink::Challenge(c) = decode::<Downlink>(&reply.payload).unwrap() else {
        panic!(
            "the attacker's Login was not challenged\n{}",
            m.world.logs()
        )
    };
    let attacker_t = sign::transcript(CLUSTER, &agent_id, &attacker_frame).unwrap();
    assert_eq!(c.transcript, attacker_t);

    // The device received it and ignored it: another transcript, no TPM command.
    m.agent_says(&agent, "transcript differs");
    assert!(
        !agent
            .log()
            .contains(&format!("challenge for session {}", c.session)),
        "the device activated the attacker's credential:\n{}",
        agent.log()
    );
    assert!(
        m.frames(Direction::Up, "")
            .iter()
            .all(|(t, _)| !t.contains("/answer/"))
    );
    // The attacker cannot answer it: it has no secret.
    let answer = ekattest_agent::attest::answer_with_secret(
        &[0; 32],
        &c,
        &attacker_t,
        Some(attacker_key.signing_key()),
    )
    .unwrap();
    attacker
        .publish(
            topics().answer("node-1", &agent_id).unwrap().as_str(),
            &frame(&Uplink::Answer(answer)),
            false,
        )
        .unwrap();
    let reply = attacker
        .expect_publish(down.as_str(), Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        attack_kit::rejected(&decode::<Downlink>(&reply.payload).unwrap()),
        ekattest_protocol::RejectCode::ChallengeFailed
    );
    assert_eq!(m.world.metric("node-1", SUCCESS), 0.0);

    m.stop_attack();
    m.attests_with_its_own_key(&mut agent, &attacker_spki);
}

/// Attack 4: one captured Login replayed under many invented agent ids. Every one is
/// refused before a session exists (`agent_id_mismatch`, then the per-EK login limit), the
/// session table stays empty, and no invented id is challenged.
#[test]
fn a_login_replayed_under_invented_agent_ids_opens_no_session() {
    let m = Mitm::start();
    m.attack(|_, _, _| Verdict::Forward);
    let mut agent = m.agent();
    m.attests_with_its_own_key(&mut agent, &[]);
    let (_, captured) = m.frames(Direction::Up, "/login").pop().unwrap();

    const REPLAYS: usize = 200;
    let mut attacker = mqtt_peer::connect(&m.world.broker, "replayer", None, Via::Plain).unwrap();
    attacker
        .subscribe(&format!("ekattest/v1/{CLUSTER}/agents/+/down"))
        .unwrap();
    for i in 0..REPLAYS {
        let id = format!("ek-{i:032x}");
        attacker
            .publish(topics().login(&id).unwrap().as_str(), &captured, false)
            .unwrap();
    }
    let replies = attacker.drain(Duration::from_secs(5));
    let mut challenged = 0;
    for r in &replies {
        if let Ok(Downlink::Challenge(_)) = decode::<Downlink>(&r.payload) {
            challenged += 1;
        }
    }
    assert_eq!(challenged, 0, "an invented agent id was challenged");
    let mismatch = m.world.metric("node-1", &failed("agent_id_mismatch"));
    let limited = m.world.metric(
        "node-1",
        "attestation_frames_rejected_total{reason=\"rate_limited\"}",
    );
    assert_eq!(
        mismatch + limited,
        REPLAYS as f64,
        "every replay is refused as agent_id_mismatch or rate_limited\n{}",
        m.world.logs()
    );
    assert!(mismatch >= 1.0);
    assert_eq!(m.world.metric("node-1", "attestation_sessions_active"), 0.0);
    m.world
        .server("node-1")
        .wait_for_log("agent id is not the one derived from the EK", LOG)
        .unwrap();
    assert_eq!(
        m.world.metric("node-1", SUCCESS),
        1.0,
        "only the device's own attestation"
    );
}
