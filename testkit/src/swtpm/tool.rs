//! Running the external tools (swtpm, swtpm_setup, swtpm_localca, tpm2-tools, openssl).
//!
//! Every invocation goes through [`run`]: it checks the exit status, captures stdout and
//! stderr, enforces a timeout (a tpm2-tools client blocks forever while another client holds
//! the swtpm socket), and turns a missing binary into an error that says what to install.
//! Nothing here changes the process-wide working directory or environment, so it is safe to
//! call from many threads at once.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Error;

/// `[&OsStr; N]` from strings, `String`s and paths, for [`run`] and `Device::tpm2`.
macro_rules! os_args {
    ($($a:expr),* $(,)?) => {
        [$(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$a)),*]
    };
}
pub(crate) use os_args;

/// How long a tpm2-tools or openssl command may run before it is killed.
pub(crate) const SHORT: Duration = Duration::from_secs(20);
/// How long swtpm_setup may run (RSA key generation on a loaded 2-core machine).
pub(crate) const LONG: Duration = Duration::from_secs(120);

/// Captured output of a successful command.
pub(crate) struct Output {
    pub(crate) stdout: Vec<u8>,
}

/// The Debian/Ubuntu package that ships `tool`, for the "not found" message.
pub(crate) fn package_of(tool: &str) -> &'static str {
    match tool {
        "swtpm" => "swtpm",
        "openssl" => "openssl",
        t if t.starts_with("swtpm") => "swtpm-tools",
        t if t.starts_with("tpm2_") => "tpm2-tools",
        _ => "the package that provides it",
    }
}

/// Renders a command line for error messages (arguments joined by spaces).
pub(crate) fn render(program: &str, args: &[&OsStr]) -> String {
    let mut s = String::from(program);
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Spawns `program` (found on `PATH`), mapping "not found" to [`Error::ToolMissing`].
pub(crate) fn spawn(cmd: &mut Command, program: &'static str) -> Result<Child, Error> {
    cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::ToolMissing {
                tool: program,
                package: package_of(program),
            }
        } else {
            Error::Spawn {
                tool: program,
                source,
            }
        }
    })
}

/// Runs `program args...` with stdin closed, waits at most `timeout`, and returns its output
/// if it exited with status 0.
///
/// # Errors
/// [`Error::ToolMissing`] if the binary is not installed, [`Error::ToolFailed`] on a non-zero
/// exit (with stderr), [`Error::ToolTimeout`] if it was killed after `timeout`.
pub(crate) fn run<S: AsRef<OsStr>>(
    program: &'static str,
    args: &[S],
    timeout: Duration,
) -> Result<Output, Error> {
    run_in(program, args, None, timeout)
}

/// Like [`run`], with the child's working directory set to `cwd` (never our own).
pub(crate) fn run_in<S: AsRef<OsStr>>(
    program: &'static str,
    args: &[S],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Output, Error> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let command = render(program, &args);
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = spawn(&mut cmd, program)?;
    // Drain both pipes on their own threads so a chatty tool cannot block on a full pipe
    // while we poll for its exit.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_timeout(&mut child, timeout);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Ok(Some(st)) if st.success() => Ok(Output { stdout }),
        Ok(Some(st)) => Err(Error::ToolFailed {
            command,
            status: describe(st),
            stderr: lossy(&stderr),
        }),
        Ok(None) => Err(Error::ToolTimeout {
            command,
            seconds: timeout.as_secs(),
            stderr: lossy(&stderr),
        }),
        Err(source) => Err(Error::Io {
            op: "wait for",
            path: command.into(),
            source,
        }),
    }
}

/// Waits for `child` up to `timeout`; kills and reaps it if it is still running then.
/// Returns `Ok(None)` on timeout.
pub(crate) fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if start.elapsed() >= timeout {
            // Kill can fail only if it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            // A read error just truncates the captured text; the exit status still decides.
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Exit status as text: "exit code 1" or "signal 9".
pub(crate) fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Tool output as trimmed text, bounded so a runaway tool cannot flood an error message.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    const MAX: usize = 4000;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut cut = text.len() - MAX;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &text[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = match run("swtpm_definitely_not_installed", &["--help"], SHORT) {
            Err(e) => e,
            Ok(_) => panic!("a non-existent binary ran"),
        };
        let text = err.to_string();
        assert!(
            text.contains("swtpm_definitely_not_installed not found: apt-get install swtpm-tools"),
            "{text}"
        );
    }

    #[test]
    fn failure_reports_command_status_and_stderr() {
        let err = match run("sh", &["-c", "echo boom >&2; exit 3"], SHORT) {
            Err(e) => e,
            Ok(_) => panic!("exit 3 reported as success"),
        };
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("exit code 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn timeout_kills_the_child() {
        let start = Instant::now();
        let res = run("sleep", &["30"], Duration::from_millis(200));
        assert!(matches!(res, Err(Error::ToolTimeout { .. })));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn lossy_bounds_long_output() {
        let long = "x".repeat(10_000);
        assert!(lossy(long.as_bytes()).len() <= 4003);
    }
}
