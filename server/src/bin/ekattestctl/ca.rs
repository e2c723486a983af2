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

use ekattest_server::svid::Authority;
use lexopt::prelude::*;

/// Usage text of `ca create`.
pub(crate) const USAGE: &str = "\
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

struct SignerArgs {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    days: u64,
    force: bool,
}

fn parse_signer(parser: &mut lexopt::Parser) -> Result<Option<SignerArgs>, lexopt::Error> {
    let (mut ca_cert, mut ca_key, mut cert, mut key) = (None, None, None, None);
    let (mut days, mut force) = (90, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Long("ca-cert") => ca_cert = Some(PathBuf::from(parser.value()?)),
            Long("ca-key") => ca_key = Some(PathBuf::from(parser.value()?)),
            Long("cert") => cert = Some(PathBuf::from(parser.value()?)),
            Long("key") => key = Some(PathBuf::from(parser.value()?)),
            Long("days") => {
                days = parser.value()?.parse()?;
                if days == 0 || days > DAYS_MAX {
                    return Err(format!("--days must be 1 to {DAYS_MAX}, not {days}").into());
                }
            }
            Long("force") => force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let missing = |what: &str| -> lexopt::Error { format!("missing {what}\n\n{USAGE}").into() };
    Ok(Some(SignerArgs {
        ca_cert: ca_cert.ok_or_else(|| missing("--ca-cert"))?,
        ca_key: ca_key.ok_or_else(|| missing("--ca-key"))?,
        cert: cert.ok_or_else(|| missing("--cert"))?,
        key: key.ok_or_else(|| missing("--key"))?,
        days,
        force,
    }))
}

/// `ekattestctl ca issue-signer`.
pub(crate) fn run_issue_signer(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(args) = parse_signer(parser)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let issue = || -> Result<(), String> {
        if args.cert == args.key {
            return Err("--cert and --key must be different files".to_owned());
        }
        if !args.force {
            for path in [&args.cert, &args.key] {
                if path.exists() {
                    return Err(format!(
                        "{} exists; refusing to overwrite it (use --force to replace it)",
                        path.display()
                    ));
                }
            }
        }
        let root = Authority::load(&args.ca_cert, &args.ca_key).map_err(|e| e.to_string())?;
        let validity = Duration::from_secs(args.days.saturating_mul(86_400));
        let (cert_pem, key_pem) = root.issue_signer(validity).map_err(|e| e.to_string())?;
        write(&args.key, key_pem.as_bytes(), 0o600, args.force)?;
        write(&args.cert, cert_pem.as_bytes(), 0o644, args.force)
    };
    match issue() {
        Ok(()) => {
            println!(
                "wrote signer certificate {} and key {} (mode 0600), issued by {}",
                args.cert.display(),
                args.key.display(),
                args.ca_cert.display()
            );
            println!(
                "configure the server with ca-cert: {} and ca-key: {}; agents keep {} as their \
                 trust bundle; keep {} offline",
                args.cert.display(),
                args.key.display(),
                args.ca_cert.display(),
                args.ca_key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Largest `--days`: a hundred years.
const DAYS_MAX: u64 = 36_500;

struct Args {
    trust_domain: String,
    cert: PathBuf,
    key: PathBuf,
    days: u64,
    force: bool,
}

fn parse(parser: &mut lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    let (mut trust_domain, mut cert, mut key) = (None, None, None);
    let (mut days, mut force) = (365, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Long("trust-domain") => trust_domain = Some(parser.value()?.string()?),
            Long("cert") => cert = Some(PathBuf::from(parser.value()?)),
            Long("key") => key = Some(PathBuf::from(parser.value()?)),
            Long("days") => {
                days = parser.value()?.parse()?;
                if days == 0 || days > DAYS_MAX {
                    return Err(format!("--days must be 1 to {DAYS_MAX}, not {days}").into());
                }
            }
            Long("force") => force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let missing = |what: &str| -> lexopt::Error { format!("missing {what}\n\n{USAGE}").into() };
    Ok(Some(Args {
        trust_domain: trust_domain.ok_or_else(|| missing("--trust-domain"))?,
        cert: cert.ok_or_else(|| missing("--cert"))?,
        key: key.ok_or_else(|| missing("--key"))?,
        days,
        force,
    }))
}

/// Runs `ekattestctl ca create` with the arguments after `create`.
pub(crate) fn run(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(args) = parse(parser)? else {
        return Ok(ExitCode::SUCCESS);
    };
    match create(&args) {
        Ok(()) => {
            println!(
                "wrote CA certificate {} (trust domain {}, valid {} days) and key {} (mode 0600)",
                args.cert.display(),
                args.trust_domain,
                args.days,
                args.key.display()
            );
            println!(
                "trust bundle for agents: {}; the server signs with the certificate {} and the \
                 key {}",
                args.cert.display(),
                args.cert.display(),
                args.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn create(args: &Args) -> Result<(), String> {
    if args.cert == args.key {
        return Err("--cert and --key must be different files".to_owned());
    }
    if !args.force {
        for path in [&args.cert, &args.key] {
            if path.exists() {
                return Err(format!(
                    "{} exists; refusing to overwrite it (use --force to replace it)",
                    path.display()
                ));
            }
        }
    }
    let validity = Duration::from_secs(args.days.saturating_mul(86_400));
    let (_, cert_pem, key_pem) =
        Authority::generate(&args.trust_domain, validity).map_err(|e| e.to_string())?;
    write(&args.key, key_pem.as_bytes(), 0o600, args.force)?;
    write(&args.cert, cert_pem.as_bytes(), 0o644, args.force)
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
