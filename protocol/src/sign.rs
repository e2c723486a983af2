//! The exact bytes each side signs, so agent and server cannot disagree on them.
//!
//! Two signatures travel in the protocol, both ECDSA P-256 with SHA-256, DER-encoded
//! (at most [`ECDSA_P256_DER_MAX`] bytes):
//!
//! - **Proof of possession** ([`crate::msg::Answer::pop`]): the agent signs
//!   [`pop_signed_bytes`] with the private half of the Login's `svid_key`. The bytes bind the
//!   session and the recovered secret, so a signature is good for one challenge only and only
//!   for the holder of the TPM that opened it.
//! - **Result signature** ([`crate::msg::Accepted::signature`]): the server signs
//!   [`result_signed_bytes`] with its trust domain CA key; the agent checks it against its
//!   trust bundle. The bytes bind the agent id and the session, so a recorded Result cannot be
//!   replayed to another agent or to a later attestation of the same agent.
//!
//! Each message starts with its own context string, so neither signature can be mistaken for
//! the other or for a signature in another protocol.

use heapless::Vec;
use serde::Serialize;

use crate::EncodeError;
use crate::limits::{AGENT_ID_MAX, SECRET_MAX, SESSION_ID_LEN, SPIFFE_ID_MAX, SVID_MAX};
use crate::limits::{ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, varint_len};
use crate::msg::{Accepted, Attribute, SessionId};

/// Context prefix of the proof-of-possession message.
pub const POP_CONTEXT: &[u8] = b"ekattest/v1 svid-key proof\0";

/// Context prefix of the signed Result.
pub const RESULT_CONTEXT: &[u8] = b"ekattest/v1 result\0";

/// Largest DER ECDSA P-256 signature: SEQUENCE of two INTEGERs of up to 33 bytes.
pub const ECDSA_P256_DER_MAX: usize = 72;

/// Length of the proof-of-possession message for a `secret_len`-byte secret.
#[must_use]
pub const fn pop_len(secret_len: usize) -> usize {
    POP_CONTEXT.len() + SESSION_ID_LEN + 1 + secret_len
}

/// Largest proof-of-possession message.
pub const POP_MAX: usize = pop_len(SECRET_MAX);

/// Largest signed-Result message.
pub const RESULT_SIGNED_MAX: usize = RESULT_CONTEXT.len()
    + varint_len(AGENT_ID_MAX)
    + AGENT_ID_MAX
    + SESSION_ID_LEN
    + varint_len(SPIFFE_ID_MAX)
    + SPIFFE_ID_MAX
    + varint_len(ATTRIBUTES_MAX)
    + ATTRIBUTES_MAX * (1 + varint_len(ATTRIBUTE_VALUE_MAX) + ATTRIBUTE_VALUE_MAX)
    + varint_len(SVID_MAX)
    + SVID_MAX;

/// The bytes the agent signs with its SVID key:
/// `POP_CONTEXT || session (16 bytes) || len(secret) (1 byte) || secret`.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `secret` is longer than [`SECRET_MAX`].
pub fn pop_signed_bytes(
    session: &SessionId,
    secret: &[u8],
) -> Result<Vec<u8, POP_MAX>, EncodeError> {
    let too_long = EncodeError::FieldTooLong {
        field: "secret",
        max: SECRET_MAX,
    };
    if secret.len() > SECRET_MAX {
        return Err(too_long);
    }
    let len = u8::try_from(secret.len()).map_err(|_| too_long.clone())?;
    let mut out = Vec::new();
    out.extend_from_slice(POP_CONTEXT)
        .and_then(|()| out.extend_from_slice(&session.0))
        .and_then(|()| out.extend_from_slice(&[len]))
        .and_then(|()| out.extend_from_slice(secret))
        .map_err(|_| too_long)?;
    Ok(out)
}

/// What the Result signature covers, in postcard after [`RESULT_CONTEXT`].
#[derive(Serialize)]
struct SignedResult<'a> {
    agent: &'a str,
    session: [u8; SESSION_ID_LEN],
    spiffe_id: &'a str,
    attributes: &'a [Attribute],
    #[serde(with = "serde_bytes_slice")]
    svid: &'a [u8],
}

/// Serializes a byte slice as postcard's length-prefixed byte string.
mod serde_bytes_slice {
    pub(super) fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

/// The bytes the server signs for an [`Accepted`] Result to agent `agent` answering
/// `session`: [`RESULT_CONTEXT`] followed by the postcard encoding of (agent id, session,
/// SPIFFE ID, attributes, SVID). `accepted.signature` itself is not covered.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `agent` is longer than [`AGENT_ID_MAX`].
pub fn result_signed_bytes(
    agent: &str,
    session: &SessionId,
    accepted: &Accepted,
) -> Result<Vec<u8, RESULT_SIGNED_MAX>, EncodeError> {
    if agent.len() > AGENT_ID_MAX {
        return Err(EncodeError::FieldTooLong {
            field: "agent id",
            max: AGENT_ID_MAX,
        });
    }
    let overflow = |_| EncodeError::BufferTooSmall {
        capacity: RESULT_SIGNED_MAX,
        needed: RESULT_SIGNED_MAX + 1,
    };
    let mut out: Vec<u8, RESULT_SIGNED_MAX> = Vec::new();
    out.extend_from_slice(RESULT_CONTEXT).map_err(overflow)?;
    let body = SignedResult {
        agent,
        session: session.0,
        spiffe_id: accepted.spiffe_id.as_str(),
        attributes: &accepted.attributes,
        svid: &accepted.svid,
    };
    let start = out.len();
    out.resize(RESULT_SIGNED_MAX, 0).map_err(overflow)?;
    let used = postcard::to_slice(&body, &mut out[start..])
        .map_err(EncodeError::Serialize)?
        .len();
    out.truncate(start + used);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::AttributeName;

    fn accepted() -> Accepted {
        let mut attributes = Vec::new();
        attributes
            .push(Attribute {
                name: AttributeName::PublicHash,
                value: heapless::String::try_from("ab").unwrap(),
            })
            .unwrap();
        Accepted {
            spiffe_id: heapless::String::try_from("spiffe://td/x").unwrap(),
            attributes,
            svid: Vec::from_slice(&[1, 2, 3]).unwrap(),
            signature: Vec::from_slice(&[9; 70]).unwrap(),
        }
    }

    #[test]
    fn pop_layout() {
        let session = SessionId([7; 16]);
        let bytes = pop_signed_bytes(&session, &[1, 2, 3]).unwrap();
        assert_eq!(&bytes[..POP_CONTEXT.len()], POP_CONTEXT);
        assert_eq!(&bytes[POP_CONTEXT.len()..][..16], &[7; 16]);
        assert_eq!(&bytes[POP_CONTEXT.len() + 16..], &[3, 1, 2, 3]);
        assert_eq!(bytes.len(), pop_len(3));
        assert_eq!(
            pop_signed_bytes(&session, &[0; SECRET_MAX + 1]),
            Err(EncodeError::FieldTooLong {
                field: "secret",
                max: SECRET_MAX
            })
        );
    }

    #[test]
    fn result_binds_agent_session_and_content_but_not_signature() {
        let session = SessionId([7; 16]);
        let a = accepted();
        let base = result_signed_bytes("agent-a", &session, &a).unwrap();
        assert!(base.starts_with(RESULT_CONTEXT));

        let mut resigned = a.clone();
        resigned.signature.clear();
        assert_eq!(
            result_signed_bytes("agent-a", &session, &resigned).unwrap(),
            base
        );

        assert_ne!(result_signed_bytes("agent-b", &session, &a).unwrap(), base);
        assert_ne!(
            result_signed_bytes("agent-a", &SessionId([8; 16]), &a).unwrap(),
            base
        );
        let mut other = a.clone();
        other.spiffe_id = heapless::String::try_from("spiffe://td/y").unwrap();
        assert_ne!(
            result_signed_bytes("agent-a", &session, &other).unwrap(),
            base
        );
        let mut other = a.clone();
        other.svid[0] = 0;
        assert_ne!(
            result_signed_bytes("agent-a", &session, &other).unwrap(),
            base
        );
        assert_eq!(
            result_signed_bytes(&"x".repeat(AGENT_ID_MAX + 1), &session, &a),
            Err(EncodeError::FieldTooLong {
                field: "agent id",
                max: AGENT_ID_MAX
            })
        );
    }

    #[test]
    fn largest_result_fits() {
        let mut a = accepted();
        a.spiffe_id.clear();
        for _ in 0..SPIFFE_ID_MAX {
            a.spiffe_id.push('x').unwrap();
        }
        a.attributes.clear();
        for _ in 0..ATTRIBUTES_MAX {
            let mut value = heapless::String::new();
            for _ in 0..ATTRIBUTE_VALUE_MAX {
                value.push('v').unwrap();
            }
            a.attributes
                .push(Attribute {
                    name: AttributeName::Model,
                    value,
                })
                .unwrap();
        }
        a.svid.resize(SVID_MAX, 0xAA).unwrap();
        let agent = "a".repeat(AGENT_ID_MAX);
        let bytes = result_signed_bytes(&agent, &SessionId([1; 16]), &a).unwrap();
        assert!(bytes.len() <= RESULT_SIGNED_MAX);
    }
}
