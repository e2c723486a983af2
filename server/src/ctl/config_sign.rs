//! `ekattestctl config sign` and `config keygen`: the operator's side of signed policy
//! documents (`policy-topic: true` on the servers; envelope format in
//! `ekattest_server::config::signed`).
//!
//! `keygen` writes an ECDSA P-256 key pair: the private key (PKCS#8 PEM, mode 0600) stays
//! with the operator and never goes on a server; the public key goes into the servers'
//! `policy-signers`. `sign` validates the document first (an invalid document is never
//! signed), then writes the envelope: the document followed by its signature trailer, signed
//! for one cluster at the current time. Neither command touches the network; the signing key
//! must not be readable by group or others, and is never printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::signed::{SigningKey, utc};
use crate::config::{Document, MAX_DOCUMENT_BYTES};

use super::files;

/// The current time in unix seconds.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a signing key, refusing one readable by group or others.
pub(crate) fn read_key(path: &Path) -> Result<SigningKey, String> {
    files::check_private("--key", path)?;
    let bytes = files::read(path)?;
    SigningKey::from_pem(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and validates a document for signing; `Err` carries the exit code.
pub(crate) fn read_valid_document(file: &Path) -> Result<Vec<u8>, ExitCode> {
    let bytes = match files::read(file) {
        Ok(b) if b.len() <= MAX_DOCUMENT_BYTES => b,
        Ok(b) => {
            eprintln!(
                "ekattestctl: {}: {} bytes is larger than {MAX_DOCUMENT_BYTES} bytes",
                file.display(),
                b.len()
            );
            return Err(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            return Err(ExitCode::from(2));
        }
    };
    match Document::parse(&bytes) {
        Ok(doc) => {
            for w in doc.warnings() {
                eprintln!("warning: {w}");
            }
            Ok(bytes)
        }
        Err(e) => {
            eprintln!("{}: invalid: {e}", file.display());
            Err(ExitCode::from(1))
        }
    }
}

/// What `ekattestctl config sign` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sign {
    /// `--key`: the ECDSA P-256 private key (PEM, mode 0600).
    pub key: PathBuf,
    /// `--id`: the cluster the document is for (a valid topic part).
    pub cluster: String,
    /// `--out`: where the signed document is written; `None`: stdout.
    pub out: Option<PathBuf>,
    /// The document.
    pub file: PathBuf,
}

/// Runs `ekattestctl config sign`: validates the document, signs it and writes it. `Err` is a
/// usage-class error (an unusable key file) that the binary prints with exit status 2.
///
/// # Errors
/// The key file's problem, as the operator sees it.
pub fn sign(args: &Sign) -> Result<ExitCode, String> {
    let Sign {
        key,
        cluster,
        out,
        file,
    } = args;
    let key = read_key(key)?;
    let bytes = match read_valid_document(file) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let issued = now_secs();
    let signed = match key.sign(&bytes, cluster, issued) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ekattestctl: cannot sign: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match out {
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout.write_all(&signed).and_then(|()| stdout.flush()) {
                eprintln!("ekattestctl: cannot write stdout: {e}");
                return Ok(ExitCode::from(2));
            }
        }
        Some(path) => {
            if let Err(e) = super::ca::write(path, &signed, 0o644, true) {
                eprintln!("ekattestctl: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    eprintln!(
        "{}: valid; signed for cluster {cluster} at {issued} ({}) by key sha256:{}{}",
        file.display(),
        utc(issued),
        hex::encode(key.fingerprint()),
        out.as_ref()
            .map(|p| format!("; wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `ekattestctl config keygen` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keygen {
    /// `--out`: the folder (made, mode 0700, if missing).
    pub dir: PathBuf,
    /// `--name`: the files' stem, a plain file name.
    pub name: String,
    /// `--force`: replace existing files.
    pub force: bool,
}

/// Runs `ekattestctl config keygen`: writes `NAME.key` (0600) and `NAME.pub` in the folder
/// and prints them with the key's fingerprint. Exit 0 written, 1 no key, 2 not written.
#[must_use]
pub fn keygen(args: &Keygen) -> ExitCode {
    let Keygen { dir, name, force } = args;
    let force = *force;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    if !force {
        for p in [&key_path, &pub_path] {
            if p.exists() {
                eprintln!(
                    "ekattestctl: {} exists; refusing to overwrite it (use --force to replace it)",
                    p.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    // `--out ~/.ekattest` on a fresh machine: make the folder (private: it holds the key).
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            eprintln!("ekattestctl: cannot create --out {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let (key, private_pem) = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ekattestctl: cannot generate a key: {e}");
            return ExitCode::from(1);
        }
    };
    let written = super::ca::write(&key_path, private_pem.as_bytes(), 0o600, force)
        .and_then(|()| super::ca::write(&pub_path, key.public_pem().as_bytes(), 0o644, force));
    if let Err(e) = written {
        eprintln!("ekattestctl: {e}");
        return ExitCode::from(2);
    }
    println!(
        "wrote {} (private, mode 0600: keep it off the servers) and {} (add it to \
         policy-signers); key sha256:{}",
        key_path.display(),
        pub_path.display(),
        hex::encode(key.fingerprint())
    );
    ExitCode::SUCCESS
}
