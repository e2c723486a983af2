//! The report's registry lines: what the servers' device registry holds after a run (device
//! records, distinct EKs, size on disk, events written and dropped) next to the distinct EKs
//! the run attested. Pure formatting over numbers the stage read
//! ([`crate::stage::Stage::registry_report`]); it never opens a database.

use serde_json::{Value, json};

use super::fmt_opt;

/// The servers' device registry after a run: what it holds against what the run attested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryReport {
    /// `sqlite`, `postgres` or `none`.
    pub backend: String,
    /// Databases read: one per server for SQLite (each server has its own), one shared
    /// PostgreSQL, none for `none`.
    pub databases: usize,
    /// Device records (one per EK), summed over the databases; None when not read.
    pub records: Option<u64>,
    /// Distinct EKs across the databases (with one database, `records`).
    pub distinct_eks: Option<u64>,
    /// Distinct EKs the run attested, as the devices counted them.
    pub eks_attested: usize,
    /// Accepted attestations the records count (their `count`s summed): the attested
    /// devices, when nothing was lost.
    pub attestations: Option<u64>,
    /// Bytes on disk: the SQLite files and their `-wal`; for PostgreSQL its tables with
    /// their indexes.
    pub bytes_on_disk: Option<u64>,
    /// Events the servers wrote (`attestation_registry_events_written_total`, summed).
    pub events_written: Option<u64>,
    /// Events the servers dropped (`attestation_registry_events_dropped_total`, summed).
    pub events_dropped: Option<u64>,
    /// Every server's queue was empty before the servers stopped.
    pub flushed: bool,
    /// Why the registry could not be read back.
    pub error: Option<String>,
}

impl RegistryReport {
    /// Bytes on disk per device record (None without records or size).
    pub fn bytes_per_record(&self) -> Option<f64> {
        let records = self.records.filter(|r| *r > 0)?;
        Some(self.bytes_on_disk? as f64 / records as f64)
    }

    /// Bytes on disk per event written (each event is an audit line and a record update).
    pub fn bytes_per_event(&self) -> Option<f64> {
        let events = self.events_written.filter(|e| *e > 0)?;
        Some(self.bytes_on_disk? as f64 / events as f64)
    }

    pub(super) fn rows(&self, rows: &mut Vec<(String, String)>) {
        let n = |v: Option<u64>| fmt_opt(v, |v| v.to_string());
        let backend = match (self.backend.as_str(), self.databases) {
            ("sqlite", k) if k > 1 => format!("sqlite, one file per server ({k})"),
            ("postgres", _) => "postgres, shared by the servers".to_owned(),
            (b, _) => b.to_owned(),
        };
        rows.push(("registry".into(), backend));
        if self.backend == "none" {
            return;
        }
        let records = match (self.records, self.distinct_eks) {
            (Some(r), Some(d)) if self.databases > 1 => format!("{r} ({d} distinct EKs)"),
            (r, _) => n(r),
        };
        rows.push(("registry device records".into(), records));
        rows.push((
            "distinct EKs attested".into(),
            self.eks_attested.to_string(),
        ));
        rows.push((
            "registry attestations recorded".into(),
            n(self.attestations),
        ));
        rows.push((
            "registry events written / dropped".into(),
            format!("{} / {}", n(self.events_written), n(self.events_dropped)),
        ));
        rows.push((
            "registry size on disk".into(),
            match (self.bytes_on_disk, self.bytes_per_record()) {
                (Some(b), Some(per)) => {
                    format!("{:.2} MB, {per:.0} B per record", b as f64 / 1e6)
                }
                (b, _) => fmt_opt(b, |b| format!("{:.2} MB", b as f64 / 1e6)),
            },
        ));
    }

    pub(super) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.backend == "sqlite" && self.databases > 1 {
            notes.push(format!(
                "registry: each of the {} servers has its own SQLite registry; device records \
                 are summed over the files (an EK served by two servers has a record in each), \
                 distinct EKs counted across them",
                self.databases
            ));
        }
        if self.backend != "none" {
            notes.push(
                "registry: read after the servers stopped (a stopping server writes its queue); \
                 records also count EKs that were only refused"
                    .into(),
            );
            if let Some(per) = self.bytes_per_event() {
                notes.push(format!(
                    "registry size on disk per event written (audit line and record update): \
                     {per:.0} B"
                ));
            }
        }
        if !self.flushed && self.backend != "none" {
            notes.push("registry: a server's queue was not empty when the servers stopped".into());
        }
        if let Some(e) = &self.error {
            notes.push(format!("registry could not be read back: {e}"));
        }
        notes
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "backend": self.backend,
            "databases": self.databases,
            "records": self.records,
            "distinct_eks": self.distinct_eks,
            "eks_attested": self.eks_attested,
            "attestations": self.attestations,
            "bytes_on_disk": self.bytes_on_disk,
            "bytes_per_record": self.bytes_per_record(),
            "bytes_per_event": self.bytes_per_event(),
            "events_written": self.events_written,
            "events_dropped": self.events_dropped,
            "flushed": self.flushed,
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Summary;

    fn registry() -> RegistryReport {
        RegistryReport {
            backend: "sqlite".into(),
            databases: 2,
            records: Some(250),
            distinct_eks: Some(200),
            eks_attested: 200,
            attestations: Some(1000),
            bytes_on_disk: Some(500_000),
            events_written: Some(1000),
            events_dropped: Some(0),
            flushed: true,
            error: None,
        }
    }

    #[test]
    fn registry_lines_put_records_next_to_eks_attested() {
        let s = Summary {
            registry: Some(registry()),
            ..Summary::default()
        };
        let t = s.table();
        for want in [
            "| registry ",
            "sqlite, one file per server (2)",
            "250 (200 distinct EKs)",
            "| distinct EKs attested ",
            "1000 / 0",
            "0.50 MB, 2000 B per record",
            "own SQLite registry",
            "per event written (audit line and record update): 500 B",
        ] {
            assert!(t.contains(want), "table lacks {want:?}:\n{t}");
        }
        let widths: Vec<usize> = t
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert!(
            widths.windows(2).all(|w| w[0] == w[1]),
            "ragged table:\n{t}"
        );
        let v = s.to_json();
        assert_eq!(v["registry"]["records"], 250);
        assert_eq!(v["registry"]["distinct_eks"], 200);
        assert_eq!(v["registry"]["eks_attested"], 200);
        assert_eq!(v["registry"]["attestations"], 1000);
        assert_eq!(v["registry"]["bytes_per_record"], 2000.0);
        assert_eq!(v["registry"]["events_dropped"], 0);
        assert!(Summary::default().to_json()["registry"].is_null());

        let pg = RegistryReport {
            backend: "postgres".into(),
            databases: 1,
            records: Some(200),
            distinct_eks: Some(200),
            error: Some("connection refused".into()),
            flushed: false,
            ..registry()
        };
        let t = Summary {
            registry: Some(pg),
            ..Summary::default()
        }
        .table();
        assert!(t.contains("postgres, shared by the servers"), "{t}");
        assert!(!t.contains("distinct EKs)"), "{t}");
        assert!(
            t.contains("could not be read back: connection refused"),
            "{t}"
        );
        assert!(t.contains("queue was not empty"), "{t}");
        let none = RegistryReport {
            backend: "none".into(),
            ..RegistryReport::default()
        };
        let t = Summary {
            registry: Some(none),
            ..Summary::default()
        }
        .table();
        assert!(
            t.contains("| registry ") && !t.contains("registry device records"),
            "{t}"
        );
        assert_eq!(RegistryReport::default().bytes_per_record(), None);
    }
}
