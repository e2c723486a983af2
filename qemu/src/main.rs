//! `ekattest-fleet`: the fleet harness's command line. Today: `demo`, the README's first
//! command (a small swtpm fleet attested in process through the agent and server libraries).

use std::path::PathBuf;
use std::process::ExitCode;

use ekattest_fleet::demo::{self, DemoOptions};

const USAGE: &str = "\
usage: ekattest-fleet demo [--devices N] [--parallel N] [--report FILE]

  demo       provision N swtpm devices (RSA-2048, P-256 and P-384 EKs in turn) with EK
             certificates from a per-run CA, plus one device from an untrusted CA; attest
             each through the agent and server libraries; replay one answer; print the
             server's log lines and a summary table.
  --devices  trusted devices (default 6)
  --parallel devices provisioned and attested at once (default 4)
  --report   also write the run as JSON to FILE

Needs swtpm, swtpm_setup, swtpm_localca, tpm2-tools and openssl on PATH
(apt-get install swtpm swtpm-tools tpm2-tools openssl; .ci/install does it).";

fn parse() -> Result<DemoOptions, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut opts = DemoOptions::default();
    let mut command = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Value(v) if command.is_none() => command = Some(v.string().map_err(|e| e.to_string())?),
            Long("devices") => {
                opts.devices = parser
                    .value()
                    .and_then(|v| v.parse())
                    .map_err(|e| format!("--devices: {e}"))?;
            }
            Long("parallel") => {
                opts.parallel = parser
                    .value()
                    .and_then(|v| v.parse())
                    .map_err(|e| format!("--parallel: {e}"))?;
            }
            Long("report") => {
                opts.report = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            Short('h') | Long("help") => return Err(String::new()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    match command.as_deref() {
        Some("demo") if (1..=64).contains(&opts.devices) && opts.parallel >= 1 => Ok(opts),
        Some("demo") => Err("--devices must be 1..=64 and --parallel at least 1".to_owned()),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("missing command".to_owned()),
    }
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-fleet: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match demo::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekattest-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
