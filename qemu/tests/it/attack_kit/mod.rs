//! Helpers of the attack tests (tests/it/attacks.rs): a world of one mosquitto and one or more
//! real `ekattest-server` processes of one cluster, and a scripted attacker built on the
//! software TPM (qemu/src/soft_tpm.rs) that publishes hand-made frames over MQTT.
//!
//! Wire version 2: every [`Wire`] keeps the Login transcript `T` of the last Login frame it
//! published (over the exact bytes, under its agent id), and Answers carry the MAC over it
//! ([`ekattest_agent::attest::answer_with_secret`]), never the secret. An honest device
//! checks the Challenge's signature against the world's trust bundle before answering.
//!
//! A test fixture: it fails loudly (panics with the server log) and never hides a missing
//! binary or tool.

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test helper; fails loudly"
)]

use std::path::PathBuf;
use std::time::Duration;

use ekattest_agent::attest::answer_with_secret;
use ekattest_agent::daemon::identity::{SvidKey, TrustBundle};
use ekattest_fleet::broker::{Broker, BrokerOptions};
use ekattest_fleet::daemons::{ServerProcess, ServerSpec, metric_value};
use ekattest_fleet::soft_tpm::{SoftAk, SoftEk};
use ekattest_protocol::limits::NONCE_LEN;
use ekattest_protocol::msg::{Answer, Challenge, Downlink, Login, Method, Outcome, Uplink};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::topic::{Topics, default_agent_id};
use ekattest_protocol::{RejectCode, decode, encode, heapless, limits};
use tempfile::TempDir;

pub use crate::common::{SUCCESS, bin, failed};
use crate::mqtt_peer::{self, Peer, Via};

/// The cluster every attack world uses.
pub const CLUSTER: &str = "c-attacks";
/// The SVID trust domain.
pub const TRUST_DOMAIN: &str = "attacks.test";
/// How long to wait for a downlink.
pub const REPLY: Duration = Duration::from_secs(10);

/// One test's world: temp folder, SVID CA, broker and servers (one per node id).
pub struct World {
    pub dir: TempDir,
    pub ca_cert: PathBuf,
    /// The agents' trust bundle: the SVID CA.
    pub bundle: TrustBundle,
    pub broker: Broker,
    /// `(node id, server)`.
    pub servers: Vec<(String, ServerProcess)>,
}

impl World {
    /// Starts mosquitto and one server per `nodes` entry, all on `policy_doc`.
    pub fn start(policy_doc: &str, nodes: &[&str], session_ttl: Option<Duration>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = crate::common::svid_ca(dir.path(), TRUST_DOMAIN);
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy_doc).unwrap();
        let broker = Broker::start(&BrokerOptions {
            tls: false,
            acl: false,
        })
        .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        let servers = nodes
            .iter()
            .map(|node| {
                let mut spec = ServerSpec::new(
                    broker.url(),
                    CLUSTER,
                    *node,
                    TRUST_DOMAIN,
                    &ca_cert,
                    &ca_key,
                );
                spec.policy_files = vec![policy_file.clone()];
                spec.session_ttl = session_ttl;
                spec.log_level = Some("debug".into());
                // The login limits (per agent id and per EK) are not under test here: a few
                // attacks log in four times with one EK, one more than the default burst.
                spec.login_burst = Some(10);
                let server_dir = dir.path().join(node);
                std::fs::create_dir_all(&server_dir).unwrap();
                let server = ServerProcess::start(&bin("ekattest-server"), &spec, &server_dir)
                    .unwrap_or_else(|e| panic!("cannot start ekattest-server {node}: {e}"));
                // The scripted attackers publish once and never retry: wait until the
                // server's subscriptions are acknowledged (its debug line), or a Login sent
                // right after start-up could reach the broker before the server listens.
                server
                    .wait_for_msg("subscribed", None, Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("ekattest-server {node} never subscribed: {e}"));
                ((*node).to_owned(), server)
            })
            .collect();
        let bundle = TrustBundle::load(&ca_cert).unwrap();
        World {
            dir,
            ca_cert,
            bundle,
            broker,
            servers,
        }
    }

    /// Checks `c` as an agent does before touching its TPM: the signer certificate it
    /// carries chains to the trust bundle, its signature covers `agent`'s Challenge, and it
    /// names `own`, the transcript of the Login that agent sent.
    pub fn verify_challenge(&self, agent: &str, c: &Challenge, own: &Transcript) {
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let der = if c.signer.is_empty() {
            self.bundle.single_anchor().unwrap().to_vec()
        } else {
            c.signer.to_vec()
        };
        let signer = self
            .bundle
            .signer(&der, now)
            .unwrap_or_else(|e| panic!("the Challenge's signer: {e}"));
        signer
            .verify_challenge(agent, c, own, now)
            .unwrap_or_else(|e| panic!("the Challenge does not verify: {e}"));
    }

    /// The server whose node id is `node`.
    pub fn server(&self, node: &str) -> &ServerProcess {
        self.servers
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no server with node id {node}"))
    }

    /// A metric of `node`'s server (0 when the series is absent: a counter never bumped).
    pub fn metric(&self, node: &str, series: &str) -> f64 {
        let text = self.server(node).metrics().unwrap();
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|(n, s)| format!("[{n}]\n{}", s.log()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// An allow-list policy for `eks` (no certificates: software EKs have none).
pub fn allow_list(eks: &[&SoftEk]) -> String {
    let hashes: Vec<String> = eks.iter().map(|e| hex::encode(e.public_hash())).collect();
    ekattest_fleet::load::keys::policy_document(&hashes)
}

/// A scripted device on the software TPM: its EK, AK, SVID key and MQTT connection.
pub struct SoftDevice {
    pub ek: SoftEk,
    pub ak: SoftAk,
    pub agent: String,
    svid_key: SvidKey,
    wire: Wire,
}

impl SoftDevice {
    /// A device around `ek` (its AK fresh), connected to `world`'s broker as its default
    /// agent id, subscribed to its downlink topic.
    pub fn with_ek(world: &World, ek: SoftEk) -> SoftDevice {
        let agent = default_agent_id(ek.public_hash()).to_string();
        let wire = Wire::connect(world, &agent);
        SoftDevice {
            ek,
            ak: SoftAk::generate().unwrap(),
            agent,
            svid_key: SvidKey::generate().unwrap(),
            wire,
        }
    }

    /// The Login a correct agent sends (own EK, own AK, own SVID key).
    pub fn login(&self) -> Login {
        self.login_with(self.ek.tpm2b_public(), self.ak.tpm2b_public())
    }

    /// A Login with these EK and AK public areas and this device's SVID key (a fresh nonce,
    /// no signer hint: the Challenge carries the signer's certificate).
    pub fn login_with(&self, ek_public: &[u8], ak_public: &[u8]) -> Login {
        let spki = self.svid_key.spki_der().unwrap();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
            ek_public: heapless::Vec::from_slice(ek_public).unwrap(),
            ek_cert: None,
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(ak_public).unwrap(),
            svid_key: Some(heapless::Vec::from_slice(&spki).unwrap()),
            key_certify: None,
            nonce,
            signer_hint: None,
        }
    }

    /// The transcript of the last Login this device's wire published.
    pub fn transcript(&self) -> Transcript {
        self.wire.transcript()
    }

    /// Publishes `login` on this device's login topic and returns the server's reply.
    pub fn send_login(&mut self, login: &Login) -> Downlink {
        self.wire.send_login(login)
    }

    /// Logs in with [`Self::login`] and returns the Challenge (panics on anything else),
    /// checked as the agent checks it.
    pub fn challenge(&mut self, world: &World) -> Challenge {
        let login = self.login();
        match self.send_login(&login) {
            Downlink::Challenge(c) => {
                world.verify_challenge(&self.agent, &c, &self.transcript());
                c
            }
            other => panic!("expected a Challenge, got {other:?}\n{}", world.logs()),
        }
    }

    /// The correct Answer to `c`: software ActivateCredential with this EK and AK Name, the
    /// MAC over this device's last Login transcript, and a proof of possession of the SVID
    /// key.
    pub fn answer(&self, c: &Challenge) -> Answer {
        let secret = self
            .ek
            .activate_credential(self.ak.name(), &c.credential_blob, &c.encrypted_secret)
            .unwrap();
        self.answer_with(c, &self.transcript(), &secret)
    }

    /// The Answer to `c` a device computes from `secret` (the recovered one, or a guess)
    /// over the Login transcript `transcript`, with a proof of possession of this device's
    /// SVID key.
    pub fn answer_with(&self, c: &Challenge, transcript: &Transcript, secret: &[u8]) -> Answer {
        answer_with_secret(secret, c, transcript, Some(self.svid_key.signing_key())).unwrap()
    }

    /// Publishes `answer` on `node`'s answer topic for this device's agent id and returns
    /// the reply.
    pub fn send_answer(&mut self, node: &str, answer: &Answer) -> Downlink {
        self.wire.send_answer(node, answer)
    }

    /// Asserts that nothing arrives on this device's downlink for a short while.
    pub fn expect_silence(&mut self) {
        self.wire.expect_silence();
    }
}

/// One agent id's MQTT connection: publishes uplink frames on its topics and reads its
/// downlink.
pub struct Wire {
    pub agent: String,
    peer: Peer,
    /// The transcript of the last Login frame published.
    transcript: Option<Transcript>,
}

impl Wire {
    /// Connects to `world`'s broker as `agent` and subscribes to its downlink topic.
    pub fn connect(world: &World, agent: &str) -> Wire {
        Self::connect_as(world, agent, agent)
    }

    /// Connects to `world`'s broker with MQTT client id `client` (an attacker beside the
    /// device it impersonates) and uses `agent`'s topics.
    pub fn connect_as(world: &World, agent: &str, client: &str) -> Wire {
        let mut peer = mqtt_peer::connect(&world.broker, client, None, Via::Plain).unwrap();
        peer.subscribe(&topics().down(agent).unwrap()).unwrap();
        Wire {
            agent: agent.to_owned(),
            peer,
            transcript: None,
        }
    }

    /// Publishes `login` on the login topic, keeps its transcript (over the exact frame,
    /// under this agent id) and returns the reply.
    pub fn send_login(&mut self, login: &Login) -> Downlink {
        let topic = topics().login(&self.agent).unwrap();
        let frame = self.publish(topic.as_str(), &Uplink::Login(login.clone()));
        self.transcript = Some(sign::transcript(CLUSTER, &self.agent, &frame).unwrap());
        self.receive()
    }

    /// The transcript of the last Login published (panics before the first).
    pub fn transcript(&self) -> Transcript {
        self.transcript
            .unwrap_or_else(|| panic!("{} has not sent a Login yet", self.agent))
    }

    /// Publishes `answer` on `node`'s answer topic and returns the reply.
    pub fn send_answer(&mut self, node: &str, answer: &Answer) -> Downlink {
        let topic = topics().answer(node, &self.agent).unwrap();
        self.publish(topic.as_str(), &Uplink::Answer(answer.clone()));
        self.receive()
    }

    /// Publishes `msg` and returns the frame sent.
    fn publish(&mut self, topic: &str, msg: &Uplink) -> Vec<u8> {
        let mut buf = [0u8; limits::FRAME_MAX];
        let frame = encode(msg, &mut buf).unwrap().to_vec();
        self.peer.publish(topic, &frame, false).unwrap();
        frame
    }

    /// The next downlink for this agent id.
    pub fn receive(&mut self) -> Downlink {
        let topic = topics().down(&self.agent).unwrap();
        let publish = self
            .peer
            .expect_publish(topic.as_str(), REPLY)
            .unwrap_or_else(|| panic!("no downlink for {} within {REPLY:?}", self.agent));
        decode::<Downlink>(&publish.payload).unwrap()
    }

    /// Asserts that nothing arrives on this agent's downlink for a short while.
    pub fn expect_silence(&mut self) {
        let got = self.peer.drain(mqtt_peer::QUIET);
        assert!(got.is_empty(), "unexpected downlinks: {got:?}");
    }
}

/// The cluster's topics.
pub fn topics() -> Topics<'static> {
    Topics::with_default_prefix(CLUSTER).unwrap()
}

/// The reject code of a Rejected result (panics on anything else).
pub fn rejected(down: &Downlink) -> RejectCode {
    match down {
        Downlink::Result(Outcome::Rejected(r)) => r.code,
        other => panic!("expected a Rejected result, got {other:?}"),
    }
}

/// Whether `down` is an Accepted result.
pub fn accepted(down: &Downlink) -> bool {
    matches!(down, Downlink::Result(Outcome::Accepted(_)))
}
