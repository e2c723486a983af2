//! The agent's `log` backend: one line per record on stderr, as text (`level: message,
//! key: value`) or, with `log-format: json`, as the server's JSON lines
//! (`{"time":"<RFC 3339 UTC>","level":"info","msg":"...",<key-values in call order>}`).
//!
//! Field names follow the server's: `time`, `level`, `msg`, then camelCase keys
//! (`agentId`, `spiffeId`, ...). Records from other crates (rustls) pass at most at
//! `warn`, so debug output stays the agent's own. Never panics on a value; callers never pass
//! secrets. The format can change at run time (SIGHUP re-reads the config). The formatting
//! and writing are the server's too ([`ekattest_logging`]); this module holds the agent's
//! filter and its process-wide instance.

use std::time::SystemTime;

use ekattest_logging::{Filter, Format};

use crate::daemon::config::LogFormat;

/// The process logger: [`Logger::install`] it once, switch its format at run time.
#[derive(Debug)]
pub struct Logger;

/// Every ekattest record (the level is `log`'s global maximum, set by [`Logger::install`]);
/// other crates' records at most at `warn`.
static LOGGER: ekattest_logging::Logger = ekattest_logging::Logger::new(
    Filter {
        level: log::LevelFilter::Trace,
        dependency_max: log::LevelFilter::Warn,
    },
    Format::Text,
);

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
        LOGGER.format() == Format::Json
    }

    /// Switches between text and JSON lines.
    pub fn set_format(format: LogFormat) {
        LOGGER.set_format(shared_format(format));
    }
}

fn shared_format(format: LogFormat) -> Format {
    match format {
        LogFormat::Text => Format::Text,
        LogFormat::Json => Format::Json,
    }
}

/// Formats `record` as one line (no newline), stamped with `now` in the JSON form
/// ([`ekattest_logging::format_record`]).
#[must_use]
pub fn format_record(record: &log::Record<'_>, format: LogFormat, now: SystemTime) -> String {
    ekattest_logging::format_record(record, shared_format(format), now)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use log::kv::Value;

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
