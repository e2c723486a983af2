//! Scale-out (issue 8 acceptance): 300 software devices through (a) 1, 2 and 3 servers
//! behind one mosquitto with `$share`, and (b) a 3-node nats-server cluster started by the
//! load generator (`--nats-nodes 3`) with 3 servers on the NATS bus and device threads
//! spread over the nodes' MQTT listeners; all attest, logins spread over the servers,
//! nobody attested twice (the servers' counts, and no device receives a second identity);
//! on mosquitto with one server killed mid-run, and on NATS with one node and one server
//! killed mid-run, all still attest. Counts are asserted, never timing; the figures
//! (attestations/s, CPU per attestation of servers, broker and load generator) are printed
//! (run with `--nocapture`) for the report.
//!
//! The NATS kill test is what found two faults: nats-server makes its MQTT JetStream
//! streams R2 on a 3-node cluster unless `mqtt.stream_replicas` says 3 (it counts the
//! node's configured routes), so one dead node left them without quorum and MQTT stalled
//! on every node (the harness now sets 3, see `ekattest_fleet::nats`); and a device thread
//! stayed on its dead node's listener, or on a node that refused its subscription while
//! JetStream elected new leaders (threads now fail over along the node list and check
//! their SUBACKs).
//!
//! Needs mosquitto and nats-server (`.ci/install`) and `ekattest-server`/`ekattestctl` in
//! the target folder; anything missing fails the test with what to do.
use crate::common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ekattest_fleet::faults::{FaultPlan, SlowTpm};
use ekattest_fleet::load::{self, EkMix, LoadOptions, Subscribe};
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

/// On a local 3-node nats-server cluster started by the load generator (`--nats-nodes
/// 3`): servers on `bus: nats`, device threads spread over the nodes' MQTT listeners. Every
/// MQTT QoS 1 subscription there is a JetStream consumer (replicated in a cluster): one
/// wildcard filter per device thread instead of one per device, and a longer attempt
/// timeout (clustered MQTT QoS 1 costs about 10x a single broker).
fn on_nats(mut opts: LoadOptions) -> LoadOptions {
    opts.nats_nodes = 3;
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

/// Identities a device received after it already had one (the report's note).
fn duplicates(summary: &Summary) -> usize {
    summary
        .notes
        .iter()
        .find_map(|n| {
            n.strip_suffix(
                " duplicate identities (an Accepted Result for a device already attested)",
            )
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duplicate-identities note\n{}", summary.table()))
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
    assert_eq!(duplicates(summary), 0, "{table}");
    split
}

fn rate(summary: &Summary) -> f64 {
    summary.attested as f64 / summary.elapsed.as_secs_f64()
}

/// The report's CPU line (servers, broker processes, load generator), for the figures.
fn cpu(summary: &Summary) -> &str {
    summary
        .notes
        .iter()
        .find_map(|n| n.strip_prefix("CPU in the attestation phase: "))
        .unwrap_or_else(|| panic!("no CPU note\n{}", summary.table()))
}

#[test]
fn three_servers_share_the_logins_on_mosquitto() {
    let mut rates = Vec::new();
    for servers in [1, 2, 3] {
        let summary = run(&options(servers));
        let split = assert_all_attested_once(&summary, servers);
        println!(
            "mosquitto, {servers} server(s): {:.0} attestations/s; logins per server {:?}; \
             CPU: {}",
            rate(&summary),
            split.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            cpu(&summary)
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
    assert_eq!(duplicates(&summary), 0, "{table}");
    let split = per_server(&summary);
    assert_eq!(split.len(), 2, "the two survivors report\n{table}");
    assert!(split.iter().all(|(l, _)| *l > 0.0), "{table}");
}

#[test]
fn three_servers_on_a_nats_cluster_serve_mqtt_devices() {
    let summary = run(&on_nats(options(3)));
    let split = assert_all_attested_once(&summary, 3);
    println!(
        "NATS cluster, 3 servers: {:.0} attestations/s; logins per server {:?}; CPU: {}",
        rate(&summary),
        split.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        cpu(&summary)
    );
}

/// One NATS node and one server SIGKILLed mid-run (seed 0: node n0, whose MQTT listener is
/// the first device thread's, and server node-1): the thread on the dead node moves to the
/// next node's listener and logs its in-flight devices in again; devices whose session was
/// on the dead server log in again after their attempt timeout and land on a survivor.
#[test]
fn nats_node_and_server_killed_mid_run_all_attest() {
    let mut opts = on_nats(options(3));
    // Slow enough that both kills land mid-run (300 devices at 20/s take 15 s; the node
    // dies with about 70 of its 100 devices to go), the server a second after the node;
    // a slow TPM (each Answer 400 ms after its Challenge) keeps sessions open on the
    // servers, so the dead server takes some with it; a shorter attempt timeout so those
    // are retried early.
    opts.rate = Some(20.0);
    opts.timeout = Duration::from_secs(15);
    opts.deadline = Duration::from_secs(120);
    opts.faults = FaultPlan {
        kill_nats_node_at: Some(Duration::from_secs(4)),
        kill_server_at: Some(Duration::from_secs(5)),
        slow_tpm: Some(SlowTpm {
            delay: Duration::from_millis(400),
            jitter: Duration::from_millis(100),
        }),
        ..FaultPlan::default()
    };
    let summary = run(&opts);
    let table = summary.table();
    println!("{table}");
    assert_eq!(
        (summary.attested, summary.rejected, summary.errors),
        (DEVICES, 0, 0),
        "{table}"
    );
    assert_eq!(summary.time_to_identity.len(), DEVICES, "{table}");
    // Nobody twice: no device received a second identity (the dead server's count is lost
    // with it, so the devices count), and the survivors issued at most one per device.
    assert_eq!(duplicates(&summary), 0, "{table}");
    let split = per_server(&summary);
    assert_eq!(split.len(), 2, "the two survivors report\n{table}");
    assert!(split.iter().all(|(l, _)| *l > 0.0), "{table}");
    let survivors: f64 = split.iter().map(|(_, a)| a).sum();
    assert!(survivors <= DEVICES as f64, "{survivors} issued\n{table}");
    let node_kill = summary
        .faults
        .iter()
        .find(|f| f.kind == "kill-nats-node")
        .unwrap_or_else(|| panic!("no kill-nats-node fault in the report\n{table}"));
    assert!(!node_kill.detail.starts_with("FAILED"), "{table}");
    assert!(node_kill.affected > 0, "the node kill hit nobody\n{table}");
    assert_eq!(node_kill.affected, node_kill.recovered, "{table}");
    let server_kill = summary
        .faults
        .iter()
        .find(|f| f.kind == "kill-server")
        .unwrap_or_else(|| panic!("no kill-server fault in the report\n{table}"));
    assert!(!server_kill.detail.starts_with("FAILED"), "{table}");
    assert!(
        server_kill.affected > 0,
        "the server kill hit nobody\n{table}"
    );
    assert!(
        server_kill.at.is_some_and(|at| at < summary.elapsed),
        "{table}"
    );
    assert_eq!(server_kill.affected, server_kill.recovered, "{table}");
    println!(
        "NATS node n0 and server node-1 killed: all {DEVICES} attested in {:.1} s; node kill \
         affected {} (recovered {}), server kill affected {} (recovered {})",
        summary.elapsed.as_secs_f64(),
        node_kill.affected,
        node_kill.recovered,
        server_kill.affected,
        server_kill.recovered
    );
}

/// The shipped node config (`deploy/nats/nats-server.conf`), with the shipped
/// `permissions.conf` and an accounts file rendered by `nats-users`, parses with the
/// installed nats-server and pins the MQTT stream replicas to 3, as the harness's configs do.
#[test]
fn the_deploy_nats_config_is_valid_and_pins_three_replicas() {
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/nats-server.conf"
    );
    let text = common::read(std::path::Path::new(conf));
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("stream_replicas: 3")),
        "{conf} must set mqtt.stream_replicas: 3"
    );
    assert_eq!(ekattest_fleet::nats::mqtt_replicas(3), 3);
    assert_eq!(ekattest_fleet::nats::mqtt_replicas(5), 3);
    assert_eq!(ekattest_fleet::nats::mqtt_replicas(1), 1);
    // The shipped file includes the accounts file `ekattest-fleet nats-users` renders next
    // to it (and that one includes permissions.conf): check the three together.
    use ekattest_fleet::nats::users::{self, ADMIN_USER, Credential, Hash, SERVER_USER};
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(conf, dir.path().join("nats-server.conf")).unwrap();
    std::fs::copy(
        users::SHIPPED_PERMISSIONS,
        dir.path().join("permissions.conf"),
    )
    .unwrap();
    let cred = |user: &str| Credential {
        user: user.into(),
        password: users::new_password().unwrap(),
    };
    let accounts = users::render(
        ekattest_protocol::topic::DEFAULT_PREFIX,
        "permissions.conf",
        Hash::Bcrypt(4),
        &cred(SERVER_USER),
        &cred(ADMIN_USER),
        &[cred("ek-0123456789abcdef0123456789abcdef")],
    )
    .unwrap();
    std::fs::write(dir.path().join("ekattest-accounts.conf"), accounts).unwrap();
    let out = std::process::Command::new("nats-server")
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("nats-server.conf"))
        .output()
        .unwrap_or_else(|e| panic!("nats-server is required (apt-get install nats-server): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.contains("is valid"), "{said}");
}
