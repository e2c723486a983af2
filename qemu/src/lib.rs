//! ekattest-fleet: the test and fleet harness of the workspace, and the `ekattest-fleet`
//! program.
//!
//! - [`swtpm`]: software TPM devices provisioned with a per-run certificate authority,
//!   started on free loopback ports and stopped on drop, plus command-line oracles (openssl,
//!   tpm2-tools) that the agent's and server's integration tests compare against.
//! - [`nats`]: a local nats-server cluster (MQTT listeners, JetStream) for scale-out tests.
//! - [`broker`], [`daemons`], [`process`]: mosquitto and the `ekattest-server` /
//!   `ekattest-agent` binaries as watched child processes.
//! - [`stage`]: what every fleet mode attests against (bus, SVID CA, policy, servers, fault
//!   proxy and scheduler), started once and stopped on drop; [`error`]: the modes' error.
//! - [`fleet`]: `ekattest-fleet run` (and `demo`), the process fleet: N swtpm devices, K
//!   servers, N agent processes; [`load`]: the software-TPM load generator; [`report`]: the
//!   summary table, JSON report and latency histogram both produce.
//! - [`boards`]: board profiles (`boards/*.toml`) and `ekattest-fleet build-agent`, the
//!   agent's cross build for a board.
//! - [`flow`]: one device's attestation in process (agent library on a swtpm device, server
//!   library, protocol frames in between), for tests.
//! - [`version`]: the `--version` convention, checked by each binary's crate.
//!
//! It shells out to swtpm, swtpm_setup, swtpm_localca, tpm2-tools and openssl, and must never
//! be linked into the agent or server binaries (it depends on both; they use it only as a
//! dev-dependency for their integration tests). It
//! never changes the process's working directory or environment and never binds fixed
//! ports, so many devices can be provisioned from parallel tests.

pub mod boards;
pub mod broker;
pub mod daemons;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod flow;
pub mod load;
pub mod nats;
pub mod process;
pub mod progress;
pub mod report;
pub mod soft_tpm;
pub mod stage;
pub mod swtpm;
pub mod version;
pub mod vm;

pub use swtpm::{
    Ak, Ca, Device, EkKind, Error, ProvisionOptions, Result, openssl_public_hash,
    tpm2_makecredential,
};
