//! The device's side of wire version 2's Challenge: what an agent spends checking the
//! signer's ECDSA P-256 signature (ring, as the agent links it since issue 19) before it
//! touches the TPM, next to what the server spent signing it (aws-lc), in the same run.
//!
//! `cargo bench -p ekattest-fleet --bench challenge_verify`. It lives in the fleet crate
//! because it needs both libraries: the server's [`Authority`] signs, the agent's
//! [`TrustBundle`] verifies (the server's benches never link the agent). The Challenge
//! carries a real MakeCredential of the RSA-2048 known-answer vector.
//! - `challenge/sign_challenge` (baseline): the server's signature;
//! - `challenge/verify_challenge`: the agent's check of it.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_agent::daemon::identity::TrustBundle;
use ekattest_protocol::heapless;
use ekattest_protocol::msg::{Challenge, SessionId};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::credential::{SystemRandom, make_credential};
use ekattest_server::svid::Authority;
use ekattest_testkit::testdata;

fn bench(c: &mut Criterion) {
    let ek = testdata::make_credential("rsa2048", "ek.tpm2b_public");
    let ek = Public::decode(&ek).unwrap();
    // A Name: nameAlg SHA-256 (0x000B), then the digest.
    let mut ak_name = [0x22; 34];
    ak_name[..2].copy_from_slice(&[0x00, 0x0b]);
    let cred = make_credential(&ek, &ak_name, &[0x11; 32], &mut SystemRandom).unwrap();
    let t = [0x33; 32];
    let challenge = Challenge {
        session: SessionId([7; 16]),
        node: heapless::String::try_from("node-1").unwrap(),
        credential_blob: heapless::Vec::from_slice(&cred.blob).unwrap(),
        encrypted_secret: heapless::Vec::from_slice(&cred.secret).unwrap(),
        expires_in: 300,
        transcript: t,
        signer: heapless::Vec::new(),
        signature: heapless::Vec::new(),
    };
    let (authority, cert_pem, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    let mut signed = challenge.clone();
    authority
        .sign_challenge("bench-device", None, &mut signed)
        .unwrap();
    let bundle = TrustBundle::from_pem(cert_pem.into_bytes(), Path::new("bench-ca.pem")).unwrap();
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let signer = bundle.signer(&signed.signer, now).unwrap();

    let mut g = c.benchmark_group("challenge");
    g.bench_function("sign_challenge", |b| {
        let mut ch = challenge.clone();
        b.iter(|| {
            authority
                .sign_challenge("bench-device", None, black_box(&mut ch))
                .unwrap()
        })
    });
    g.bench_function("verify_challenge", |b| {
        b.iter(|| {
            signer
                .verify_challenge("bench-device", black_box(&signed), &t, now)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
