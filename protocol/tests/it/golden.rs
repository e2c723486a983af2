//! Golden frames: the wire bytes of one fixed message per kind, checked in as annotated hex
//! under `tests/golden/`. Any change to field order, enum order or encoding fails here.
use crate::common;

use common::{
    golden_accepted, golden_answer, golden_challenge, golden_login, golden_rejected, read_hex,
};
use ekattest_protocol::limits::FRAME_MAX;
use ekattest_protocol::msg::{Message, decode, encode};

fn golden_path(name: &str) -> String {
    format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"))
}

fn check<M: Message + PartialEq + std::fmt::Debug>(name: &str, msg: &M) {
    let path = golden_path(name);
    let golden = read_hex(&path);
    let mut buf = [0u8; FRAME_MAX];
    let encoded = encode(msg, &mut buf).unwrap();
    assert_eq!(
        hex::encode(encoded),
        hex::encode(&golden),
        "encoding of the {name} message differs from {path}: the wire format changed"
    );
    let decoded: M = decode(&golden).unwrap();
    assert_eq!(
        &decoded, msg,
        "{path} does not decode to the {name} message"
    );
}

#[test]
fn login_matches_golden_frame() {
    check("login", &golden_login());
}

#[test]
fn answer_matches_golden_frame() {
    check("answer", &golden_answer());
}

#[test]
fn challenge_matches_golden_frame() {
    check("challenge", &golden_challenge());
}

#[test]
fn accepted_matches_golden_frame() {
    check("accepted", &golden_accepted());
}

#[test]
fn rejected_matches_golden_frame() {
    check("rejected", &golden_rejected());
}

#[test]
fn golden_reader_ignores_comments_and_whitespace() {
    let dir = std::env::temp_dir().join(format!("ekattest-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.hex");
    std::fs::write(&path, "# c 0a\n01 02 # ff\n\t0A0b\n").unwrap();
    let bytes = read_hex(path.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bytes, [0x01, 0x02, 0x0a, 0x0b]);
}

/// The committed fuzz seed for a TPM-resident SVID key (`fuzz/seed-corpus.sh`, `kc_login`)
/// decodes as a Login carrying `svid_key` and `key_certify`, so the fuzzer starts inside the
/// server's certification check rather than at the decoder.
#[test]
fn fuzz_seed_for_a_tpm_key_login_carries_a_certification() {
    use ekattest_protocol::msg::Uplink;
    let path = format!(
        "{}/../fuzz/seeds/uplink/login-tpm-key",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let Uplink::Login(login) = decode::<Uplink>(&bytes).unwrap() else {
        panic!("{path} is not a Login");
    };
    let kc = login.key_certify.expect("key_certify");
    assert_eq!(login.svid_key.expect("svid_key").len(), 91);
    assert_eq!(&kc.attest[2..8], &[0xff, 0x54, 0x43, 0x47, 0x80, 0x17]);
    assert_eq!(&kc.public[6..10], &[0x00, 0x04, 0x04, 0x72]);
}
