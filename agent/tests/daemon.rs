//! `ekattest-agent run` as a process (feature `it`): a real swtpm device, a real mosquitto
//! (started by the fleet harness on free ports) and a fake server in the test, built on
//! rumqttc, that answers the agent's Login with crafted Challenges and Results. Credentials
//! come from tpm2_makecredential, SVIDs from the openssl CLI, Result signatures from p256:
//! none of them from the agent's code.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail loudly with the missing tool or the unexpected message"
)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ekattest_agent::tpm::activate::Credential;
use ekattest_fleet::broker::{Broker, BrokerOptions};
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::FRAME_MAX;
use ekattest_protocol::msg::{
    Accepted, Answer, Challenge, Downlink, Login, Method, Outcome, Rejected, SessionId, Uplink,
};
use ekattest_protocol::public::Public;
use ekattest_protocol::{decode, encode, sign};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::pem::LineEnding;
use p256::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _};
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

const CLUSTER: &str = "c-test";
const NODE: &str = "node-1";

fn swtpm_ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create().unwrap_or_else(|e| panic!("cannot create the swtpm CA: {e}")))
}

fn device() -> Device {
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    Device::provision(swtpm_ca(), &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

fn broker(opts: BrokerOptions) -> Broker {
    Broker::start(&opts).unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"))
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is required and did not run: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's trust-domain CA: a p256 key and an openssl self-signed certificate.
struct TdCa {
    dir: PathBuf,
    key: SigningKey,
}

impl TdCa {
    fn new(dir: &Path) -> Self {
        let mut seed = [0x5au8; 32];
        seed[0] = 1;
        let key = SigningKey::from_slice(&seed).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join("td.key"), pem.as_bytes()).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "td.key",
                "-subj",
                "/CN=td-ca",
                "-days",
                "2",
                "-out",
                "td.pem",
            ],
        );
        Self {
            dir: dir.to_owned(),
            key,
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("td.pem")
    }

    fn issue(&self, spki: &[u8], spiffe_id: &str) -> Vec<u8> {
        let pem = p256::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, spki).unwrap();
        std::fs::write(self.dir.join("svid-pub.pem"), pem).unwrap();
        std::fs::write(
            self.dir.join("svid.cnf"),
            format!("subjectAltName=critical,URI:{spiffe_id}\n"),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-new",
                "-subj",
                "/O=ekattest",
                "-force_pubkey",
                "svid-pub.pem",
                "-CA",
                "td.pem",
                "-CAkey",
                "td.key",
                "-days",
                "1",
                "-extfile",
                "svid.cnf",
                "-outform",
                "DER",
                "-out",
                "svid.der",
            ],
        );
        std::fs::read(self.dir.join("svid.der")).unwrap()
    }

    fn accepted(&self, agent: &str, session: &SessionId, spki: &[u8], id: &str) -> Accepted {
        let mut a = Accepted {
            spiffe_id: heapless::String::try_from(id).unwrap(),
            attributes: heapless::Vec::new(),
            svid: heapless::Vec::from_slice(&self.issue(spki, id)).unwrap(),
            signature: heapless::Vec::new(),
        };
        let msg = sign::result_signed_bytes(agent, session, &a).unwrap();
        let sig: Signature = self.key.sign(&msg);
        a.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
        a
    }
}

/// The fake server: subscribed to every Login of the cluster and to node-1's answers.
struct FakeServer {
    client: Client,
    conn: Connection,
    /// Publishes received while waiting for a PUBACK.
    queued: std::collections::VecDeque<rumqttc::Publish>,
}

impl FakeServer {
    fn connect(port: u16) -> Self {
        let mut o = MqttOptions::new("fake-server", "127.0.0.1", port);
        o.set_max_packet_size(3 * FRAME_MAX, 3 * FRAME_MAX);
        let (client, mut conn) = Client::new(o, 16);
        client
            .subscribe(
                format!("ekattest/v1/{CLUSTER}/agents/+/login"),
                QoS::AtLeastOnce,
            )
            .unwrap();
        client
            .subscribe(
                format!("ekattest/v1/{CLUSTER}/servers/{NODE}/answer/+"),
                QoS::AtLeastOnce,
            )
            .unwrap();
        let mut acks = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while acks < 2 {
            assert!(Instant::now() < until, "fake server: no SUBACKs");
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) =
                conn.recv_timeout(Duration::from_millis(200))
            {
                acks += 1;
            }
        }
        Self {
            client,
            conn,
            queued: std::collections::VecDeque::new(),
        }
    }

    /// The next Login or Answer: (agent id from the topic, message).
    fn next(&mut self, within: Duration) -> (String, Uplink) {
        let until = Instant::now() + within;
        loop {
            assert!(
                Instant::now() < until,
                "fake server: nothing within {within:?}"
            );
            let p = match self.queued.pop_front() {
                Some(p) => p,
                None => match self.conn.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => p,
                    _ => continue,
                },
            };
            let agent = p
                .topic
                .rsplit('/')
                .nth(usize::from(p.topic.ends_with("/login")));
            return (
                agent.unwrap().to_owned(),
                decode::<Uplink>(&p.payload).unwrap(),
            );
        }
    }

    fn login(&mut self, within: Duration) -> (String, Login) {
        match self.next(within) {
            (agent, Uplink::Login(l)) => (agent, l),
            other => panic!("expected a Login, got {other:?}"),
        }
    }

    fn answer(&mut self, within: Duration) -> (String, Answer) {
        match self.next(within) {
            (agent, Uplink::Answer(a)) => (agent, a),
            other => panic!("expected an Answer, got {other:?}"),
        }
    }

    fn send_raw(&mut self, agent: &str, payload: Vec<u8>) {
        let topic = format!("ekattest/v1/{CLUSTER}/agents/{agent}/down");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
        // Drive the connection until the PUBACK so the message is out.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match self.conn.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => self.queued.push_back(p),
                _ => {}
            }
        }
        panic!("fake server: publish not acknowledged");
    }

    fn send(&mut self, agent: &str, msg: &Downlink) {
        let mut buf = vec![0u8; FRAME_MAX];
        let frame = encode(msg, &mut buf).unwrap().to_vec();
        self.send_raw(agent, frame);
    }
}

/// A Challenge for `login`'s EK and AK carrying `secret`, made by tpm2_makecredential.
fn challenge(login: &Login, secret: &[u8], session: SessionId) -> Challenge {
    let ak_name = Public::decode(&login.ak_public).unwrap().name().unwrap();
    let cred = ekattest_fleet::tpm2_makecredential(&login.ek_public, secret, &ak_name).unwrap();
    let cred = Credential::decode_tpm2_tools(&cred).unwrap();
    let tpm2b = |b: &[u8]| {
        let mut v = u16::try_from(b.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    };
    Challenge {
        session,
        node: heapless::String::try_from(NODE).unwrap(),
        credential_blob: heapless::Vec::from_slice(&tpm2b(&cred.id_object)).unwrap(),
        encrypted_secret: heapless::Vec::from_slice(&tpm2b(&cred.secret)).unwrap(),
        expires_in: 300,
    }
}

/// The agent process, killed on drop; stderr goes to a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, config: &str, args: &[&str]) -> Self {
        let cfg = dir.join("agent.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ekattest-agent"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ekattest-agent: {e}"));
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "agent still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_log(&self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < until,
                "{needle:?} not logged within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(broker_port: u16, device: &Device, ca: &TdCa, dir: &Path, extra: &str) -> String {
    format!(
        "cluster-id: {CLUSTER}
disable-kubernetes-attestation: true
agent-attestors:
- type: tpm_ek
broker: mqtt://127.0.0.1:{broker_port}
tpm: {}
trust-bundle: {}
data-dir: {}
log-level: debug
metrics-textfile: {}
retry: {{initial: 200ms, max: 1s}}
{extra}",
        device.spec(),
        ca.bundle().display(),
        dir.join("data").display(),
        dir.join("agent.prom").display(),
    )
}

fn rejected(code: RejectCode) -> Downlink {
    Downlink::Result(Outcome::Rejected(Rejected::new(code)))
}

#[test]
fn once_rejected_exits_1_with_the_seed_string() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let mut agent = Agent::start(dir.path(), &cfg, &["--once"]);

    let (id, login) = server.login(Duration::from_secs(60));
    assert!(id.starts_with("ek-") && id.len() == 35, "{id}");
    assert_eq!(login.methods.as_slice(), [Method::TpmEk]);
    let spki = login
        .svid_key
        .as_ref()
        .expect("the Login carries an SVID key");
    assert_eq!(spki.len(), 91);
    VerifyingKey::from_public_key_der(spki).unwrap();
    assert!(login.ek_cert.is_some());
    server.send(&id, &rejected(RejectCode::EkNotTrusted));

    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("EK did not pass any configured validation check"),
        "{log}"
    );
    assert!(
        log.contains("Sending Login, attestors: [\"tpm_ek\"]"),
        "{log}"
    );
    assert!(!dir.path().join("data/svid.pem").exists());
    let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
    assert!(prom.contains("outcome=\"failed\"} 1"), "{prom}");
    assert!(prom.contains("outcome=\"success\"} 0"), "{prom}");
}

#[test]
fn broker_down_at_start_then_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let mut broker = broker(BrokerOptions::default());
    broker.stop();
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        "response-timeout: 3s\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg, &["--once", "--timeout", "90s"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());
    broker.start_again().unwrap();
    let mut server = FakeServer::connect(broker.port());
    // A Login sent before the fake server subscribed is lost; the response timeout (3 s)
    // makes the agent log in again.
    let (id, _) = server.login(Duration::from_secs(30));
    server.send(&id, &rejected(RejectCode::NoMatchingPolicy));
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.matches("reconnecting to the broker").count() >= 2,
        "{log}"
    );
    assert!(log.contains("connection to broker 127.0.0.1"), "{log}");
    assert!(
        log.contains("no cluster policy authorizes the provided attestors"),
        "{log}"
    );
}

#[test]
fn hostile_frames_then_a_verified_identity_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let mut agent = Agent::start(dir.path(), &cfg, &[]);
    let data = dir.path().join("data");
    let spiffe = "spiffe://td.example/device/1";

    // Round 1: garbage, an unexpected Result, then a real Challenge and a forged Result.
    let (id, login) = server.login(Duration::from_secs(60));
    server.send_raw(&id, b"\x01garbage".to_vec());
    server.send_raw(&id, Vec::new());
    let spki = login.svid_key.clone().unwrap();
    let early = ca.accepted(&id, &SessionId([1; 16]), &spki, spiffe);
    server.send(&id, &Downlink::Result(Outcome::Accepted(early)));
    let secret: Vec<u8> = (0u8..32).collect();
    let session = SessionId([2; 16]);
    server.send(
        &id,
        &Downlink::Challenge(challenge(&login, &secret, session)),
    );
    let (from, answer) = server.answer(Duration::from_secs(60));
    assert_eq!(from, id);
    assert_eq!(answer.session, session);
    assert_eq!(answer.secret.as_slice(), secret.as_slice());
    let pop = Signature::from_der(answer.pop.as_ref().expect("the Answer carries a pop")).unwrap();
    let key = VerifyingKey::from_public_key_der(&spki).unwrap();
    key.verify(&sign::pop_signed_bytes(&session, &secret).unwrap(), &pop)
        .expect("pop verifies with the Login's SVID key");
    let mut forged = ca.accepted(&id, &session, &spki, spiffe);
    forged.signature[10] ^= 1;
    server.send(&id, &Downlink::Result(Outcome::Accepted(forged)));

    // Round 2 after backoff: a new key, and this time a good Result.
    let (id2, login2) = server.login(Duration::from_secs(30));
    assert_eq!(id2, id);
    assert!(!data.join("svid.pem").exists() && !data.join("svid.key").exists());
    let spki2 = login2.svid_key.clone().unwrap();
    assert_ne!(spki2, spki, "a new SVID key per attestation");
    let session2 = SessionId([3; 16]);
    server.send(
        &id,
        &Downlink::Challenge(challenge(&login2, &secret, session2)),
    );
    let (_, answer2) = server.answer(Duration::from_secs(60));
    assert_eq!(answer2.session, session2);
    let good = ca.accepted(&id, &session2, &spki2, spiffe);
    let svid = good.svid.to_vec();
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("Connected to server", Duration::from_secs(30));

    let log = agent.log();
    assert!(log.contains("that is not a Downlink"), "{log}");
    assert!(
        log.contains("ignoring an unexpected accepted message while waiting for a Challenge"),
        "{log}"
    );
    assert!(
        log.contains("not signed by a CA in the trust bundle"),
        "{log}"
    );
    assert!(log.contains(spiffe), "{log}");
    let key_mode = std::fs::metadata(data.join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(data.join("svid.pem")).unwrap();
    let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
    assert_eq!((label, der), ("CERTIFICATE", svid));
    assert_eq!(
        std::fs::read(data.join("bundle.pem")).unwrap(),
        std::fs::read(ca.bundle()).unwrap()
    );
    let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
    assert!(prom.contains("outcome=\"success\"} 1"), "{prom}");
    assert!(prom.contains("outcome=\"failed\"} 1"), "{prom}");
    assert!(
        prom.contains("attestation_agent_svid_expiry_seconds "),
        "{prom}"
    );

    // Still connected, then a clean stop.
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn acl_denied_topics_time_out_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions {
        tls: false,
        acl: true,
    });
    // The shipped ACL only grants ekattest/v1/...: another prefix is denied. mosquitto
    // 2.0.11 still acknowledges the MQTT 3.1.1 SUBSCRIBE and PUBLISH (it only drops them),
    // so the agent sees no Challenge and says which topics to check.
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        "topic-prefix: other/v1\nresponse-timeout: 2s\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg, &["--once", "--timeout", "5s"]);
    let status = agent.wait(Duration::from_secs(40));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no Challenge for the Login published on other/v1/c-test/agents/ek-"),
        "{log}\nbroker log:\n{}",
        broker.log()
    );
    assert!(log.contains("logging in again"), "{log}");
    assert!(broker.log().contains("Denied PUBLISH"), "{}", broker.log());
}

#[test]
fn tls_listener_with_the_broker_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions {
        tls: true,
        acl: false,
    });
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        &format!("tls: {{ca: {}}}\n", broker.ca_pem().unwrap().display()),
    );
    let url = broker.tls_url().unwrap();
    let mut agent = Agent::start(dir.path(), &cfg, &["--once", "--broker", &url]);
    let (id, _) = server.login(Duration::from_secs(60));
    server.send(&id, &rejected(RejectCode::EkNotTrusted));
    let status = agent.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", agent.log());

    // A broker CA that does not match: TLS fails, retried until the timeout.
    let other = dir.path().join("other.pem");
    std::fs::copy(ca.bundle(), &other).unwrap();
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        &format!("tls: {{ca: {}}}\n", other.display()),
    );
    let mut agent = Agent::start(
        dir.path(),
        &cfg,
        &["--once", "--broker", &url, "--timeout", "3s"],
    );
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("no attestation within 3s"), "{log}");
    assert!(log.contains("TLS"), "{log}");
}
