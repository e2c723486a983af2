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
use ekattest_protocol::topic;
use lexopt::prelude::*;

use super::files;

/// Usage text of `config sign`.
pub(crate) const SIGN_USAGE: &str = "\
Usage: ekattestctl config sign --key KEY.pem --id ID FILE [--out OUT]

Validates the AgentAttestation document FILE and signs it for cluster ID with the
ECDSA P-256 private key KEY.pem (from `config keygen`, or openssl). Writes the signed
document to OUT (default: stdout): FILE byte for byte, then a trailer of YAML comments
naming the cluster, the issue time (now), the signer's key fingerprint and the
signature. Servers of cluster ID with policy-topic: true and the public key in
policy-signers apply it from the config topic (`config set cluster`).

  --key KEY.pem   private key (PKCS#8 PRIVATE KEY or EC PRIVATE KEY, mode 0600)
  --id ID         cluster id the document is for (as in the servers' cluster-id)
  --out OUT       write the signed document there instead of stdout

Exit 0 signed, 1 invalid document, 2 usage error or unusable file.
";

/// Usage text of `config keygen`.
pub(crate) const KEYGEN_USAGE: &str = "\
Usage: ekattestctl config keygen --out DIR [--name NAME] [--force]

Makes an ECDSA P-256 key pair for signing policy documents:
  DIR/NAME.key   the private key (PKCS#8 PEM, mode 0600): keep it with the operator,
                 never on a server
  DIR/NAME.pub   the public key (PEM): list it in the servers' policy-signers
NAME defaults to policy-signer. Existing files are not overwritten without --force.

Exit 0 written, 2 usage error or a file that cannot or may not be written.
";

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

/// Runs `config sign` with the arguments after `sign`; `Err` only for usage errors (exit 2).
///
/// # Errors
/// A [`lexopt::Error`] for a missing, unknown or malformed flag.
pub fn sign(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let mut key = None;
    let mut cluster = None;
    let mut out = None;
    let mut file = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{SIGN_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("key") => key = Some(PathBuf::from(parser.value()?)),
            Long("id") => cluster = Some(parser.value()?.string()?),
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            arg => return Err(arg.unexpected()),
        }
    }
    let key = key.ok_or_else(|| format!("missing --key KEY.pem\n\n{SIGN_USAGE}"))?;
    let cluster = cluster.ok_or_else(|| format!("missing --id ID\n\n{SIGN_USAGE}"))?;
    topic::validate(topic::Part::Cluster, &cluster).map_err(|e| format!("--id: {e}"))?;
    let file = file.ok_or_else(|| format!("missing FILE\n\n{SIGN_USAGE}"))?;
    let key = read_key(&key)?;
    let bytes = match read_valid_document(&file) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let issued = now_secs();
    let signed = match key.sign(&bytes, &cluster, issued) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ekattestctl: cannot sign: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match &out {
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
        out.map(|p| format!("; wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `config keygen` with the arguments after `keygen`; `Err` only for usage errors
/// (exit 2).
///
/// # Errors
/// A [`lexopt::Error`] for a missing, unknown or malformed flag.
pub fn keygen(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let mut dir = None;
    let mut name = "policy-signer".to_owned();
    let mut force = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{KEYGEN_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("out") => dir = Some(PathBuf::from(parser.value()?)),
            Long("name") => name = parser.value()?.string()?,
            Long("force") => force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let dir = dir.ok_or_else(|| format!("missing --out DIR\n\n{KEYGEN_USAGE}"))?;
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(format!("--name {name:?} is not a file name").into());
    }
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    if !force {
        for p in [&key_path, &pub_path] {
            if p.exists() {
                eprintln!(
                    "ekattestctl: {} exists; refusing to overwrite it (use --force to replace it)",
                    p.display()
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    // `--out ~/.ekattest` on a fresh machine: make the folder (private: it holds the key).
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt as _;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            eprintln!("ekattestctl: cannot create --out {}: {e}", dir.display());
            return Ok(ExitCode::from(2));
        }
    }
    let (key, private_pem) = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ekattestctl: cannot generate a key: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let written = super::ca::write(&key_path, private_pem.as_bytes(), 0o600, force)
        .and_then(|()| super::ca::write(&pub_path, key.public_pem().as_bytes(), 0o644, force));
    if let Err(e) = written {
        eprintln!("ekattestctl: {e}");
        return Ok(ExitCode::from(2));
    }
    println!(
        "wrote {} (private, mode 0600: keep it off the servers) and {} (add it to \
         policy-signers); key sha256:{}",
        key_path.display(),
        pub_path.display(),
        hex::encode(key.fingerprint())
    );
    Ok(ExitCode::SUCCESS)
}
