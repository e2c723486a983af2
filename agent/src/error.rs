//! Errors of the operator commands ([`crate::ops`]): opening the TPM, running TPM commands,
//! reading input files, writing output. Each message names what failed and what to do; the
//! binary prints it with its source chain and exits 1.

use std::path::PathBuf;

use crate::tpm::activate::CredentialError;
use crate::tpm::{self, TransportError};

/// An operator-command failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TPM could not be opened.
    #[error("cannot open the TPM")]
    Open(#[source] TransportError),
    /// A TPM operation failed.
    #[error("TPM operation failed")]
    Tpm(#[from] tpm::Error),
    /// The credential file could not be read.
    #[error("cannot read credential file {path}")]
    ReadCredential {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The credential file is not a valid tpm2-tools credential.
    #[error("invalid credential file {path}")]
    Credential {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// Writing the output failed.
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
}

/// Formats `e` and its source chain as `outer: inner: innermost` (each error's `Display`
/// leaves its source out, so this is how the whole story is printed).
#[must_use]
pub fn chain(e: &dyn std::error::Error) -> String {
    ekattest_protocol::error::ErrorChain(e).to_string()
}
