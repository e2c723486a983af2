//! ekattest device agent library: raw TPM 2.0 access, EK discovery, the AK and
//! ActivateCredential, and the operator commands built on them.
//!
//! The agent is synchronous and small: it talks to the TPM through [`tpm::Transport`]
//! (kernel character device or swtpm socket) and marshals every command itself with
//! `tpm2-protocol` in [`tpm::commands`]. TPM public areas, Names and the EK fingerprint
//! (`tpm_ek.public_hash`) come from `ekattest_protocol::{tpm, spki}`, shared with the server.
//! [`daemon`] is the `run` subcommand: attestation over MQTT, the SVID and its renewal.
//! Library code never panics on input from the TPM, a certificate, a file or the broker, and
//! never reads environment variables or global state: `main` wires things together.

pub mod attest;
pub mod cert;
pub mod daemon;
pub mod ecdsa;
pub mod error;
pub mod logging;
pub mod ops;
pub mod spec;
pub mod tpm;
