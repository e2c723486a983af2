//! Scale-out (issue 8 acceptance): 300 software devices through (a) 3 servers behind one
//! mosquitto with `$share`, and (b) a 3-node nats-server cluster with 3 servers on the NATS
//! bus and devices on the nodes' MQTT listeners; all attest, logins spread over the
//! servers, nobody attested twice; on mosquitto, with one server killed mid-run, all still
//! attest. (Killing a NATS node and a server mid-run is not covered yet: tried, 23 of 300
//! devices had not recovered after 300 s.) Counts are asserted, never timing; the figures
//! are printed (run with `--nocapture`) for the report.
//!
//! Needs mosquitto and nats-server (`.ci/install`) and `ekattest-server`/`ekattestctl` in
//! the target folder; anything missing fails the test with what to do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ekattest_fleet::faults::FaultPlan;
use ekattest_fleet::load::{self, EkMix, LoadOptions, Subscribe};
use ekattest_fleet::nats::NatsCluster;
use ekattest_fleet::report::Summary;

const DEVICES: usize = 300;

fn options(servers: usize) -> LoadOptions {
    LoadOptions {
        devices: DEVICES,
        ek: EkMix::P256,
        servers,
        threads: 3,
        window: 32,
        rsa_keys: 1,
        p256_keys: 300,
        verify_every: 1,
        timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(300),
        bin_dir: Some(common::bin_dir_with(&["ekattest-server", "ekattestctl"])),
        ..LoadOptions::default()
    }
}

/// On nats-server every MQTT QoS 1 subscription is a JetStream consumer (replicated in a
/// cluster): one wildcard filter per device thread instead of one per device, and a longer
/// attempt timeout (clustered MQTT QoS 1 costs about 10x a single broker).
fn on_nats(mut opts: LoadOptions, cluster: &NatsCluster, device_nodes: usize) -> LoadOptions {
    let mqtt = cluster.mqtt_urls();
    opts.broker = Some(mqtt[0].clone());
    opts.broker_urls = mqtt[1..device_nodes].to_vec();
    opts.nats_urls = cluster.nats_urls();
    opts.subscribe = Subscribe::Wildcard;
    opts.timeout = Duration::from_secs(30);
    opts
}

fn run(opts: &LoadOptions) -> Summary {
    load::run(opts, &Arc::new(AtomicBool::new(false)))
        .unwrap_or_else(|e| panic!("load run could not start: {e}"))
}

/// (logins, attested) per server, from the report's notes.
fn per_server(summary: &Summary) -> Vec<(f64, f64)> {
    summary
        .notes
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("server node-")?;
            let (_, rest) = rest.split_once(": ")?;
            let (logins, rest) = rest.split_once(" logins, ")?;
            let attested = rest.strip_suffix(" attested")?;
            Some((logins.parse().ok()?, attested.parse().ok()?))
        })
        .collect()
}

fn assert_all_attested_once(summary: &Summary, servers: usize) -> Vec<(f64, f64)> {
    let table = summary.table();
    assert_eq!(
        (summary.attested, summary.rejected, summary.errors),
        (DEVICES, 0, 0),
        "{table}"
    );
    assert_eq!(summary.time_to_identity.len(), DEVICES, "{table}");
    let split = per_server(summary);
    assert_eq!(split.len(), servers, "per-server notes\n{table}");
    for (k, (logins, _)) in split.iter().enumerate() {
        assert!(*logins > 0.0, "server node-{} got no login\n{table}", k + 1);
    }
    // Nobody twice: the servers issued exactly one identity per device.
    let issued: f64 = split.iter().map(|(_, a)| a).sum();
    assert!(
        issued == DEVICES as f64,
        "{issued} identities issued\n{table}"
    );
    split
}

fn rate(summary: &Summary) -> f64 {
    summary.attested as f64 / summary.elapsed.as_secs_f64()
}

#[test]
fn three_servers_share_the_logins_on_mosquitto() {
    let mut rates = Vec::new();
    for servers in [1, 2, 3] {
        let summary = run(&options(servers));
        let split = assert_all_attested_once(&summary, servers);
        println!(
            "mosquitto, {servers} server(s): {:.0} attestations/s; logins per server {:?}",
            rate(&summary),
            split.iter().map(|(l, _)| *l).collect::<Vec<_>>()
        );
        rates.push(rate(&summary));
    }
    println!(
        "ratios to 1 server: 2 servers {:.2}, 3 servers {:.2}",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );

    // One server killed mid-run: everybody still attests (the dead node's sessions are
    // lost, its devices log in again after their attempt timeout and land elsewhere).
    let mut opts = options(3);
    opts.rate = Some(60.0);
    opts.faults = FaultPlan {
        kill_server_at: Some(Duration::from_secs(2)),
        ..FaultPlan::default()
    };
    let summary = run(&opts);
    let table = summary.table();
    assert_eq!(
        (summary.attested, summary.rejected, summary.errors),
        (DEVICES, 0, 0),
        "{table}"
    );
    let split = per_server(&summary);
    assert_eq!(split.len(), 2, "the two survivors report\n{table}");
    assert!(split.iter().all(|(l, _)| *l > 0.0), "{table}");
}

#[test]
fn three_servers_on_a_nats_cluster_serve_mqtt_devices() {
    let cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let summary_opts = on_nats(options(3), &cluster, 3);
    let summary = run(&summary_opts);
    let split = assert_all_attested_once(&summary, 3);
    println!(
        "NATS cluster, 3 servers: {:.0} attestations/s; logins per server {:?}",
        rate(&summary),
        split.iter().map(|(l, _)| *l).collect::<Vec<_>>()
    );
    // Not tested here: killing a NATS node and a server mid-run. Tried, 23 of 300 devices
    // had not recovered after 300 s (issue 8 stays open on it).
    drop(cluster);
}
