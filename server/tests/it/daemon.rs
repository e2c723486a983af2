//! End-to-end tests of the `ekattest-server` binary against a real mosquitto (started here on
//! a free loopback port) with a rumqttc client playing the agent, using the make-credential
//! known-answer vectors' EK and AK. No TPM: the full TPM round trip is the workspace's
//! end-to-end test. Needs `/usr/sbin/mosquitto` (fails loudly without it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ekattest_protocol::msg::{Downlink, Login, Method, Outcome, Uplink};
use ekattest_protocol::topic::Topics;
use ekattest_protocol::{RejectCode, decode, encode, heapless, limits};
use ekattest_server::config::signed::SigningKey;
use ekattest_server::svid::Authority;
use ekattest_testkit::testdata;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const CLUSTER: &str = "c-test";
const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto(dir: &Path) -> (Guard, u16) {
    assert!(
        Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: install mosquitto (apt-get install mosquitto)"
    );
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO}: {e}"));
    let guard = Guard(child);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, port)
}

fn policy(hash: &str) -> String {
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: fleet\n    \
         requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"{hash}\"]\n"
    )
}

const INVALID_POLICY: &str = "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
requiredAttestors:\n    - type: tpm_ek\n      config:\n        caCerts: \"not pem\"\n";

fn ek_hash() -> String {
    hex::encode(Sha256::digest(testdata::vector("rsa2048/ek.spki.der")))
}

/// The server process and its collected JSON log lines.
struct Server {
    child: Guard,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    metrics_port: u16,
}

impl Server {
    fn start(config: &Path, metrics_port: u16) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ekattest-server"))
            .arg("--config")
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        Self {
            child: Guard(child),
            logs,
            metrics_port,
        }
    }

    /// Waits for a log line matching `pred` at index >= `from`; returns its index.
    fn wait_log(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let logs = self.logs.lock().unwrap();
                if let Some(i) = logs.iter().skip(from).position(&pred) {
                    return from + i;
                }
            }
            if Instant::now() > deadline {
                let logs = self.logs.lock().unwrap();
                panic!("no log line {what}; logs:\n{logs:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_msg(&self, from: usize, msg: &str) -> usize {
        self.wait_log(from, msg, |v| v["msg"] == msg)
    }

    fn log(&self, i: usize) -> serde_json::Value {
        self.logs.lock().unwrap()[i].clone()
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        out
    }

    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }
}

/// A rumqttc client acting as an agent (or an operator publishing raw config).
struct Peer {
    client: Client,
    downlinks: Receiver<(String, Vec<u8>)>,
}

impl Peer {
    fn connect(port: u16, id: &str, subscribe: Option<&str>) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(o, 16);
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("test client: no CONNACK");
        if let Some(topic) = subscribe {
            client.subscribe(topic, QoS::AtLeastOnce).unwrap();
            ready_rx.recv_timeout(WAIT).expect("test client: no SUBACK");
        }
        Self {
            client,
            downlinks: rx,
        }
    }

    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
    }

    fn next_downlink(&self) -> (String, Downlink) {
        let (topic, frame) = self
            .downlinks
            .recv_timeout(WAIT)
            .expect("no downlink from the server");
        let msg = decode::<Downlink>(&frame).unwrap();
        (topic, msg)
    }
}

/// The agent id the server requires for the test EK (`agent-id-from-ek`).
fn ek_derived() -> String {
    let mut h = [0u8; 32];
    h.copy_from_slice(&Sha256::digest(testdata::vector("rsa2048/ek.spki.der")));
    ekattest_protocol::topic::default_agent_id(&h).to_string()
}

fn login_frame() -> Vec<u8> {
    let login = Login {
        methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
        ek_public: heapless::Vec::from_slice(&testdata::vector("rsa2048/ek.tpm2b_public")).unwrap(),
        ek_cert: None,
        ek_chain: heapless::Vec::new(),
        ak_public: heapless::Vec::from_slice(&testdata::vector("ak.tpm2b_public")).unwrap(),
        svid_key: None,
        key_certify: None,
        nonce: [0x4e; 16],
        signer_hint: None,
    };
    let mut buf = vec![0u8; limits::FRAME_MAX];
    encode(&Uplink::Login(login), &mut buf).unwrap().to_vec()
}

struct Setup {
    dir: tempfile::TempDir,
    _broker: Guard,
    port: u16,
    config: PathBuf,
    metrics_port: u16,
    /// The operator's policy signing key (its public half is in `policy-signers`).
    signer: SigningKey,
    /// `signer.key`: the same key as a 0600 PEM file, for `ekattestctl --sign-key`.
    signer_file: PathBuf,
}

/// Writes a password or key file with mode 0600 (the server refuses wider modes).
fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sets `path`'s modification time to `secs_ago` seconds before now.
fn age(path: &Path, secs_ago: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// The policy file (modified two minutes ago, so documents signed now are newer) and a
/// server config; with `policy_topic`, signed config-topic documents are accepted.
fn setup_with(policy_text: &str, policy_topic: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (broker, port) = start_mosquitto(dir.path());
    let (_, cert, key) = Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert).unwrap();
    write_private(&dir.path().join("ca.key"), key.as_bytes());
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy_text).unwrap();
    age(&policy_file, 120);
    let (signer, private_pem) = SigningKey::generate().unwrap();
    std::fs::write(dir.path().join("signer.pub"), signer.public_pem()).unwrap();
    let signer_file = dir.path().join("signer.key");
    write_private(&signer_file, private_pem.as_bytes());
    let metrics_port = free_port();
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "broker: mqtt://127.0.0.1:{port}\ncluster-id: {CLUSTER}\nnode-id: {NODE}\n\
             trust-domain: example.org\nca-cert: ca.pem\nca-key: ca.key\n\
             metrics-address: 127.0.0.1:{metrics_port}\npolicy-files: [policy.yaml]\n\
             reload-interval: 200ms\nsession-ttl: 30s\nlog-level: debug\nworkers: 2\n\
             login-burst: 10\n\
             policy-topic: {policy_topic}\npolicy-signers: [signer.pub]\nstate-dir: .\n"
        ),
    )
    .unwrap();
    Setup {
        dir,
        _broker: broker,
        port,
        config,
        metrics_port,
        signer,
        signer_file,
    }
}

fn setup(policy_text: &str) -> Setup {
    setup_with(policy_text, true)
}

fn rejected(msg: &Downlink) -> RejectCode {
    match msg {
        Downlink::Result(Outcome::Rejected(r)) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn login_rejections_metrics_and_hot_reload_over_mosquitto() {
    let s = setup(&policy(&"ab".repeat(32)));
    let server = Server::start(&s.config, s.metrics_port);
    let started = server.wait_msg(0, "ekattest-server started");
    let line = server.log(started);
    assert_eq!(line["nodeId"], NODE);
    assert_eq!(line["clusterId"], CLUSTER);
    assert_eq!(line["trustDomain"], "example.org");
    let first_doc = server.wait_msg(0, "Policy document in force");
    let initial_sha = hex::encode(Sha256::digest(policy(&"ab".repeat(32))));
    assert_eq!(server.log(first_doc)["sha256"], initial_sha.as_str());
    server.wait_msg(0, "subscribed");

    let topics = Topics::new("ekattest/v1", CLUSTER).unwrap();

    // 1. A garbage frame on an agent's login topic: Rejected{Malformed} to that agent.
    let junk = Peer::connect(
        s.port,
        "ek-junk",
        Some(topics.down("ek-junk").unwrap().as_str()),
    );
    junk.publish(
        topics.login("ek-junk").unwrap().as_str(),
        vec![ekattest_protocol::msg::VERSION, 0xff, 0xff, 0xff],
        false,
    );
    let (topic, msg) = junk.next_downlink();
    assert_eq!(topic, "ekattest/v1/c-test/agents/ek-junk/down");
    assert_eq!(rejected(&msg), RejectCode::Malformed);
    let i = server.wait_msg(0, "malformed message");
    assert_eq!(server.log(i)["agentId"], "ek-junk");
    assert_eq!(server.log(i)["level"], "warn");

    // 1b. A version 1 frame (an agent not yet upgraded): `unsupported protocol version`,
    // written in version 1 so the old agent can read it.
    let mut v1 = login_frame();
    v1[0] = 1;
    junk.publish(topics.login("ek-junk").unwrap().as_str(), v1, false);
    let (_, frame) = junk
        .downlinks
        .recv_timeout(WAIT)
        .expect("no reply to a v1 frame");
    assert_eq!(frame[0], 1, "the rejection is not in the agent's version");
    let mut current = frame.clone();
    current[0] = ekattest_protocol::msg::VERSION;
    assert_eq!(
        rejected(&decode::<Downlink>(&current).unwrap()),
        RejectCode::UnsupportedVersion
    );
    let i = server.wait_msg(0, "unsupported protocol version");
    assert_eq!(server.log(i)["agentId"], "ek-junk");

    // 1c. A Login under an agent id that is not the one derived from its EK (a captured
    // Login replayed under an invented id): refused before any EK check (agent-id-from-ek
    // is on by default).
    let invented = Peer::connect(s.port, "ek-a", Some(topics.down("ek-a").unwrap().as_str()));
    invented.publish(topics.login("ek-a").unwrap().as_str(), login_frame(), false);
    assert_eq!(
        rejected(&invented.next_downlink().1),
        RejectCode::AgentIdMismatch
    );
    server.wait_msg(0, "agent id is not the one derived from the EK");

    // 2. A Login whose EK hash is not in the allow-list: EkNotTrusted, seed log lines.
    let ek_a = {
        let mut h = [0u8; 32];
        h.copy_from_slice(&Sha256::digest(testdata::vector("rsa2048/ek.spki.der")));
        ekattest_protocol::topic::default_agent_id(&h).to_string()
    };
    let agent = Peer::connect(s.port, &ek_a, Some(topics.down(&ek_a).unwrap().as_str()));
    let from = server.logs.lock().unwrap().len();
    agent.publish(topics.login(&ek_a).unwrap().as_str(), login_frame(), false);
    assert_eq!(rejected(&agent.next_downlink().1), RejectCode::EkNotTrusted);
    let started = server.wait_msg(from, "Login started with multi-attestation support");
    assert_eq!(
        server.log(started)["providedMethods"],
        serde_json::json!(["tpm_ek"])
    );
    assert_eq!(server.log(started)["agentId"], ek_a.as_str());
    let rej = server.wait_msg(started, "EK did not pass any configured validation check");
    let line = server.log(rej);
    assert_eq!(line["level"], "warn");
    assert_eq!(line["agentId"], ek_a.as_str());
    assert_eq!(line["code"], "ek_not_trusted");
    assert!(
        line["error"].as_str().unwrap().contains("EK did not pass"),
        "{line}"
    );

    // 3. The metrics count both.
    assert_eq!(
        server.metric(
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"ek_not_trusted\"}"
        ),
        1
    );
    // The junk frame and the version 1 frame.
    assert_eq!(
        server.metric("attestation_frames_rejected_total{reason=\"malformed\"}"),
        2
    );
    // The invented-id Login and the derived-id one.
    assert_eq!(server.metric("attestation_logins_total"), 2);
    assert_eq!(
        server.metric("attestation_policy_reloads_total{result=\"applied\"}"),
        1
    );

    // 4. `ekattestctl config set` with the hash added: the next Login gets a Challenge.
    let good = s.dir.path().join("good.yaml");
    std::fs::write(&good, policy(&ek_hash())).unwrap();
    let from = server.logs.lock().unwrap().len();
    let out = Command::new(env!("CARGO_BIN_EXE_ekattestctl"))
        .args(["config", "set", "cluster", "--id", CLUSTER, "--broker"])
        .arg(format!("mqtt://127.0.0.1:{}", s.port))
        .arg(&good)
        .arg("--sign-key")
        .arg(&s.signer_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config set failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = server.wait_msg(from, "Policy document in force");
    let good_sha = hex::encode(Sha256::digest(policy(&ek_hash())));
    assert_eq!(server.log(applied)["sha256"], good_sha.as_str());
    assert_eq!(server.log(applied)["source"], "config topic");
    agent.publish(topics.login(&ek_a).unwrap().as_str(), login_frame(), false);
    match agent.next_downlink().1 {
        Downlink::Challenge(c) => {
            assert_eq!(c.node.as_str(), NODE);
            assert_eq!(c.expires_in, 30);
            assert!(!c.credential_blob.is_empty() && !c.encrypted_secret.is_empty());
        }
        other => panic!("expected a Challenge, got {other:?}"),
    }
    assert_eq!(server.metric("attestation_sessions_active"), 1);

    // 5. `config set` refuses an invalid document and publishes nothing.
    let bad = s.dir.path().join("bad.yaml");
    std::fs::write(&bad, INVALID_POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ekattestctl"))
        .args(["config", "set", "cluster", "--id", CLUSTER, "--broker"])
        .arg(format!("mqtt://127.0.0.1:{}", s.port))
        .arg(&bad)
        .arg("--sign-key")
        .arg(&s.signer_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("caCerts: could not parse any PEM certificates"),
        "{err}"
    );

    // 6. An invalid document signed and published anyway: the server logs it and keeps the
    // previous.
    let from = server.logs.lock().unwrap().len();
    let admin = Peer::connect(s.port, "admin", None);
    admin.publish(
        topics.config().unwrap().as_str(),
        s.signer
            .sign(INVALID_POLICY.as_bytes(), CLUSTER, now_secs())
            .unwrap(),
        true,
    );
    let e = server.wait_log(from, "the invalid-document error", |v| {
        v["level"] == "error"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("caCerts: could not parse any PEM certificates"))
    });
    assert_eq!(server.log(e)["source"], "config topic");
    let kept = server.wait_msg(e, "Previous policy document stays in force");
    assert_eq!(server.log(kept)["sha256"], good_sha.as_str());
    assert_eq!(
        server.metric("attestation_policy_reloads_total{result=\"invalid\"}"),
        1
    );
    agent.publish(topics.login(&ek_a).unwrap().as_str(), login_frame(), false);
    assert!(matches!(agent.next_downlink().1, Downlink::Challenge(_)));

    // 6b. Over the login rate limit (per agent id and per EK, login-burst 10 here; last, as
    // it spends the EK's tokens): `server busy`, and the agent is told it is a rate limit
    // and when to retry.
    let flood = Peer::connect(
        s.port,
        "ek-flood",
        Some(topics.down("ek-flood").unwrap().as_str()),
    );
    let limited = (0..12)
        .find_map(|_| {
            flood.publish(
                topics.login("ek-flood").unwrap().as_str(),
                login_frame(),
                false,
            );
            match flood.next_downlink().1 {
                Downlink::Result(Outcome::Rejected(r)) if r.code == RejectCode::Busy => Some(r),
                _ => None,
            }
        })
        .expect("the 11th Login within the burst is rate limited");
    assert!(
        limited
            .message
            .starts_with("server busy: login rate limit for ")
            && limited.message.contains(": retry after "),
        "{}",
        limited.message
    );

    // 7. SIGTERM: a clean stop with exit status 0.
    let mut server = server;
    let pid = server.child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    server.wait_msg(0, "ekattest-server stopped");
}

#[test]
fn check_mode_and_usage_exit_codes() {
    let s = setup(&policy(&ek_hash()));
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_ekattest-server"))
            .args(args)
            .output()
            .unwrap()
    };
    let ok = run(&[
        "--config".as_ref(),
        s.config.as_os_str(),
        "--check".as_ref(),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("configuration valid"), "{text}");
    assert!(
        text.contains(&hex::encode(Sha256::digest(policy(&ek_hash())))),
        "{text}"
    );

    std::fs::write(s.dir.path().join("policy.yaml"), INVALID_POLICY).unwrap();
    let bad = run(&[
        "--config".as_ref(),
        s.config.as_os_str(),
        "--check".as_ref(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("caCerts: could not parse any PEM certificates"),
        "{err}"
    );

    let usage = run(&["--bogus".as_ref()]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = run(&[]);
    assert_eq!(missing.status.code(), Some(2));
    let unknown_key = s.dir.path().join("unknown.yaml");
    std::fs::write(&unknown_key, "brokr: x\n").unwrap();
    let e = run(&[
        "--config".as_ref(),
        unknown_key.as_os_str(),
        "--check".as_ref(),
    ]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown field `brokr`"));
}

/// Waits for the refusal of a config-topic document with metric `reason`, checks the log
/// line and that `in_force` stays, and returns the index after it.
fn expect_refusal(server: &Server, from: usize, reason: &str, says: &str, in_force: &str) -> usize {
    let i = server.wait_log(from, reason, |v| {
        v["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("Policy document refused: "))
            && v["reason"] == reason
    });
    let line = server.log(i);
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["source"], "config topic", "{line}");
    let msg = line["msg"].as_str().unwrap();
    assert!(msg.contains(says), "{reason}: {msg}");
    let kept = server.wait_msg(i, "Previous policy document stays in force");
    assert_eq!(server.log(kept)["sha256"], in_force, "{reason}");
    assert_eq!(
        server.metric(&format!(
            "attestation_policy_documents_refused_total{{reason=\"{reason}\"}}"
        )),
        1,
        "{reason}"
    );
    kept + 1
}

#[test]
fn policy_topic_off_ignores_the_config_topic() {
    let s = setup_with(&policy(&"ab".repeat(32)), false);
    let server = Server::start(&s.config, s.metrics_port);
    let off = server.wait_log(0, "policy-topic is false", |v| {
        v["level"] == "info"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("policy-topic is false"))
    });
    assert!(off > 0);
    server.wait_msg(0, "subscribed");
    let topics = Topics::new("ekattest/v1", CLUSTER).unwrap();
    // A properly signed document that would admit the agent.
    let admin = Peer::connect(s.port, "admin", None);
    let doc = s
        .signer
        .sign(policy(&ek_hash()).as_bytes(), CLUSTER, now_secs())
        .unwrap();
    admin.publish(topics.config().unwrap().as_str(), doc, true);
    std::thread::sleep(Duration::from_secs(1));
    let agent = Peer::connect(
        s.port,
        &ek_derived(),
        Some(topics.down(&ek_derived()).unwrap().as_str()),
    );
    agent.publish(
        topics.login(&ek_derived()).unwrap().as_str(),
        login_frame(),
        false,
    );
    assert_eq!(rejected(&agent.next_downlink().1), RejectCode::EkNotTrusted);
    let applied = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["msg"] == "Policy document in force")
        .count();
    assert_eq!(applied, 1, "only the policy file was applied");
    assert_eq!(
        server.metric("attestation_policy_reloads_total{result=\"applied\"}"),
        1
    );
    // Not even delivered: the server has no subscription to the topic.
    assert_eq!(
        server.metric("attestation_frames_rejected_total{reason=\"unknown_topic\"}"),
        0
    );
}

#[test]
fn signed_documents_apply_and_every_forgery_or_rollback_is_refused() {
    let file_policy = policy(&"ab".repeat(32));
    let s = setup(&file_policy);
    let mut server = Server::start(&s.config, s.metrics_port);
    server.wait_log(0, "policy-topic is true", |v| {
        v["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("policy-topic is true"))
    });
    server.wait_msg(0, "subscribed");
    let topics = Topics::new("ekattest/v1", CLUSTER).unwrap();
    let config_topic = topics.config().unwrap();
    let admin = Peer::connect(s.port, "admin", None);

    // 1. A properly signed document is applied; the log names the document's sha256.
    let good = policy(&ek_hash());
    let good_sha = hex::encode(Sha256::digest(&good));
    let issued = now_secs();
    let from = server.logs.lock().unwrap().len();
    admin.publish(
        config_topic.as_str(),
        s.signer.sign(good.as_bytes(), CLUSTER, issued).unwrap(),
        true,
    );
    let applied = server.wait_msg(from, "Policy document in force");
    assert_eq!(server.log(applied)["sha256"], good_sha.as_str());
    assert_eq!(server.log(applied)["source"], "config topic");
    let agent = Peer::connect(
        s.port,
        &ek_derived(),
        Some(topics.down(&ek_derived()).unwrap().as_str()),
    );
    agent.publish(
        topics.login(&ek_derived()).unwrap().as_str(),
        login_frame(),
        false,
    );
    assert!(matches!(agent.next_downlink().1, Downlink::Challenge(_)));

    // 2. Each forgery is refused with its reason; the good document stays (published
    // without retain, so the broker keeps the good one for the restart below).
    let other = policy(&"cd".repeat(32));
    let (stranger, _) = SigningKey::generate().unwrap();
    let tampered = String::from_utf8(s.signer.sign(other.as_bytes(), CLUSTER, issued).unwrap())
        .unwrap()
        .replace(&"cd".repeat(32), &"ef".repeat(32));
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "unsigned",
            "ekattestctl config sign",
            other.clone().into_bytes(),
        ),
        (
            "unknown_signer",
            "not in policy-signers",
            stranger.sign(other.as_bytes(), CLUSTER, issued).unwrap(),
        ),
        ("bad_signature", "does not verify", tampered.into_bytes()),
        (
            "wrong_cluster",
            "signed for cluster \"c-other\"",
            s.signer.sign(other.as_bytes(), "c-other", issued).unwrap(),
        ),
        (
            "stale",
            "older than the config-topic document in force",
            s.signer
                .sign(other.as_bytes(), CLUSTER, issued - 30)
                .unwrap(),
        ),
    ];
    let mut from = server.logs.lock().unwrap().len();
    for (reason, says, payload) in cases {
        admin.publish(config_topic.as_str(), payload, false);
        from = expect_refusal(&server, from, reason, says, &good_sha);
    }
    agent.publish(
        topics.login(&ek_derived()).unwrap().as_str(),
        login_frame(),
        false,
    );
    assert!(matches!(agent.next_downlink().1, Downlink::Challenge(_)));
    assert_eq!(
        server.metric("attestation_policy_reloads_total{result=\"applied\"}"),
        2
    );

    // 3. A policy file edited after the retained document's issue time wins after a
    // restart: the retained document is refused as older than the files.
    server.child.0.kill().unwrap();
    let _ = server.child.0.wait();
    let edited = policy(&"12".repeat(32));
    let policy_file = s.dir.path().join("policy.yaml");
    std::fs::write(&policy_file, &edited).unwrap();
    let secs_since_issue = now_secs().saturating_sub(issued);
    if secs_since_issue == 0 {
        // Still the issue second: a tie goes to the files too; make the edit strictly later.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&policy_file, &edited).unwrap();
    }
    let server = Server::start(&s.config, s.metrics_port);
    let first = server.wait_msg(0, "Policy document in force");
    let edited_sha = hex::encode(Sha256::digest(&edited));
    assert_eq!(server.log(first)["sha256"], edited_sha.as_str());
    expect_refusal(
        &server,
        first,
        "older_than_files",
        "is not newer than the policy files",
        &edited_sha,
    );
    let applied = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["msg"] == "Policy document in force")
        .count();
    assert_eq!(applied, 1, "the retained document must not be applied");
    agent.publish(
        topics.login(&ek_derived()).unwrap().as_str(),
        login_frame(),
        false,
    );
    assert_eq!(rejected(&agent.next_downlink().1), RejectCode::EkNotTrusted);

    // 4. ekattestctl round trip: `config sign` on the operator's machine, then `config set`
    // publishes the signed file as it is; the server applies it (signed after the edit).
    std::thread::sleep(Duration::from_millis(1100));
    let good_file = s.dir.path().join("good.yaml");
    std::fs::write(&good_file, &good).unwrap();
    let signed_file = s.dir.path().join("good.signed.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ekattestctl"))
        .args(["config", "sign", "--id", CLUSTER, "--key"])
        .arg(&s.signer_file)
        .arg("--out")
        .arg(&signed_file)
        .arg(&good_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from = server.logs.lock().unwrap().len();
    let out = Command::new(env!("CARGO_BIN_EXE_ekattestctl"))
        .args(["config", "set", "cluster", "--id", CLUSTER, "--broker"])
        .arg(format!("mqtt://127.0.0.1:{}", s.port))
        .arg(&signed_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = server.wait_msg(from, "Policy document in force");
    assert_eq!(server.log(applied)["sha256"], good_sha.as_str());
    agent.publish(
        topics.login(&ek_derived()).unwrap().as_str(),
        login_frame(),
        false,
    );
    assert!(matches!(agent.next_downlink().1, Downlink::Challenge(_)));
}
