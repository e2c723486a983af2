//! swtpm for a QEMU guest: `swtpm socket --tpm2 -t --ctrl type=unixio,path=SOCK` on a TPM
//! state that `swtpm_setup` provisioned ([`super::Device::provision`]), for QEMU's
//! `-tpmdev emulator` (which speaks swtpm's control protocol on that socket and passes TPM
//! commands over a channel it creates itself).
//!
//! QEMU sends INIT and the guest kernel sends Startup, so no `--flags` are given; `-t`
//! makes swtpm exit when QEMU closes the control channel. The process runs under the
//! harness watchdog ([`crate::process`]), so it never outlives this process. This module
//! never binds a TCP port and never touches a state folder other than the one given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{self, Watched};

/// How long swtpm gets to create its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One swtpm serving a QEMU guest through a unix control socket.
#[derive(Debug)]
pub struct VmTpm {
    process: Watched,
    ctrl: PathBuf,
}

impl VmTpm {
    /// Starts swtpm on the TPM state in `state` (a folder holding `tpm2-00.permall`), with
    /// its control socket `ctrl` and its output in `log`; waits until the socket exists.
    ///
    /// # Errors
    /// When swtpm is missing, cannot start, exits, or creates no socket in time (the
    /// message quotes its log).
    pub fn start(state: &Path, ctrl: &Path, log: &Path) -> process::Result<Self> {
        let swtpm = process::find_program("swtpm", "swtpm")?;
        let _ = std::fs::remove_file(ctrl);
        let args = [
            "socket".to_owned(),
            "--tpm2".to_owned(),
            "-t".to_owned(),
            "--ctrl".to_owned(),
            format!("type=unixio,path={}", ctrl.display()),
            "--tpmstate".to_owned(),
            format!("dir={}", state.display()),
        ];
        let mut process = Watched::spawn(&swtpm, &args, state, log)?;
        let started = Instant::now();
        loop {
            if ctrl.exists() {
                return Ok(Self {
                    process,
                    ctrl: ctrl.to_owned(),
                });
            }
            if let Some(status) = process.try_status()? {
                return Err(process::Error::NotReady {
                    what: format!("swtpm (control socket {})", ctrl.display()),
                    reason: format!("it exited ({status})"),
                    log: log.to_owned(),
                    output: process.tail(),
                });
            }
            if started.elapsed() > READY_TIMEOUT {
                process.stop();
                return Err(process::Error::NotReady {
                    what: format!("swtpm (control socket {})", ctrl.display()),
                    reason: format!("no socket after {READY_TIMEOUT:?}"),
                    log: log.to_owned(),
                    output: process.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The control socket (QEMU's `-chardev socket,path=`).
    #[must_use]
    pub fn ctrl_socket(&self) -> &Path {
        &self.ctrl
    }

    /// Whether swtpm still runs (it exits with `-t` when QEMU disconnects).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_status(), Ok(None))
    }

    /// Stops swtpm (SIGTERM, then SIGKILL); idempotent. Drop does the same.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}
