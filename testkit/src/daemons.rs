//! The `ekattest-server` and `ekattest-agent` binaries as child processes with generated
//! config files, for end-to-end tests and the fleet harness.
//!
//! [`ServerSpec`] and [`AgentSpec`] render the daemons' YAML config files (the keys of
//! `deploy/server.yaml` and `deploy/agent.yaml`, only those that are set); [`ServerProcess`]
//! and [`AgentProcess`] run the binaries (paths from the caller, e.g.
//! `env!("CARGO_BIN_EXE_ekattest-server")`) under the harness watchdog, with stdout and
//! stderr in one log file, and read their logs and the server's `/metrics`.
//!
//! This module never binds a fixed port (an unset metrics address becomes a free loopback
//! port), never leaves a daemon running after drop, and never changes the process's working
//! directory or environment.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{self, Error, Result, Watched};

/// How long the server may take to come up (metrics port open, or its start-up log line).
const SERVER_READY: Duration = Duration::from_secs(30);
/// The server's start-up log message (brief C / `ekattest-server`).
pub const SERVER_STARTED: &str = "ekattest-server started";
/// Largest `/metrics` response read.
const METRICS_MAX: u64 = 1024 * 1024;

/// A running `ekattest-server` (stopped on drop).
#[derive(Debug)]
pub struct ServerProcess {
    process: Option<Watched>,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    metrics: Option<String>,
}

impl ServerProcess {
    /// Writes `dir/server.yaml` from `spec` (an unset metrics address becomes a free
    /// loopback port), starts `bin --config dir/server.yaml` with its output in
    /// `dir/server.log`, and waits until it is up: the metrics port accepts connections, or
    /// (metrics disabled) the log has [`SERVER_STARTED`].
    ///
    /// # Errors
    /// [`Error::Missing`] if `bin` does not exist, [`Error::NotReady`] with the log if the
    /// server exits or does not come up within 30 s.
    pub fn start(bin: &Path, spec: &ServerSpec, dir: &Path) -> Result<Self> {
        let bin = process::find_program(&bin.to_string_lossy(), "cargo build -p ekattest-server")?;
        let mut spec = spec.clone();
        if spec.metrics_address.is_none() {
            spec.metrics_address = Some(format!("127.0.0.1:{}", process::free_port()?));
        }
        if spec.state_dir.is_none() {
            spec.state_dir = Some(dir.to_owned());
        }
        let metrics = spec.metrics_address.clone().filter(|a| !a.is_empty());
        let config = dir.join("server.yaml");
        process::write(&config, &spec.to_yaml()?)?;
        let mut server = Self {
            process: None,
            bin,
            config,
            log: dir.join("server.log"),
            dir: dir.to_owned(),
            metrics,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let args = [
            std::ffi::OsString::from("--config"),
            self.config.clone().into_os_string(),
        ];
        let mut p = Watched::spawn(&self.bin, &args, &self.dir, &self.log)?;
        let what = format!("ekattest-server ({})", self.config.display());
        let start = Instant::now();
        loop {
            if let Some(st) = p.try_status()? {
                return Err(Error::NotReady {
                    what,
                    reason: format!("it exited ({})", crate::swtpm::tool::describe(st)),
                    log: self.log.clone(),
                    output: p.tail(),
                });
            }
            let up = match &self.metrics {
                Some(addr) => addr
                    .parse::<SocketAddr>()
                    .map(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
                    .unwrap_or(false),
                None => process::read_text(&self.log).contains(SERVER_STARTED),
            };
            if up {
                self.process = Some(p);
                return Ok(());
            }
            if start.elapsed() >= SERVER_READY {
                p.stop();
                return Err(Error::NotReady {
                    what,
                    reason: format!("not up within {} s", SERVER_READY.as_secs()),
                    log: self.log.clone(),
                    output: process::tail(&self.log),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again with the same config and log file (after [`Self::stop`] or
    /// [`Self::kill`]); a no-op while it runs.
    ///
    /// # Errors
    /// As [`ServerProcess::start`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.try_status(), Ok(None)))
    }

    /// The config file written.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The server's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Watched::pid)
    }

    /// The whole log (stdout and stderr).
    pub fn log(&self) -> String {
        process::read_text(&self.log)
    }

    /// The log's JSON lines, parsed (other lines are skipped).
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        json_lines(&self.log())
    }

    /// Waits until the log has a JSON line whose `msg` is `msg` (and whose `agentId` is
    /// `agent`, if given); returns that line.
    ///
    /// # Errors
    /// [`Error::Timeout`] with the log's tail.
    pub fn wait_for_msg(
        &self,
        msg: &str,
        agent: Option<&str>,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let what = match agent {
            Some(a) => format!("server log line {msg:?} for agent {a}"),
            None => format!("server log line {msg:?}"),
        };
        poll(&what, &self.log, timeout, || {
            self.log_json().into_iter().find(|v| {
                v.get("msg").and_then(|m| m.as_str()) == Some(msg)
                    && agent.is_none_or(|a| v.get("agentId").and_then(|x| x.as_str()) == Some(a))
            })
        })
    }

    /// Waits until the log contains `needle` anywhere.
    ///
    /// # Errors
    /// [`Error::Timeout`] with the log's tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        poll(
            &format!("server log text {needle:?}"),
            &self.log,
            timeout,
            || self.log().contains(needle).then_some(()),
        )
    }

    /// The metrics address (`HOST:PORT`), unless disabled.
    pub fn metrics_address(&self) -> Option<&str> {
        self.metrics.as_deref()
    }

    /// `GET /metrics`: the Prometheus text.
    ///
    /// # Errors
    /// [`Error::Request`] when metrics are disabled, the connection fails, or the status is
    /// not 200.
    pub fn metrics(&self) -> Result<String> {
        let addr = self.metrics.as_deref().ok_or_else(|| Error::Request {
            what: "GET /metrics".into(),
            detail: "the server's metrics endpoint is disabled".into(),
        })?;
        http_get(addr, "/metrics")
    }

    /// `GET path` on the metrics address (`/healthz`, `/readyz`): the status code and the
    /// body, whatever the status.
    ///
    /// # Errors
    /// [`Error::Request`] when metrics are disabled or the exchange fails.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.metrics.as_deref().ok_or_else(|| Error::Request {
            what: format!("GET {path}"),
            detail: "the server's metrics endpoint is disabled".into(),
        })?;
        http_exchange(addr, path)
    }

    /// SIGTERM and wait (SIGKILL after a timeout); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.take().and_then(|mut p| p.stop())
    }

    /// SIGKILL at once (a crash); returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.process.take().and_then(|mut p| p.kill())
    }
}

/// A running (or exited) `ekattest-agent` (stopped on drop).
#[derive(Debug)]
pub struct AgentProcess {
    process: Watched,
    config: PathBuf,
    log: PathBuf,
}

/// How an agent run ended.
#[derive(Debug, Clone)]
pub struct AgentExit {
    /// The exit status.
    pub status: ExitStatus,
    /// Its whole log (stdout and stderr).
    pub log: String,
}

impl AgentExit {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, if it exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl AgentProcess {
    /// Writes `dir/agent.yaml` from `spec` and starts `bin run --config dir/agent.yaml`
    /// (plus `--once` if `once`, plus `spec.extra_args`) with its output in `dir/agent.log`.
    /// Returns at once.
    ///
    /// # Errors
    /// [`Error::Missing`] if `bin` does not exist; file errors.
    pub fn spawn(bin: &Path, spec: &AgentSpec, dir: &Path, once: bool) -> Result<Self> {
        let bin = process::find_program(&bin.to_string_lossy(), "cargo build -p ekattest-agent")?;
        let config = dir.join("agent.yaml");
        process::write(&config, &spec.to_yaml()?)?;
        let log = dir.join("agent.log");
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--config".into(),
            config.clone().into_os_string(),
        ];
        if once {
            args.push("--once".into());
        }
        args.extend(spec.extra_args.iter().map(Into::into));
        let process = Watched::spawn(&bin, &args, dir, &log)?;
        Ok(Self {
            process,
            config,
            log,
        })
    }

    /// Waits up to `timeout` for the agent to exit (`--once`).
    ///
    /// # Errors
    /// [`Error::Timeout`] with the log's tail if it still runs then (it is stopped).
    pub fn wait(&mut self, timeout: Duration) -> Result<AgentExit> {
        match self.process.wait_exit(timeout)? {
            Some(status) => Ok(AgentExit {
                status,
                log: self.log(),
            }),
            None => {
                self.process.stop();
                Err(Error::Timeout {
                    what: "ekattest-agent to exit".into(),
                    waited: timeout,
                    log: self.log.clone(),
                    output: process::tail(&self.log),
                })
            }
        }
    }

    /// Whether the agent is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_status(), Ok(None))
    }

    /// The config file written.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The whole log (stdout and stderr).
    pub fn log(&self) -> String {
        process::read_text(self.process.log_path())
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Errors
    /// [`Error::Timeout`] with the log's tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        poll(
            &format!("agent log text {needle:?}"),
            &self.log,
            timeout,
            || self.log().contains(needle).then_some(()),
        )
    }

    /// SIGTERM and wait (SIGKILL after a timeout); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop()
    }

    /// SIGKILL at once; returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.process.kill()
    }
}

/// The value of the sample `series` (name with labels exactly as the server writes them,
/// e.g. `attestation_signer_proof{attestor_type="tpm_ek",outcome="success"}`) in
/// Prometheus text; `None` if absent or not a number.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

/// The JSON objects among `text`'s lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`); the body of a 200 response.
fn http_get(addr: &str, path: &str) -> Result<String> {
    match http_exchange(addr, path)? {
        (200, body) => Ok(body),
        (status, _) => Err(Error::Request {
            what: format!("GET http://{addr}{path}"),
            detail: format!("status {status}"),
        }),
    }
}

/// One HTTP/1.1 GET: the status code and the body.
fn http_exchange(addr: &str, path: &str) -> Result<(u16, String)> {
    let what = format!("GET http://{addr}{path}");
    let fail = |detail: String| Error::Request {
        what: what.clone(),
        detail,
    };
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| fail(format!("not an IP:PORT address: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    let mut raw = Vec::new();
    s.take(METRICS_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| fail(format!("cannot read the response: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("no end of headers in {} bytes", raw.len())))?;
    let line = head.lines().next().unwrap_or_default();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("status line {line:?}")))?;
    Ok((status, body.to_owned()))
}

/// Polls `found` every 50 ms until it returns `Some` or `timeout` passes.
fn poll<T>(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut found: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = found() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: timeout,
                log: log.to_owned(),
                output: process::tail(log),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

mod spec;

pub use spec::{AgentSpec, ServerSpec, duration};

#[cfg(test)]
mod tests;
