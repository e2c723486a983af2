//! `ekattest-fleet run`: a process fleet. Per-run swtpm CA and devices (or a state cache),
//! mosquitto (unless `--broker`; with `--nats-nodes N` a local N-node nats-server cluster,
//! [`crate::nats`], the servers on `bus: nats`, each agent given every node's MQTT listener
//! as its `broker` list, its own node first, so agents spread over the nodes and fail over
//! to the others), an SVID CA, K `ekattest-server` processes with a policy trusting the
//! run's swtpm CA, then N `ekattest-agent run --once` processes, at most P at a time,
//! timed from spawn to exit; ends with a [`Summary`](crate::report::Summary).
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::broker::{Broker, BrokerOptions};
use crate::daemons::{ServerProcess, ServerSpec, metric_value};
use crate::faults::mqtt_proxy::MqttProxy;
use crate::faults::{DeviceRecord, FaultPlan, ProcessTargets, Scheduler};
use crate::nats::NatsCluster;
use crate::report::Summary;
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
        }
    }
}

fn bin(opts: &RunOptions, name: &str) -> Result<PathBuf, String> {
    let dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
            .ok_or("cannot find the folder of this program: pass --bin-dir")?,
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it beside ekattest-fleet (cargo build --profile fleet -p ekattest-agent -p ekattest-server) or pass --bin-dir",
            path.display()
        ))
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The policy document trusting the run's swtpm CA (as in qemu/tests/it/e2e.rs); the VM fleet
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

/// The broker's socket address from an `mqtt://HOST:PORT` URL.
fn broker_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let hostport = url.strip_prefix("mqtt://").ok_or_else(|| {
        format!("--drop/--corrupt need a plain mqtt://HOST:PORT broker, not {url:?}")
    })?;
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the broker {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("the broker {url:?} has no address"))
}

/// Sum of `series` over every server (0 where absent).
fn metric_sum(servers: &[Arc<Mutex<ServerProcess>>], series: &str) -> Option<f64> {
    let mut total = None;
    for s in servers {
        let text = s.lock().unwrap_or_else(PoisonError::into_inner).metrics();
        if let Ok(text) = text
            && let Some(v) = metric_value(&text, series)
        {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// Runs the fleet; the summary on success (also when devices failed), an error when the
/// run itself could not be set up or was interrupted.
pub fn run(opts: &RunOptions, stop: &AtomicBool) -> Result<Summary, String> {
    let agent_bin = bin(opts, "ekattest-agent")?;
    let server_bin = bin(opts, "ekattest-server")?;
    let run_dir = tempfile::Builder::new()
        .prefix("ekattest-fleet.")
        .tempdir()
        .map_err(|e| format!("cannot create the run folder: {e}"))?;
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

fn run_in(
    opts: &RunOptions,
    stop: &AtomicBool,
    dir: &Path,
    agent_bin: &Path,
    server_bin: &Path,
) -> Result<Summary, String> {
    let mut summary = Summary {
        mode: "run".into(),
        devices: opts.devices,
        servers: opts.servers,
        ..Summary::default()
    };
    // 1. Devices.
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
    // 2. Broker (mosquitto, an existing one or a NATS cluster), SVID CA, policy, servers.
    let mut broker = None;
    let mut nats = None;
    let mut agent_urls = Vec::new();
    let mut nats_urls = Vec::new();
    let url = match &opts.broker {
        Some(u) => u.clone(),
        None if opts.nats_nodes > 0 => {
            let t = std::time::Instant::now();
            let cluster = NatsCluster::start(opts.nats_nodes)
                .map_err(|e| format!("cannot start the NATS cluster: {e}"))?;
            summary.notes.push(format!(
                "NATS cluster of {} nodes (nats-server, JetStream, MQTT listeners) up in {:.1} \
                 s; servers on bus: nats; agent i starts on node i mod {} and fails over to the \
                 others",
                opts.nats_nodes,
                t.elapsed().as_secs_f64(),
                opts.nats_nodes
            ));
            agent_urls = cluster.mqtt_urls();
            nats_urls = cluster.nats_urls();
            nats = Some(Arc::new(Mutex::new(cluster)));
            agent_urls
                .first()
                .cloned()
                .ok_or("the NATS cluster has no node")?
        }
        None => {
            let b = Broker::start(&BrokerOptions {
                tls: false,
                acl: false,
            })
            .map_err(|e| format!("cannot start mosquitto: {e}"))?;
            let u = b.url();
            broker = Some(Arc::new(Mutex::new(b)));
            u
        }
    };
    let (_, ca_pem, key_pem) =
        ekattest_server::svid::Authority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))
            .map_err(|e| format!("cannot create the SVID CA: {e}"))?;
    let ca_cert = dir.join("svid-ca.pem");
    let ca_key = dir.join("svid-ca.key");
    write(&ca_cert, &ca_pem)?;
    write(&ca_key, &key_pem)?;
    // The server refuses a CA key that group or others may read.
    crate::process::make_private(&ca_key).map_err(|e| e.to_string())?;
    let policy_file = dir.join("policy.yaml");
    write(
        &policy_file,
        &policy(
            &read(&states.anchors.root)?,
            &read(&states.anchors.intermediate)?,
        ),
    )?;
    let mut servers = Vec::with_capacity(opts.servers);
    for k in 1..=opts.servers {
        let node = format!("node-{k}");
        let sdir = dir.join(&node);
        std::fs::create_dir_all(&sdir)
            .map_err(|e| format!("cannot create {}: {e}", sdir.display()))?;
        let mut spec = ServerSpec::new(
            url.clone(),
            CLUSTER,
            node.clone(),
            TRUST_DOMAIN,
            &ca_cert,
            &ca_key,
        );
        spec.policy_files = vec![policy_file.clone()];
        spec.nats_urls.clone_from(&nats_urls);
        spec.max_sessions = Some(opts.devices.saturating_mul(2).max(1024));
        servers.push(Arc::new(Mutex::new(
            ServerProcess::start(server_bin, &spec, &sdir)
                .map_err(|e| format!("cannot start ekattest-server {node}: {e}"))?,
        )));
    }
    // Devices reach the broker through the fault proxy when messages are dropped/corrupted.
    let proxy = if opts.faults.needs_mqtt_proxy() || opts.wire_bytes {
        let upstream = broker_addr(&url)?;
        Some(
            MqttProxy::start(upstream, opts.faults.proxy_options())
                .map_err(|e| format!("cannot start the MQTT fault proxy: {e}"))?,
        )
    } else {
        None
    };
    let agent_url = proxy.as_ref().map_or_else(|| url.clone(), MqttProxy::url);
    if agent_urls.is_empty() {
        agent_urls.push(agent_url);
    }
    if stop.load(Ordering::Relaxed) {
        return Err("interrupted".into());
    }
    // 3. Agents.
    eprintln!(
        "ekattest-fleet: attesting {} devices through {} server(s), {} agents at a time",
        opts.devices, opts.servers, opts.parallel
    );
    let agents_dir = dir.join("agents");
    std::fs::create_dir_all(&agents_dir)
        .map_err(|e| format!("cannot create {}: {e}", agents_dir.display()))?;
    let ek = opts.ek;
    let ek_for = move |i: usize| ek.for_device(i);
    let scheduler = Scheduler::start(
        &opts.faults,
        Box::new(ProcessTargets {
            broker: broker.clone(),
            servers: servers.clone(),
            nats: nats.clone(),
        }),
    )
    .map_err(|e| format!("cannot start the fault scheduler: {e}"))?;
    let phase = agents::Phase {
        agent_bin,
        dir: &agents_dir,
        brokers: &agent_urls,
        cluster: CLUSTER,
        trust_bundle: &ca_cert,
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
    events.extend(
        opts.faults
            .continuous_events(proxy.as_ref().map(MqttProxy::stats).as_ref()),
    );
    let records: Vec<DeviceRecord> = outcomes
        .iter()
        .map(|o| DeviceRecord {
            started: o.started,
            finished: Some(o.started + o.time),
            attempts: o.attempts,
            attested: o.attested,
            node: nats.is_some().then(|| o.index % agent_urls.len()),
        })
        .collect();
    summary.faults = events.iter().map(|e| e.report(&records)).collect();
    if stop.load(Ordering::Relaxed) {
        return Err("interrupted".into());
    }
    summary.elapsed = elapsed;
    for o in &outcomes {
        if o.attested {
            summary.attested += 1;
            summary.time_to_identity.push(o.time);
        } else if o.rejected {
            summary.rejected += 1;
        } else {
            summary.errors += 1;
        }
    }
    summary.errors += opts.devices.saturating_sub(outcomes.len());
    summary.peak_rss_agent_kb = outcomes.iter().filter_map(|o| o.peak_rss_kb).max();
    summary.peak_rss_server_kb = servers
        .iter()
        .filter_map(|s| {
            let pid = s.lock().unwrap_or_else(PoisonError::into_inner).pid();
            pid.and_then(agents::vm_hwm_kb)
        })
        .max();
    let bytes_in = metric_sum(&servers, "attestation_frame_bytes_total{direction=\"in\"}");
    let bytes_out = metric_sum(&servers, "attestation_frame_bytes_total{direction=\"out\"}");
    if let Some(stats) = proxy.as_ref().map(MqttProxy::stats)
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
    if let Some(cluster) = &nats {
        let cluster = cluster.lock().unwrap_or_else(PoisonError::into_inner);
        summary
            .notes
            .extend((0..cluster.node_count()).map(|i| cluster.log_summary(i)));
    }
    drop(servers);
    drop(proxy);
    drop(broker);
    drop(nats);
    Ok(summary)
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
