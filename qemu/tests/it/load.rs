//! The software-TPM load generator in CI (issue 5 acceptance): 2,000 simulated devices
//! (mixed RSA-2048 and P-256 EKs) through a real mosquitto to one real `ekattest-server`,
//! all attested; and 500 P-256 devices under each fault load mode accepts (5% of MQTT
//! messages dropped, one of two servers killed, the broker restarted), all attested, the
//! report's fault entry counting affected devices that all recovered; 200 devices over 2
//! servers with each registry backend (issue 18), the registry's records and attestation
//! counts checked against the distinct EKs and devices attested. Counts are asserted, never
//! timing.
//!
//! `ekattest-server` and `ekattestctl` come from the same target folder as this test
//! (`cargo build -p ekattest-server` first, or `cargo test --workspace --all-features`); a
//! missing binary or mosquitto fails the test with what to do.
use crate::common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ekattest_fleet::faults::FaultPlan;
use ekattest_fleet::load::{self, EkMix, LoadOptions};
use ekattest_fleet::report::{FaultReport, RegistryReport, Summary};
use ekattest_fleet::stage::Registry;

#[test]
fn two_thousand_soft_devices_attest_through_mosquitto() {
    let opts = LoadOptions {
        devices: 2000,
        ek: EkMix::Mixed,
        servers: 1,
        threads: 2,
        window: 128,
        rsa_keys: 8,
        p256_keys: 500,
        verify_every: 1,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(600),
        bin_dir: Some(common::bin_dir_with(&["ekattest-server", "ekattestctl"])),
        ..LoadOptions::default()
    };
    let summary = load::run(&opts, &Arc::new(AtomicBool::new(false)))
        .unwrap_or_else(|e| panic!("load run could not start: {e}"));
    let table = summary.table();
    assert_eq!(summary.mode, "load");
    assert_eq!(summary.devices, 2000);
    assert_eq!(
        (summary.attested, summary.rejected, summary.errors),
        (2000, 0, 0),
        "{table}"
    );
    assert_eq!(summary.time_to_identity.len(), 2000, "{table}");
    let bytes = summary.bytes_per_attestation.unwrap();
    assert!(
        bytes > 1000.0 && bytes < 6000.0,
        "{bytes} bytes per attestation\n{table}"
    );
    assert!(summary.peak_rss_server_kb.is_some(), "{table}");
    // Every Result signature was checked, and the server counted every success.
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("2000 Result signatures verified")
                && n.contains("servers counted 2000 successes")),
        "{table}"
    );
}

/// A P-256 load run of `devices` with `faults` (the `load` command's fault options), the
/// attempt timeout short so lost messages recover within the test's time.
fn faulty_run(devices: usize, servers: usize, rate: Option<f64>, faults: &str) -> Summary {
    let args: Vec<std::ffi::OsString> = faults.split_whitespace().map(Into::into).collect();
    let (plan, rest) = FaultPlan::extract(args).unwrap();
    assert!(rest.is_empty(), "not fault options: {rest:?}");
    let opts = LoadOptions {
        devices,
        ek: EkMix::P256,
        servers,
        threads: 2,
        window: 64,
        rate,
        p256_keys: devices,
        verify_every: 1,
        timeout: Duration::from_millis(1500),
        deadline: Duration::from_secs(120),
        bin_dir: Some(common::bin_dir_with(&["ekattest-server", "ekattestctl"])),
        faults: plan,
        ..LoadOptions::default()
    };
    let summary = load::run(&opts, &Arc::new(AtomicBool::new(false)))
        .unwrap_or_else(|e| panic!("load run could not start: {e}"));
    println!("{}", summary.table());
    summary
}

/// The report's entry for `kind`, which must have fired (`at` set for timed faults).
fn fault<'a>(summary: &'a Summary, kind: &str) -> &'a FaultReport {
    let table = summary.table();
    let f = summary
        .faults
        .iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} fault in the report\n{table}"));
    assert!(
        !f.detail.starts_with("FAILED") && !f.detail.starts_with("not fired"),
        "{kind}: {}\n{table}",
        f.detail
    );
    f
}

fn all_attested(summary: &Summary, devices: usize) {
    let table = summary.table();
    assert_eq!(
        (summary.attested, summary.rejected, summary.errors),
        (devices, 0, 0),
        "{table}"
    );
    assert_eq!(summary.time_to_identity.len(), devices, "{table}");
}

#[test]
fn five_percent_drop_recovers_every_device() {
    let s = faulty_run(500, 1, None, "--drop 5% --fault-seed 3");
    all_attested(&s, 500);
    let f = fault(&s, "drop");
    // 4 PUBLISHes per attestation at 5%: about one device in five needs a retry.
    assert!(f.affected > 0, "{}", s.table());
    assert_eq!(f.recovered, f.affected, "{}", s.table());
    assert!(f.detail.contains("dropped"), "{}", f.detail);
}

#[test]
fn killed_server_leaves_the_other_to_finish() {
    // 200 logins/s: the run is still going when the kill lands at 1 s.
    let s = faulty_run(500, 2, Some(200.0), "--kill-server-at 1s");
    all_attested(&s, 500);
    let f = fault(&s, "kill-server");
    assert!(f.at.is_some_and(|at| at >= Duration::from_secs(1)), "{f:?}");
    assert!(f.detail.contains("SIGKILL"), "{}", f.detail);
    assert!(f.affected > 0, "{}", s.table());
    assert_eq!(f.recovered, f.affected, "{}", s.table());
}

#[test]
fn broker_restart_is_survived() {
    let s = faulty_run(
        500,
        1,
        Some(200.0),
        "--broker-restart-at 1s --broker-down 1s",
    );
    all_attested(&s, 500);
    let f = fault(&s, "broker-restart");
    assert!(f.at.is_some_and(|at| at >= Duration::from_secs(1)), "{f:?}");
    assert!(f.detail.contains("started again"), "{}", f.detail);
    assert!(f.affected > 0, "{}", s.table());
    assert_eq!(f.recovered, f.affected, "{}", s.table());
    // Both device threads saw the broker go and come back.
    assert!(
        s.notes.iter().any(|n| n.contains(" 2 reconnects")),
        "{}",
        s.table()
    );
}

#[test]
fn corrupted_and_dropped_messages_are_retried() {
    let s = faulty_run(500, 1, None, "--drop 2% --corrupt 5% --fault-seed 11");
    all_attested(&s, 500);
    for kind in ["drop", "corrupt"] {
        let f = fault(&s, kind);
        assert!(f.affected > 0, "{kind}\n{}", s.table());
        assert_eq!(f.recovered, f.affected, "{kind}\n{}", s.table());
    }
    // Damaged frames and rejections of damaged frames were retried at once, not waited out.
    let note = s
        .notes
        .iter()
        .find(|n| n.contains("at once after a damaged frame"))
        .unwrap();
    assert!(!note.contains("(0 at once"), "{note}");
}

/// Measurement runs with the test's binaries (e.g. under `--profile fleet`):
/// `EKATTEST_LOAD_ARGS="--devices 100000 --ek p256" cargo test --profile fleet -p
/// ekattest-fleet --features it --test it load:: -- --ignored --nocapture`. The same as
/// `ekattest-fleet load ARGS`; it fails unless every device attested.
#[test]
#[ignore = "measurement run: set EKATTEST_LOAD_ARGS and pass --ignored"]
fn measure() {
    let args = std::env::var("EKATTEST_LOAD_ARGS")
        .expect("set EKATTEST_LOAD_ARGS, e.g. \"--devices 2000 --ek mixed\"");
    let mut argv: Vec<std::ffi::OsString> = vec!["load".into(), "--bin-dir".into()];
    argv.push(common::bin_dir_with(&["ekattest-server", "ekattestctl"]).into_os_string());
    argv.extend(args.split_whitespace().map(Into::into));
    assert_eq!(load::cli(argv), std::process::ExitCode::SUCCESS);
}

/// 200 P-256 devices over a pool of 50 EKs (4 device ids per EK) through 2 servers whose
/// registry is `registry`; every device attested, and the registry read back.
fn registry_run(registry: Registry) -> (Summary, RegistryReport) {
    let opts = LoadOptions {
        devices: 200,
        ek: EkMix::P256,
        servers: 2,
        threads: 2,
        window: 32,
        p256_keys: 50,
        verify_every: 1,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(300),
        bin_dir: Some(common::bin_dir_with(&["ekattest-server", "ekattestctl"])),
        registry,
        ..LoadOptions::default()
    };
    let summary = load::run(&opts, &Arc::new(AtomicBool::new(false)))
        .unwrap_or_else(|e| panic!("load run could not start: {e}"));
    println!("{}", summary.table());
    all_attested(&summary, 200);
    let r = summary
        .registry
        .clone()
        .unwrap_or_else(|| panic!("no registry in the report\n{}", summary.table()));
    assert_eq!(r.error, None, "{}", summary.table());
    assert!(r.flushed, "{}", summary.table());
    // The devices' own count: 200 device ids over 50 pool EKs, all attested.
    assert_eq!(r.eks_attested, 50, "{}", summary.table());
    // Every acceptance reached the registry, nothing was dropped, and each was recorded
    // once: the records' counts add up to the attested devices.
    assert_eq!(r.events_dropped, Some(0), "{}", summary.table());
    assert!(
        r.events_written.is_some_and(|w| w >= 200),
        "{}",
        summary.table()
    );
    assert_eq!(r.attestations, Some(200), "{}", summary.table());
    assert_eq!(r.distinct_eks, Some(50), "{}", summary.table());
    assert!(
        r.bytes_on_disk.is_some_and(|b| b > 0),
        "{}",
        summary.table()
    );
    let json = summary.to_json();
    assert_eq!(json["registry"]["eks_attested"], 50);
    (summary, r)
}

#[test]
fn postgres_registry_shared_by_two_servers_has_one_record_per_ek() {
    let (summary, r) = registry_run(Registry::Postgres);
    assert_eq!((r.backend.as_str(), r.databases), ("postgres", 1));
    // One shared database: one record per distinct EK, whichever server served it.
    assert_eq!(r.records, Some(50), "{}", summary.table());
    assert!(
        summary.table().contains("postgres, shared by the servers"),
        "{}",
        summary.table()
    );
}

#[test]
fn sqlite_registry_is_one_file_per_server() {
    let (summary, r) = registry_run(Registry::Sqlite);
    assert_eq!((r.backend.as_str(), r.databases), ("sqlite", 2));
    // Each server has its own file: an EK served by both has a record in each, so the sum
    // is at least the distinct EKs and at most one record per EK per server.
    let records = r.records.unwrap_or_default();
    assert!((50..=100).contains(&records), "{}", summary.table());
    assert!(
        summary.table().contains("own SQLite registry"),
        "{}",
        summary.table()
    );
}
