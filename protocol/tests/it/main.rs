//! The protocol crate's integration tests, one binary: golden frames, round trips, decode
//! errors, limits, reject codes and topics.

mod common;
mod decode_errors;
mod golden;
mod limits;
mod reject_codes;
mod roundtrip;
mod topic;
