//! The server's integration tests, one binary (`cargo test -p ekattest-server`): the
//! library against generated and real EK certificates and the known-answer vectors, and
//! (feature `it`) against swtpm devices, mosquitto and the `ekattest-server` binary from
//! `ekattest-testkit`. Tests that need the real agent live in the fleet crate's tests.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly with the missing tool or the unexpected value"
)]

mod config;
mod ctl;
#[cfg(feature = "it")]
mod daemon;
mod ek_generated;
mod ek_real;
mod ek_support;
#[cfg(feature = "it")]
mod ek_swtpm;
mod make_credential;
#[cfg(feature = "it")]
mod registry;
mod svid;
