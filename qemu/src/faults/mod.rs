//! Fault injection for the fleet harness (`ekattest-fleet run` and `load`): the fault plan
//! (the command-line options, [`FaultPlan`]), a scheduler that fires timed faults
//! ([`schedule`]), an MQTT proxy that drops or corrupts PUBLISH packets in flight
//! ([`mqtt_proxy`]) and a TCP forwarder that delays TPM responses ([`tpm_proxy`]). With
//! `--nats-nodes N` the broker is a local NATS cluster ([`crate::nats`]) and
//! `--kill-nats-node-at` crashes one of its nodes.
//!
//! Where the proxies sit: devices (agents, or load-mode threads) connect to the broker
//! through one [`mqtt_proxy::MqttProxy`] when `--drop` or `--corrupt` is given; servers
//! connect to the broker directly. Every attestation message (Login and Answer up, Challenge
//! and Result down) then crosses the proxy exactly once, so a fraction applies once per
//! message and the proxy's byte counters are the devices' bytes on the wire.
//!
//! How a fault's effect is counted ([`FaultEvent::tally`]): a device is *affected* by a
//! timed fault (broker restart, server kill) if its attestation was in flight while the
//! fault was active; by a NATS node kill if its MQTT connection was on that node and it
//! had not finished when the node died (also if it had not started); by a message fault
//! (drop, corrupt) if it needed more than one attempt or started and never attested; by a
//! slow TPM always. An affected device
//! *recovered* if it attested.
//!
//! This module never touches processes other than through the [`schedule::FaultTarget`] the
//! caller hands it, never binds fixed ports, and leaves no thread running after its values
//! are dropped.

pub mod mqtt_frame;
pub mod mqtt_proxy;
pub mod rng;
pub mod schedule;
pub mod tpm_proxy;

use std::ffi::OsString;
use std::time::Duration;

use mqtt_proxy::{ProxyOptions, ProxyStats};

pub use schedule::{FaultTarget, ProcessTargets, Scheduler};

/// Default of `--broker-down`.
pub const DEFAULT_BROKER_DOWN: Duration = Duration::from_secs(2);

/// The fault options, without their leading `--`; each takes one value.
pub const OPTIONS: &[&str] = &[
    "broker-restart-at",
    "broker-down",
    "kill-server-at",
    "kill-nats-node-at",
    "drop",
    "corrupt",
    "slow-tpm",
    "fault-seed",
];

/// The `--help` text of the fault options (shared by `run` and `load`).
pub const HELP: &str = "\
Fault injection (run and load):
  --broker-restart-at D  stop the harness's mosquitto D after the attestation phase starts
                         and start it again on the same port after --broker-down (needs the
                         harness's own broker, not --broker URL)
  --broker-down D        how long the broker stays down (default 2s)
  --kill-server-at D     SIGKILL one ekattest-server D after the attestation phase starts
                         (needs --servers 2 or more: the others must finish the work)
  --kill-nats-node-at D  SIGKILL one node of the harness's NATS cluster D after the
                         attestation phase starts (needs --nats-nodes 3 or more: JetStream,
                         which holds nats-server's MQTT state, needs a majority of the nodes);
                         devices on that node move to another node's MQTT listener
  --drop F               drop a fraction F of the MQTT PUBLISH packets between devices and
                         the broker, in each direction (0..1, or a percentage: 0.05 = 5%);
                         devices and servers recover through their timeouts and retries
  --corrupt F            flip bytes in the payload of a fraction F of those PUBLISH packets
                         (headers stay intact, so receivers must reject the frame)
  --slow-tpm D[±J]       delay every TPM response by D, plus or minus J (uniform); write +-
                         for ±, e.g. --slow-tpm 200ms+-50ms (load: each simulated
                         ActivateCredential, so each Answer comes D after its Challenge)
  --fault-seed N         seed of the drop, corrupt, jitter and kill choices (default 0): the
                         same seed makes the same choices
  Durations: 500ms, 3s, 1m. With --drop or --corrupt, devices reach the broker through a
  fault proxy in the harness; servers connect directly. The report lists each fault with
  the devices affected (in flight while it was active, or needing a retry) and how many of
  them recovered (attested anyway).";

/// `--slow-tpm D[±J]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowTpm {
    /// Mean delay per TPM response.
    pub delay: Duration,
    /// Uniform jitter around it (never below zero).
    pub jitter: Duration,
}

/// Which command the plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ekattest-fleet run`: swtpm devices and agent processes.
    Run,
    /// `ekattest-fleet load`: software-TPM devices in the harness.
    Load,
}

/// A command-line option that is not a valid fault option value or combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(String);

/// The faults of one run (see [`HELP`]). `Default` is no fault at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// `--broker-restart-at`.
    pub broker_restart_at: Option<Duration>,
    /// `--broker-down` as given ([`FaultPlan::broker_down`] applies the default).
    pub broker_down: Option<Duration>,
    /// `--kill-server-at`.
    pub kill_server_at: Option<Duration>,
    /// `--kill-nats-node-at`.
    pub kill_nats_node_at: Option<Duration>,
    /// `--drop` (0..=1).
    pub drop: f64,
    /// `--corrupt` (0..=1).
    pub corrupt: f64,
    /// `--slow-tpm`.
    pub slow_tpm: Option<SlowTpm>,
    /// `--fault-seed`.
    pub seed: u64,
}

impl FaultPlan {
    /// Sets one option (`name` without `--`, one of [`OPTIONS`]).
    ///
    /// # Errors
    /// An unknown name or a value that does not parse; the message names the option and
    /// the accepted forms.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PlanError> {
        let dur = |v: &str| {
            ekattest_protocol::duration::parse(v)
                .map_err(|e| PlanError(format!("--{name} {v:?} {e}")))
        };
        match name {
            "broker-restart-at" => self.broker_restart_at = Some(dur(value)?),
            "broker-down" => self.broker_down = Some(dur(value)?),
            "kill-server-at" => self.kill_server_at = Some(dur(value)?),
            "kill-nats-node-at" => self.kill_nats_node_at = Some(dur(value)?),
            "drop" => self.drop = fraction(name, value)?,
            "corrupt" => self.corrupt = fraction(name, value)?,
            "slow-tpm" => self.slow_tpm = Some(slow_tpm(value)?),
            "fault-seed" => {
                self.seed = value.trim().parse().map_err(|_| {
                    PlanError(format!(
                        "--fault-seed {value:?} is not a number; write e.g. --fault-seed 7"
                    ))
                })?;
            }
            other => return Err(PlanError(format!("--{other} is not a fault option"))),
        }
        Ok(())
    }

    /// Takes the fault options (`--name VALUE` or `--name=VALUE`) out of `args` and returns
    /// the plan and the other arguments, in order.
    ///
    /// # Errors
    /// As [`FaultPlan::set`]; also a fault option without a value, or one that is not UTF-8.
    pub fn extract(args: Vec<OsString>) -> Result<(Self, Vec<OsString>), PlanError> {
        let mut plan = Self::default();
        let mut rest = Vec::with_capacity(args.len());
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(text) = arg.to_str() else {
                rest.push(arg);
                continue;
            };
            let Some(opt) = text.strip_prefix("--") else {
                rest.push(arg);
                continue;
            };
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (opt, None),
            };
            if !OPTIONS.contains(&name) {
                rest.push(arg);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| PlanError(format!("--{name} needs a value")))?
                    .into_string()
                    .map_err(|_| PlanError(format!("--{name}: the value is not UTF-8")))?,
            };
            plan.set(name, &value)?;
        }
        Ok((plan, rest))
    }

    /// Checks the combination for `_mode` (every fault applies to both commands; load mode
    /// slows its simulated ActivateCredential for `--slow-tpm`): `servers` is K,
    /// `own_broker` whether the harness started
    /// mosquitto (no `--broker URL`, no `--nats-nodes`), `nats_nodes` the size of the
    /// harness's NATS cluster (0: none).
    ///
    /// # Errors
    /// A fault the run cannot apply, saying which option to change.
    pub fn validate(
        &self,
        _mode: Mode,
        servers: usize,
        own_broker: bool,
        nats_nodes: usize,
    ) -> Result<(), PlanError> {
        if self.broker_down.is_some() && self.broker_restart_at.is_none() {
            return Err(PlanError(
                "--broker-down needs --broker-restart-at (when to stop the broker)".into(),
            ));
        }
        if self.broker_restart_at.is_some() && !own_broker {
            return Err(PlanError(
                "--broker-restart-at restarts the harness's own mosquitto: drop --broker URL \
                 and --nats-nodes (use --kill-nats-node-at on a NATS cluster)"
                    .into(),
            ));
        }
        if self.kill_nats_node_at.is_some() && nats_nodes < 3 {
            return Err(PlanError(format!(
                "--kill-nats-node-at needs --nats-nodes 3 or more (got {nats_nodes}): the \
                 cluster's JetStream, which holds the MQTT sessions, needs a majority of its \
                 nodes up"
            )));
        }
        if self.kill_server_at.is_some() && servers < 2 {
            return Err(PlanError(format!(
                "--kill-server-at needs --servers 2 or more (got {servers}): with one server \
                 nobody is left to answer"
            )));
        }
        if self.needs_mqtt_proxy() && nats_nodes > 0 {
            return Err(PlanError(
                "--drop and --corrupt put one proxy in front of one broker: they do not combine \
                 with --nats-nodes"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether the plan has no fault at all.
    pub fn is_empty(&self) -> bool {
        self.broker_restart_at.is_none()
            && self.kill_server_at.is_none()
            && self.kill_nats_node_at.is_none()
            && self.slow_tpm.is_none()
            && !self.needs_mqtt_proxy()
    }

    /// Whether devices must connect through an [`mqtt_proxy::MqttProxy`].
    pub fn needs_mqtt_proxy(&self) -> bool {
        self.drop > 0.0 || self.corrupt > 0.0
    }

    /// `--broker-down`, or its default.
    pub fn broker_down(&self) -> Duration {
        self.broker_down.unwrap_or(DEFAULT_BROKER_DOWN)
    }

    /// The proxy options of this plan.
    pub fn proxy_options(&self) -> ProxyOptions {
        ProxyOptions {
            drop: self.drop,
            corrupt: self.corrupt,
            seed: self.seed,
            ..ProxyOptions::default()
        }
    }

    /// The events of the continuous faults (drop, corrupt, slow TPM), for the report at the
    /// end of a run; `proxy` is the MQTT proxy's final counters, if one ran.
    pub fn continuous_events(&self, proxy: Option<&ProxyStats>) -> Vec<FaultEvent> {
        let mut out = Vec::new();
        let pct = |f: f64| f * 100.0;
        if self.drop > 0.0 {
            let detail = match proxy {
                Some(s) => format!(
                    "{:.1}% of PUBLISH packets dropped (seed {}): {} of {} ({} up, {} down)",
                    pct(self.drop),
                    self.seed,
                    s.dropped,
                    s.publishes_up + s.publishes_down,
                    s.publishes_up,
                    s.publishes_down
                ),
                None => format!("{:.1}% of PUBLISH packets dropped", pct(self.drop)),
            };
            out.push(FaultEvent::continuous(FaultKind::Drop, detail));
        }
        if self.corrupt > 0.0 {
            let detail = match proxy {
                Some(s) => format!(
                    "{:.1}% of PUBLISH payloads corrupted (seed {}): {} of {}",
                    pct(self.corrupt),
                    self.seed,
                    s.corrupted,
                    s.publishes_up + s.publishes_down
                ),
                None => format!("{:.1}% of PUBLISH payloads corrupted", pct(self.corrupt)),
            };
            out.push(FaultEvent::continuous(FaultKind::Corrupt, detail));
        }
        if let Some(s) = self.slow_tpm {
            out.push(FaultEvent::continuous(
                FaultKind::SlowTpm,
                format!("every TPM response delayed {:?} ± {:?}", s.delay, s.jitter),
            ));
        }
        out
    }
}

fn fraction(name: &str, value: &str) -> Result<f64, PlanError> {
    let v = value.trim();
    let parsed = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => v.parse::<f64>(),
    };
    match parsed {
        Ok(f) if f.is_finite() && (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(PlanError(format!(
            "--{name} {value:?} is not a fraction between 0 and 1; write e.g. 0.05 or 5%"
        ))),
    }
}

fn slow_tpm(value: &str) -> Result<SlowTpm, PlanError> {
    let bad = || {
        PlanError(format!(
            "--slow-tpm {value:?} is not D or D±J; write e.g. 200ms, 200ms±50ms or 200ms+-50ms"
        ))
    };
    let (d, j) = match value.split_once('±').or_else(|| value.split_once("+-")) {
        Some((d, j)) => (d, Some(j)),
        None => (value, None),
    };
    let delay = ekattest_protocol::duration::parse(d).map_err(|_| bad())?;
    let jitter = match j {
        Some(j) => ekattest_protocol::duration::parse(j).map_err(|_| bad())?,
        None => Duration::ZERO,
    };
    Ok(SlowTpm { delay, jitter })
}

/// Which fault an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `--broker-restart-at`.
    BrokerRestart,
    /// `--kill-server-at`.
    ServerKill,
    /// `--kill-nats-node-at`.
    NatsNodeKill,
    /// `--drop`.
    Drop,
    /// `--corrupt`.
    Corrupt,
    /// `--slow-tpm`.
    SlowTpm,
}

impl FaultKind {
    /// The report's `kind` string: `broker-restart`, `kill-server`, `kill-nats-node`,
    /// `drop`, `corrupt`, `slow-tpm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BrokerRestart => "broker-restart",
            Self::ServerKill => "kill-server",
            Self::NatsNodeKill => "kill-nats-node",
            Self::Drop => "drop",
            Self::Corrupt => "corrupt",
            Self::SlowTpm => "slow-tpm",
        }
    }
}

/// One fault as it happened, for the report (`kind`, `at`, `detail`; the report's
/// `affected` and `recovered` come from [`FaultEvent::tally`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    /// Which fault.
    pub kind: FaultKind,
    /// When it fired, since the attestation phase started; `None` for the continuous
    /// faults and for a timed fault that never fired (the run ended first).
    pub at: Option<Duration>,
    /// When it ended (the broker was back), if it lasts.
    pub until: Option<Duration>,
    /// Whether it fired (continuous faults: always).
    pub fired: bool,
    /// Whether the action worked (the broker stopped and started again, the kill landed).
    pub ok: bool,
    /// The NATS node killed (index into the cluster's nodes), for a NATS node kill.
    pub node: Option<usize>,
    /// What happened, for operators.
    pub detail: String,
}

/// One device's attestation, as the run or load driver recorded it, for
/// [`FaultEvent::tally`]. Times are since the attestation phase started
/// ([`Scheduler::started`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRecord {
    /// When its first attempt started (agent spawned / first Login published).
    pub started: Duration,
    /// When it ended (identity received, rejected, or gave up); `None` if still running.
    pub finished: Option<Duration>,
    /// Logins it sent (1 = no retry). Run mode: the agent's "Sending Login" log lines.
    pub attempts: u32,
    /// Whether it ended with an identity.
    pub attested: bool,
    /// The NATS node (index) its MQTT connection started on, when the broker is a NATS
    /// cluster; `None` otherwise.
    pub node: Option<usize>,
}

/// Devices a fault affected and how many of those recovered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// See the module docs.
    pub affected: usize,
    /// Affected devices that attested anyway.
    pub recovered: usize,
}

impl FaultEvent {
    fn continuous(kind: FaultKind, detail: String) -> Self {
        Self {
            kind,
            at: None,
            until: None,
            fired: true,
            ok: true,
            node: None,
            detail,
        }
    }

    /// The report's entry for this fault, with [`FaultEvent::tally`] over `devices`. A
    /// timed fault that did not work or never fired says so in `detail`.
    pub fn report(&self, devices: &[DeviceRecord]) -> crate::report::FaultReport {
        let t = self.tally(devices);
        let detail = if self.fired && !self.ok {
            format!("FAILED: {}", self.detail)
        } else {
            self.detail.clone()
        };
        crate::report::FaultReport {
            kind: self.kind.as_str().to_owned(),
            at: self.at,
            affected: t.affected,
            recovered: t.recovered,
            detail,
        }
    }

    /// Counts the devices this fault affected and those that recovered (module docs).
    pub fn tally(&self, devices: &[DeviceRecord]) -> Tally {
        if !self.fired {
            return Tally::default();
        }
        let affected = |d: &DeviceRecord| match self.kind {
            FaultKind::BrokerRestart | FaultKind::ServerKill => match self.at {
                Some(at) => {
                    let until = self.until.unwrap_or(at).max(at);
                    d.started <= until && d.finished.is_none_or(|f| f >= at)
                }
                None => false,
            },
            FaultKind::NatsNodeKill => match (self.at, self.node) {
                (Some(at), Some(node)) => {
                    d.node == Some(node) && d.finished.is_none_or(|f| f >= at)
                }
                _ => false,
            },
            FaultKind::Drop | FaultKind::Corrupt => {
                d.attempts > 1 || (d.attempts > 0 && !d.attested)
            }
            FaultKind::SlowTpm => true,
        };
        devices
            .iter()
            .filter(|d| affected(d))
            .fold(Tally::default(), |t, d| Tally {
                affected: t.affected + 1,
                recovered: t.recovered + usize::from(d.attested),
            })
    }
}

#[cfg(test)]
mod tests;
