//! Encode and decode of every message kind, and of a realistic Login (the STMicro ST33
//! RSA-2048 EK certificate, an RSA-2048 EK TPM2B_PUBLIC and a P-256 AK TPM2B_PUBLIC).
//!
//! `cargo bench -p ekattest-protocol --bench codec` (add `-- --quick` for a short run).
//! Reads `../shared/testdata` beside the repository and fails loudly if it is missing.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test code: a missing fixture or a broken invariant must fail loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::limits::FRAME_MAX;
use ekattest_protocol::msg::{
    Accepted, Answer, Attribute, AttributeName, Challenge, Downlink, Login, Message, Method,
    Outcome, Rejected, SessionId, Uplink, decode, encode,
};
use heapless::{String, Vec};

fn testdata(relative: &str) -> std::vec::Vec<u8> {
    let path = format!(
        "{}/../../shared/testdata/{relative}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("bench data {path} is missing ({e}); it lives in ../shared/testdata")
    })
}

fn v<T: Clone, const N: usize>(data: &[T]) -> Vec<T, N> {
    Vec::from_slice(data).unwrap()
}

fn s<const N: usize>(text: &str) -> String<N> {
    String::try_from(text).unwrap()
}

fn real_login() -> Uplink {
    Uplink::Login(Login {
        methods: v(&[Method::TpmEk]),
        ek_public: v(&testdata("make-credential/rsa2048/ek.tpm2b_public")),
        ek_cert: Some(v(&testdata("real-ek/leaf/stm-st33htphahb4-rsa2048.der"))),
        ek_chain: Vec::new(),
        ak_public: v(&testdata("make-credential/ak.tpm2b_public")),
        svid_key: Some(v(&[0x30; 91])),
        key_certify: None,
        nonce: [0x5a; 16],
        signer_hint: Some([0x2a; 8]),
    })
}

fn answer() -> Uplink {
    Uplink::Answer(Answer {
        session: SessionId([7; 16]),
        mac: [0x3c; 32],
        pop: Some(v(&[0x30; 71])),
    })
}

fn challenge() -> Downlink {
    Downlink::Challenge(Challenge {
        session: SessionId([7; 16]),
        node: s("server-0"),
        credential_blob: v(&testdata(
            "make-credential/rsa2048/expected_credential_blob.tpm2b_id_object",
        )),
        encrypted_secret: v(&testdata(
            "make-credential/rsa2048/expected_secret.tpm2b_encrypted_secret",
        )),
        expires_in: 300,
        transcript: [0x11; 32],
        signer: Vec::new(),
        signature: v(&[0x30; 71]),
    })
}

fn accepted() -> Downlink {
    let attr = |name, value: &str| Attribute {
        name,
        value: s(value),
    };
    Downlink::Result(Outcome::Accepted(Accepted {
        spiffe_id: s(
            "spiffe://example.org/agents/tpm/id:53544D20/de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab",
        ),
        attributes: v(&[
            attr(
                AttributeName::PublicHash,
                "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab",
            ),
            attr(
                AttributeName::SerialNumber,
                "4cbd0fe61ee762edb28d50b268fc3586ff3d5e82",
            ),
            attr(AttributeName::Manufacturer, "id:53544D20"),
            attr(AttributeName::Model, "ST33HTPHAHB4"),
            attr(AttributeName::Version, "73.4"),
        ]),
        svid: v(&[0x30; 600]),
        signature: v(&[0x30; 71]),
    }))
}

fn rejected() -> Downlink {
    Downlink::Result(Outcome::Rejected(Rejected::new(RejectCode::EkNotTrusted)))
}

fn bench_kind<M: Message>(c: &mut Criterion, name: &str, msg: &M) {
    let mut buf = [0u8; FRAME_MAX];
    let frame = encode(msg, &mut buf).unwrap().to_vec();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("encode", |b| {
        let mut out = [0u8; FRAME_MAX];
        b.iter(|| encode(black_box(msg), black_box(&mut out)).map(<[u8]>::len));
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode::<M>(black_box(&frame)).is_ok());
    });
    group.finish();
    println!("{name}: {} bytes", frame.len());
}

fn codec(c: &mut Criterion) {
    bench_kind(c, "login_stm_rsa2048", &real_login());
    bench_kind(c, "answer", &answer());
    bench_kind(c, "challenge_rsa2048", &challenge());
    bench_kind(c, "accepted", &accepted());
    bench_kind(c, "rejected", &rejected());
}

criterion_group!(benches, codec);
criterion_main!(benches);
