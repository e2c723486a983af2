//! Attestations per second per core: the server's whole work for one attestation, in process.
//!
//! `cargo bench -p ekattest-server --bench attest_rate` (or `bench/makecredential/run.sh`,
//! which runs it next to tpm2-pytss and tpm2-tools). One thread, no MQTT: each iteration is
//! what a daemon worker does between the broker handing it a frame and the frame it queues:
//! - Login: decode the Uplink frame, [`Handler::handle`] (policy selection, AK and EK public
//!   area checks, EK validation, SPIFFE ID, session, MakeCredential, Challenge encoding,
//!   metrics, the seed's log calls with no logger installed);
//! - Answer: decode the Uplink frame, [`Handler::handle`] (session lookup, constant-time
//!   secret check, proof of possession of the agent's SVID key, X.509-SVID issuance, the
//!   Result signature, Result encoding).
//!
//! The device's side is not timed: a software TPM (below) opens the credential with the EK
//! private key of the known-answer vectors (`ActivateCredential`: RSA-OAEP or ECDH + KDFe,
//! KDFa, HMAC check, AES-128-CFB), and a p256 key plays the agent's SVID key and signs the
//! proof of possession, so every Answer carries the secret the server chose, recovered the
//! way a TPM recovers it. Each iteration checks the Result is `Accepted` with an SVID.
//!
//! Benchmarks (criterion group `attest_rate`, throughput in attestations/s):
//! - `{rsa2048,p256}_allowlist`: the EK hash allow-listed (what `ekattest-fleet load` and
//!   emulators use);
//! - `{rsa2048,p256}_allowlist_registry`: the same with the device registry on (SQLite, the
//!   daemon's default): the workers queue each outcome for the registry's writer thread,
//!   which writes them in batches on the other core meanwhile (that thread's CPU is not in
//!   this per-core figure; `ekattest-fleet load --registry` measures the whole machine);
//! - `{rsa2048,p256}_ek_cert`: the Login carries an EK certificate issued by a two-level
//!   chain of the EK's algorithm, made once with openssl (`-force_pubkey`), checked with the
//!   TCG profile enforced.
//!
//! Group `v2_steps`: what wire version 2 adds to an attestation, each step alone: the
//! server's Login transcript over a real Login frame (`transcript`), its Challenge signature
//! (`sign_challenge`) and the Answer MAC check (`mac_check`). The device's side, the
//! Challenge verification, is `cargo bench -p ekattest-fleet --bench challenge_verify` (the
//! fleet crate links agent and server; the server's benches never link the agent).
//!
//! Group `make_credential_only`: `{rsa2048,p256}`: [`Public::decode`] of the EK's
//! TPM2B_PUBLIC plus [`make_credential`] on the production path, the apples-to-apples
//! counterpart of tpm2-pytss `make_credential` and `tpm2_makecredential`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

mod common;

use common::{openssl, pem_der};
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
use aws_lc_rs::cipher::{AES_128, DecryptingKey, DecryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use criterion::{Criterion, Throughput, criterion_group};
use ekattest_protocol::msg::{
    Answer, Challenge, Downlink, Login, Method, Outcome, SessionId, Uplink,
};
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::Public;
use ekattest_protocol::{decode, encode, heapless, limits, sign};
use ekattest_server::attest::Attestor;
use ekattest_server::credential::{SystemRandom, make_credential};
use ekattest_server::daemon::handler::{Handler, Job, Outbox};
use ekattest_server::daemon::metrics::Metrics;
use ekattest_server::daemon::reload::{PolicyState, Reloader, apply};
use ekattest_server::registry::sqlite::SqliteStore;
use ekattest_server::registry::{Backend, BanList, RegistryConfig, Writer, WriterHandle};
use ekattest_server::session::SessionConfig;
use ekattest_server::svid::Authority;
use ekattest_testkit::testdata;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest, Sha256};

/// The EK's private half, as a software TPM holds it.
enum EkPrivate {
    Rsa(OaepPrivateDecryptingKey),
    /// PKCS#8 of the P-256 key and the EK point's x coordinate (KDFe's partyVInfo).
    P256 {
        pkcs8: Vec<u8>,
        ek_x: Vec<u8>,
    },
}

/// One simulated device: its EK (public and private), its AK Name, its SVID key.
struct Device {
    case: &'static str,
    ek_public: Vec<u8>,
    ek_private: EkPrivate,
    ak_public: Vec<u8>,
    ak_name: Vec<u8>,
    svid_key: SigningKey,
    svid_spki: Vec<u8>,
}

fn agent_key() -> (SigningKey, Vec<u8>) {
    let mut seed = [0u8; 32];
    loop {
        getrandom::getrandom(&mut seed).unwrap();
        if let Ok(key) = SigningKey::from_slice(&seed) {
            let spki = key.verifying_key().to_public_key_der().unwrap();
            return (key, spki.as_bytes().to_vec());
        }
    }
}

/// KDFa(SHA-256, key, label, contextU, "", bits) for bits <= 256 (one HMAC block).
fn kdfa(key: &[u8], label: &str, context_u: &[u8], bits: u32) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(label.as_bytes());
    ctx.update(&[0]);
    ctx.update(context_u);
    ctx.update(&bits.to_be_bytes());
    ctx.sign().as_ref()[..(bits / 8) as usize].to_vec()
}

fn tpm2b(bytes: &[u8]) -> (&[u8], &[u8]) {
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    (&bytes[2..2 + len], &bytes[2 + len..])
}

impl Device {
    fn new(case: &'static str) -> Self {
        let ek_public = testdata::vector(format!("{case}/ek.tpm2b_public"));
        let pkcs8 = pem_der(testdata::existing(format!(
            "make-credential/{case}/ek_private.pk8.pem"
        )));
        let ek_private = match Public::decode(&ek_public).unwrap().key {
            PublicKey::Rsa { .. } => EkPrivate::Rsa(
                OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(&pkcs8).unwrap())
                    .unwrap(),
            ),
            PublicKey::Ecc { x, .. } => EkPrivate::P256 {
                pkcs8,
                ek_x: x.to_vec(),
            },
        };
        let (svid_key, svid_spki) = agent_key();
        Self {
            case,
            ek_public,
            ek_private,
            ak_public: testdata::vector("ak.tpm2b_public"),
            ak_name: testdata::vector("ak.name"),
            svid_key,
            svid_spki,
        }
    }

    fn ek_hash(&self) -> String {
        hex::encode(Sha256::digest(testdata::vector(format!(
            "{}/ek.spki.der",
            self.case
        ))))
    }

    fn login_frame(&self, ek_cert: Option<&[u8]>) -> Vec<u8> {
        let login = Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
            ek_public: heapless::Vec::from_slice(&self.ek_public).unwrap(),
            ek_cert: ek_cert.map(|c| heapless::Vec::from_slice(c).unwrap()),
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(&self.ak_public).unwrap(),
            svid_key: Some(heapless::Vec::from_slice(&self.svid_spki).unwrap()),
            key_certify: None,
            nonce: [0x4e; 16],
            signer_hint: None,
        };
        let mut buf = vec![0u8; limits::FRAME_MAX];
        encode(&Uplink::Login(login), &mut buf).unwrap().to_vec()
    }

    /// TPM2_ActivateCredential in software: the seed from the encrypted secret, the
    /// integrity HMAC checked, the credential decrypted.
    fn activate(&self, challenge: &Challenge) -> Vec<u8> {
        let (secret, _) = tpm2b(&challenge.encrypted_secret);
        let seed = match &self.ek_private {
            EkPrivate::Rsa(key) => {
                let mut out = [0u8; 256];
                let seed = key
                    .decrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        secret,
                        &mut out,
                        Some(b"IDENTITY\0"),
                    )
                    .unwrap();
                seed.to_vec()
            }
            EkPrivate::P256 { pkcs8, ek_x } => {
                let (qx, rest) = tpm2b(secret);
                let (qy, _) = tpm2b(rest);
                let ek = agreement::PrivateKey::from_private_key_der(&ECDH_P256, pkcs8).unwrap();
                let point = [&[0x04][..], qx, qy].concat();
                agreement::agree(&ek, UnparsedPublicKey::new(&ECDH_P256, &point), (), |z| {
                    // KDFe(SHA-256, Z, "IDENTITY", Qe.x, Qek.x, 256): one block.
                    let mut h = Sha256::new();
                    h.update(1u32.to_be_bytes());
                    h.update(z);
                    h.update(b"IDENTITY\0");
                    h.update(qx);
                    h.update(ek_x);
                    Ok(h.finalize().to_vec())
                })
                .unwrap()
            }
        };
        let (id_object, _) = tpm2b(&challenge.credential_blob);
        let (integrity, enc_identity) = tpm2b(id_object);
        let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, &kdfa(&seed, "INTEGRITY", &[], 256));
        let mut ctx = hmac::Context::with_key(&hmac_key);
        ctx.update(enc_identity);
        ctx.update(&self.ak_name);
        assert_eq!(
            ctx.sign().as_ref(),
            integrity,
            "{}: integrity HMAC",
            self.case
        );
        let sym = kdfa(&seed, "STORAGE", &self.ak_name, 128);
        let key = DecryptingKey::cfb128(UnboundCipherKey::new(&AES_128, &sym).unwrap()).unwrap();
        let mut buf = enc_identity.to_vec();
        let plain = key
            .decrypt(
                &mut buf,
                DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
            .unwrap();
        tpm2b(plain).0.to_vec()
    }

    /// The Answer to `challenge` of the Login with transcript `t`: the MAC with the
    /// recovered secret and the proof of possession over it.
    fn answer_frame(&self, challenge: &Challenge, t: &sign::Transcript) -> Vec<u8> {
        let secret = self.activate(challenge);
        let mac = sign::answer_mac(&secret, t, &challenge.session, &challenge.node).unwrap();
        let signed = sign::pop_signed_bytes(t, &challenge.session, &mac);
        let pop: p256::ecdsa::Signature = self.svid_key.sign(&signed);
        let answer = Answer {
            session: challenge.session,
            mac,
            pop: Some(heapless::Vec::from_slice(pop.to_der().as_bytes()).unwrap()),
        };
        let mut buf = vec![0u8; limits::FRAME_MAX];
        encode(&Uplink::Answer(answer), &mut buf).unwrap().to_vec()
    }
}

/// The frames a Handler queues.
#[derive(Default)]
struct Recorder(Mutex<Vec<Vec<u8>>>);

/// The Handler's end of a [`Recorder`].
struct Sink(Arc<Recorder>);

impl Outbox for Sink {
    fn send(&self, _topic: &str, frame: Vec<u8>) -> Result<(), String> {
        self.0.0.lock().unwrap().push(frame);
        Ok(())
    }
}

impl Recorder {
    fn take_one(&self) -> Downlink {
        let mut frames = self.0.lock().unwrap();
        assert_eq!(frames.len(), 1, "one downlink frame per uplink frame");
        decode::<Downlink>(&frames.pop().unwrap()).unwrap()
    }
}

/// A daemon's worker state in process: the policy `doc` in force.
fn handler(doc: &str) -> (Handler, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let (authority, _, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    let state = Arc::new(PolicyState::default());
    let metrics = Arc::new(Metrics::default());
    let d = Reloader::new().consider_files(&[("t".to_owned(), doc.as_bytes().to_vec())], None);
    apply(&d, "t", &state, &metrics);
    assert!(state.current().is_some(), "bench policy does not parse");
    let h = Handler {
        attestor: Attestor::new("node-1", Some("example.org"), SessionConfig::default()).unwrap(),
        authority,
        policy: state,
        metrics,
        prefix: "ekattest/v1".to_owned(),
        cluster: "bench".to_owned(),
        svid_ttl: Duration::from_secs(3600),
        outbox: Box::new(Sink(Arc::clone(&rec))),
        registry: None,
    };
    (h, rec)
}

fn policy(config: &str) -> String {
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: bench\n      \
         spiffeIdTemplate: /agents/tpm/{{{{tpm_ek.public_hash}}}}\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n{config}"
    )
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("              {l}\n"))
        .collect()
}

const OPENSSL_EXT: &str = "\
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ek]
basicConstraints = critical,CA:FALSE
keyUsage = critical,KU
extendedKeyUsage = 2.23.133.8.1
subjectAltName = critical,dirName:tpm_dn
authorityKeyIdentifier = keyid
[tpm_dn]
1.2.23.133.2.1 = id:00001014
2.2.23.133.2.2 = swtpm
3.2.23.133.2.3 = id:20191023
";

/// root -> intermediate -> EK certificate for `dev`'s EK key, all of the EK's algorithm.
/// Returns the EK certificate (DER) and the policy's chain configuration.
fn ek_chain(dir: &Path, dev: &Device) -> (Vec<u8>, String) {
    let d = dir.join(dev.case);
    std::fs::create_dir_all(&d).unwrap();
    let rsa = matches!(dev.ek_private, EkPrivate::Rsa(_));
    let ku = if rsa {
        "keyEncipherment"
    } else {
        "keyAgreement"
    };
    std::fs::write(d.join("ext.cnf"), OPENSSL_EXT.replace("KU", ku)).unwrap();
    std::fs::write(
        d.join("ek.spki.der"),
        testdata::vector(format!("{}/ek.spki.der", dev.case)),
    )
    .unwrap();
    openssl(
        &d,
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            "ek.spki.der",
            "-out",
            "ek.pub.pem",
        ],
    );
    let keyopt = if rsa {
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    } else {
        ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    for key in ["root", "inter"] {
        let out = format!("{key}.key");
        openssl(&d, &[&["genpkey"][..], &keyopt, &["-out", &out]].concat());
    }
    let x509 = |args: &[&str]| {
        let mut all = vec![
            "x509", "-req", "-days", "3650", "-sha256", "-extfile", "ext.cnf",
        ];
        all.extend_from_slice(args);
        openssl(&d, &all);
    };
    let req = |key: &str, cn: &str, out: &str| {
        openssl(&d, &["req", "-new", "-key", key, "-subj", cn, "-out", out]);
    };
    req("root.key", "/CN=Bench EK Root", "root.csr");
    x509(&[
        "-in",
        "root.csr",
        "-signkey",
        "root.key",
        "-extensions",
        "ca",
        "-out",
        "root.pem",
    ]);
    req("inter.key", "/CN=Bench EK Intermediate", "inter.csr");
    x509(&[
        "-in",
        "inter.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-set_serial",
        "2",
        "-extensions",
        "ca",
        "-out",
        "inter.pem",
    ]);
    // The CSR's own key is irrelevant: -force_pubkey puts the vector's EK key in.
    req("inter.key", "/CN=unknown", "ek.csr");
    x509(&[
        "-in",
        "ek.csr",
        "-CA",
        "inter.pem",
        "-CAkey",
        "inter.key",
        "-set_serial",
        "0x4cbd0fe61ee762ed",
        "-force_pubkey",
        "ek.pub.pem",
        "-extensions",
        "ek",
        "-outform",
        "DER",
        "-out",
        "ek.der",
    ]);
    let pem = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let config = format!(
        "            caCerts: |\n{}            intermediateCerts: |\n{}",
        indent(&pem("root.pem")),
        indent(&pem("inter.pem"))
    );
    (std::fs::read(d.join("ek.der")).unwrap(), config)
}

/// One device attesting against one handler.
struct Run {
    dev: Device,
    handler: Handler,
    rec: Arc<Recorder>,
    login: Vec<u8>,
}

/// The Login transcript, as the router computes it over the received frame.
fn transcript(frame: &[u8]) -> sign::Transcript {
    sign::transcript("c-bench", "bench-device", frame).unwrap()
}

fn handle(handler: &Handler, frame: &[u8]) {
    let job = match decode::<Uplink>(black_box(frame)).unwrap() {
        Uplink::Login(login) => Job::Login {
            agent: "bench-device".to_owned(),
            login: Box::new(login),
            transcript: transcript(frame),
        },
        Uplink::Answer(answer) => Job::Answer {
            agent: "bench-device".to_owned(),
            answer: Box::new(answer),
        },
    };
    handler.handle(job);
}

impl Run {
    fn new(dev: Device, doc: &str, ek_cert: Option<&[u8]>) -> Self {
        let (handler, rec) = handler(doc);
        let login = dev.login_frame(ek_cert);
        Self {
            dev,
            handler,
            rec,
            login,
        }
    }

    /// One attestation; returns the server's time (Login and Answer handling only).
    fn attest(&self) -> (Duration, SessionId) {
        let start = Instant::now();
        handle(&self.handler, &self.login);
        let mut server = start.elapsed();
        let challenge = match self.rec.take_one() {
            Downlink::Challenge(c) => c,
            other => panic!("{}: Login answered with {other:?}", self.dev.case),
        };
        let answer = self.dev.answer_frame(&challenge, &transcript(&self.login));
        let start = Instant::now();
        handle(&self.handler, &answer);
        server += start.elapsed();
        match self.rec.take_one() {
            Downlink::Result(Outcome::Accepted(a)) => assert!(!a.svid.is_empty()),
            other => panic!("{}: Answer answered with {other:?}", self.dev.case),
        }
        (server, challenge.session)
    }
}

/// The registry a daemon would run with: SQLite in `dir`, its writer thread started.
fn sqlite_registry(dir: &Path, name: &str) -> (Writer, WriterHandle) {
    let store = SqliteStore::open(&dir.join(format!("{name}.db"))).unwrap();
    Writer::start(
        Box::new(store),
        &RegistryConfig::new(Backend::Sqlite(dir.join(format!("{name}.db")))),
        "node-1".to_owned(),
        Arc::new(BanList::new()),
    )
    .unwrap()
}

fn runs(dir: &Path) -> (Vec<(String, Run)>, Vec<Writer>) {
    let mut out = Vec::new();
    let mut writers = Vec::new();
    for case in ["rsa2048", "p256"] {
        let dev = Device::new(case);
        let allow = policy(&format!(
            "            allowedHashes: [\"{}\"]\n",
            dev.ek_hash()
        ));
        out.push((format!("{case}_allowlist"), Run::new(dev, &allow, None)));
        // The same with the registry on (SQLite, the default): what the workers pay to queue
        // each outcome; the writer thread writes on the other core meanwhile.
        let dev = Device::new(case);
        let allow = policy(&format!(
            "            allowedHashes: [\"{}\"]\n",
            dev.ek_hash()
        ));
        let mut run = Run::new(dev, &allow, None);
        let (writer, handle) = sqlite_registry(dir, case);
        run.handler.registry = Some(handle);
        writers.push(writer);
        out.push((format!("{case}_allowlist_registry"), run));
        let dev = Device::new(case);
        let (cert, chain) = ek_chain(dir, &dev);
        out.push((
            format!("{case}_ek_cert"),
            Run::new(dev, &policy(&chain), Some(&cert)),
        ));
    }
    (out, writers)
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, writers) = runs(tmp.path());
    let mut g = c.benchmark_group("attest_rate");
    g.throughput(Throughput::Elements(1));
    for (name, run) in &runs {
        // The setup must describe a passing attestation, with a fresh session each time.
        let (_, first) = run.attest();
        assert_ne!(run.attest().1, first, "{name}: session ids repeat");
        g.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run.attest().0).sum())
        });
    }
    g.finish();
    for w in &writers {
        w.stop(Duration::from_secs(30));
    }

    v2_steps(c, &runs);

    let ak_name = testdata::vector("ak.name");
    let secret = testdata::vector("secret.bin");
    let mut g = c.benchmark_group("make_credential_only");
    g.throughput(Throughput::Elements(1));
    for case in ["rsa2048", "p256"] {
        let ek_public = testdata::vector(format!("{case}/ek.tpm2b_public"));
        g.bench_function(case, |b| {
            b.iter(|| {
                let ek = Public::decode(black_box(&ek_public)).unwrap();
                make_credential(&ek, &ak_name, &secret, &mut SystemRandom).unwrap()
            })
        });
    }
    g.finish();
}

/// The steps wire version 2 adds, each alone (see the module docs).
fn v2_steps(c: &mut Criterion, runs: &[(String, Run)]) {
    let (_, run) = runs
        .iter()
        .find(|(name, _)| name == "rsa2048_ek_cert")
        .unwrap();
    let login = &run.login;
    let t = transcript(login);
    handle(&run.handler, login);
    let Downlink::Challenge(challenge) = run.rec.take_one() else {
        panic!("no Challenge")
    };
    let (authority, _, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    let secret = [0x5a; 32];
    let mac = sign::answer_mac(&secret, &t, &challenge.session, "node-1").unwrap();
    let mut g = c.benchmark_group("v2_steps");
    g.bench_function("transcript", |b| b.iter(|| transcript(black_box(login))));
    g.bench_function("sign_challenge", |b| {
        let mut ch = challenge.clone();
        b.iter(|| {
            authority
                .sign_challenge("bench-device", None, black_box(&mut ch))
                .unwrap()
        })
    });
    g.bench_function("mac_check", |b| {
        b.iter(|| {
            assert!(sign::answer_mac_matches(
                black_box(&secret),
                &t,
                &challenge.session,
                "node-1",
                &mac
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
