//! The agent's `log` backend: one line per record on stderr, as text (`level: message,
//! key: value`) or, with `log-format: json`, as the server's JSON lines
//! (`{"time":"<RFC 3339 UTC>","level":"info","msg":"...",<key-values in call order>}`).
//!
//! Field names follow the server's: `time`, `level`, `msg`, then camelCase keys
//! (`agentId`, `spiffeId`, ...). Records from other crates (rumqttc, rustls) pass at most at
//! `warn`, so debug output stays the agent's own. Never panics on a value; callers never pass
//! secrets. The format can change at run time (SIGHUP re-reads the config).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ekattest_protocol::timestamp::Rfc3339;
use log::kv::{self, Key, Value, VisitSource};

use crate::daemon::config::LogFormat;

/// Fields the JSON form writes itself; key-values with these names are dropped.
const RESERVED: [&str; 3] = ["time", "level", "msg"];

/// The process logger.
#[derive(Debug)]
pub struct Logger {
    json: AtomicBool,
}

static LOGGER: Logger = Logger {
    json: AtomicBool::new(false),
};

impl Logger {
    /// Installs the logger (once per process; later calls only change the level and format).
    pub fn install(level: log::LevelFilter, format: LogFormat) {
        Self::set_format(format);
        // Err only when already installed: then this call just adjusts level and format.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(level);
    }

    /// Whether lines are JSON (`log-format: json`).
    #[must_use]
    pub fn is_json() -> bool {
        LOGGER.json.load(Ordering::Relaxed)
    }

    /// Switches between text and JSON lines.
    pub fn set_format(format: LogFormat) {
        LOGGER
            .json
            .store(format == LogFormat::Json, Ordering::Relaxed);
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("ekattest") || metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let format = if self.json.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let mut line = format_record(record, format, SystemTime::now());
        line.push('\n');
        // One write per record under stderr's lock, so lines from threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Formats `record` as one line (no newline), stamped with `now` in the JSON form.
#[must_use]
pub fn format_record(record: &log::Record<'_>, format: LogFormat, now: SystemTime) -> String {
    let level = record.level().as_str().to_ascii_lowercase();
    let mut out = String::with_capacity(256);
    match format {
        LogFormat::Text => {
            let _ = write!(out, "{level}: {}", record.args());
            let _ = record.key_values().visit(&mut TextFields { out: &mut out });
        }
        LogFormat::Json => {
            let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let time = Rfc3339::new(since.as_secs(), since.subsec_millis());
            let _ = write!(out, "{{\"time\":\"{time}\",\"level\":\"{level}\",\"msg\":");
            push_json(&mut out, &record.args().to_string());
            let _ = record.key_values().visit(&mut JsonFields { out: &mut out });
            out.push('}');
        }
    }
    out
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
        if let Some(n) = value.to_i64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(n) = value.to_u64() {
            let _ = write!(self.out, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(self.out, "{b}");
        } else {
            push_json(self.out, &value.to_string());
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
    use std::time::Duration;

    use super::*;

    fn render(format: LogFormat, kvs: &[(&str, Value<'_>)]) -> String {
        let record = log::Record::builder()
            .args(format_args!("Connected to server"))
            .level(log::Level::Info)
            .target("ekattest_agent::daemon")
            .key_values(&kvs)
            .build();
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        format_record(&record, format, now)
    }

    #[test]
    fn json_lines_have_the_server_fields_then_key_values_in_call_order() {
        let line = render(
            LogFormat::Json,
            &[
                ("agentId", Value::from("ek-01")),
                ("spiffeId", Value::from("spiffe://td/a\"b")),
                ("svidNotAfter", Value::from(1_700_000_060_i64)),
                ("msg", Value::from("dropped")),
            ],
        );
        assert_eq!(
            line,
            "{\"time\":\"2023-11-14T22:13:20.042Z\",\"level\":\"info\",\
             \"msg\":\"Connected to server\",\"agentId\":\"ek-01\",\
             \"spiffeId\":\"spiffe://td/a\\\"b\",\"svidNotAfter\":1700000060}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["spiffeId"], "spiffe://td/a\"b");
    }

    #[test]
    fn text_lines_append_key_values() {
        let line = render(
            LogFormat::Text,
            &[
                ("spiffeId", Value::from("spiffe://td/x")),
                ("svidNotAfter", Value::from(5_i64)),
            ],
        );
        assert_eq!(
            line,
            "info: Connected to server, spiffeId: spiffe://td/x, svidNotAfter: 5"
        );
    }
}
