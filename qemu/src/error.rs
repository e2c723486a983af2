//! The fleet crate's error: what the fleet modes (`run`, `load`, `vm`), their [`Stage`]
//! and their report could not do. Each variant names the failed step and carries its
//! context (file, program, broker URL) and, where there is one, the underlying error as
//! `source`; the message is printed to the user as is, so it says what to do where it can.
//!
//! The fixtures' own errors ([`crate::process::Error`], [`crate::swtpm::Error`],
//! [`crate::boards::Error`]) are wrapped with the step that needed them, never flattened to
//! strings. This module never prints or logs.
//!
//! [`Stage`]: crate::stage::Stage

use std::path::PathBuf;

/// A boxed error from a library whose own error type the fleet does not name (the server's
/// SVID authority, the agent's trust bundle, PEM parsing).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result of the fleet modes.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a fleet run could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line or an option combination is invalid; the message names the option.
    #[error("{0}")]
    Usage(String),
    /// A setting the run cannot work with (board profile, key pool size, policy size).
    #[error("{0}")]
    Config(String),
    /// The folder of this program is unknown, so its sibling binaries cannot be found.
    #[error("cannot find the folder of this program: pass --bin-dir")]
    BinDir,
    /// A binary the run starts is not where it was looked for.
    #[error(
        "{} is missing: build it beside ekattest-fleet ({build}) or pass --bin-dir",
        path.display()
    )]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
        /// The command that builds it.
        build: &'static str,
    },
    /// A file system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What we tried to do (`read`, `write`, `create`, `copy`, `run`).
        op: &'static str,
        /// The file, folder or program.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Copying a file failed.
    #[error("cannot copy {} to {}: {source}", from.display(), to.display())]
    Copy {
        /// The source file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A temporary folder could not be created.
    #[error("cannot create {what}: {source}")]
    TempDir {
        /// Which folder (`the run folder`, `a temporary folder`).
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A thread or an in-process service (the MQTT fault proxy, the fault scheduler) could
    /// not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was started.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A child process of the stage (mosquitto, the NATS cluster, an `ekattest-server`)
    /// could not be started.
    #[error("cannot start {what}: {source}")]
    Process {
        /// The process (`mosquitto`, `ekattest-server node-2`).
        what: String,
        /// Why.
        #[source]
        source: crate::process::Error,
    },
    /// A process helper failed (a program not installed, a key file not made private).
    #[error(transparent)]
    Harness(#[from] crate::process::Error),
    /// A broker URL the run cannot use; the message names the option and the URL.
    #[error("{0}")]
    BrokerUrl(String),
    /// The broker's host name did not resolve.
    #[error("cannot resolve the broker {url:?}: {source}")]
    BrokerResolve {
        /// The broker URL.
        url: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The broker's host name resolved to no address.
    #[error("the broker {url:?} has no address")]
    BrokerAddress {
        /// The broker URL.
        url: String,
    },
    /// The NATS cluster came up without a node.
    #[error("the NATS cluster has no node")]
    NoNatsNode,
    /// A certificate authority (the SVID CA, the swtpm CA) or its certificates could not be
    /// created, read or checked.
    #[error("{what}: {source}")]
    Ca {
        /// The failed step (`cannot create the SVID CA`).
        what: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// `ekattestctl` ran and failed.
    #[error("ekattestctl {what} failed: {stderr}")]
    Ctl {
        /// The subcommand (`ca create`).
        what: &'static str,
        /// Its standard error.
        stderr: String,
    },
    /// A software TPM (swtpm) could not be provisioned or read.
    #[error("{what}: {source}")]
    Tpm {
        /// The failed step (`cannot provision a swtpm`).
        what: String,
        /// Why.
        #[source]
        source: crate::swtpm::Error,
    },
    /// The load generator's simulated EKs or their policy could not be made.
    #[error("{0}")]
    Keys(String),
    /// A simulated device thread of the load generator, its MQTT link or the bogus login
    /// flood failed.
    #[error("{0}")]
    Device(String),
    /// The VM fleet's guest image (apt, kernel modules, initramfs) could not be prepared.
    #[error("{0}")]
    Image(String),
    /// A VM board's swtpm or QEMU could not be started.
    #[error("board {board}: cannot start {what}: {source}")]
    Boot {
        /// The board's index.
        board: usize,
        /// `swtpm` or `QEMU`.
        what: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A board profile could not be loaded or used.
    #[error(transparent)]
    Board(#[from] crate::boards::Error),
    /// A timed fault could not act on its target (no broker of the run's own, no server).
    #[error("{0}")]
    Fault(String),
    /// The report's plot could not be written.
    #[error("cannot {op} the plot {}: {source}", path.display())]
    Plot {
        /// `create` or `write`.
        op: &'static str,
        /// The PNG file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SIGINT or SIGTERM arrived: the run stopped early.
    #[error("interrupted{}", step.map(|s| format!(" while {s}")).unwrap_or_default())]
    Interrupted {
        /// The step it stopped (`provisioning`), if not the attestation phase.
        step: Option<&'static str>,
    },
}

impl Error {
    /// [`Error::Interrupted`] in the attestation phase.
    pub(crate) const INTERRUPTED: Self = Self::Interrupted { step: None };

    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// Reads `path` as text.
pub(crate) fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::io("read", path))
}

/// Reads `path`.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io("read", path))
}

/// Writes `data` to `path`.
pub(crate) fn write(path: &std::path::Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).map_err(Error::io("write", path))
}

/// Creates `path` and its parents.
pub(crate) fn create_dir_all(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(Error::io("create", path))
}
