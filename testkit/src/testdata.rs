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
