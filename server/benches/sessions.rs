//! Session store at scale: insert+take latency and memory per session with 1M live sessions.
//!
//! `cargo bench -p ekattest-server --bench sessions`. Before criterion runs, the store is filled
//! with 1,000,000 sessions (agent ids as the default `ek-` + 32 hex digits) and the memory is
//! printed two ways: the process RSS growth (/proc/self/statm, includes malloc overhead) and
//! the store's own tables plus the agent id strings. Targets: <= 300 bytes/session,
//! insert+take <= 2 us.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_server::credential::SystemRandom;
use ekattest_server::session::{SessionConfig, SessionStore};

const LIVE: usize = 1_000_000;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn agent(i: usize) -> String {
    format!("ek-{i:032x}")
}

fn bench(c: &mut Criterion) {
    let names: Vec<String> = (0..LIVE).map(agent).collect();
    let extra: Vec<String> = (LIVE..LIVE + 4096).map(agent).collect();
    let t0 = Instant::now();
    let before = rss_bytes();
    let mut store = SessionStore::new(SessionConfig {
        ttl: Duration::from_secs(300),
        max_sessions: LIVE + 4096,
    });
    let fill = Instant::now();
    for name in &names {
        store.begin(name, (), t0, &mut SystemRandom).unwrap();
    }
    let fill = fill.elapsed();
    let after = rss_bytes();
    let strings: usize = names.iter().map(String::len).sum();
    eprintln!(
        "sessions: {LIVE} live; fill {:.0} ns/begin; RSS growth {:.1} B/session; \
         tables {:.1} B/session + agent ids {:.1} B/session = {:.1} B/session",
        fill.as_nanos() as f64 / LIVE as f64,
        (after - before) as f64 / LIVE as f64,
        store.table_bytes() as f64 / LIVE as f64,
        strings as f64 / LIVE as f64,
        (store.table_bytes() + strings) as f64 / LIVE as f64,
    );

    let mut i = 0usize;
    c.bench_function("sessions/insert_take_at_1M_live", |b| {
        b.iter(|| {
            i = (i + 1) % extra.len();
            let (id, secret) = store.begin(&extra[i], (), t0, &mut SystemRandom).unwrap();
            store.answer(black_box(&id), secret.as_bytes(), t0).unwrap()
        })
    });
    c.bench_function("sessions/system_random_48_bytes", |b| {
        use ekattest_server::credential::Random;
        let mut buf = [0u8; 48];
        b.iter(|| SystemRandom.fill(black_box(&mut buf)).unwrap())
    });
    let t1 = t0 + Duration::from_secs(301);
    let sweep = Instant::now();
    let removed = store.sweep(t1);
    eprintln!(
        "sessions: sweep of {removed} expired sessions took {:.1} ms ({:.0} ns each)",
        sweep.elapsed().as_secs_f64() * 1e3,
        sweep.elapsed().as_nanos() as f64 / removed.max(1) as f64
    );
    assert_eq!(store.len(), 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
