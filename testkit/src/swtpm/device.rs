//! One swtpm device: provisioned with swtpm_setup, running on free loopback ports.
//!
//! A [`Device`] owns its swtpm process (in the foreground, not `-d`, under a tiny `sh`
//! watchdog that is our child: it kills swtpm when our end of its stdin pipe closes, so
//! even a SIGKILLed test run leaves nothing behind) and a temporary directory (`state/`
//! with the TPM state, pid file and swtpm's output, `certs/` with the EK certificates,
//! `work/` for tool scratch files). Dropping it stops swtpm (`swtpm_ioctl -s`, then the
//! watchdog's SIGTERM, then SIGKILL) and deletes the directory. It must never leave a
//! process behind, also when provisioning fails halfway, and never use relative paths
//! (swtpm puts the TPM into failure mode with a relative state directory once it has
//! changed directory).

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::ca::{mkdir, read, temp_dir};
use super::tool::os_args;
use super::{Ca, Error, Result, p256, ports, tool};

/// How long swtpm may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often we retry with fresh ports when another process took ours first.
const START_ATTEMPTS: u32 = 8;
/// How long a graceful shutdown may take before swtpm is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`Device::provision`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionOptions {
    /// RSA EK size: 2048 (L-1 EK, certificate at 0x01C00002) or 3072 (certificate at
    /// 0x01C0001C). swtpm_setup always adds the P-384 EK (certificate at 0x01C00016).
    pub rsa_keysize: u16,
    /// Also create the L-2 P-256 EK and put a certificate for it at NV 0x01C0000A.
    pub p256_ek_cert: bool,
}

impl Default for ProvisionOptions {
    /// RSA-2048 without the P-256 certificate: what plain `swtpm_setup` makes.
    fn default() -> Self {
        Self {
            rsa_keysize: 2048,
            p256_ek_cert: false,
        }
    }
}

/// The EKs a provisioned swtpm can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EkKind {
    /// RSA-2048, template L-1 (SHA-256, AES-128), persistent at 0x81010001.
    Rsa2048,
    /// RSA-3072, template H-6 (SHA-384, AES-256), persistent at 0x8101001C.
    Rsa3072,
    /// NIST P-256, template L-2 (SHA-256, AES-128), not persisted (CreatePrimary it).
    P256,
    /// NIST P-384, template H-3 style (SHA-384, AES-256), persistent at 0x81010016.
    P384,
}

impl EkKind {
    /// Every kind, in NV-index order of their certificates' usual listing.
    pub const ALL: [EkKind; 4] = [EkKind::Rsa2048, EkKind::Rsa3072, EkKind::P256, EkKind::P384];

    /// NV index of the EK certificate (TCG EK Credential Profile 2.0, section 2.2.1.4).
    pub fn nv_index(self) -> u32 {
        match self {
            EkKind::Rsa2048 => 0x01C0_0002,
            EkKind::P256 => 0x01C0_000A,
            EkKind::P384 => 0x01C0_0016,
            EkKind::Rsa3072 => 0x01C0_001C,
        }
    }

    /// Persistent handle where swtpm_setup stores this EK, if it does.
    pub fn persistent_handle(self) -> Option<u32> {
        match self {
            EkKind::Rsa2048 => Some(0x8101_0001),
            EkKind::P384 => Some(0x8101_0016),
            EkKind::Rsa3072 => Some(0x8101_001C),
            EkKind::P256 => None,
        }
    }

    /// File name of the certificate in [`Device::certs_dir`] (the names swtpm_setup's
    /// `--write-ek-cert-files` uses; `ek-secp256r1.crt` is ours). DER.
    pub fn cert_file_name(self) -> &'static str {
        match self {
            EkKind::Rsa2048 => "ek-rsa2048.crt",
            EkKind::Rsa3072 => "ek-rsa3072.crt",
            EkKind::P256 => "ek-secp256r1.crt",
            EkKind::P384 => "ek-secp384r1.crt",
        }
    }
}

impl fmt::Display for EkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EkKind::Rsa2048 => "RSA-2048",
            EkKind::Rsa3072 => "RSA-3072",
            EkKind::P256 => "P-256",
            EkKind::P384 => "P-384",
        })
    }
}

/// One running swtpm on `127.0.0.1`, stopped and deleted on drop.
///
/// swtpm serves one client at a time: while a test holds a connection (the agent's
/// transport), tpm2-tools calls on the same device block until it disconnects (and time out
/// after 20 s).
#[derive(Debug)]
pub struct Device {
    /// The watchdog shell (see `spawn_swtpm`); swtpm is its child.
    child: Child,
    /// swtpm's own pid, from its pid file.
    pid: u32,
    port: u16,
    state: PathBuf,
    certs: PathBuf,
    work: PathBuf,
    log: PathBuf,
    // Only held for its Drop; last, so it is deleted after Drop::drop has stopped swtpm.
    _dir: tempfile::TempDir,
}

impl Device {
    /// Provisions a new TPM state with `swtpm_setup` and the CA's configuration (EK
    /// certificates for the RSA and P-384 EKs, a platform certificate), starts swtpm on it,
    /// and with `opts.p256_ek_cert` adds the P-256 EK certificate at 0x01C0000A.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an RSA size other than 2048/3072; tool, file and startup errors
    /// otherwise. On error nothing keeps running.
    pub fn provision(ca: &Ca, opts: &ProvisionOptions) -> Result<Device> {
        if !matches!(opts.rsa_keysize, 2048 | 3072) {
            return Err(Error::Invalid(format!(
                "rsa_keysize {} (swtpm supports 2048 and 3072)",
                opts.rsa_keysize
            )));
        }
        let (dir, base) = temp_dir("ekattest-swtpm.")?;
        let state = base.join("state");
        let certs = base.join("certs");
        mkdir(&state)?;
        mkdir(&certs)?;
        let keysize = opts.rsa_keysize.to_string();
        let conf = ca.setup_conf();
        let mut args: Vec<&OsStr> = os_args![
            "--tpm2",
            "--tpm-state",
            state,
            "--create-ek-cert",
            "--create-platform-cert",
            "--config",
            conf,
            "--write-ek-cert-files",
            certs,
            "--overwrite",
        ]
        .to_vec();
        if opts.rsa_keysize != 2048 {
            args.extend(os_args!["--rsa-keysize", keysize]);
        }
        tool::run("swtpm_setup", &args, tool::LONG)?;
        let device = Device::start(dir, base)?;
        if opts.p256_ek_cert {
            // On error `device` is dropped here, which stops swtpm.
            p256::add_ek_cert(&device, ca)?;
        }
        Ok(device)
    }

    /// Starts swtpm on a copy of an existing TPM state file (`tpm2-00.permall`).
    /// [`Device::ek_cert_der`] then reads certificates from NV.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be copied; startup errors otherwise.
    pub fn from_state_file(permall: &Path) -> Result<Device> {
        let (dir, base) = temp_dir("ekattest-swtpm.")?;
        let state = base.join("state");
        mkdir(&state)?;
        mkdir(&base.join("certs"))?;
        let target = state.join("tpm2-00.permall");
        fs::copy(permall, &target).map_err(|source| Error::Io {
            op: "copy TPM state from",
            path: permall.to_owned(),
            source,
        })?;
        Device::start(dir, base)
    }

    fn start(dir: tempfile::TempDir, base: PathBuf) -> Result<Device> {
        let state = base.join("state");
        let work = base.join("work");
        mkdir(&work)?;
        let log = state.join("swtpm.out");
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = ports::free_pair()?;
            let child = spawn_swtpm(&state, &log, port)?;
            match wait_ready(child, port, &state.join("swtpm.pid"), &log) {
                Ok((child, pid)) => {
                    return Ok(Device {
                        child,
                        pid,
                        port,
                        certs: base.join("certs"),
                        state,
                        work,
                        log,
                        _dir: dir,
                    });
                }
                Err(Retry::Port(e)) => last = Some(e),
                Err(Retry::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::NoFreePorts {
            attempts: START_ATTEMPTS,
        }))
    }

    /// The agent's `--tpm` SPEC: `swtpm:127.0.0.1:PORT`.
    pub fn spec(&self) -> String {
        format!("swtpm:127.0.0.1:{}", self.port)
    }

    /// The tpm2-tools TCTI (`-T`): `swtpm:host=127.0.0.1,port=PORT` (the control port is
    /// PORT+1).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port on 127.0.0.1 (raw TPM command bytes).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The control port (`swtpm_ioctl --tcp 127.0.0.1:PORT`): [`Device::port`] + 1.
    pub fn ctrl_port(&self) -> u16 {
        self.port.saturating_add(1)
    }

    /// The command port as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Process id of the running swtpm (from its `--pid` file).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The TPM state directory (`tpm2-00.permall`, `swtpm.pid`, `swtpm.out`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Directory with the EK certificates written during provisioning
    /// ([`EkKind::cert_file_name`]).
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// Scratch directory for tool files of this device (deleted with it).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// The file holding swtpm's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The DER EK certificate of `kind`: the file written at provisioning if there is one,
    /// otherwise read from its NV index with tpm2_nvread (devices made with
    /// [`Device::from_state_file`]).
    ///
    /// # Errors
    /// [`Error::NoEkCert`] if the device has no such certificate; tool errors otherwise.
    pub fn ek_cert_der(&self, kind: EkKind) -> Result<Vec<u8>> {
        let file = self.certs.join(kind.cert_file_name());
        if file.is_file() {
            let bytes = read(&file)?;
            if bytes.starts_with(b"-----BEGIN") {
                return pem_to_der(&file);
            }
            return Ok(bytes);
        }
        if !self.nv_indices()?.contains(&kind.nv_index()) {
            return Err(Error::NoEkCert { kind });
        }
        let out = self.work.join(format!("nv-{:08x}.der", kind.nv_index()));
        let index = format!("0x{:08X}", kind.nv_index());
        self.tpm2("tpm2_nvread", &os_args!["-C", index, "-o", out, index])?;
        read(&out)
    }

    /// The defined NV indices, as `tpm2_nvreadpublic` lists them.
    ///
    /// # Errors
    /// Tool errors, or [`Error::Unexpected`] if its output has no parsable index.
    pub fn nv_indices(&self) -> Result<Vec<u32>> {
        let out = self.tpm2::<&str>("tpm2_nvreadpublic", &[])?;
        let text = String::from_utf8_lossy(&out);
        Ok(text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.trim().strip_suffix(':'))
            .filter_map(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .collect())
    }

    /// The EK's TPM2B_PUBLIC as the TPM reports it: `tpm2_readpublic` of the persistent
    /// handle, or for [`EkKind::P256`] `tpm2_createek -G ecc` (default L-2 template), with
    /// transient objects flushed afterwards.
    ///
    /// # Errors
    /// Tool errors, e.g. when the device has no such EK.
    pub fn ek_public(&self, kind: EkKind) -> Result<Vec<u8>> {
        read(&self.ek_public_file(kind)?)
    }

    /// Writes the EK's TPM2B_PUBLIC (see [`Device::ek_public`]) to a file in the work
    /// directory and returns its path (for `tpm2_makecredential -u`).
    ///
    /// # Errors
    /// Tool errors, e.g. when the device has no such EK.
    pub fn ek_public_file(&self, kind: EkKind) -> Result<PathBuf> {
        let out = self.work.join(format!("ek-{kind}.pub"));
        match kind.persistent_handle() {
            Some(h) => {
                let handle = format!("0x{h:08X}");
                self.tpm2("tpm2_readpublic", &os_args!["-c", handle, "-o", out])?;
            }
            None => {
                let ctx = self.work.join("ek-p256.ctx");
                let created = self.tpm2(
                    "tpm2_createek",
                    &os_args!["-G", "ecc", "-c", ctx, "-u", out],
                );
                let flushed = self.flush_transient();
                created?;
                flushed?;
            }
        }
        Ok(out)
    }

    /// The tpm2-tools `-c` argument for the EK of `kind`: its persistent handle
    /// (`0x81010001`), or for [`EkKind::P256`] the path of a saved context made with
    /// `tpm2_createek -G ecc` (reloaded by each tool call; transient objects are flushed).
    ///
    /// # Errors
    /// Tool errors while creating the P-256 EK.
    pub fn ek_context(&self, kind: EkKind) -> Result<String> {
        match kind.persistent_handle() {
            Some(h) => Ok(format!("0x{h:08X}")),
            None => {
                let ctx = self.work.join("ek-p256.ctx");
                if !ctx.is_file() {
                    self.ek_public_file(kind)?;
                }
                Ok(ctx.display().to_string())
            }
        }
    }

    /// Flushes every transient object (`tpm2_flushcontext -t`): libtpms has 3 slots and
    /// tpm2-tools without a resource manager leaves its objects loaded.
    ///
    /// # Errors
    /// Tool errors.
    pub fn flush_transient(&self) -> Result<()> {
        self.tpm2("tpm2_flushcontext", &["-t"]).map(|_| ())
    }

    /// Runs a tpm2-tools command against this device (`-T` TCTI prepended, working directory
    /// = [`Device::work_dir`]) and returns its stdout.
    ///
    /// # Errors
    /// [`Error::ToolMissing`], [`Error::ToolFailed`] (with stderr), [`Error::ToolTimeout`].
    pub fn tpm2<S: AsRef<OsStr>>(&self, program: &'static str, args: &[S]) -> Result<Vec<u8>> {
        let tcti = self.tcti();
        let mut all: Vec<&OsStr> = os_args!["-T", tcti].to_vec();
        all.extend(args.iter().map(AsRef::as_ref));
        tool::run_in(program, &all, Some(&self.work), tool::SHORT).map(|o| o.stdout)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let ctrl = format!("127.0.0.1:{}", self.ctrl_port());
        // Graceful first so swtpm writes its state; the watchdog shell exits with it.
        let _ = tool::run("swtpm_ioctl", &["--tcp", &ctrl, "-s"], STOP_TIMEOUT);
        // Closing the pipe makes the watchdog SIGTERM swtpm if it is still running.
        drop(self.child.stdin.take());
        // Last resort: SIGKILL the shell (wait_timeout kills and reaps after the timeout).
        let _ = tool::wait_timeout(&mut self.child, STOP_TIMEOUT);
    }
}

enum Retry {
    /// Our ports were taken in the meantime: try others.
    Port(Error),
    /// Anything else.
    Fatal(Error),
}

/// Starts swtpm in the foreground under a small `sh` watchdog whose stdin is a pipe from us:
/// when that pipe closes (Drop, or this process dying even by SIGKILL) the watchdog sends
/// swtpm SIGTERM, so a crashed or killed test run leaves no swtpm behind. The shell exits
/// with swtpm's status; swtpm's stdout and stderr go to `log`.
fn spawn_swtpm(state: &Path, log: &Path, port: u16) -> Result<Child> {
    let out = File::create(log).map_err(|source| Error::Io {
        op: "create",
        path: log.to_owned(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| Error::Io {
        op: "duplicate the handle of",
        path: log.to_owned(),
        source,
    })?;
    let ctrl = port.saturating_add(1);
    let pid_file = state.join("swtpm.pid");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        crate::process::WATCHDOG,
        "watchdog",
        "swtpm",
        "socket",
    ])
    .args(["--tpm2", "--tpmstate"])
    .arg(format!("dir={}", state.display()))
    .arg("--server")
    .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
    .arg("--ctrl")
    .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
    .args(["--flags", "not-need-init,startup-clear", "--pid"])
    .arg(format!("file={}", pid_file.display()))
    // No -d: swtpm stays in our process tree, so Drop can stop and reap it.
    .current_dir(state)
    .env("WATCHDOG_PID", state.join("watchdog-child.pid"))
    .stdin(Stdio::piped())
    .stdout(out)
    .stderr(err);
    // `sh` is always there; a missing swtpm shows up as exit code 127 in wait_ready.
    tool::spawn(&mut cmd, "sh")
}

/// Waits until both ports accept connections and swtpm has written its pid file; returns
/// the watchdog and swtpm's pid. Kills the watchdog (and so swtpm) on every error path.
fn wait_ready(
    mut child: Child,
    port: u16,
    pid_file: &Path,
    log: &Path,
) -> std::result::Result<(Child, u32), Retry> {
    let start = Instant::now();
    let ctrl = port.saturating_add(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let output = tail(log);
                if status.code() == Some(127) {
                    return Err(Retry::Fatal(Error::ToolMissing {
                        tool: "swtpm",
                        package: tool::package_of("swtpm"),
                    }));
                }
                let err = not_ready(
                    port,
                    log,
                    format!("swtpm exited ({})", tool::describe(status)),
                );
                return Err(if output.contains("Address already in use") {
                    Retry::Port(err)
                } else {
                    Retry::Fatal(err)
                });
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tool::wait_timeout(&mut child, Duration::ZERO);
                return Err(Retry::Fatal(not_ready(
                    port,
                    log,
                    format!("cannot poll swtpm: {e}"),
                )));
            }
        }
        if accepts(port) && accepts(ctrl) {
            let pid = fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                return Ok((child, pid));
            }
        }
        if start.elapsed() >= READY_TIMEOUT {
            let _ = tool::wait_timeout(&mut child, Duration::ZERO);
            return Err(Retry::Fatal(not_ready(
                port,
                log,
                format!("no connection within {} ms", READY_TIMEOUT.as_millis()),
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn not_ready(port: u16, log: &Path, reason: String) -> Error {
    Error::NotReady {
        port,
        reason,
        log: log.to_owned(),
        output: tail(log),
    }
}

fn tail(log: &Path) -> String {
    fs::read(log).map(|b| tool::lossy(&b)).unwrap_or_default()
}

fn pem_to_der(file: &Path) -> Result<Vec<u8>> {
    let out = tool::run(
        "openssl",
        &os_args!["x509", "-in", file, "-outform", "DER"],
        tool::SHORT,
    )?;
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn devices_can_be_provisioned_from_many_threads() {
        // Provisioning shares `&Ca` across threads and moves `Device`s between them.
        send_sync::<Ca>();
        send::<Device>();
        send_sync::<Error>();
    }

    #[test]
    fn ek_kinds_map_to_their_tcg_indices() {
        let indices: Vec<u32> = EkKind::ALL.iter().map(|k| k.nv_index()).collect();
        assert_eq!(
            indices,
            [0x01C0_0002, 0x01C0_001C, 0x01C0_000A, 0x01C0_0016]
        );
        assert_eq!(EkKind::P256.persistent_handle(), None);
        assert_eq!(EkKind::Rsa3072.to_string(), "RSA-3072");
    }

    #[test]
    fn missing_state_file_is_an_io_error() {
        let err = Device::from_state_file(Path::new("/nonexistent/tpm2-00.permall")).err();
        assert!(matches!(err, Some(Error::Io { .. })), "{err:?}");
    }
}
