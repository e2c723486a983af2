//! The registry's batching thread: the only code that writes the database while the server
//! runs.
//!
//! Workers call [`WriterHandle::record`], which never blocks: the event goes into a bounded
//! queue (`queue-max`), or is dropped and counted when the queue is full (the database has
//! fallen behind or is down). The thread writes what has queued every `flush-interval`, or
//! as soon as `batch-max` events wait, in one transaction per batch. A batch that fails is
//! kept and retried at the next flush (nothing is lost while the queue has room), and the
//! failure is logged once per streak, with the database's message. Every `ban-refresh` it
//! reads the bans into the [`BanList`]; every hour it prunes the audit trail.
//!
//! The thread does not wake per event: it sleeps on a doorbell (a channel of one) until the
//! next deadline, and [`WriterHandle::record`] rings it only once `batch-max` events wait,
//! so a worker's `record` is one bounded-queue push with no system call. The queue holds
//! boxed events, so `queue-max` slots cost a pointer each until they are used.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::{BanList, Event, RegistryConfig, Store, StoreError, unix_seconds};

/// How often the audit trail is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Counters the daemon exports as metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events written (`attestation_registry_events_written_total`).
    pub written: AtomicU64,
    /// Events dropped because the queue was full (`attestation_registry_events_dropped_total`).
    pub dropped: AtomicU64,
    /// Batches that failed (`attestation_registry_write_failures_total`).
    pub failures: AtomicU64,
    /// EKs accepted under a second agent id (`attestation_ek_agent_id_conflicts_total`).
    pub conflicts: AtomicU64,
    /// Events queued and not yet written (`attestation_registry_queue`).
    pub queued: AtomicI64,
    /// Bans in force on this node (`attestation_bans`).
    pub bans: AtomicI64,
}

enum Msg {
    Event(Box<Event>),
    /// Write everything queued, then answer.
    Flush(SyncSender<()>),
    Stop,
}

/// What workers hold: a non-blocking way to record an event.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: SyncSender<Msg>,
    /// Wakes the thread (full: a wake-up is already pending).
    bell: SyncSender<()>,
    /// Events queued that make the thread write at once.
    batch_max: i64,
    /// Most events queued or pending (written or not) before new ones are dropped.
    queue_max: i64,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => f.debug_tuple("Event").field(e).finish(),
            Self::Flush(_) => f.write_str("Flush"),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

impl WriterHandle {
    /// Queues `event`; drops and counts it when the queue is full. Never blocks.
    pub fn record(&self, event: Event) {
        // The channel alone does not bound what waits: the thread moves events out of it
        // into its pending batch, which stays while the database is down.
        if self.stats.queued.load(Ordering::Relaxed) >= self.queue_max {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {
                let queued = self.stats.queued.fetch_add(1, Ordering::Relaxed) + 1;
                if queued >= self.batch_max {
                    // A full bell already holds a wake-up: nothing to do.
                    let _ = self.bell.try_send(());
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Writes everything queued so far and waits for it (at most `timeout`); whether it was
    /// written. For `ekattestctl`-style callers and tests, never for workers.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        let _ = self.bell.try_send(());
        rx.recv_timeout(timeout).is_ok()
    }
}

/// The running writer thread; [`Writer::stop`] writes what is queued and ends it.
#[derive(Debug)]
pub struct Writer {
    tx: SyncSender<Msg>,
    bell: SyncSender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Reads the bans into `bans` (so they are in force before the first Login), then starts
    /// the thread.
    ///
    /// # Errors
    /// The store's error reading the bans.
    pub fn start(
        mut store: Box<dyn Store>,
        config: &RegistryConfig,
        node: String,
        bans: Arc<BanList>,
    ) -> Result<(Self, WriterHandle), StoreError> {
        let stats = Arc::new(WriterStats::default());
        let loaded = store.bans()?;
        stats.bans.store(to_i64(loaded.len()), Ordering::Relaxed);
        bans.replace(loaded);
        let (tx, rx) = mpsc::sync_channel(config.queue_max.max(1));
        let (bell, bell_rx) = mpsc::sync_channel(1);
        let mut state = State {
            store,
            config: config.clone(),
            node,
            bans,
            stats: Arc::clone(&stats),
            pending: Vec::new(),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || state.run(&rx, &bell_rx))
            .map_err(|e| StoreError::Open {
                db: "registry".into(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        let handle = WriterHandle {
            tx: tx.clone(),
            bell: bell.clone(),
            batch_max: to_i64(config.batch_max.max(1)),
            queue_max: to_i64(config.queue_max.max(1)),
            stats,
        };
        Ok((
            Self {
                tx,
                bell,
                thread: Mutex::new(Some(thread)),
            },
            handle,
        ))
    }

    /// Writes what is queued (waiting at most `timeout` for the database) and ends the
    /// thread.
    pub fn stop(&self, timeout: Duration) {
        let _ = self.tx.send(Msg::Stop);
        let _ = self.bell.try_send(());
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let deadline = Instant::now() + timeout;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::error!(
                    timeout = format!("{timeout:?}").as_str();
                    "registry: the last batch was not written in time; its events are lost"
                );
            }
        }
    }
}

struct State {
    store: Box<dyn Store>,
    config: RegistryConfig,
    node: String,
    bans: Arc<BanList>,
    stats: Arc<WriterStats>,
    /// Events taken from the queue and not yet written (kept across failed batches).
    pending: Vec<Event>,
    /// Whether the last write failed (the failure was logged).
    failing: bool,
}

impl State {
    fn run(&mut self, rx: &Receiver<Msg>, bell: &Receiver<()>) {
        let mut next_flush = Instant::now() + self.config.flush_interval;
        let mut next_bans = Instant::now() + self.config.ban_refresh;
        let mut next_prune = Instant::now();
        loop {
            let now = Instant::now();
            let wake = next_flush.min(next_bans).min(next_prune);
            // Every sender gone (the handles and the writer): write what is left and end.
            let gone = matches!(
                bell.recv_timeout(wake.saturating_duration_since(now)),
                Err(RecvTimeoutError::Disconnected)
            );
            let (waiting, stop) = self.drain(rx);
            let now = Instant::now();
            if gone || stop || !waiting.is_empty() || now >= next_flush {
                self.write();
                next_flush = now + self.config.flush_interval;
                if self.pending.is_empty() {
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
                if gone || stop {
                    return;
                }
            } else if self.pending.len() >= self.config.batch_max && !self.failing {
                // A failing database is retried at the next flush, not per event.
                self.write();
                next_flush = now + self.config.flush_interval;
            }
            if now >= next_bans {
                self.refresh_bans();
                next_bans = now + self.config.ban_refresh;
            }
            if now >= next_prune {
                self.prune();
                next_prune = now + PRUNE_EVERY;
            }
        }
    }

    /// Moves what is already queued into `pending`; returns the flushes waiting and whether
    /// a stop was among them.
    fn drain(&mut self, rx: &Receiver<Msg>) -> (Vec<SyncSender<()>>, bool) {
        let (mut waiting, mut stop) = (Vec::new(), false);
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Event(e) => self.pending.push(read_svid(*e)),
                Msg::Flush(done) => waiting.push(done),
                Msg::Stop => stop = true,
            }
        }
        (waiting, stop)
    }

    /// Writes `pending` in batches of at most `batch-max`; keeps what failed.
    fn write(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.config.batch_max.max(1));
            match self
                .store
                .apply(&self.node, &self.pending[..n], self.config.duplicate_window)
            {
                Ok(applied) => {
                    self.pending.drain(..n);
                    self.stats.written.fetch_add(to_u64(n), Ordering::Relaxed);
                    self.stats.queued.fetch_sub(to_i64(n), Ordering::Relaxed);
                    if self.failing {
                        log::info!(db = self.store.name(); "registry: writing again");
                        self.failing = false;
                    }
                    for (ek, agent, previous) in &applied.conflicts {
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            ekHash = hex::encode(ek).as_str(),
                            agentId = agent.as_str(),
                            previousAgentId = previous.as_str();
                            "EK seen under a second agent id"
                        );
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if !self.failing {
                        log::error!(
                            events = self.pending.len(), error = e.to_string().as_str();
                            "registry: cannot write a batch; keeping it and retrying every \
                             flush-interval (events past queue-max are dropped and counted)"
                        );
                        self.failing = true;
                    }
                    return;
                }
            }
        }
    }

    fn refresh_bans(&mut self) {
        match self.store.bans() {
            Ok(bans) => {
                self.stats.bans.store(to_i64(bans.len()), Ordering::Relaxed);
                self.bans.replace(bans);
            }
            Err(e) => log::error!(
                error = e.to_string().as_str();
                "registry: cannot read the bans; the ones read last stay in force"
            ),
        }
    }

    fn prune(&mut self) {
        let before = unix_seconds(SystemTime::now())
            - i64::try_from(self.config.audit_retention.as_secs()).unwrap_or(i64::MAX);
        match self.store.prune_audit(before) {
            Ok(0) => {}
            Ok(n) => log::info!(lines = n; "registry: audit lines past audit-retention deleted"),
            Err(e) => log::error!(
                error = e.to_string().as_str();
                "registry: cannot prune the audit trail"
            ),
        }
    }
}

/// The event with its SVID's serial and notAfter read (here, off the workers' path).
fn read_svid(mut event: Event) -> Event {
    if let super::Outcome::Accepted(a) = &mut event.outcome {
        a.read_svid();
    }
    event
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
