//! The shared registry: one PostgreSQL database written by several server nodes at once
//! (and read and written by `ekattestctl` from anywhere that reaches it).
//!
//! Same tables and semantics as the SQLite backend ([`schema`]). What changes is
//! concurrency: two nodes may write batches for the same EK at the same moment. A batch is
//! one transaction that first makes sure every EK of the batch has a row (`INSERT ... ON
//! CONFLICT DO NOTHING`, which waits for another transaction inserting the same EK), then
//! locks those rows with `SELECT ... FOR UPDATE`, folds the batch into them in Rust and
//! writes them back (`INSERT ... ON CONFLICT (ek) DO UPDATE`). Both steps take the EKs in
//! ascending order, so two batches wait for each other instead of deadlocking; should
//! PostgreSQL still report a deadlock or a serialization failure, the batch fails whole
//! and the registry's writer retries it at the next flush. No update is lost: a node reads
//! a record only while it holds its row lock. The audit lines go in with the same
//! transaction, as one multi-row `INSERT` (arrays unnested server-side), as do the device
//! rows: a batch is a handful of round trips whatever its size.
//!
//! Migrations take a transaction-scoped advisory lock ([`MIGRATION_LOCK`]) and re-read the
//! schema version under it, so two nodes starting at once against an empty database run
//! each migration once.
//!
//! TLS to the database is not supported yet (`NoTls`; a URL with `sslmode=require` is
//! refused): reach PostgreSQL over a Unix socket (`postgres://user@%2Frun%2Fpostgresql/db`)
//! or a loopback or private network. The password belongs in `password-file` rather than
//! the URL; wherever it comes from, [`PostgresStore::name`] and the errors never show it.
//!
//! Constraints: only this module uses the `postgres` crate. Its client runs a small tokio
//! runtime of its own, so a store is created, used and dropped on a plain thread (the
//! registry's writer, ekattestctl), never inside an async task.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr as _;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls, Row, Statement};

use super::schema::{self, AUDIT_COLUMNS, AuditRow, BAN_COLUMNS, DEVICE_COLUMNS, DeviceRow};
use super::{
    Applied, AuditEntry, Ban, BanTarget, EkHash, Event, Record, Store, StoreError, UnixSeconds,
};

/// The key of the advisory lock every migration transaction takes: "ekattest" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x656b_6174_7465_7374;

/// How long connecting may take when the URL does not say (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many audit rows one round trip of [`Store::audit`] fetches.
const AUDIT_PAGE: i32 = 1000;

/// A registry in a PostgreSQL database (see the module docs).
pub struct PostgresStore {
    config: Config,
    name: String,
    /// The schema version this store migrates to (and again after a reconnect).
    version: i64,
    client: Client,
    /// Prepared on the first batch of each connection (a database opened below the latest
    /// version for a test has no audit table to prepare against).
    statements: Option<Statements>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's Debug redacts the password too; the name is enough here.
        f.debug_struct("PostgresStore")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The statements of the batch path, prepared once per connection.
struct Statements {
    insert_audit: Statement,
    ensure_rows: Statement,
    lock_rows: Statement,
    upsert: Statement,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER@HOST[:PORT]/DB[?...]`, or the `key=value` form),
    /// with `password` if given (it overrides one in the URL), and brings the schema to
    /// [`schema::LATEST`].
    ///
    /// # Errors
    /// [`StoreError::Open`] for a URL that does not parse, asks for TLS, or a server that
    /// cannot be reached or refuses the login; [`StoreError::TooNew`] for a database of a
    /// newer server; [`StoreError::Query`] if a migration fails (nothing of that step is
    /// kept).
    pub fn connect(url: &str, password: Option<&str>) -> Result<Self, StoreError> {
        Self::connect_at_version(url, password, schema::LATEST)
    }

    /// [`PostgresStore::connect`], but migrates only up to `version` (a database already past
    /// it is left as it is). For tests and tools that need a database as an older server
    /// left it; the server always connects at [`schema::LATEST`].
    ///
    /// # Errors
    /// As [`PostgresStore::connect`]; [`StoreError::Open`] for a version this build does
    /// not know.
    #[doc(hidden)]
    pub fn connect_at_version(
        url: &str,
        password: Option<&str>,
        version: i64,
    ) -> Result<Self, StoreError> {
        let mut config = Config::from_str(url).map_err(|e| StoreError::Open {
            db: redact_url(url),
            message: format!(
                "not a PostgreSQL URL ({}); expected postgres://USER@HOST[:PORT]/DATABASE",
                describe(&e)
            ),
        })?;
        let name = display_name(&config);
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Open {
                db: name,
                message: "sslmode=require, but TLS to the database is not supported yet: \
                          connect over a Unix socket or a loopback or private network, \
                          without sslmode=require"
                    .into(),
            });
        }
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ekattest-server");
        }
        let client = open(&config, &name, version)?;
        Ok(Self {
            config,
            name,
            version,
            client,
            statements: None,
        })
    }

    /// Reconnects if the connection was lost (a database restart or a failover), so the
    /// writer's next retry works without restarting the server.
    fn reconnect_if_closed(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = open(&self.config, &self.name, self.version).map_err(|e| match e {
                StoreError::Open { db, message } => StoreError::Query {
                    db,
                    what: "reconnect",
                    message,
                },
                other => other,
            })?;
            self.statements = None;
            log::info!(db = self.name.as_str(); "registry: reconnected");
        }
        Ok(())
    }

    /// The client (reconnected if needed) and the database's name.
    fn client(&mut self) -> Result<(&mut Client, &str), StoreError> {
        self.reconnect_if_closed()?;
        Ok((&mut self.client, self.name.as_str()))
    }

    fn read_devices(
        &mut self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Record>, StoreError> {
        let (client, db) = self.client()?;
        let rows = client.query(sql, params).map_err(|e| query(db, what, &e))?;
        rows.iter()
            .map(|row| {
                device_row(row)
                    .map_err(|e| read_err(db, what, &e))?
                    .into_record(db)
            })
            .collect()
    }
}

/// Connects and migrates to `version`.
fn open(config: &Config, db: &str, version: i64) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls).map_err(|e| StoreError::Open {
        db: db.to_owned(),
        message: format!(
            "{}; check that PostgreSQL runs and is reachable, and the user, the password \
             (password-file) and the database",
            describe(&e)
        ),
    })?;
    migrate(&mut client, db, version)?;
    Ok(client)
}

/// Runs the migrations up to `target`, each in its own transaction holding the advisory
/// lock, re-reading the version under it (another node may have migrated meanwhile).
fn migrate(client: &mut Client, db: &str, target: i64) -> Result<(), StoreError> {
    let err = |e: postgres::Error| query(db, "migrate the schema", &e);
    loop {
        let mut tx = client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err)?;
        tx.batch_execute(schema::CREATE_VERSION_TABLE)
            .map_err(err)?;
        let rows = tx.query(schema::READ_VERSION, &[]).map_err(err)?;
        let versions = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|e| read_err(db, "schema version", &e))?;
        let found = schema::stored_version(db, &versions)?;
        let Some(step) = schema::next_step(db, found, target)? else {
            tx.commit().map_err(err)?;
            return Ok(());
        };
        tx.batch_execute(step.postgres).map_err(err)?;
        tx.execute(schema::CLEAR_VERSION, &[]).map_err(err)?;
        tx.execute(
            "INSERT INTO ekattest_schema (version) VALUES ($1)",
            &[&step.version],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        log::info!(
            db = db, version = step.version;
            "registry: schema migrated ({})", step.what
        );
    }
}

fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
    Ok(Statements {
        // One row per element of the arrays, in batch order (the ids follow it).
        insert_audit: client.prepare(
            "INSERT INTO audit (at, node, agent, ek, outcome, code, reason, spiffe_id) \
             SELECT a.at, $1, a.agent, a.ek, a.outcome, a.code, a.reason, a.spiffe_id \
             FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[]) WITH ORDINALITY \
             AS a(at, agent, ek, outcome, code, reason, spiffe_id, n) ORDER BY a.n",
        )?,
        // A row for every EK of the batch, so each can be locked: a new EK's insert waits
        // for another transaction inserting the same EK, then does nothing.
        ensure_rows: client.prepare(
            "INSERT INTO devices (ek, agent_ids, attributes, count) \
             SELECT k, '[]', '[]', 0 FROM unnest($1::text[]) AS k ORDER BY k COLLATE \"C\" \
             ON CONFLICT (ek) DO NOTHING",
        )?,
        // The sort runs below the row locks: they are taken in this order.
        lock_rows: client.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ek = ANY($1::text[]) \
             ORDER BY ek COLLATE \"C\" FOR UPDATE"
        ))?,
        upsert: client.prepare(&format!(
            "INSERT INTO devices ({DEVICE_COLUMNS}) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], \
             $11::text[], $12::text[], $13::text[], $14::bigint[]) \
             ON CONFLICT (ek) DO UPDATE SET agent_ids = excluded.agent_ids, \
             attributes = excluded.attributes, spiffe_id = excluded.spiffe_id, \
             policy = excluded.policy, first_attested = excluded.first_attested, \
             last_attested = excluded.last_attested, count = excluded.count, \
             svid_serial = excluded.svid_serial, svid_not_after = excluded.svid_not_after, \
             node = excluded.node, failure_code = excluded.failure_code, \
             failure_reason = excluded.failure_reason, failure_at = excluded.failure_at"
        ))?,
    })
}

/// Orders records by their last activity (acceptance or refusal), oldest first.
const ACTIVITY: &str = "GREATEST(last_attested, failure_at), ek COLLATE \"C\"";

impl Store for PostgresStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(
        &mut self,
        node: &str,
        events: &[Event],
        window: Duration,
    ) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        if events.is_empty() {
            return Ok(applied);
        }
        let what = "write a batch";
        self.reconnect_if_closed()?;
        let (client, db) = (&mut self.client, self.name.as_str());
        let st = match self.statements {
            Some(ref st) => st,
            None => self
                .statements
                .insert(prepare(client).map_err(|e| query(db, "prepare statements", &e))?),
        };
        let err = |e: postgres::Error| query(db, what, &e);

        let audit: Vec<AuditRow<'_>> = events.iter().map(AuditRow::of).collect();
        let ats: Vec<i64> = audit.iter().map(|r| r.at).collect();
        let agents: Vec<&str> = audit.iter().map(|r| r.agent).collect();
        let eks: Vec<Option<&str>> = audit.iter().map(|r| r.ek.as_deref()).collect();
        let outcomes: Vec<&str> = audit.iter().map(|r| r.outcome).collect();
        let codes: Vec<Option<&str>> = audit.iter().map(|r| r.code).collect();
        let reasons: Vec<Option<&str>> = audit.iter().map(|r| r.reason).collect();
        let spiffe_ids: Vec<Option<&str>> = audit.iter().map(|r| r.spiffe_id).collect();

        let mut tx = client.transaction().map_err(err)?;
        let n = tx
            .execute(
                &st.insert_audit,
                &[
                    &node,
                    &ats,
                    &agents,
                    &eks,
                    &outcomes,
                    &codes,
                    &reasons,
                    &spiffe_ids,
                ],
            )
            .map_err(err)?;
        applied.audit = usize::try_from(n).unwrap_or(usize::MAX);

        let groups = schema::by_ek(events);
        if !groups.is_empty() {
            let keys: Vec<String> = groups.iter().map(|(ek, _)| hex::encode(ek)).collect();
            tx.execute(&st.ensure_rows, &[&keys]).map_err(err)?;
            let mut stored: HashMap<EkHash, Record> = HashMap::with_capacity(groups.len());
            for row in tx.query(&st.lock_rows, &[&keys]).map_err(err)? {
                let record = device_row(&row)
                    .map_err(|e| read_err(db, what, &e))?
                    .into_record(db)?;
                stored.insert(record.ek, record);
            }
            let mut rows = Vec::with_capacity(groups.len());
            for (ek, group) in &groups {
                let record = schema::fold(
                    stored.remove(ek),
                    *ek,
                    group,
                    node,
                    window,
                    &mut applied.conflicts,
                );
                rows.push(DeviceRow::from_record(db, &record)?);
            }
            let c = Columns::of(&rows);
            tx.execute(
                &st.upsert,
                &[
                    &c.ek,
                    &c.agent_ids,
                    &c.attributes,
                    &c.spiffe_id,
                    &c.policy,
                    &c.first_attested,
                    &c.last_attested,
                    &c.count,
                    &c.svid_serial,
                    &c.svid_not_after,
                    &c.node,
                    &c.failure_code,
                    &c.failure_reason,
                    &c.failure_at,
                ],
            )
            .map_err(err)?;
            applied.records = rows.len();
        }
        tx.commit().map_err(err)?;
        Ok(applied)
    }

    fn bans(&mut self) -> Result<Vec<Ban>, StoreError> {
        let what = "read bans";
        let (client, db) = self.client()?;
        let rows = client
            .query(
                &format!("SELECT {BAN_COLUMNS} FROM bans ORDER BY kind, value COLLATE \"C\""),
                &[],
            )
            .map_err(|e| query(db, what, &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let read = || -> Result<_, postgres::Error> {
                Ok((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, String>(1)?,
                    row.try_get::<_, String>(2)?,
                    row.try_get::<_, i64>(3)?,
                    row.try_get::<_, String>(4)?,
                ))
            };
            let row = read().map_err(|e| read_err(db, what, &e))?;
            out.push(schema::ban_from_row(db, row)?);
        }
        Ok(out)
    }

    fn ban(&mut self, ban: &Ban) -> Result<(), StoreError> {
        let (client, db) = self.client()?;
        client
            .execute(
                &format!(
                    "INSERT INTO bans ({BAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (kind, value) DO UPDATE SET reason = excluded.reason, \
                     at = excluded.at, by_whom = excluded.by_whom"
                ),
                &[
                    &ban.target.kind(),
                    &ban.target.value(),
                    &ban.reason,
                    &ban.at,
                    &ban.by,
                ],
            )
            .map_err(|e| query(db, "write a ban", &e))?;
        Ok(())
    }

    fn unban(&mut self, target: &BanTarget) -> Result<bool, StoreError> {
        let (client, db) = self.client()?;
        let n = client
            .execute(
                "DELETE FROM bans WHERE kind = $1 AND value = $2",
                &[&target.kind(), &target.value()],
            )
            .map_err(|e| query(db, "lift a ban", &e))?;
        Ok(n > 0)
    }

    fn evict(&mut self, ek: &EkHash) -> Result<bool, StoreError> {
        let (client, db) = self.client()?;
        let n = client
            .execute("DELETE FROM devices WHERE ek = $1", &[&hex::encode(ek)])
            .map_err(|e| query(db, "evict a device record", &e))?;
        Ok(n > 0)
    }

    fn list(&mut self, since: Option<UnixSeconds>) -> Result<Vec<Record>, StoreError> {
        self.read_devices(
            "list device records",
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE $1::bigint IS NULL OR last_attested >= $1 OR failure_at >= $1 \
                 ORDER BY {ACTIVITY}"
            ),
            &[&since],
        )
    }

    fn record(&mut self, ek: &EkHash) -> Result<Option<Record>, StoreError> {
        let mut found = self.read_devices(
            "read a device record",
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE ek = $1"),
            &[&hex::encode(ek)],
        )?;
        Ok(found.pop())
    }

    fn records_of_agent(&mut self, agent: &str) -> Result<Vec<Record>, StoreError> {
        self.read_devices(
            "find the device records of an agent id",
            &format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
                 WHERE agent_ids::jsonb @> jsonb_build_array($1::text) ORDER BY {ACTIVITY}"
            ),
            &[&agent],
        )
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let (client, db) = self.client()?;
        let err = |e: postgres::Error| query(db, "count device records", &e);
        let row = client
            .query_one("SELECT COUNT(*) FROM devices", &[])
            .map_err(err)?;
        let n: i64 = row.try_get(0).map_err(err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn audit(
        &mut self,
        since: Option<UnixSeconds>,
        each: &mut dyn FnMut(AuditEntry) -> bool,
    ) -> Result<(), StoreError> {
        let what = "read the audit trail";
        let (client, db) = self.client()?;
        let err = |e: postgres::Error| query(db, what, &e);
        // A portal (server-side cursor) in a read-only transaction: the trail may be large,
        // and a walk stopped early must not fetch the rest.
        let mut tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(err)?;
        let portal = tx
            .bind(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE at >= $1 ORDER BY at, id"),
                &[&since.unwrap_or(i64::MIN)],
            )
            .map_err(err)?;
        'pages: loop {
            let rows = tx.query_portal(&portal, AUDIT_PAGE).map_err(err)?;
            let last_page = rows.len() < usize::try_from(AUDIT_PAGE).unwrap_or(usize::MAX);
            for row in &rows {
                let entry = audit_entry(row).map_err(|e| read_err(db, what, &e))?;
                if !each(entry) {
                    break 'pages;
                }
            }
            if last_page {
                break;
            }
        }
        tx.commit().map_err(err)
    }

    fn prune_audit(&mut self, before: UnixSeconds) -> Result<u64, StoreError> {
        let (client, db) = self.client()?;
        client
            .execute("DELETE FROM audit WHERE at < $1", &[&before])
            .map_err(|e| query(db, "prune the audit trail", &e))
    }
}

/// The device rows of a batch as one array per column, for the upsert's `unnest`.
struct Columns<'a> {
    ek: Vec<&'a str>,
    agent_ids: Vec<&'a str>,
    attributes: Vec<&'a str>,
    spiffe_id: Vec<Option<&'a str>>,
    policy: Vec<Option<&'a str>>,
    first_attested: Vec<Option<i64>>,
    last_attested: Vec<Option<i64>>,
    count: Vec<i64>,
    svid_serial: Vec<Option<&'a str>>,
    svid_not_after: Vec<Option<i64>>,
    node: Vec<Option<&'a str>>,
    failure_code: Vec<Option<&'a str>>,
    failure_reason: Vec<Option<&'a str>>,
    failure_at: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [DeviceRow]) -> Self {
        Self {
            ek: rows.iter().map(|r| r.ek.as_str()).collect(),
            agent_ids: rows.iter().map(|r| r.agent_ids.as_str()).collect(),
            attributes: rows.iter().map(|r| r.attributes.as_str()).collect(),
            spiffe_id: rows.iter().map(|r| r.spiffe_id.as_deref()).collect(),
            policy: rows.iter().map(|r| r.policy.as_deref()).collect(),
            first_attested: rows.iter().map(|r| r.first_attested).collect(),
            last_attested: rows.iter().map(|r| r.last_attested).collect(),
            count: rows.iter().map(|r| r.count).collect(),
            svid_serial: rows.iter().map(|r| r.svid_serial.as_deref()).collect(),
            svid_not_after: rows.iter().map(|r| r.svid_not_after).collect(),
            node: rows.iter().map(|r| r.node.as_deref()).collect(),
            failure_code: rows.iter().map(|r| r.failure_code.as_deref()).collect(),
            failure_reason: rows.iter().map(|r| r.failure_reason.as_deref()).collect(),
            failure_at: rows.iter().map(|r| r.failure_at).collect(),
        }
    }
}

/// A `devices` row, columns in [`DEVICE_COLUMNS`] order.
fn device_row(row: &Row) -> Result<DeviceRow, postgres::Error> {
    Ok(DeviceRow {
        ek: row.try_get(0)?,
        agent_ids: row.try_get(1)?,
        attributes: row.try_get(2)?,
        spiffe_id: row.try_get(3)?,
        policy: row.try_get(4)?,
        first_attested: row.try_get(5)?,
        last_attested: row.try_get(6)?,
        count: row.try_get(7)?,
        svid_serial: row.try_get(8)?,
        svid_not_after: row.try_get(9)?,
        node: row.try_get(10)?,
        failure_code: row.try_get(11)?,
        failure_reason: row.try_get(12)?,
        failure_at: row.try_get(13)?,
    })
}

/// An `audit` row, columns in [`AUDIT_COLUMNS`] order.
fn audit_entry(row: &Row) -> Result<AuditEntry, postgres::Error> {
    Ok(AuditEntry {
        id: row.try_get(0)?,
        at: row.try_get(1)?,
        node: row.try_get(2)?,
        agent: row.try_get(3)?,
        ek: row.try_get(4)?,
        outcome: row.try_get(5)?,
        code: row.try_get(6)?,
        reason: row.try_get(7)?,
        spiffe_id: row.try_get(8)?,
    })
}

/// `postgres://USER@HOST:PORT/DB` from the parsed config: what messages and logs name the
/// database by. Never the password, whatever the URL held.
fn display_name(config: &Config) -> String {
    let mut name = String::from("postgres://");
    if let Some(user) = config.get_user() {
        let _ = write!(name, "{user}@");
    }
    let ports = config.get_ports();
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        name.push_str("localhost");
    }
    for (i, host) in hosts.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        match host {
            Host::Tcp(h) => name.push_str(h),
            Host::Unix(path) => name.push_str(&path.display().to_string()),
        }
        // One port for every host, or one port for all of them.
        if let Some(port) = ports
            .get(i)
            .or_else(|| ports.first().filter(|_| ports.len() == 1))
        {
            let _ = write!(name, ":{port}");
        }
    }
    name.push('/');
    name.push_str(config.get_dbname().or(config.get_user()).unwrap_or(""));
    name
}

/// `url` without its password, for the message about a URL that does not parse: the
/// user-info's password and a `password` query parameter are dropped; of the `key=value`
/// form only `host`, `port`, `user` and `dbname` are kept.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url
            .split_whitespace()
            .filter(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, _)| matches!(k, "host" | "port" | "user" | "dbname"))
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, params)) => {
            let params = params
                .split('&')
                .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != "password")
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{params}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// [`StoreError::Query`] for `what`, with PostgreSQL's message.
fn query(db: &str, what: &'static str, e: &postgres::Error) -> StoreError {
    StoreError::Query {
        db: db.to_owned(),
        what,
        message: describe(e),
    }
}

/// A row that cannot be read as its column types ([`StoreError::Corrupt`]); anything else
/// is [`StoreError::Query`].
fn read_err(db: &str, what: &'static str, e: &postgres::Error) -> StoreError {
    if e.as_db_error().is_none() && !e.is_closed() {
        schema::corrupt(db, what, describe(e))
    } else {
        query(db, what, e)
    }
}

/// The error with its causes on one line (the crate's `Display` omits the server's
/// message: "db error").
fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    if let Some(code) = e.code() {
        let _ = write!(text, " (SQLSTATE {})", code.code());
    }
    text.replace('\n', "; ")
}

#[cfg(test)]
mod tests;
