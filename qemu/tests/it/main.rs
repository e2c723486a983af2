//! The fleet crate's tests, one binary: everything that needs the agent and the server
//! together (in process through [`ekattest_fleet::flow`], or as processes), the fleet modes,
//! the fault proxies, the attack suites, NATS scale-out and the QEMU boards. All but the
//! board profiles need the `it` feature (swtpm, mosquitto, nats-server, qemu on PATH).

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly with the missing tool or the unexpected value"
)]

#[cfg(feature = "it")]
mod attack_kit;
#[cfg(feature = "it")]
mod attacks;
#[cfg(feature = "it")]
mod attest;
mod boards;
#[cfg(feature = "it")]
mod broker;
#[cfg(feature = "it")]
mod common;
#[cfg(feature = "it")]
mod credential_swtpm;
#[cfg(feature = "it")]
mod e2e;
#[cfg(feature = "it")]
mod faults;
#[cfg(feature = "it")]
mod fleet;
#[cfg(feature = "it")]
mod flood;
#[cfg(feature = "it")]
mod harness;
#[cfg(feature = "it")]
mod load;
#[cfg(feature = "it")]
mod mitm;
#[cfg(feature = "it")]
mod mqtt_peer;
#[cfg(feature = "it")]
mod nats_acl;
#[cfg(feature = "it")]
mod registry;
#[cfg(feature = "it")]
mod scaleout;
#[cfg(feature = "it")]
mod tis_spi;
#[cfg(feature = "it")]
mod vm;
