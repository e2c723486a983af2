//! The device registry end to end (issue 18): the real `ekattest-server` (one node on SQLite,
//! or two sharing a PostgreSQL started by the test), real `ekattest-agent` processes on swtpm
//! devices over mosquitto, and `ekattestctl agent ...` as the operator reads and writes it.
//!
//! Oracles other than our code: openssl (the SVID's serial and notAfter, the EK's public
//! hash), `date` (notAfter as Unix seconds), the agents' own exit status and log lines.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{SUCCESS, bin, failed, policy};
use ekattest_fleet::broker::{Broker, BrokerOptions};
use ekattest_fleet::daemons::{AgentExit, AgentProcess, AgentSpec, ServerProcess, ServerSpec};
use ekattest_fleet::{Ca, Device, EkKind, ProvisionOptions, openssl_public_hash};
use ekattest_protocol::topic::default_agent_id;
use ekattest_server::registry::Backend;
use ekattest_testkit::postgres::Postgres;
use serde_json::Value;
use serde_norway::Mapping;
use tempfile::TempDir;

const CLUSTER: &str = "c-registry";
const TRUST_DOMAIN: &str = "registry.test";
const WAIT: Duration = Duration::from_secs(60);
/// The servers' `registry.ban-refresh` here (the default is 2 s).
const BAN_REFRESH: Duration = Duration::from_millis(300);
/// The servers' `registry.flush-interval` here (the default is 1 s).
const FLUSH: Duration = Duration::from_millis(300);
const BANNED: &str = "EK or agent id is banned";

/// Where the registry lives in a test.
enum Db {
    /// Each server's own file (one server in these tests).
    Sqlite,
    /// One PostgreSQL shared by every server, and the password file the servers read.
    Postgres(Box<Postgres>, PathBuf),
}

/// A temp folder, the swtpm CA, the SVID CA, a broker and the servers.
struct World {
    dir: TempDir,
    ca: Ca,
    svid_ca: PathBuf,
    broker: Broker,
    servers: Vec<ServerProcess>,
    db: Db,
}

impl World {
    /// `nodes` servers on `backend` (`sqlite` or `postgres`).
    fn start(backend: &str, nodes: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create().unwrap();
        let (svid_ca, svid_key) = common::svid_ca(dir.path(), TRUST_DOMAIN);
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy(Some(&ca), &[])).unwrap();
        let broker = Broker::start(&BrokerOptions {
            tls: false,
            acl: false,
        })
        .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        let db = match backend {
            "sqlite" => Db::Sqlite,
            "postgres" => {
                let pg =
                    Postgres::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
                let pw = dir.path().join("registry.password");
                std::fs::write(&pw, format!("{}\n", pg.password())).unwrap();
                chmod_600(&pw);
                Db::Postgres(Box::new(pg), pw)
            }
            other => panic!("no backend {other}"),
        };
        let mut servers = Vec::new();
        for i in 0..nodes {
            let mut spec = ServerSpec::new(
                broker.url(),
                CLUSTER,
                format!("node-{i}"),
                TRUST_DOMAIN,
                &svid_ca,
                &svid_key,
            );
            spec.policy_files = vec![policy_file.clone()];
            spec.log_level = Some("debug".into());
            spec.login_burst = Some(0);
            let mut registry = Mapping::new();
            let mut put = |k: &str, v: String| {
                registry.insert(k.into(), v.into());
            };
            put("flush-interval", format!("{}ms", FLUSH.as_millis()));
            put("ban-refresh", format!("{}ms", BAN_REFRESH.as_millis()));
            if let Db::Postgres(pg, pw) = &db {
                put("backend", "postgres".into());
                put("url", pg.url());
                put("password-file", pw.display().to_string());
            }
            spec.registry = Some(registry);
            let server_dir = dir.path().join(format!("server-{i}"));
            std::fs::create_dir_all(&server_dir).unwrap();
            let server = ServerProcess::start(&bin("ekattest-server"), &spec, &server_dir)
                .unwrap_or_else(|e| panic!("cannot start ekattest-server: {e}"));
            server
                .wait_for_msg("subscribed", None, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("ekattest-server never subscribed: {e}"));
            servers.push(server);
        }
        World {
            dir,
            ca,
            svid_ca,
            broker,
            servers,
            db,
        }
    }

    /// The SQLite file of server 0.
    fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("server-0").join("registry.db")
    }

    /// The registry as `Backend` (for the test's own reads).
    fn backend(&self) -> Backend {
        match &self.db {
            Db::Sqlite => Backend::Sqlite(self.sqlite_path()),
            Db::Postgres(pg, _) => Backend::Postgres {
                url: pg.url(),
                password: Some(pg.password().to_owned()),
            },
        }
    }

    /// `ekattestctl agent ARGS` against this world's registry: through the server config
    /// file for SQLite (as an operator on the server host would), through `--registry` for
    /// PostgreSQL (as from a workstation).
    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("ekattestctl"));
        cmd.arg("agent").args(args);
        match &self.db {
            Db::Sqlite => {
                cmd.arg("--server-config")
                    .arg(self.servers[0].config_path());
            }
            Db::Postgres(pg, pw) => {
                cmd.args(["--registry", &pg.url(), "--password-file"])
                    .arg(pw);
            }
        }
        cmd.output().unwrap()
    }

    /// `ctl` that must succeed; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ekattestctl agent {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn metric_sum(&self, series: &str) -> f64 {
        self.servers
            .iter()
            .map(|s| {
                let text = s.metrics().unwrap();
                ekattest_fleet::daemons::metric_value(&text, series)
                    .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
            })
            .sum()
    }

    /// Waits until the servers have written `n` outcomes and hold none queued.
    fn wait_written(&self, n: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let written = self.metric_sum("attestation_registry_events_written_total");
            let queued = self.metric_sum("attestation_registry_queue");
            if written >= n && queued == 0.0 {
                assert_eq!(written, n, "more outcomes written than attestations run");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "registry: {written} of {n} outcomes written, {queued} queued"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn provision(&self) -> Device {
        provision(&self.ca)
    }

    /// Runs `ekattest-agent run --once` for `dev`'s RSA-2048 EK.
    fn attest(&self, dev: &Device, name: &str) -> (AgentExit, PathBuf) {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut spec = AgentSpec::new(self.broker.url(), CLUSTER, dev.spec(), &self.svid_ca, &data);
        spec.ek = Some("rsa2048".into());
        spec.response_timeout = Some(Duration::from_secs(10));
        spec.retry_initial = Some(Duration::from_millis(200));
        spec.retry_max = Some(Duration::from_secs(2));
        let run = self.dir.path().join(format!("{name}-run-{}", unique()));
        std::fs::create_dir_all(&run).unwrap();
        let mut agent = AgentProcess::spawn(&bin("ekattest-agent"), &spec, &run, true)
            .unwrap_or_else(|e| panic!("cannot start ekattest-agent: {e}"));
        let exit = agent
            .wait(WAIT)
            .unwrap_or_else(|e| panic!("agent {name} did not finish: {e}\n{}", self.logs()));
        (exit, data)
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- server {i}:\n{}", s.log()))
            .collect()
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn chmod_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn provision(ca: &Ca) -> Device {
    Device::provision(
        ca,
        &ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: false,
        },
    )
    .unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

/// The RSA-2048 EK's `tpm_ek.public_hash` by openssl, and the agent id derived from it.
fn ek_of(dev: &Device) -> (String, String) {
    let der = dev.ek_cert_der(EkKind::Rsa2048).unwrap();
    let path = dev.work_dir().join(format!("ek-{}.der", unique()));
    std::fs::write(&path, der).unwrap();
    let hash = openssl_public_hash(&path).unwrap();
    let bytes: [u8; 32] = hex::decode(&hash).unwrap().try_into().unwrap();
    (hash, default_agent_id(&bytes).to_string())
}

/// `openssl x509 FIELD` of `pem`: the value after `=`.
fn openssl_field(pem: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(pem)
        .args(args)
        .output()
        .expect("openssl is required");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("openssl printed {text:?}"))
        .1
        .to_owned()
}

/// Unix seconds of a date as `date -d` reads it.
fn unix_of(date: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "+%s", "-d", date])
        .output()
        .unwrap();
    assert!(out.status.success(), "date -d {date:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Two attestations of one device and one refused device: every field of both records, the
/// list and the audit trail, read back through `ekattestctl` and checked against openssl.
fn records_case(backend: &str) {
    let world = World::start(backend, 1);
    let dev = world.provision();
    let (hash, agent) = ek_of(&dev);
    let mut svid = PathBuf::new();
    for attempt in 0..2 {
        let (exit, data) = world.attest(&dev, "good");
        assert!(
            exit.success(),
            "attempt {attempt}: {}\n{}",
            exit.log,
            world.logs()
        );
        svid = data.join("svid.pem");
    }
    // A device whose EK chains to another CA: refused, recorded as a failure only.
    let stranger = provision(&Ca::create().unwrap());
    let (stranger_hash, stranger_agent) = ek_of(&stranger);
    let (exit, _) = world.attest(&stranger, "stranger");
    assert!(!exit.success(), "an untrusted EK attested:\n{}", exit.log);
    world.wait_written(3.0);
    assert_eq!(world.metric_sum(SUCCESS), 2.0);

    let shown = json_lines(&world.ctl_ok(&["show", &hash, "--json"]));
    assert_eq!(shown.len(), 1, "{shown:?}");
    let r = &shown[0];
    assert_eq!(r["ek"], hash.as_str());
    assert_eq!(r["agent_ids"], serde_json::json!([agent]));
    assert_eq!(r["count"], 2);
    assert_eq!(
        r["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}").as_str()
    );
    assert_eq!(r["policy"], "tpm_ek_policy");
    assert_eq!(r["node"], "node-0");
    assert_eq!(r["last_failure"], Value::Null);
    let (first, last) = (
        r["first_attested"].as_i64().unwrap(),
        r["last_attested"].as_i64().unwrap(),
    );
    assert!(first <= last, "{r}");
    let now = ekattest_server::registry::unix_seconds(std::time::SystemTime::now());
    assert!(
        now - first < 600 && first <= now,
        "first_attested {first}, now {now}"
    );
    // The last SVID, as openssl reads the agent's file.
    let serial = openssl_field(&svid, &["-serial"]);
    let stored = r["svid_serial"].as_str().unwrap();
    assert_eq!(
        stored.trim_start_matches('0').to_ascii_uppercase(),
        serial.trim_start_matches('0'),
        "svid_serial"
    );
    let not_after = unix_of(&openssl_field(&svid, &["-enddate"]));
    assert_eq!(r["svid_not_after"].as_i64(), Some(not_after));
    let attrs = r["attributes"].as_array().unwrap();
    assert!(
        attrs.contains(&serde_json::json!(["tpm_ek.public_hash", hash])),
        "{attrs:?}"
    );
    assert!(
        attrs.len() >= 4,
        "swtpm's certificate has identity attributes: {attrs:?}"
    );

    // By agent id, the same record.
    let by_agent = json_lines(&world.ctl_ok(&["show", &agent, "--json"]));
    assert_eq!(by_agent, shown);

    // The refused EK: a failure, no acceptance, no agent id vouched for.
    let s = &json_lines(&world.ctl_ok(&["show", &stranger_hash, "--json"]))[0];
    assert_eq!(s["count"], 0);
    assert_eq!(s["agent_ids"], serde_json::json!([]));
    assert_eq!(s["spiffe_id"], Value::Null);
    let code = s["last_failure"]["code"].as_str().unwrap().to_owned();
    assert_eq!(world.metric_sum(&failed(&code)), 1.0, "code {code}");
    assert!(
        s["last_failure"]["reason"].as_str().unwrap().len() > 10,
        "{s}"
    );

    // Nothing else is there; `show` of an unknown id fails with status 1.
    assert_eq!(json_lines(&world.ctl_ok(&["list", "--json"])).len(), 2);
    let none = world.ctl(&["show", "ek-00000000000000000000000000000000"]);
    assert_eq!(none.status.code(), Some(1));
    let table = world.ctl_ok(&["list"]);
    assert!(
        table.contains(&hash) && table.ends_with("2 devices\n"),
        "{table}"
    );

    // The audit trail: three outcomes, in order.
    let audit = json_lines(&world.ctl_ok(&["audit"]));
    let outcomes: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a["agent"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (agent.as_str(), "accepted"),
            (agent.as_str(), "accepted"),
            (stranger_agent.as_str(), "rejected")
        ]
    );
    assert_eq!(audit[2]["code"], code.as_str());
    assert_eq!(audit[2]["ek"], stranger_hash.as_str());
    assert!(audit.iter().all(|a| a["node"] == "node-0"), "{audit:?}");
}

#[test]
fn swtpm_attestations_are_recorded_field_by_field_in_sqlite() {
    records_case("sqlite");
}

#[test]
fn swtpm_attestations_are_recorded_field_by_field_in_postgres() {
    records_case("postgres");
}

/// Polls until every server reports `n` bans in force; how long it took.
fn wait_bans(world: &World, n: f64) -> Duration {
    let start = Instant::now();
    loop {
        let all = world.servers.iter().all(|s| {
            let text = s.metrics().unwrap();
            ekattest_fleet::daemons::metric_value(&text, "attestation_bans") == Some(n)
        });
        if all {
            return start.elapsed();
        }
        // Ten refresh periods: far past the documented bound, so only a broken refresh fails.
        assert!(
            start.elapsed() < BAN_REFRESH * 10 + Duration::from_secs(2),
            "not every node has {n} bans after {:?}\n{}",
            start.elapsed(),
            world.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A device attests; an operator bans its EK with `ekattestctl`; every node refuses it
/// (agent log, reject code, metric, the server's warn line naming the unban command); an
/// unban lets it attest again.
fn ban_case(backend: &str, nodes: usize) {
    let world = World::start(backend, nodes);
    let dev = world.provision();
    let (hash, agent) = ek_of(&dev);
    let (exit, _) = world.attest(&dev, "dev");
    assert!(exit.success(), "{}\n{}", exit.log, world.logs());

    let out = world.ctl_ok(&["ban", "--ek", &hash, "--reason", "gateway 17 stolen"]);
    assert!(out.contains("banned EK"), "{out}");
    let took = wait_bans(&world, 1.0);
    eprintln!("ban in force on {nodes} node(s) after {took:?} (ban-refresh {BAN_REFRESH:?})");
    let bans = json_lines(&world.ctl_ok(&["list", "--bans", "--json"]));
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0]["kind"], "ek");
    assert_eq!(bans[0]["value"], hash.as_str());
    assert_eq!(bans[0]["reason"], "gateway 17 stolen");

    // Several attempts: with two nodes, the shared subscription spreads them.
    let attempts = 2 * nodes;
    for i in 0..attempts {
        let (exit, _) = world.attest(&dev, "dev");
        assert!(
            !exit.success(),
            "attempt {i}: a banned EK attested\n{}",
            exit.log
        );
        assert!(
            exit.log
                .contains(&format!("attestation rejected: {BANNED}")),
            "attempt {i}: {}",
            exit.log
        );
    }
    assert_eq!(world.metric_sum(&failed("banned")), attempts as f64);
    assert_eq!(world.metric_sum(SUCCESS), 1.0);
    let refusals: Vec<Value> = world
        .servers
        .iter()
        .flat_map(|s| s.log_json())
        .filter(|v| v["msg"] == BANNED)
        .collect();
    assert_eq!(refusals.len(), attempts, "{}", world.logs());
    for v in &refusals {
        assert_eq!(v["agentId"], agent.as_str());
        assert_eq!(v["code"], "banned");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("gateway 17 stolen")
                && error.contains(&format!("ekattestctl agent unban --ek {hash}")),
            "{error}"
        );
    }

    // Lifted: every node lets it in again.
    world.ctl_ok(&["unban", "--ek", &hash]);
    wait_bans(&world, 0.0);
    let (exit, _) = world.attest(&dev, "dev");
    assert!(
        exit.success(),
        "after unban: {}\n{}",
        exit.log,
        world.logs()
    );
    assert_eq!(world.ctl(&["unban", "--ek", &hash]).status.code(), Some(1));

    // The registry saw all of it: 2 acceptances, the refusals with their code.
    world.wait_written((2 + attempts) as f64);
    let r = &json_lines(&world.ctl_ok(&["show", &hash, "--json"]))[0];
    assert_eq!(r["count"], 2);
    let audit = json_lines(&world.ctl_ok(&["audit"]));
    let banned = audit.iter().filter(|a| a["code"] == "banned").count();
    assert_eq!(banned, attempts, "{audit:?}");
}

#[test]
fn a_ban_written_by_ekattestctl_is_honoured_by_the_sqlite_node() {
    ban_case("sqlite", 1);
}

#[test]
fn a_ban_written_by_ekattestctl_is_honoured_by_both_postgres_nodes() {
    ban_case("postgres", 2);
}

/// `kill -9` right after an attestation: the database opens, every batch is whole (each
/// record's count equals its accepted audit lines), at most the last flush window is lost,
/// and the restarted server goes on writing the same file.
#[test]
fn a_server_killed_mid_batch_loses_at_most_the_flush_window() {
    let mut world = World::start("sqlite", 1);
    let devices: Vec<Device> = (0..3).map(|_| world.provision()).collect();
    for (i, dev) in devices.iter().enumerate().take(2) {
        let (exit, _) = world.attest(dev, &format!("d{i}"));
        assert!(exit.success(), "{}", exit.log);
    }
    world.wait_written(2.0);
    // The third outcome is queued when the agent has its identity: kill before it is written.
    let (exit, _) = world.attest(&devices[2], "d2");
    assert!(exit.success(), "{}", exit.log);
    world.servers[0].kill();

    let mut store = world.backend().open().unwrap().unwrap();
    let count = store.count().unwrap();
    eprintln!("after kill -9: {count} of 3 records written (flush-interval {FLUSH:?})");
    assert!(
        (2..=3).contains(&count),
        "{count} records: the two flushed ones must be there"
    );
    let mut accepted = std::collections::HashMap::<String, u64>::new();
    store
        .audit(None, &mut |a| {
            if a.outcome == "accepted" {
                *accepted.entry(a.ek.clone().unwrap()).or_default() += 1;
            }
            true
        })
        .unwrap();
    assert_eq!(
        accepted.len() as u64,
        count,
        "audit and records written together"
    );
    for record in store.list(None).unwrap() {
        assert_eq!(
            Some(&record.count),
            accepted.get(&hex::encode(record.ek)),
            "record and audit of one batch disagree"
        );
    }
    drop(store);

    // The restarted server opens the same file and writes on.
    world.servers[0].start_again().unwrap();
    world.servers[0]
        .wait_for_msg("subscribed", None, Duration::from_secs(30))
        .unwrap();
    let (exit, _) = world.attest(&devices[2], "d2-again");
    assert!(exit.success(), "{}\n{}", exit.log, world.logs());
    world.wait_written(1.0);
    let mut store = world.backend().open().unwrap().unwrap();
    assert_eq!(store.count().unwrap(), 3);
    let (hash, _) = ek_of(&devices[2]);
    let r = store
        .record(&ekattest_server::registry::parse_ek_hash(&hash).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(r.count, count - 2 + 1);
}
