//! The embedded registry: one SQLite file (by default `state-dir/registry.db`), written by
//! the server's registry thread and by `ekattestctl` on the same machine.
//!
//! The file is in WAL mode (readers never block the writer, and the other way round) with
//! `synchronous = NORMAL`: a committed batch survives a crash of the process; a power loss
//! may lose the last batches, never corrupt the file. Writers wait up to 5 s for each other
//! (`busy_timeout`), since ekattestctl and the server write the same file. A batch is one
//! `BEGIN IMMEDIATE` transaction: the write lock is taken first, so the read-fold-write of a
//! device record cannot interleave with another writer. Within it, the events of one EK are
//! folded in memory first: one read and one write per EK per batch, with each statement
//! prepared once per batch.
//!
//! It creates the file's directory (mode 0700) and the file (mode 0600) when missing; SQLite
//! gives the `-wal` and `-shm` files the mode of the database file. It never sets a mode on
//! a directory or file that exists: the operator's choice stands.
//!
//! Constraints: only this module uses rusqlite; the SQL of the tables is in [`schema`].

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};

use super::schema::{self, AUDIT_COLUMNS, AuditRow, BAN_COLUMNS, DEVICE_COLUMNS, DeviceRow};
use super::{
    Applied, AuditEntry, Ban, BanTarget, EkHash, Event, Record, Store, StoreError, UnixSeconds,
};

/// How long a writer waits for another (ekattestctl, a second process) to commit.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A registry in an SQLite file (see the module docs).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    name: String,
}

impl SqliteStore {
    /// Opens (creating it and its directory when missing) the registry file at `path` and
    /// brings its schema to [`schema::LATEST`].
    ///
    /// # Errors
    /// [`StoreError::Open`] if the directory or file cannot be created or opened (the
    /// message says which), [`StoreError::TooNew`] for a file written by a newer server,
    /// [`StoreError::Query`] if a migration fails (nothing of that step is kept).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_at_version(path, schema::LATEST)
    }

    /// [`SqliteStore::open`], but migrates only up to `version` (a database already past
    /// it is left as it is). For tests and tools that need a database as an older server
    /// left it; the server always opens at [`schema::LATEST`].
    ///
    /// # Errors
    /// As [`SqliteStore::open`]; [`StoreError::Open`] for a version this build does not know.
    #[doc(hidden)]
    pub fn open_at_version(path: &Path, version: i64) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let open_err = |message: String| StoreError::Open {
            db: name.clone(),
            message,
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    open_err(format!(
                        "cannot create the directory {}: {e}; create it, or set \
                         registry.path (or state-dir) to a writable place",
                        dir.display()
                    ))
                })?;
        }
        // SQLite would create the file with the umask's mode (often 0644): device records
        // and the audit trail are the operator's, not everyone's.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(open_err(format!(
                    "cannot create the file: {e}; check the directory's owner and mode"
                )));
            }
        }
        let conn = Connection::open(path).map_err(|e| open_err(describe(&e)))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err(describe(&e)))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| {
                open_err(format!(
                    "cannot switch to WAL journal mode: {}",
                    describe(&e)
                ))
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "the journal mode stays {mode:?} instead of WAL (is the file on a network file \
                 system? keep registry.path on a local disk)"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_err(describe(&e)))?;
        let mut store = Self { conn, name };
        store.migrate(version)?;
        Ok(store)
    }

    /// Runs the migrations up to `target`, each in its own IMMEDIATE transaction that
    /// re-reads the version (another process may have migrated meanwhile).
    fn migrate(&mut self, target: i64) -> Result<(), StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "migrate the schema", &e);
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(schema::CREATE_VERSION_TABLE)
                .map_err(err)?;
            let rows = {
                let mut stmt = tx.prepare(schema::READ_VERSION).map_err(err)?;
                let rows = stmt
                    .query_map([], |row| row.get::<_, i64>(0))
                    .map_err(err)?;
                rows.collect::<Result<Vec<i64>, _>>()
                    .map_err(|e| read_err(db, "schema version", &e))?
            };
            let found = schema::stored_version(db, &rows)?;
            let Some(step) = schema::next_step(db, found, target)? else {
                tx.commit().map_err(err)?;
                return Ok(());
            };
            tx.execute_batch(step.sqlite).map_err(err)?;
            tx.execute(schema::CLEAR_VERSION, []).map_err(err)?;
            tx.execute(
                "INSERT INTO ekattest_schema (version) VALUES (?1)",
                [step.version],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            log::info!(
                db = db, version = step.version;
                "registry: schema migrated ({})", step.what
            );
        }
    }

    fn read_devices(
        &mut self,
        what: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Record>, StoreError> {
        let db = self.name.as_str();
        let mut stmt = self.conn.prepare(sql).map_err(|e| query(db, what, &e))?;
        let rows = stmt
            .query_map(params, device_row)
            .map_err(|e| query(db, what, &e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| read_err(db, what, &e))?.into_record(db)?);
        }
        Ok(out)
    }
}

/// Appends one audit line.
const INSERT_AUDIT: &str = "INSERT INTO audit (at, node, agent, ek, outcome, code, reason, \
     spiffe_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Inserts or replaces one device row.
fn upsert_device() -> String {
    format!(
        "INSERT INTO devices ({DEVICE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT (ek) DO UPDATE SET agent_ids = excluded.agent_ids, \
         attributes = excluded.attributes, spiffe_id = excluded.spiffe_id, \
         policy = excluded.policy, first_attested = excluded.first_attested, \
         last_attested = excluded.last_attested, count = excluded.count, \
         svid_serial = excluded.svid_serial, svid_not_after = excluded.svid_not_after, \
         node = excluded.node, failure_code = excluded.failure_code, \
         failure_reason = excluded.failure_reason, failure_at = excluded.failure_at"
    )
}

/// Orders records by their last activity (acceptance or refusal), oldest first.
const ACTIVITY: &str =
    "MAX(COALESCE(last_attested, failure_at), COALESCE(failure_at, last_attested)), ek";

impl Store for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(
        &mut self,
        node: &str,
        events: &[Event],
        window: Duration,
    ) -> Result<Applied, StoreError> {
        let db = self.name.as_str();
        let what = "write a batch";
        let err = |e: rusqlite::Error| query(db, what, &e);
        let mut applied = Applied::default();
        if events.is_empty() {
            return Ok(applied);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            // Each statement is prepared once per batch, whatever its size.
            let mut insert = tx.prepare(INSERT_AUDIT).map_err(err)?;
            let mut select = tx
                .prepare(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE ek = ?1"
                ))
                .map_err(err)?;
            let mut upsert = tx.prepare(&upsert_device()).map_err(err)?;
            for event in events {
                let row = AuditRow::of(event);
                insert
                    .execute(params![
                        row.at,
                        node,
                        row.agent,
                        row.ek,
                        row.outcome,
                        row.code,
                        row.reason,
                        row.spiffe_id
                    ])
                    .map_err(err)?;
                applied.audit += 1;
            }
            for (ek, group) in schema::by_ek(events) {
                let stored = select
                    .query_row([hex::encode(ek)], device_row)
                    .optional()
                    .map_err(|e| read_err(db, what, &e))?
                    .map(|row| row.into_record(db))
                    .transpose()?;
                let record = schema::fold(stored, ek, &group, node, window, &mut applied.conflicts);
                let row = DeviceRow::from_record(db, &record)?;
                upsert
                    .execute(params![
                        row.ek,
                        row.agent_ids,
                        row.attributes,
                        row.spiffe_id,
                        row.policy,
                        row.first_attested,
                        row.last_attested,
                        row.count,
                        row.svid_serial,
                        row.svid_not_after,
                        row.node,
                        row.failure_code,
                        row.failure_reason,
                        row.failure_at
                    ])
                    .map_err(err)?;
                applied.records += 1;
            }
        }
        tx.commit().map_err(err)?;
        Ok(applied)
    }

    fn bans(&mut self) -> Result<Vec<Ban>, StoreError> {
        let db = self.name.as_str();
        let what = "read bans";
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {BAN_COLUMNS} FROM bans ORDER BY kind, value"
            ))
            .map_err(|e| query(db, what, &e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| query(db, what, &e))?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(|e| read_err(db, what, &e))?;
            out.push(schema::ban_from_row(db, row)?);
        }
        Ok(out)
    }

    fn ban(&mut self, ban: &Ban) -> Result<(), StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "write a ban", &e);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "INSERT INTO bans ({BAN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason, \
                 at = excluded.at, by_whom = excluded.by_whom"
            ))
            .map_err(err)?;
        stmt.execute(params![
            ban.target.kind(),
            ban.target.value(),
            ban.reason,
            ban.at,
            ban.by
        ])
        .map_err(err)?;
        Ok(())
    }

    fn unban(&mut self, target: &BanTarget) -> Result<bool, StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "lift a ban", &e);
        let mut stmt = self
            .conn
            .prepare("DELETE FROM bans WHERE kind = ?1 AND value = ?2")
            .map_err(err)?;
        let n = stmt
            .execute(params![target.kind(), target.value()])
            .map_err(err)?;
        Ok(n > 0)
    }

    fn evict(&mut self, ek: &EkHash) -> Result<bool, StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "evict a device record", &e);
        let mut stmt = self
            .conn
            .prepare("DELETE FROM devices WHERE ek = ?1")
            .map_err(err)?;
        let n = stmt.execute([hex::encode(ek)]).map_err(err)?;
        Ok(n > 0)
    }

    fn list(&mut self, since: Option<UnixSeconds>) -> Result<Vec<Record>, StoreError> {
        self.read_devices(
            "list device records",
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE ?1 IS NULL OR last_attested >= ?1 OR failure_at >= ?1 \
                 ORDER BY {ACTIVITY}"
            ),
            [since],
        )
    }

    fn record(&mut self, ek: &EkHash) -> Result<Option<Record>, StoreError> {
        let mut found = self.read_devices(
            "read a device record",
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE ek = ?1"),
            [hex::encode(ek)],
        )?;
        Ok(found.pop())
    }

    fn records_of_agent(&mut self, agent: &str) -> Result<Vec<Record>, StoreError> {
        self.read_devices(
            "find the device records of an agent id",
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE EXISTS \
                 (SELECT 1 FROM json_each(devices.agent_ids) WHERE json_each.value = ?1) \
                 ORDER BY {ACTIVITY}"
            ),
            [agent],
        )
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "count device records", &e);
        let n: i64 = self
            .conn
            .prepare("SELECT COUNT(*) FROM devices")
            .map_err(err)?
            .query_row([], |row| row.get(0))
            .map_err(err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn audit(
        &mut self,
        since: Option<UnixSeconds>,
        each: &mut dyn FnMut(AuditEntry) -> bool,
    ) -> Result<(), StoreError> {
        let db = self.name.as_str();
        let what = "read the audit trail";
        // `at >= MIN` rather than `?1 IS NULL OR ...`, so the index on `at` (which carries
        // the rowid `id`) serves both the filter and the order.
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit WHERE at >= ?1 ORDER BY at, id"
            ))
            .map_err(|e| query(db, what, &e))?;
        let mut rows = stmt
            .query([since.unwrap_or(i64::MIN)])
            .map_err(|e| query(db, what, &e))?;
        while let Some(row) = rows.next().map_err(|e| query(db, what, &e))? {
            let entry = audit_entry(row).map_err(|e| read_err(db, what, &e))?;
            if !each(entry) {
                break;
            }
        }
        Ok(())
    }

    fn prune_audit(&mut self, before: UnixSeconds) -> Result<u64, StoreError> {
        let db = self.name.as_str();
        let err = |e: rusqlite::Error| query(db, "prune the audit trail", &e);
        let mut stmt = self
            .conn
            .prepare("DELETE FROM audit WHERE at < ?1")
            .map_err(err)?;
        let n = stmt.execute([before]).map_err(err)?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// A `devices` row, columns in [`DEVICE_COLUMNS`] order.
fn device_row(row: &Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        ek: row.get(0)?,
        agent_ids: row.get(1)?,
        attributes: row.get(2)?,
        spiffe_id: row.get(3)?,
        policy: row.get(4)?,
        first_attested: row.get(5)?,
        last_attested: row.get(6)?,
        count: row.get(7)?,
        svid_serial: row.get(8)?,
        svid_not_after: row.get(9)?,
        node: row.get(10)?,
        failure_code: row.get(11)?,
        failure_reason: row.get(12)?,
        failure_at: row.get(13)?,
    })
}

/// An `audit` row, columns in [`AUDIT_COLUMNS`] order.
fn audit_entry(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get(0)?,
        at: row.get(1)?,
        node: row.get(2)?,
        agent: row.get(3)?,
        ek: row.get(4)?,
        outcome: row.get(5)?,
        code: row.get(6)?,
        reason: row.get(7)?,
        spiffe_id: row.get(8)?,
    })
}

/// [`StoreError::Query`] for `what`, with SQLite's message and a hint.
fn query(db: &str, what: &'static str, e: &rusqlite::Error) -> StoreError {
    StoreError::Query {
        db: db.to_owned(),
        what,
        message: describe(e),
    }
}

/// A row that cannot be read as its column types ([`StoreError::Corrupt`]); other errors
/// while stepping through rows are [`StoreError::Query`].
fn read_err(db: &str, what: &'static str, e: &rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => schema::corrupt(db, what, e.to_string()),
        _ => query(db, what, e),
    }
}

/// SQLite's message, with what to do for the errors an operator can fix.
fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            " (another process held the file for more than 5 s: a second server or a \
             long ekattestctl run on the same registry?)"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            " (check that the file, its -wal and -shm files and their directory are \
             writable by the server's user)"
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            " (the file is not an SQLite database or is damaged: restore it from a backup \
             or move it aside)"
        }
        Some(ErrorCode::DiskFull) => " (the disk is full)",
        _ => "",
    };
    format!("{e}{hint}")
}
