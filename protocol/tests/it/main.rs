//! The protocol crate's integration tests, one binary: golden frames, round trips, decode
//! errors, limits, reject codes and topics.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly with the missing tool or the unexpected value"
)]

mod common;
mod decode_errors;
mod golden;
mod limits;
mod reject_codes;
mod roundtrip;
mod topic;
