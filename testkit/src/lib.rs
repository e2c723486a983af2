//! ekattest-testkit: the fixtures the agent's, the server's and the fleet's tests stand on,
//! and the building blocks of the fleet tool.
//!
//! - [`swtpm`]: software TPM devices provisioned with a per-run certificate authority,
//!   started on free loopback ports and stopped on drop, plus command-line oracles (openssl,
//!   tpm2-tools) that tests compare our code against.
//! - [`broker`], [`nats`]: mosquitto and local nats-server clusters as watched processes.
//! - [`postgres`]: a private PostgreSQL cluster (Debian's binaries) on a free loopback port,
//!   for the server's registry.
//! - [`daemons`], [`process`]: the `ekattest-server` and `ekattest-agent` binaries (paths
//!   from the caller) as watched child processes with generated config files.
//! - [`testdata`]: the shared known-answer vectors and real EK certificates
//!   (`../shared/testdata`), and the openssl helper every test crate used to copy.
//! - [`version`]: the `--version` convention, checked by each binary's crate.
//!
//! Layering: the kit depends on `ekattest-protocol` only. The agent and the server
//! dev-depend on it; the fleet crate depends on it. Nothing here may import the agent, the
//! server or the fleet crate (`.ci/deps` enforces it), so a test that needs the agent and
//! the server together lives in the fleet crate's tests.
//!
//! It shells out to swtpm, swtpm_setup, swtpm_localca, tpm2-tools, mosquitto, nats-server,
//! PostgreSQL and openssl, and reports what to install when one is missing. It never
//! changes the process's working directory or environment and never binds fixed ports, so
//! many devices can be provisioned from parallel tests.

pub mod broker;
pub mod daemons;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod swtpm;
pub mod testdata;
pub mod version;

pub use swtpm::{
    Ak, Ca, Device, EkKind, Error, ProvisionOptions, Result, openssl_public_hash,
    tpm2_makecredential,
};
