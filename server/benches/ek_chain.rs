//! EK validation cost on the real STMicro chain, next to its signature verifications alone.
//!
//! `cargo bench -p ekattest-server --bench ek_chain`. Group `ek_chain`:
//! - `validate_stm`: [`ek::validate`] of the STM EK certificate (DER) with STM_RSA_RT as anchor
//!   and STM_RSA_05I as configured intermediate: parse the leaf, build and verify the path
//!   (2 RSA-2048 PKCS#1 SHA-256 signatures), the TCG profile, the public hash, attributes.
//! - `validate_stm_nv_blob_with_ek_public`: the same from the raw 1600-byte NV blob, with the
//!   EK public area compared to the certificate key (the daemon's real input).
//! - `signatures_only`: the two aws-lc-rs signature verifications of that path, with the CA
//!   keys parsed beforehand (as the trust store keeps them after the first login) and the
//!   signed bytes extracted beforehand: the asymmetric-crypto floor.
//! - `signatures_parsing_keys`: the same, parsing both CA keys for each verification (what
//!   the verifier did before it kept parsed CA keys; for reference).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::ek::{self, ChainOptions, EkPolicy, Evidence, ProfileMode, TrustStore};
use ekattest_testkit::testdata;
use x509_parser::prelude::{FromDer, X509Certificate};

fn ca(name: &str) -> Vec<u8> {
    pem::parse(testdata::real_ek(&format!("ca/{name}")))
        .unwrap()
        .into_contents()
}

/// TPM2B_PUBLIC of an L-1 RSA-2048 EK with `modulus`.
fn rsa_ek_public(modulus: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&[0x00, 0x01, 0x00, 0x0B, 0x00, 0x03, 0x00, 0xB2, 0x00, 0x20]);
    t.extend_from_slice(&[0x5A; 32]);
    t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00]);
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&u16::try_from(modulus.len()).unwrap().to_be_bytes());
    t.extend_from_slice(modulus);
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

/// (issuer key bits, signed TBS bytes, signature) of `child` under `issuer`.
fn signed_parts(child: &[u8], issuer: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (_, c) = X509Certificate::from_der(child).unwrap();
    let (_, i) = X509Certificate::from_der(issuer).unwrap();
    (
        i.tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .to_vec(),
        c.tbs_certificate.as_ref().to_vec(),
        c.signature_value.data.to_vec(),
    )
}

fn bench(c: &mut Criterion) {
    let leaf = testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
    let blob = testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.nv.bin");
    let (inter, root) = (ca("STM_RSA_05I.pem"), ca("STM_RSA_RT.pem"));
    let now = UNIX_EPOCH + Duration::from_secs(1_717_200_000);
    let policy = EkPolicy {
        trust: Some(
            TrustStore::new(
                vec![root.clone()],
                vec![inter.clone()],
                ChainOptions::default(),
            )
            .unwrap(),
        ),
        profile: ProfileMode::Enforce,
        ..EkPolicy::default()
    };
    let (_, leaf_x509) = X509Certificate::from_der(&leaf).unwrap();
    let modulus = leaf_x509.public_key().parsed().unwrap();
    let x509_parser::public_key::PublicKey::RSA(rsa) = modulus else {
        panic!("STM EK is RSA")
    };
    let ek_public = rsa_ek_public(rsa.modulus.strip_prefix(&[0u8]).unwrap_or(rsa.modulus));
    let parts = [signed_parts(&leaf, &inter), signed_parts(&inter, &root)];

    let cert_only = Evidence {
        ek_cert: Some(&leaf),
        ek_chain: &[],
        ek_public: None,
    };
    let full = Evidence {
        ek_cert: Some(&blob),
        ek_chain: &[],
        ek_public: Some(Public::decode(&ek_public).unwrap()),
    };
    // Sanity: both inputs pass before they are timed.
    ek::validate(&policy, &cert_only, now).unwrap();
    ek::validate(&policy, &full, now).unwrap();

    let mut g = c.benchmark_group("ek_chain");
    g.bench_function("validate_stm", |b| {
        b.iter(|| ek::validate(black_box(&policy), black_box(&cert_only), now).unwrap());
    });
    g.bench_function("validate_stm_nv_blob_with_ek_public", |b| {
        b.iter(|| ek::validate(black_box(&policy), black_box(&full), now).unwrap());
    });
    let parsed: Vec<_> = parts
        .iter()
        .map(|(key, _, _)| ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key).unwrap())
        .collect();
    g.bench_function("signatures_only", |b| {
        b.iter(|| {
            for (key, (_, tbs, sig)) in parsed.iter().zip(&parts) {
                key.verify_sig(black_box(tbs), black_box(sig)).unwrap();
            }
        });
    });
    g.bench_function("signatures_parsing_keys", |b| {
        b.iter(|| {
            for (key, tbs, sig) in &parts {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, black_box(key))
                    .verify(black_box(tbs), black_box(sig))
                    .unwrap();
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
