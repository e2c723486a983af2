//! End to end over MQTT (issue 4 acceptance): the real `ekattest-server` and `ekattest-agent`
//! binaries, a real mosquitto started by the test, swtpm devices provisioned with a per-test
//! CA, openssl as the SVID oracle and `ekattestctl` for hot reload.
//!
//! The binaries come from the same target folder as this test (`cargo test --workspace`
//! builds them); a missing binary fails the test with the command that builds it.
use crate::common;
use crate::mqtt_peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{SUCCESS, bin, failed, policy, read};
use ekattest_agent::tpm::ak::{self as agent_ak, AkOptions};
use ekattest_agent::tpm::commands::Tpm;
use ekattest_agent::tpm::ek::{self as agent_ek, EkKind as AgentEkKind};
use ekattest_agent::tpm::stream::Stream;
use ekattest_fleet::broker::{Broker, BrokerOptions};
use ekattest_fleet::daemons::{AgentExit, AgentProcess, AgentSpec, ServerProcess, ServerSpec};
use ekattest_fleet::{Ca, Device, EkKind, ProvisionOptions, openssl_public_hash};
use ekattest_protocol::limits::NONCE_LEN;
use ekattest_protocol::msg::{Answer, Downlink, Login, Method, Outcome, Uplink};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::topic::{Topics, default_agent_id};
use ekattest_protocol::{decode, encode, heapless, limits};
use mqtt_peer::{Peer, Via};
use tempfile::TempDir;

const CLUSTER: &str = "c-e2e";
const TRUST_DOMAIN: &str = "fleet.test";
const WAIT: Duration = Duration::from_secs(60);

/// One test's world: a temp folder, the SVID CA, a broker and a server.
struct World {
    dir: TempDir,
    /// The operator's policy signing key (`ekattestctl config keygen`; its public half is
    /// the server's policy-signers).
    sign_key: PathBuf,
    ca_cert: PathBuf,
    policy_file: PathBuf,
    broker: Broker,
    server: ServerProcess,
}

struct Setup {
    tls_acl: bool,
    session_ttl: Option<Duration>,
}

impl World {
    fn start(policy_doc: &str, setup: &Setup) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = common::svid_ca(dir.path(), TRUST_DOMAIN);
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy_doc).unwrap();
        let broker = Broker::start(&BrokerOptions {
            tls: setup.tls_acl,
            acl: setup.tls_acl,
        })
        .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        let (url, tls_ca) = if setup.tls_acl {
            (broker.tls_url().unwrap(), broker.ca_pem())
        } else {
            (broker.url(), None)
        };
        let mut spec = ServerSpec::new(url, CLUSTER, "node-1", TRUST_DOMAIN, &ca_cert, &ca_key);
        spec.tls_ca = tls_ca;
        spec.policy_files = vec![policy_file.clone()];
        spec.session_ttl = setup.session_ttl;
        spec.reload_interval = Some(Duration::from_millis(300));
        // The login limits (per agent id and per EK: default 3 at once) are not under test
        // here; the hostile agent logs in four times with one EK and one agent id.
        spec.login_burst = Some(10);
        let out = Command::new(bin("ekattestctl"))
            .args(["config", "keygen", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        spec.policy_topic = true;
        spec.policy_signers = vec![dir.path().join("policy-signer.pub")];
        let sign_key = dir.path().join("policy-signer.key");
        if setup.tls_acl {
            let (user, password_file) = broker.user("ekattest-server").unwrap();
            spec.username = Some(user);
            spec.password_file = Some(password_file);
        }
        let server_dir = dir.path().join("server");
        std::fs::create_dir_all(&server_dir).unwrap();
        spec.log_level = Some("debug".into());
        let server = ServerProcess::start(&bin("ekattest-server"), &spec, &server_dir)
            .unwrap_or_else(|e| panic!("cannot start ekattest-server: {e}"));
        // The scripted agents publish once and never retry: wait until the server's
        // subscriptions are acknowledged (its debug line) before anyone logs in.
        server
            .wait_for_msg("subscribed", None, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("ekattest-server never subscribed: {e}"));
        World {
            dir,
            sign_key,
            ca_cert,
            policy_file,
            broker,
            server,
        }
    }

    fn agent_spec(&self, dev: &Device, name: &str, tls: bool) -> AgentSpec {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        let url = if tls {
            self.broker.tls_url().unwrap()
        } else {
            self.broker.url()
        };
        let mut spec = AgentSpec::new(url, CLUSTER, dev.spec(), &self.ca_cert, data);
        if tls {
            spec.tls_ca = self.broker.ca_pem();
        }
        spec.response_timeout = Some(Duration::from_secs(5));
        spec.retry_initial = Some(Duration::from_millis(200));
        spec.retry_max = Some(Duration::from_secs(2));
        spec.log_level = Some("debug".into());
        spec
    }

    fn run_once(&self, spec: &AgentSpec, name: &str) -> AgentExit {
        let dir = self.dir.path().join(format!("{name}-run"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent = AgentProcess::spawn(&bin("ekattest-agent"), spec, &dir, true)
            .unwrap_or_else(|e| panic!("cannot start ekattest-agent: {e}"));
        agent.wait(WAIT).unwrap_or_else(|e| {
            panic!(
                "agent {name} did not finish: {e}\nserver log:\n{}",
                self.server.log()
            )
        })
    }

    fn metric(&self, series: &str) -> f64 {
        let text = self.server.metrics().unwrap();
        ekattest_fleet::daemons::metric_value(&text, series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }
}

fn provision(ca: &Ca) -> Device {
    Device::provision(
        ca,
        &ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: true,
        },
    )
    .unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

/// `tpm_ek.public_hash` of `dev`'s EK of `kind`, by openssl.
fn public_hash(dev: &Device, kind: EkKind) -> String {
    let der = dev.ek_cert_der(kind).unwrap();
    let path = dev.work_dir().join(format!("ek-{kind:?}.der"));
    std::fs::write(&path, der).unwrap();
    openssl_public_hash(&path).unwrap()
}

/// The agent's files: SVID chains to the server CA (openssl), URI SAN, key mode 0600.
fn check_identity(world: &World, data: &Path, spiffe_id: &str) {
    use std::os::unix::fs::PermissionsExt;
    let svid = data.join("svid.pem");
    let key = data.join("svid.key");
    let bundle = data.join("bundle.pem");
    for f in [&svid, &key, &bundle] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "svid.key mode");
    assert_eq!(
        read(&bundle),
        read(&world.ca_cert),
        "bundle.pem is the server CA"
    );
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&world.ca_cert)
        .arg(&svid)
        .output()
        .expect("openssl is required");
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&svid)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("URI:{spiffe_id}")),
        "SVID SAN:\n{text}"
    );
    // The key file holds the private half of the certified key.
    let from_key = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let from_cert = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&svid)
        .output()
        .unwrap();
    assert!(from_key.status.success() && !from_key.stdout.is_empty());
    assert_eq!(
        from_key.stdout, from_cert.stdout,
        "svid.key does not match svid.pem"
    );
}

/// The seed's three server lines for `agent`, in order.
fn check_seed_lines(world: &World, agent: &str, hash: &str) {
    let lines: Vec<serde_json::Value> = world
        .server
        .log_json()
        .into_iter()
        .filter(|v| v["agentId"] == agent)
        .collect();
    let pos = |msg: &str| {
        lines
            .iter()
            .position(|v| v["msg"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} for {agent} in\n{}", world.server.log()))
    };
    let login = pos("Login started with multi-attestation support");
    let verified = pos("Authorization received and verified");
    let connected = pos("Connected to agent");
    assert!(
        login < verified && verified < connected,
        "seed order for {agent}"
    );
    assert_eq!(
        lines[login]["providedMethods"],
        serde_json::json!(["tpm_ek"])
    );
    let attrs = lines[verified]["agentAttestationAttributes"]
        .as_array()
        .unwrap_or_else(|| panic!("no attribute array: {}", lines[verified]));
    assert_eq!(
        attrs[0],
        serde_json::Value::String(format!("tpm_ek:tpm_ek.public_hash=\"{hash}\""))
    );
    for name in ["serial_number", "manufacturer", "model", "version"] {
        let prefix = format!("tpm_ek:tpm_ek.{name}=\"");
        assert!(
            attrs
                .iter()
                .any(|a| a.as_str().is_some_and(|s| s.starts_with(&prefix))),
            "{name} missing in {attrs:?}"
        );
    }
}

#[test]
fn three_ek_kinds_attest_through_mosquitto() {
    let ca = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let kinds = [
        (EkKind::Rsa2048, "rsa2048"),
        (EkKind::P256, "p256"),
        (EkKind::P384, "p384"),
    ];
    for (kind, name) in kinds {
        let dev = provision(&ca);
        let hash = public_hash(&dev, kind);
        let mut spec = world.agent_spec(&dev, name, false);
        spec.ek = Some(name.into());
        let exit = world.run_once(&spec, name);
        assert!(
            exit.success(),
            "{name}: agent failed:\n{}\nserver:\n{}",
            exit.log,
            world.server.log()
        );
        assert!(exit.log.contains("Connected to server"), "{}", exit.log);
        assert!(
            exit.log.contains("Sending Login"),
            "debug line: {}",
            exit.log
        );
        let agent = default_agent_id(&hex_array(&hash)).to_string();
        let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}");
        check_identity(&world, &spec.data_dir, &spiffe_id);
        check_seed_lines(&world, &agent, &hash);
    }
    assert_eq!(world.metric(SUCCESS), 3.0);
    // Payload bytes: three Logins with EK certificates in, Challenges and Results out.
    let bytes_in = world.metric("attestation_frame_bytes_total{direction=\"in\"}");
    let bytes_out = world.metric("attestation_frame_bytes_total{direction=\"out\"}");
    assert!(bytes_in > 3.0 * 1000.0, "in: {bytes_in}");
    assert!(bytes_out > 3.0 * 700.0, "out: {bytes_out}");
}

fn hex_array(hash: &str) -> [u8; 32] {
    let bytes = hex::decode(hash).unwrap();
    bytes.try_into().unwrap()
}

#[test]
fn same_flow_over_tls_with_the_shipped_acl() {
    let ca = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: true,
            session_ttl: None,
        },
    );
    let dev = provision(&ca);
    let hash = public_hash(&dev, EkKind::Rsa2048);
    let spec = world.agent_spec(&dev, "tls", true);
    let exit = world.run_once(&spec, "tls");
    assert!(
        exit.success(),
        "{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );
    check_identity(
        &world,
        &spec.data_dir,
        &format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}"),
    );
    assert_eq!(world.metric(SUCCESS), 1.0);
}

/// Attack 4 of issue 13 through the shipped ACL (over TLS): the ACL lets an anonymous client
/// pick any client id and publish a Login on that id's topic, so one captured Login can be
/// replayed under invented agent ids; the server refuses each as `agent_id_mismatch` (the
/// agent id must be derived from the EK) or, once the EK's login tokens are spent, as rate
/// limited, and opens no session. Attack 3 through the same ACL: an anonymous client's
/// document on the config topic is dropped by the broker (and would be refused unsigned).
#[test]
fn invented_agent_ids_get_no_session_through_the_shipped_acl() {
    let ca = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: true,
            session_ttl: None,
        },
    );
    let tls_ca = world.broker.ca_pem().unwrap();
    let topics = Topics::new("ekattest/v1", CLUSTER).unwrap();
    // A Login as captured from a device (the make-credential vectors' EK and AK).
    let testdata = ekattest_testkit::testdata::vector;
    let login = Login {
        methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
        ek_public: heapless::Vec::from_slice(&testdata("rsa2048/ek.tpm2b_public")).unwrap(),
        ek_cert: None,
        ek_chain: heapless::Vec::new(),
        ak_public: heapless::Vec::from_slice(&testdata("ak.tpm2b_public")).unwrap(),
        svid_key: None,
        key_certify: None,
        nonce: [0x11; 16],
        signer_hint: None,
    };
    let mut buf = vec![0u8; limits::FRAME_MAX];
    let frame = encode(&Uplink::Login(login), &mut buf).unwrap().to_vec();

    const INVENTED: usize = 12;
    for i in 0..INVENTED {
        let id = format!("ek-{i:032x}");
        let mut peer = mqtt_peer::connect(&world.broker, &id, None, Via::Tls(&tls_ca)).unwrap();
        let down = topics.down(&id).unwrap();
        peer.subscribe(down.as_str()).unwrap();
        peer.publish(topics.login(&id).unwrap().as_str(), &frame, false)
            .unwrap();
        let reply = peer
            .expect_publish(down.as_str(), Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reply for {id}\n{}", world.server.log()));
        let code = rejected(&decode::<Downlink>(&reply.payload).unwrap());
        assert!(
            matches!(
                code,
                ekattest_protocol::RejectCode::AgentIdMismatch
                    | ekattest_protocol::RejectCode::Busy
            ),
            "{id}: {code:?}"
        );
        peer.disconnect();
    }
    let mismatch = world.metric(&failed("agent_id_mismatch"));
    assert!(mismatch >= 1.0);
    assert_eq!(world.metric("attestation_sessions_active"), 0.0);

    // Attack 3: an anonymous client publishes a policy document on the config topic.
    let mut rogue = mqtt_peer::connect(&world.broker, "rogue", None, Via::Tls(&tls_ca)).unwrap();
    rogue
        .publish(
            topics.config().unwrap().as_str(),
            b"section: AgentAttestation\nschema: v1\nspec:\n  policies: []\n",
            true,
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Any document the server sees from the topic is logged with this source, applied or
    // refused; the ACL dropped it before.
    let log = world.server.log();
    assert!(
        !log.contains("\"source\":\"config topic\""),
        "the rogue document reached the server:\n{log}"
    );
}

#[test]
fn untrusted_ca_and_unlisted_hash_are_rejected_with_the_seed_strings() {
    let trusted = Ca::create().unwrap();
    let untrusted = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&trusted), &[&"0".repeat(64)]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let dev = provision(&untrusted);
    let spec = world.agent_spec(&dev, "untrusted", false);
    let exit = world.run_once(&spec, "untrusted");
    assert_eq!(exit.code(), Some(1), "{}", exit.log);
    // Chain to an unknown CA, hash not listed: the seed's "EK did not pass any configured
    // validation check" (or the chain error) on both sides.
    let seed = [
        "EK did not pass any configured validation check",
        "failed to verify EK certificate chain",
    ];
    assert!(
        seed.iter().any(|s| exit.log.contains(s)),
        "agent: {}",
        exit.log
    );
    assert!(
        seed.iter().any(|s| world.server.log().contains(s)),
        "{}",
        world.server.log()
    );
    assert!(
        !spec.data_dir.join("svid.pem").exists(),
        "no identity on rejection"
    );
    let failed_total: f64 = ["ek_not_trusted", "ek_chain"]
        .iter()
        .map(|r| world.metric(&failed(r)))
        .sum();
    assert_eq!(failed_total, 1.0);

    // Allow-list only, hash not listed.
    let world2 = World::start(
        &policy(None, &[&"1".repeat(64)]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let dev = provision(&trusted);
    let spec = world2.agent_spec(&dev, "unlisted", false);
    let exit = world2.run_once(&spec, "unlisted");
    assert_eq!(exit.code(), Some(1), "{}", exit.log);
    assert!(exit.log.contains(seed[0]), "agent: {}", exit.log);
    world2
        .server
        .wait_for_log(seed[0], Duration::from_secs(5))
        .unwrap();
    assert_eq!(world2.metric(&failed("ek_not_trusted")), 1.0);
}

/// A scripted hostile agent: the agent library on a real swtpm, frames over MQTT. It keeps
/// the transcript of the last Login frame it published, as an agent does.
struct Hostile {
    peer: Peer,
    agent: String,
    login: Login,
    tpm: Tpm<ekattest_agent::tpm::stream::Tcp>,
    ek: agent_ek::Ek,
    transcript: Option<Transcript>,
}

impl Hostile {
    fn new(world: &World, dev: &Device) -> Hostile {
        Self::on_topics_of(world, dev, None)
    }

    /// A hostile agent on `dev` that publishes under agent id `as_agent` (another device's,
    /// from its own MQTT client) instead of its own.
    fn on_topics_of(world: &World, dev: &Device, as_agent: Option<&str>) -> Hostile {
        let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", dev.port()).unwrap());
        tpm.startup_clear().unwrap();
        tpm.flush_leftovers().unwrap();
        let endorsement = agent_ek::discover(&mut tpm).unwrap();
        let ek = endorsement
            .pick(Some(AgentEkKind::Rsa2048))
            .unwrap()
            .clone();
        let ak = agent_ak::read(&mut tpm, &AkOptions::default()).unwrap();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let login =
            ekattest_agent::attest::login(&ek, &endorsement.chain, &ak, None, nonce, None).unwrap();
        let own = default_agent_id(&ek.public_hash).to_string();
        let agent = as_agent.unwrap_or(&own).to_owned();
        let mut peer = mqtt_peer::connect(&world.broker, &own, None, Via::Plain).unwrap();
        let topics = Topics::with_default_prefix(CLUSTER).unwrap();
        peer.subscribe(&topics.down(&agent).unwrap()).unwrap();
        Hostile {
            peer,
            agent,
            login,
            tpm,
            ek,
            transcript: None,
        }
    }

    fn send(&mut self, topic: &str, msg: &Uplink) -> Vec<u8> {
        let mut buf = [0u8; limits::FRAME_MAX];
        let frame = encode(msg, &mut buf).unwrap().to_vec();
        self.peer.publish(topic, &frame, false).unwrap();
        frame
    }

    fn send_login(&mut self, login: &Login) -> Downlink {
        let topics = Topics::with_default_prefix(CLUSTER).unwrap();
        let frame = self.send(
            &topics.login(&self.agent).unwrap(),
            &Uplink::Login(login.clone()),
        );
        self.transcript = Some(sign::transcript(CLUSTER, &self.agent, &frame).unwrap());
        self.receive()
    }

    /// The transcript of the last Login sent.
    fn transcript(&self) -> Transcript {
        self.transcript.expect("no Login sent yet")
    }

    /// The TPM's Answer to `challenge` over the last Login's transcript.
    fn answer(
        &mut self,
        challenge: &ekattest_protocol::msg::Challenge,
    ) -> Result<Answer, ekattest_agent::attest::AttestError> {
        let t = self.transcript();
        ekattest_agent::attest::answer(
            &mut self.tpm,
            &self.ek,
            &AkOptions::default(),
            challenge,
            &t,
            None,
        )
    }

    fn send_answer(&mut self, node: &str, answer: &Answer) -> Downlink {
        let topics = Topics::with_default_prefix(CLUSTER).unwrap();
        self.send(
            &topics.answer(node, &self.agent).unwrap(),
            &Uplink::Answer(answer.clone()),
        );
        self.receive()
    }

    fn receive(&mut self) -> Downlink {
        let topics = Topics::with_default_prefix(CLUSTER).unwrap();
        let publish = self
            .peer
            .expect_publish(&topics.down(&self.agent).unwrap(), Duration::from_secs(10))
            .expect("no downlink from the server within 10 s");
        decode::<Downlink>(&publish.payload).unwrap()
    }
}

fn rejected(down: &Downlink) -> ekattest_protocol::RejectCode {
    match down {
        Downlink::Result(Outcome::Rejected(r)) => r.code,
        other => panic!("expected a Rejected result, got {other:?}"),
    }
}

#[test]
fn hostile_agents_replay_copied_certificate_expiry_and_no_policy() {
    use ekattest_protocol::RejectCode;
    let ca = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: false,
            session_ttl: Some(Duration::from_secs(2)),
        },
    );

    // Replay: a correct answer is accepted once; the same answer again is an unknown session.
    let dev = provision(&ca);
    let mut h = Hostile::new(&world, &dev);
    let login = h.login.clone();
    let Downlink::Challenge(challenge) = h.send_login(&login) else {
        panic!("expected a challenge");
    };
    let answer = h.answer(&challenge).unwrap();
    let first = h.send_answer(&challenge.node, &answer);
    assert!(
        matches!(first, Downlink::Result(Outcome::Accepted(_))),
        "{first:?}"
    );
    let replay = h.send_answer(&challenge.node, &answer);
    assert_eq!(rejected(&replay), RejectCode::UnknownSession);
    world
        .server
        .wait_for_log("unknown session ID", Duration::from_secs(5))
        .unwrap();

    // Expiry: the session lives 2 s; an answer after 3 s fails.
    let Downlink::Challenge(challenge) = h.send_login(&login) else {
        panic!("expected a challenge");
    };
    let answer = h.answer(&challenge).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let late = rejected(&h.send_answer(&challenge.node, &answer));
    assert!(
        matches!(
            late,
            RejectCode::UnknownSession | RejectCode::SessionExpired
        ),
        "{late:?}"
    );

    // No matching policy: a Login offering no method the policy requires.
    let mut no_method = login.clone();
    no_method.methods = heapless::Vec::new();
    assert_eq!(
        rejected(&h.send_login(&no_method)),
        RejectCode::NoMatchingPolicy
    );
    world
        .server
        .wait_for_log(
            "no cluster policy authorizes the provided attestors",
            Duration::from_secs(5),
        )
        .unwrap();

    // Copied certificate: device B presents A's EK certificate and EK public with its own
    // AK, on A's topics (the server derives the agent id from the EK, so only A's id gets
    // that far). The server accepts the evidence and challenges A's EK; B's TPM cannot open
    // it, so B cannot compute the MAC keyed with A's secret.
    let dev_b = provision(&ca);
    let mut b = Hostile::on_topics_of(&world, &dev_b, Some(&h.agent));
    let mut copied = b.login.clone();
    copied.ek_public = login.ek_public.clone();
    copied.ek_cert = login.ek_cert.clone();
    copied.ek_chain = login.ek_chain.clone();
    let Downlink::Challenge(challenge) = b.send_login(&copied) else {
        panic!("the copied certificate should be challenged");
    };
    let opened = b.answer(&challenge);
    assert!(
        opened.is_err(),
        "B's TPM opened a credential made for A's EK"
    );
    // The best B can send is a MAC keyed with a guess.
    let guess = Answer {
        session: challenge.session,
        mac: sign::answer_mac(
            &[0x42; 32],
            &b.transcript(),
            &challenge.session,
            &challenge.node,
        )
        .unwrap(),
        pop: None,
    };
    assert_eq!(
        rejected(&b.send_answer(&challenge.node, &guess)),
        RejectCode::ChallengeFailed
    );
    world
        .server
        .wait_for_log(
            "challenge response secret does not match",
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(world.metric(&failed("challenge_failed")) >= 1.0);
    assert!(world.metric(&failed("unknown_session")) >= 1.0);
    assert_eq!(world.metric(&failed("no_matching_policy")), 1.0);
    let _ = Method::TpmEk;
}

#[test]
fn hot_reload_by_config_set_and_invalid_document_keeps_the_old_one() {
    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let hash = public_hash(&dev, EkKind::Rsa2048);
    let world = World::start(
        &policy(None, &[&"2".repeat(64)]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let spec = world.agent_spec(&dev, "reload", false);

    // Policy A: the device is not listed.
    let exit = world.run_once(&spec, "reload-a");
    assert_eq!(exit.code(), Some(1), "{}", exit.log);

    // An invalid document is refused by ekattestctl and by the server; A stays.
    let bad = world.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: p\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n            \
         caCerts: |\n              not a certificate\n",
    )
    .unwrap();
    let out = Command::new(bin("ekattestctl"))
        .args(["config", "set", "cluster", "--id", CLUSTER, "--broker"])
        .arg(world.broker.url())
        .arg(&bad)
        .arg("--sign-key")
        .arg(&world.sign_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("caCerts: could not parse any PEM certificates"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same invalid document written to the watched policy file: the server keeps A.
    let policy_a = read(&world.policy_file);
    std::fs::copy(&bad, &world.policy_file).unwrap();
    world
        .server
        .wait_for_log("caCerts: could not parse any PEM certificates", WAIT)
        .unwrap();
    world
        .server
        .wait_for_msg("Previous policy document stays in force", None, WAIT)
        .unwrap();
    std::fs::write(&world.policy_file, &policy_a).unwrap();
    // A topic document must be signed after the policy files last changed (same second:
    // the files win).
    std::thread::sleep(Duration::from_millis(1500));

    // Policy B signed and published on the cluster's config topic: the device is listed.
    let good = world.dir.path().join("good.yaml");
    std::fs::write(&good, policy(None, &[&hash])).unwrap();
    let out = Command::new(bin("ekattestctl"))
        .args(["config", "set", "cluster", "--id", CLUSTER, "--broker"])
        .arg(world.broker.url())
        .arg(&good)
        .arg("--sign-key")
        .arg(&world.sign_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(read(&good).as_bytes()))
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let applied = world
            .server
            .log_json()
            .into_iter()
            .any(|v| v["msg"] == "Policy document in force" && v["sha256"] == digest.as_str());
        if applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never in force:\n{}",
            world.server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = world.run_once(&spec, "reload-b");
    assert!(
        exit.success(),
        "{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );
    assert_eq!(world.metric(SUCCESS), 1.0);
}

#[test]
fn wrong_trust_bundle_on_the_agent_is_counted_on_the_agent_side() {
    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let hash = public_hash(&dev, EkKind::Rsa2048);
    let world = World::start(
        &policy(None, &[&hash]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let mut spec = world.agent_spec(&dev, "wrong-bundle", false);
    let other = world.dir.path().join("other-td");
    std::fs::create_dir_all(&other).unwrap();
    spec.trust_bundle = common::svid_ca(&other, "other.test").0;
    let prom = world.dir.path().join("wrong-bundle.prom");
    spec.metrics_textfile = Some(prom.clone());
    spec.response_timeout = Some(Duration::from_secs(3));
    spec.extra_args = vec!["--timeout".into(), "8s".into()];
    let exit = world.run_once(&spec, "wrong-bundle");
    assert_eq!(exit.code(), Some(1), "{}", exit.log);
    // The agent refuses the server's signer (it does not chain to its bundle) and writes
    // nothing; it counts the failed attempts, the server counts no success.
    assert!(
        exit.log.contains("not issued by a CA of the trust bundle"),
        "{}",
        exit.log
    );
    assert!(!spec.data_dir.join("svid.pem").exists());
    let text = std::fs::read_to_string(&prom).unwrap();
    let agent_failed = ekattest_fleet::daemons::metric_value(
        &text,
        "attestation_agent_proof{attestor_type=\"tpm_ek\",outcome=\"failed\"}",
    )
    .unwrap();
    assert!(agent_failed >= 1.0, "{text}");
    assert_eq!(world.metric(SUCCESS), 0.0, "{}", world.server.log());
}

#[test]
fn sighup_reloads_the_policy_files_at_once_and_keeps_the_server_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = common::svid_ca(dir.path(), TRUST_DOMAIN);
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy(None, &[&"2".repeat(64)])).unwrap();
    let broker = Broker::start(&BrokerOptions::default()).unwrap();
    let mut spec = ServerSpec::new(
        broker.url(),
        CLUSTER,
        "node-1",
        TRUST_DOMAIN,
        &ca_cert,
        &ca_key,
    );
    spec.policy_files = vec![policy_file.clone()];
    // Polling alone would take an hour: whatever applies the edit below is the SIGHUP.
    spec.reload_interval = Some(Duration::from_secs(3600));
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let mut server = ServerProcess::start(&bin("ekattest-server"), &spec, &server_dir).unwrap();
    server
        .wait_for_msg("ekattest-server started", None, WAIT)
        .unwrap();

    let edited = policy(None, &[&"3".repeat(64)]);
    std::fs::write(&policy_file, &edited).unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(edited.as_bytes()))
    };
    let in_force = |server: &ServerProcess| {
        server
            .log_json()
            .into_iter()
            .any(|v| v["msg"] == "Policy document in force" && v["sha256"] == digest.as_str())
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !in_force(&server),
        "applied without SIGHUP:\n{}",
        server.log()
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let line = server
        .wait_for_msg(
            "SIGHUP: policy files reloaded",
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(line["sha256"], digest.as_str(), "{}", server.log());
    assert!(in_force(&server), "{}", server.log());
    assert!(server.is_running(), "{}", server.log());

    // An unchanged file: SIGHUP still reloads, logs, and the server keeps running.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .log_json()
        .iter()
        .filter(|v| v["msg"] == "SIGHUP: policy files reloaded")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.is_running(), "{}", server.log());
    let status = server.stop().unwrap();
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[test]
fn agent_waits_for_the_broker_and_survives_a_server_restart() {
    let ca = Ca::create().unwrap();
    let mut world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let dev = provision(&ca);
    let spec = world.agent_spec(&dev, "outage", false);

    // Broker down when the agent starts; up 3 s later.
    world.broker.stop();
    let run_dir = world.dir.path().join("outage-run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut agent = AgentProcess::spawn(&bin("ekattest-agent"), &spec, &run_dir, true).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.is_running(),
        "the agent gave up while the broker was down"
    );
    world.broker.start_again().unwrap();
    let exit = agent.wait(WAIT).unwrap();
    assert!(
        exit.success(),
        "{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );

    // Broker restarted under a running server: the server reconnects and subscribes again,
    // so the next device attests without anyone touching the server. /readyz follows the
    // connection (a load balancer or Kubernetes takes the node out meanwhile); /healthz
    // stays 200.
    assert_eq!(world.server.get("/readyz").unwrap().0, 200);
    std::fs::remove_file(spec.data_dir.join("svid.pem")).unwrap();
    world.broker.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = world.server.get("/readyz").unwrap();
        if status == 503 {
            assert_eq!(body, "not ready: not connected to the broker\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} without a broker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(world.metric("attestation_broker_connected"), 0.0);
    assert_eq!(
        world.server.get("/healthz").unwrap(),
        (200, "ok\n".to_owned())
    );
    world.broker.start_again().unwrap();
    let exit = world.run_once(&spec, "after-broker-restart");
    assert!(
        exit.success(),
        "{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );
    assert!(
        world.server.log().contains("broker connection lost"),
        "the server never noticed the broker restart:\n{}",
        world.server.log()
    );

    // Server killed as soon as it has seen the Login, restarted 1 s later: the agent times
    // out, logs in again and lands on the new process.
    std::fs::remove_file(spec.data_dir.join("svid.pem")).unwrap();
    let run_dir = world.dir.path().join("restart-run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let before = world
        .server
        .log_json()
        .iter()
        .filter(|v| v["msg"] == "Login started with multi-attestation support")
        .count();
    let mut agent = AgentProcess::spawn(&bin("ekattest-agent"), &spec, &run_dir, true).unwrap();
    let deadline = Instant::now() + WAIT;
    while world
        .server
        .log_json()
        .iter()
        .filter(|v| v["msg"] == "Login started with multi-attestation support")
        .count()
        == before
    {
        assert!(
            Instant::now() < deadline,
            "no second login:\n{}",
            world.server.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    world.server.kill();
    std::thread::sleep(Duration::from_secs(1));
    world.server.start_again().unwrap();
    let exit = agent.wait(WAIT).unwrap();
    assert!(
        exit.success(),
        "{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );
    assert!(spec.data_dir.join("svid.pem").is_file());
}

/// Runs `openssl` with the tpm2 provider reaching `tcti`; returns the output. `dgst` prefers
/// the provider's implementation (`-propquery ?provider=tpm2`), as the README's workload
/// example does: otherwise OpenSSL hands the key to the default provider, which has no
/// private key to sign with.
fn openssl_tpm2(tcti: &str, args: &[&str]) -> std::process::Output {
    let (command, rest) = args.split_first().expect("an openssl command");
    let mut cmd = Command::new("openssl");
    cmd.arg(command)
        .args(["-provider", "tpm2", "-provider", "default"]);
    if *command == "dgst" {
        cmd.args(["-propquery", "?provider=tpm2"]);
    }
    cmd.args(rest)
        .env("TPM2OPENSSL_TCTI", tcti)
        .output()
        .expect("openssl is required")
}

/// `svid-key: tpm` (issue 14): the agent's key lives in the TPM. The SVID chains to the CA and
/// certifies the TPM key; OpenSSL's tpm2 provider (Debian's tpm2-openssl, an independent
/// implementation of the TSS2 key format) signs with `svid.key` on that swtpm and the
/// signature verifies with the SVID's public key; on another swtpm the same file is useless.
#[test]
fn tpm_resident_svid_key_signs_through_tpm2_openssl_and_only_on_its_tpm() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so").is_file()
            || Path::new("/usr/lib/aarch64-linux-gnu/ossl-modules/tpm2.so").is_file(),
        "OpenSSL's tpm2 provider is required: apt-get install tpm2-openssl"
    );
    let ca = Ca::create().unwrap();
    let world = World::start(
        &policy(Some(&ca), &[]),
        &Setup {
            tls_acl: false,
            session_ttl: None,
        },
    );
    let dev = provision(&ca);
    let hash = public_hash(&dev, EkKind::Rsa2048);
    let mut spec = world.agent_spec(&dev, "tpmkey", false);
    spec.extra_args = vec!["--svid-key".into(), "tpm".into()];
    let exit = world.run_once(&spec, "tpmkey");
    assert!(
        exit.success(),
        "agent failed:\n{}\nserver:\n{}",
        exit.log,
        world.server.log()
    );
    let svid = spec.data_dir.join("svid.pem");
    let key = spec.data_dir.join("svid.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----"),
        "svid.key is not a TSS2 key:\n{pem}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "svid.key mode");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&world.ca_cert)
        .arg(&svid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&svid)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("URI:{spiffe_id}")));

    // The provider reads the public key out of the TSS2 file: it is the SVID's.
    let cert_pub = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&svid)
        .output()
        .unwrap();
    let key_str = key.to_str().unwrap();
    let key_pub = openssl_tpm2(&dev.tcti(), &["pkey", "-pubout", "-in", key_str]);
    assert!(
        key_pub.status.success(),
        "tpm2 provider cannot read svid.key: {}",
        String::from_utf8_lossy(&key_pub.stderr)
    );
    assert_eq!(
        key_pub.stdout, cert_pub.stdout,
        "svid.key is not the SVID's key"
    );

    // A workload signs through the TPM; the signature verifies with the SVID's key.
    let dir = world.dir.path();
    let data = dir.join("workload-data");
    std::fs::write(&data, b"a TLS handshake transcript, say").unwrap();
    let pub_pem = dir.join("svid-pub.pem");
    std::fs::write(&pub_pem, &cert_pub.stdout).unwrap();
    // `openssl dgst -sha256 -sign svid.key` on the TPM `tcti` names, into `out`.
    let sign_on = |tcti: &str, out: &Path| {
        openssl_tpm2(
            tcti,
            &[
                "dgst",
                "-sha256",
                "-sign",
                key_str,
                "-out",
                out.to_str().unwrap(),
                data.to_str().unwrap(),
            ],
        )
    };
    let sig = dir.join("workload.sig");
    let signed = sign_on(&dev.tcti(), &sig);
    assert!(
        signed.status.success(),
        "openssl could not sign with the TPM key: {}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let verified = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pub_pem)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "signature does not verify with the SVID key: {}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // The same file on another TPM: the load fails (the key is wrapped by this TPM's
    // storage primary), so nothing is signed.
    let other = provision(&ca);
    let stolen = dir.join("stolen.sig");
    let elsewhere = sign_on(&other.tcti(), &stolen);
    assert!(
        !elsewhere.status.success(),
        "another swtpm signed with the key: {}",
        String::from_utf8_lossy(&elsewhere.stdout)
    );
    assert!(
        std::fs::metadata(&stolen).map_or(true, |m| m.len() == 0),
        "a signature was written on another TPM"
    );
    // The original TPM still signs (the failure above was the other TPM's, not the file's).
    let again = openssl_tpm2(&dev.tcti(), &["pkey", "-pubout", "-in", key_str]);
    assert!(again.status.success());
    assert_eq!(world.metric(SUCCESS), 1.0);
}

/// `ekattestctl config set|get|clear` through the shipped ACL over TLS (issue 16, item 5).
/// As a user the ACL lets read but not write the config topic (the server's), `set` gets a
/// PUBACK from mosquitto while the document is dropped: it must say so and exit 1. As
/// `ekattest-admin` it publishes, reads the document back and prints the sha256 the server
/// then logs; `get` prints that document; `clear` removes it and the server logs the clear,
/// keeping the document in force.
#[test]
fn config_set_reads_back_get_prints_and_clear_removes_through_the_acl() {
    let world = World::start(
        &policy(None, &[&"2".repeat(64)]),
        &Setup {
            tls_acl: true,
            session_ttl: None,
        },
    );
    let tls_ca = world.broker.ca_pem().unwrap();
    let url = world.broker.tls_url().unwrap();
    let ctl = |user: &str, args: &[&str]| {
        let (name, password_file) = world.broker.user(user).unwrap();
        let (sub, rest) = args.split_first().unwrap();
        Command::new(bin("ekattestctl"))
            .args(["config", sub, "cluster", "--id", CLUSTER, "--broker", &url])
            .arg("--tls-ca")
            .arg(&tls_ca)
            .args(["--username", &name, "--password-file"])
            .arg(&password_file)
            .args(rest)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let doc = world.dir.path().join("doc.yaml");
    std::fs::write(&doc, policy(None, &[&"3".repeat(64)])).unwrap();
    let doc_str = doc.to_str().unwrap();
    let key = world.sign_key.to_str().unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(read(&doc).as_bytes()))
    };

    // Nothing retained yet.
    let got = ctl("ekattest-server", &["get"]);
    assert_eq!(got.status.code(), Some(1), "{}", text(&got));
    assert!(
        text(&got).contains("no document is retained"),
        "{}",
        text(&got)
    );

    // The server's user may read the topic but not write it: acknowledged, dropped, refused.
    let denied = ctl("ekattest-server", &["set", doc_str, "--sign-key", key]);
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied));
    assert!(
        text(&denied).contains("its ACL does not let this user write"),
        "{}",
        text(&denied)
    );
    assert!(!text(&denied).contains("read back"), "{}", text(&denied));

    // The admin publishes; the output names the hash the server logs. (A topic document
    // must be signed in a later second than the policy files' last change.)
    std::thread::sleep(Duration::from_millis(1100));
    let set = ctl("ekattest-admin", &["set", doc_str, "--sign-key", key]);
    assert!(set.status.success(), "{}", text(&set));
    assert!(
        text(&set).contains(&format!("sha256 {digest}")),
        "{}",
        text(&set)
    );
    world
        .server
        .wait_for_log(&digest, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", world.server.log()));

    // get prints it, and --out keeps the signed bytes, which set republishes unchanged.
    let out = world.dir.path().join("retained.signed");
    let got = ctl("ekattest-admin", &["get", "--out", out.to_str().unwrap()]);
    assert!(got.status.success(), "{}", text(&got));
    let shown = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(shown.contains(&format!("# sha256: {digest}")), "{shown}");
    assert!(shown.contains(&format!("# cluster: {CLUSTER}")), "{shown}");
    assert!(shown.ends_with(&read(&doc)), "{shown}");
    let again = ctl("ekattest-admin", &["set", out.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));

    // The server's user cannot clear it either; the admin can, and the server keeps it.
    let denied = ctl("ekattest-server", &["clear"]);
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied));
    assert!(
        text(&denied).contains("still retained"),
        "{}",
        text(&denied)
    );
    let cleared = ctl("ekattest-admin", &["clear"]);
    assert!(cleared.status.success(), "{}", text(&cleared));
    world
        .server
        .wait_for_msg(
            "Config topic cleared: the policy document in force stays until another document \
             arrives or the server restarts",
            None,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", world.server.log()));
    let got = ctl("ekattest-admin", &["get"]);
    assert_eq!(got.status.code(), Some(1), "{}", text(&got));

    // mqtt:// to the TLS port: the error suggests mqtts:// (issue 16, item 6).
    let plain_to_tls = format!("mqtt://127.0.0.1:{}", world.broker.tls_port().unwrap());
    let out = Command::new(bin("ekattestctl"))
        .args([
            "config",
            "get",
            "cluster",
            "--id",
            CLUSTER,
            "--broker",
            &plain_to_tls,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("use mqtts://"), "{}", text(&out));
}

/// The ```sh blocks of the README's quickstart section, in order.
fn quickstart_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("## Quickstart")
        .expect("README has a Quickstart section");
    let section = &readme[start..];
    // Steps 0 to 5: up to the next heading of any level below the section's own.
    let end = section[3..]
        .find("\n## ")
        .into_iter()
        .chain(section[3..].find("\n### "))
        .min()
        .map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("an unclosed ```sh block");
        blocks.push(body[..close].to_owned());
        rest = &body[close + 3..];
    }
    blocks
}

/// The README's quickstart, steps 0 to 5, run as written (issue 16, item 4), as root in a
/// private mount namespace whose `/etc`, `/usr/bin` and `/var/lib` are overlays on a
/// temporary folder, so the host is left as it was. What the test supplies is what the
/// README asks the operator for: the values of the first block (its `export` lines are
/// replaced), a broker with the shipped ACL and TLS (step 1), the EK roots file, and the
/// device's copy of the server's `ca.pem`. `cargo build` is skipped (`target/release` is the
/// test's own binaries) and `systemctl` is replaced by starting the unit's `ExecStart`: the
/// test machine has no systemd.
#[test]
fn the_readme_quickstart_runs_verbatim() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the quickstart installs into /usr/bin and /etc: run the tests as root (CI does)"
    );
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = quickstart_blocks(&readme);
    assert_eq!(
        blocks.len(),
        4,
        "steps 0, 2, 3 and 5 have commands: {blocks:#?}"
    );

    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let broker = Broker::start(&BrokerOptions {
        tls: true,
        acl: true,
    })
    .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The checkout: deploy/ and target/release/ (this test's binaries).
    std::os::unix::fs::symlink(repo.join("deploy"), w.join("deploy")).unwrap();
    std::fs::create_dir(w.join("target")).unwrap();
    std::os::unix::fs::symlink(
        common::bin_dir_with(&["ekattest-server", "ekattestctl", "ekattest-agent"]),
        w.join("target/release"),
    )
    .unwrap();
    // Step 1's results, and the EK roots.
    std::fs::copy(broker.ca_pem().unwrap(), w.join("broker-ca.pem")).unwrap();
    for (user, file) in [
        ("ekattest-server", "server-broker.password"),
        ("ekattest-admin", "admin.password"),
    ] {
        std::fs::copy(broker.user(user).unwrap().1, w.join(file)).unwrap();
    }
    let roots = format!(
        "{}{}",
        read(ca.root_cert_pem()),
        read(ca.intermediate_cert_pem())
    );
    std::fs::write(w.join("ek-roots.pem"), roots).unwrap();
    std::fs::create_dir(w.join("home")).unwrap();

    // Block 0 starts with the values; the rest is verbatim but for cargo and systemctl.
    let values = format!(
        "export BROKER={} CLUSTER=c-quick TRUST_DOMAIN=quick.test EK_ROOTS={} TPM={}\n",
        broker.tls_url().unwrap(),
        w.join("ek-roots.pem").display(),
        dev.spec()
    );
    // The server started in place of `systemctl` is stopped whatever happens.
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    script += &format!(
        "cd {}\nexport HOME={}\n",
        w.display(),
        w.join("home").display()
    );
    for (i, block) in blocks.iter().enumerate() {
        let mut lines = block.lines().peekable();
        if i == 0 {
            // The `export ...` line and its continuation.
            let mut first = lines.next().unwrap().to_owned();
            assert!(first.starts_with("export BROKER="), "{first}");
            while first.ends_with('\\') {
                first = lines.next().unwrap().to_owned();
            }
            script += &values;
        }
        for line in lines {
            if line.starts_with("cargo ") {
                continue;
            }
            if line.starts_with("systemctl enable --now ekattest-server") {
                script += "ekattest-server --config /etc/ekattest/server.yaml >server.log 2>&1 &\n\
                           for _ in $(seq 300); do grep -q 'connected to broker' server.log && break; sleep 0.1; done\n\
                           cp /etc/ekattest/ca.pem ca.pem\n";
                continue;
            }
            if line.starts_with("systemctl ") {
                continue;
            }
            script += line;
            script += "\n";
        }
    }

    let ov = w.join("overlay");
    let mut wrapper = String::from("set -e\n");
    for dir in ["/etc", "/usr/bin", "/var/lib"] {
        let name = dir.trim_start_matches('/').replace('/', "-");
        let (up, wk) = (ov.join(&name).join("up"), ov.join(&name).join("work"));
        std::fs::create_dir_all(&up).unwrap();
        std::fs::create_dir_all(&wk).unwrap();
        wrapper += &format!(
            "mount -t overlay overlay -o lowerdir={dir},upperdir={},workdir={} {dir}\n",
            up.display(),
            wk.display()
        );
    }
    std::fs::write(w.join("quickstart.sh"), &script).unwrap();
    wrapper += &format!("exec bash {}\n", w.join("quickstart.sh").display());
    let out = Command::new("unshare")
        .args(["--mount", "bash", "-c", &wrapper])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = std::fs::read_to_string(w.join("server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the quickstart failed ({}):\nscript:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{server_log}",
        out.status
    );
    // What the README promises: the check passed, the device attested and wrote its files,
    // the server logged the seed's lines, and the policy was published and read back.
    assert!(stdout.contains("configuration valid"), "{stdout}");
    for file in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(stdout.contains(file), "`ls /var/lib/ekattest`: {stdout}");
    }
    let data = ov.join("var-lib/up/ekattest");
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ov.join("etc/up/ekattest/ca.pem"))
        .arg("-untrusted")
        .arg(data.join("svid.pem"))
        .arg(data.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    for msg in [
        "Login started with multi-attestation support",
        "Authorization received and verified",
        "Connected to agent",
    ] {
        assert!(server_log.contains(msg), "{msg}:\n{server_log}");
    }
    assert!(stdout.contains("read back"), "{stdout}");
    assert!(stdout.contains("# cluster: c-quick"), "{stdout}");
    // Everything went to the overlays, nothing to the host.
    assert!(ov.join("usr-bin/up/ekattest-server").is_file());
    assert!(
        ov.join("etc/up/systemd/system/ekattest-server.service")
            .is_file()
    );
}
