//! The agent's integration tests, one binary (`cargo test -p ekattest-agent --features it`):
//! the agent library and binary against real swtpm devices, mosquitto, openssl and
//! tpm2-tools from `ekattest-testkit`, and a fake server built on the protocol crate alone.
//! Tests that need the real server live in the fleet crate's tests.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly with the missing tool or the unexpected value"
)]

mod cli;
mod daemon;
mod failover;
mod fake;
mod hostile;
mod swtpm;
