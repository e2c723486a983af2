//! The fleet's memory: one record per EK (agent ids seen, attributes, SPIFFE ID, policy,
//! first and last attestation, count, last SVID, serving node, last failure), bans, and an
//! audit trail of every attestation outcome.
//!
//! - [`Store`]: what a backend does, synchronously, in transactions: [`sqlite`] (the embedded
//!   default, a file under `state-dir`) and [`postgres`] (one registry shared by several
//!   server nodes). [`schema`] holds the versioned migrations of both.
//! - [`Writer`]: the batching thread. Workers hand it [`Event`]s through a bounded queue and
//!   never wait on the database; it writes a batch per `flush-interval` (or per `batch-max`
//!   events) in one transaction, refreshes the [`BanList`] every `ban-refresh`, and prunes
//!   the audit trail past `audit-retention`.
//! - [`BanList`]: the bans in memory, read by the attestation path at Login (before any
//!   signature check) and Answer. A ban written by `ekattestctl agent ban` on any node is
//!   honoured by every node within `ban-refresh` plus one database round trip.
//!
//! What a crash loses: the events queued and not yet written, at most `flush-interval` of
//! attestations (or `batch-max` events, whichever comes first). A batch is one transaction:
//! it is written whole or not at all.

pub mod bans;
pub mod postgres;
pub mod schema;
pub mod sqlite;
mod writer;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use bans::{Ban, BanList, BanTarget};
pub use writer::{Writer, WriterHandle, WriterStats};

/// SHA-256 of the EK's DER SubjectPublicKeyInfo (`tpm_ek.public_hash`).
pub type EkHash = [u8; 32];

/// Unix seconds, the registry's time unit.
pub type UnixSeconds = i64;

/// `t` as Unix seconds (0 before 1970).
pub fn unix_seconds(t: SystemTime) -> UnixSeconds {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One attestation outcome, as a worker hands it to the [`Writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When the outcome was decided.
    pub at: UnixSeconds,
    /// The agent id (the topic's).
    pub agent: String,
    /// The EK's public hash, when the EK could be read.
    pub ek: Option<EkHash>,
    /// What happened.
    pub outcome: Outcome,
}

/// An attestation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent proved its TPM and got its identity.
    Accepted(Box<Accepted>),
    /// The Login or Answer was refused.
    Rejected {
        /// The reject code's metric label (`ek_chain`, `banned`, ...).
        code: String,
        /// The reason, as logged (never a secret).
        reason: String,
    },
}

/// What an accepted attestation records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The SPIFFE ID issued.
    pub spiffe_id: String,
    /// The policy that authorized it.
    pub policy: String,
    /// The `tpm_ek.*` attributes, full names, in the seed's order.
    pub attributes: Vec<(String, String)>,
    /// The X.509-SVID's serial number (hex), if one was issued.
    pub svid_serial: Option<String>,
    /// The X.509-SVID's notAfter, if one was issued.
    pub svid_not_after: Option<UnixSeconds>,
    /// The X.509-SVID as issued (DER; empty if none): the writer thread reads its serial and
    /// notAfter ([`Accepted::read_svid`]) so the workers never parse it.
    pub svid_der: Vec<u8>,
}

impl Accepted {
    /// Fills `svid_serial` and `svid_not_after` from `svid_der` (and drops the DER). An SVID
    /// that does not parse (it was made by this server: it should) leaves them empty.
    pub fn read_svid(&mut self) {
        let der = std::mem::take(&mut self.svid_der);
        if der.is_empty() {
            return;
        }
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) {
            self.svid_serial = Some(hex::encode(cert.tbs_certificate.raw_serial()));
            self.svid_not_after = Some(cert.validity().not_after.timestamp());
        }
    }
}

/// The last refusal recorded for an EK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The reject code's metric label.
    pub code: String,
    /// The reason, as logged.
    pub reason: String,
    /// When.
    pub at: UnixSeconds,
}

/// One device: everything the registry knows about one EK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The EK's public hash, hex.
    #[serde(with = "hex_hash")]
    pub ek: EkHash,
    /// Every agent id the EK was accepted under; the last one is the latest.
    pub agent_ids: Vec<String>,
    /// The `tpm_ek.*` attributes of the last accepted attestation.
    pub attributes: Vec<(String, String)>,
    /// The SPIFFE ID of the last accepted attestation.
    pub spiffe_id: Option<String>,
    /// The policy of the last accepted attestation.
    pub policy: Option<String>,
    /// The first accepted attestation.
    pub first_attested: Option<UnixSeconds>,
    /// The last accepted attestation.
    pub last_attested: Option<UnixSeconds>,
    /// Accepted attestations.
    pub count: u64,
    /// The last X.509-SVID's serial (hex).
    pub svid_serial: Option<String>,
    /// The last X.509-SVID's notAfter.
    pub svid_not_after: Option<UnixSeconds>,
    /// The node that served the last accepted attestation.
    pub node: Option<String>,
    /// The last refusal.
    pub last_failure: Option<Failure>,
}

impl Record {
    /// An EK's record before anything happened to it.
    pub fn new(ek: EkHash) -> Self {
        Self {
            ek,
            agent_ids: Vec::new(),
            attributes: Vec::new(),
            spiffe_id: None,
            policy: None,
            first_attested: None,
            last_attested: None,
            count: 0,
            svid_serial: None,
            svid_not_after: None,
            node: None,
            last_failure: None,
        }
    }

    /// Folds `event` (for this record's EK) into the record. Returns the agent id the EK was
    /// last accepted under, when `event` is an acceptance under another agent id within
    /// `window` of that one: a cloned or relayed device, or an agent id changed by hand.
    pub fn apply(&mut self, event: &Event, node: &str, window: Duration) -> Option<String> {
        match &event.outcome {
            Outcome::Accepted(a) => {
                let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
                let conflict = match (self.last_agent(), self.last_attested) {
                    (Some(previous), Some(last))
                        if previous != event.agent && event.at.saturating_sub(last) <= window =>
                    {
                        Some(previous.to_owned())
                    }
                    _ => None,
                };
                // The agent id accepted last goes last, so `last_agent` names it.
                self.agent_ids.retain(|x| *x != event.agent);
                self.agent_ids.push(event.agent.clone());
                self.attributes.clone_from(&a.attributes);
                self.spiffe_id = Some(a.spiffe_id.clone());
                self.policy = Some(a.policy.clone());
                self.first_attested.get_or_insert(event.at);
                self.last_attested = Some(self.last_attested.map_or(event.at, |l| l.max(event.at)));
                self.count += 1;
                if a.svid_serial.is_some() {
                    self.svid_serial.clone_from(&a.svid_serial);
                    self.svid_not_after = a.svid_not_after;
                }
                self.node = Some(node.to_owned());
                conflict
            }
            Outcome::Rejected { code, reason } => {
                self.last_failure = Some(Failure {
                    code: code.clone(),
                    reason: reason.clone(),
                    at: event.at,
                });
                None
            }
        }
    }

    /// The agent id of the last accepted attestation.
    pub fn last_agent(&self) -> Option<&str> {
        self.agent_ids.last().map(String::as_str)
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the trail (increasing).
    pub id: i64,
    /// When the outcome was decided.
    pub at: UnixSeconds,
    /// The node that decided it.
    pub node: String,
    /// The agent id.
    pub agent: String,
    /// The EK's public hash (hex), when known.
    pub ek: Option<String>,
    /// `accepted` or `rejected`.
    pub outcome: String,
    /// The reject code's label (rejections).
    pub code: Option<String>,
    /// The reason (rejections).
    pub reason: Option<String>,
    /// The SPIFFE ID issued (acceptances).
    pub spiffe_id: Option<String>,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Device records inserted or updated.
    pub records: usize,
    /// Audit lines appended.
    pub audit: usize,
    /// EKs accepted under a second agent id within the window: (EK, new agent id, previous).
    pub conflicts: Vec<(EkHash, String, String)>,
}

/// Why the registry failed. Each message names the database and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or reached.
    #[error("registry {db}: cannot open: {message}")]
    Open {
        /// The database (file path, or `postgres://host/db` without the password).
        db: String,
        /// Why.
        message: String,
    },
    /// The database was written by a newer server.
    #[error(
        "registry {db}: schema version {found} is newer than this server's {supported}: it \
         was written by a newer ekattest-server; upgrade this server, or point registry at \
         another database"
    )]
    TooNew {
        /// The database.
        db: String,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A query failed.
    #[error("registry {db}: {what}: {message}")]
    Query {
        /// The database.
        db: String,
        /// What was being done (`write a batch`, `read bans`...).
        what: &'static str,
        /// The database's message.
        message: String,
    },
    /// A stored value cannot be read back (edited by hand, or corrupt).
    #[error("registry {db}: {what}: stored value is not valid: {message}")]
    Corrupt {
        /// The database.
        db: String,
        /// Which value.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// What a backend does. Every method is one transaction.
pub trait Store: Send {
    /// The database, for messages (never with a password).
    fn name(&self) -> &str;

    /// Appends `events` (decided on `node`) to the audit trail and folds them into the
    /// device records, all in one transaction. Acceptances under a second agent id within
    /// `window` of the EK's last acceptance come back as conflicts.
    ///
    /// # Errors
    /// [`StoreError::Query`]: nothing of the batch was written.
    fn apply(
        &mut self,
        node: &str,
        events: &[Event],
        window: Duration,
    ) -> Result<Applied, StoreError>;

    /// Every ban.
    ///
    /// # Errors
    /// [`StoreError`] on a failed query or an unreadable row.
    fn bans(&mut self) -> Result<Vec<Ban>, StoreError>;

    /// Adds or replaces a ban.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    fn ban(&mut self, ban: &Ban) -> Result<(), StoreError>;

    /// Lifts a ban; whether there was one.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    fn unban(&mut self, target: &BanTarget) -> Result<bool, StoreError>;

    /// Forgets an EK's record (its audit lines stay); whether there was one.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    fn evict(&mut self, ek: &EkHash) -> Result<bool, StoreError>;

    /// The records last attested (or failed) at or after `since`, oldest first; every record
    /// when `since` is `None`.
    ///
    /// # Errors
    /// [`StoreError`] on a failed query or an unreadable row.
    fn list(&mut self, since: Option<UnixSeconds>) -> Result<Vec<Record>, StoreError>;

    /// One EK's record.
    ///
    /// # Errors
    /// [`StoreError`] on a failed query or an unreadable row.
    fn record(&mut self, ek: &EkHash) -> Result<Option<Record>, StoreError>;

    /// The records that list `agent` among their agent ids.
    ///
    /// # Errors
    /// [`StoreError`] on a failed query or an unreadable row.
    fn records_of_agent(&mut self, agent: &str) -> Result<Vec<Record>, StoreError>;

    /// How many device records there are.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    fn count(&mut self) -> Result<u64, StoreError>;

    /// The audit lines at or after `since`, oldest first, handed to `each` one at a time
    /// (the trail may be large); `each` returning `false` stops the walk.
    ///
    /// # Errors
    /// [`StoreError`] on a failed query or an unreadable row.
    fn audit(
        &mut self,
        since: Option<UnixSeconds>,
        each: &mut dyn FnMut(AuditEntry) -> bool,
    ) -> Result<(), StoreError>;

    /// Deletes the audit lines older than `before`; how many.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    fn prune_audit(&mut self, before: UnixSeconds) -> Result<u64, StoreError>;
}

/// `registry` in the server config: where the registry lives and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The backend.
    pub backend: Backend,
    /// `flush-interval`: the longest an event waits before it is written (default 1s): what a
    /// crash can lose.
    pub flush_interval: Duration,
    /// `batch-max`: most events per transaction (default 2000).
    pub batch_max: usize,
    /// `queue-max`: most events waiting to be written (default 100000); past it, events are
    /// dropped and counted (`attestation_registry_dropped_total`), never waited for.
    pub queue_max: usize,
    /// `ban-refresh`: how often bans are read from the database (default 2s).
    pub ban_refresh: Duration,
    /// `audit-retention`: how long audit lines are kept (default 90 days).
    pub audit_retention: Duration,
    /// `duplicate-window`: an EK accepted under a second agent id within this time of its
    /// last acceptance is reported (default 24h).
    pub duplicate_window: Duration,
}

/// Default `flush-interval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `batch-max`.
pub const DEFAULT_BATCH_MAX: usize = 2000;
/// Default `queue-max`.
pub const DEFAULT_QUEUE_MAX: usize = 100_000;
/// Default `ban-refresh`.
pub const DEFAULT_BAN_REFRESH: Duration = Duration::from_secs(2);
/// Default `audit-retention`.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Default `duplicate-window`.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(86_400);
/// The registry file under `state-dir` by default.
pub const DEFAULT_FILE: &str = "registry.db";

impl RegistryConfig {
    /// The defaults with `backend`.
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            batch_max: DEFAULT_BATCH_MAX,
            queue_max: DEFAULT_QUEUE_MAX,
            ban_refresh: DEFAULT_BAN_REFRESH,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }
}

/// Where the registry lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// No registry (`backend: none`): nothing is recorded and nothing can be banned.
    None,
    /// An SQLite file (`backend: sqlite`, `path`; default `state-dir/registry.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`backend: postgres`, `url`, `password-file`).
    Postgres {
        /// `postgres://USER@HOST[:PORT]/DB[?...]`, without the password.
        url: String,
        /// The password (from `password-file`), if any.
        password: Option<String>,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Self::Postgres { url, password } => f
                .debug_struct("Postgres")
                .field("url", url)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl Backend {
    /// Opens the store (creating and migrating it as needed); `None` for [`Backend::None`].
    ///
    /// # Errors
    /// [`StoreError::Open`], or [`StoreError::TooNew`] for a database of a newer server.
    pub fn open(&self) -> Result<Option<Box<dyn Store>>, StoreError> {
        Ok(match self {
            Self::None => None,
            Self::Sqlite(path) => Some(Box::new(sqlite::SqliteStore::open(path)?)),
            Self::Postgres { url, password } => Some(Box::new(postgres::PostgresStore::connect(
                url,
                password.as_deref(),
            )?)),
        })
    }
}

/// Serializes an [`EkHash`] as lowercase hex.
mod hex_hash {
    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }
}

/// Parses a 64-hex-digit EK public hash (any case).
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_ek_hash(text: &str) -> Result<EkHash, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|e| {
        format!(
            "{text:?} is not an EK public hash (64 hex digits, the tpm_ek.public_hash \
             attribute): {e}"
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests;
