//! The fleet demo: provisions a small fleet of swtpm devices with a per-run CA, configures a
//! server policy that trusts that CA, attests every device through the real agent and server
//! libraries, then shows what an attacker gets: a device from an unknown CA is rejected, and
//! a replayed answer hits a removed session.
//!
//! Output: the seed's server log lines as JSON (one per line, on stdout), then a summary
//! table; `--report FILE` also writes the whole run as JSON.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use ekattest_agent::tpm::ek::EkKind;
use ekattest_agent::tpm::stream::Stream;
use ekattest_server::attest::Attestor;
use ekattest_server::config::Document;
use ekattest_server::session::SessionConfig;
use serde_json::json;

use crate::flow::{self, Report, Server};
use crate::swtpm::{Ca, Device, ProvisionOptions};

/// Demo settings (`ekattest-fleet demo --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// Devices trusted through the run's CA.
    pub devices: usize,
    /// Devices provisioned and attested at once.
    pub parallel: usize,
    /// Write a JSON report here.
    pub report: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            devices: 6,
            parallel: 4,
            report: None,
        }
    }
}

/// EK kinds the devices take in turn.
const KINDS: [EkKind; 3] = [EkKind::Rsa2048, EkKind::P256, EkKind::P384];

fn policy_yaml(ca: &Ca) -> Result<String, String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("              {l}\n"))
            .collect::<String>()
    };
    Ok(format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: tpm_ek_policy\n      \
         spiffeIdTemplate: /agents/tpm/{{{{tpm_ek.manufacturer}}}}/{{{{tpm_ek.public_hash}}}}\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n            caCerts: |\n{}            \
         intermediateCerts: |\n{}",
        indent(read(ca.root_cert_pem())?),
        indent(read(ca.intermediate_cert_pem())?),
    ))
}

/// Runs `work` over `items` on at most `parallel` threads, keeping the input order.
fn parallel_map<I: Sync, O: Send>(
    items: &[I],
    parallel: usize,
    work: impl Fn(&I) -> O + Sync,
) -> Vec<O> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(parallel.max(1)) {
        let done: Vec<O> = thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|i| s.spawn(|| work(i))).collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        out.extend(done);
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn log_line(report: &Report) -> Vec<serde_json::Value> {
    let mut lines = vec![json!({
        "level": "info",
        "msg": "Login started with multi-attestation support",
        "agent": report.agent,
        "providedMethods": ["tpm_ek"],
        "ek": report.ek.as_str(),
    })];
    match &report.outcome {
        Ok(id) => {
            lines.push(json!({
                "level": "info",
                "msg": "Authorization received and verified",
                "agent": report.agent,
                "agentAttestationAttributes": id.log_attributes(),
            }));
            lines.push(json!({
                "level": "info",
                "msg": "Connected to agent",
                "agent": report.agent,
                "spiffe_id": id.spiffe_id,
                "policy": id.policy,
            }));
        }
        Err(r) => lines.push(json!({
            "level": "warn",
            "msg": r.code.as_str(),
            "agent": report.agent,
            "reason": r.reason,
        })),
    }
    lines
}

/// Runs the demo, printing to stdout.
///
/// # Errors
/// A message naming the step that failed (missing tools, provisioning, a device-side error).
pub fn run(opts: &DemoOptions) -> Result<(), String> {
    let started = Instant::now();
    eprintln!(
        "creating a per-run CA and provisioning {} swtpm devices...",
        opts.devices + 1
    );
    let ca = Ca::create().map_err(|e| format!("cannot create the per-run CA: {e}"))?;
    let rogue_ca = Ca::create().map_err(|e| format!("cannot create the second CA: {e}"))?;
    let provision = |trusted: &bool| {
        let opts = ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: true,
        };
        Device::provision(if *trusted { &ca } else { &rogue_ca }, &opts)
    };
    let mut wanted = vec![true; opts.devices];
    wanted.push(false);
    let devices = parallel_map(&wanted, opts.parallel, provision)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot provision a device: {e}"))?;
    let provisioned = started.elapsed();

    let doc = Document::parse(policy_yaml(&ca)?.as_bytes())
        .map_err(|e| format!("the demo's policy document is invalid: {e}"))?;
    let attestor = Attestor::new("node-1", Some("example.org"), SessionConfig::default())?;
    let server = Server { attestor, doc };

    let jobs: Vec<(usize, &Device)> = devices.iter().enumerate().collect();
    let t = Instant::now();
    let reports = parallel_map(&jobs, opts.parallel, |&(i, dev)| {
        let transport =
            Stream::connect_tcp("127.0.0.1", dev.port()).map_err(|e| format!("device {i}: {e}"))?;
        flow::attest(transport, Some(KINDS[i % KINDS.len()]), &server)
            .map_err(|e| format!("device {i}: {}", ekattest_protocol::ErrorChain(&e)))
    })
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let attest_wall = t.elapsed();

    for line in reports.iter().flat_map(log_line) {
        println!("{line}");
    }

    // An attacker replays the first device's (correct) answer: the session is gone.
    let replay = reports
        .iter()
        .find_map(|r| r.answer_frame.as_ref().map(|f| (r, f)))
        .map(|(r, f)| flow::answer_frame_to_outcome(&server, &r.agent, f))
        .transpose()
        .map_err(|e| format!("replay: {e}"))?;
    if let Some(outcome) = &replay {
        let line = match outcome {
            Ok(_) => json!({"level": "error", "msg": "replayed answer was ACCEPTED"}),
            Err(r) => {
                json!({"level": "warn", "msg": r.code.as_str(), "reason": r.reason, "note": "replayed answer"})
            }
        };
        println!("{line}");
    }

    let accepted: Vec<&Report> = reports.iter().filter(|r| r.outcome.is_ok()).collect();
    let rejected = reports.len() - accepted.len();
    let mut totals: Vec<Duration> = reports.iter().map(|r| r.timings.total).collect();
    totals.sort();
    let mut server_side: Vec<Duration> = reports
        .iter()
        .map(|r| r.timings.login + r.timings.answer)
        .collect();
    server_side.sort();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n| devices | attested | rejected | replay | p50 total | p99 total | p50 server | provisioning | throughput |"
    );
    let _ = writeln!(table, "|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        table,
        "| {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.2} ms | {:.1} s | {:.1} /s |",
        reports.len(),
        accepted.len(),
        rejected,
        match &replay {
            Some(Err(_)) => "rejected",
            Some(Ok(_)) => "ACCEPTED",
            None => "n/a",
        },
        percentile(&totals, 0.5).as_secs_f64() * 1e3,
        percentile(&totals, 0.99).as_secs_f64() * 1e3,
        percentile(&server_side, 0.5).as_secs_f64() * 1e3,
        provisioned.as_secs_f64(),
        reports.len() as f64 / attest_wall.as_secs_f64().max(1e-9),
    );
    print!("{table}");

    if let Some(path) = &opts.report {
        let devices: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "agent": r.agent,
                    "ek": r.ek.as_str(),
                    "accepted": r.outcome.is_ok(),
                    "spiffe_id": r.outcome.as_ref().ok().map(|i| i.spiffe_id.clone()),
                    "attributes": r.outcome.as_ref().ok().map(|i| i.log_attributes()),
                    "reject_code": r.outcome.as_ref().err().map(|e| e.code.as_str()),
                    "reason": r.outcome.as_ref().err().map(|e| e.reason.clone()),
                    "ms": {
                        "prepare": r.timings.prepare.as_secs_f64() * 1e3,
                        "login": r.timings.login.as_secs_f64() * 1e3,
                        "activate": r.timings.activate.as_secs_f64() * 1e3,
                        "answer": r.timings.answer.as_secs_f64() * 1e3,
                        "total": r.timings.total.as_secs_f64() * 1e3,
                    },
                })
            })
            .collect();
        let report = json!({
            "devices": devices,
            "attested": accepted.len(),
            "rejected": rejected,
            "replay_rejected": matches!(replay, Some(Err(_))),
            "replay_code": replay.as_ref().and_then(|r| r.as_ref().err()).map(|e| e.code.as_str()),
        });
        std::fs::write(path, format!("{report:#}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let expected = opts.devices;
    if accepted.len() != expected || rejected != 1 || !matches!(replay, Some(Err(_))) {
        return Err(format!(
            "unexpected outcome: {} of {expected} trusted devices attested, {rejected} rejected (want 1), replay {}",
            accepted.len(),
            if matches!(replay, Some(Err(_))) {
                "rejected"
            } else {
                "not rejected"
            }
        ));
    }
    Ok(())
}
