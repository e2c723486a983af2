//! What `svid-key: tpm` costs on swtpm, next to the software-key path in the same run.
//!
//! `cargo bench -p ekattest-fleet --features it --bench tpm_key` (needs swtpm and
//! swtpm_setup). Over the swtpm TCP socket, on one provisioned device (RSA-2048 EK):
//! - `login/software_key` (baseline): a P-256 key generated in memory, the Login's only key
//!   work; `login/tpm_key`: storage primary, TPM2_Create, TPM2_Load, AK, TPM2_Certify.
//! - `answer/software_key` (baseline): ActivateCredential through the salted session plus a
//!   software ECDSA proof of possession; `answer/tpm_key`: the same with TPM2_Sign (storage
//!   primary, TPM2_Load, Sign).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_agent::attest::{self, PopKey};
use ekattest_agent::daemon::identity::SvidKey;
use ekattest_agent::tpm::ak::{self, AkOptions};
use ekattest_agent::tpm::commands::Tpm;
use ekattest_agent::tpm::ek::{self, EkKind};
use ekattest_agent::tpm::key;
use ekattest_agent::tpm::stream::Stream;
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use ekattest_protocol::heapless;
use ekattest_protocol::msg::{Challenge, SessionId};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::credential::{SystemRandom, make_credential};

fn bench(c: &mut Criterion) {
    let ca = Ca::create().unwrap();
    let dev = Device::provision(
        &ca,
        &ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: false,
        },
    )
    .unwrap_or_else(|e| panic!("swtpm is required: {e}"));
    let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", dev.port()).unwrap());
    tpm.startup_clear().unwrap();
    tpm.flush_leftovers().unwrap();
    let endorsement = ek::discover(&mut tpm).unwrap();
    let ek = endorsement.pick(Some(EkKind::Rsa2048)).unwrap().clone();
    let opts = AkOptions::default();
    let ak = ak::read(&mut tpm, &opts).unwrap();
    let qd = [0x42; 32];

    let mut login = c.benchmark_group("login");
    login
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    login.bench_function("software_key", |b| {
        b.iter(|| black_box(SvidKey::generate().unwrap().spki_der().unwrap()));
    });
    login.bench_function("tpm_key", |b| {
        b.iter(|| black_box(key::create_certified(&mut tpm, &opts, &qd).unwrap()));
    });
    login.finish();

    let ek_public = Public::decode(&ek.public).unwrap();
    let cred = make_credential(&ek_public, &ak.name, &[0x5a; 32], &mut SystemRandom).unwrap();
    let challenge = Challenge {
        session: SessionId([7; 16]),
        node: heapless::String::try_from("node-1").unwrap(),
        credential_blob: heapless::Vec::from_slice(&cred.blob).unwrap(),
        encrypted_secret: heapless::Vec::from_slice(&cred.secret).unwrap(),
        expires_in: 300,
        transcript: [0x33; 32],
        signer: heapless::Vec::new(),
        signature: heapless::Vec::new(),
    };
    let t = [0x33; 32];
    let soft = SvidKey::generate().unwrap();
    let certified = key::create_certified(&mut tpm, &opts, &qd).unwrap();
    let mut answer = c.benchmark_group("answer");
    answer
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    answer.bench_function("software_key", |b| {
        b.iter(|| {
            let key = Some(PopKey::Software(soft.signing_key()));
            black_box(attest::answer(&mut tpm, &ek, &opts, &challenge, &t, key).unwrap())
        });
    });
    answer.bench_function("tpm_key", |b| {
        b.iter(|| {
            let key = Some(PopKey::Tpm(&certified.key));
            black_box(attest::answer(&mut tpm, &ek, &opts, &challenge, &t, key).unwrap())
        });
    });
    answer.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
