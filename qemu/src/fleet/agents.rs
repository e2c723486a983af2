//! The attestation phase of a fleet run: worker threads each start a device's swtpm (from
//! its provisioned state), run `ekattest-agent run --once` against it, time it, sample its
//! peak RSS and stop the swtpm, with at most `parallel` agents alive at a time; the calling
//! thread draws the progress line.
//!
//! It never leaves an agent or swtpm running when it returns (both are stopped on drop,
//! also on timeout and on a stop request) and never spawns more than `parallel` agents.

use crate::progress::Progress;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::daemons::{AgentProcess, AgentSpec};
use crate::faults::SlowTpm;
use crate::faults::tpm_proxy::TpmProxy;
use crate::swtpm::Device;

/// How one device ended.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) index: usize,
    pub(crate) ek: &'static str,
    /// Received an identity (agent exit 0).
    pub(crate) attested: bool,
    /// The server rejected it (the agent logged the rejection).
    pub(crate) rejected: bool,
    /// The agent's exit code (None: killed, timed out or never started).
    pub(crate) code: Option<i32>,
    /// Agent spawn -> exit.
    pub(crate) time: Duration,
    /// The last line of the agent's log (or the harness error), for failures.
    pub(crate) last_line: String,
    /// Agent VmHWM, KiB (sampled while it ran).
    pub(crate) peak_rss_kb: Option<u64>,
    /// Agent spawned, since the phase started.
    pub(crate) started: Duration,
    /// Logins the agent sent (its `Sending Login` debug lines; at least 1).
    pub(crate) attempts: u32,
}

/// What the attestation phase needs.
pub(crate) struct Phase<'a> {
    pub(crate) agent_bin: &'a Path,
    pub(crate) dir: &'a Path,
    /// Broker URLs; device `i` gets them all, starting at `i % len` (its failover list).
    pub(crate) brokers: &'a [String],
    pub(crate) cluster: &'a str,
    pub(crate) trust_bundle: &'a Path,
    pub(crate) states: &'a [PathBuf],
    pub(crate) ek: &'a (dyn Fn(usize) -> &'static str + Sync),
    pub(crate) parallel: usize,
    pub(crate) timeout: Duration,
    pub(crate) stop: &'a AtomicBool,
    /// `--slow-tpm`: every device's TPM behind a delaying proxy (seed from `--fault-seed`).
    pub(crate) slow_tpm: Option<(SlowTpm, u64)>,
    /// Agents log at debug (their `Sending Login` lines count attempts).
    pub(crate) debug_log: bool,
    /// When the phase (and the fault clock) started.
    pub(crate) t0: Instant,
}

/// `VmHWM` of `pid` in KiB, from /proc.
pub(crate) fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn last_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// Logins sent: the agent's `Sending Login` lines (debug level), at least 1.
fn attempts(log: &str) -> u32 {
    u32::try_from(log.matches("Sending Login").count())
        .unwrap_or(u32::MAX)
        .max(1)
}

fn failed(index: usize, ek: &'static str, time: Duration, what: String) -> Outcome {
    Outcome {
        index,
        ek,
        attested: false,
        rejected: false,
        code: None,
        time,
        last_line: what,
        peak_rss_kb: None,
        started: Duration::ZERO,
        attempts: 1,
    }
}

/// Runs one device end to end.
fn one(p: &Phase<'_>, index: usize) -> Outcome {
    let ek = (p.ek)(index);
    let device = match p.states.get(index).map(|s| Device::from_state_file(s)) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            return failed(
                index,
                ek,
                Duration::ZERO,
                format!("cannot start swtpm: {e}"),
            );
        }
        None => return failed(index, ek, Duration::ZERO, "no TPM state".into()),
    };
    let dir = p.dir.join(format!("{index:05}"));
    let data = dir.join("data");
    if let Err(e) = std::fs::create_dir_all(&data) {
        return failed(
            index,
            ek,
            Duration::ZERO,
            format!("cannot create {}: {e}", data.display()),
        );
    }
    let proxy = match p.slow_tpm {
        Some((slow, seed)) => {
            match TpmProxy::start_seeded(
                device.addr(),
                slow.delay,
                slow.jitter,
                seed ^ index as u64,
            ) {
                Ok(proxy) => Some(proxy),
                Err(e) => {
                    return failed(
                        index,
                        ek,
                        Duration::ZERO,
                        format!("cannot start the slow-TPM proxy: {e}"),
                    );
                }
            }
        }
        None => None,
    };
    let tpm = proxy.as_ref().map_or_else(|| device.spec(), TpmProxy::spec);
    let n = p.brokers.len().max(1);
    let mut urls = (0..p.brokers.len()).filter_map(|k| p.brokers.get((index + k) % n));
    let first = urls.next().map_or("", String::as_str);
    let mut spec = AgentSpec::new(first, p.cluster, tpm, p.trust_bundle, data);
    spec.fallback_brokers = urls.cloned().collect();
    if p.debug_log {
        spec.log_level = Some("debug".into());
    }
    spec.ek = Some(ek.to_owned());
    spec.response_timeout = Some(Duration::from_secs(10));
    spec.retry_initial = Some(Duration::from_millis(200));
    spec.retry_max = Some(Duration::from_secs(2));
    let start = Instant::now();
    let started = start.duration_since(p.t0);
    let mut agent = match AgentProcess::spawn(p.agent_bin, &spec, &dir, true) {
        Ok(a) => a,
        Err(e) => {
            return failed(
                index,
                ek,
                start.elapsed(),
                format!("cannot start ekattest-agent: {e}"),
            );
        }
    };
    let pid_file = dir.join("agent.pid");
    let mut pid: Option<u32> = None;
    let mut peak: Option<u64> = None;
    let mut polls = 0u32;
    while agent.is_running() {
        if p.stop.load(Ordering::Relaxed) || start.elapsed() >= p.timeout {
            agent.kill();
            let why = if p.stop.load(Ordering::Relaxed) {
                "interrupted"
            } else {
                "timed out"
            };
            let mut o = failed(
                index,
                ek,
                start.elapsed(),
                format!("{why}; last log line: {}", last_line(&agent.log())),
            );
            o.peak_rss_kb = peak;
            return o;
        }
        if polls.is_multiple_of(4) {
            if pid.is_none() {
                pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
            }
            if let Some(kb) = pid.and_then(vm_hwm_kb) {
                peak = Some(peak.map_or(kb, |p| p.max(kb)));
            }
        }
        polls = polls.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(5));
    }
    let time = start.elapsed();
    drop(proxy);
    drop(device);
    match agent.wait(Duration::ZERO) {
        Ok(exit) => Outcome {
            index,
            ek,
            attested: exit.success(),
            rejected: !exit.success() && exit.log.contains("attestation rejected"),
            code: exit.code(),
            time,
            last_line: last_line(&exit.log),
            peak_rss_kb: peak,
            started,
            attempts: attempts(&exit.log),
        },
        Err(e) => {
            let mut o = failed(index, ek, time, e.to_string());
            o.started = started;
            o
        }
    }
}

/// Runs every device; returns the outcomes (in device order) and the phase's wall time.
pub(crate) fn attest(p: &Phase<'_>) -> (Vec<Outcome>, Duration) {
    let total = p.states.len();
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let bad = AtomicUsize::new(0);
    let workers = p.parallel.max(1).min(total.max(1));
    let running = AtomicUsize::new(workers);
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::with_capacity(total));
    let start = p.t0;
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || p.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let o = one(p, i);
                    if o.attested { &ok } else { &bad }.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut v) = outcomes.lock() {
                        v.push(o);
                    }
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
        progress_loop(total, &ok, &bad, &running, start);
    });
    let elapsed = start.elapsed();
    let mut v = outcomes.into_inner().unwrap_or_default();
    v.sort_by_key(|o| o.index);
    (v, elapsed)
}

/// Redraws `attesting N/M ...` in place on a TTY (plain lines every 5 s otherwise) until
/// every worker has finished.
fn progress_loop(
    total: usize,
    ok: &AtomicUsize,
    bad: &AtomicUsize,
    running: &AtomicUsize,
    start: Instant,
) {
    let mut progress = Progress::stderr();
    let tty = progress.is_tty();
    loop {
        let finished = running.load(Ordering::Relaxed) == 0;
        let (a, b) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
        let done = a + b;
        let secs = start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{:.0} s", (total - done.min(total)) as f64 / rate)
        } else {
            "?".into()
        };
        let line = format!(
            "attesting {done}/{total}: {a} attested, {b} failed, {rate:.1}/s, {secs:.1} s elapsed, ETA {eta}"
        );
        progress.update(&line, finished);
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_millis(if tty { 150 } else { 250 }));
    }
}
