//! A private PostgreSQL server for tests and the fleet harness: Debian's binaries (the
//! newest of `/usr/lib/postgresql/*/bin`), a fresh cluster in a temporary directory,
//! listening on 127.0.0.1 on a free port and on a Unix socket inside that directory.
//!
//! The cluster has a superuser `postgres` (trusted over the Unix socket only, for
//! [`Postgres::psql`]) and a login role [`USER`] with a random password that owns the
//! database [`DATABASE`]: the server under test connects as an ordinary database owner over
//! TCP with a password, as in production. fsync is off: a test cluster need not survive a
//! power cut.
//!
//! PostgreSQL refuses to run as root, and tests run as root on CI: then the cluster
//! directory belongs to the `postgres` OS user (Debian's package creates it) and every
//! PostgreSQL program runs as that user through `setpriv`, which execs (so the watched pid
//! is the postmaster itself). As any other user, the programs run as that user.
//!
//! The server runs under the harness watchdog ([`crate::process`]) and is stopped on drop
//! (a fast shutdown: open connections are cut). This module never binds a fixed port,
//! never touches the system's clusters (Debian's package may run one on 5432) or their
//! configuration, and never changes the process's working directory or environment.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{self, Error, Result, Watched};
use crate::swtpm::tool;

/// The login role the tests connect as.
pub const USER: &str = "ekattest";
/// The database that role owns.
pub const DATABASE: &str = "ekattest";
/// Where Debian installs one directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The Debian package to install when the binaries are missing.
const PACKAGE: &str = "postgresql";

/// How long initdb and a psql command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to accept connections and queries.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Postgres::start`] retries with a fresh port when another process took ours.
const START_ATTEMPTS: u32 = 5;

/// One running PostgreSQL (see the module docs).
#[derive(Debug)]
pub struct Postgres {
    /// Stopped before the directory is deleted (field order).
    process: Option<Watched>,
    bin: PathBuf,
    base: PathBuf,
    /// The `postgres` OS user's uid and gid when we run as root.
    run_as: Option<(u32, u32)>,
    port: u16,
    password: String,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates a cluster in a temporary directory, starts it on a free loopback port, and
    /// creates [`USER`] (with a random password) and [`DATABASE`].
    ///
    /// # Errors
    /// [`Error::Missing`] naming the `postgresql` package when the binaries are not
    /// installed; [`Error::NotReady`] with the server's log if it does not come up;
    /// [`Error::Request`] if initdb or the set-up SQL fails.
    pub fn start() -> Result<Postgres> {
        let bin = find_bin()?;
        let (dir, base) = process::temp_dir("ekattest-postgres-")?;
        let owner = fs::metadata(&base)
            .map_err(|source| process::io("stat", &base, source))?
            .uid();
        let run_as = if owner == 0 {
            let ids = postgres_os_user()?;
            std::os::unix::fs::chown(&base, Some(ids.0), Some(ids.1))
                .map_err(|source| process::io("chown to the postgres user", &base, source))?;
            Some(ids)
        } else {
            None
        };
        let password = random_hex()?;
        let mut pg = Postgres {
            process: None,
            bin,
            base,
            run_as,
            port: 0,
            password,
            _dir: dir,
        };
        pg.initdb()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            pg.port = process::free_port()?;
            match pg.launch() {
                Ok(()) => {
                    pg.create_user_and_database()?;
                    return Ok(pg);
                }
                Err(e) if e.to_string().contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("no start attempt was made".into())))
    }

    /// `postgres://ekattest@127.0.0.1:PORT/ekattest` (the password is [`Postgres::password`]).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The password of [`USER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The server's log, for failure output.
    pub fn log(&self) -> String {
        process::read_text(&self.base.join("postgres.log"))
    }

    /// Runs `sql` with psql as the superuser on `database` over the Unix socket (stopping at
    /// the first error) and returns what it printed, unaligned and without headers
    /// (`-XAtq`: one line per row, `|` between columns).
    ///
    /// # Errors
    /// [`Error::Request`] with psql's output when a statement fails.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let socket = self.base.display().to_string();
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )
    }

    /// `program args...` from the PostgreSQL bin directory, as the postgres OS user when we
    /// are root; its output if it exits 0.
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("{program} {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .map_err(|source| process::io("run", &self.bin.join(program), source))?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = tool::wait_timeout(&mut child, TOOL_TIMEOUT)
            .map_err(|source| process::io("wait for", &self.bin.join(program), source))?;
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        match status {
            Some(st) if st.success() => Ok(String::from_utf8_lossy(&stdout).into_owned()),
            Some(st) => Err(Error::Request {
                what,
                detail: format!(
                    "{}: {}{}",
                    tool::describe(st),
                    tool::lossy(&stderr),
                    tool::lossy(&stdout)
                ),
            }),
            None => Err(Error::Request {
                what,
                detail: format!(
                    "killed after {} s: {}",
                    TOOL_TIMEOUT.as_secs(),
                    tool::lossy(&stderr)
                ),
            }),
        }
    }

    /// A command for `program` of the bin directory, under `setpriv` when we are root.
    fn command(&self, program: &str) -> Command {
        let (exe, prefix) = self.invocation(program);
        let mut cmd = Command::new(exe);
        cmd.args(prefix);
        cmd
    }

    /// What to execute for `program` of the bin directory, and the arguments before its
    /// own: `setpriv --reuid=UID --regid=GID --init-groups -- /usr/lib/.../PROGRAM` when we
    /// are root (setpriv execs: no process stays in between), else the program itself.
    fn invocation(&self, program: &str) -> (PathBuf, Vec<String>) {
        let path = self.bin.join(program);
        match self.run_as {
            Some((uid, gid)) => (
                PathBuf::from("setpriv"),
                vec![
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--init-groups".to_owned(),
                    "--".to_owned(),
                    path.display().to_string(),
                ],
            ),
            None => (path, Vec::new()),
        }
    }

    fn initdb(&self) -> Result<()> {
        let data = self.base.join("data").display().to_string();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        .map(|_| ())
        .map_err(|e| match (e, self.run_as) {
            (Error::Request { what, detail }, Some(_)) => Error::Request {
                what,
                detail: format!(
                    "{detail} (initdb runs as the postgres OS user: every directory above {} \
                     must be searchable by it; is TMPDIR under a private directory?)",
                    self.base.display()
                ),
            },
            (e, _) => e,
        })
    }

    fn launch(&mut self) -> Result<()> {
        let (program, mut args) = self.invocation("postgres");
        let program = if program.is_absolute() {
            program
        } else {
            process::find_program(&program.to_string_lossy(), "util-linux")?
        };
        let base = self.base.display();
        args.extend([
            "-D".to_owned(),
            format!("{base}/data"),
            "-p".to_owned(),
            self.port.to_string(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
            "-c".to_owned(),
            format!("unix_socket_directories={base}"),
            "-c".to_owned(),
            "fsync=off".to_owned(),
            "-c".to_owned(),
            "synchronous_commit=off".to_owned(),
            "-c".to_owned(),
            "full_page_writes=off".to_owned(),
        ]);
        let log = self.base.join("postgres.log");
        let mut p = Watched::spawn(&program, &args, &self.base, &log)?;
        let what = format!("PostgreSQL on 127.0.0.1:{}", self.port);
        p.wait_ports(&what, &[self.port], READY_TIMEOUT)?;
        self.process = Some(p);
        // Accepting TCP is not accepting queries: recovery may still run ("the database
        // system is starting up").
        let start = Instant::now();
        loop {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() >= READY_TIMEOUT => {
                    return Err(Error::NotReady {
                        what,
                        reason: e.to_string(),
                        log: log.clone(),
                        output: process::tail(&log),
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn create_user_and_database(&self) -> Result<()> {
        // The password is hex: nothing to quote.
        self.psql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", self.password),
        )?;
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        )?;
        Ok(())
    }

    /// Stops the server (a fast shutdown: connections are cut, nothing waits for clients).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            // SIGINT is PostgreSQL's fast shutdown; the watchdog's SIGTERM would wait for
            // every client to disconnect.
            if let Some(pid) = p.pid() {
                let _ = Command::new("kill")
                    .args(["-INT", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            p.stop();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest `/usr/lib/postgresql/VERSION/bin` that has `initdb`, `postgres` and `psql`.
fn find_bin() -> Result<PathBuf> {
    let missing = || Error::Missing {
        program: format!("{INSTALL_ROOT}/*/bin/postgres (PostgreSQL server binaries)"),
        package: PACKAGE.to_owned(),
    };
    let entries = fs::read_dir(INSTALL_ROOT).map_err(|_| missing())?;
    let mut best: Option<((u32, u32), PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = major_minor(&name) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !["initdb", "postgres", "psql"]
            .iter()
            .all(|p| bin.join(p).is_file())
        {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(missing)
}

/// `15` → (15, 0), `9.6` → (9, 6); anything else is not a version directory.
fn major_minor(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.split_once('.').unwrap_or((name, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The uid and gid of the `postgres` OS user (from /etc/passwd).
fn postgres_os_user() -> Result<(u32, u32)> {
    let passwd = Path::new("/etc/passwd");
    let text = fs::read_to_string(passwd).map_err(|source| process::io("read", passwd, source))?;
    passwd_ids(&text, "postgres").ok_or_else(|| Error::Missing {
        program: "the postgres OS user (PostgreSQL refuses to run as root)".into(),
        package: PACKAGE.to_owned(),
    })
}

/// `user`'s uid and gid in passwd(5) text.
fn passwd_ids(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// 16 random bytes as hex, from the OS.
fn random_hex() -> Result<String> {
    let path = Path::new("/dev/urandom");
    let mut buf = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| process::io("read", path, source))?;
    Ok(hex::encode(buf))
}

fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            // A read error only truncates the captured text; the exit status decides.
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_and_other_names_are_skipped() {
        assert_eq!(major_minor("15"), Some((15, 0)));
        assert_eq!(major_minor("9.6"), Some((9, 6)));
        assert!(
            major_minor("16") > major_minor("9.6"),
            "16 is newer than 9.6"
        );
        assert_eq!(major_minor("common"), None);
        assert_eq!(major_minor(""), None);
    }

    #[test]
    fn the_postgres_user_is_read_from_passwd_lines() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    postgresx:x:7:7::/:/bin/false\n\
                    postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_ids(text, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(text, "nobody"), None);
    }
}
