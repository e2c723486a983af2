//! One QEMU board of the VM fleet: its swtpm (unix control socket), the QEMU process with
//! `tpm-tis-device` and user-mode networking, and its serial console.
//!
//! The console goes to a file in the board's folder (`-serial file:console.log`) rather than
//! a pty read with the serialport crate: QEMU writes it directly, so the log survives a
//! crash of the harness, needs no reader thread per board and no extra crate, and it is
//! exactly the artefact the run keeps. The harness polls the file for the guest's
//! `EKATTEST-*` markers (see `init.sh`). Both processes run under the harness watchdog and
//! are stopped on drop; nothing here reads more than [`CONSOLE_MAX`] bytes of a console.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::boards::{Board, Qemu};
use crate::error::{Error, Result};
use crate::process::{self, Watched};
use crate::swtpm::vm::VmTpm;

/// Largest console log read back.
pub const CONSOLE_MAX: u64 = 4 * 1024 * 1024;

/// What the guest reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `EKATTEST-RESULT ok <spiffe id> uptime=<s> rss_kb=<kB>`.
    Ok {
        /// The SPIFFE ID the agent got.
        spiffe_id: String,
        /// Guest uptime at the marker, seconds.
        uptime: Option<f64>,
        /// Agent peak RSS seen by the guest's `/init`, kB.
        rss_kb: Option<u64>,
    },
    /// `EKATTEST-RESULT fail <reason>`.
    Fail(String),
}

/// Reads the guest's result marker from console text, if there is one.
#[must_use]
pub fn parse_result(console: &str) -> Option<Outcome> {
    // Only complete lines: QEMU may be in the middle of writing the last one.
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    let line = complete.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .split_once("EKATTEST-RESULT ")
            .map(|(_, r)| r)
    })?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    if let Some(rest) = line.strip_prefix("ok ") {
        let spiffe_id = rest.split_whitespace().next()?.to_owned();
        return Some(Outcome::Ok {
            spiffe_id,
            uptime: field("uptime").and_then(|v| v.parse().ok()),
            rss_kb: field("rss_kb").and_then(|v| v.parse().ok()),
        });
    }
    Some(Outcome::Fail(
        line.strip_prefix("fail ").unwrap_or(line).trim().to_owned(),
    ))
}

/// One board.
#[derive(Debug)]
pub struct Vm {
    /// Index in the fleet (0-based).
    pub index: usize,
    /// The board's folder.
    pub dir: PathBuf,
    /// The serial console log.
    pub console: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
    tpm: VmTpm,
    qemu: Watched,
}

/// What [`Vm::start`] needs.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The QEMU system emulator.
    pub emulator: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs (base + run archives).
    pub initrd: PathBuf,
}

impl Vm {
    /// Starts swtpm on `dir/tpm` (a provisioned state) and QEMU.
    ///
    /// # Errors
    /// When swtpm or QEMU cannot start.
    pub fn start(index: usize, dir: &Path, board: &Board, files: &BootFiles) -> Result<Self> {
        let q: &Qemu = board
            .qemu
            .as_ref()
            .ok_or_else(|| Error::Config(format!("board {} has no [qemu] section", board.name)))?;
        let state = dir.join("tpm");
        let ctrl = dir.join("swtpm-ctrl.sock");
        let tpm = VmTpm::start(&state, &ctrl, &dir.join("swtpm.log")).map_err(|e| Error::Boot {
            board: index,
            what: "swtpm",
            source: Box::new(e),
        })?;
        let console = dir.join("console.log");
        let _ = std::fs::remove_file(&console);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let append = format!(
            "console={} quiet panic=-1 fleet.id={index} fleet.time={now}",
            q.console
        );
        let args: Vec<String> = [
            "-M",
            &q.machine,
            "-cpu",
            &q.cpu,
            "-smp",
            &q.smp.to_string(),
            "-m",
            &q.memory_mib.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-kernel",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            files.kernel.display().to_string(),
            "-initrd".into(),
            files.initrd.display().to_string(),
            "-append".into(),
            append,
            "-serial".into(),
            format!("file:{}", console.display()),
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", tpm.ctrl_socket().display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            format!("{},tpmdev=tpm0", q.tpm_device),
            "-netdev".into(),
            "user,id=n0".into(),
            "-device".into(),
            format!("{},netdev=n0,romfile=", q.net_device),
        ])
        .collect();
        let qemu =
            Watched::spawn(&files.emulator, &args, dir, &dir.join("qemu.log")).map_err(|e| {
                Error::Boot {
                    board: index,
                    what: "QEMU",
                    source: Box::new(e),
                }
            })?;
        Ok(Self {
            index,
            dir: dir.to_owned(),
            console,
            started: Instant::now(),
            tpm,
            qemu,
        })
    }

    /// The console so far (at most [`CONSOLE_MAX`] bytes, lossy UTF-8).
    #[must_use]
    pub fn console_text(&self) -> String {
        use std::io::Read;
        let mut buf = Vec::new();
        if let Ok(f) = std::fs::File::open(&self.console) {
            let _ = f.take(CONSOLE_MAX).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Whether QEMU has exited (the guest powers off after its result).
    pub fn exited(&mut self) -> bool {
        !matches!(self.qemu.try_status(), Ok(None))
    }

    /// QEMU's own output (errors before the guest ran).
    #[must_use]
    pub fn qemu_log(&self) -> String {
        process::read_text(&self.dir.join("qemu.log"))
    }

    /// Stops QEMU and swtpm; idempotent.
    pub fn stop(&mut self) {
        self.qemu.stop();
        self.tpm.stop();
    }

    /// Time since QEMU started.
    #[must_use]
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_markers_parse() {
        let ok = "EKATTEST-STEP agent uptime=1.2\r\nEKATTEST-RESULT ok spiffe://td/agents/tpm/ab uptime=2.51 rss_kb=3120\r\n";
        assert_eq!(
            parse_result(ok),
            Some(Outcome::Ok {
                spiffe_id: "spiffe://td/agents/tpm/ab".into(),
                uptime: Some(2.51),
                rss_kb: Some(3120),
            })
        );
        assert_eq!(
            parse_result("x\nEKATTEST-RESULT fail no /dev/tpmrm0: tpm_tis did not bind\n"),
            Some(Outcome::Fail("no /dev/tpmrm0: tpm_tis did not bind".into()))
        );
        assert_eq!(parse_result("EKATTEST-STEP init\n"), None);
        // A marker still being written is not read yet.
        assert_eq!(
            parse_result("EKATTEST-RESULT ok spiffe://td/agents/tp"),
            None
        );
    }
}
