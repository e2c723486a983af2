//! The shared test vectors (`../shared/testdata`, beside the checkout) and the openssl
//! helper the tests of every crate use.
//!
//! These helpers are for tests: a missing file or a failing tool is a broken test machine,
//! so they panic with a message that names the file or the command and what to do. They are
//! the only panicking functions of the kit.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/testdata` beside the checkout.
#[must_use]
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
}

/// The path of `rel` below [`dir`] (e.g. `make-credential/rsa2048/ek.tpm2b_public`).
#[must_use]
pub fn path(rel: impl AsRef<Path>) -> PathBuf {
    dir().join(rel)
}

/// The path of `rel` below [`dir`], which must exist.
///
/// # Panics
/// When nothing is there: `../shared` must sit beside the checkout.
#[must_use]
pub fn existing(rel: impl AsRef<Path>) -> PathBuf {
    let p = path(rel);
    assert!(
        p.exists(),
        "test data {} is missing (../shared/testdata must sit beside the checkout)",
        p.display()
    );
    p
}

/// The bytes of `rel` below [`dir`].
///
/// # Panics
/// When the file cannot be read: `../shared` must sit beside the checkout.
#[must_use]
pub fn read(rel: impl AsRef<Path>) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "cannot read test vector {}: {e} (../shared/testdata must sit beside the checkout)",
            p.display()
        )
    })
}

/// A file below `make-credential/`: one shared by every case (`ak.name`, `secret.bin`) or
/// one of a case (`rsa2048/seed.bin`).
#[must_use]
pub fn vector(rel: impl AsRef<Path>) -> Vec<u8> {
    read(Path::new("make-credential").join(rel))
}

/// A known-answer file of the MakeCredential case `case` (`rsa2048`, `p256`, ...).
#[must_use]
pub fn make_credential(case: &str, file: &str) -> Vec<u8> {
    read(Path::new("make-credential").join(case).join(file))
}

/// A real vendor EK certificate or CA file below `real-ek/`.
#[must_use]
pub fn real_ek(rel: &str) -> Vec<u8> {
    read(Path::new("real-ek").join(rel))
}

/// Runs `openssl ARGS` in `dir` and returns its stdout.
///
/// # Panics
/// When openssl is missing (`apt-get install openssl`) or exits with an error (its stderr
/// is in the message).
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl did not run ({e}): apt-get install openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The DER of the PEM certificate file `pem` (`openssl x509 -outform DER`).
///
/// # Panics
/// As [`openssl`]: when openssl is missing or the file is no PEM certificate.
#[must_use]
pub fn pem_to_der(pem: &Path) -> Vec<u8> {
    let file = pem
        .to_str()
        .unwrap_or_else(|| panic!("{} is no UTF-8 path", pem.display()));
    openssl(Path::new("."), &["x509", "-outform", "DER", "-in", file])
}

/// `openssl req -x509 -new` in `dir`: the self-signed certificate `{name}.pem` of the key in
/// `{name}.key`, subject `subject`, valid for two days, with the `extra` arguments (such as
/// `-addext basicConstraints=critical,CA:TRUE`).
///
/// # Panics
/// As [`openssl`].
pub fn openssl_self_signed(dir: &Path, name: &str, subject: &str, extra: &[&str]) {
    let (key, out) = (format!("{name}.key"), format!("{name}.pem"));
    let mut args: Vec<&str> = vec![
        "req", "-x509", "-new", "-key", &key, "-subj", subject, "-days", "2", "-out", &out,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// `openssl x509 -new` in `dir`: the certificate `{name}.pem` of the public key in
/// `{name}-pub.pem`, subject `subject`, extensions from `{name}.cnf`, issued for two days by
/// the CA `{ca}.pem` with its key `{ca}.key`.
///
/// # Panics
/// As [`openssl`].
pub fn openssl_issue(dir: &Path, ca: &str, name: &str, subject: &str) {
    openssl(
        dir,
        &[
            "x509",
            "-new",
            "-subj",
            subject,
            "-force_pubkey",
            &format!("{name}-pub.pem"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.cnf"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}
