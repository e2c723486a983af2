//! `ekattest-fleet run`: a process fleet. Per-run swtpm CA and devices (or a state cache),
//! mosquitto (unless `--broker`; with `--nats-nodes N` a local N-node nats-server cluster,
//! [`crate::nats`], the servers on `bus: nats`, each agent given every node's MQTT listener
//! as its `broker` list, its own node first, so agents spread over the nodes and fail over
//! to the others), an SVID CA, K `ekattest-server` processes with a policy trusting the
//! run's swtpm CA, then N `ekattest-agent run --once` processes, at most P at a time,
//! timed from spawn to exit; ends with a [`Summary`](crate::report::Summary), with the
//! servers' device registry read back (`--registry`). Bus, SVID CA,
//! policy, servers and fault proxy are the run's [`Stage`](crate::stage::Stage); the swtpm
//! devices (`devices`) and agent processes (`agents`) are this mode's.
//!
//! Everything lives in one per-run temp folder; every child (agents, swtpm, servers,
//! mosquitto) is stopped and the folder removed on success, failure and SIGINT/SIGTERM
//! (unless `--keep`). SIGINT/SIGTERM only set a flag (no unsafe code here) that the phases
//! poll; then everything is dropped in order and the program exits 130.

mod agents;
mod cli;
mod devices;

pub use cli::{USAGE, cli, parse, stop_on_signals};

use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{self, Error, Result};
use crate::faults::{DeviceRecord, FaultPlan};
use crate::report::Summary;
use crate::stage::{Bus, Policy, Registry, Stage, StageConfig, bin_beside};
use crate::swtpm::ProvisionOptions;

const CLUSTER: &str = "fleet";
const TRUST_DOMAIN: &str = "fleet.ekattest.test";

/// Which EK the agents attest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkChoice {
    /// RSA-2048 (template L-1).
    Rsa2048,
    /// NIST P-256 (template L-2).
    P256,
    /// NIST P-384 (template H-3).
    P384,
    /// rsa2048, p256, p384 in turn.
    Mixed,
}

impl EkChoice {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rsa2048" => Self::Rsa2048,
            "p256" => Self::P256,
            "p384" => Self::P384,
            "mixed" => Self::Mixed,
            _ => return None,
        })
    }

    /// The agent's `ek` value for device `i`.
    pub fn for_device(self, i: usize) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Mixed => ["rsa2048", "p256", "p384"][i % 3],
        }
    }

    fn needs_p256(self) -> bool {
        matches!(self, Self::P256 | Self::Mixed)
    }
}

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Devices to attest.
    pub devices: usize,
    /// EK choice.
    pub ek: EkChoice,
    /// `ekattest-server` processes.
    pub servers: usize,
    /// An existing broker (`mqtt://HOST:PORT`) instead of a per-run mosquitto.
    pub broker: Option<String>,
    /// A per-run local NATS cluster of this many nodes instead of mosquitto (0: none).
    pub nats_nodes: usize,
    /// JSON report file.
    pub report: Option<PathBuf>,
    /// PNG histogram file.
    pub plot: Option<PathBuf>,
    /// Agents alive at a time.
    pub parallel: usize,
    /// Devices provisioned at a time (default: the number of cores).
    pub provision_parallel: usize,
    /// Keep the run folder (logs, configs) instead of removing it.
    pub keep: bool,
    /// Route agents through the MQTT proxy (no faults) to count bytes on the wire.
    pub wire_bytes: bool,
    /// Per-device time limit (agent spawn -> exit).
    pub timeout: Duration,
    /// Provisioned-state cache folder.
    pub cache: Option<PathBuf>,
    /// Where `ekattest-agent` and `ekattest-server` are (default: beside this program).
    pub bin_dir: Option<PathBuf>,
    /// Faults to inject (`--broker-restart-at`, `--kill-server-at`, `--drop`, ...).
    pub faults: FaultPlan,
    /// The servers' device registry (`--registry`; default SQLite, a file per server).
    pub registry: Registry,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            devices: 25,
            ek: EkChoice::Mixed,
            servers: 1,
            broker: None,
            nats_nodes: 0,
            report: None,
            plot: None,
            parallel: 64,
            provision_parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
            keep: false,
            wire_bytes: false,
            timeout: Duration::from_secs(120),
            cache: None,
            bin_dir: None,
            faults: FaultPlan::default(),
            registry: Registry::default(),
        }
    }
}

/// The policy document trusting the run's swtpm CA (as in qemu/tests/e2e.rs); the VM fleet
/// uses it too.
pub(crate) fn policy(root_pem: &str, intermediate_pem: &str) -> String {
    policy_with_template(
        "/agents/tpm/{{tpm_ek.public_hash}}",
        root_pem,
        intermediate_pem,
    )
}

/// A one-policy `AgentAttestation` document trusting the given swtpm CA certificates, whose
/// SPIFFE IDs follow `template`.
pub(crate) fn policy_with_template(
    template: &str,
    root_pem: &str,
    intermediate_pem: &str,
) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("              {l}\n"))
            .collect::<String>()
    };
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: tpm_ek_policy\n      \
         spiffeIdTemplate: {template}\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n            \
         caCerts: |\n{}            intermediateCerts: |\n{}",
        indent(root_pem),
        indent(intermediate_pem)
    )
}

/// Runs the fleet; the summary on success (also when devices failed), an error when the
/// run itself could not be set up or was interrupted.
///
/// # Errors
/// The step that could not be set up ([`Error`]); [`Error::Interrupted`] after SIGINT or
/// SIGTERM.
pub fn run(opts: &RunOptions, stop: &AtomicBool) -> Result<Summary> {
    const BUILD: &str = "cargo build --profile fleet -p ekattest-agent -p ekattest-server";
    let agent_bin = bin_beside(opts.bin_dir.as_deref(), "ekattest-agent", BUILD)?;
    let server_bin = bin_beside(opts.bin_dir.as_deref(), "ekattest-server", BUILD)?;
    let run_dir = tempfile::Builder::new()
        .prefix("ekattest-fleet.")
        .tempdir()
        .map_err(|source| Error::TempDir {
            what: "the run folder",
            source,
        })?;
    let dir = run_dir.path().to_owned();
    if opts.keep {
        eprintln!("ekattest-fleet: run folder {} (kept)", dir.display());
    }
    let result = run_in(opts, stop, &dir, &agent_bin, &server_bin);
    if opts.keep {
        let _ = run_dir.keep();
    }
    result
}

/// Provisions the devices, starts the stage, attests, reports.
fn run_in(
    opts: &RunOptions,
    stop: &AtomicBool,
    dir: &Path,
    agent_bin: &Path,
    server_bin: &Path,
) -> Result<Summary> {
    let mut summary = Summary {
        mode: "run".into(),
        devices: opts.devices,
        servers: opts.servers,
        ..Summary::default()
    };
    // 1. Devices.
    let states = provision(opts, stop, dir, &mut summary)?;
    // 2. Stage: bus (mosquitto, an existing broker or a NATS cluster), SVID CA, policy,
    // servers, and the fault proxy when messages are dropped/corrupted or bytes counted.
    let policy = policy(
        &error::read_to_string(&states.anchors.root)?,
        &error::read_to_string(&states.anchors.intermediate)?,
    );
    let mut stage = Stage::start(&stage_config(opts, dir, server_bin, policy))?;
    if let Some(up) = stage.nats_startup() {
        summary.notes.push(format!(
            "NATS cluster of {} nodes (nats-server, JetStream, MQTT listeners) up in {:.1} \
             s; servers on bus: nats; agent i starts on node i mod {} and fails over to the \
             others",
            opts.nats_nodes,
            up.as_secs_f64(),
            opts.nats_nodes
        ));
    }
    // Agent i starts on NATS node i mod N; otherwise every agent uses the one broker (or
    // the proxy in front of it).
    let agent_urls = if stage.nats().is_some() {
        stage.listeners().to_vec()
    } else {
        stage.device_urls()
    };
    if stop.load(Ordering::Relaxed) {
        return Err(Error::INTERRUPTED);
    }
    // 3. Agents.
    eprintln!(
        "ekattest-fleet: attesting {} devices through {} server(s), {} agents at a time",
        opts.devices, opts.servers, opts.parallel
    );
    let agents_dir = dir.join("agents");
    error::create_dir_all(&agents_dir)?;
    let ek = opts.ek;
    let ek_for = move |i: usize| ek.for_device(i);
    let scheduler = stage.faults(&opts.faults)?;
    let phase = agents::Phase {
        agent_bin,
        dir: &agents_dir,
        brokers: &agent_urls,
        cluster: CLUSTER,
        trust_bundle: &stage.svid().bundle,
        states: &states.files,
        ek: &ek_for,
        parallel: opts.parallel,
        timeout: opts.timeout,
        stop,
        slow_tpm: opts.faults.slow_tpm.map(|s| (s, opts.faults.seed)),
        debug_log: !opts.faults.is_empty(),
        t0: scheduler.started(),
    };
    let (outcomes, elapsed) = agents::attest(&phase);
    let mut events = scheduler.finish();
    events.extend(opts.faults.continuous_events(stage.proxy_stats().as_ref()));
    let records: Vec<DeviceRecord> = outcomes
        .iter()
        .map(|o| DeviceRecord {
            started: o.started,
            finished: Some(o.started + o.time),
            attempts: o.attempts,
            attested: o.attested,
            node: stage.nats().is_some().then(|| o.index % agent_urls.len()),
        })
        .collect();
    summary.faults = events.iter().map(|e| e.report(&records)).collect();
    if stop.load(Ordering::Relaxed) {
        return Err(Error::INTERRUPTED);
    }
    // 4. Report.
    summary.elapsed = elapsed;
    tally(&mut summary, opts.devices, &outcomes);
    summary.peak_rss_server_kb = stage
        .servers()
        .iter()
        .filter_map(|s| {
            let pid = s.lock().unwrap_or_else(PoisonError::into_inner).pid();
            pid.and_then(agents::vm_hwm_kb)
        })
        .max();
    bytes_per_attestation(&mut summary, &stage);
    outcome_notes(&mut summary, &outcomes);
    // Every device has an EK of its own (its swtpm state): distinct EKs attested are the
    // attested devices. Read once the servers have written the registry (stops the stage).
    summary.registry = Some(stage.registry_report(summary.attested));
    summary.notes.extend(stage.nats_log_summaries());
    Ok(summary)
}

/// The stage of a `run`: the bus the options name, K servers, the fault proxy when
/// messages are dropped/corrupted or bytes counted.
fn stage_config(opts: &RunOptions, dir: &Path, server_bin: &Path, policy: String) -> StageConfig {
    let mut config = StageConfig::new(
        dir,
        CLUSTER,
        TRUST_DOMAIN,
        server_bin,
        Policy::Document(policy),
    );
    config.bus = match &opts.broker {
        Some(url) => Bus::External {
            url: url.clone(),
            more: Vec::new(),
            nats_urls: Vec::new(),
        },
        None if opts.nats_nodes > 0 => Bus::Nats {
            nodes: opts.nats_nodes,
        },
        None => Bus::Mosquitto,
    };
    config.servers = opts.servers;
    config.registry = opts.registry;
    config.server.max_sessions = Some(opts.devices.saturating_mul(2).max(1024));
    config.proxy =
        (opts.faults.needs_mqtt_proxy() || opts.wire_bytes).then(|| opts.faults.proxy_options());
    config
}

/// Provisions (or takes from the cache) the devices' swtpm states, with progress lines.
fn provision(
    opts: &RunOptions,
    stop: &AtomicBool,
    dir: &Path,
    summary: &mut Summary,
) -> Result<devices::States> {
    let popts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: opts.ek.needs_p256(),
    };
    eprintln!(
        "ekattest-fleet: provisioning {} swtpm devices ({} at a time){}",
        opts.devices,
        opts.provision_parallel,
        opts.cache
            .as_ref()
            .map(|c| format!(", cache {}", c.display()))
            .unwrap_or_default()
    );
    let total = opts.devices;
    let printer = std::sync::Mutex::new(crate::progress::Progress::stderr());
    let progress = move |n: usize| {
        if let Ok(mut p) = printer.lock() {
            p.update(&format!("provisioned {n}/{total}"), n == total);
        }
    };
    let states = devices::prepare(
        dir,
        opts.devices,
        &popts,
        opts.provision_parallel,
        opts.cache.as_deref(),
        stop,
        &progress,
    )?;
    summary.provisioning = (!states.cached).then_some(states.provisioning);
    if states.cached {
        summary.notes.push(format!(
            "TPM states reused from the cache {} (provisioning skipped)",
            opts.cache
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default()
        ));
    }
    Ok(states)
}

/// Counts attested, rejected and failed devices (devices without an outcome are errors).
fn tally(summary: &mut Summary, devices: usize, outcomes: &[agents::Outcome]) {
    for o in outcomes {
        if o.attested {
            summary.attested += 1;
            summary.time_to_identity.push(o.time);
        } else if o.rejected {
            summary.rejected += 1;
        } else {
            summary.errors += 1;
        }
    }
    summary.errors += devices.saturating_sub(outcomes.len());
    summary.peak_rss_agent_kb = outcomes.iter().filter_map(|o| o.peak_rss_kb).max();
}

/// The agents' peak RSS sampling and the first ten failed devices, as notes.
fn outcome_notes(summary: &mut Summary, outcomes: &[agents::Outcome]) {
    summary.notes.push(format!(
        "agent peak RSS: VmHWM sampled every 20 ms from /proc while each agent ran ({} samples taken)",
        outcomes.iter().filter(|o| o.peak_rss_kb.is_some()).count()
    ));
    for o in outcomes.iter().filter(|o| !o.attested).take(10) {
        summary.notes.push(format!(
            "device {} ({}): {} (exit {}): {}",
            o.index,
            o.ek,
            if o.rejected { "rejected" } else { "error" },
            o.code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            o.last_line
        ));
    }
}

/// Bytes per attestation: what the proxy carried if there is one, else the servers' frame
/// byte counters plus the MQTT framing of one session.
fn bytes_per_attestation(summary: &mut Summary, stage: &Stage) {
    let bytes_in = stage.metric_sum("attestation_frame_bytes_total{direction=\"in\"}");
    let bytes_out = stage.metric_sum("attestation_frame_bytes_total{direction=\"out\"}");
    if let Some(stats) = stage.proxy_stats()
        && summary.attested > 0
    {
        summary.bytes_per_attestation =
            Some((stats.bytes_up + stats.bytes_down) as f64 / summary.attested as f64);
        summary.notes.push(
            "bytes per attestation: MQTT bytes the fault proxy carried between the agents and \
             the broker, both directions, over attested devices (retries included; TCP/IP \
             headers not counted)"
                .into(),
        );
    } else if let (Some(i), Some(o)) = (bytes_in, bytes_out)
        && summary.attested > 0
        && i + o > 0.0
    {
        let overhead = mqtt_overhead(CLUSTER, "node-1");
        summary.bytes_per_attestation = Some((i + o) / summary.attested as f64 + overhead);
        summary.notes.push(format!(
            "bytes per attestation: frame payload bytes the servers received and published \
             (attestation_frame_bytes_total) per attested device, plus {overhead:.0} B of MQTT \
             framing on the device link (CONNECT/CONNACK, SUBSCRIBE/SUBACK, 4 PUBLISH headers \
             with topics and their PUBACKs, DISCONNECT); TCP/IP headers not counted"
        ));
    }
}

/// MQTT 3.1.1 framing of one agent's session on top of the frame payloads, counted on the
/// device's link: CONNECT (clean session, no will or credentials, a 35-character agent id)
/// and CONNACK, SUBSCRIBE/SUBACK of its `down` topic, the Login and Answer PUBLISHes (QoS 1,
/// 2-byte remaining length) and their PUBACKs, the Challenge and Result PUBLISHes and their
/// PUBACKs, DISCONNECT. TCP/IP headers are not counted.
fn mqtt_overhead(cluster: &str, node: &str) -> f64 {
    let agent = "x".repeat(35);
    let Ok(topics) = ekattest_protocol::topic::Topics::with_default_prefix(cluster) else {
        return 0.0;
    };
    let len = |t: Result<ekattest_protocol::topic::Topic, _>| t.map_or(0, |t| t.as_str().len());
    let (login, down, answer) = (
        len(topics.login(&agent)),
        len(topics.down(&agent)),
        len(topics.answer(node, &agent)),
    );
    let connect = 2 + 10 + 2 + agent.len();
    let connack = 4;
    let subscribe = 2 + 2 + 2 + down + 1;
    let suback = 5;
    // fixed header (1 + 2) + topic (2 + len) + packet id (2); payload counted separately
    let publish = |topic: usize| 3 + 2 + topic + 2;
    let puback = 4;
    let disconnect = 2;
    (connect
        + connack
        + subscribe
        + suback
        + publish(login)
        + publish(answer)
        + 2 * publish(down)
        + 4 * puback
        + disconnect) as f64
}
