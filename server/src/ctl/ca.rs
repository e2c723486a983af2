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
use lexopt::prelude::*;

/// Usage text of `ca create`.
pub const USAGE: &str = "\
Usage: ekattestctl ca create --trust-domain TD --cert OUT.pem --key OUT.key
                             [--days N] [--force]
       ekattestctl ca issue-signer --ca-cert ROOT.pem --ca-key ROOT.key
                             --cert OUT.pem --key OUT.key [--days N] [--force]

Creates the trust domain's SVID certificate authority: a self-signed ECDSA P-256 CA
(O=ekattest, CN=TD CA, URI SAN spiffe://TD, CA:TRUE pathlen 1, keyCertSign, cRLSign).
The server signs agents' X.509-SVIDs and its Results with the key; agents verify both
with the certificate, their trust bundle.

  --trust-domain TD    the SPIFFE trust domain, e.g. example.org
  --cert OUT.pem       where to write the CA certificate (PEM)
  --key OUT.key        where to write the CA private key (PKCS#8 PEM, mode 0600)
  --days N             validity in days (default 365)
  --force              overwrite existing files

`issue-signer` issues the server's signer under that root: an ECDSA P-256 intermediate CA
(CN=TD signer, CA:TRUE pathlen 0, digitalSignature, keyCertSign, extendedKeyUsage
serverAuth, clientAuth and the ekattest signer usage). Configure it as the server's
ca-cert / ca-key: it signs the SVIDs, Challenges and Results, and the root key can stay
offline (agents keep the root as their trust bundle). --days defaults to 90 and is
clamped to the root's validity.

Exit 0 written, 2 usage error or a file that exists or cannot be written.
";

/// Largest `--days`: a hundred years.
const DAYS_MAX: u64 = 36_500;

/// The flags of `ca create` and `ca issue-signer` (each command takes its own subset).
#[derive(Default)]
struct Flags {
    trust_domain: Option<String>,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    days: Option<u64>,
    force: bool,
}

/// Reads the flags `allowed` (long names); `None` after `--help`.
fn parse(parser: &mut lexopt::Parser, allowed: &[&str]) -> Result<Option<Flags>, lexopt::Error> {
    let mut f = Flags::default();
    while let Some(arg) = parser.next()? {
        if let Long(name) = &arg
            && !allowed.contains(name)
            && *name != "help"
        {
            return Err(arg.unexpected());
        }
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Long("trust-domain") => f.trust_domain = Some(parser.value()?.string()?),
            Long("ca-cert") => f.ca_cert = Some(PathBuf::from(parser.value()?)),
            Long("ca-key") => f.ca_key = Some(PathBuf::from(parser.value()?)),
            Long("cert") => f.cert = Some(PathBuf::from(parser.value()?)),
            Long("key") => f.key = Some(PathBuf::from(parser.value()?)),
            Long("days") => {
                let days: u64 = parser.value()?.parse()?;
                if days == 0 || days > DAYS_MAX {
                    return Err(format!("--days must be 1 to {DAYS_MAX}, not {days}").into());
                }
                f.days = Some(days);
            }
            Long("force") => f.force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    Ok(Some(f))
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, lexopt::Error> {
    value.ok_or_else(|| format!("missing {flag}\n\n{USAGE}").into())
}

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

/// Runs `ekattestctl ca issue-signer` with the arguments after `issue-signer`; `Err` only
/// for usage errors (exit 2).
///
/// # Errors
/// A [`lexopt::Error`] for a missing, unknown or malformed flag.
pub fn run_issue_signer(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(f) = parse(
        parser,
        &["ca-cert", "ca-key", "cert", "key", "days", "force"],
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let ca_cert = required(f.ca_cert, "--ca-cert")?;
    let ca_key = required(f.ca_key, "--ca-key")?;
    let cert = required(f.cert, "--cert")?;
    let key = required(f.key, "--key")?;
    let days = f.days.unwrap_or(90);
    let issue = || -> Result<(), String> {
        check_outputs(&cert, &key, f.force)?;
        let root = Authority::load(&ca_cert, &ca_key).map_err(|e| e.to_string())?;
        let validity = Duration::from_secs(days.saturating_mul(86_400));
        let (cert_pem, key_pem) = root.issue_signer(validity).map_err(|e| e.to_string())?;
        write_pair(&cert, &cert_pem, &key, &key_pem, f.force)
    };
    Ok(finish(issue(), || {
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
    }))
}

/// Runs `ekattestctl ca create` with the arguments after `create`; `Err` only for usage
/// errors (exit 2).
///
/// # Errors
/// A [`lexopt::Error`] for a missing, unknown or malformed flag.
pub fn run(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(f) = parse(parser, &["trust-domain", "cert", "key", "days", "force"])? else {
        return Ok(ExitCode::SUCCESS);
    };
    let trust_domain = required(f.trust_domain, "--trust-domain")?;
    let cert = required(f.cert, "--cert")?;
    let key = required(f.key, "--key")?;
    let days = f.days.unwrap_or(365);
    let create = || -> Result<(), String> {
        check_outputs(&cert, &key, f.force)?;
        let validity = Duration::from_secs(days.saturating_mul(86_400));
        let (_, cert_pem, key_pem) =
            Authority::generate(&trust_domain, validity).map_err(|e| e.to_string())?;
        write_pair(&cert, &cert_pem, &key, &key_pem, f.force)
    };
    Ok(finish(create(), || {
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
    }))
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
