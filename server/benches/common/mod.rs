//! Helpers shared by the server's benchmarks: openssl as the tool that makes EK test chains,
//! and PEM files read to DER. Fails loudly (a panic naming the missing tool or file).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a bench helper shared by several bench targets; fails loudly"
)]

use std::path::Path;

/// Runs `openssl ARGS` in `dir`, panicking with its stderr when it fails.
pub use ekattest_testkit::testdata::openssl;

/// The DER contents of the PEM file at `path`.
pub fn pem_der(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    let text = std::fs::read(path)
        .unwrap_or_else(|e| panic!("bench input {} is missing: {e}", path.display()));
    pem::parse(text)
        .unwrap_or_else(|e| panic!("{} is not PEM: {e}", path.display()))
        .into_contents()
}
