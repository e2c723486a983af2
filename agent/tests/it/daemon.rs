//! `ekattest-agent run` as a process (feature `it`): a real swtpm device, a real mosquitto
//! (started by the fleet harness on free ports) and a fake server in the test, built on
//! rumqttc, that answers the agent's Login with crafted Challenges and Results. Credentials
//! come from tpm2_makecredential, certificates and SVIDs from the openssl CLI, Challenge and
//! Result signatures from p256: none of them from the agent's code.

use crate::fake;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use ekattest_protocol::error::RejectCode;
use ekattest_protocol::msg::{Downlink, Method, Outcome, SessionId};
use ekattest_protocol::sign;
use ekattest_testkit::broker::BrokerOptions;
use fake::*;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

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
    // Wire version 2: no key certification for a software key, a fresh nonce, and the hint
    // of the bundle's single CA (the agent holds no signer yet).
    assert!(login.key_certify.is_none());
    assert_ne!(login.nonce, [0; 16]);
    assert_eq!(login.signer_hint, Some(ca.hint()));
    assert_eq!(login.frame[0], ekattest_protocol::msg::VERSION);
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

    // Garbage, an unexpected Result, then a real Challenge, a forged Result and a good one.
    let (id, login) = server.login(Duration::from_secs(60));
    server.send_raw(&id, b"\x01garbage".to_vec());
    server.send_raw(&id, Vec::new());
    let spki = login.svid_key.clone().unwrap();
    let t = login.transcript;
    let early = ca.accepted(&id, &SessionId([1; 16]), &t, &spki, spiffe);
    server.send(&id, &Downlink::Result(Outcome::Accepted(early)));
    let secret: Vec<u8> = (0u8..32).collect();
    let session = SessionId([2; 16]);
    let challenge = ca.challenge(&id, &login, &secret, session);
    // The Login named the bundle's CA: its certificate stays out of the Challenge.
    assert!(challenge.signer.is_empty());
    server.send(&id, &Downlink::Challenge(challenge));
    // The Answer carries the MAC keyed with the secret over T, never the secret itself.
    let (from, answer, frame) = server.answer_frame(Duration::from_secs(60));
    assert_eq!(from, id);
    assert_eq!(answer.session, session);
    assert_eq!(
        answer.mac,
        sign::answer_mac(&secret, &t, &session, NODE).unwrap()
    );
    assert!(
        !frame.windows(secret.len()).any(|w| w == secret.as_slice()),
        "the secret appears in the Answer frame"
    );
    check_answer(&login, &secret, &answer, &frame);
    let mut forged = ca.accepted(&id, &session, &t, &spki, spiffe);
    forged.signature[10] ^= 1;
    server.send(&id, &Downlink::Result(Outcome::Accepted(forged)));

    // The forged Result is ignored: the agent still waits, and takes the good one.
    agent.wait_for_log(
        "still waiting for a Result that verifies",
        Duration::from_secs(30),
    );
    assert!(!data.join("svid.pem").exists() && !data.join("svid.key").exists());
    let good = ca.accepted(&id, &session, &t, &spki, spiffe);
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
        log.contains("not signed by the server that signed the Challenge"),
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
    // The forged Result the agent refused counts as failed (once), the good one as success.
    let prom = std::fs::read_to_string(dir.path().join("agent.prom")).unwrap();
    assert!(prom.contains("outcome=\"success\"} 1"), "{prom}");
    assert!(prom.contains("outcome=\"failed\"} 1"), "{prom}");
    assert!(
        prom.contains("attestation_agent_svid_expiry_timestamp_seconds "),
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
fn intermediate_signer_is_accepted_and_svid_pem_holds_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    // As `ekattestctl ca issue-signer` issues it: the root stays offline, the intermediate
    // signs Challenges, Results and SVIDs; agents keep the root as their bundle.
    let signer = ca.issue_signer("signer", 3, true);
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let mut agent = Agent::start(dir.path(), &cfg, &["--once"]);
    let data = dir.path().join("data");
    let spiffe = "spiffe://td.example/device/intermediate";

    let (id, login) = server.login(Duration::from_secs(60));
    // The agent holds no signer yet: it names the bundle's CA, so the Challenge carries the
    // intermediate's certificate.
    assert_eq!(login.signer_hint, Some(ca.hint()));
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(7)).collect();
    let session = SessionId([0x31; 16]);
    let challenge = signer.challenge(&id, &login, &secret, session);
    assert_eq!(challenge.signer.as_slice(), signer.der.as_slice());
    server.send(&id, &Downlink::Challenge(challenge));
    let (_, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!(answer.session, session);
    let spki = login.svid_key.clone().unwrap();
    let good = signer.accepted(&id, &session, &login.transcript, &spki, spiffe);
    let svid = good.svid.to_vec();
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains(spiffe), "{log}");

    // svid.pem: the SVID, then the intermediate; bundle.pem: the root.
    let pem = std::fs::read(data.join("svid.pem")).unwrap();
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(certs, [svid, signer.der.clone()]);
    assert_eq!(
        std::fs::read(data.join("bundle.pem")).unwrap(),
        std::fs::read(ca.bundle()).unwrap()
    );
    // A relying party with the bundle builds the chain from svid.pem alone.
    openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "td.pem",
            "-untrusted",
            "data/svid.pem",
            "data/svid.pem",
        ],
    );

    // A second run with the same data folder holds the signer (from svid.pem, checked
    // against the bundle again): its Login names it, so the Challenge leaves the
    // certificate out (about 540 bytes less on the wire), and it still verifies.
    let mut agent = Agent::start(dir.path(), &cfg, &["--once"]);
    let (id, login) = server.login(Duration::from_secs(60));
    assert_eq!(login.signer_hint, Some(signer.hint()), "{}", agent.log());
    let session = SessionId([0x32; 16]);
    let challenge = signer.challenge(&id, &login, &secret, session);
    assert!(challenge.signer.is_empty());
    server.send(&id, &Downlink::Challenge(challenge));
    let (_, answer) = server.checked_answer(Duration::from_secs(60), &login, &secret);
    assert_eq!(answer.session, session);
    let spki = login.svid_key.clone().unwrap();
    let good = signer.accepted(&id, &session, &login.transcript, &spki, spiffe);
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    let status = agent.wait(Duration::from_secs(30));
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
    let log = once_against(broker.tls_port().unwrap(), &other, broker.port());
    assert!(log.contains("no attestation within 3s"), "{log}");
}

/// `openssl s_server` on a free port with `args` and the certificate and key given; killed
/// on drop. A TLS peer of the agent's that is not a broker: the tests below only need it
/// to refuse the handshake.
struct SServer {
    child: std::process::Child,
    port: u16,
}

impl SServer {
    fn start(args: &[&str], cert: &std::path::Path, key: &std::path::Path) -> Self {
        let port = ekattest_testkit::process::free_port().unwrap();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(port.to_string())
            .args(args)
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl must be on PATH (bash .ci/install)");
        let up = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                up.elapsed() < Duration::from_secs(10),
                "openssl s_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `--once` against `mqtts://127.0.0.1:PORT` trusting `ca`; returns the log of the
/// failed run.
fn once_against(port: u16, ca: &std::path::Path, broker_port: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    let td = TdCa::new(dir.path());
    let device = device();
    let cfg = config(
        broker_port,
        &device,
        &td,
        dir.path(),
        &format!("tls: {{ca: {}}}\n", ca.display()),
    );
    let url = format!("mqtts://127.0.0.1:{port}");
    let mut agent = Agent::start(
        dir.path(),
        &cfg,
        &["--once", "--broker", &url, "--timeout", "3s"],
    );
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("TLS handshake failed"), "{log}");
    log
}

/// The agent speaks TLS 1.3 only. A broker that stops at TLS 1.2 (here openssl s_server with
/// `-tls1_2`, the broker's own certificate) fails the handshake, and the error says why and
/// what to change instead of a bare alert name.
#[test]
fn a_tls_1_2_only_broker_is_refused_with_the_reason() {
    let broker = broker(BrokerOptions {
        tls: true,
        acl: false,
    });
    let tls_dir = broker.ca_pem().unwrap().parent().unwrap().to_owned();
    let s = SServer::start(
        &["-tls1_2"],
        &tls_dir.join("server.pem"),
        &tls_dir.join("server.key"),
    );
    let log = once_against(s.port, &broker.ca_pem().unwrap(), broker.port());
    assert!(
        log.contains("the broker does not offer TLS 1.3, the only version this agent speaks"),
        "{log}"
    );
}

/// The agent's TLS profile leaves out Ed25519 (and X25519): a broker whose certificate has
/// an Ed25519 key cannot sign the handshake with anything the agent accepts, and the error
/// names the profile.
#[test]
fn an_ed25519_broker_certificate_is_refused_naming_the_tls_profile() {
    let broker = broker(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ed.pem"), dir.path().join("ed.key"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be on PATH (bash .ci/install)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = SServer::start(&["-tls1_3"], &cert, &key);
    let log = once_against(s.port, &cert, broker.port());
    assert!(
        log.contains("X25519-only or Ed25519 brokers are not supported"),
        "{log}"
    );
}

fn signal(agent: &Agent, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

#[test]
fn once_interrupted_before_the_identity_exits_128_plus_the_signal() {
    use nix::sys::signal::Signal;
    let device = device();
    let broker = broker(BrokerOptions::default());
    // No server answers: the agent waits for a Challenge until it is interrupted.
    let mut watcher = FakeServer::connect(broker.port());
    for (sig, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let dir = tempfile::tempdir().unwrap();
        let ca = TdCa::new(dir.path());
        let cfg = config(broker.port(), &device, &ca, dir.path(), "");
        let mut agent = Agent::start(dir.path(), &cfg, &["--once"]);
        let _ = watcher.login(Duration::from_secs(60));
        signal(&agent, sig);
        let status = agent.wait(Duration::from_secs(10));
        let log = agent.log();
        assert_eq!(status.code(), Some(code), "{sig}: {log}");
        assert!(log.contains(&format!("{sig} received, stopping")), "{log}");
        assert!(!dir.path().join("data/svid.pem").exists(), "{sig}");
        assert!(!dir.path().join("data/svid.key").exists(), "{sig}");
    }
    // Without --once, SIGTERM is a clean stop: 0.
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let cfg = config(broker.port(), &device, &ca, dir.path(), "");
    let mut agent = Agent::start(dir.path(), &cfg, &[]);
    let _ = watcher.login(Duration::from_secs(60));
    signal(&agent, Signal::SIGTERM);
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn sighup_rereads_the_config_and_attests_again() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    // A long response timeout: any Login within the test's few seconds comes from SIGHUP.
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        "response-timeout: 10m\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg, &[]);
    let (first, _) = server.login(Duration::from_secs(60));
    assert!(first.starts_with("ek-"), "{first}");

    // A new agent-id in the file: the Login after SIGHUP comes from it.
    let cfg_path = dir.path().join("agent.yaml");
    std::fs::write(&cfg_path, format!("{cfg}agent-id: reloaded-1\n")).unwrap();
    signal(&agent, Signal::SIGHUP);
    let (second, _) = server.login(Duration::from_secs(20));
    assert_eq!(second, "reloaded-1", "{}", agent.log());
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("SIGHUP: configuration re-read; attesting again now"),
        "{log}"
    );

    // An invalid file: logged, the previous configuration stays, the agent attests again.
    std::fs::write(&cfg_path, format!("{cfg}no-such-key: 1\n")).unwrap();
    signal(&agent, Signal::SIGHUP);
    let (third, _) = server.login(Duration::from_secs(20));
    assert_eq!(third, "reloaded-1", "{}", agent.log());
    agent.wait_for_log(
        "SIGHUP: the configuration is invalid, keeping the previous one",
        Duration::from_secs(5),
    );
    assert!(agent.log().contains("no-such-key"), "{}", agent.log());
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());

    signal(&agent, Signal::SIGTERM);
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn run_refuses_a_tpm_path_that_is_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let file = dir.path().join("not-a-tpm");
    std::fs::write(&file, b"keep me").unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // JSON lines: the fatal error is one too.
    let cfg = config(1, &device, &ca, dir.path(), "log-format: json\n").replace(
        &format!("tpm: {}", device.spec()),
        &format!("tpm: {}", file.display()),
    );
    assert!(cfg.contains(&format!("tpm: {}", file.display())), "{cfg}");
    let mut agent = Agent::start(dir.path(), &cfg, &["--once"]);
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let stopped = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["msg"] == "ekattest-agent stopped")
        .unwrap_or_else(|| panic!("no stop line: {log}"));
    assert_eq!(stopped["level"], "error");
    let error = stopped["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{} is a regular file, not a character device",
            file.display()
        )),
        "{error}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), old);
}

#[test]
fn log_format_json_writes_the_server_field_names_and_sighup_switches_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TdCa::new(dir.path());
    let device = device();
    let broker = broker(BrokerOptions::default());
    let mut server = FakeServer::connect(broker.port());
    let cfg = config(
        broker.port(),
        &device,
        &ca,
        dir.path(),
        "log-format: json\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg, &[]);
    let spiffe = "spiffe://td.example/device/json";

    let (id, login) = server.login(Duration::from_secs(60));
    let secret: Vec<u8> = (0u8..32).rev().collect();
    let session = SessionId([0x44; 16]);
    server.send(
        &id,
        &Downlink::Challenge(ca.challenge(&id, &login, &secret, session)),
    );
    let _ = server.checked_answer(Duration::from_secs(60), &login, &secret);
    let spki = login.svid_key.clone().unwrap();
    let good = ca.accepted(&id, &session, &login.transcript, &spki, spiffe);
    server.send(&id, &Downlink::Result(Outcome::Accepted(good)));
    agent.wait_for_log("\"msg\":\"Connected to server\"", Duration::from_secs(30));

    // Every line is one JSON object with time, level and msg first.
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for (line, v) in log.lines().zip(&lines) {
        assert!(line.starts_with("{\"time\":\""), "{line}");
        let time = v["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "{line}"
        );
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&v["level"].as_str().unwrap())
        );
        assert!(v["msg"].is_string(), "{line}");
    }
    let connected = lines
        .iter()
        .find(|v| v["msg"] == "Connected to server")
        .unwrap();
    assert_eq!(connected["level"], "info");
    assert_eq!(connected["agentId"], id.as_str());
    assert_eq!(connected["spiffeId"], spiffe);
    assert!(
        connected["svidNotAfter"].as_i64().unwrap() > 1_700_000_000,
        "{connected}"
    );
    assert!(
        lines.iter().any(|v| v["msg"]
            == "Sending Login, attestors: [\"tpm_ek\"], agent: ".to_owned()
                + &id
                + ", topic: ekattest/v1/c-test/agents/"
                + &id
                + "/login"),
        "{log}"
    );

    // SIGHUP with log-format: text: later lines are text.
    std::fs::write(
        dir.path().join("agent.yaml"),
        cfg.replace("log-format: json", "log-format: text"),
    )
    .unwrap();
    signal(&agent, nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_log(
        "\ninfo: SIGHUP: configuration re-read; attesting again now\n",
        Duration::from_secs(10),
    );
    signal(&agent, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)).code(), Some(0));
}

/// The test kit renders agent.yaml for the fleet and the end-to-end tests; the agent's own
/// parser reads a failover list from it back in order.
#[test]
fn the_test_kits_agent_yaml_parses_with_its_failover_list_in_order() {
    use ekattest_testkit::daemons::AgentSpec;
    let mut a = AgentSpec::new(
        "mqtt://127.0.0.1:1883",
        "c-xxxxxx",
        "swtpm:127.0.0.1:2321",
        "/tmp/bundle.pem",
        "/tmp/data",
    );
    a.fallback_brokers = vec![
        "mqtt://127.0.0.1:1884".into(),
        "mqtt://127.0.0.1:1885".into(),
    ];
    let text = a.to_yaml().unwrap();
    let config = ekattest_agent::daemon::config::Config::parse(&text).unwrap();
    let ports: Vec<u16> = config.brokers().map(|b| b.port).collect();
    assert_eq!(ports, [1883, 1884, 1885], "{text}");
}
