//! swtpm test devices: a per-run certificate authority, provisioned software TPMs on free
//! loopback ports, and command-line oracles (openssl, tpm2-tools) to test our code against.
//!
//! - [`Ca`] ([`ca`]): a private swtpm-localca in a temporary directory whose root certificate
//!   is the trust anchor for every EK certificate it signs.
//! - [`Device`] ([`device`]): one swtpm, provisioned with `swtpm_setup` (RSA and P-384 EKs
//!   with certificates, optionally a P-256 EK certificate at 0x01C0000A), running on
//!   `127.0.0.1`, stopped and deleted on drop.
//! - [`oracle`]: independent implementations (openssl's public-key hash, tpm2-tools'
//!   MakeCredential/ActivateCredential) that tests compare our code with.
//!
//! This module shells out to the real tools and reports what to install when one is missing.
//! It must never touch `/var/lib/swtpm-localca` or the user's swtpm configuration, never
//! change the process's working directory or environment (devices are provisioned from many
//! threads at once), never bind a fixed port, and never leave an swtpm process running.

pub mod ca;
pub mod device;
pub mod oracle;
mod p256;
mod ports;
pub(crate) mod tool;
pub mod vm;

use std::path::PathBuf;

pub use ca::Ca;
pub use device::{Device, EkKind, ProvisionOptions};
pub use oracle::{Ak, openssl_public_hash, tpm2_makecredential};

/// Result of the harness operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while provisioning, running or querying an swtpm device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required program is not on `PATH`.
    #[error("{tool} not found: apt-get install {package}")]
    ToolMissing {
        /// The program that was run.
        tool: &'static str,
        /// The Debian/Ubuntu package that provides it.
        package: &'static str,
    },
    /// A program could not be started for a reason other than being missing.
    #[error("cannot start {tool}")]
    Spawn {
        /// The program that was run.
        tool: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A program exited with a non-zero status.
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The full command line.
        command: String,
        /// Exit code or signal.
        status: String,
        /// What it wrote to stderr (trimmed, bounded).
        stderr: String,
    },
    /// A program did not finish in time and was killed.
    #[error("`{command}` did not finish within {seconds} s and was killed: {stderr}")]
    ToolTimeout {
        /// The full command line.
        command: String,
        /// The limit.
        seconds: u64,
        /// What it wrote to stderr before it was killed.
        stderr: String,
    },
    /// A file system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What we tried to do ("create", "read", "copy to", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// swtpm did not start or did not accept connections in time.
    #[error(
        "swtpm on 127.0.0.1:{port} did not become ready: {reason}; swtpm output in {}: {output}",
        log.display()
    )]
    NotReady {
        /// The server port it was asked to listen on.
        port: u16,
        /// Why we gave up.
        reason: String,
        /// The file holding swtpm's stdout and stderr.
        log: PathBuf,
        /// The tail of that file.
        output: String,
    },
    /// No pair of adjacent free loopback ports was found.
    #[error("no two adjacent free TCP ports on 127.0.0.1 after {attempts} attempts")]
    NoFreePorts {
        /// How many candidates were tried.
        attempts: u32,
    },
    /// The device has no EK certificate of this kind.
    #[error(
        "this device has no {kind} EK certificate (provision with the matching ProvisionOptions)"
    )]
    NoEkCert {
        /// The requested kind.
        kind: EkKind,
    },
    /// A tool produced output we could not interpret.
    #[error("unexpected output from {what}: {detail}")]
    Unexpected {
        /// The tool or file.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The caller passed an unusable argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}
