//! ekattest server library: everything between a received Login and a Result, without I/O.
//!
//! The daemon (MQTT wiring, a later issue) and the offline `ekattestctl` commands are thin
//! shells around this crate:
//! - [`config`]: the `AgentAttestation` policy document (seed format plus our extensions).
//! - [`policy`]: which policy applies to an agent's provided attestors.
//! - [`spiffe`]: SPIFFE ID templates and the SPIFFE ID path syntax.
//! - [`ek`]: EK validation: certificate chain, TCG EK profile, allow-list, attributes.
//! - [`ak`]: the attestation key checks done before MakeCredential.
//! - [`credential`]: TPM2_MakeCredential in software.
//! - [`session`]: challenge sessions (sans-IO; the caller passes the time).
//! - [`attest`]: the flow that ties them together: Login -> Challenge, Answer -> identity
//!   (sans-IO; the daemon and the demo drive it).
//! - [`daemon`]: the `ekattest-server` daemon: MQTT, workers, JSON logs, metrics, hot reload.
//! - [`registry`]: the fleet's memory: one record per EK, bans, the audit trail (SQLite or
//!   PostgreSQL), written off the attestation path in batches.
//! - [`svid`]: the trust domain CA: X.509-SVIDs, the signed Result, proof of possession.
//! - [`ctl`]: the `ekattestctl` commands (the binary parses the command words and calls them).
//!
//! Nothing here trusts the network: every input is parsed within limits and errors carry the
//! operator strings of the product contract.

#![forbid(unsafe_code)]

pub mod ak;
pub mod attest;
pub mod certify;
pub mod config;
pub mod credential;
pub mod ctl;
pub mod daemon;
pub mod ek;
pub mod policy;
pub mod registry;
pub mod session;
pub mod spiffe;
pub mod svid;
