//! `ekattestctl ca create`: a new trust domain CA (P-256) for the server's X.509-SVIDs.
//!
//! Writes the CA certificate (the agents' trust bundle) and its PKCS#8 key (mode 0600). It
//! refuses to overwrite either file unless `--force`, checks both before writing anything,
//! and never prints the key or touches the network.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::svid::Authority;

/// The output pair `--cert` / `--key`: different files, and none that exists unless
/// `--force`.
fn check_outputs(cert: &Path, key: &Path, force: bool) -> Result<(), String> {
    if cert == key {
        return Err("--cert and --key must be different files".to_owned());
    }
    if !force {
        for path in [cert, key] {
            if path.exists() {
                return Err(format!(
                    "{} exists; refusing to overwrite it (use --force to replace it)",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

/// Writes the key (0600), then the certificate.
fn write_pair(
    cert: &Path,
    cert_pem: &str,
    key: &Path,
    key_pem: &str,
    force: bool,
) -> Result<(), String> {
    write(key, key_pem.as_bytes(), 0o600, force)?;
    write(cert, cert_pem.as_bytes(), 0o644, force)
}

/// The exit status of a command whose work is `result`: 0, or 2 with the error.
fn finish(result: Result<(), String>, done: impl FnOnce()) -> ExitCode {
    match result {
        Ok(()) => {
            done();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `ekattestctl ca issue-signer` needs: the root CA's files, the signer's output files,
/// its validity and whether existing outputs are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSigner {
    /// `--ca-cert`: the root CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// `--ca-key`: the root CA key (PEM).
    pub ca_key: PathBuf,
    /// `--cert`: where the signer certificate is written.
    pub cert: PathBuf,
    /// `--key`: where the signer key is written (mode 0600).
    pub key: PathBuf,
    /// `--days`: validity (clamped to the root's).
    pub days: u64,
    /// `--force`: replace existing output files.
    pub force: bool,
}

/// Runs `ekattestctl ca issue-signer`: a signer CA below the root, written with its key;
/// prints what was written, or the reason on stderr. Exit 0 written, 2 not.
#[must_use]
pub fn issue_signer(args: &IssueSigner) -> ExitCode {
    let IssueSigner {
        ca_cert,
        ca_key,
        cert,
        key,
        days,
        force,
    } = args;
    let (days, force) = (*days, *force);
    let issue = || -> Result<(), String> {
        check_outputs(cert, key, force)?;
        let root = Authority::load(ca_cert, ca_key).map_err(|e| e.to_string())?;
        let validity = Duration::from_secs(days.saturating_mul(86_400));
        let (cert_pem, key_pem) = root.issue_signer(validity).map_err(|e| e.to_string())?;
        write_pair(cert, &cert_pem, key, &key_pem, force)
    };
    finish(issue(), || {
        println!(
            "wrote signer certificate {} and key {} (mode 0600), issued by {}",
            cert.display(),
            key.display(),
            ca_cert.display()
        );
        println!(
            "configure the server with ca-cert: {} and ca-key: {}; agents keep {} as their \
             trust bundle; keep {} offline",
            cert.display(),
            key.display(),
            ca_cert.display(),
            ca_key.display()
        );
    })
}

/// What `ekattestctl ca create` needs: the trust domain, the output files, the validity and
/// whether existing outputs are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    /// `--trust-domain`: the SPIFFE trust domain the CA certifies.
    pub trust_domain: String,
    /// `--cert`: where the CA certificate (the agents' trust bundle) is written.
    pub cert: PathBuf,
    /// `--key`: where the CA key is written (mode 0600).
    pub key: PathBuf,
    /// `--days`: validity.
    pub days: u64,
    /// `--force`: replace existing output files.
    pub force: bool,
}

/// Runs `ekattestctl ca create`: a new trust domain CA, written with its key; prints what
/// was written, or the reason on stderr. Exit 0 written, 2 not.
#[must_use]
pub fn create(args: &Create) -> ExitCode {
    let Create {
        trust_domain,
        cert,
        key,
        days,
        force,
    } = args;
    let (days, force) = (*days, *force);
    let create = || -> Result<(), String> {
        check_outputs(cert, key, force)?;
        let validity = Duration::from_secs(days.saturating_mul(86_400));
        let (_, cert_pem, key_pem) =
            Authority::generate(trust_domain, validity).map_err(|e| e.to_string())?;
        write_pair(cert, &cert_pem, key, &key_pem, force)
    };
    finish(create(), || {
        println!(
            "wrote CA certificate {} (trust domain {trust_domain}, valid {days} days) and key {} \
             (mode 0600)",
            cert.display(),
            key.display()
        );
        println!(
            "trust bundle for agents: {}; issue the server's signer from it with `ekattestctl ca \
             issue-signer` (or configure this certificate and key as the server's ca-cert / \
             ca-key, which keeps the root key online)",
            cert.display()
        );
    })
}

/// Writes `bytes` to `path` with `mode`, creating it (or truncating it with `force`).
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(err)?;
    // An existing file keeps its mode on open: set it, before the key is written.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}
