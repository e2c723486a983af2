//! The TPM layer's error type: which command failed, and whether the transport, the TPM's
//! response code or the response bytes were at fault.
//!
//! Every variant names the failed operation; response codes print with their spec names
//! (`TPM_RC_INTEGRITY (0x1df) on parameter 1`). Messages tell the operator what to do where
//! there is something to do. This module never logs.

use super::TransportError;
use super::rc::{self, ResponseCode};

/// A TPM-layer failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed while running a command.
    #[error("TPM2_{command} failed")]
    Transport {
        /// Command name (e.g. `CreatePrimary`).
        command: &'static str,
        /// What the transport reported.
        #[source]
        source: TransportError,
    },
    /// The TPM answered with an error response code.
    #[error("TPM2_{command} failed: {rc}{}", hint(command, *.rc))]
    Response {
        /// Command name.
        command: &'static str,
        /// The response code.
        rc: ResponseCode,
    },
    /// A session check failed: a response HMAC that does not verify, a response the TPM
    /// should have encrypted and did not, or session crypto that could not run (no
    /// randomness, an EK key no salt can be made for).
    #[error("TPM2_{command}: session check failed: {detail}")]
    Session {
        /// Command name.
        command: &'static str,
        /// What failed.
        detail: String,
    },
    /// The TPM kept answering RETRY/YIELDED/TESTING past our retry budget.
    #[error("TPM2_{command} failed: {rc} still returned after {attempts} attempts")]
    Busy {
        /// Command name.
        command: &'static str,
        /// The last response code.
        rc: ResponseCode,
        /// How many times the command was sent.
        attempts: u32,
    },
    /// The response was well framed but its contents do not parse.
    #[error("TPM2_{command}: malformed response: {detail}")]
    Malformed {
        /// Command name.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A command could not be built (argument out of range: a caller bug or bad input file).
    #[error("TPM2_{command}: cannot build the command: {detail}")]
    Build {
        /// Command name.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A public area from the TPM or a certificate could not be used.
    #[error("{what}: {detail}")]
    Public {
        /// Which object (e.g. `EK at 0x81010001`).
        what: String,
        /// Why.
        detail: String,
    },
    /// The EK's public key differs from the key in its EK certificate.
    #[error(
        "the {template} EK public key does not match the EK certificate at NV index \
         {nv_index:#010x}: the certificate belongs to another key or template"
    )]
    EkMismatch {
        /// Template name (e.g. `L-1 RSA-2048`).
        template: &'static str,
        /// The certificate's NV index.
        nv_index: u32,
    },
    /// The requested EK does not exist on this TPM.
    #[error("no {what}endorsement key found on this TPM (found: {found})")]
    NoEk {
        /// What was asked for (`p256 `, with a trailing space, or empty for any).
        what: String,
        /// What exists, comma separated, or `none`.
        found: String,
    },
    /// The Name the TPM reported differs from the one computed from the public area.
    #[error(
        "{what}: the Name computed from the public area differs from the Name the TPM returned"
    )]
    NameMismatch {
        /// Which object.
        what: &'static str,
    },
}

fn hint(command: &str, rc: ResponseCode) -> &'static str {
    // TPM_RC_INTEGRITY with its parameter/handle number bits: format-one code 0x01F.
    let integrity = rc.0 & 0x080 != 0 && rc.0 & 0x03F == 0x01F;
    match (command, rc.0) {
        ("ActivateCredential", _) if integrity => {
            " (the credential was made for another AK or another EK than this TPM's: the \
             server's Challenge does not match this device, or the Login was altered)"
        }
        ("Load", _) if integrity => {
            " (the key was created by another TPM, or before this TPM's owner hierarchy was \
             cleared: it cannot be used here)"
        }
        (_, rc::FAILURE) => " (the TPM is in failure mode: reset or power-cycle it)",
        (_, 0x902 | 0x903) => " (the TPM has no free object/session slots: flush leftovers)",
        (_, 0x921) => " (the TPM is in dictionary-attack lockout)",
        _ => "",
    }
}

impl Error {
    /// The TPM response code, if this error is a TPM response.
    #[must_use]
    pub fn response_code(&self) -> Option<ResponseCode> {
        match self {
            Self::Response { rc, .. } | Self::Busy { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_failures_say_what_they_mean_per_command() {
        let activate = Error::Response {
            command: "ActivateCredential",
            rc: ResponseCode(0x1df),
        };
        let text = activate.to_string();
        assert!(text.contains("TPM_RC_INTEGRITY (0x1df)"), "{text}");
        assert!(text.contains("made for another AK or another EK"), "{text}");
        let load = Error::Response {
            command: "Load",
            rc: ResponseCode(0x19f),
        };
        assert!(
            load.to_string().contains("created by another TPM"),
            "{load}"
        );
        let other = Error::Response {
            command: "Sign",
            rc: ResponseCode(0x1df),
        };
        assert!(!other.to_string().contains("another"), "{other}");
    }
}
