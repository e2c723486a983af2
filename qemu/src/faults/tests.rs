//! Unit tests of the fault plan, the tallies and the scheduler (with a recording target).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn every_option_parses_and_is_documented() {
    let (plan, rest) = FaultPlan::extract(os(&[
        "--devices",
        "10",
        "--broker-restart-at",
        "3s",
        "--broker-down=500ms",
        "--kill-server-at",
        "1m",
        "--kill-nats-node-at=4s",
        "--drop",
        "5%",
        "--corrupt=0.01",
        "--slow-tpm",
        "200ms±50ms",
        "--fault-seed",
        "42",
        "--report",
        "r.json",
    ]))
    .unwrap();
    assert_eq!(rest, os(&["--devices", "10", "--report", "r.json"]));
    assert_eq!(plan.broker_restart_at, Some(Duration::from_secs(3)));
    assert_eq!(plan.broker_down(), ms(500));
    assert_eq!(plan.kill_server_at, Some(Duration::from_secs(60)));
    assert_eq!(plan.kill_nats_node_at, Some(Duration::from_secs(4)));
    assert!((plan.drop - 0.05).abs() < 1e-12);
    assert!((plan.corrupt - 0.01).abs() < 1e-12);
    assert_eq!(
        plan.slow_tpm,
        Some(SlowTpm {
            delay: ms(200),
            jitter: ms(50)
        })
    );
    assert_eq!(plan.seed, 42);
    assert!(plan.needs_mqtt_proxy() && !plan.is_empty());
    let p = plan.proxy_options();
    assert_eq!((p.drop, p.corrupt, p.seed), (plan.drop, plan.corrupt, 42));
    for name in OPTIONS {
        assert!(
            HELP.contains(&format!("--{name} ")),
            "--{name} is not in HELP"
        );
    }
}

#[test]
fn defaults_and_ascii_jitter() {
    let plan = FaultPlan::default();
    assert!(plan.is_empty() && !plan.needs_mqtt_proxy());
    assert_eq!(plan.broker_down(), DEFAULT_BROKER_DOWN);
    let mut plan = FaultPlan::default();
    plan.set("slow-tpm", "1s+-10ms").unwrap();
    assert_eq!(
        plan.slow_tpm,
        Some(SlowTpm {
            delay: Duration::from_secs(1),
            jitter: ms(10)
        })
    );
    plan.set("slow-tpm", "250ms").unwrap();
    assert_eq!(plan.slow_tpm.map(|s| s.jitter), Some(Duration::ZERO));
}

#[test]
fn bad_values_name_the_option() {
    for (name, value) in [
        ("drop", "1.5"),
        ("drop", "-0.1"),
        ("drop", "NaN"),
        ("drop", "inf"),
        ("corrupt", "120%"),
        ("corrupt", "lots"),
        ("broker-restart-at", "3"),
        ("kill-server-at", "soon"),
        ("slow-tpm", "200ms±"),
        ("slow-tpm", "±5ms"),
        ("fault-seed", "-1"),
    ] {
        let e = FaultPlan::default().set(name, value).unwrap_err();
        assert!(e.to_string().contains(&format!("--{name}")), "{e}");
    }
    assert!(FaultPlan::default().set("nope", "1").is_err());
    let e = FaultPlan::extract(os(&["--drop"])).unwrap_err();
    assert!(e.to_string().contains("needs a value"), "{e}");
}

#[test]
fn validation_explains_what_to_change() {
    let mut p = FaultPlan::default();
    p.set("kill-server-at", "2s").unwrap();
    let e = p.validate(Mode::Run, 1, true, 0).unwrap_err();
    assert!(e.to_string().contains("--servers 2"), "{e}");
    assert!(p.validate(Mode::Run, 2, true, 0).is_ok());

    let mut p = FaultPlan::default();
    p.set("broker-down", "1s").unwrap();
    assert!(p.validate(Mode::Run, 1, true, 0).is_err());
    p.set("broker-restart-at", "1s").unwrap();
    assert!(p.validate(Mode::Run, 1, true, 0).is_ok());
    let e = p.validate(Mode::Load, 1, false, 0).unwrap_err();
    assert!(e.to_string().contains("--broker URL"), "{e}");

    let mut p = FaultPlan::default();
    p.set("slow-tpm", "10ms").unwrap();
    assert!(p.validate(Mode::Run, 1, false, 0).is_ok());
    assert!(p.validate(Mode::Load, 1, true, 0).is_ok());

    let mut p = FaultPlan::default();
    p.set("kill-nats-node-at", "3s").unwrap();
    assert!(!p.is_empty());
    for nodes in [0, 1, 2] {
        let e = p.validate(Mode::Load, 1, false, nodes).unwrap_err();
        assert!(e.to_string().contains("--nats-nodes 3"), "{nodes}: {e}");
    }
    assert!(p.validate(Mode::Load, 1, false, 3).is_ok());
    assert!(p.validate(Mode::Run, 3, false, 5).is_ok());
    let mut q = p.clone();
    q.set("drop", "1%").unwrap();
    let e = q.validate(Mode::Load, 1, false, 3).unwrap_err();
    assert!(e.to_string().contains("--nats-nodes"), "{e}");
    p.set("broker-restart-at", "1s").unwrap();
    let e = p.validate(Mode::Load, 1, false, 3).unwrap_err();
    assert!(e.to_string().contains("--kill-nats-node-at"), "{e}");
}

#[test]
fn a_nats_node_kill_affects_the_unfinished_devices_on_that_node() {
    let on = |node: usize, started: u64, finished: Option<u64>, attested: bool| DeviceRecord {
        node: Some(node),
        ..dev(started, finished, 1, attested)
    };
    let devices = [
        on(1, 0, Some(900), true),      // on the node, done before the kill
        on(1, 500, Some(5_000), true),  // on the node, in flight: recovered
        on(1, 4_000, None, false),      // on the node, started later, never finished
        on(0, 500, Some(5_000), true),  // another node
        dev(500, Some(5_000), 1, true), // no node known
    ];
    let kill = FaultEvent {
        kind: FaultKind::NatsNodeKill,
        at: Some(ms(1_000)),
        until: Some(ms(1_000)),
        fired: true,
        ok: true,
        node: Some(1),
        detail: String::new(),
    };
    assert_eq!(
        kill.tally(&devices),
        Tally {
            affected: 2,
            recovered: 1
        }
    );
    assert_eq!(kill.report(&devices).kind, "kill-nats-node");
    let nowhere = FaultEvent {
        node: None,
        ..kill.clone()
    };
    assert_eq!(nowhere.tally(&devices), Tally::default());
}

fn dev(started: u64, finished: Option<u64>, attempts: u32, attested: bool) -> DeviceRecord {
    DeviceRecord {
        started: ms(started),
        finished: finished.map(ms),
        attempts,
        attested,
        node: None,
    }
}

#[test]
fn tallies_follow_the_documented_rules() {
    let devices = [
        dev(0, Some(900), 1, true),        // done before the fault
        dev(500, Some(2_500), 2, true),    // in flight, retried, recovered
        dev(1_500, None, 3, false),        // started during the window, never finished
        dev(3_500, Some(4_000), 1, true),  // after the window
        dev(2_900, Some(3_100), 1, false), // started inside, rejected
    ];
    let restart = FaultEvent {
        kind: FaultKind::BrokerRestart,
        at: Some(ms(1_000)),
        until: Some(ms(3_000)),
        fired: true,
        ok: true,
        node: None,
        detail: String::new(),
    };
    assert_eq!(
        restart.tally(&devices),
        Tally {
            affected: 3,
            recovered: 1
        }
    );
    let kill = FaultEvent {
        kind: FaultKind::ServerKill,
        until: Some(ms(1_000)),
        ..restart.clone()
    };
    assert_eq!(
        kill.tally(&devices),
        Tally {
            affected: 1,
            recovered: 1
        }
    );
    let drop = FaultEvent {
        kind: FaultKind::Drop,
        at: None,
        until: None,
        ..restart.clone()
    };
    assert_eq!(
        drop.tally(&devices),
        Tally {
            affected: 3,
            recovered: 1
        }
    );
    let slow = FaultEvent {
        kind: FaultKind::SlowTpm,
        ..drop.clone()
    };
    assert_eq!(
        slow.tally(&devices),
        Tally {
            affected: 5,
            recovered: 3
        }
    );
    let r = restart.report(&devices);
    assert_eq!(
        (r.kind.as_str(), r.at, r.affected, r.recovered),
        ("broker-restart", Some(ms(1_000)), 3, 1)
    );
    assert_eq!(kill.report(&devices).kind, "kill-server");
    let failed = FaultEvent {
        ok: false,
        detail: "port taken".into(),
        ..kill.clone()
    };
    assert_eq!(failed.report(&devices).detail, "FAILED: port taken");
    let unfired = FaultEvent {
        fired: false,
        ..restart
    };
    assert_eq!(unfired.tally(&devices), Tally::default());
}

#[test]
fn continuous_events_quote_the_proxy_counts() {
    let mut p = FaultPlan::default();
    p.set("drop", "0.1").unwrap();
    p.set("slow-tpm", "5ms").unwrap();
    let stats = mqtt_proxy::ProxyStats {
        publishes_up: 30,
        publishes_down: 70,
        dropped: 11,
        ..Default::default()
    };
    let ev = p.continuous_events(Some(&stats));
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].kind.as_str(), "drop");
    assert!(ev[0].detail.contains("11 of 100"), "{}", ev[0].detail);
    assert_eq!(ev[1].kind, FaultKind::SlowTpm);
    assert!(ev.iter().all(|e| e.fired && e.at.is_none()));
}

/// Records every call with its time.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    fail_start: bool,
}

impl FaultTarget for Recorder {
    fn stop_broker(&mut self) -> crate::error::Result<String> {
        self.calls.lock().unwrap().push(("stop", Instant::now()));
        Ok("stopped".into())
    }
    fn start_broker(&mut self) -> crate::error::Result<String> {
        self.calls.lock().unwrap().push(("start", Instant::now()));
        if self.fail_start {
            Err(crate::error::Error::Fault("port taken".into()))
        } else {
            Ok("started".into())
        }
    }
    fn kill_server(&mut self, seed: u64) -> crate::error::Result<String> {
        self.calls.lock().unwrap().push(("kill", Instant::now()));
        Ok(format!("killed #{seed}"))
    }
    fn kill_nats_node(&mut self, seed: u64) -> crate::error::Result<(usize, String)> {
        self.calls
            .lock()
            .unwrap()
            .push(("kill-nats", Instant::now()));
        Ok((usize::try_from(seed % 3).unwrap(), "node killed".into()))
    }
}

#[test]
fn scheduler_fires_in_order_at_their_times() {
    let mut plan = FaultPlan::default();
    plan.set("broker-restart-at", "100ms").unwrap();
    plan.set("broker-down", "150ms").unwrap();
    plan.set("kill-server-at", "50ms").unwrap();
    plan.set("kill-nats-node-at", "300ms").unwrap();
    plan.set("fault-seed", "9").unwrap();
    let rec = Recorder::default();
    let sched = Scheduler::start(&plan, Box::new(rec.clone())).unwrap();
    let t0 = sched.started();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sched.is_done() && Instant::now() < deadline {
        std::thread::sleep(ms(10));
    }
    assert!(sched.is_done());
    let events = sched.finish();
    let calls = rec.calls.lock().unwrap().clone();
    let names: Vec<_> = calls.iter().map(|c| c.0).collect();
    assert_eq!(names, ["kill", "stop", "start", "kill-nats"]);
    assert!(calls[0].1 - t0 >= ms(50));
    assert!(calls[1].1 - t0 >= ms(100));
    assert!(calls[2].1 - t0 >= ms(250));
    assert!(calls[3].1 - t0 >= ms(300));
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].kind, FaultKind::NatsNodeKill);
    assert_eq!((events[2].node, events[2].ok), (Some(0), true));
    assert_eq!(events[0].kind, FaultKind::ServerKill);
    assert_eq!(events[0].detail, "killed #9");
    let restart = &events[1];
    assert_eq!(restart.kind, FaultKind::BrokerRestart);
    assert!(restart.ok && restart.fired);
    let (at, until) = (restart.at.unwrap(), restart.until.unwrap());
    // The restart is scheduled at 100 + 150 ms from the start, not 150 ms after the stop
    // actually fired (which may be late on a loaded machine).
    assert!(
        at >= ms(100) && until >= ms(250) && until > at,
        "{at:?} {until:?}"
    );
    assert!(
        restart.detail.contains("stopped; started after"),
        "{}",
        restart.detail
    );
}

#[test]
fn cancelling_restarts_a_stopped_broker_and_reports_unfired_faults() {
    let mut plan = FaultPlan::default();
    plan.set("broker-restart-at", "20ms").unwrap();
    plan.set("broker-down", "1h").unwrap();
    plan.set("kill-server-at", "2h").unwrap();
    let rec = Recorder {
        fail_start: true,
        ..Recorder::default()
    };
    let sched = Scheduler::start(&plan, Box::new(rec.clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rec.calls.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(ms(5));
    }
    let began = Instant::now();
    let events = sched.finish();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "finish must not wait for 1h"
    );
    let names: Vec<_> = rec.calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(names, ["stop", "start"], "the broker must be started again");
    assert_eq!(events.len(), 2);
    assert!(
        !events[0].ok,
        "a failed restart is reported: {:?}",
        events[0]
    );
    assert!(events[0].detail.contains("port taken"));
    assert!(!events[1].fired && events[1].at.is_none());
    assert!(
        events[1].detail.starts_with("not fired"),
        "{}",
        events[1].detail
    );
}

#[test]
fn a_plan_without_timed_faults_is_done_at_once() {
    let sched = Scheduler::start(&FaultPlan::default(), Box::new(Recorder::default())).unwrap();
    assert!(sched.finish().is_empty());
}

#[test]
fn a_target_without_a_nats_cluster_reports_the_kill_as_failed() {
    let mut plan = FaultPlan::default();
    plan.set("kill-nats-node-at", "10ms").unwrap();
    let sched = Scheduler::start(&plan, Box::new(ProcessTargets::default())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sched.is_done() && Instant::now() < deadline {
        std::thread::sleep(ms(5));
    }
    let events = sched.finish();
    assert_eq!(events.len(), 1);
    assert!(!events[0].ok && events[0].node.is_none(), "{:?}", events[0]);
    assert!(
        events[0].detail.contains("--nats-nodes"),
        "{}",
        events[0].detail
    );
}
