//! ekattest-fleet: the fleet simulation tool (the `ekattest-fleet` program) and the tests
//! that need the agent and the server together.
//!
//! - [`stage`]: what every fleet mode attests against (bus, SVID CA, policy, servers, fault
//!   proxy and scheduler), started once and stopped on drop; [`error`]: the modes' error.
//! - [`fleet`]: `ekattest-fleet run` (and `demo`), the process fleet: N swtpm devices, K
//!   servers, N agent processes; [`load`]: the software-TPM load generator; [`report`]: the
//!   summary table, JSON report and latency histogram both produce.
//! - [`vm`]: the QEMU board fleet.
//! - [`boards`]: board profiles (`boards/*.toml`) and `ekattest-fleet build-agent`, the
//!   agent's cross build for a board.
//! - [`faults`]: the fault proxies and schedule.
//! - [`flow`]: one device's attestation in process (agent library on a swtpm device, server
//!   library, protocol frames in between), for tests.
//!
//! The devices, brokers, NATS clusters and daemon processes come from `ekattest-testkit`
//! (re-exported here as [`swtpm`], [`broker`], [`nats`], [`daemons`], [`process`],
//! [`version`]). This crate sits at the top of the workspace: it depends on the agent, the
//! server and the kit, and nothing depends on it.

pub mod boards;
pub mod error;
pub mod faults;
pub mod fleet;
pub mod flow;
pub mod load;
pub mod progress;
pub mod report;
pub mod soft_tpm;
pub mod stage;
pub mod vm;

pub use ekattest_testkit::{
    Ak, Ca, Device, EkKind, Error, ProvisionOptions, Result, openssl_public_hash,
    tpm2_makecredential,
};
pub use ekattest_testkit::{broker, daemons, nats, process, swtpm, version};
