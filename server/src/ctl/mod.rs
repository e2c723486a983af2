//! The logic of `ekattestctl`, the offline operator commands: EK hashes, document validation
//! and signing, publishing a signed document to a cluster, EK verification, the SVID CA.
//!
//! The binary (`src/bin/ekattestctl.rs`) parses the command line (words, flags, usage texts)
//! into the arguments struct of one command and calls its entry point here, which reads the
//! files, does the work, prints what the operator sees and returns the exit status. An
//! entry point that can also find a usage-class problem (a key file that is not usable, a
//! broker URL that does not parse) returns it as `Err(String)`; the binary prints it like a
//! usage error, with exit status 2. Exit status contract: 0 success (hash printed, document
//! valid, EK accepted); 1 the input was judged and rejected; 2 usage error or unreadable file.
//!
//! - [`ek_hash`], [`config_validate`]: the one-file commands.
//! - [`config_sign`]: `config sign` and `config keygen`.
//! - [`config_set`]: `config set|get|clear` over MQTT (the only command on the network).
//! - [`verify`]: `ek verify`.
//! - [`ca`]: `ca create` and `ca issue-signer`.
//! - [`agent`]: `agent list|show|ban|unban|evict|audit`, on the device registry.
//! - `files`: reading and recognising the operator's input files (PEM, DER, TPM2B_PUBLIC).

pub mod agent;
pub mod ca;
pub mod config_set;
pub mod config_sign;
mod files;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;

use crate::config::Document;

/// `ekattestctl ek-hash FILE`: prints the EK's `tpm_ek.public_hash` (lowercase hex SHA-256 of
/// its DER SubjectPublicKeyInfo) from a certificate, public key or TPM2B_PUBLIC file. Exit 0
/// printed, 1 no usable key in the file, 2 unreadable file.
#[must_use]
pub fn ek_hash(file: &Path) -> ExitCode {
    let bytes = match files::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            return ExitCode::from(2);
        }
    };
    match files::public_hash(&bytes) {
        Ok(hash) => {
            println!("{}", hex::encode(hash));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ekattestctl: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

/// `ekattestctl config validate FILE`: loads the AgentAttestation document and prints its
/// summary and warnings. Exit 0 valid, 1 invalid, 2 unreadable.
#[must_use]
pub fn config_validate(file: &Path) -> ExitCode {
    let doc = match Document::load(file) {
        Ok(doc) => doc,
        Err(e @ crate::config::ConfigError::Read { .. }) => {
            eprintln!("ekattestctl: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}: invalid: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let n = doc.policies().len();
    println!(
        "{}: valid AgentAttestation v1 document, {n} {}",
        file.display(),
        if n == 1 { "policy" } else { "policies" }
    );
    for p in doc.policies() {
        let types: Vec<&str> = p.attestors.iter().map(|a| a.method().as_str()).collect();
        println!("policy {:?}", p.name);
        println!("  requiredAttestors: {}", types.join(", "));
        if let Some(t) = p.tpm_ek() {
            println!(
                "  tpm_ek: caCerts {}, intermediateCerts {}, allowedHashes {}, \
                 ekProfileCheck {}, allowSha1Signatures {}, acceptExpiredEk {}",
                t.ca_certs,
                t.intermediate_certs,
                t.ek.allowed_hashes.len(),
                match t.ek.profile {
                    crate::ek::ProfileMode::Enforce => "enforce",
                    crate::ek::ProfileMode::Warn => "warn",
                },
                t.ek.chain.allow_sha1,
                t.ek.chain.accept_expired_ek
            );
        }
        println!(
            "  spiffeIdTemplate: {}{}",
            p.spiffe_id,
            if p.spiffe_id_is_default {
                " (default)"
            } else {
                ""
            }
        );
    }
    for w in doc.warnings() {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}
