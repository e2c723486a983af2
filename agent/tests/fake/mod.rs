//! The test harness of the daemon tests (`daemon.rs`, `hostile.rs`): a real swtpm device,
//! a real mosquitto (started by the fleet harness on free ports), a fake server built on
//! rumqttc that publishes crafted Challenges and Results on the agent's down topic, and the
//! agent as a process. Credentials come from tpm2_makecredential, SVIDs from the openssl
//! CLI, Result signatures from p256: none of them from the agent's code.

use std::fs::File;
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
    Accepted, Answer, Challenge, Downlink, Login, Outcome, Rejected, SessionId, Uplink,
};
use ekattest_protocol::public::Public;
use ekattest_protocol::{decode, encode, sign};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePrivateKey as _;
use p256::pkcs8::der::pem::LineEnding;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
pub(crate) const CLUSTER: &str = "c-test";
pub(crate) const NODE: &str = "node-1";

pub(crate) fn swtpm_ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create().unwrap_or_else(|e| panic!("cannot create the swtpm CA: {e}")))
}

pub(crate) fn device() -> Device {
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    Device::provision(swtpm_ca(), &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

pub(crate) fn broker(opts: BrokerOptions) -> Broker {
    Broker::start(&opts).unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"))
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
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
pub(crate) struct TdCa {
    pub(crate) dir: PathBuf,
    pub(crate) key: SigningKey,
}

impl TdCa {
    pub(crate) fn new(dir: &Path) -> Self {
        Self::with_seed(dir, 1)
    }

    /// A CA whose key is derived from `seed` (another seed: another CA), in `dir`.
    pub(crate) fn with_seed(dir: &Path, seed_byte: u8) -> Self {
        let mut seed = [0x5au8; 32];
        seed[0] = seed_byte;
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

    pub(crate) fn bundle(&self) -> PathBuf {
        self.dir.join("td.pem")
    }

    pub(crate) fn issue(&self, spki: &[u8], spiffe_id: &str) -> Vec<u8> {
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

    pub(crate) fn accepted(
        &self,
        agent: &str,
        session: &SessionId,
        spki: &[u8],
        id: &str,
    ) -> Accepted {
        let mut a = Accepted {
            spiffe_id: heapless::String::try_from(id).unwrap(),
            attributes: heapless::Vec::new(),
            svid: heapless::Vec::from_slice(&self.issue(spki, id)).unwrap(),
            signature: heapless::Vec::new(),
        };
        self.sign(agent, session, &mut a);
        a
    }

    /// Signs `a` as the Result for `agent` and `session`.
    pub(crate) fn sign(&self, agent: &str, session: &SessionId, a: &mut Accepted) {
        let msg = sign::result_signed_bytes(agent, session, a).unwrap();
        let sig: Signature = self.key.sign(&msg);
        a.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
    }
}

/// The fake server: subscribed to every Login of the cluster and to node-1's answers.
pub(crate) struct FakeServer {
    pub(crate) client: Client,
    pub(crate) conn: Connection,
    /// Publishes received while waiting for a PUBACK.
    pub(crate) queued: std::collections::VecDeque<rumqttc::Publish>,
}

impl FakeServer {
    pub(crate) fn connect(port: u16) -> Self {
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
    pub(crate) fn next(&mut self, within: Duration) -> (String, Uplink) {
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

    pub(crate) fn login(&mut self, within: Duration) -> (String, Login) {
        match self.next(within) {
            (agent, Uplink::Login(l)) => (agent, l),
            other => panic!("expected a Login, got {other:?}"),
        }
    }

    /// The last Login once no other has come for `quiet` (after a flood that made the agent
    /// log in again, possibly more than once).
    pub(crate) fn last_login(&mut self, within: Duration, quiet: Duration) -> (String, Login) {
        let mut last = self.login(within);
        loop {
            let until = Instant::now() + quiet;
            let mut newer = None;
            while newer.is_none() && Instant::now() < until {
                let p = match self.queued.pop_front() {
                    Some(p) => p,
                    None => match self.conn.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => p,
                        _ => continue,
                    },
                };
                let agent = p.topic.rsplit('/').nth(1).unwrap().to_owned();
                match decode::<Uplink>(&p.payload).unwrap() {
                    Uplink::Login(l) if p.topic.ends_with("/login") => newer = Some((agent, l)),
                    other => panic!("expected a Login, got {other:?}"),
                }
            }
            match newer {
                Some(l) => last = l,
                None => return last,
            }
        }
    }

    pub(crate) fn answer(&mut self, within: Duration) -> (String, Answer) {
        match self.next(within) {
            (agent, Uplink::Answer(a)) => (agent, a),
            other => panic!("expected an Answer, got {other:?}"),
        }
    }

    pub(crate) fn send_raw(&mut self, agent: &str, payload: Vec<u8>) {
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

    pub(crate) fn send(&mut self, agent: &str, msg: &Downlink) {
        let mut buf = vec![0u8; FRAME_MAX];
        let frame = encode(msg, &mut buf).unwrap().to_vec();
        self.send_raw(agent, frame);
    }
}

/// A Challenge for `login`'s EK and AK carrying `secret`, made by tpm2_makecredential.
pub(crate) fn challenge(login: &Login, secret: &[u8], session: SessionId) -> Challenge {
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
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Agent {
    pub(crate) fn start(dir: &Path, config: &str, args: &[&str]) -> Self {
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

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
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

    pub(crate) fn wait_for_log(&self, needle: &str, within: Duration) {
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

pub(crate) fn config(
    broker_port: u16,
    device: &Device,
    ca: &TdCa,
    dir: &Path,
    extra: &str,
) -> String {
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

pub(crate) fn rejected(code: RejectCode) -> Downlink {
    Downlink::Result(Outcome::Rejected(Rejected::new(code)))
}
