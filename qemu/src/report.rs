//! The fleet report: what a `run` or `load` measured, as a summary table for people, a JSON
//! document for machines and a PNG histogram of time to identity; [`RegistryReport`] adds
//! what the servers' device registry holds after the run.
//!
//! It only formats numbers it is given: it never starts processes, never reads the
//! environment and never panics on any input (empty runs, zero durations and NaN rates all
//! render). The PNG is drawn pixel by pixel with a built-in 5x7 font, so it needs no system
//! fonts (a fresh Debian machine has none).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::Error;

mod plot;
mod registry;

pub use registry::RegistryReport;

/// What one fleet run (process fleet) or load run (software TPMs) measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// `"run"` (swtpm processes) or `"load"` (software TPMs).
    pub mode: String,
    /// Devices the run tried to attest.
    pub devices: usize,
    /// Devices that received an identity (SVID).
    pub attested: usize,
    /// Devices the server rejected (policy, proof, certificate).
    pub rejected: usize,
    /// Devices that neither attested nor were rejected (timeouts, crashes, harness errors).
    pub errors: usize,
    /// Server processes in the run.
    pub servers: usize,
    /// Run mode: wall time spent provisioning swtpm devices (not part of `elapsed`).
    pub provisioning: Option<Duration>,
    /// First attempt started -> last device done.
    pub elapsed: Duration,
    /// One entry per attested device: attempt started -> identity received.
    pub time_to_identity: Vec<Duration>,
    /// Bytes on the wire per attestation (method in `notes`).
    pub bytes_per_attestation: Option<f64>,
    /// Highest peak resident set size of any agent process, KiB.
    pub peak_rss_agent_kb: Option<u64>,
    /// Highest peak resident set size of any server process, KiB.
    pub peak_rss_server_kb: Option<u64>,
    /// Faults injected during the run and what they did.
    pub faults: Vec<FaultReport>,
    /// The servers' device registry after the run (None: not read).
    pub registry: Option<RegistryReport>,
    /// Free-form remarks (methods, failures worth a look).
    pub notes: Vec<String>,
}

/// One injected fault and its effect.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    /// What was injected, e.g. `"broker-restart"`, `"kill-server"`, `"drop"`.
    pub kind: String,
    /// When it was injected, from the start of the attestation phase (None: all along).
    pub at: Option<Duration>,
    /// Devices whose attestation the fault hit.
    pub affected: usize,
    /// Of those, devices that still ended attested.
    pub recovered: usize,
    /// Anything else worth saying (counts of dropped frames, the killed node, ...).
    pub detail: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1000.0)
    }
}

fn fmt_opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

impl Summary {
    /// The `p`-th percentile (0..=100, nearest rank) of time to identity; None without
    /// samples or for a `p` outside 0..=100 (or NaN).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.time_to_identity.is_empty() || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let mut sorted = self.time_to_identity.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        // Nearest rank: the smallest value with at least p% of the samples at or below it.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        sorted.get(index).copied()
    }

    /// Attested devices per second of the attestation phase (0 when nothing elapsed).
    pub fn attestations_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.attested as f64 / secs
        } else {
            0.0
        }
    }

    fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.time_to_identity.len())
            .ok()
            .filter(|n| *n > 0)?;
        let total: Duration = self.time_to_identity.iter().sum();
        Some(total / n)
    }

    /// The summary as a two-column markdown table (one metric per row), then faults and notes.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("mode".into(), self.mode.clone()),
            ("devices".into(), self.devices.to_string()),
            (
                "attested".into(),
                format!("{} / {}", self.attested, self.devices),
            ),
            ("rejected".into(), self.rejected.to_string()),
            ("errors".into(), self.errors.to_string()),
            ("servers".into(), self.servers.to_string()),
        ];
        if let Some(p) = self.provisioning {
            rows.push(("provisioning".into(), fmt_duration(p)));
        }
        rows.push(("attestation phase".into(), fmt_duration(self.elapsed)));
        for (label, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
            rows.push((
                format!("time to identity {label}"),
                fmt_opt(self.percentile(p), fmt_duration),
            ));
        }
        rows.push((
            "attestations per second".into(),
            format!("{:.1}", self.attestations_per_second()),
        ));
        rows.push((
            "bytes on the wire per attestation".into(),
            fmt_opt(self.bytes_per_attestation, |b| format!("{b:.0} B")),
        ));
        rows.push((
            "agent peak RSS".into(),
            fmt_opt(self.peak_rss_agent_kb, |k| {
                format!("{:.1} MB", k as f64 / 1024.0)
            }),
        ));
        rows.push((
            "server peak RSS".into(),
            fmt_opt(self.peak_rss_server_kb, |k| {
                format!("{:.1} MB", k as f64 / 1024.0)
            }),
        ));
        if let Some(r) = &self.registry {
            r.rows(&mut rows);
        }
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        let _ = writeln!(out, "| {:<w0$} | {:>w1$} |", "metric", "value");
        let _ = writeln!(out, "|{}|{}:|", "-".repeat(w0 + 2), "-".repeat(w1 + 1));
        for (k, v) in &rows {
            let _ = writeln!(out, "| {k:<w0$} | {v:>w1$} |");
        }
        if !self.faults.is_empty() {
            out.push_str(
                "\n| fault | at | affected | recovered | detail |\n|---|---:|---:|---:|---|\n",
            );
            for f in &self.faults {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    f.kind,
                    fmt_opt(f.at, fmt_duration),
                    f.affected,
                    f.recovered,
                    f.detail
                );
            }
        }
        let registry_notes = self
            .registry
            .as_ref()
            .map(RegistryReport::notes)
            .unwrap_or_default();
        if !self.notes.is_empty() || !registry_notes.is_empty() {
            out.push('\n');
            for n in self.notes.iter().chain(&registry_notes) {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// The summary as JSON. Keys are stable; durations are milliseconds (f64), absent
    /// values are `null`.
    pub fn to_json(&self) -> Value {
        let pct = |p: f64| self.percentile(p).map(ms);
        json!({
            "mode": self.mode,
            "devices": self.devices,
            "attested": self.attested,
            "rejected": self.rejected,
            "errors": self.errors,
            "servers": self.servers,
            "provisioning_ms": self.provisioning.map(ms),
            "elapsed_ms": ms(self.elapsed),
            "attestations_per_second": self.attestations_per_second(),
            "time_to_identity_ms": {
                "count": self.time_to_identity.len(),
                "min": pct(0.0),
                "p50": pct(50.0),
                "p95": pct(95.0),
                "p99": pct(99.0),
                "max": pct(100.0),
                "mean": self.mean().map(ms),
                "samples": self.time_to_identity.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            },
            "bytes_per_attestation": self.bytes_per_attestation,
            "peak_rss_agent_kb": self.peak_rss_agent_kb,
            "peak_rss_server_kb": self.peak_rss_server_kb,
            "faults": self.faults.iter().map(|f| json!({
                "kind": f.kind,
                "at_ms": f.at.map(ms),
                "affected": f.affected,
                "recovered": f.recovered,
                "detail": f.detail,
            })).collect::<Vec<_>>(),
            "registry": self.registry.as_ref().map(RegistryReport::to_json),
            "notes": self.notes,
        })
    }

    /// Writes [`Summary::to_json`] (pretty-printed) to `path`.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// Draws the time-to-identity histogram (with p50/p95/p99 markers) as a PNG at `path`.
    ///
    /// # Errors
    /// [`Error::Plot`] naming the file and what failed.
    pub fn write_png(&self, path: &Path) -> Result<(), Error> {
        let canvas = plot::histogram(self);
        let file = File::create(path).map_err(|source| Error::Plot {
            op: "create",
            path: path.to_owned(),
            source,
        })?;
        canvas
            .encode(BufWriter::new(file))
            .map_err(|source| Error::Plot {
                op: "write",
                path: path.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn sample() -> Summary {
        Summary {
            mode: "run".into(),
            devices: 100,
            attested: 98,
            rejected: 1,
            errors: 1,
            servers: 2,
            provisioning: Some(Duration::from_secs(30)),
            elapsed: Duration::from_secs(10),
            // 98 samples 1..=98 ms, shuffled order (reverse) to check sorting.
            time_to_identity: (1..=98u64).rev().map(ms_).collect(),
            bytes_per_attestation: Some(3100.4),
            peak_rss_agent_kb: Some(4096),
            peak_rss_server_kb: None,
            faults: vec![FaultReport {
                kind: "kill-server".into(),
                at: Some(ms_(2500)),
                affected: 7,
                recovered: 7,
                detail: "node-2 killed".into(),
            }],
            registry: None,
            notes: vec!["bytes: payload + MQTT framing".into()],
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = sample();
        assert_eq!(s.percentile(50.0), Some(ms_(49)));
        assert_eq!(s.percentile(95.0), Some(ms_(94))); // ceil(0.95*98) = 94
        assert_eq!(s.percentile(99.0), Some(ms_(98))); // ceil(0.99*98) = 98
        assert_eq!(s.percentile(0.0), Some(ms_(1)));
        assert_eq!(s.percentile(100.0), Some(ms_(98)));
        assert_eq!(s.percentile(101.0), None);
        assert_eq!(s.percentile(f64::NAN), None);
        assert_eq!(Summary::default().percentile(50.0), None);
        let one = Summary {
            time_to_identity: vec![ms_(7)],
            ..Summary::default()
        };
        assert_eq!(one.percentile(1.0), Some(ms_(7)));
        assert_eq!(one.percentile(99.0), Some(ms_(7)));
    }

    #[test]
    fn rate_handles_zero_elapsed() {
        let s = sample();
        assert!((s.attestations_per_second() - 9.8).abs() < 1e-9);
        assert_eq!(Summary::default().attestations_per_second(), 0.0);
    }

    #[test]
    fn table_lists_every_metric() {
        let t = sample().table();
        for want in [
            "| attested",
            "98 / 100",
            "| rejected",
            "| errors",
            "time to identity p50",
            "49.0 ms",
            "94.0 ms",
            "30.0 s",
            "9.8",
            "3100 B",
            "4.0 MB",
            "| kill-server | 2.50 s | 7 | 7 | node-2 killed |",
            "- bytes: payload + MQTT framing",
        ] {
            assert!(t.contains(want), "table lacks {want:?}:\n{t}");
        }
        assert!(t.contains("server peak RSS") && t.contains("n/a"));
        // Every table row has the same width.
        let widths: Vec<usize> = t
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert!(
            widths.windows(2).all(|w| w[0] == w[1]),
            "ragged table:\n{t}"
        );
        // An empty summary renders too.
        assert!(
            Summary::default()
                .table()
                .contains("| time to identity p50")
        );
    }

    #[test]
    fn json_has_stable_keys() {
        let v = sample().to_json();
        for key in [
            "mode",
            "devices",
            "attested",
            "rejected",
            "errors",
            "servers",
            "provisioning_ms",
            "elapsed_ms",
            "attestations_per_second",
            "time_to_identity_ms",
            "bytes_per_attestation",
            "peak_rss_agent_kb",
            "peak_rss_server_kb",
            "faults",
            "notes",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["attested"], 98);
        assert_eq!(v["provisioning_ms"], 30000.0);
        assert_eq!(v["time_to_identity_ms"]["p50"], 49.0);
        assert_eq!(v["time_to_identity_ms"]["count"], 98);
        assert_eq!(
            v["time_to_identity_ms"]["samples"].as_array().map(Vec::len),
            Some(98)
        );
        assert!(v["peak_rss_server_kb"].is_null());
        assert_eq!(v["faults"][0]["at_ms"], 2500.0);
        assert_eq!(v["faults"][0]["recovered"], 7);
        let empty = Summary::default().to_json();
        assert!(empty["time_to_identity_ms"]["p50"].is_null());
        assert!(empty["provisioning_ms"].is_null());
    }

    #[test]
    fn files_are_written() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let json_path = dir.path().join("r.json");
        sample().write_json(&json_path).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&json_path).map_err(|e| e.to_string())?;
        let parsed: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        assert_eq!(parsed["devices"], 100);
        for s in [sample(), Summary::default()] {
            let png = dir.path().join("p.png");
            s.write_png(&png).map_err(|e| e.to_string())?;
            let bytes = std::fs::read(&png).map_err(|e| e.to_string())?;
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
            assert!(bytes.len() > 1000);
        }
        assert!(
            sample()
                .write_png(&dir.path().join("no/such/dir.png"))
                .is_err()
        );
        Ok(())
    }
}
