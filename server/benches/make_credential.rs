//! MakeCredential cost per EK type, next to its asymmetric operation alone.
//!
//! `cargo bench -p ekattest-server --bench make_credential`. Groups: rsa2048, rsa3072, p256, p384;
//! in each, `make_credential` (production path, SystemRandom), `asymmetric_only` (aws-lc
//! RSA-OAEP encrypt of a seed with a pre-parsed key, or ECDH: ephemeral key, its public point,
//! agreement) and `fixed_rng` (the deterministic known-answer path, for reference).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, UnparsedPublicKey};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_protocol::spki::{PublicKey, SPKI_MAX};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::credential::{FixedRandom, SystemRandom, make_credential};
use ekattest_testkit::testdata;

/// TPM2B_PUBLIC of an H-6 style RSA-3072 EK (SHA-384, AES-256-CFB) for `modulus`.
fn rsa3072_ek(modulus: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for v in [0x0001u16, 0x000C] {
        t.extend_from_slice(&v.to_be_bytes());
    }
    t.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
    t.extend_from_slice(&48u16.to_be_bytes());
    t.extend_from_slice(&[0xAB; 48]);
    for v in [0x0006u16, 256, 0x0043, 0x0010, 3072] {
        t.extend_from_slice(&v.to_be_bytes());
    }
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&384u16.to_be_bytes());
    t.extend_from_slice(modulus);
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

fn rsa3072_public() -> Vec<u8> {
    use aws_lc_rs::encoding::AsDer;
    let key = PrivateDecryptingKey::generate(KeySize::Rsa3072).unwrap();
    let der = key.public_key().as_der().unwrap();
    let PublicKey::Rsa { modulus, .. } = PublicKey::from_spki_der(der.as_ref()).unwrap() else {
        panic!("not RSA")
    };
    let start = modulus.iter().position(|&b| b != 0).unwrap();
    rsa3072_ek(&modulus[start..])
}

fn bench(c: &mut Criterion) {
    let ak_name = testdata::vector("ak.name");
    let secret = testdata::vector("secret.bin");
    let cases = [
        ("rsa2048", testdata::vector("rsa2048/ek.tpm2b_public")),
        ("rsa3072", rsa3072_public()),
        ("p256", testdata::vector("p256/ek.tpm2b_public")),
        ("p384", testdata::vector("p384/ek.tpm2b_public")),
    ];
    for (case, ek_bytes) in &cases {
        let ek = Public::decode(ek_bytes).unwrap();
        let mut g = c.benchmark_group(format!("make_credential/{case}"));
        g.bench_function("make_credential", |b| {
            b.iter(|| {
                make_credential(black_box(&ek), &ak_name, &secret, &mut SystemRandom).unwrap()
            })
        });
        match ek.key {
            PublicKey::Rsa { .. } => {
                let mut spki = [0u8; SPKI_MAX];
                let der = ek.key.spki_der(&mut spki).unwrap();
                let key = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(der).unwrap())
                    .unwrap();
                let (alg, len) = if *case == "rsa3072" {
                    (&OAEP_SHA384_MGF1SHA384, 48)
                } else {
                    (&OAEP_SHA256_MGF1SHA256, 32)
                };
                let seed = vec![0x11u8; len];
                let mut out = vec![0u8; key.ciphertext_size()];
                g.bench_function("asymmetric_only", |b| {
                    b.iter(|| {
                        key.encrypt(alg, black_box(&seed), &mut out, Some(b"IDENTITY\0"))
                            .unwrap()
                            .len()
                    })
                });
                let oaep_seed = vec![0x22u8; len];
                g.bench_function("fixed_rng", |b| {
                    b.iter(|| {
                        let mut rng = FixedRandom::new([seed.clone(), oaep_seed.clone()]);
                        make_credential(&ek, &ak_name, &secret, &mut rng).unwrap()
                    })
                });
            }
            PublicKey::Ecc { curve, x, y } => {
                let alg = if curve.field_len() == 32 {
                    &ECDH_P256
                } else {
                    &ECDH_P384
                };
                let mut peer = vec![0x04];
                peer.extend_from_slice(x);
                peer.extend_from_slice(y);
                g.bench_function("asymmetric_only", |b| {
                    b.iter(|| {
                        let eph = agreement::PrivateKey::generate(alg).unwrap();
                        let q = eph.compute_public_key().unwrap();
                        let z =
                            agreement::agree(&eph, UnparsedPublicKey::new(alg, &peer), (), |z| {
                                Ok(z[0])
                            })
                            .unwrap();
                        (q.as_ref()[1], z)
                    })
                });
                let scalar = testdata::vector(format!("{case}/ecc_ephemeral_scalar.bin"));
                g.bench_function("fixed_rng", |b| {
                    b.iter(|| {
                        let mut rng = FixedRandom::new([scalar.clone()]);
                        make_credential(&ek, &ak_name, &secret, &mut rng).unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
