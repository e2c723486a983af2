//! `ekattest-agent`: the device agent binary. For now it carries the operator commands that
//! debug a device's TPM:
//!
//! ```text
//! ekattest-agent tpm info [--tpm SPEC] [--json]
//! ekattest-agent tpm activate --credential FILE [--tpm SPEC] [--ek rsa2048|p256|p384|rsa3072]
//! ```
//!
//! This file parses arguments, opens the transport, calls the library and maps errors to an
//! exit code (0 ok, 1 failure, 2 usage). Logic lives in the library.

use std::process::ExitCode;

use ekattest_agent::ops::{self, Command};

const USAGE: &str = "\
usage: ekattest-agent tpm info [--tpm SPEC] [--json]
       ekattest-agent tpm activate --credential FILE [--tpm SPEC] [--ek rsa2048|p256|p384|rsa3072]

SPEC: /dev/tpmrm0 (default), /dev/tpm0, swtpm:HOST:PORT or swtpm-unix:PATH
options: -v/--verbose (repeat for more log output), -h/--help";

fn main() -> ExitCode {
    let (command, verbosity) = match parse(lexopt::Parser::from_env()) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    StderrLogger::install(verbosity);
    let mut stdout = std::io::stdout().lock();
    match ops::run(&command, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekattest-agent: {}", ekattest_agent::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line; `Ok(None)` means `--help`.
fn parse(mut p: lexopt::Parser) -> Result<Option<(Command, u8)>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut words = Vec::new();
    let mut spec = None;
    let mut json = false;
    let mut credential = None;
    let mut ek = None;
    let mut verbosity = 0u8;
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('v') | Long("verbose") => verbosity = verbosity.saturating_add(1),
            Long("tpm") => spec = Some(p.value()?.string()?),
            Long("json") => json = true,
            Long("credential") => credential = Some(p.value()?.string()?),
            Long("ek") => ek = Some(p.value()?.string()?),
            Value(v) => words.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let spec = ops::parse_spec(spec.as_deref()).map_err(|e| lexopt::Error::from(e.to_string()))?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["tpm", "info"] => {
            if credential.is_some() || ek.is_some() {
                return Err("tpm info takes only --tpm and --json".into());
            }
            Command::Info { spec, json }
        }
        ["tpm", "activate"] => {
            let credential = credential.ok_or("tpm activate needs --credential FILE")?;
            let ek = ek
                .map(|k| ops::parse_ek(&k))
                .transpose()
                .map_err(lexopt::Error::from)?;
            if json {
                return Err("tpm activate does not take --json".into());
            }
            Command::Activate {
                spec,
                credential: credential.into(),
                ek,
            }
        }
        [] => return Err("missing command".into()),
        other => return Err(format!("unknown command: {}", other.join(" ")).into()),
    };
    Ok(Some((command, verbosity)))
}

/// Minimal `log` backend: `level: message` lines on stderr.
struct StderrLogger;

impl StderrLogger {
    fn install(verbosity: u8) {
        static LOGGER: StderrLogger = StderrLogger;
        let level = match verbosity {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "{}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }
    fn flush(&self) {}
}
