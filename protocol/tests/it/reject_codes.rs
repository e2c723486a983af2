//! Reject codes: the product contract's strings verbatim, a complete `ALL`, and one wire
//! byte per code.
use ekattest_protocol::error::RejectCode;
use ekattest_protocol::msg::{Downlink, Outcome, Rejected, VERSION, decode, encode};

fn seed() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/seed/tpm-ek-attestation.txt"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("the product contract {path} is missing ({e}); it lives beside the repository")
    })
}

/// Codes whose operator string the product contract defines.
const FROM_SEED: &[RejectCode] = &[
    RejectCode::NoMatchingPolicy,
    RejectCode::EkNotTrusted,
    RejectCode::EkChain,
    RejectCode::ChallengeFailed,
    RejectCode::SecretMismatch,
    RejectCode::UnknownSession,
    RejectCode::PolicyNotFound,
];

#[test]
fn seed_strings_are_verbatim() {
    let seed = seed();
    for code in FROM_SEED {
        assert!(
            seed.contains(code.as_str()),
            "{code:?}: {:?} is not in the seed",
            code.as_str()
        );
        assert_eq!(code.to_string(), code.as_str());
    }
}

#[test]
fn our_strings_are_as_specified() {
    let expected = [
        (RejectCode::Busy, "server busy"),
        (RejectCode::Malformed, "malformed message"),
        (
            RejectCode::AkRejected,
            "attestation key does not meet the requirements",
        ),
        (
            RejectCode::EkMismatch,
            "EK public key does not match the EK certificate",
        ),
        (
            RejectCode::TemplateAttribute,
            "SPIFFE ID template names an attribute the agent does not have",
        ),
        (RejectCode::SessionExpired, "session expired"),
    ];
    for (code, text) in expected {
        assert_eq!(code.to_string(), text);
    }
}

/// Each code is one wire byte equal to its index in `ALL`, and the byte after the last one
/// does not decode, so `ALL` lists every variant.
#[test]
fn all_is_complete_and_each_code_is_one_byte() {
    for (index, code) in RejectCode::ALL.iter().enumerate() {
        let msg = Downlink::Result(Outcome::Rejected(Rejected {
            code: *code,
            message: heapless::String::new(),
        }));
        let mut buf = [0u8; 16];
        let frame = encode(&msg, &mut buf).unwrap();
        assert_eq!(frame, [VERSION, 1, 1, index as u8, 0], "{code:?}");
        assert_eq!(decode::<Downlink>(frame).unwrap(), msg);
    }
    let unknown = [VERSION, 1, 1, RejectCode::ALL.len() as u8, 0];
    assert!(decode::<Downlink>(&unknown).is_err());
}

#[test]
fn rejected_message_carries_code_and_detail() {
    let r = Rejected::new(RejectCode::UnknownSession);
    assert_eq!(r.message, "unknown session ID");
    let r = Rejected::with_detail(RejectCode::EkChain, "issuer not found");
    assert_eq!(
        r.message,
        "failed to verify EK certificate chain: issuer not found"
    );
    // Cut at a character boundary, never mid-character.
    let long = "é".repeat(400);
    let r = Rejected::with_detail(RejectCode::Malformed, &long);
    assert!(r.message.len() <= ekattest_protocol::limits::MESSAGE_MAX);
    assert!(r.message.len() >= ekattest_protocol::limits::MESSAGE_MAX - 1);
    assert!(r.message.starts_with("malformed message: é"));
}
