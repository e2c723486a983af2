//! Unit tests of the writer thread against an in-memory store: when it writes (batch-max,
//! flush-interval, flush, stop), what a failing database costs (kept and retried at the
//! flush, not per event) and the queue bound while it is down. The real databases are in
//! `tests/it/registry.rs`.

use std::sync::atomic::AtomicBool;

use super::super::{
    AuditEntry, Ban, BanTarget, DEFAULT_AUDIT_RETENTION, DEFAULT_BAN_REFRESH,
    DEFAULT_DUPLICATE_WINDOW, EkHash, Outcome, Record, UnixSeconds,
};
use super::*;
use crate::registry::{Applied, Backend};

/// What the fake store saw, shared with the test.
#[derive(Default)]
struct Seen {
    /// The size of each batch written.
    batches: Mutex<Vec<usize>>,
    /// `apply` calls that failed.
    failed_calls: AtomicU64,
    /// Fail every `apply` while set.
    down: AtomicBool,
}

struct Fake(Arc<Seen>);

fn query(what: &'static str) -> StoreError {
    StoreError::Query {
        db: "fake".into(),
        what,
        message: "down".into(),
    }
}

impl Store for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn apply(&mut self, _: &str, events: &[Event], _: Duration) -> Result<Applied, StoreError> {
        if self.0.down.load(Ordering::SeqCst) {
            self.0.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err(query("write a batch"));
        }
        self.0
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(events.len());
        Ok(Applied {
            records: events.len(),
            audit: events.len(),
            conflicts: Vec::new(),
        })
    }
    fn bans(&mut self) -> Result<Vec<Ban>, StoreError> {
        Ok(Vec::new())
    }
    fn ban(&mut self, _: &Ban) -> Result<(), StoreError> {
        Err(query("ban"))
    }
    fn unban(&mut self, _: &BanTarget) -> Result<bool, StoreError> {
        Err(query("unban"))
    }
    fn evict(&mut self, _: &EkHash) -> Result<bool, StoreError> {
        Err(query("evict"))
    }
    fn list(&mut self, _: Option<UnixSeconds>) -> Result<Vec<Record>, StoreError> {
        Ok(Vec::new())
    }
    fn record(&mut self, _: &EkHash) -> Result<Option<Record>, StoreError> {
        Ok(None)
    }
    fn records_of_agent(&mut self, _: &str) -> Result<Vec<Record>, StoreError> {
        Ok(Vec::new())
    }
    fn count(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn audit(
        &mut self,
        _: Option<UnixSeconds>,
        _: &mut dyn FnMut(AuditEntry) -> bool,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn prune_audit(&mut self, _: UnixSeconds) -> Result<u64, StoreError> {
        Ok(0)
    }
}

fn config(flush: Duration, batch_max: usize, queue_max: usize) -> RegistryConfig {
    RegistryConfig {
        backend: Backend::None,
        flush_interval: flush,
        batch_max,
        queue_max,
        ban_refresh: DEFAULT_BAN_REFRESH,
        audit_retention: DEFAULT_AUDIT_RETENTION,
        duplicate_window: DEFAULT_DUPLICATE_WINDOW,
    }
}

fn event(i: usize) -> Event {
    Event {
        at: 1_700_000_000,
        agent: format!("agent-{i}"),
        ek: Some([1; 32]),
        outcome: Outcome::Rejected {
            code: "ek_chain".into(),
            reason: "test".into(),
        },
    }
}

fn start(c: &RegistryConfig) -> (Arc<Seen>, Writer, WriterHandle) {
    let seen = Arc::new(Seen::default());
    let (writer, handle) = Writer::start(
        Box::new(Fake(Arc::clone(&seen))),
        c,
        "node-1".into(),
        Arc::new(BanList::default()),
    )
    .unwrap();
    (seen, writer, handle)
}

fn batches(seen: &Seen) -> Vec<usize> {
    seen.batches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Waits (at most 10 s) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn batch_max_events_are_written_at_once_long_before_the_flush_interval() {
    let (seen, writer, handle) = start(&config(Duration::from_secs(3600), 10, 1000));
    for i in 0..25 {
        handle.record(event(i));
    }
    // Two full batches without waiting an hour; the remaining 5 wait for the flush.
    eventually("two batches of 10", || {
        batches(&seen).iter().sum::<usize>() >= 20
    });
    assert!(
        batches(&seen).iter().all(|&n| n <= 10),
        "{:?}",
        batches(&seen)
    );
    assert!(handle.flush(Duration::from_secs(10)));
    assert_eq!(batches(&seen).iter().sum::<usize>(), 25);
    assert_eq!(handle.stats().written.load(Ordering::SeqCst), 25);
    assert_eq!(handle.stats().queued.load(Ordering::SeqCst), 0);
    writer.stop(Duration::from_secs(10));
}

#[test]
fn fewer_than_batch_max_wait_for_the_flush_interval_and_stop_writes_the_rest() {
    let (seen, writer, handle) = start(&config(Duration::from_millis(100), 1000, 1000));
    handle.record(event(0));
    eventually("the flush after 100 ms", || batches(&seen) == [1]);
    for i in 1..4 {
        handle.record(event(i));
    }
    writer.stop(Duration::from_secs(10));
    assert_eq!(batches(&seen).iter().sum::<usize>(), 4);
    // After the stop nothing is written, and nothing blocks.
    handle.record(event(9));
    assert_eq!(batches(&seen).iter().sum::<usize>(), 4);
}

#[test]
fn a_database_that_is_down_is_retried_at_the_flush_not_per_event_and_the_queue_is_bounded() {
    let flush = Duration::from_millis(200);
    let (seen, writer, handle) = start(&config(flush, 5, 50));
    seen.down.store(true, Ordering::SeqCst);
    let t = Instant::now();
    for i in 0..200 {
        handle.record(event(i));
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = t.elapsed();
    // At most the bound waits; the rest is dropped and counted, never waited for.
    let stats = handle.stats();
    assert_eq!(stats.queued.load(Ordering::SeqCst), 50);
    assert_eq!(stats.dropped.load(Ordering::SeqCst), 150);
    // Retries come once per flush-interval (plus the first attempt at batch-max), not once
    // per event: 200 events over `elapsed` would be 200 attempts.
    let attempts = seen.failed_calls.load(Ordering::SeqCst);
    let flushes = u64::try_from(elapsed.as_millis() / flush.as_millis()).unwrap_or(0);
    assert!(
        attempts <= flushes + 2,
        "{attempts} failed writes in {elapsed:?} (flush every {flush:?})"
    );
    assert!(stats.failures.load(Ordering::SeqCst) >= 1);
    // Back up: what waited is written, nothing of it lost.
    seen.down.store(false, Ordering::SeqCst);
    assert!(handle.flush(Duration::from_secs(10)));
    assert_eq!(batches(&seen).iter().sum::<usize>(), 50);
    assert_eq!(stats.written.load(Ordering::SeqCst), 50);
    assert_eq!(stats.queued.load(Ordering::SeqCst), 0);
    writer.stop(Duration::from_secs(10));
}
