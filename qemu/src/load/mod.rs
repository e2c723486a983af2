//! `ekattest-fleet load`: the software-TPM load generator. Simulated devices whose EK and
//! AK live in the harness ([`crate::soft_tpm`]) attest over real MQTT (mosquitto, started
//! here unless `--broker` names one) to K real `ekattest-server` processes whose policy
//! allow-lists the run's EK hashes (the seed allows that for emulators). With
//! `--nats-nodes N` the broker is a local N-node nats-server cluster instead
//! ([`crate::nats`]): the servers run on `bus: nats` and the device threads are spread over
//! the nodes' MQTT listeners. All of that is the run's [`Stage`] ([`stage`] configures it,
//! with the servers' device registry of `--registry`); this module adds the devices and the
//! report, whose registry lines count the registry's records against the distinct pool EKs
//! attested (many device ids share one EK).
//!
//! T threads each own many devices and ONE MQTT connection at a time ([`worker`]); a thread
//! whose connection fails moves to the next broker of the list ([`link`]); the run ends when
//! every device is attested, rejected or out of attempts, or at the deadline, and produces
//! a [`Summary`] (mode `load`). Every process started here runs under the harness watchdog
//! and is stopped on success, failure and Ctrl-C (the `run` mode's
//! [`crate::fleet::stop_on_signals`] flag), and every temporary folder is removed.
//!
//! Faults ([`crate::faults`], the same options as `run`; `--slow-tpm` delays each simulated
//! ActivateCredential, i.e. each Answer): with `--drop`
//! or `--corrupt` the device threads reach the broker through one
//! [`MqttProxy`](crate::faults::mqtt_proxy::MqttProxy) while the servers connect directly;
//! broker restarts, server kills and NATS node kills are fired by the stage's
//! [`Scheduler`](crate::faults::Scheduler) against the run's own broker, servers and NATS cluster; every device's attempts and times go
//! into the fault report.
//!
//! This module never changes the process's working directory or environment and never
//! binds a fixed port.

pub mod bogus;
mod cpu;
pub mod keys;
mod link;
mod stage;
mod summary;
mod worker;

use ekattest_protocol::broker_url::{self, UrlError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use keys::EkMix;
pub use worker::Subscribe;

use crate::daemons::{ServerProcess, metric_value};
use crate::error::{self, Error, Result};
use crate::faults::FaultPlan;
use crate::report::Summary;
use crate::stage::{Registry, Stage};
use stage::{Trust, check, find_bin, stage_config};

/// The cluster id of load runs.
const CLUSTER: &str = "load";
/// The SPIFFE trust domain of load runs.
const TRUST_DOMAIN: &str = "load.test";
/// Size of the real RSA-2048 EK certificate the bytes estimate adds by default (the STMicro
/// ST33HTPHAHB4 certificate in `testdata/real-ek/leaf`, 1169 bytes DER).
pub const RSA_EK_CERT_BYTES: usize = 1169;

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Simulated devices.
    pub devices: usize,
    /// Logins per second across all threads (`None`: as fast as the window allows).
    pub rate: Option<f64>,
    /// EK templates.
    pub ek: EkMix,
    /// `ekattest-server` processes.
    pub servers: usize,
    /// An existing broker (`mqtt://HOST:PORT`) instead of a fresh mosquitto.
    pub broker: Option<String>,
    /// Start a local NATS cluster of this many nodes (0: none) instead of mosquitto: servers
    /// on `bus: nats`, device threads spread over the nodes' MQTT listeners.
    pub nats_nodes: usize,
    /// Device threads (one MQTT connection each).
    pub threads: usize,
    /// Most devices in flight per thread.
    pub window: usize,
    /// Server `workers` (None: the server's default, one per CPU).
    pub workers: Option<usize>,
    /// Most distinct RSA-2048 EKs (RSA generation is slow).
    pub rsa_keys: usize,
    /// Most distinct P-256 EKs (one policy document holds about 15,000 hashes).
    pub p256_keys: usize,
    /// How long a device waits for its Challenge or Result before logging in again
    /// (`--attempt-timeout`): short, so lost messages recover quickly.
    pub timeout: Duration,
    /// The whole run's limit; devices unfinished then count as errors.
    pub deadline: Duration,
    /// Check the Result signature of one Accepted in N (1: all; 0: none).
    pub verify_every: usize,
    /// How threads subscribe to their devices' down topics.
    pub subscribe: Subscribe,
    /// The servers' `log-level`.
    pub server_log_level: String,
    /// EK certificate size assumed for the "with an RSA EK certificate" bytes figure.
    pub ek_cert_bytes: usize,
    /// Folder holding `ekattest-server` and `ekattestctl` (None: beside this program, then
    /// `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Print progress to stderr.
    pub progress: bool,
    /// Faults to inject (`--drop`, `--corrupt`, `--broker-restart-at`, `--kill-server-at`).
    pub faults: FaultPlan,
    /// Bogus logins sent alongside the devices (`--bogus N`, from distinct fake agent ids).
    pub bogus: usize,
    /// Their classes, used in turn (`--bogus-kind`).
    pub bogus_kinds: Vec<bogus::BogusKind>,
    /// More MQTT listeners (`mqtt://HOST:PORT`) beside `broker`: device threads start on
    /// `broker` and these round-robin and fail over to the others (scale-out on an existing
    /// NATS cluster's MQTT listeners).
    pub broker_urls: Vec<String>,
    /// Servers run on `bus: nats` with these `nats-url`s when not empty (then `broker`
    /// must be a NATS node's MQTT listener).
    pub nats_urls: Vec<String>,
    /// The servers' device registry (`--registry`; default SQLite, a file per server).
    pub registry: Registry,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            devices: 1000,
            rate: None,
            ek: EkMix::Mixed,
            servers: 1,
            broker: None,
            nats_nodes: 0,
            threads: 2,
            window: 256,
            workers: None,
            rsa_keys: 64,
            p256_keys: 10_000,
            timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(3600),
            verify_every: 100,
            subscribe: Subscribe::PerDevice,
            server_log_level: "warn".into(),
            ek_cert_bytes: RSA_EK_CERT_BYTES,
            bin_dir: None,
            progress: false,
            faults: FaultPlan::default(),
            bogus: 0,
            bogus_kinds: bogus::BogusKind::ALL.to_vec(),
            broker_urls: Vec::new(),
            nats_urls: Vec::new(),
            registry: Registry::default(),
        }
    }
}

/// `mqtt://HOST:PORT` -> (host, port), through [`broker_url::parse`].
fn parse_broker(url: &str) -> Result<(String, u16), String> {
    match broker_url::parse(url, &[broker_url::MQTT]) {
        Ok(u) => Ok((u.host.to_owned(), u.port)),
        Err(UrlError::BadPort { port }) => Err(match port.parse::<u16>() {
            Err(e) => format!("--broker {url:?}: port: {e}"),
            Ok(_) => format!("--broker {url:?}: port: 0 is not a port"),
        }),
        Err(_) => Err(format!(
            "--broker {url:?}: only mqtt://HOST:PORT is supported"
        )),
    }
}

/// The processes whose CPU the report counts: the servers, the broker processes (mosquitto,
/// or every NATS node), PostgreSQL (`--registry postgres`) and this program.
fn cpu_groups(stage: &Stage) -> Vec<cpu::Group> {
    let lock_pid =
        |s: &Arc<Mutex<ServerProcess>>| s.lock().unwrap_or_else(PoisonError::into_inner).pid();
    let mut groups = vec![cpu::Group::start(
        "servers",
        stage.servers().iter().filter_map(lock_pid),
    )];
    if let Some(b) = stage.broker() {
        // The harness watchdog's pid file beside mosquitto's config.
        let conf = b.lock().unwrap_or_else(PoisonError::into_inner).conf_path();
        let pid = std::fs::read_to_string(conf.with_file_name("mosquitto.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        groups.push(cpu::Group::start("mosquitto", pid));
    }
    if let Some(c) = stage.nats() {
        let c = c.lock().unwrap_or_else(PoisonError::into_inner);
        groups.push(cpu::Group::start(
            "NATS nodes",
            (0..c.node_count()).filter_map(|i| c.pid(i)),
        ));
    }
    let postgres = stage.registry_pids();
    if !postgres.is_empty() {
        groups.push(cpu::Group::start("PostgreSQL", postgres));
    }
    groups.push(cpu::Group::start("load generator", [std::process::id()]));
    groups
}

/// Runs a load test and returns its summary. `stop` ends it early (Ctrl-C).
///
/// # Errors
/// What could not be set up (binaries, broker, servers, keys, policy), as an [`Error`]
/// naming the step.
pub fn run(opts: &LoadOptions, stop: &Arc<AtomicBool>) -> Result<Summary> {
    check(opts)?;
    let server_bin = find_bin(opts.bin_dir.as_deref(), "ekattest-server")?;
    let ctl_bin = find_bin(opts.bin_dir.as_deref(), "ekattestctl")?;
    let dir = tempfile::Builder::new()
        .prefix("ekattest-load-")
        .tempdir()
        .map_err(|source| Error::TempDir {
            what: "a temporary folder",
            source,
        })?;
    let mut notes = Vec::new();
    // Keys and the policy that allow-lists them.
    let policy_file = dir.path().join("policy.yaml");
    let (pool, keygen, hashes) = key_pool(opts, &policy_file, &mut notes)?;
    // The stage: the SVID root (the devices' trust bundle) and the servers' signer it
    // issues, the bus, the servers, the proxy.
    let mut stage = Stage::start(&stage_config(
        opts,
        dir.path(),
        &server_bin,
        &ctl_bin,
        &policy_file,
    ))?;
    if let Some(up) = stage.nats_startup() {
        notes.push(format!(
            "NATS cluster of {} nodes (nats-server, JetStream, MQTT listeners) up in {:.1} s",
            opts.nats_nodes,
            up.as_secs_f64()
        ));
    }
    for (k, up) in stage.server_startup().iter().enumerate() {
        notes.push(format!(
            "server node-{} up in {:.0} ms with {} allow-listed hashes",
            k + 1,
            up.as_secs_f64() * 1000.0,
            hashes
        ));
    }
    // The devices.
    let phase = attest(opts, stop, &stage, &pool, &mut notes)?;
    // Server-side numbers before the servers stop; then the registry, once the servers
    // have written it (this stops the stage). The pool's EKs are shared by many device
    // ids: the registry holds one record per distinct EK attested.
    let (server_success, rss) = server_notes(&stage, &mut notes);
    let registry = stage.registry_report(phase.total.attested_keys.len());
    notes.extend(stage.nats_log_summaries());
    drop(stage);
    // The report.
    let Phase {
        total,
        failures,
        thread_lines,
        events,
        elapsed,
    } = phase;
    notes.extend(thread_lines);
    let faults = events.iter().map(|e| e.report(&total.records)).collect();
    let finished = total.attested + total.rejected + total.errors;
    let unfinished = opts.devices.saturating_sub(finished);
    notes.extend(
        failures
            .iter()
            .map(|f| format!("device thread failed: {f}")),
    );
    if unfinished > 0 {
        notes.push(format!(
            "{unfinished} devices unfinished at the end (deadline or stop): counted as errors"
        ));
    }
    let bytes = summary::totals_notes(opts, &total, server_success, &mut notes);
    Ok(Summary {
        mode: "load".into(),
        devices: opts.devices,
        attested: total.attested,
        rejected: total.rejected,
        errors: total.errors + unfinished,
        servers: opts.servers,
        provisioning: Some(keygen),
        elapsed,
        time_to_identity: total.time_to_identity,
        bytes_per_attestation: bytes,
        peak_rss_agent_kb: None,
        peak_rss_server_kb: rss,
        faults,
        registry: Some(registry),
        notes,
    })
}

/// Generates the simulated EKs and writes the policy allow-listing their hashes to
/// `policy_file`; returns the pool, how long generating it took and how many hashes the
/// policy allow-lists.
fn key_pool(
    opts: &LoadOptions,
    policy_file: &Path,
    notes: &mut Vec<String>,
) -> Result<(Arc<keys::KeyPool>, Duration, usize)> {
    let t = Instant::now();
    let (rsa, p256) = keys::pool_sizes(opts.ek, opts.devices, opts.rsa_keys, opts.p256_keys);
    if rsa + p256 > keys::max_hashes() {
        return Err(Error::Config(format!(
            "{} distinct EKs do not fit one policy document (at most {}): lower --rsa-keys / \
             --p256-keys",
            rsa + p256,
            keys::max_hashes()
        )));
    }
    let gen_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Arc::new(keys::KeyPool::generate(opts.ek, rsa, p256, gen_threads)?);
    let keygen = t.elapsed();
    let policy_bytes = keys::write_policy(policy_file, &pool.hashes())?;
    notes.push(format!(
        "keys: {rsa} RSA-2048 and {p256} P-256 EKs generated in {:.2} s; {} devices share them \
         under distinct agent ids, one device per EK at a time (the server keeps one session \
         per EK); policy document {policy_bytes} bytes",
        keygen.as_secs_f64(),
        opts.devices
    ));
    Ok((pool, keygen, rsa + p256))
}

/// The attestation phase's results.
struct Phase {
    total: worker::WorkerResult,
    failures: Vec<Error>,
    thread_lines: Vec<String>,
    events: Vec<crate::faults::FaultEvent>,
    elapsed: Duration,
}

/// The attestation phase: the device threads (and the bogus flood) against the stage, with
/// the faults fired; CPU, bogus and per-thread lines into `notes`.
fn attest(
    opts: &LoadOptions,
    stop: &AtomicBool,
    stage: &Stage,
    pool: &Arc<keys::KeyPool>,
    notes: &mut Vec<String>,
) -> Result<Phase> {
    let trust = Trust::load(stage.svid())?;
    let run_id = format!("{:x}{:02x}", std::process::id(), trust.ca_point[1]);
    let done = Arc::new(AtomicUsize::new(0));
    let stop_all = Arc::new(AtomicBool::new(false));
    // The fault clock starts with the attestation phase.
    let scheduler = stage.faults(&opts.faults)?;
    let started = scheduler.started();
    // Each thread's own listener first (the proxy's instead of the first), then the others.
    let listeners = stage
        .device_urls()
        .iter()
        .map(|u| parse_broker(u))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::BrokerUrl)?;
    let nats = stage.nats().is_some();
    let specs: Vec<worker::WorkerSpec> = (0..opts.threads)
        .map(|t| worker::WorkerSpec {
            index: t,
            // Its own listener first, then the others in turn (failover order).
            brokers: (0..listeners.len())
                .filter_map(|k| listeners.get((t + k) % listeners.len()).cloned())
                .collect(),
            node: nats.then_some(t % listeners.len()),
            run: run_id.clone(),
            prefix: ekattest_protocol::topic::DEFAULT_PREFIX.to_owned(),
            cluster: CLUSTER.to_owned(),
            devices: (t..opts.devices).step_by(opts.threads).collect(),
            keys: Arc::clone(pool),
            window: opts.window,
            rate: opts.rate.map(|r| r / opts.threads as f64),
            timeout: opts.timeout,
            verify_every: opts.verify_every,
            signer_point: Arc::clone(&trust.ca_point),
            signer: Arc::clone(&trust.signer),
            bundle: Arc::clone(&trust.bundle),
            subscribe: opts.subscribe,
            stop: Arc::clone(&stop_all),
            done: Arc::clone(&done),
            t0: started,
            corrupt: opts.faults.corrupt > 0.0,
            slow_tpm: opts.faults.slow_tpm.map(|s| (s.delay, s.jitter)),
            seed: opts.faults.seed,
        })
        .collect();
    let flood = bogus_flood(opts, stage, &run_id, &stop_all)?;
    // CPU from here on: servers, broker processes and this program (devices + MQTT).
    let cpu_groups = cpu_groups(stage);
    let handles: Vec<_> = specs
        .into_iter()
        .map(|s| {
            std::thread::Builder::new()
                .name(format!("load-{}", s.index))
                .spawn(move || worker::run(s))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|source| Error::Spawn {
            what: "a device thread".into(),
            source,
        })?;
    let elapsed = wait(opts, stop, &handles, &stop_all, &done, started);
    if let Some(f) = flood {
        match f.join() {
            Ok(Ok(r)) => {
                notes.push(format!(
                    "{} bogus logins from distinct fake agent ids in {:.1} s ({} window stalls, \
                     {} unexpected replies)",
                    r.total_sent(),
                    r.elapsed.as_secs_f64(),
                    r.stalls,
                    r.unexpected
                ));
                notes.extend(r.lines());
            }
            Ok(Err(e)) => notes.push(format!("bogus flood failed: {e}")),
            Err(_) => notes.push("the bogus thread panicked".into()),
        }
    }
    let mut events = scheduler.finish();
    events.extend(opts.faults.continuous_events(stage.proxy_stats().as_ref()));
    let mut total = worker::WorkerResult::default();
    let mut failures = Vec::new();
    let mut thread_lines = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => {
                thread_lines.extend(summary::thread_line(t, &r));
                summary::merge(&mut total, r);
            }
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push(Error::Device("a device thread panicked".into())),
        }
    }
    notes.push(cpu::line(&cpu_groups, total.attested, elapsed));
    Ok(Phase {
        total,
        failures,
        thread_lines,
        events,
        elapsed,
    })
}

/// Starts the bogus login flood (`--bogus N`) straight at the broker, if asked for.
fn bogus_flood(
    opts: &LoadOptions,
    stage: &Stage,
    run_id: &str,
    stop_all: &Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<Result<bogus::BogusReport>>>> {
    if opts.bogus == 0 {
        return Ok(None);
    }
    let (host, port) = parse_broker(stage.url()).map_err(Error::BrokerUrl)?;
    let cert_pem = error::read(&stage.svid().cert)?;
    let cert = pem::parse(&cert_pem)
        .map_err(|e| Error::Ca {
            what: stage.svid().cert.display().to_string(),
            source: Box::new(e),
        })?
        .into_contents();
    let bopts = bogus::BogusOptions {
        host,
        port,
        prefix: ekattest_protocol::topic::DEFAULT_PREFIX.to_owned(),
        cluster: CLUSTER.to_owned(),
        run: run_id.to_owned(),
        count: opts.bogus,
        kinds: opts.bogus_kinds.clone(),
        // A real, parseable certificate whose key is no EK: the SVID CA's.
        wrong_ek_cert: cert,
        window: 256,
        settle: Duration::from_secs(5),
    };
    let stop = Arc::clone(stop_all);
    std::thread::Builder::new()
        .name("load-bogus".into())
        .spawn(move || bogus::flood(&bopts, &stop))
        .map(Some)
        .map_err(|source| Error::Spawn {
            what: "the bogus thread".into(),
            source,
        })
}

/// Waits for the device threads, printing progress once a second; stops them at `stop` or
/// the deadline. Returns the attestation phase's duration.
fn wait<T>(
    opts: &LoadOptions,
    stop: &AtomicBool,
    handles: &[std::thread::JoinHandle<T>],
    stop_all: &AtomicBool,
    done: &AtomicUsize,
    started: Instant,
) -> Duration {
    let mut last_print = Instant::now();
    let mut progress = crate::progress::Progress::stderr();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if stop.load(Ordering::Relaxed) || started.elapsed() > opts.deadline {
            stop_all.store(true, Ordering::Relaxed);
        }
        if opts.progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let n = done.load(Ordering::Relaxed);
            progress.update(
                &format!(
                    "  {n}/{} devices done, {:.0}/s",
                    opts.devices,
                    n as f64 / started.elapsed().as_secs_f64()
                ),
                false,
            );
        }
    }
    let elapsed = started.elapsed();
    if opts.progress {
        let n = done.load(Ordering::Relaxed);
        progress.update(&format!("  {n}/{} devices done", opts.devices), true);
    }
    elapsed
}

/// One line per server (logins, attested) into `notes`; returns the servers' successful
/// proofs and their peak RSS.
fn server_notes(stage: &Stage, notes: &mut Vec<String>) -> (f64, Option<u64>) {
    const SUCCESS: &str = "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"}";
    let mut server_success = 0.0;
    let mut rss = None;
    for (k, s) in stage.servers().iter().enumerate() {
        let s = s.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(m) = s.metrics() {
            let get = |series: &str| metric_value(&m, series).unwrap_or(0.0);
            notes.push(format!(
                "server node-{}: {} logins, {} attested",
                k + 1,
                get("attestation_logins_total"),
                get(SUCCESS)
            ));
        }
        if let Some(v) = s.metrics().ok().and_then(|m| metric_value(&m, SUCCESS)) {
            server_success += v;
        }
        rss = rss.max(s.pid().and_then(summary::vm_hwm));
    }
    (server_success, rss)
}

mod cli;

pub use cli::cli;
