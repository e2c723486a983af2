//! `ekattest-agent`: the device agent binary: the attestation daemon and the operator
//! commands that debug a device's TPM:
//!
//! ```text
//! ekattest-agent run --config FILE [--once] [--timeout 5m] [--tpm SPEC] [--broker URL[,URL...]] [--ek KIND]
//!                   [--svid-key software|tpm]
//! ekattest-agent tpm info [--tpm SPEC] [--json]
//! ekattest-agent tpm activate --credential FILE [--tpm SPEC] [--ek rsa2048|p256|p384|rsa3072]
//! ```
//!
//! This file parses arguments, loads the config, installs the logger and the SIGTERM/SIGINT
//! handling, calls the library and maps errors to an exit code (0 ok, 1 failure, 2 usage).
//! Logic lives in the library.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ekattest_agent::daemon::{self, RunOptions, config::Config};
use ekattest_agent::ops::{self, Command};

const USAGE: &str = "\
usage: ekattest-agent run --config FILE [--once] [--timeout DURATION] [--tpm SPEC]
                          [--broker URL[,URL...]]
                          [--ek rsa2048|p256|p384|rsa3072] [--svid-key software|tpm]
       ekattest-agent tpm info [--tpm SPEC] [--json]
       ekattest-agent tpm activate --credential FILE [--tpm SPEC] [--ek rsa2048|p256|p384|rsa3072]

run: attest over MQTT and keep the SVID fresh; --once attests, writes the files and exits
     (0 attested, 1 rejected / failed / --timeout reached, default 5m). Flags override the file.
     --svid-key tpm keeps the SVID key in the TPM (svid.key is then a TSS2 PRIVATE KEY).
SPEC: /dev/tpmrm0 (default), /dev/tpm0, swtpm:HOST:PORT or swtpm-unix:PATH; without a kernel
      TPM driver: spi:/dev/spidevB.C[@HZ] (TIS over SPI, default 10 MHz) or tis-mmio:0xADDR
options: -v/--verbose (repeat for more log output), -h/--help";

/// The `run` subcommand's arguments.
struct RunArgs {
    config: String,
    once: bool,
    timeout: Option<String>,
    tpm: Option<String>,
    broker: Option<String>,
    ek: Option<String>,
    svid_key: Option<String>,
}

enum Cli {
    Tpm(Command),
    Run(RunArgs),
}

fn main() -> ExitCode {
    let (cli, verbosity) = match parse(lexopt::Parser::from_env()) {
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
    let command = match cli {
        Cli::Run(args) => return run(&args, verbosity),
        Cli::Tpm(command) => command,
    };
    StderrLogger::install(level(verbosity));
    let mut stdout = std::io::stdout().lock();
    match ops::run(&command, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekattest-agent: {}", ekattest_agent::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `run`: loads the config, applies the flags, runs the daemon.
fn run(args: &RunArgs, verbosity: u8) -> ExitCode {
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ekattest-agent: {e}");
            return ExitCode::from(if e.starts_with("usage") { 2 } else { 1 });
        }
    };
    let timeout = match args
        .timeout
        .as_deref()
        .map(|t| daemon::config::parse_duration("--timeout", t))
    {
        None => std::time::Duration::from_secs(300),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("ekattest-agent: {e}");
            return ExitCode::from(2);
        }
    };
    StderrLogger::install(if verbosity > 0 {
        level(verbosity.saturating_add(1))
    } else {
        config.log_level
    });
    let stop = stop_on_signals();
    let opts = RunOptions {
        once: args.once,
        timeout,
    };
    match daemon::run(&config, &opts, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekattest-agent: {}", ekattest_agent::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn load(args: &RunArgs) -> Result<Config, String> {
    let mut config = Config::load(std::path::Path::new(&args.config)).map_err(|e| e.to_string())?;
    if let Some(tpm) = &args.tpm {
        config.tpm = ops::parse_spec(Some(tpm)).map_err(|e| format!("usage: --tpm: {e}"))?;
    }
    if let Some(url) = &args.broker {
        config
            .set_brokers(url)
            .map_err(|e| format!("usage: --broker: {e}"))?;
    }
    if let Some(ek) = &args.ek {
        config.ek = Some(ops::parse_ek(ek).map_err(|e| format!("usage: --ek: {e}"))?);
    }
    if let Some(kind) = &args.svid_key {
        config.svid_key = daemon::config::SvidKeyKind::parse(kind)
            .map_err(|e| format!("usage: --svid-key: {e}"))?;
    }
    Ok(config)
}

/// Blocks SIGTERM and SIGINT in this (and every later) thread and waits for them on a
/// dedicated thread, which sets the returned flag; the daemon checks it between steps and
/// exits 0. No signal handler runs, so no unsafe code is needed.
fn stop_on_signals() -> Arc<AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        log::warn!("cannot block SIGTERM/SIGINT ({e}); they will end the agent abruptly");
        return stop;
    }
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                log::info!("{signal} received, stopping");
                flag.store(true, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e})");
    }
    stop
}

/// Parses the command line; `Ok(None)` means `--help`.
fn parse(mut p: lexopt::Parser) -> Result<Option<(Cli, u8)>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut words = Vec::new();
    let mut spec = None;
    let mut json = false;
    let mut credential = None;
    let mut ek = None;
    let mut config = None;
    let mut once = false;
    let mut timeout = None;
    let mut broker = None;
    let mut svid_key = None;
    let mut verbosity = 0u8;
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('v') | Long("verbose") => verbosity = verbosity.saturating_add(1),
            Long("tpm") => spec = Some(p.value()?.string()?),
            Long("json") => json = true,
            Long("credential") => credential = Some(p.value()?.string()?),
            Long("ek") => ek = Some(p.value()?.string()?),
            Long("config") => config = Some(p.value()?.string()?),
            Long("once") => once = true,
            Long("timeout") => timeout = Some(p.value()?.string()?),
            Long("broker") => broker = Some(p.value()?.string()?),
            Long("svid-key") => svid_key = Some(p.value()?.string()?),
            Value(v) => words.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if words == ["run"] {
        if json || credential.is_some() {
            return Err("run does not take --json or --credential".into());
        }
        let config = config.ok_or("run needs --config FILE")?;
        return Ok(Some((
            Cli::Run(RunArgs {
                config,
                once,
                timeout,
                tpm: spec,
                broker,
                ek,
                svid_key,
            }),
            verbosity,
        )));
    }
    if config.is_some() || once || timeout.is_some() || broker.is_some() || svid_key.is_some() {
        return Err("--config, --once, --timeout, --broker and --svid-key belong to run".into());
    }
    let spec = ops::parse_spec(spec.as_deref()).map_err(|e| lexopt::Error::from(e.to_string()))?;
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
    Ok(Some((Cli::Tpm(command), verbosity)))
}

fn level(verbosity: u8) -> log::LevelFilter {
    match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Minimal `log` backend: `level: message` lines on stderr. Other crates (rumqttc, rustls)
/// log at most warnings, so debug output stays the agent's own.
struct StderrLogger;

impl StderrLogger {
    fn install(level: log::LevelFilter) {
        static LOGGER: StderrLogger = StderrLogger;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("ekattest") || metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        eprintln!(
            "{}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }
    fn flush(&self) {}
}
