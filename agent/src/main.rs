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
//! This file parses arguments, loads the config, installs the logger and the signal handling
//! (SIGTERM/SIGINT stop, SIGHUP re-reads the config and re-attests), calls the library and
//! maps the outcome to an exit code (0 ok or stopped, 1 failure, 2 usage, 128 + the signal
//! when a `--once` run is stopped before its identity is written). Logic lives in the library.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use ekattest_agent::daemon::config::{Config, LogFormat};
use ekattest_agent::daemon::{self, Control, Exit, RunOptions};
use ekattest_agent::logging::Logger;
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
     Signals: SIGTERM/SIGINT stop (exit 0; with --once before the identity is written, 143
     for SIGTERM and 130 for SIGINT); SIGHUP re-reads --config (an invalid file is logged and
     the previous configuration kept) and attests again now.
exit status: 0 ok, 1 failure, 2 usage error, 130/143 --once interrupted.
SPEC: /dev/tpmrm0 (default), /dev/tpm0, swtpm:HOST:PORT or swtpm-unix:PATH; without a kernel
      TPM driver: spi:/dev/spidevB.C[@HZ] (TIS over SPI, default 10 MHz) or tis-mmio:0xADDR
options: -v/--verbose (repeat for more log output), -h/--help, -V/--version";

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
    Version,
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
        Cli::Version => {
            println!("{}", ekattest_protocol::version_line!("ekattest-agent"));
            return ExitCode::SUCCESS;
        }
    };
    Logger::install(level(verbosity), LogFormat::Text);
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
    Logger::install(
        if verbosity > 0 {
            level(verbosity.saturating_add(1))
        } else {
            config.log_level
        },
        config.log_format,
    );
    let signals = Signals::install();
    let opts = RunOptions {
        once: args.once,
        timeout,
    };
    let reload = || {
        let config = load(args)?;
        if verbosity == 0 {
            log::set_max_level(config.log_level);
        }
        Logger::set_format(config.log_format);
        Ok(config)
    };
    match daemon::run(config, &opts, &signals.control, &reload) {
        Ok(Exit::Attested) => ExitCode::SUCCESS,
        // A daemon stopped by a signal stopped cleanly; an interrupted --once did not do its
        // job, so `--once && next-step` must not carry on: 128 + the signal, as a shell does.
        Ok(Exit::Stopped) if args.once => {
            let signal = signals.last.load(Ordering::Relaxed);
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Err(e) => {
            let chain = ekattest_agent::error::chain(&e);
            if Logger::is_json() {
                // Every line stays JSON with log-format: json.
                log::error!(error = chain.as_str(); "ekattest-agent stopped");
            } else {
                eprintln!("ekattest-agent: {chain}");
            }
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

/// The flags `main`'s signal thread sets.
struct Signals {
    control: Arc<Control>,
    /// The number of the signal that stopped the run (for the `--once` exit code).
    last: Arc<AtomicI32>,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP in this (and every later) thread and waits for them
    /// on a dedicated thread: SIGTERM/SIGINT set `stop`, SIGHUP sets `reload`; the daemon
    /// checks both between steps. No signal handler runs, so no unsafe code is needed.
    fn install() -> Self {
        use nix::sys::signal::{SigSet, Signal};
        let signals = Self {
            control: Arc::new(Control::default()),
            last: Arc::new(AtomicI32::new(0)),
        };
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.add(Signal::SIGHUP);
        if let Err(e) = set.thread_block() {
            log::warn!(
                "cannot block SIGTERM/SIGINT/SIGHUP ({e}); they will end the agent abruptly"
            );
            return signals;
        }
        let (control, last) = (Arc::clone(&signals.control), Arc::clone(&signals.last));
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(signal) = set.wait() {
                    if signal == Signal::SIGHUP {
                        log::info!("SIGHUP received: re-reading the configuration");
                        control.reload.store(true, Ordering::Relaxed);
                        continue;
                    }
                    log::info!("{signal} received, stopping");
                    last.store(signal as i32, Ordering::Relaxed);
                    control.stop.store(true, Ordering::Relaxed);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the signal thread ({e})");
        }
        signals
    }
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
            Short('V') | Long("version") => {
                return Ok(Some((Cli::Version, 0)));
            }
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
