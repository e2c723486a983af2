//! The `run` command line: options (with the fault options of [`crate::faults`]), usage,
//! signal handling and the exit status. It never starts processes itself ([`super::run`]
//! does) and never exits the process (it returns the exit code).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{EkChoice, RunOptions, run};
use crate::error::{Error, Result};
use crate::faults::{FaultPlan, Mode};
use crate::stage::Registry;

/// Usage of `run` (and `demo`).
pub const USAGE: &str = "\
usage: ekattest-fleet run --devices N [--ek rsa2048|p256|p384|mixed] [--servers K]
                          [--broker URL | --nats-nodes N] [--report FILE] [--plot FILE.png]
                          [--parallel P]
                          [--provision-parallel T] [--cache DIR] [--keep] [--wire-bytes] [--timeout D]
                          [--bin-dir DIR] [--registry sqlite|postgres|none]
       ekattest-fleet demo [run options]      (alias of run --devices 25 --ek mixed)

  --devices    swtpm devices to provision and attest (default 25)
  --ek         EK the agents attest with; mixed cycles rsa2048, p256, p384 (default mixed)
  --servers    ekattest-server processes sharing the login topic (default 1)
  --broker     use this MQTT broker (mqtt://HOST:PORT) instead of a per-run mosquitto
  --nats-nodes start a per-run N-node nats-server cluster (MQTT and JetStream on) instead
               of mosquitto: servers on bus: nats, agent i on node i mod N with the other
               nodes as its failover list (broker: [...]); --kill-nats-node-at kills one
  --report     write the summary as JSON to FILE
  --plot       draw the time-to-identity histogram to FILE.png
  --parallel   agent processes alive at a time (default 64)
  --provision-parallel  swtpm_setup runs at a time (default: cores)
  --cache      reuse provisioned TPM states (and their CA) from DIR when it holds at least
               N states made with the same options; otherwise provision and fill DIR
  --keep       keep the run folder (configs, logs) and print its path
  --wire-bytes route the agents through the harness's MQTT proxy (no faults) to count the
               bytes on the wire per attestation (implied by --drop and --corrupt)
  --timeout    per-device limit, agent start to identity (default 120s)
  --bin-dir    folder of ekattest-agent and ekattest-server (default: beside this program)
  --registry   the servers' device registry: sqlite (default: a file in each server's
               folder), postgres (one PostgreSQL started for the run, shared by the K
               servers; needs Debian's postgresql) or none; the report counts its records
               against the distinct EKs attested

Needs swtpm, swtpm_setup, swtpm_localca, tpm2-tools, openssl and mosquitto (nats-server
for --nats-nodes) (bash .ci/install, or apt-get install swtpm swtpm-tools tpm2-tools
openssl mosquitto nats-server).";

/// Parses `run` options (after the subcommand). `Ok(None)` means `--help`.
///
/// # Errors
/// [`Error::Usage`] naming the option.
pub fn parse(args: Vec<OsString>) -> Result<Option<RunOptions>> {
    use lexopt::prelude::*;
    let usage = |e: lexopt::Error| Error::Usage(e.to_string());
    let (plan, args) = FaultPlan::extract(args).map_err(|e| Error::Usage(e.to_string()))?;
    let mut p = lexopt::Parser::from_args(args);
    let mut o = RunOptions {
        faults: plan,
        ..RunOptions::default()
    };
    let num = |p: &mut lexopt::Parser, name: &str| -> Result<usize> {
        p.value()
            .and_then(|v| v.parse())
            .map_err(|e| Error::Usage(format!("--{name}: {e}")))
    };
    let path =
        |p: &mut lexopt::Parser| -> Result<PathBuf> { p.value().map(PathBuf::from).map_err(usage) };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("devices") => o.devices = num(&mut p, "devices")?,
            Long("servers") => o.servers = num(&mut p, "servers")?,
            Long("nats-nodes") => o.nats_nodes = num(&mut p, "nats-nodes")?,
            Long("parallel") => o.parallel = num(&mut p, "parallel")?,
            Long("provision-parallel") => o.provision_parallel = num(&mut p, "provision-parallel")?,
            Long("ek") => {
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                o.ek = EkChoice::parse(&v).ok_or_else(|| {
                    Error::Usage(format!("--ek: {v:?} is not rsa2048, p256, p384 or mixed"))
                })?;
            }
            Long("broker") => {
                o.broker = Some(p.value().map_err(usage)?.string().map_err(usage)?);
            }
            Long("report") => o.report = Some(path(&mut p)?),
            Long("plot") => o.plot = Some(path(&mut p)?),
            Long("cache") => o.cache = Some(path(&mut p)?),
            Long("bin-dir") => o.bin_dir = Some(path(&mut p)?),
            Long("keep") => o.keep = true,
            Long("registry") => {
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                o.registry = Registry::parse(&v).ok_or_else(|| {
                    Error::Usage(format!("--registry: {v:?} is not sqlite, postgres or none"))
                })?;
            }
            Long("wire-bytes") => o.wire_bytes = true,
            Long("timeout") => {
                let v = p.value().map_err(usage)?.string().map_err(usage)?;
                o.timeout = ekattest_protocol::duration::parse(&v)
                    .map_err(|e| Error::Usage(format!("--timeout: {v:?}: {e}")))?;
            }
            Short('h') | Long("help") => return Ok(None),
            other => return Err(usage(other.unexpected())),
        }
    }
    if o.devices == 0 || o.servers == 0 || o.parallel == 0 || o.provision_parallel == 0 {
        return Err(Error::Usage(
            "--devices, --servers, --parallel and --provision-parallel must be at least 1".into(),
        ));
    }
    if o.nats_nodes > 9 {
        return Err(Error::Usage(format!(
            "--nats-nodes {}: use 1 to 9",
            o.nats_nodes
        )));
    }
    if o.nats_nodes > 0 && o.broker.is_some() {
        return Err(Error::Usage(
            "--nats-nodes starts a cluster of its own: drop --broker".into(),
        ));
    }
    if o.nats_nodes > 0 && o.wire_bytes {
        return Err(Error::Usage(
            "--wire-bytes puts one proxy in front of one broker: it does not combine with \
             --nats-nodes"
                .into(),
        ));
    }
    o.faults
        .validate(
            Mode::Run,
            o.servers,
            o.broker.is_none() && o.nats_nodes == 0,
            o.nats_nodes,
        )
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Some(o))
}

/// Makes SIGINT and SIGTERM set the returned flag (through `signal-hook`'s safe flag
/// handler) instead of ending the process, so the run can stop its children and remove its
/// folder. Signals are not blocked: children inherit the signal mask, and a blocked SIGTERM
/// in the servers and agents would make every stop wait for the SIGKILL timeout.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("ekattest-fleet: cannot handle signal {signal} ({e}); it will not clean up");
        }
    }
    stop
}

/// `ekattest-fleet run ARGS` (and `demo`): parses, runs, prints the summary, writes the
/// report files. Exit 0 when every device attested, 1 otherwise, 2 on usage errors, 130
/// when interrupted.
pub fn cli(args: Vec<OsString>) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}\n\n{}", crate::faults::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-fleet run: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = stop_on_signals();
    let result = run(&opts, &stop);
    if stop.load(Ordering::Relaxed) {
        eprintln!("ekattest-fleet: interrupted; every process stopped and the run folder removed");
        return ExitCode::from(130);
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ekattest-fleet run: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", summary.table());
    let mut code = if summary.attested == summary.devices {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &opts.report
        && let Err(e) = summary.write_json(path)
    {
        eprintln!(
            "ekattest-fleet run: cannot write the report {}: {e}",
            path.display()
        );
        code = ExitCode::FAILURE;
    }
    if let Some(path) = &opts.plot
        && let Err(e) = summary.write_png(path)
    {
        eprintln!("ekattest-fleet run: {e}");
        code = ExitCode::FAILURE;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn nats_nodes_and_the_node_kill() {
        let o = parse(args(
            "--devices 30 --servers 3 --nats-nodes 3 --kill-nats-node-at 5s --kill-server-at 6s",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((o.devices, o.servers, o.nats_nodes), (30, 3, 3));
        assert_eq!(
            o.faults.kill_nats_node_at,
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(parse(args("--devices 3")).unwrap().unwrap().nats_nodes, 0);
        for (bad, why) in [
            ("--kill-nats-node-at 1s", "--nats-nodes 3"),
            ("--nats-nodes 2 --kill-nats-node-at 1s", "--nats-nodes 3"),
            ("--nats-nodes 3 --broker mqtt://h:1", "drop --broker"),
            ("--nats-nodes 3 --wire-bytes", "--wire-bytes"),
            ("--nats-nodes 3 --drop 1%", "--nats-nodes"),
            (
                "--nats-nodes 3 --broker-restart-at 1s",
                "--kill-nats-node-at",
            ),
            ("--nats-nodes 12", "1 to 9"),
        ] {
            let e = parse(args(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn registry_backend_defaults_to_sqlite() {
        assert_eq!(
            parse(args("--devices 3")).unwrap().unwrap().registry,
            Registry::Sqlite
        );
        let o = parse(args("--registry postgres --servers 2"))
            .unwrap()
            .unwrap();
        assert_eq!((o.registry, o.servers), (Registry::Postgres, 2));
        assert_eq!(
            parse(args("--registry none")).unwrap().unwrap().registry,
            Registry::None
        );
        let e = parse(args("--registry mysql")).err().unwrap();
        assert!(e.to_string().contains("sqlite, postgres or none"), "{e}");
    }
}
