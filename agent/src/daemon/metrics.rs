//! The agent's metrics: `attestation_agent_proof{attestor_type,outcome}` counters and the
//! `attestation_agent_svid_expiry_timestamp_seconds` gauge, kept in memory and, if configured, written
//! atomically to a node_exporter textfile (Prometheus text format) after each attempt.
//!
//! Writing goes to a hidden temporary file in the same folder (the textfile collector only
//! reads `*.prom`), then renames it over the target, so node_exporter never reads half a file.
//! A failed write is reported to the caller, never fatal to attestation.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Counters and gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Successful attestations.
    pub success: u64,
    /// Failed attestations (rejected, unverifiable result, TPM failure, timeout).
    pub failed: u64,
    /// notAfter of the current SVID, unix seconds.
    pub svid_expiry: Option<i64>,
}

impl Metrics {
    /// Counts one attempt.
    pub fn record(&mut self, success: bool) {
        if success {
            self.success = self.success.saturating_add(1);
        } else {
            self.failed = self.failed.saturating_add(1);
        }
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP attestation_agent_proof Attestation proofs by this agent, by attestor type \
             and outcome."
        );
        let _ = writeln!(s, "# TYPE attestation_agent_proof counter");
        for (outcome, n) in [("success", self.success), ("failed", self.failed)] {
            let _ = writeln!(
                s,
                "attestation_agent_proof{{attestor_type=\"tpm_ek\",outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(expiry) = self.svid_expiry {
            let _ = writeln!(
                s,
                "# HELP attestation_agent_svid_expiry_timestamp_seconds notAfter of the current X.509-SVID \
                 (unix time)."
            );
            let _ = writeln!(
                s,
                "# TYPE attestation_agent_svid_expiry_timestamp_seconds gauge"
            );
            let _ = writeln!(
                s,
                "attestation_agent_svid_expiry_timestamp_seconds {expiry}"
            );
        }
        s
    }

    /// Writes [`Metrics::render`] to `path` atomically.
    ///
    /// # Errors
    /// The I/O error, with the path, if the folder is not writable.
    pub fn write_textfile(&self, path: &Path) -> std::io::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

/// Where the textfile goes, if anywhere; a small holder so the run loop has one call.
#[derive(Debug, Clone, Default)]
pub struct Textfile(pub Option<PathBuf>);

impl Textfile {
    /// Writes `metrics` if a path is configured, logging (not returning) a failure.
    pub fn publish(&self, metrics: &Metrics) {
        if let Some(path) = &self.0
            && let Err(e) = metrics.write_textfile(path)
        {
            log::warn!("cannot write the metrics textfile: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauge() {
        let mut m = Metrics::default();
        m.record(true);
        m.record(false);
        m.record(false);
        let text = m.render();
        assert!(text.contains("# TYPE attestation_agent_proof counter\n"));
        assert!(
            text.contains(
                "attestation_agent_proof{attestor_type=\"tpm_ek\",outcome=\"success\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "attestation_agent_proof{attestor_type=\"tpm_ek\",outcome=\"failed\"} 2\n"
            )
        );
        assert!(!text.contains("svid_expiry"));
        m.svid_expiry = Some(1_700_000_000);
        let text = m.render();
        assert!(text.contains("# TYPE attestation_agent_svid_expiry_timestamp_seconds gauge\n"));
        assert!(text.contains("attestation_agent_svid_expiry_timestamp_seconds 1700000000\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn textfile_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ekattest.prom");
        let mut m = Metrics::default();
        m.record(true);
        m.write_textfile(&path).unwrap();
        m.record(true);
        m.write_textfile(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("outcome=\"success\"} 2"), "{text}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ekattest.prom"], "temporary file left behind");
        let missing = dir.path().join("no/such/dir.prom");
        let err = m.write_textfile(&missing).unwrap_err();
        assert!(err.to_string().contains("no/such/dir.prom"), "{err}");
    }
}
