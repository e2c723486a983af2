//! The `load` command line: parses the arguments, runs [`super::run`] with Ctrl-C handling,
//! prints the summary table and writes the JSON report and the PNG plot. The fault options
//! are those of [`crate::faults`] (taken out first, then checked for load mode).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::bogus::BogusKind;
use super::{EkMix, LoadOptions, Subscribe};
use crate::error::{Error, Result};
use crate::faults::{FaultPlan, HELP, Mode};
use crate::stage::Registry;

const USAGE: &str = "\
usage: ekattest-fleet load --devices N [--rate R] [--ek rsa2048|p256|mixed] [--servers K]
                           [--broker URL[,URL...] | --nats-nodes N] [--threads T]
                           [--window W] [--workers W] [--registry sqlite|postgres|none]
                           [--report FILE] [--plot FILE.png] [options] [fault options]

  Software TPMs (EK and AK keys in the harness, ActivateCredential in software) attest over
  MQTT to K real ekattest-server processes whose policy allow-lists the run's EK hashes.

  --devices N        simulated devices (default 1000)
  --rate R           logins per second across all threads (default: as fast as the window allows)
  --ek KIND          rsa2048, p256 or mixed (default mixed)
  --servers K        ekattest-server processes (default 1)
  --broker URL[,URL...]  use this broker (mqtt://HOST:PORT) instead of starting mosquitto;
                     several URLs (the MQTT listeners of one clustered broker): device
                     threads start on them in turn and fail over to the next
  --nats-nodes N     start a local N-node nats-server cluster (MQTT and JetStream on) instead
                     of mosquitto: servers on bus: nats, device threads spread over the
                     nodes' MQTT listeners (use --subscribe wildcard: every MQTT QoS 1
                     subscription is a replicated JetStream consumer there)
  --threads T        device threads, one MQTT connection each (default 2)
  --window W         most devices in flight per thread (default 256)
  --workers W        the servers' worker threads (default: one per CPU)
  --registry B       the servers' device registry: sqlite (default: a file in each server's
                     folder), postgres (one PostgreSQL started for the run, shared by the K
                     servers) or none; the report counts its records against the distinct
                     EKs attested
  --rsa-keys N       distinct RSA-2048 EKs; more devices share them (default 64)
  --p256-keys N      distinct P-256 EKs (default 10000; one policy holds about 15000 hashes)
  --attempt-timeout D  wait for a Challenge or Result before logging in again (default 5s,
                     30s with --nats-nodes; --timeout is the same option); lost messages
                     recover after D
  --deadline D       stop the run after D; unfinished devices are errors (default 1h)
  --verify-every N   check the server's Result signature on 1 Accepted in N (default 100; 1 = all)
  --subscribe HOW    device (one filter per device, default) or wildcard (agents/+/down)
  --server-log LEVEL the servers' log-level (default warn)
  --ek-cert-bytes N  EK certificate size for the bytes-with-certificate estimate (default 1169)
  --bin-dir DIR      where ekattest-server and ekattestctl are (default: beside this program)
  --report FILE      write the summary as JSON
  --plot FILE.png    draw the time-to-identity histogram
  --bogus N          also send N bogus logins from distinct fake agent ids (default 0)
  --bogus-kind K     random, garbage-cert, wrong-ek or mix (default mix: all three in turn);
                     the Rejected results are counted per class and code in the notes

  Exit status 0 when every device attested, 1 otherwise, 2 for a usage error.";

/// The attempt timeout with `--nats-nodes` unless `--attempt-timeout` is given: clustered
/// MQTT QoS 1 (a JetStream write per message, replicated) takes seconds per attempt under
/// load, and a 5 s timeout turns that into a storm of repeated logins.
const NATS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

fn duration(v: &str) -> Result<Duration> {
    ekattest_protocol::duration::parse(v).map_err(|e| Error::Usage(e.to_string()))
}

struct Cli {
    opts: LoadOptions,
    report: Option<PathBuf>,
    plot: Option<PathBuf>,
}

fn parse(args: Vec<OsString>) -> Result<Option<Cli>> {
    use lexopt::prelude::*;
    let (faults, args) = FaultPlan::extract(args).map_err(|e| Error::Usage(e.to_string()))?;
    let mut p = lexopt::Parser::from_args(args);
    let mut opts = LoadOptions {
        progress: true,
        faults,
        ..LoadOptions::default()
    };
    let (mut report, mut plot) = (None, None);
    let mut seen_load = false;
    let mut timeout_given = false;
    while let Some(arg) = p.next().map_err(|e| Error::Usage(e.to_string()))? {
        fn text(p: &mut lexopt::Parser, name: &str) -> Result<String> {
            p.value()
                .map_err(|e| Error::Usage(format!("--{name}: {e}")))?
                .into_string()
                .map_err(|_| Error::Usage(format!("--{name}: not UTF-8")))
        }
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| Error::Usage(format!("--{name} {v:?}: {e}")))
        }
        match arg {
            Value(v) if !seen_load && v == "load" => seen_load = true,
            Long("devices") => opts.devices = num("devices", text(&mut p, "devices")?)?,
            Long("rate") => opts.rate = Some(num("rate", text(&mut p, "rate")?)?),
            Long("ek") => {
                let v = text(&mut p, "ek")?;
                opts.ek = EkMix::parse(&v).ok_or_else(|| {
                    Error::Usage(format!("--ek {v:?}: use rsa2048, p256 or mixed"))
                })?;
            }
            Long("servers") => opts.servers = num("servers", text(&mut p, "servers")?)?,
            Long("broker") => {
                let v = text(&mut p, "broker")?;
                let mut urls = v.split(',').map(str::trim).filter(|u| !u.is_empty());
                opts.broker = Some(
                    urls.next()
                        .ok_or_else(|| Error::Usage("--broker needs a URL".into()))?
                        .to_owned(),
                );
                opts.broker_urls = urls.map(str::to_owned).collect();
            }
            Long("nats-nodes") => opts.nats_nodes = num("nats-nodes", text(&mut p, "nats-nodes")?)?,
            Long("threads") => opts.threads = num("threads", text(&mut p, "threads")?)?,
            Long("window") => opts.window = num("window", text(&mut p, "window")?)?,
            Long("workers") => opts.workers = Some(num("workers", text(&mut p, "workers")?)?),
            Long("registry") => {
                let v = text(&mut p, "registry")?;
                opts.registry = Registry::parse(&v).ok_or_else(|| {
                    Error::Usage(format!("--registry {v:?}: use sqlite, postgres or none"))
                })?;
            }
            Long("rsa-keys") => opts.rsa_keys = num("rsa-keys", text(&mut p, "rsa-keys")?)?,
            Long("p256-keys") => opts.p256_keys = num("p256-keys", text(&mut p, "p256-keys")?)?,
            Long(given @ ("attempt-timeout" | "timeout")) => {
                let name = given.to_owned();
                opts.timeout = duration(&text(&mut p, &name)?)?;
                timeout_given = true;
                if opts.timeout.is_zero() {
                    return Err(Error::Usage(format!("--{name} must be longer than 0")));
                }
            }
            Long("deadline") => opts.deadline = duration(&text(&mut p, "deadline")?)?,
            Long("verify-every") => {
                opts.verify_every = num("verify-every", text(&mut p, "verify-every")?)?;
            }
            Long("subscribe") => {
                opts.subscribe = match text(&mut p, "subscribe")?.as_str() {
                    "device" => Subscribe::PerDevice,
                    "wildcard" => Subscribe::Wildcard,
                    v => {
                        return Err(Error::Usage(format!(
                            "--subscribe {v:?}: use device or wildcard"
                        )));
                    }
                };
            }
            Long("server-log") => opts.server_log_level = text(&mut p, "server-log")?,
            Long("ek-cert-bytes") => {
                opts.ek_cert_bytes = num("ek-cert-bytes", text(&mut p, "ek-cert-bytes")?)?;
            }
            Long("bin-dir") => opts.bin_dir = Some(PathBuf::from(text(&mut p, "bin-dir")?)),
            Long("report") => report = Some(PathBuf::from(text(&mut p, "report")?)),
            Long("plot") => plot = Some(PathBuf::from(text(&mut p, "plot")?)),
            Long("bogus") => opts.bogus = num("bogus", text(&mut p, "bogus")?)?,
            Long("bogus-kind") => {
                let v = text(&mut p, "bogus-kind")?;
                opts.bogus_kinds = BogusKind::parse_list(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--bogus-kind {v:?}: use random, garbage-cert, wrong-ek or mix"
                    ))
                })?;
            }
            Short('h') | Long("help") => return Ok(None),
            other => return Err(Error::Usage(other.unexpected().to_string())),
        }
    }
    if opts.devices == 0 || opts.threads == 0 || opts.servers == 0 || opts.window == 0 {
        return Err(Error::Usage(
            "--devices, --threads, --servers and --window must be at least 1".into(),
        ));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Error::Usage("--rate must be a positive number".into()));
    }
    if opts.nats_nodes > 0 && !timeout_given {
        opts.timeout = NATS_ATTEMPT_TIMEOUT;
    }
    if opts.nats_nodes > 9 {
        return Err(Error::Usage(format!(
            "--nats-nodes {}: use 1 to 9",
            opts.nats_nodes
        )));
    }
    if opts.nats_nodes > 0 && opts.broker.is_some() {
        return Err(Error::Usage(
            "--nats-nodes starts a cluster of its own: drop --broker".into(),
        ));
    }
    opts.faults
        .validate(
            Mode::Load,
            opts.servers,
            opts.broker.is_none() && opts.nats_nodes == 0,
            opts.nats_nodes,
        )
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Some(Cli { opts, report, plot }))
}

/// `ekattest-fleet load ...`: `args` are the arguments after the program name (a leading
/// `load` is accepted). Exit status 0 when every device attested, 1 otherwise, 2 for a
/// usage error.
pub fn cli(args: Vec<OsString>) -> ExitCode {
    let cli = match parse(args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{USAGE}\n\n{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-fleet load: {e}\n\n{USAGE}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let stop = crate::fleet::stop_on_signals();
    let summary = match super::run(&cli.opts, &stop) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ekattest-fleet load: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", summary.table());
    let mut ok = summary.attested == summary.devices;
    if let Some(path) = &cli.report
        && let Err(e) = summary.write_json(path)
    {
        eprintln!("ekattest-fleet load: cannot write {}: {e}", path.display());
        ok = false;
    }
    if let Some(path) = &cli.plot
        && let Err(e) = summary.write_png(path)
    {
        eprintln!("ekattest-fleet load: cannot write {}: {e}", path.display());
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_documented_options() {
        let c = parse(args(
            "load --devices 2000 --rate 500 --ek p256 --servers 2 --broker mqtt://h:1 --threads 3 \
             --window 64 --workers 2 --timeout 2s --verify-every 1 --subscribe wildcard \
             --report r.json --plot p.png",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.opts.devices, 2000);
        assert_eq!(c.opts.rate, Some(500.0));
        assert_eq!(c.opts.ek, EkMix::P256);
        assert_eq!(c.opts.servers, 2);
        assert_eq!(c.opts.broker.as_deref(), Some("mqtt://h:1"));
        assert_eq!(
            (c.opts.threads, c.opts.window, c.opts.workers),
            (3, 64, Some(2))
        );
        assert_eq!(c.opts.timeout, Duration::from_secs(2));
        assert_eq!(c.opts.subscribe, Subscribe::Wildcard);
        assert_eq!(c.report, Some(PathBuf::from("r.json")));
        assert_eq!(c.plot, Some(PathBuf::from("p.png")));
        assert!(parse(args("load --help")).unwrap().is_none());
        assert_eq!(c.opts.registry, Registry::Sqlite);
        let r = parse(args("load --registry postgres --servers 3"))
            .unwrap()
            .unwrap();
        assert_eq!((r.opts.registry, r.opts.servers), (Registry::Postgres, 3));
        let r = parse(args("load --registry none")).unwrap().unwrap();
        assert_eq!(r.opts.registry, Registry::None);
        assert_eq!(c.opts.bogus, 0);
        let c = parse(args("load --bogus 500 --bogus-kind garbage-cert"))
            .unwrap()
            .unwrap();
        assert_eq!(c.opts.bogus, 500);
        assert_eq!(c.opts.bogus_kinds, vec![BogusKind::GarbageCert]);
        let c = parse(args("load --broker mqtt://a:1,mqtt://b:2,mqtt://c:3"))
            .unwrap()
            .unwrap();
        assert_eq!(c.opts.broker.as_deref(), Some("mqtt://a:1"));
        assert_eq!(c.opts.broker_urls, ["mqtt://b:2", "mqtt://c:3"]);
        assert_eq!(c.opts.nats_nodes, 0);
        let c = parse(args(
            "load --nats-nodes 3 --servers 3 --kill-nats-node-at 2s --kill-server-at 3s",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.opts.nats_nodes, 3);
        assert_eq!(c.opts.timeout, NATS_ATTEMPT_TIMEOUT);
        let t = parse(args("load --nats-nodes 3 --attempt-timeout 8s"))
            .unwrap()
            .unwrap();
        assert_eq!(t.opts.timeout, Duration::from_secs(8));
        assert_eq!(
            c.opts.faults.kill_nats_node_at,
            Some(Duration::from_secs(2))
        );
        assert!(c.opts.broker.is_none() && c.opts.broker_urls.is_empty());
    }

    #[test]
    fn takes_the_fault_options() {
        let c = parse(args(
            "load --devices 10 --servers 2 --drop 5% --corrupt 0.01 --kill-server-at 1s \
             --broker-restart-at 2s --broker-down 500ms --fault-seed 7 --attempt-timeout 1500ms",
        ))
        .unwrap()
        .unwrap();
        let f = &c.opts.faults;
        assert!((f.drop - 0.05).abs() < 1e-12 && (f.corrupt - 0.01).abs() < 1e-12);
        assert_eq!(f.kill_server_at, Some(Duration::from_secs(1)));
        assert_eq!(f.broker_restart_at, Some(Duration::from_secs(2)));
        assert_eq!(f.broker_down(), Duration::from_millis(500));
        assert_eq!(f.seed, 7);
        assert_eq!(c.opts.timeout, Duration::from_millis(1500));
        assert_eq!(c.opts.devices, 10);
        let c = parse(args("load --slow-tpm 300ms+-100ms"))
            .unwrap()
            .unwrap();
        let slow = c.opts.faults.slow_tpm.unwrap();
        assert_eq!(
            (slow.delay, slow.jitter),
            (Duration::from_millis(300), Duration::from_millis(100))
        );
        assert!(parse(args("load")).unwrap().unwrap().opts.faults.is_empty());
    }

    #[test]
    fn refuses_faults_load_mode_cannot_apply() {
        for (bad, why) in [
            ("load --kill-server-at 1s", "--servers 2"),
            (
                "load --broker mqtt://h:1 --broker-restart-at 1s",
                "--broker URL",
            ),
            ("load --broker-down 1s", "--broker-restart-at"),
            ("load --drop 2", "fraction"),
            ("load --kill-nats-node-at 1s", "--nats-nodes 3"),
            (
                "load --nats-nodes 2 --kill-nats-node-at 1s",
                "--nats-nodes 3",
            ),
            ("load --nats-nodes 3 --broker mqtt://h:1", "drop --broker"),
            (
                "load --nats-nodes 3 --broker-restart-at 1s",
                "--kill-nats-node-at",
            ),
            ("load --nats-nodes 10", "1 to 9"),
            ("load --attempt-timeout 0s", "longer than 0"),
        ] {
            let e = parse(args(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "load --devices 0",
            "load --ek rsa4096",
            "load --rate -1",
            "load --subscribe some",
            "load --threads x",
            "load --bogus",
            "load --bogus 10 --bogus-kind some",
            "load --registry mysql",
            "load --registry",
        ] {
            assert!(parse(args(bad)).is_err(), "{bad}");
        }
    }
}
