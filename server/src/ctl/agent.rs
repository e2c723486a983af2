//! `ekattestctl agent list|show|ban|unban|evict|audit`: the device registry, read and
//! written directly in its database (the one in the server config's `registry`, or
//! `--registry`).
//!
//! Bans are written here and read by every server node within its `registry.ban-refresh`;
//! `evict` forgets a device's record (its audit lines stay; the device may attest again).
//! Exit status: 0 done (for `show`, found), 1 nothing matched (`show`, `unban`, `evict`), 2
//! usage error or the registry cannot be opened.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ekattest_protocol::timestamp::UtcSeconds;
use serde::Serialize;

use crate::daemon::config::{Password, ServerConfig};
use crate::registry::{
    self, AuditEntry, Backend, Ban, BanTarget, Record, Store, StoreError, UnixSeconds,
};

/// Where the registry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// The server config file whose `registry` (and `state-dir`) to use.
    ServerConfig(PathBuf),
    /// `--registry`: `sqlite:PATH` or a `postgres://` URL, with `--password-file`.
    Url {
        /// The URL as given.
        url: String,
        /// The PostgreSQL password file.
        password_file: Option<PathBuf>,
    },
}

/// The default server config read when neither `--server-config` nor `--registry` is given.
pub const DEFAULT_SERVER_CONFIG: &str = "/etc/ekattest/server.yaml";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `list [--since D] [--bans]`: the devices (or the bans).
    List {
        /// Only records attested or refused in the last `since`.
        since: Option<Duration>,
        /// List the bans instead of the devices.
        bans: bool,
    },
    /// `show HASH|AGENT-ID`: one device's record.
    Show(String),
    /// `ban --ek HASH | --agent ID [--reason TEXT]`.
    Ban {
        /// What to ban.
        target: BanTarget,
        /// Why.
        reason: String,
    },
    /// `unban --ek HASH | --agent ID`.
    Unban(BanTarget),
    /// `evict --ek HASH`.
    Evict(registry::EkHash),
    /// `audit [--since D]`: the audit trail as JSON lines.
    Audit {
        /// Only lines of the last `since`.
        since: Option<Duration>,
    },
}

/// The arguments of an `agent` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The registry.
    pub registry: Registry,
    /// The command.
    pub op: Op,
    /// JSON output (`list`, `show`).
    pub json: bool,
}

/// Opens the registry `r` names.
///
/// # Errors
/// A message naming the file or database and what to do.
pub fn open(r: &Registry) -> Result<Box<dyn Store>, String> {
    let backend = match r {
        Registry::ServerConfig(file) => {
            ServerConfig::load(file)
                .map_err(|e| {
                    format!(
                        "{e} (the registry is found through the server config: pass \
                         --server-config FILE or --registry URL)"
                    )
                })?
                .registry
                .backend
        }
        Registry::Url { url, password_file } => backend_of(url, password_file.as_ref())?,
    };
    match backend.open() {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Err(
            "the server config sets registry backend: none; there is no registry to read"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

fn backend_of(url: &str, password_file: Option<&PathBuf>) -> Result<Backend, String> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        if password_file.is_some() {
            return Err("--password-file is for a postgres:// registry".to_owned());
        }
        return Ok(Backend::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let password = match password_file {
            None => None,
            Some(p) => Some(
                Password::read(p)
                    .map_err(|e| format!("--password-file {}: {e}", p.display()))?
                    .expose()
                    .to_owned(),
            ),
        };
        return Ok(Backend::Postgres {
            url: url.to_owned(),
            password,
        });
    }
    Err(format!(
        "--registry {url:?}: use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE"
    ))
}

/// Runs an `agent` command against an opened store, writing to `out`.
///
/// # Errors
/// The store's error.
pub fn run_on(
    store: &mut dyn Store,
    args: &Args,
    now: SystemTime,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode, StoreError> {
    let since = |d: &Option<Duration>| {
        d.map(|d| registry::unix_seconds(now) - i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
    };
    match &args.op {
        Op::List { since: s, bans } => {
            if *bans {
                let bans = store.bans()?;
                print_bans(out, &bans, args.json);
            } else {
                let records = store.list(since(s))?;
                if args.json {
                    for r in &records {
                        json_line(out, r);
                    }
                } else {
                    print_table(out, &records);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Op::Show(key) => {
            let records = match registry::parse_ek_hash(key) {
                Ok(hash) => store.record(&hash)?.into_iter().collect(),
                Err(_) => store.records_of_agent(key)?,
            };
            if records.is_empty() {
                let _ = writeln!(out, "no device with EK hash or agent id {key:?}");
                return Ok(ExitCode::from(1));
            }
            for r in &records {
                if args.json {
                    json_line(out, r);
                } else {
                    print_record(out, r);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Op::Ban { target, reason } => {
            let ban = Ban {
                target: target.clone(),
                reason: reason.clone(),
                at: registry::unix_seconds(now),
                by: operator(),
            };
            store.ban(&ban)?;
            let _ = writeln!(
                out,
                "banned {target} in {}; every server node refuses it within its \
                 registry.ban-refresh (default 2s)",
                store.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Op::Unban(target) => {
            if store.unban(target)? {
                let _ = writeln!(out, "unbanned {target}");
                Ok(ExitCode::SUCCESS)
            } else {
                let _ = writeln!(out, "{target} was not banned");
                Ok(ExitCode::from(1))
            }
        }
        Op::Evict(hash) => {
            if store.evict(hash)? {
                let _ = writeln!(
                    out,
                    "forgot EK {}; its audit lines stay, and the device may attest again (ban \
                     it to refuse it)",
                    hex::encode(hash)
                );
                Ok(ExitCode::SUCCESS)
            } else {
                let _ = writeln!(out, "no device with EK {}", hex::encode(hash));
                Ok(ExitCode::from(1))
            }
        }
        Op::Audit { since: s } => {
            store.audit(since(s), &mut |entry: AuditEntry| {
                json_line(out, &entry);
                true
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ekattestctl agent ...`: opens the registry and runs the command, printing to stdout.
#[must_use]
pub fn run(args: &Args) -> ExitCode {
    let mut store = match open(&args.registry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let code = match run_on(store.as_mut(), args, SystemTime::now(), &mut out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            ExitCode::from(2)
        }
    };
    let _ = out.flush();
    code
}

/// `user@host` of whoever runs the command (recorded with a ban).
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

fn json_line<T: Serialize>(out: &mut dyn std::io::Write, value: &T) {
    if let Ok(line) = serde_json::to_string(value) {
        let _ = writeln!(out, "{line}");
    }
}

fn time(t: Option<UnixSeconds>) -> String {
    t.and_then(|t| u64::try_from(t).ok())
        .map_or_else(|| "-".to_owned(), |t| UtcSeconds(t).to_string())
}

fn print_table(out: &mut dyn std::io::Write, records: &[Record]) {
    let _ = writeln!(
        out,
        "{:<64}  {:<20}  {:<20}  {:>6}  {:<20}  SPIFFE ID",
        "EK HASH", "AGENT ID", "LAST ATTESTED", "COUNT", "LAST FAILURE"
    );
    for r in records {
        let failure = r
            .last_failure
            .as_ref()
            .map_or_else(|| "-".to_owned(), |f| f.code.clone());
        let _ = writeln!(
            out,
            "{:<64}  {:<20}  {:<20}  {:>6}  {:<20}  {}",
            hex::encode(r.ek),
            r.last_agent().unwrap_or("-"),
            time(r.last_attested),
            r.count,
            failure,
            r.spiffe_id.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(out, "{} devices", records.len());
}

fn print_record(out: &mut dyn std::io::Write, r: &Record) {
    let _ = writeln!(out, "EK hash:         {}", hex::encode(r.ek));
    let _ = writeln!(out, "agent ids:       {}", r.agent_ids.join(", "));
    let _ = writeln!(
        out,
        "SPIFFE ID:       {}",
        r.spiffe_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "policy:          {}",
        r.policy.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "first attested:  {}", time(r.first_attested));
    let _ = writeln!(out, "last attested:   {}", time(r.last_attested));
    let _ = writeln!(out, "attestations:    {}", r.count);
    let _ = writeln!(out, "node:            {}", r.node.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "SVID serial:     {}",
        r.svid_serial.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "SVID not after:  {}", time(r.svid_not_after));
    match &r.last_failure {
        Some(f) => {
            let _ = writeln!(
                out,
                "last failure:    {} at {}: {}",
                f.code,
                time(Some(f.at)),
                f.reason
            );
        }
        None => {
            let _ = writeln!(out, "last failure:    -");
        }
    }
    for (name, value) in &r.attributes {
        let _ = writeln!(out, "  {name} = {value}");
    }
}

fn print_bans(out: &mut dyn std::io::Write, bans: &[Ban], json: bool) {
    if json {
        for b in bans {
            json_line(out, &b.json());
        }
        return;
    }
    let _ = writeln!(
        out,
        "{:<6}  {:<64}  {:<20}  {:<20}  REASON",
        "KIND", "EK HASH OR AGENT ID", "SINCE", "BY"
    );
    for b in bans {
        let _ = writeln!(
            out,
            "{:<6}  {:<64}  {:<20}  {:<20}  {}",
            b.target.kind(),
            b.target.value(),
            time(Some(b.at)),
            b.by,
            b.reason
        );
    }
    let _ = writeln!(out, "{} bans", bans.len());
}

#[cfg(test)]
mod tests;
