//! The stage's device registry (`--registry`): which backend the servers write, the one
//! PostgreSQL the stage starts for `postgres` (shared by every server, as several nodes of a
//! real deployment share one), the `registry:` mapping each server's config gets, and
//! reading the registry back for the report once the servers have written everything.
//!
//! With `sqlite` (the server's default) each server keeps its own `registry.db` under its
//! folder (its `state-dir`): K servers are K registries, and an EK served by two of them has
//! a record in both. With `none` the servers record nothing.
//!
//! This module never opens a database while a server may still write it (the stage stops
//! the servers first), never prints the PostgreSQL password and never binds a fixed port.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ekattest_server::registry::{Backend, DEFAULT_FILE, EkHash};
use ekattest_testkit::postgres::{DATABASE, Postgres};
use serde_norway::{Mapping, Value};

use crate::daemons::{ServerProcess, metric_value};
use crate::error::{Error, Result};
use crate::report::RegistryReport;

/// The servers' registry backend (`--registry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Registry {
    /// Each server its own SQLite file under its folder (the server's default).
    #[default]
    Sqlite,
    /// One PostgreSQL started by the stage, shared by every server.
    Postgres,
    /// No registry (`backend: none`).
    None,
}

impl Registry {
    /// Parses `sqlite`, `postgres` or `none`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sqlite" => Some(Self::Sqlite),
            "postgres" => Some(Self::Postgres),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The command-line name (also the server's `backend` value).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::None => "none",
        }
    }
}

/// The PostgreSQL a `postgres` stage runs, and the password file its servers read.
#[derive(Debug)]
pub(super) struct Database {
    postgres: Postgres,
    password_file: PathBuf,
}

impl Database {
    /// Starts PostgreSQL and writes its password to `dir/registry.password` (mode 0600, as
    /// the server requires).
    ///
    /// # Errors
    /// [`Error::Process`] when PostgreSQL does not start, [`Error::Io`]/[`Error::Harness`]
    /// for the password file.
    pub(super) fn start(dir: &Path) -> Result<Self> {
        let postgres = Postgres::start().map_err(|source| Error::Process {
            what: "PostgreSQL (--registry postgres)".into(),
            source,
        })?;
        let password_file = dir.join("registry.password");
        crate::error::write(&password_file, format!("{}\n", postgres.password()))?;
        crate::process::make_private(&password_file)?;
        Ok(Self {
            postgres,
            password_file,
        })
    }

    /// `postgres://ekattest@127.0.0.1:PORT/ekattest` (no password in it).
    pub(super) fn url(&self) -> String {
        self.postgres.url()
    }

    /// The postmaster (from `data/postmaster.pid`) and its children now (the servers'
    /// connections, the background writers), for the report's CPU line; empty when the pid
    /// file cannot be read.
    pub(super) fn pids(&self) -> Vec<u32> {
        let pid_file = self
            .postgres
            .socket_dir()
            .join("data")
            .join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let children = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| parent_of(*pid) == Some(postmaster));
        std::iter::once(postmaster).chain(children).collect()
    }
}

/// The parent pid of `pid` (field 4 of `/proc/PID/stat`, after the command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The `registry:` mapping of a server's config; `None` keeps the server's default (SQLite
/// under its `state-dir`).
pub(super) fn mapping(registry: Registry, db: Option<&Database>) -> Result<Option<Mapping>> {
    let mut m = Mapping::new();
    match (registry, db) {
        (Registry::Sqlite, _) => return Ok(None),
        (Registry::None, _) => {
            m.insert("backend".into(), "none".into());
        }
        (Registry::Postgres, Some(db)) => {
            let file = db.password_file.to_str().ok_or_else(|| {
                Error::Config(format!(
                    "the registry password file {} is not a UTF-8 path",
                    db.password_file.display()
                ))
            })?;
            m.insert("backend".into(), "postgres".into());
            m.insert("url".into(), Value::from(db.url()));
            m.insert("password-file".into(), file.into());
        }
        (Registry::Postgres, None) => {
            return Err(Error::Config(
                "--registry postgres: the stage has no PostgreSQL".into(),
            ));
        }
    }
    Ok(Some(m))
}

/// What [`read`] needs besides the databases: what the servers' metrics said before they
/// stopped.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Written {
    /// Sum of `attestation_registry_events_written_total`.
    pub(super) events: Option<u64>,
    /// Sum of `attestation_registry_events_dropped_total`.
    pub(super) dropped: Option<u64>,
    /// Every server's `attestation_registry_queue` reached 0 before the stop.
    pub(super) flushed: bool,
}

impl Written {
    /// Waits until every running server's `attestation_registry_queue` is 0 (at most
    /// `timeout`; a server whose metrics cannot be read, e.g. a killed one, counts as
    /// empty), then sums the servers' written and dropped counters.
    pub(super) fn wait(servers: &[Arc<Mutex<ServerProcess>>], timeout: Duration) -> Self {
        let metrics = || {
            servers
                .iter()
                .filter_map(|s| {
                    let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
                    if s.is_running() {
                        s.metrics().ok()
                    } else {
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let start = Instant::now();
        let flushed = loop {
            let queued = metrics()
                .iter()
                .any(|m| metric_value(m, "attestation_registry_queue").is_some_and(|q| q > 0.0));
            if !queued {
                break true;
            }
            if start.elapsed() >= timeout {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let texts = metrics();
        let sum = |series: &str| {
            let values: Vec<f64> = texts
                .iter()
                .filter_map(|m| metric_value(m, series))
                .collect();
            // Counters: whole, non-negative numbers.
            (!values.is_empty()).then(|| values.iter().sum::<f64>().max(0.0) as u64)
        };
        Self {
            events: sum("attestation_registry_events_written_total"),
            dropped: sum("attestation_registry_events_dropped_total"),
            flushed,
        }
    }
}

/// Reads the registry back after the servers stopped: device records (summed over the
/// SQLite files), distinct EKs across them, bytes on disk. A database that cannot be read
/// leaves its numbers empty and says why in [`RegistryReport::error`].
pub(super) fn read(
    registry: Registry,
    db: Option<&Database>,
    server_dirs: &[PathBuf],
    written: Written,
    eks_attested: usize,
) -> RegistryReport {
    let mut report = RegistryReport {
        backend: registry.as_str().to_owned(),
        databases: 0,
        records: None,
        distinct_eks: None,
        eks_attested,
        attestations: None,
        bytes_on_disk: None,
        events_written: written.events,
        events_dropped: written.dropped,
        flushed: written.flushed,
        error: None,
    };
    let counted = match (registry, db) {
        (Registry::None, _) => return report,
        (Registry::Sqlite, _) => read_sqlite(server_dirs, &mut report),
        (Registry::Postgres, Some(db)) => read_postgres(db, &mut report),
        (Registry::Postgres, None) => Err("the stage has no PostgreSQL".to_owned()),
    };
    if let Err(e) = counted {
        report.error = Some(e);
    }
    report
}

/// What the databases hold together.
#[derive(Default)]
struct Tally {
    records: u64,
    eks: BTreeSet<EkHash>,
    attestations: u64,
}

impl Tally {
    /// Adds one database: its count, its EKs and their accepted attestations.
    fn add(&mut self, backend: &Backend) -> std::result::Result<(), String> {
        let mut store = backend
            .open()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no store for this backend".to_owned())?;
        self.records += store.count().map_err(|e| e.to_string())?;
        for record in store.list(None).map_err(|e| e.to_string())? {
            self.attestations += record.count;
            self.eks.insert(record.ek);
        }
        Ok(())
    }

    fn report(&self, report: &mut RegistryReport) {
        report.records = Some(self.records);
        report.distinct_eks = Some(self.eks.len() as u64);
        report.attestations = Some(self.attestations);
    }
}

/// One SQLite file per server: sizes first (opening a store may touch the files), then each
/// store's records, EKs and attestations.
fn read_sqlite(
    server_dirs: &[PathBuf],
    report: &mut RegistryReport,
) -> std::result::Result<(), String> {
    let files: Vec<PathBuf> = server_dirs.iter().map(|d| d.join(DEFAULT_FILE)).collect();
    report.databases = files.len();
    report.bytes_on_disk = Some(files.iter().map(|f| sqlite_bytes(f)).sum());
    let mut tally = Tally::default();
    for file in &files {
        if !file.is_file() {
            return Err(format!("{} does not exist", file.display()));
        }
        tally.add(&Backend::Sqlite(file.clone()))?;
    }
    tally.report(report);
    Ok(())
}

/// The shared PostgreSQL: its device count, and the registry's tables with their indexes
/// (`pg_total_relation_size` of every table in `public`).
fn read_postgres(db: &Database, report: &mut RegistryReport) -> std::result::Result<(), String> {
    report.databases = 1;
    let backend = Backend::Postgres {
        url: db.url(),
        password: Some(db.postgres.password().to_owned()),
    };
    let mut tally = Tally::default();
    tally.add(&backend)?;
    tally.report(report);
    let size = db
        .postgres
        .psql(
            DATABASE,
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )
        .map_err(|e| e.to_string())?;
    report.bytes_on_disk = size.trim().parse().ok();
    Ok(())
}

/// The SQLite database's bytes on disk: the file and its write-ahead log.
fn sqlite_bytes(file: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    len(file) + len(Path::new(&wal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sqlite_is_the_default() {
        for r in [Registry::Sqlite, Registry::Postgres, Registry::None] {
            assert_eq!(Registry::parse(r.as_str()), Some(r));
        }
        assert_eq!(Registry::default(), Registry::Sqlite);
        assert_eq!(Registry::parse("mysql"), None);
    }

    #[test]
    fn sqlite_keeps_the_server_default_and_none_says_so() {
        assert_eq!(mapping(Registry::Sqlite, None).unwrap(), None);
        let none = mapping(Registry::None, None).unwrap().unwrap();
        assert_eq!(none.get("backend"), Some(&Value::from("none")));
        assert_eq!(none.len(), 1);
        assert!(mapping(Registry::Postgres, None).is_err());
    }

    #[test]
    fn parent_of_this_process_is_its_parent() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
        assert_eq!(parent_of(u32::MAX), None);
    }

    #[test]
    fn sqlite_size_counts_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("registry.db");
        std::fs::write(&db, [0u8; 100]).unwrap();
        assert_eq!(sqlite_bytes(&db), 100);
        std::fs::write(dir.path().join("registry.db-wal"), [0u8; 28]).unwrap();
        assert_eq!(sqlite_bytes(&db), 128);
        assert_eq!(sqlite_bytes(&dir.path().join("missing.db")), 0);
    }

    #[test]
    fn a_missing_sqlite_file_is_reported_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let r = read(
            Registry::Sqlite,
            None,
            &[dir.path().to_owned()],
            Written::default(),
            3,
        );
        assert_eq!((r.databases, r.records, r.eks_attested), (1, None, 3));
        assert!(r.error.unwrap().contains("does not exist"));
        let none = read(Registry::None, None, &[], Written::default(), 3);
        assert_eq!((none.databases, none.records, none.error), (0, None, None));
    }
}
