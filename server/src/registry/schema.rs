//! The registry's tables, their versioned migrations for both backends, and how a
//! [`Record`] and an [`Event`] map to rows.
//!
//! The schema version lives in `ekattest_schema(version BIGINT NOT NULL)`, one row (no row,
//! or no table: version 0, an empty database). Opening a store runs the missing migrations
//! in order, each in a transaction of its own that re-reads the version first (the
//! PostgreSQL backend also takes an advisory lock, so two nodes starting at once migrate
//! once). A database whose version is newer than [`LATEST`] was written by a newer server
//! and is refused ([`StoreError::TooNew`]): this build does not know what the newer tables
//! mean.
//!
//! Constraints: a migration that has shipped never changes (a database at version N ran
//! exactly its statements); a new schema is a new entry of [`MIGRATIONS`] and a bump of
//! [`LATEST`]. There are no down-migrations. This module is pure: the backends run the SQL
//! and read the rows; the decisions (which step next, what a row means) are made here, once
//! for both.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    Ban, BanTarget, EkHash, Event, Failure, Outcome, Record, StoreError, UnixSeconds, parse_ek_hash,
};

/// The schema version this build writes and the newest it can read.
pub const LATEST: i64 = 2;

/// One schema step: what it adds, in each backend's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The version the database has after this step.
    pub version: i64,
    /// What the step adds, for logs.
    pub what: &'static str,
    /// The statements for SQLite.
    pub sqlite: &'static str,
    /// The statements for PostgreSQL.
    pub postgres: &'static str,
}

/// Version 1: device records and bans (the same SQL on both backends).
const DEVICES_AND_BANS: &str = "
CREATE TABLE devices (
    ek TEXT PRIMARY KEY NOT NULL,
    agent_ids TEXT NOT NULL,
    attributes TEXT NOT NULL,
    spiffe_id TEXT,
    policy TEXT,
    first_attested BIGINT,
    last_attested BIGINT,
    count BIGINT NOT NULL,
    svid_serial TEXT,
    svid_not_after BIGINT,
    node TEXT,
    failure_code TEXT,
    failure_reason TEXT,
    failure_at BIGINT
);
CREATE INDEX devices_last_attested ON devices (last_attested);
CREATE TABLE bans (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    by_whom TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);
";

/// Every migration, in order: `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "device records and bans",
        sqlite: DEVICES_AND_BANS,
        postgres: DEVICES_AND_BANS,
    },
    Migration {
        version: 2,
        what: "the audit trail",
        // AUTOINCREMENT: ids are never reused after a prune, so they only grow.
        sqlite: "
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    node TEXT NOT NULL,
    agent TEXT NOT NULL,
    ek TEXT,
    outcome TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    spiffe_id TEXT
);
CREATE INDEX audit_at ON audit (at);
",
        postgres: "
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    node TEXT NOT NULL,
    agent TEXT NOT NULL,
    ek TEXT,
    outcome TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    spiffe_id TEXT
);
CREATE INDEX audit_at ON audit (at);
",
    },
];

/// Creates the version table when missing (same SQL on both backends).
pub(crate) const CREATE_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS ekattest_schema (version BIGINT NOT NULL)";
/// Reads the stored version (zero or one row).
pub(crate) const READ_VERSION: &str = "SELECT version FROM ekattest_schema";
/// Empties the version table before the new version is inserted.
pub(crate) const CLEAR_VERSION: &str = "DELETE FROM ekattest_schema";

/// The stored version from the rows of [`READ_VERSION`]: 0 for none (a new database).
///
/// # Errors
/// [`StoreError::Corrupt`] for several rows or a negative version.
pub(crate) fn stored_version(db: &str, rows: &[i64]) -> Result<i64, StoreError> {
    match rows {
        [] => Ok(0),
        [v] if *v >= 0 => Ok(*v),
        [v] => Err(corrupt(
            db,
            "schema version",
            format!("ekattest_schema holds {v}; restore the database from a backup"),
        )),
        _ => Err(corrupt(
            db,
            "schema version",
            format!(
                "ekattest_schema has {} rows, expected one; restore the database from a backup",
                rows.len()
            ),
        )),
    }
}

/// The migration that takes a database at `found` one step towards `target`; `None` when
/// it is there (or past it: nothing is ever downgraded).
///
/// # Errors
/// [`StoreError::TooNew`] when `found` is past [`LATEST`]; [`StoreError::Open`] when `target`
/// is not a version this build knows.
pub(crate) fn next_step(
    db: &str,
    found: i64,
    target: i64,
) -> Result<Option<&'static Migration>, StoreError> {
    if found > LATEST {
        return Err(StoreError::TooNew {
            db: db.to_owned(),
            found,
            supported: LATEST,
        });
    }
    if !(1..=LATEST).contains(&target) {
        return Err(StoreError::Open {
            db: db.to_owned(),
            message: format!("no schema version {target}: this build knows 1 to {LATEST}"),
        });
    }
    if found >= target {
        return Ok(None);
    }
    let index = usize::try_from(found).unwrap_or(usize::MAX);
    Ok(MIGRATIONS.get(index))
}

/// The columns of `devices`, in [`DeviceRow`]'s order.
pub(crate) const DEVICE_COLUMNS: &str = "ek, agent_ids, attributes, spiffe_id, policy, \
     first_attested, last_attested, count, svid_serial, svid_not_after, node, failure_code, \
     failure_reason, failure_at";

/// The columns of `audit` read back, in [`AuditEntry`](super::AuditEntry)'s order.
pub(crate) const AUDIT_COLUMNS: &str = "id, at, node, agent, ek, outcome, code, reason, spiffe_id";

/// The columns of `bans`, in [`Ban`](super::Ban)'s order.
pub(crate) const BAN_COLUMNS: &str = "kind, value, reason, at, by_whom";

/// One `devices` row as stored: the EK in lowercase hex, the lists as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceRow {
    pub(crate) ek: String,
    /// JSON array of strings.
    pub(crate) agent_ids: String,
    /// JSON array of `[name, value]` pairs.
    pub(crate) attributes: String,
    pub(crate) spiffe_id: Option<String>,
    pub(crate) policy: Option<String>,
    pub(crate) first_attested: Option<i64>,
    pub(crate) last_attested: Option<i64>,
    pub(crate) count: i64,
    pub(crate) svid_serial: Option<String>,
    pub(crate) svid_not_after: Option<i64>,
    pub(crate) node: Option<String>,
    pub(crate) failure_code: Option<String>,
    pub(crate) failure_reason: Option<String>,
    pub(crate) failure_at: Option<i64>,
}

impl DeviceRow {
    /// The row that stores `record`.
    ///
    /// # Errors
    /// [`StoreError::Query`] if the lists cannot be encoded (they are plain strings: never
    /// in practice).
    pub(crate) fn from_record(db: &str, record: &Record) -> Result<Self, StoreError> {
        let json = |what, r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Query {
                db: db.to_owned(),
                what,
                message: e.to_string(),
            })
        };
        let (failure_code, failure_reason, failure_at) = match &record.last_failure {
            Some(f) => (Some(f.code.clone()), Some(f.reason.clone()), Some(f.at)),
            None => (None, None, None),
        };
        Ok(Self {
            ek: hex::encode(record.ek),
            agent_ids: json("encode agent ids", serde_json::to_string(&record.agent_ids))?,
            attributes: json(
                "encode attributes",
                serde_json::to_string(&record.attributes),
            )?,
            spiffe_id: record.spiffe_id.clone(),
            policy: record.policy.clone(),
            first_attested: record.first_attested,
            last_attested: record.last_attested,
            count: i64::try_from(record.count).unwrap_or(i64::MAX),
            svid_serial: record.svid_serial.clone(),
            svid_not_after: record.svid_not_after,
            node: record.node.clone(),
            failure_code,
            failure_reason,
            failure_at,
        })
    }

    /// The record this row stores.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a malformed EK, list, count or a half-written failure.
    pub(crate) fn into_record(self, db: &str) -> Result<Record, StoreError> {
        let ek = parse_ek_hash(&self.ek).map_err(|m| corrupt(db, "a device's ek", m))?;
        let agent_ids: Vec<String> = serde_json::from_str(&self.agent_ids).map_err(|e| {
            corrupt(
                db,
                "a device's agent_ids",
                format!("EK {}: {e} in {:?}", self.ek, self.agent_ids),
            )
        })?;
        let attributes: Vec<(String, String)> =
            serde_json::from_str(&self.attributes).map_err(|e| {
                corrupt(
                    db,
                    "a device's attributes",
                    format!("EK {}: {e} in {:?}", self.ek, self.attributes),
                )
            })?;
        let count = u64::try_from(self.count).map_err(|_| {
            corrupt(
                db,
                "a device's count",
                format!("EK {}: {} is negative", self.ek, self.count),
            )
        })?;
        let last_failure = match (self.failure_code, self.failure_reason, self.failure_at) {
            (None, None, None) => None,
            (Some(code), Some(reason), Some(at)) => Some(Failure { code, reason, at }),
            (code, reason, at) => {
                return Err(corrupt(
                    db,
                    "a device's last failure",
                    format!(
                        "EK {}: failure_code {code:?}, failure_reason {reason:?}, failure_at \
                         {at:?}: all three or none",
                        self.ek
                    ),
                ));
            }
        };
        Ok(Record {
            ek,
            agent_ids,
            attributes,
            spiffe_id: self.spiffe_id,
            policy: self.policy,
            first_attested: self.first_attested,
            last_attested: self.last_attested,
            count,
            svid_serial: self.svid_serial,
            svid_not_after: self.svid_not_after,
            node: self.node,
            last_failure,
        })
    }
}

/// One `audit` row to append (the node is the batch's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditRow<'a> {
    pub(crate) at: UnixSeconds,
    pub(crate) agent: &'a str,
    pub(crate) ek: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) code: Option<&'a str>,
    pub(crate) reason: Option<&'a str>,
    pub(crate) spiffe_id: Option<&'a str>,
}

/// The stored `outcome` of an acceptance.
pub(crate) const ACCEPTED: &str = "accepted";
/// The stored `outcome` of a refusal.
pub(crate) const REJECTED: &str = "rejected";

impl<'a> AuditRow<'a> {
    /// The audit line of `event`.
    pub(crate) fn of(event: &'a Event) -> Self {
        let ek = event.ek.map(hex::encode);
        match &event.outcome {
            Outcome::Accepted(a) => Self {
                at: event.at,
                agent: &event.agent,
                ek,
                outcome: ACCEPTED,
                code: None,
                reason: None,
                spiffe_id: Some(&a.spiffe_id),
            },
            Outcome::Rejected { code, reason } => Self {
                at: event.at,
                agent: &event.agent,
                ek,
                outcome: REJECTED,
                code: Some(code),
                reason: Some(reason),
                spiffe_id: None,
            },
        }
    }
}

/// The events of a batch that name an EK, grouped by EK (EKs in ascending order, the order
/// in which the PostgreSQL backend locks their rows; events in batch order within a group).
/// Events without an EK only go to the audit trail.
pub(crate) fn by_ek(events: &[Event]) -> Vec<(EkHash, Vec<&Event>)> {
    let mut groups: BTreeMap<EkHash, Vec<&Event>> = BTreeMap::new();
    for event in events {
        if let Some(ek) = event.ek {
            groups.entry(ek).or_default().push(event);
        }
    }
    groups.into_iter().collect()
}

/// Folds one EK's events of a batch, in order, into its stored record (a new one when
/// there is none), collecting conflicts as `(EK, new agent id, previous agent id)`.
pub(crate) fn fold(
    stored: Option<Record>,
    ek: EkHash,
    events: &[&Event],
    node: &str,
    window: Duration,
    conflicts: &mut Vec<(EkHash, String, String)>,
) -> Record {
    let mut record = stored.unwrap_or_else(|| Record::new(ek));
    for event in events {
        if let Some(previous) = record.apply(event, node, window) {
            conflicts.push((ek, event.agent.clone(), previous));
        }
    }
    record
}

/// [`StoreError::Corrupt`].
pub(crate) fn corrupt(db: &str, what: &'static str, message: String) -> StoreError {
    StoreError::Corrupt {
        db: db.to_owned(),
        what,
        message,
    }
}

/// A ban from its stored columns (`kind, value, reason, at, by_whom`).
///
/// # Errors
/// [`StoreError::Corrupt`] for an unknown kind or a malformed hash.
pub(crate) fn ban_from_row(
    db: &str,
    (kind, value, reason, at, by): (String, String, String, i64, String),
) -> Result<Ban, StoreError> {
    let target = BanTarget::from_stored(&kind, &value).map_err(|m| corrupt(db, "a ban", m))?;
    Ok(Ban {
        target,
        reason,
        at,
        by,
    })
}

#[cfg(test)]
mod tests;
