//! `ekattest-fleet run` through the real binary (issue 5): a 10-device mixed-EK fleet of swtpm
//! devices, mosquitto, `ekattest-server` and `ekattest-agent` processes attests 10/10, the
//! JSON report and the PNG plot are written, and nothing from the run is left running.
//!
//! The agent and server binaries come from the same target folder (`cargo test --workspace`
//! builds them); a missing binary fails the test with the command that builds it.
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin_dir() -> PathBuf {
    let fleet = PathBuf::from(env!("CARGO_BIN_EXE_ekattest-fleet"));
    let dir = fleet.parent().unwrap().to_owned();
    for name in ["ekattest-agent", "ekattest-server"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: build it first (`cargo build -p ekattest-agent -p ekattest-server`, \
             or run the tests with `cargo test --workspace --all-features`)",
            dir.join(name).display()
        );
    }
    dir
}

/// Pids of processes whose command line mentions `needle`.
/// No process names `dir` and `dir` is empty: the fleet cleaned up (`when` for the message).
fn assert_nothing_left(dir: &Path, when: &str) {
    let left = processes_naming(dir);
    assert!(left.is_empty(), "processes left running {when}: {left:?}");
    let leftover: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        leftover.is_empty(),
        "temp folders left behind {when}: {leftover:?}"
    );
}

fn processes_naming(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn ten_mixed_devices_attest_and_leave_nothing_behind() {
    let bins = bin_dir();
    // Every temp folder of the run (run folder, swtpm CA and states, mosquitto) goes under
    // this TMPDIR, so any process the run leaves behind names it on its command line.
    let tmp = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report.json");
    let plot = out.path().join("ttid.png");
    let run = Command::new(env!("CARGO_BIN_EXE_ekattest-fleet"))
        .args([
            "run",
            "--devices",
            "10",
            "--ek",
            "mixed",
            "--parallel",
            "5",
            "--report",
        ])
        .arg(&report)
        .arg("--plot")
        .arg(&plot)
        .arg("--bin-dir")
        .arg(&bins)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "fleet run failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("10 / 10"), "summary table:\n{stdout}");
    // Not a terminal: whole progress lines, no carriage returns, ending with the totals.
    assert!(
        !stderr.contains('\r'),
        "carriage returns in a redirected run:\n{stderr:?}"
    );
    assert!(stderr.contains("provisioned 10/10\n"), "{stderr}");
    assert!(
        stderr.contains("attesting 10/10: 10 attested, 0 failed"),
        "{stderr}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["mode"], "run");
    assert_eq!(json["devices"], 10);
    assert_eq!(json["attested"], 10, "report: {json:#}");
    assert_eq!(json["rejected"], 0);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["time_to_identity_ms"]["count"], 10);
    let p50 = json["time_to_identity_ms"]["p50"].as_f64().unwrap();
    let p99 = json["time_to_identity_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(json["provisioning_ms"].as_f64().unwrap() > 0.0);
    let agent_rss = json["peak_rss_agent_kb"]
        .as_u64()
        .expect("agent RSS sampled");
    assert!(agent_rss > 100, "agent VmHWM {agent_rss} KiB");
    assert!(json["peak_rss_server_kb"].as_u64().is_some());

    let png = std::fs::read(&plot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    assert_nothing_left(tmp.path(), "after the run");
}

#[test]
fn killed_server_and_dropped_messages_still_end_attested() {
    let bins = bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("faults.json");
    let run = Command::new(env!("CARGO_BIN_EXE_ekattest-fleet"))
        .args([
            "run",
            "--devices",
            "9",
            "--ek",
            "mixed",
            "--parallel",
            "5",
            "--servers",
            "2",
        ])
        .args([
            "--kill-server-at",
            "300ms",
            "--drop",
            "5%",
            "--fault-seed",
            "3",
        ])
        .arg("--report")
        .arg(&report)
        .arg("--bin-dir")
        .arg(&bins)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "fleet run failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["attested"], 9, "report: {json:#}");
    let faults = json["faults"].as_array().unwrap();
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"kill-server") && kinds.contains(&"drop"),
        "{kinds:?}"
    );
    for f in faults {
        assert_eq!(f["affected"], f["recovered"], "fault {f}");
    }
    // With the fault proxy in place, bytes on the wire are measured.
    assert!(json["bytes_per_attestation"].as_f64().unwrap() > 1000.0);
    let left = processes_naming(tmp.path());
    assert!(
        left.is_empty(),
        "processes left running after the run: {left:?}"
    );
}

#[test]
fn sigint_stops_everything_and_removes_the_run_folder() {
    use std::io::{BufRead, BufReader};
    let bins = bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ekattest-fleet"))
        .args([
            "run",
            "--devices",
            "12",
            "--ek",
            "p384",
            "--parallel",
            "1",
            "--bin-dir",
        ])
        .arg(&bins)
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("stderr ended early: {seen:?}"))
            .unwrap();
        let attesting = line.contains("attesting 12 devices");
        seen.push(line);
        if attesting {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {seen:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert_nothing_left(tmp.path(), "after SIGINT");
}
