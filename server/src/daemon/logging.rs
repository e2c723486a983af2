//! The daemon's JSON logger: one object per line on stderr,
//! `{"time":"<RFC 3339 UTC>","level":"info","msg":"...",<key-values in call order>}`.
//!
//! A [`log::Log`] implementation reading the `log` crate's structured key-values, so call
//! sites write `log::info!(agentId = agent; "Connected to agent")` and values captured with
//! `:serde` (lists such as `providedMethods`) come out as JSON arrays. The seed's messages
//! and field names are the operator contract; the formatting and writing are the agent's
//! too ([`ekattest_logging`]), this module holds the daemon's filter. It never panics on a
//! value and never drops a record silently (a record that fails to serialize still prints,
//! with the failing field as a string). Callers must never pass secrets.

use std::time::SystemTime;

use ekattest_logging::{Filter, Format, Logger};
use log::{LevelFilter, Log, Metadata, Record};

pub use ekattest_logging::rfc3339;

/// The JSON logger. Records from this crate pass at the configured level; records from
/// dependencies (rumqttc, rustls) at most at `info`, unless the level is `trace`.
#[derive(Debug)]
pub struct JsonLogger {
    inner: Logger,
}

impl JsonLogger {
    /// A logger passing records at `level` and above.
    #[must_use]
    pub fn new(level: LevelFilter) -> Self {
        let dependency_max = if level == LevelFilter::Trace {
            LevelFilter::Trace
        } else {
            LevelFilter::Info
        };
        Self {
            inner: Logger::new(
                Filter {
                    level,
                    dependency_max,
                },
                Format::Json,
            ),
        }
    }

    /// Installs this logger as the process logger.
    ///
    /// # Errors
    /// If a logger is already installed.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        let level = self.inner.filter().level;
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Formats `record` as one JSON object (no newline) stamped with `now`
/// ([`ekattest_logging::format_record`]).
#[must_use]
pub fn format_record(record: &Record<'_>, now: SystemTime) -> String {
    ekattest_logging::format_record(record, Format::Json, now)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use log::kv::Value;

    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn render(args: std::fmt::Arguments<'_>, kvs: &[(&str, Value<'_>)]) -> String {
        let record = Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .target("ekattest_server::daemon")
            .key_values(&kvs)
            .build();
        format_record(&record, at(1_700_000_000, 42))
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_700_000_000, 42)), "2023-11-14T22:13:20.042Z");
        // A leap day and the end of a century year.
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn time_level_msg_come_first_then_fields_in_call_order() {
        let line = render(
            format_args!("EK did not pass any configured validation check"),
            &[
                ("agentId", Value::from("ek-01")),
                ("code", Value::from(1u8)),
            ],
        );
        assert_eq!(
            line,
            "{\"time\":\"2023-11-14T22:13:20.042Z\",\"level\":\"warn\",\
             \"msg\":\"EK did not pass any configured validation check\",\
             \"agentId\":\"ek-01\",\"code\":1}"
        );
    }

    #[test]
    fn strings_are_escaped_and_lists_are_arrays() {
        let attrs = vec![
            "tpm_ek:tpm_ek.public_hash=\"ab\"".to_owned(),
            "tpm_ek:tpm_ek.model=\"TPM\\2.0\n\"".to_owned(),
        ];
        let line = render(
            format_args!("say \"hi\"\tnow"),
            &[
                ("agentAttestationAttributes", Value::from_serde(&attrs)),
                ("providedMethods", Value::from_serde(&["tpm_ek"])),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "say \"hi\"\tnow");
        assert_eq!(v["agentAttestationAttributes"][0], attrs[0]);
        assert_eq!(v["agentAttestationAttributes"][1], attrs[1]);
        assert_eq!(v["providedMethods"], serde_json::json!(["tpm_ek"]));
        assert!(
            line.contains(r#""tpm_ek:tpm_ek.public_hash=\"ab\"""#),
            "{line}"
        );
    }

    #[test]
    fn reserved_keys_in_fields_are_dropped() {
        let line = render(format_args!("m"), &[("msg", Value::from("evil"))]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "m");
        assert_eq!(line.matches("\"msg\"").count(), 1);
    }

    #[test]
    fn dependencies_are_capped_at_info_unless_trace() {
        let debug = JsonLogger::new(LevelFilter::Debug);
        let meta = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(debug.enabled(&meta("ekattest_server::daemon", log::Level::Debug)));
        assert!(!debug.enabled(&meta("rumqttc::state", log::Level::Debug)));
        assert!(debug.enabled(&meta("rumqttc::state", log::Level::Info)));
        let trace = JsonLogger::new(LevelFilter::Trace);
        assert!(trace.enabled(&meta("rumqttc::state", log::Level::Trace)));
        let warn = JsonLogger::new(LevelFilter::Warn);
        assert!(!warn.enabled(&meta("ekattest_server", log::Level::Info)));
    }
}
