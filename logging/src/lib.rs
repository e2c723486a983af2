//! ekattest's `log` backend, shared by the agent and the server: one line per record on
//! stderr, as text (`level: message, key: value`) or as JSON,
//! `{"time":"<RFC 3339 UTC>","level":"info","msg":"...",<key-values in call order>}`.
//!
//! Call sites use the `log` crate's structured key-values, `log::info!(agentId = agent;
//! "Connected to agent")`, with camelCase keys; values captured with `:serde` (lists such as
//! `providedMethods`) come out as JSON arrays. The seed's messages and field names are the
//! operator contract; this crate only formats them. It never panics on a value and never
//! drops a record silently (a value that fails to serialize still prints, as a string).
//! Callers must never pass secrets.
//!
//! [`Logger`] is the [`log::Log`] implementation: a [`Filter`] (records from ekattest crates
//! at one level, from dependencies such as rumqttc and rustls at most at another) and a
//! [`Format`] that can change at run time. [`format_record`] is the formatter, for tests.
//! The agent (`ekattest_agent::logging`) and the server (`ekattest_server::daemon::logging`)
//! install it with their own filter and format.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ekattest_protocol::timestamp::Rfc3339;
use log::kv::{self, Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// Fields the JSON form writes itself; key-values with these names are dropped.
const RESERVED: [&str; 3] = ["time", "level", "msg"];

/// How a record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `level: message, key: value, ...` (journald adds the time).
    #[default]
    Text,
    /// One JSON object: `time` (RFC 3339 UTC, milliseconds), `level`, `msg`, then the
    /// key-values in call order.
    Json,
}

/// Which records pass: those of ekattest's own crates (target `ekattest*`) at `level` and
/// above, those of dependencies at `level` and at most `dependency_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// The most verbose level of ekattest's own records.
    pub level: LevelFilter,
    /// The most verbose level of other crates' records (never above `level`).
    pub dependency_max: LevelFilter,
}

impl Filter {
    /// True if a record with `metadata` is written.
    #[must_use]
    pub fn passes(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("ekattest");
        let limit = if ours {
            self.level
        } else {
            self.level.min(self.dependency_max)
        };
        metadata.level() <= limit
    }
}

/// The `log` backend: filters with a [`Filter`], formats with the current [`Format`]
/// ([`format_record`]) and writes each line to stderr with one write under its lock, so lines
/// from threads never interleave.
#[derive(Debug)]
pub struct Logger {
    filter: Filter,
    json: AtomicBool,
}

impl Logger {
    /// A logger with `filter`, writing `format` lines (usable in a `static`).
    #[must_use]
    pub const fn new(filter: Filter, format: Format) -> Self {
        Self {
            filter,
            json: AtomicBool::new(matches!(format, Format::Json)),
        }
    }

    /// Which records pass.
    #[must_use]
    pub fn filter(&self) -> Filter {
        self.filter
    }

    /// The lines written from now on.
    #[must_use]
    pub fn format(&self) -> Format {
        if self.json.load(Ordering::Relaxed) {
            Format::Json
        } else {
            Format::Text
        }
    }

    /// Switches the format of the lines written from now on.
    pub fn set_format(&self, format: Format) {
        self.json.store(format == Format::Json, Ordering::Relaxed);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.passes(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.passes(record.metadata()) {
            return;
        }
        let mut line = format_record(record, self.format(), SystemTime::now());
        line.push('\n');
        // One write per record under stderr's lock, so lines from threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Formats `record` as one line (no newline) in `format`, stamped with `now` in the JSON
/// form.
#[must_use]
pub fn format_record(record: &Record<'_>, format: Format, now: SystemTime) -> String {
    let level = record.level().as_str().to_ascii_lowercase();
    let mut out = String::with_capacity(256);
    match format {
        Format::Text => {
            let _ = write!(out, "{level}: {}", record.args());
            let _ = record.key_values().visit(&mut TextFields { out: &mut out });
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"time\":\"{}\",\"level\":\"{level}\",\"msg\":",
                rfc3339(now)
            );
            push_json(&mut out, &record.args().to_string());
            let _ = record.key_values().visit(&mut JsonFields { out: &mut out });
            out.push('}');
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, [`Rfc3339`]). Times before 1970 print as the
/// epoch.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Rfc3339::new(since.as_secs(), since.subsec_millis()).to_string()
}

struct TextFields<'a> {
    out: &'a mut String,
}

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let _ = write!(self.out, ", {key}: {value}");
        Ok(())
    }
}

struct JsonFields<'a> {
    out: &'a mut String,
}

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if RESERVED.contains(&key.as_str()) {
            return Ok(());
        }
        self.out.push(',');
        push_json(self.out, key.as_str());
        self.out.push(':');
        match serde_json::to_string(&value) {
            Ok(json) => self.out.push_str(&json),
            Err(_) => push_json(self.out, &value.to_string()),
        }
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
fn push_json(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(json) => out.push_str(&json),
        // serde_json cannot fail on a str; keep the output valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(target: &str, level: log::Level) -> Metadata<'_> {
        Metadata::builder().target(target).level(level).build()
    }

    #[test]
    fn own_records_pass_at_level_dependencies_at_most_at_their_cap() {
        let f = Filter {
            level: LevelFilter::Debug,
            dependency_max: LevelFilter::Warn,
        };
        assert!(f.passes(&meta("ekattest_agent::daemon", log::Level::Debug)));
        assert!(!f.passes(&meta("ekattest_agent::daemon", log::Level::Trace)));
        assert!(f.passes(&meta("rustls::client", log::Level::Warn)));
        assert!(!f.passes(&meta("rustls::client", log::Level::Info)));
        // The cap never lets a dependency above the level.
        let f = Filter {
            level: LevelFilter::Error,
            dependency_max: LevelFilter::Trace,
        };
        assert!(!f.passes(&meta("rumqttc::state", log::Level::Warn)));
    }

    #[test]
    fn the_format_switches_at_run_time() {
        let logger = Logger::new(
            Filter {
                level: LevelFilter::Info,
                dependency_max: LevelFilter::Info,
            },
            Format::Text,
        );
        assert_eq!(logger.format(), Format::Text);
        logger.set_format(Format::Json);
        assert_eq!(logger.format(), Format::Json);
    }
}
