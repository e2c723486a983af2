//! Codec errors and the closed set of reject codes a server sends to an agent.
//!
//! [`DecodeError`] and [`EncodeError`] carry the numbers needed to diagnose a bad frame
//! (lengths, limits, offsets) and print them; they never hold a copy of the frame.
//! [`RejectCode`] is part of the wire format (a `Rejected` result carries one) and its
//! `Display` is the operator string from the product contract, verbatim where the contract
//! has one. Nothing here logs, allocates or panics.

use core::fmt;

/// Why a frame could not be decoded. Every variant is the peer's fault (or a version skew);
/// none is a bug on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame has no bytes at all, not even the version byte.
    Empty,
    /// The frame is longer than the largest valid message of its direction
    /// ([`limits::UPLINK_FRAME_MAX`](crate::limits::UPLINK_FRAME_MAX) or
    /// [`limits::DOWNLINK_FRAME_MAX`](crate::limits::DOWNLINK_FRAME_MAX)); it was not parsed.
    TooLong {
        /// Frame length in bytes.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The version byte is not the one this build speaks ([`crate::msg::VERSION`]).
    Version {
        /// The version byte the frame carries.
        got: u8,
        /// The version this build speaks.
        want: u8,
    },
    /// The postcard body is not a message of the expected direction: truncated, a bad
    /// varint or `Option` tag, an unknown enum variant, or text that is not UTF-8.
    Malformed {
        /// Frame offset (version byte = 0) where decoding stopped.
        offset: usize,
        /// What postcard reported.
        error: postcard::Error,
    },
    /// A byte, text or list field declares more than its bound in [`crate::limits`].
    FieldTooLong {
        /// Frame offset where decoding stopped: just after the field's length prefix (its
        /// contents unread), or, if the declared length also runs past the end of the frame,
        /// just after the first element over the bound.
        offset: usize,
    },
    /// A complete message was followed by more bytes.
    Trailing {
        /// How many bytes follow the message.
        bytes: usize,
    },
}

impl DecodeError {
    /// The reject code a server answers an undecodable Login or Answer with.
    #[must_use]
    pub const fn reject_code(&self) -> RejectCode {
        match self {
            Self::Version { .. } => RejectCode::UnsupportedVersion,
            Self::Empty
            | Self::TooLong { .. }
            | Self::Malformed { .. }
            | Self::FieldTooLong { .. }
            | Self::Trailing { .. } => RejectCode::Malformed,
        }
    }
}

/// Plain-language reading of the postcard errors a decode can produce.
fn postcard_hint(error: &postcard::Error) -> &'static str {
    use postcard::Error as P;
    match error {
        P::DeserializeUnexpectedEnd => "the frame ends inside a field",
        P::DeserializeBadVarint => "a length or integer is not a valid varint",
        P::DeserializeBadBool => "a boolean is neither 0 nor 1",
        P::DeserializeBadOption => "an Option tag is neither 0 nor 1",
        P::DeserializeBadUtf8 | P::DeserializeBadChar => "text is not valid UTF-8",
        P::SerdeDeCustom => "an unknown enum variant, or text that is not UTF-8",
        _ => "the body is not a message of this direction",
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty frame: expected a version byte and a message"),
            Self::TooLong { len, limit } => write!(
                f,
                "frame of {len} bytes is longer than the largest valid message ({limit} bytes)"
            ),
            Self::Version { got, want } => write!(
                f,
                "frame has protocol version {got}, this build speaks version {want}: \
                 run the same protocol version on agent and server"
            ),
            Self::Malformed { offset, error } => write!(
                f,
                "malformed frame at byte {offset}: {} ({error})",
                postcard_hint(error)
            ),
            Self::FieldTooLong { offset } => write!(
                f,
                "malformed frame at byte {offset}: a field is longer than its protocol limit"
            ),
            Self::Trailing { bytes } => {
                write!(
                    f,
                    "malformed frame: {bytes} trailing bytes after the message"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Malformed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; a buffer of
    /// [`limits::FRAME_MAX`](crate::limits::FRAME_MAX) bytes always fits.
    BufferTooSmall {
        /// Size of the buffer given.
        capacity: usize,
        /// Size of the frame.
        needed: usize,
    },
    /// postcard refused the message (not expected with this crate's types).
    Serialize(postcard::Error),
    /// A field is longer than its protocol limit.
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its limit in bytes.
        max: usize,
    },
    /// No frame of this protocol version can be written
    /// ([`crate::msg::encode_legacy_rejection`]).
    UnsupportedVersion(u8),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { capacity, needed } => write!(
                f,
                "frame needs {needed} bytes but the buffer holds {capacity}: \
                 use a buffer of limits::FRAME_MAX bytes"
            ),
            Self::Serialize(error) => write!(f, "cannot encode message: {error}"),
            Self::UnsupportedVersion(v) => {
                write!(f, "cannot write a frame of protocol version {v}")
            }
            Self::FieldTooLong { field, max } => {
                write!(f, "{field} is longer than its limit of {max} bytes")
            }
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Serialize(error) => Some(error),
            Self::BufferTooSmall { .. }
            | Self::FieldTooLong { .. }
            | Self::UnsupportedVersion(_) => None,
        }
    }
}

/// Why a server rejected an agent: sent in `Rejected { code, message }`.
///
/// The set is closed: an agent of the same protocol version knows every code. On the wire a
/// code is its declaration index (one byte), so the list is **append-only**: never reorder,
/// remove or reuse a variant. `Display` prints the operator string; the first seven are the
/// product contract's strings verbatim.
///
/// | code | `Display` | likely cause |
/// |---:|---|---|
/// | 0 `NoMatchingPolicy` | no cluster policy authorizes the provided attestors | the agent's methods (`tpm_ek`) match no policy in the cluster's AgentAttestation config |
/// | 1 `EkNotTrusted` | EK did not pass any configured validation check | the EK certificate is not signed by a configured CA (or fails the TCG EK profile) and the EK's public_hash is not in allowedHashes |
/// | 2 `EkChain` | failed to verify EK certificate chain | the EK certificate chain did not verify against the configured caCerts / intermediateCerts |
/// | 3 `ChallengeFailed` | Authorization failed: challenge response failed validation | the TPM could not open the credential or the answer's proof could not be verified: check the agent can use /dev/tpmrm0 |
/// | 4 `SecretMismatch` | challenge response secret does not match | the TPM returned the wrong secret: a different TPM than the EK's, or a replay |
/// | 5 `UnknownSession` | unknown session ID | an Answer without a live Login: already answered, or the server node restarted |
/// | 6 `PolicyNotFound` | attestation policy not found or no matching policy | no AgentAttestation document is applied to the cluster |
/// | 7 `Busy` | server busy | the node holds its maximum of pending sessions: the agent retries with backoff |
/// | 8 `Malformed` | malformed message | the frame did not decode, or a field (TPM public area, certificate, key) did not parse |
/// | 9 `AkRejected` | attestation key does not meet the requirements | the AK is not a restricted signing key with fixedTPM, fixedParent and sensitiveDataOrigin, or its type, size or name algorithm is not accepted |
/// | 10 `EkMismatch` | EK public key does not match the EK certificate | the EK public area sent differs from the key in the EK certificate |
/// | 11 `TemplateAttribute` | SPIFFE ID template names an attribute the agent does not have | the policy's SPIFFE ID template uses e.g. `tpm_ek.manufacturer` but the EK has no certificate with TPM identity fields |
/// | 12 `SessionExpired` | session expired | the Answer came after the session's 5 minutes: the agent logs in again |
/// | 13 `UnsupportedVersion` | unsupported protocol version | agent and server speak different protocol versions: upgrade the older side |
/// | 14 `EkUnsupported` | EK key type is not supported | the EK's algorithm or size has no MakeCredential support (supported: RSA-2048/3072, P-256, P-384) |
/// | 15 `Internal` | internal server error | the server failed (random numbers, signing): see the server log |
/// | 16 `ProofOfPossession` | SVID key proof of possession failed | the Login's `svid_key` is not a P-256 SubjectPublicKeyInfo, or the Answer's `pop` is missing or is not that key's signature over this Login's transcript and MAC |
/// | 17 `AgentIdMismatch` | agent id is not the one derived from the EK | the server requires agent ids of the form `ek-` + 32 hex digits of the EK's public_hash (`agent-id-from-ek`): the agent's `agent-id` is set, or a Login was replayed under another id |
/// | 18 `KeyCertification` | SVID key certification failed | the Login's `key_certify` (`svid-key: tpm`) does not show a fixedTPM signing key certified by the Login's AK for this Login, or the server requires a TPM key (`require-tpm-svid-key`) and the Login carries a software key |
/// | 19 `Banned` | EK or agent id is banned | an operator banned the EK (by `tpm_ek.public_hash`) or the agent id with `ekattestctl agent ban`: a stolen or decommissioned device; `ekattestctl agent unban` lifts it |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RejectCode {
    /// No cluster policy authorizes the provided attestors.
    NoMatchingPolicy,
    /// EK did not pass any configured validation check.
    EkNotTrusted,
    /// Failed to verify EK certificate chain.
    EkChain,
    /// Authorization failed: challenge response failed validation.
    ChallengeFailed,
    /// Challenge response secret does not match.
    SecretMismatch,
    /// Unknown session ID.
    UnknownSession,
    /// Attestation policy not found or no matching policy.
    PolicyNotFound,
    /// Server busy.
    Busy,
    /// Malformed message.
    Malformed,
    /// Attestation key does not meet the requirements.
    AkRejected,
    /// EK public key does not match the EK certificate.
    EkMismatch,
    /// SPIFFE ID template names an attribute the agent does not have.
    TemplateAttribute,
    /// Session expired.
    SessionExpired,
    /// Unsupported protocol version.
    UnsupportedVersion,
    /// EK key type is not supported.
    EkUnsupported,
    /// Internal server error.
    Internal,
    /// SVID key proof of possession failed.
    ProofOfPossession,
    /// Agent id is not the one derived from the EK.
    AgentIdMismatch,
    /// SVID key certification failed.
    KeyCertification,
    /// The EK or the agent id is banned (`ekattestctl agent ban`).
    Banned,
}

impl RejectCode {
    /// Every code in wire order (index = wire value).
    pub const ALL: &'static [RejectCode] = &[
        Self::NoMatchingPolicy,
        Self::EkNotTrusted,
        Self::EkChain,
        Self::ChallengeFailed,
        Self::SecretMismatch,
        Self::UnknownSession,
        Self::PolicyNotFound,
        Self::Busy,
        Self::Malformed,
        Self::AkRejected,
        Self::EkMismatch,
        Self::TemplateAttribute,
        Self::SessionExpired,
        Self::UnsupportedVersion,
        Self::EkUnsupported,
        Self::Internal,
        Self::ProofOfPossession,
        Self::AgentIdMismatch,
        Self::KeyCertification,
        Self::Banned,
    ];

    /// The operator string (also this code's `Display`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoMatchingPolicy => "no cluster policy authorizes the provided attestors",
            Self::EkNotTrusted => "EK did not pass any configured validation check",
            Self::EkChain => "failed to verify EK certificate chain",
            Self::ChallengeFailed => "Authorization failed: challenge response failed validation",
            Self::SecretMismatch => "challenge response secret does not match",
            Self::UnknownSession => "unknown session ID",
            Self::PolicyNotFound => "attestation policy not found or no matching policy",
            Self::Busy => "server busy",
            Self::Malformed => "malformed message",
            Self::AkRejected => "attestation key does not meet the requirements",
            Self::EkMismatch => "EK public key does not match the EK certificate",
            Self::TemplateAttribute => {
                "SPIFFE ID template names an attribute the agent does not have"
            }
            Self::SessionExpired => "session expired",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::EkUnsupported => "EK key type is not supported",
            Self::Internal => "internal server error",
            Self::ProofOfPossession => "SVID key proof of possession failed",
            Self::AgentIdMismatch => "agent id is not the one derived from the EK",
            Self::KeyCertification => "SVID key certification failed",
            Self::Banned => "EK or agent id is banned",
        }
    }

    /// The wire value (the declaration index).
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The code with wire value `code`, if this build knows it.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        for (index, code) in RejectCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.code()), index, "{code:?}");
            assert_eq!(RejectCode::from_code(code.code()), Some(*code));
        }
        let count = u8::try_from(RejectCode::ALL.len()).unwrap();
        assert_eq!(RejectCode::from_code(count), None);
    }

    #[test]
    fn operator_strings_are_distinct() {
        for (i, a) in RejectCode::ALL.iter().enumerate() {
            for b in &RejectCode::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}

/// Displays an error followed by its sources, `outer: inner: innermost`. Errors here and in
/// the agent and server leave their source out of `Display` (the source is data), so this is
/// how logs and command-line tools print the whole story without allocating.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn core::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
