//! Helpers shared by the fleet crate's integration tests: finding the workspace binaries
//! built beside the test, reading files, policy documents for a swtpm CA, and the names of
//! the server's proof metrics. Fails loudly (panics naming the fix); never skips.

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test helper shared by several test files; fails loudly"
)]

use std::path::{Path, PathBuf};

use ekattest_fleet::Ca;

/// The folder of the workspace binaries built beside this test (`target/<profile>`),
/// checked to hold `names`.
pub fn bin_dir_with(names: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    for name in names {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "{} is missing: build it first (`cargo build -p ekattest-agent -p ekattest-server`, \
             or run the tests with `cargo test --workspace --all-features`)",
            path.display()
        );
    }
    dir
}

/// A binary built beside this test (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir_with(&[name]).join(name)
}

/// A fresh SVID CA for `trust_domain` from `ekattestctl ca create`, as `(cert, key)` files in
/// `dir`.
pub fn svid_ca(dir: &Path, trust_domain: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join("svid-ca.pem");
    let key = dir.join("svid-ca.key");
    let out = std::process::Command::new(bin("ekattestctl"))
        .args(["ca", "create", "--trust-domain", trust_domain, "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ekattestctl ca create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A text file, or a panic naming it.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `pem` with every line indented by `by` spaces (a YAML block scalar's body).
pub fn indent(pem: &str, by: usize) -> String {
    pem.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// An AgentAttestation document with one policy `tpm_ek_policy`, SPIFFE IDs
/// `/agents/tpm/{{tpm_ek.public_hash}}`, trusting the swtpm `ca` (root as caCerts,
/// intermediate as intermediateCerts) and/or the allow-listed `hashes`.
pub fn policy(ca: Option<&Ca>, hashes: &[&str]) -> String {
    let mut config = String::new();
    if let Some(ca) = ca {
        config += &format!(
            "            caCerts: |\n{}            intermediateCerts: |\n{}",
            indent(&read(ca.root_cert_pem()), 14),
            indent(&read(ca.intermediate_cert_pem()), 14)
        );
    }
    if !hashes.is_empty() {
        config += "            allowedHashes:\n";
        for h in hashes {
            config += &format!("              - \"{h}\"\n");
        }
    }
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: tpm_ek_policy\n      \
         spiffeIdTemplate: /agents/tpm/{{{{tpm_ek.public_hash}}}}\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n{config}"
    )
}

/// The `attestation_signer_proof` series of a successful proof.
pub const SUCCESS: &str = "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"}";

/// The `attestation_signer_proof` series of a failed proof with `reason`.
pub fn failed(reason: &str) -> String {
    format!(
        "attestation_signer_proof{{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"{reason}\"}}"
    )
}
