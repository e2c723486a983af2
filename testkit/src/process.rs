//! Long-running child processes of the harness (mosquitto, `ekattest-server`,
//! `ekattest-agent`): started under a watchdog, waited for, stopped and reaped.
//!
//! Every process runs in the foreground under a tiny `sh` watchdog that is our child (the
//! same scheme as the swtpm devices): the watchdog sends the program SIGTERM when our end of
//! its stdin pipe closes, so even a SIGKILLed test run leaves nothing behind. The program's
//! stdout and stderr go to one log file, which errors quote. This module never changes the
//! process's working directory or environment, never binds a fixed port and never leaves a
//! process running after [`Watched::stop`] or drop.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::swtpm::tool;

/// Result of the process helpers, the broker and the daemons.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while preparing, starting, querying or stopping a child process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool run (openssl, mosquitto_passwd) or a file operation failed.
    #[error(transparent)]
    Harness(#[from] crate::swtpm::Error),
    /// The program is not installed.
    #[error("{program} not found on PATH, /usr/sbin or /usr/local/sbin: apt-get install {package}")]
    Missing {
        /// The program.
        program: String,
        /// The Debian/Ubuntu package (or build step) that provides it.
        package: String,
    },
    /// A file system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What we tried to do.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The program exited or did not get ready in time.
    #[error("{what} did not become ready: {reason}; its output ({}): {output}", log.display())]
    NotReady {
        /// The program and its address.
        what: String,
        /// Why we gave up.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// The tail of the log file.
        output: String,
    },
    /// Waiting for something the program should do or print took too long.
    #[error("{what}: nothing within {} ms; its output ({}): {output}", waited.as_millis(), log.display())]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The log file.
        log: PathBuf,
        /// The tail of the log file.
        output: String,
    },
    /// A request to the program (HTTP) failed or got an unexpected answer.
    #[error("{what}: {detail}")]
    Request {
        /// The request.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The caller passed an unusable argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// How long a program gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The watchdog: runs `"$@"` in the background with its output already redirected by us,
/// writes its pid to `$WATCHDOG_PID`, SIGTERMs it when fd 3 (our pipe) reaches EOF, and
/// exits with the program's status (128 + signal if it was killed).
pub const WATCHDOG: &str = "exec 3<&0
\"$@\" </dev/null 3<&- &
p=$!
echo $p >\"$WATCHDOG_PID\"
( read _ <&3; kill $p 2>/dev/null ) &
w=$!
exec 3<&-
wait $p
rc=$?
kill $w 2>/dev/null
exit $rc";

/// A program running under the watchdog.
#[derive(Debug)]
pub struct Watched {
    /// The watchdog shell.
    child: Child,
    /// The program's pid file (written by the watchdog).
    pid_file: PathBuf,
    /// stdout + stderr of the program.
    log: PathBuf,
    /// Exit status, once reaped.
    status: Option<ExitStatus>,
}

/// Finds `program` on `PATH`, then in `/usr/sbin` and `/usr/local/sbin` (mosquitto lives in
/// sbin, which a non-root `PATH` often lacks). An argument with a `/` is taken as a path.
pub fn find_program(program: &str, package: &str) -> Result<PathBuf> {
    let missing = || Error::Missing {
        program: program.to_owned(),
        package: package.to_owned(),
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if p.is_file() { Ok(p) } else { Err(missing()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(missing())
}

impl Watched {
    /// Starts `program args...` in `cwd` with stdout and stderr appended to `log`.
    pub fn spawn<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        cwd: &Path,
        log: &Path,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| io("open", log, source))?;
        let err = out
            .try_clone()
            .map_err(|source| io("duplicate the handle of", log, source))?;
        let pid_file = log.with_extension("pid");
        let _ = fs::remove_file(&pid_file);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(program)
            .args(args)
            .env("WATCHDOG_PID", &pid_file)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        let child = tool::spawn(&mut cmd, "sh")?;
        Ok(Self {
            child,
            pid_file,
            log: log.to_owned(),
            status: None,
        })
    }

    /// The log file (stdout and stderr of the program).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if the program has exited (reaps it), `None` while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|source| io("poll", &self.log, source))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the program to exit by itself; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(Some(st));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (through the watchdog), up to [`STOP_TIMEOUT`] to exit, then SIGKILL to the
    /// program and the watchdog. Returns the exit status. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        drop(self.child.stdin.take());
        if let Ok(Some(st)) = self.wait_exit(STOP_TIMEOUT) {
            return Some(st);
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.status = tool::wait_timeout(&mut self.child, STOP_TIMEOUT)
            .ok()
            .flatten();
        self.status
    }

    /// SIGKILL to the program (no chance to clean up: a crash, as peers see it), then reaps
    /// the watchdog. Returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        drop(self.child.stdin.take());
        self.status = tool::wait_timeout(&mut self.child, STOP_TIMEOUT)
            .ok()
            .flatten();
        self.status
    }

    /// The program's pid, once the watchdog wrote it.
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// The log's tail, bounded, for error messages.
    pub fn tail(&self) -> String {
        tail(&self.log)
    }

    /// Waits until 127.0.0.1:`port` accepts TCP connections for every port in `ports`.
    /// Fails when the program exits first (exit code 127 = not installed) or after `timeout`.
    pub fn wait_ports(&mut self, what: &str, ports: &[u16], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_status()? {
                return Err(Error::NotReady {
                    what: what.to_owned(),
                    reason: format!("it exited ({})", tool::describe(st)),
                    log: self.log.clone(),
                    output: self.tail(),
                });
            }
            if ports.iter().all(|p| accepts(*p)) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                self.stop();
                return Err(Error::NotReady {
                    what: what.to_owned(),
                    reason: format!("no TCP connection within {} ms", timeout.as_millis()),
                    log: self.log.clone(),
                    output: self.tail(),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether 127.0.0.1:`port` accepts a TCP connection now.
pub fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A port that was free on 127.0.0.1 a moment ago (the OS picks it; the caller retries if
/// another process takes it first).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| io("bind a free port on", Path::new("127.0.0.1"), source))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| io("read the address of", Path::new("127.0.0.1"), source))
}

/// The last few KB of `log` (empty if unreadable).
pub fn tail(log: &Path) -> String {
    fs::read(log).map(|b| tool::lossy(&b)).unwrap_or_default()
}

/// Whole text of `log` (empty if unreadable).
pub fn read_text(log: &Path) -> String {
    fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A new temporary directory `PREFIX...` under the system's, and its absolute path.
///
/// # Errors
/// [`Error::Io`] if it cannot be created or made absolute.
pub fn temp_dir(prefix: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| io("create a directory in", &std::env::temp_dir(), source))?;
    let base = std::path::absolute(dir.path())
        .map_err(|source| io("make absolute", dir.path(), source))?;
    Ok((dir, base))
}

/// [`Error::Io`] for `op` on `path`.
pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to `path`.
pub fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| io("write", path, source))
}

/// Writes a password or key file with mode 0600 (the daemons refuse one that group or
/// others may read).
///
/// # Errors
/// The I/O error, naming the file.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    write(path, text)?;
    make_private(path)
}

/// Sets mode 0600 on a password or key file written by another tool (openssl).
///
/// # Errors
/// The I/O error, naming the file.
pub fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|source| io("chmod 600", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_the_package() {
        let err = find_program("ekattest-no-such-program", "ekattest-no-such-package")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("apt-get install ekattest-no-such-package"),
            "{err}"
        );
    }

    #[test]
    fn exit_status_and_output_come_through_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let sh = find_program("sh", "dash").unwrap();
        let mut w = Watched::spawn(&sh, &["-c", "echo hello; exit 7"], dir.path(), &log).unwrap();
        let st = w.wait_exit(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(st.code(), Some(7));
        assert!(read_text(&log).contains("hello"));
    }

    #[test]
    fn stop_terminates_a_running_program() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let sleep = find_program("sleep", "coreutils").unwrap();
        let mut w = Watched::spawn(&sleep, &["60"], dir.path(), &log).unwrap();
        let start = Instant::now();
        while w.pid().is_none() && start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        let pid = w.pid().unwrap();
        let st = w.stop().unwrap();
        assert!(!st.success());
        assert!(start.elapsed() < Duration::from_secs(10));
        // The program itself is gone, not only the watchdog.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
