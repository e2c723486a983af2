//! The fault scheduler: one thread that fires the plan's timed faults (broker restart,
//! server kill, NATS node kill) at their times after the attestation phase starts, against whatever the
//! caller hands it as a [`FaultTarget`], and records what happened as
//! [`super::FaultEvent`]s.
//!
//! It never leaves the broker stopped: cancelling ([`Scheduler::finish`], drop) while the
//! broker is down starts it again first. It acts only through the target, never signals a
//! process by itself, and joins its thread on finish and on drop.

use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{FaultEvent, FaultKind, FaultPlan};
use crate::broker::Broker;
use crate::daemons::ServerProcess;
use crate::error::{Error, Result};
use crate::nats::NatsCluster;

/// What the scheduler acts on. Each method returns a detail line for the report, or why
/// the action failed ([`Error::Fault`], [`Error::NoNatsNode`]; its message goes into the
/// report).
pub trait FaultTarget: Send {
    /// Stops the broker (clients see their connections close).
    ///
    /// # Errors
    /// Why it could not be stopped.
    fn stop_broker(&mut self) -> Result<String>;
    /// Starts the broker again on the same port.
    ///
    /// # Errors
    /// Why it could not be started.
    fn start_broker(&mut self) -> Result<String>;
    /// SIGKILLs one server; `seed` (`--fault-seed`) chooses which, reproducibly.
    ///
    /// # Errors
    /// Why no server could be killed.
    fn kill_server(&mut self, seed: u64) -> Result<String>;
    /// SIGKILLs one node of the NATS cluster; `seed` chooses which, reproducibly. Returns
    /// the node's index with the detail line. The default: the run has no NATS cluster.
    ///
    /// # Errors
    /// Why no node could be killed.
    fn kill_nats_node(&mut self, seed: u64) -> Result<(usize, String)> {
        let _ = seed;
        Err(Error::Fault(
            "the run has no NATS cluster of its own (--nats-nodes)".into(),
        ))
    }
}

/// The harness's own processes as a [`FaultTarget`]: the caller keeps them in `Arc<Mutex>`
/// and goes on using them (metrics, logs) while the scheduler runs.
#[derive(Debug, Default, Clone)]
pub struct ProcessTargets {
    /// The broker to restart, if the harness started one.
    pub broker: Option<Arc<Mutex<Broker>>>,
    /// The servers, in node order (`node-1` first); one of them is killed.
    pub servers: Vec<Arc<Mutex<ServerProcess>>>,
    /// The NATS cluster (`--nats-nodes`), if the harness started one; one node is killed.
    pub nats: Option<Arc<Mutex<NatsCluster>>>,
}

impl FaultTarget for ProcessTargets {
    fn stop_broker(&mut self) -> Result<String> {
        let broker = self
            .broker
            .as_ref()
            .ok_or_else(|| Error::Fault("the run has no broker of its own".into()))?;
        let mut b = broker.lock().unwrap_or_else(PoisonError::into_inner);
        b.stop();
        Ok(format!("mosquitto on port {} stopped", b.port()))
    }

    fn start_broker(&mut self) -> Result<String> {
        let broker = self
            .broker
            .as_ref()
            .ok_or_else(|| Error::Fault("the run has no broker of its own".into()))?;
        let mut b = broker.lock().unwrap_or_else(PoisonError::into_inner);
        b.start_again()
            .map(|()| format!("mosquitto on port {} started again", b.port()))
            .map_err(|e| Error::Fault(format!("mosquitto did not start again: {e}")))
    }

    fn kill_server(&mut self, seed: u64) -> Result<String> {
        let n = self.servers.len();
        if n == 0 {
            return Err(Error::Fault("the run has no server to kill".into()));
        }
        let i = usize::try_from(seed % n as u64).unwrap_or(0);
        let server = self
            .servers
            .get(i)
            .ok_or_else(|| Error::Fault("no such server".into()))?;
        let mut s = server.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = s
            .pid()
            .ok_or_else(|| Error::Fault(format!("server node-{} was not running", i + 1)))?;
        s.kill();
        Ok(format!("server node-{} (pid {pid}) SIGKILLed", i + 1))
    }

    fn kill_nats_node(&mut self, seed: u64) -> Result<(usize, String)> {
        let nats = self.nats.as_ref().ok_or_else(|| {
            Error::Fault("the run has no NATS cluster of its own (--nats-nodes)".into())
        })?;
        let mut cluster = nats.lock().unwrap_or_else(PoisonError::into_inner);
        let n = cluster.node_count();
        if n == 0 {
            return Err(Error::NoNatsNode);
        }
        let i = usize::try_from(seed % n as u64).unwrap_or(0);
        let pid = cluster
            .pid(i)
            .ok_or_else(|| Error::Fault(format!("NATS node n{i} was not running")))?;
        let mqtt = cluster.ports().get(i).map_or(0, |p| p.mqtt);
        cluster.kill(i);
        Ok((
            i,
            format!("NATS node n{i} (pid {pid}, MQTT port {mqtt}) SIGKILLed"),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    StopBroker,
    StartBroker,
    KillServer,
    KillNatsNode,
}

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    done: bool,
    events: Vec<FaultEvent>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// The running scheduler (see the module docs).
#[derive(Debug)]
pub struct Scheduler {
    started: Instant,
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the clock now (call it when the attestation phase starts) and fires the
    /// plan's timed faults against `target` in a thread. A plan without timed faults starts
    /// no work and finishes at once.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(plan: &FaultPlan, target: Box<dyn FaultTarget>) -> io::Result<Self> {
        let started = Instant::now();
        let mut actions = Vec::new();
        if let Some(at) = plan.broker_restart_at {
            actions.push((at, Action::StopBroker));
            actions.push((at.saturating_add(plan.broker_down()), Action::StartBroker));
        }
        if let Some(at) = plan.kill_server_at {
            actions.push((at, Action::KillServer));
        }
        if let Some(at) = plan.kill_nats_node_at {
            actions.push((at, Action::KillNatsNode));
        }
        actions.sort_by_key(|(at, _)| *at);
        let shared: Shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let seed = plan.seed;
        let thread = thread::Builder::new()
            .name("fault-scheduler".into())
            .spawn(move || run(started, &actions, target, seed, &s))?;
        Ok(Self {
            started,
            shared,
            thread: Some(thread),
        })
    }

    /// When the clock started: [`super::DeviceRecord`] times are measured from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The events so far (fired faults, in firing order).
    pub fn events(&self) -> Vec<FaultEvent> {
        lock(&self.shared).events.clone()
    }

    /// Whether every timed fault has fired (and the broker is back).
    pub fn is_done(&self) -> bool {
        lock(&self.shared).done
    }

    /// Cancels the faults that have not fired (restarting the broker first if it is down),
    /// waits for the thread and returns every event; a timed fault that never fired is
    /// reported with `fired: false`.
    pub fn finish(mut self) -> Vec<FaultEvent> {
        self.cancel_and_join();
        std::mem::take(&mut lock(&self.shared).events)
    }

    fn cancel_and_join(&mut self) {
        {
            let mut st = lock(&self.shared);
            st.cancelled = true;
        }
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.cancel_and_join();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(
    started: Instant,
    actions: &[(Duration, Action)],
    mut target: Box<dyn FaultTarget>,
    seed: u64,
    shared: &Shared,
) {
    let mut broker_down_event: Option<usize> = None;
    let mut cancelled_at = None;
    for &(at, action) in actions {
        if cancelled_at.is_none() && !wait_until(started + at, shared) {
            cancelled_at = Some(started.elapsed());
        }
        if let Some(when) = cancelled_at {
            match action {
                // Never leave the broker down.
                Action::StartBroker if broker_down_event.is_some() => {}
                _ => {
                    let kind = match action {
                        Action::KillServer => FaultKind::ServerKill,
                        Action::KillNatsNode => FaultKind::NatsNodeKill,
                        Action::StopBroker | Action::StartBroker => FaultKind::BrokerRestart,
                    };
                    if action != Action::StartBroker {
                        lock(shared).events.push(FaultEvent {
                            kind,
                            at: None,
                            until: None,
                            fired: false,
                            ok: true,
                            node: None,
                            detail: format!(
                                "not fired: the run ended at {:.1} s, before {:.1} s",
                                when.as_secs_f64(),
                                at.as_secs_f64()
                            ),
                        });
                    }
                    continue;
                }
            }
        }
        let now = started.elapsed();
        match action {
            Action::StopBroker => {
                let r = target.stop_broker();
                let mut st = lock(shared);
                broker_down_event = r.is_ok().then_some(st.events.len());
                st.events.push(FaultEvent {
                    kind: FaultKind::BrokerRestart,
                    at: Some(now),
                    until: None,
                    fired: true,
                    ok: r.is_ok(),
                    node: None,
                    detail: r.unwrap_or_else(|e| format!("broker not stopped: {e}")),
                });
            }
            Action::StartBroker => {
                let r = target.start_broker();
                let back = started.elapsed();
                let mut st = lock(shared);
                if let Some(ev) = broker_down_event.take().and_then(|i| st.events.get_mut(i)) {
                    ev.until = Some(back);
                    ev.ok = r.is_ok();
                    let what = r.unwrap_or_else(|e| e.to_string());
                    ev.detail = format!(
                        "{}; {what} after {:.1} s down",
                        ev.detail,
                        back.saturating_sub(ev.at.unwrap_or(back)).as_secs_f64()
                    );
                }
            }
            Action::KillServer => {
                let r = target.kill_server(seed);
                lock(shared).events.push(FaultEvent {
                    kind: FaultKind::ServerKill,
                    at: Some(now),
                    until: Some(now),
                    fired: true,
                    ok: r.is_ok(),
                    node: None,
                    detail: r.unwrap_or_else(|e| format!("no server killed: {e}")),
                });
            }
            Action::KillNatsNode => {
                let r = target.kill_nats_node(seed);
                let (node, detail) = match r {
                    Ok((i, d)) => (Some(i), d),
                    Err(e) => (None, format!("no NATS node killed: {e}")),
                };
                lock(shared).events.push(FaultEvent {
                    kind: FaultKind::NatsNodeKill,
                    at: Some(now),
                    until: Some(now),
                    fired: true,
                    ok: node.is_some(),
                    node,
                    detail,
                });
            }
        }
    }
    lock(shared).done = true;
}

/// Waits until `deadline`; false if cancelled first.
fn wait_until(deadline: Instant, shared: &Shared) -> bool {
    let (m, cv) = &**shared;
    let mut st = m.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if st.cancelled {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        st = match cv.wait_timeout(st, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}
