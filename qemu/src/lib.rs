//! ekattest-fleet: the test and fleet harness of the workspace.
//!
//! Today it holds [`swtpm`]: software TPM devices provisioned with a per-run certificate
//! authority, started on free loopback ports and stopped on drop, plus command-line oracles
//! (openssl, tpm2-tools) that the agent's and server's integration tests compare against.
//! Later it becomes the fleet simulator (many devices, broker, QEMU boards).
//!
//! [`flow`] runs one device's attestation in process (agent library on a swtpm device, server
//! library, protocol frames in between) and [`demo`] is the README's fleet demo on top of it.
//!
//! It shells out to swtpm, swtpm_setup, swtpm_localca, tpm2-tools and openssl, and must never
//! be linked into the agent or server binaries (it depends on both; they use it only as a
//! dev-dependency for their integration tests). It
//! never changes the process's working directory or environment and never binds fixed
//! ports, so many devices can be provisioned from parallel tests.

pub mod broker;
pub mod daemons;
pub mod demo;
pub mod flow;
pub mod process;
pub mod swtpm;

pub use swtpm::{
    Ak, Ca, Device, EkKind, Error, ProvisionOptions, Result, openssl_public_hash,
    tpm2_makecredential,
};
