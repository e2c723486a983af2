//! The `vm` command line: options, usage, the summary and the exit status. It never starts
//! processes itself ([`super::run`] does) and never exits the process.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{VmOptions, run};
use crate::error::{Error, Result};

/// Usage of `vm`.
pub const USAGE: &str = "\
usage: ekattest-fleet vm --board qemu-virt-aarch64|qemu-virt-aarch64-tis|qemu-virt-armv7
                         --count N [--cache DIR]
                         [--report FILE] [--keep] [--run-dir DIR] [--parallel P]
                         [--agent FILE] [--bin-dir DIR] [--boards DIR]
                         [--svid-key software|tpm]

  --board     a board profile with a [qemu] section (boards/NAME.toml); -tis: the agent
              drives QEMU's TIS registers itself (no tpm_tis.ko)
  --count     boards to boot (default 1)
  --cache     guest image cache: Debian packages, kernel, tpm_tis.ko, initramfs
              (default target/vm-cache); a second run downloads nothing
  --report    write the summary as JSON to FILE (also written to the run folder)
  --keep      keep the run folder (console, swtpm, server logs); kept anyway on failure
  --run-dir   use DIR as the run folder (kept)
  --parallel  boards booting at once (default two per core)
  --agent     the guest's agent binary (default: cross-built with build-agent)
  --bin-dir   folder of ekattest-server (default: beside this program)
  --svid-key  tpm: each agent creates its SVID key in its swtpm and has the AK certify it
              (default: the board profile's svid-key, else software)

Needs qemu-system-arm (qemu-system-aarch64 too), swtpm, swtpm-tools, mosquitto, the ARM
cross compilers, make, xz-utils and apt (bash .ci/install).";

/// Parses `vm` options. `Ok(None)` means `--help`.
///
/// # Errors
/// A usage message for an unknown option or a bad value.
pub fn parse(args: Vec<OsString>) -> Result<Option<VmOptions>> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut o = VmOptions::new("", 1);
    let path = |p: &mut lexopt::Parser| -> Result<PathBuf> {
        p.value()
            .map(PathBuf::from)
            .map_err(|e| Error::Usage(e.to_string()))
    };
    while let Some(arg) = p.next().map_err(|e| Error::Usage(e.to_string()))? {
        match arg {
            Long("board") => {
                o.board = p
                    .value()
                    .map_err(|e| Error::Usage(e.to_string()))?
                    .into_string()
                    .map_err(|v| Error::Usage(format!("--board: not UTF-8: {v:?}")))?;
            }
            Long("count") => {
                o.count = p
                    .value()
                    .and_then(|v| v.parse())
                    .map_err(|e| Error::Usage(format!("--count: {e}")))?;
            }
            Long("parallel") => {
                o.parallel = p
                    .value()
                    .and_then(|v| v.parse())
                    .map_err(|e| Error::Usage(format!("--parallel: {e}")))?;
            }
            Long("cache") => o.cache = path(&mut p)?,
            Long("report") => o.report = Some(path(&mut p)?),
            Long("run-dir") => o.run_dir = Some(path(&mut p)?),
            Long("agent") => o.agent = Some(path(&mut p)?),
            Long("bin-dir") => o.bin_dir = Some(path(&mut p)?),
            Long("boards") => o.boards_dir = path(&mut p)?,
            Long("svid-key") => {
                let kind = p
                    .value()
                    .map_err(|e| Error::Usage(e.to_string()))?
                    .into_string()
                    .map_err(|v| Error::Usage(format!("--svid-key: not UTF-8: {v:?}")))?;
                if !matches!(kind.as_str(), "software" | "tpm") {
                    return Err(Error::Usage(format!(
                        "--svid-key {kind:?}: expected software or tpm"
                    )));
                }
                o.svid_key = Some(kind);
            }
            Long("keep") => o.keep = true,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(Error::Usage(other.unexpected().to_string())),
        }
    }
    if o.board.is_empty() {
        return Err(Error::Usage("--board is required".into()));
    }
    if o.count == 0 || o.count > 256 {
        return Err(Error::Usage(format!("--count {}: expected 1-256", o.count)));
    }
    Ok(Some(o))
}

/// `ekattest-fleet vm ARGS`: exit 0 when every board attested, 1 otherwise, 2 on usage
/// errors, 130 when interrupted.
#[must_use]
pub fn cli(args: Vec<OsString>) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-fleet vm: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!(
                "ekattest-fleet vm: cannot handle signal {signal} ({e}); it will not clean up"
            );
        }
    }
    let result = run(&opts, &stop);
    if stop.load(Ordering::Relaxed) {
        eprintln!("ekattest-fleet vm: interrupted; every process stopped");
        return ExitCode::from(130);
    }
    match result {
        Ok(r) => {
            println!("{}", r.summary.table());
            if r.dir.is_dir() {
                println!("run folder: {}", r.dir.display());
            }
            if r.summary.attested == r.summary.devices {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ekattest-fleet vm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let o = parse(args("--board qemu-virt-armv7 --count 3 --cache /c --keep"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.board.as_str(), o.count, o.keep),
            ("qemu-virt-armv7", 3, true)
        );
        assert_eq!(o.cache, PathBuf::from("/c"));
        assert!(
            parse(args("--count 2"))
                .unwrap_err()
                .to_string()
                .contains("--board")
        );
        assert!(parse(args("--board x --count 0")).is_err());
        assert!(parse(args("--board x --bogus")).is_err());
        assert!(parse(args("--help")).unwrap().is_none());
    }
}
