//! ekattest wire protocol: the bytes that cross the broker between agent and server.
//!
//! This crate sits at the bottom of the workspace: the agent, the server and the fleet
//! harness all depend on it, and it depends on nothing of ours. It is `no_std` without
//! `alloc` so it builds for microcontrollers (`thumbv7em-none-eabi`) and so every field is
//! bounded by a constant in [`limits`]. It never logs and never panics on input: decoders
//! return errors that carry the numbers needed to diagnose them.
//!
//! - [`msg`]: the messages ([`msg::Uplink`], [`msg::Downlink`]) and the frame codec
//!   (a version byte, then postcard).
//! - [`limits`]: every size bound.
//! - [`topic`]: MQTT topic builders.
//! - [`error`]: decode/encode errors and the closed set of reject codes.
//! - [`tpm`]: TPM 2.0 structures: the bounded marshalling reader ([`tpm::marshal`]) and
//!   the public areas (TPM2B_PUBLIC) a Login carries, with their object Names
//!   ([`tpm::public`]). Agent and server both need them, so they live here, once.
//! - [`spki`]: the DER SubjectPublicKeyInfo of RSA and EC keys, whose SHA-256 is
//!   `tpm_ek.public_hash`.
//! - [`der`]: the one bounded DER reader and writer, and EK certificate NV blob trimming.
//! - [`broker_url`]: the `SCHEME://HOST[:PORT]` broker URLs of both daemons' configs.
//! - [`timestamp`]: the RFC 3339 `"time"` of both daemons' JSON log lines.
//! - [`spiffe`]: SPIFFE ID path syntax.
//! - [`mqtt`]: the MQTT 3.1.1 packets the agent speaks (its own small synchronous client).
#![no_std]
#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant, reason = "inline heapless; no Box")]

#[cfg(test)]
extern crate std;

pub mod broker_url;
pub mod der;
pub mod duration;
pub mod error;
pub mod hardening;
pub mod limits;
pub mod mqtt;
pub mod msg;
pub mod sign;
pub mod spiffe;
pub mod spki;
pub mod timestamp;
pub mod topic;
pub mod tpm;
pub mod yaml;

pub use error::{DecodeError, EncodeError, ErrorChain, RejectCode};
/// The `heapless` the message types are built from, so users name the same version.
pub use heapless;
pub use msg::{Downlink, Uplink, decode, encode};

/// `--version`'s line for the binary `$name`: `NAME VERSION (git COMMIT)`, where COMMIT is
/// the calling crate's `EKATTEST_GIT_COMMIT` (set by the shared `build/git_commit.rs`;
/// `unknown` outside a git checkout). A macro, so the version and commit are the caller's.
#[macro_export]
macro_rules! version_line {
    ($name:literal) => {
        concat!(
            $name,
            " ",
            env!("CARGO_PKG_VERSION"),
            " (git ",
            env!("EKATTEST_GIT_COMMIT"),
            ")"
        )
    };
}
