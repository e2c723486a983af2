//! Helpers shared by the fuzz targets in `fuzz_targets/`: test data from `../shared`, and the
//! frame round-trip check of STYLE.md section 8.
//!
//! Fuzz targets assert invariants, so this crate panics on purpose (a panic is a finding);
//! it must never be a dependency of the workspace crates.

use std::fmt::Debug;

use ekattest_protocol::msg::Message;
use ekattest_protocol::{decode, encode};

/// Root of the shared test data (`../shared/testdata` beside the repository).
pub const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

/// Reads `../shared/testdata/<rel>`; panics naming the file if it is missing (a fuzz target
/// without its fixed inputs would test nothing).
pub fn testdata(rel: &str) -> Vec<u8> {
    let path = format!("{TESTDATA}/{rel}");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("fuzz fixture {path} is missing ({e}): ../shared must sit beside the repository")
    })
}

/// The DER of every certificate in the PEM file `../shared/testdata/<rel>`.
pub fn testdata_pem(rel: &str) -> Vec<Vec<u8>> {
    let text = testdata(rel);
    let blocks = pem::parse_many(&text).unwrap_or_else(|e| panic!("{rel}: not PEM: {e}"));
    assert!(!blocks.is_empty(), "{rel}: no PEM block");
    blocks.into_iter().map(|b| b.into_contents()).collect()
}

/// If `frame` decodes as `M`, re-encodes it and checks that the result fits `max` bytes
/// (the direction's FRAME_MAX), is no longer than the input, and decodes to the same message.
/// Returns the message.
pub fn round_trip<M: Message + PartialEq + Debug>(frame: &[u8], max: usize) -> Option<M> {
    let msg = decode::<M>(frame).ok()?;
    let mut buf = vec![0u8; max];
    let again = match encode(&msg, &mut buf) {
        Ok(again) => again,
        Err(e) => panic!("a decoded message must fit its FRAME_MAX of {max} bytes: {e:?}"),
    };
    assert!(
        again.len() <= frame.len(),
        "re-encoding grew the frame from {} to {} bytes",
        frame.len(),
        again.len()
    );
    assert_eq!(
        decode::<M>(again).as_ref(),
        Ok(&msg),
        "round trip changed the message"
    );
    Some(msg)
}
