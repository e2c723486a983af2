//! The test harness of the daemon tests (`daemon.rs`, `hostile.rs`): a real swtpm device,
//! a real mosquitto (started by the fleet harness on free ports), a fake server built on
//! rumqttc that publishes crafted Challenges and Results on the agent's down topic, and the
//! agent as a process. Credentials come from tpm2_makecredential, CA and signer certificates
//! and SVIDs from the openssl CLI, Challenge and Result signatures from p256: none of them
//! from the agent's code.
//!
//! Wire version 2: the fake server computes the Login transcript `T` over the Login frame it
//! received ([`SeenLogin`]), signs its Challenges over `sign::challenge_signed_bytes` with its
//! signer key (leaving its certificate out when the Login's `signer_hint` names it), checks
//! the Answer's MAC with the secret it chose ([`FakeServer::checked_answer`]) and signs its
//! Results with `T`.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ekattest_agent::tpm::activate::Credential;
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::FRAME_MAX;
use ekattest_protocol::msg::{
    Accepted, Answer, Challenge, Downlink, Login, Outcome, Rejected, SessionId, Uplink,
};
use ekattest_protocol::sign::Transcript;
use ekattest_protocol::tpm::public::Public;
use ekattest_protocol::{decode, encode, sign};
use ekattest_testkit::broker::{Broker, BrokerOptions};
use ekattest_testkit::{Ca, Device, ProvisionOptions, testdata};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::pem::LineEnding;
use p256::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _};
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

pub(crate) use ekattest_testkit::testdata::openssl;

/// A p256 key derived from `seed_byte` (another seed: another key).
pub(crate) fn seeded_key(seed_byte: u8) -> SigningKey {
    let mut seed = [0x5au8; 32];
    seed[0] = seed_byte;
    SigningKey::from_slice(&seed).unwrap()
}

/// Reads the PEM certificate `path` as DER.
pub(crate) fn pem_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap();
    p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap().1
}

/// The properties of `ekattestctl ca issue-signer`'s intermediate, with or without the
/// ekattest signer usage.
pub(crate) fn signer_extensions(signer_usage: bool) -> String {
    let eku = if signer_usage {
        format!("serverAuth,clientAuth,{}", sign::SIGNER_EKU_OID)
    } else {
        "serverAuth,clientAuth".to_owned()
    };
    format!(
        "basicConstraints=critical,CA:TRUE,pathlen:0\n\
         keyUsage=critical,digitalSignature,keyCertSign\n\
         extendedKeyUsage={eku}\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n"
    )
}

/// A key of the server that signs Challenges, Results and SVIDs: the trust-domain CA (a p256
/// key and an openssl self-signed certificate, `td.pem`), or an intermediate it issued, or a
/// rogue self-signed one. Files `{name}.pem` and `{name}.key` in `dir`.
pub(crate) struct TdCa {
    pub(crate) dir: PathBuf,
    pub(crate) key: SigningKey,
    pub(crate) name: String,
    /// The certificate, DER (as the agent reads it from the PEM file).
    pub(crate) der: Vec<u8>,
}

impl TdCa {
    pub(crate) fn new(dir: &Path) -> Self {
        Self::with_seed(dir, 1)
    }

    /// A CA whose key is derived from `seed` (another seed: another CA), in `dir`.
    pub(crate) fn with_seed(dir: &Path, seed_byte: u8) -> Self {
        Self::self_signed(dir, "td", seed_byte)
    }

    /// A self-signed CA named `name` (files `{name}.pem`, `{name}.key`) with a key derived
    /// from `seed_byte`.
    pub(crate) fn self_signed(dir: &Path, name: &str, seed_byte: u8) -> Self {
        let key = seeded_key(seed_byte);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), pem.as_bytes()).unwrap();
        testdata::openssl_self_signed(dir, name, &format!("/CN={name}-ca"), &[]);
        Self {
            dir: dir.to_owned(),
            key,
            der: pem_der(&dir.join(format!("{name}.pem"))),
            name: name.to_owned(),
        }
    }

    /// An intermediate CA this CA issues as `ekattestctl ca issue-signer` does (CA:TRUE
    /// pathlen 0, digitalSignature, keyCertSign, serverAuth, clientAuth and, if
    /// `signer_usage`, the ekattest signer usage), named `name`, key from `seed_byte`.
    pub(crate) fn issue_signer(&self, name: &str, seed_byte: u8, signer_usage: bool) -> Self {
        let key = seeded_key(seed_byte);
        let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key_pem.as_bytes()).unwrap();
        let pub_pem = {
            use p256::pkcs8::EncodePublicKey as _;
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        std::fs::write(self.dir.join(format!("{name}-pub.pem")), pub_pem).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}.cnf")),
            signer_extensions(signer_usage),
        )
        .unwrap();
        testdata::openssl_issue(
            &self.dir,
            &self.name,
            name,
            &format!("/O=ekattest/CN={name} signer"),
        );
        Self {
            dir: self.dir.clone(),
            key,
            der: pem_der(&self.dir.join(format!("{name}.pem"))),
            name: name.to_owned(),
        }
    }

    /// The certificate file: the agent's trust bundle when this is the trust-domain CA.
    pub(crate) fn bundle(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// The signer hint a Login names this certificate with.
    pub(crate) fn hint(&self) -> [u8; ekattest_protocol::limits::SIGNER_HINT_LEN] {
        sign::signer_hint(&self.der)
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
                &format!("{}.pem", self.name),
                "-CAkey",
                &format!("{}.key", self.name),
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

    /// An Accepted Result for `agent` answering `session` of the Login with transcript
    /// `transcript`, with an SVID for `spki`, signed.
    pub(crate) fn accepted(
        &self,
        agent: &str,
        session: &SessionId,
        transcript: &Transcript,
        spki: &[u8],
        id: &str,
    ) -> Accepted {
        let mut a = Accepted {
            spiffe_id: heapless::String::try_from(id).unwrap(),
            attributes: heapless::Vec::new(),
            svid: heapless::Vec::from_slice(&self.issue(spki, id)).unwrap(),
            signature: heapless::Vec::new(),
        };
        self.sign(agent, session, transcript, &mut a);
        a
    }

    /// Signs `a` as the Result for `agent`, `session` and the Login transcript `transcript`.
    pub(crate) fn sign(
        &self,
        agent: &str,
        session: &SessionId,
        transcript: &Transcript,
        a: &mut Accepted,
    ) {
        let msg = sign::result_signed_bytes(agent, session, transcript, a).unwrap();
        let sig: Signature = self.key.sign(&msg);
        a.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
    }

    /// The Challenge to `agent` for `login`'s EK and AK carrying `secret`, naming the
    /// Login's transcript, signed; the certificate is left out when the Login's hint names
    /// it (as the server does).
    pub(crate) fn challenge(
        &self,
        agent: &str,
        login: &SeenLogin,
        secret: &[u8],
        session: SessionId,
    ) -> Challenge {
        let mut c = unsigned_challenge(login, secret, session);
        if login.signer_hint != Some(self.hint()) {
            c.signer = heapless::Vec::from_slice(&self.der).unwrap();
        }
        self.sign_challenge(agent, &mut c);
        c
    }

    /// (Re)signs `c` for `agent` (over everything but `signer` and `signature`).
    pub(crate) fn sign_challenge(&self, agent: &str, c: &mut Challenge) {
        let msg = sign::challenge_signed_bytes(agent, c).unwrap();
        let sig: Signature = self.key.sign(&msg);
        c.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
    }
}

/// A Login as the fake server received it: the message, the frame and the transcript `T`
/// the server computes over that frame. Derefs to the [`Login`].
#[derive(Debug, Clone)]
pub(crate) struct SeenLogin {
    pub(crate) login: Login,
    pub(crate) frame: Vec<u8>,
    pub(crate) transcript: Transcript,
}

impl SeenLogin {
    fn new(agent: &str, login: Login, frame: Vec<u8>) -> Self {
        let transcript = sign::transcript(CLUSTER, agent, &frame).unwrap();
        Self {
            login,
            frame,
            transcript,
        }
    }
}

impl Deref for SeenLogin {
    type Target = Login;

    fn deref(&self) -> &Login {
        &self.login
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

    /// The next Login or Answer: (agent id from the topic, message, frame).
    pub(crate) fn next_frame(&mut self, within: Duration) -> (String, Uplink, Vec<u8>) {
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
                p.payload.to_vec(),
            );
        }
    }

    pub(crate) fn login(&mut self, within: Duration) -> (String, SeenLogin) {
        match self.next_frame(within) {
            (agent, Uplink::Login(l), frame) => {
                let seen = SeenLogin::new(&agent, l, frame);
                (agent, seen)
            }
            other => panic!("expected a Login, got {other:?}"),
        }
    }

    /// The last Login once no other has come for `quiet` (after a flood that made the agent
    /// log in again, possibly more than once).
    pub(crate) fn last_login(&mut self, within: Duration, quiet: Duration) -> (String, SeenLogin) {
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
                    Uplink::Login(l) if p.topic.ends_with("/login") => {
                        let seen = SeenLogin::new(&agent, l, p.payload.to_vec());
                        newer = Some((agent, seen));
                    }
                    other => panic!("expected a Login, got {other:?}"),
                }
            }
            match newer {
                Some(l) => last = l,
                None => return last,
            }
        }
    }

    /// The next Answer with its frame.
    pub(crate) fn answer_frame(&mut self, within: Duration) -> (String, Answer, Vec<u8>) {
        match self.next_frame(within) {
            (agent, Uplink::Answer(a), frame) => (agent, a, frame),
            other => panic!("expected an Answer, got {other:?}"),
        }
    }

    /// The next Answer, checked as the server checks it: its MAC is
    /// `sign::answer_mac(secret, T, session, NODE)` for `login`'s transcript, its proof of
    /// possession verifies with the Login's SVID key over `sign::pop_signed_bytes`, and the
    /// secret appears nowhere in the frame.
    pub(crate) fn checked_answer(
        &mut self,
        within: Duration,
        login: &SeenLogin,
        secret: &[u8],
    ) -> (String, Answer) {
        let (agent, answer, frame) = self.answer_frame(within);
        check_answer(login, secret, &answer, &frame);
        (agent, answer)
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

/// The checks of [`FakeServer::checked_answer`] on an Answer and its frame.
pub(crate) fn check_answer(login: &SeenLogin, secret: &[u8], answer: &Answer, frame: &[u8]) {
    let want = sign::answer_mac(secret, &login.transcript, &answer.session, NODE).unwrap();
    assert_eq!(
        answer.mac, want,
        "the Answer's MAC is not the one for the secret"
    );
    assert!(sign::answer_mac_matches(
        secret,
        &login.transcript,
        &answer.session,
        NODE,
        &answer.mac
    ));
    assert!(
        !frame.windows(secret.len()).any(|w| w == secret),
        "the secret appears in the Answer frame"
    );
    let spki = login
        .svid_key
        .as_ref()
        .expect("the Login carries an SVID key");
    let pop = Signature::from_der(answer.pop.as_ref().expect("the Answer carries a pop")).unwrap();
    VerifyingKey::from_public_key_der(spki)
        .unwrap()
        .verify(
            &sign::pop_signed_bytes(&login.transcript, &answer.session, &answer.mac),
            &pop,
        )
        .expect("pop verifies with the Login's SVID key");
}

/// A Challenge for `login`'s EK and AK carrying `secret`, made by tpm2_makecredential,
/// naming the Login's transcript, with no signer and no signature.
pub(crate) fn unsigned_challenge(
    login: &SeenLogin,
    secret: &[u8],
    session: SessionId,
) -> Challenge {
    unsigned_challenge_for(login, &login.transcript, secret, session)
}

/// [`unsigned_challenge`] naming the transcript `transcript`.
pub(crate) fn unsigned_challenge_for(
    login: &Login,
    transcript: &Transcript,
    secret: &[u8],
    session: SessionId,
) -> Challenge {
    let ak_name = Public::decode(&login.ak_public).unwrap().name().unwrap();
    let cred = ekattest_testkit::tpm2_makecredential(&login.ek_public, secret, &ak_name).unwrap();
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
        transcript: *transcript,
        signer: heapless::Vec::new(),
        signature: heapless::Vec::new(),
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
