//! The exact bytes each side hashes, MACs and signs, so agent and server cannot disagree on
//! them (DESIGN.md section 2, wire version 2).
//!
//! Everything an attestation proves hangs off the Login transcript
//! `T = SHA-256(TRANSCRIPT_CONTEXT || cluster || agent id || the Login frame)` ([`transcript`]):
//! the agent computes it over the frame it sends, the server over the frame it receives, so a
//! Login rewritten on the way gives the two sides different `T`s and nothing the device
//! computes is of use for the rewritten one.
//!
//! - **Challenge signature** ([`crate::msg::Challenge::signature`]): the server's signer key
//!   signs [`challenge_signed_bytes`] (agent id, session, node, `T`, credential, expiry). The
//!   agent touches its TPM only for a Challenge that verifies and names its own `T`.
//! - **Answer MAC** ([`crate::msg::Answer::mac`]): [`answer_mac`], HMAC-SHA256 keyed with the
//!   secret ActivateCredential recovered, over `T`, the session and the node. The secret
//!   itself never leaves the device.
//! - **Proof of possession** ([`crate::msg::Answer::pop`]): the SVID key signs
//!   [`pop_signed_bytes`] (`T`, session, MAC): only the holder of the key the Login named,
//!   answering that Login's challenge, can produce it.
//! - **Result signature** ([`crate::msg::Accepted::signature`]): the signer key signs
//!   [`result_signed_bytes`] (agent id, session, `T`, SPIFFE ID, attributes, SVID).
//! - **Key certification** (issue 14): the AK certifies a TPM-resident SVID key with
//!   qualifyingData [`certify_qualifying_data`] (cluster, agent id, the Login's nonce).
//!
//! Every hash, MAC and signature starts with its own context string, so none can be taken
//! for another, or for a signature in another protocol. Variable-length fields carry a length
//! prefix, so no two field lists hash alike.

use heapless::Vec;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::EncodeError;
use crate::limits::{
    AGENT_ID_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, CLUSTER_ID_MAX, CREDENTIAL_BLOB_MAX,
    ENCRYPTED_SECRET_MAX, MAC_LEN, NODE_ID_MAX, NONCE_LEN, SESSION_ID_LEN, SIGNER_HINT_LEN,
    SPIFFE_ID_MAX, SVID_MAX, TRANSCRIPT_LEN, varint_len,
};
use crate::msg::{Accepted, Attribute, Challenge, SessionId};

/// Context prefix of the Login transcript.
pub const TRANSCRIPT_CONTEXT: &[u8] = b"ekattest/v2 login transcript\0";

/// Context prefix of the Answer MAC.
pub const MAC_CONTEXT: &[u8] = b"ekattest/v2 answer mac\0";

/// Context prefix of the proof-of-possession message.
pub const POP_CONTEXT: &[u8] = b"ekattest/v2 svid-key proof\0";

/// Context prefix of the signed Challenge.
pub const CHALLENGE_CONTEXT: &[u8] = b"ekattest/v2 challenge\0";

/// Context prefix of the signed Result.
pub const RESULT_CONTEXT: &[u8] = b"ekattest/v2 result\0";

/// Context prefix of the qualifyingData of a TPM-resident SVID key's certification.
pub const CERTIFY_CONTEXT: &[u8] = b"ekattest/v2 svid-key certify\0";

/// The extended key usage that marks a certificate's key as allowed to sign ekattest
/// Challenges and Results: OID 2.25.121035243528938581842246392379300579911 (a UUID OID,
/// ITU-T X.667, which needs no registration). The server's signer certificate, an
/// intermediate CA issued by `ekattestctl ca issue-signer`, carries it; an agent acts on a
/// Challenge signed by an intermediate only if it does.
pub const SIGNER_EKU_OID: &str = "2.25.121035243528938581842246392379300579911";

/// The DER contents (no tag, no length) of [`SIGNER_EKU_OID`].
pub const SIGNER_EKU_OID_DER: &[u8] = &[
    0x69, 0x81, 0xb6, 0x8e, 0xc5, 0x8f, 0x8c, 0x9d, 0xa2, 0xae, 0x9d, 0x9f, 0x95, 0x9f, 0x83, 0xe3,
    0xec, 0xec, 0x94, 0x47,
];

/// Largest DER ECDSA P-256 signature: SEQUENCE of two INTEGERs of up to 33 bytes.
pub const ECDSA_P256_DER_MAX: usize = 72;

/// The Login transcript `T`.
pub type Transcript = [u8; TRANSCRIPT_LEN];

/// Length of the proof-of-possession message.
pub const POP_LEN: usize = POP_CONTEXT.len() + TRANSCRIPT_LEN + SESSION_ID_LEN + MAC_LEN;

/// Largest signed-Challenge message.
pub const CHALLENGE_SIGNED_MAX: usize = CHALLENGE_CONTEXT.len()
    + varint_len(AGENT_ID_MAX)
    + AGENT_ID_MAX
    + SESSION_ID_LEN
    + varint_len(NODE_ID_MAX)
    + NODE_ID_MAX
    + TRANSCRIPT_LEN
    + varint_len(CREDENTIAL_BLOB_MAX)
    + CREDENTIAL_BLOB_MAX
    + varint_len(ENCRYPTED_SECRET_MAX)
    + ENCRYPTED_SECRET_MAX
    + 5;

/// Largest signed-Result message.
pub const RESULT_SIGNED_MAX: usize = RESULT_CONTEXT.len()
    + varint_len(AGENT_ID_MAX)
    + AGENT_ID_MAX
    + SESSION_ID_LEN
    + TRANSCRIPT_LEN
    + varint_len(SPIFFE_ID_MAX)
    + SPIFFE_ID_MAX
    + varint_len(ATTRIBUTES_MAX)
    + ATTRIBUTES_MAX * (1 + varint_len(ATTRIBUTE_VALUE_MAX) + ATTRIBUTE_VALUE_MAX)
    + varint_len(SVID_MAX)
    + SVID_MAX;

/// Feeds `text` with a one-byte length prefix; `max` (at most 255) bounds it.
fn prefixed(
    hash: &mut impl FnMut(&[u8]),
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), EncodeError> {
    let len = u8::try_from(text.len())
        .ok()
        .filter(|&len| usize::from(len) <= max)
        .ok_or(EncodeError::FieldTooLong { field, max })?;
    hash(&[len]);
    hash(text.as_bytes());
    Ok(())
}

/// The Login transcript `T = SHA-256(TRANSCRIPT_CONTEXT || len || cluster || len || agent ||
/// login_frame)`, over the Login frame exactly as sent (agent) or received (server), version
/// byte included.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `cluster` or `agent` exceeds its protocol limit.
pub fn transcript(
    cluster: &str,
    agent: &str,
    login_frame: &[u8],
) -> Result<Transcript, EncodeError> {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_CONTEXT);
    let mut feed = |b: &[u8]| h.update(b);
    prefixed(&mut feed, "cluster id", cluster, CLUSTER_ID_MAX)?;
    prefixed(&mut feed, "agent id", agent, AGENT_ID_MAX)?;
    h.update(login_frame);
    Ok(h.finalize().into())
}

fn answer_hmac(
    secret: &[u8],
    transcript: &Transcript,
    session: &SessionId,
    node: &str,
) -> Result<Hmac<Sha256>, EncodeError> {
    // HMAC takes keys of any length.
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret).map_err(|_| EncodeError::FieldTooLong {
            field: "secret",
            max: crate::limits::SECRET_MAX,
        })?;
    mac.update(MAC_CONTEXT);
    mac.update(transcript);
    mac.update(&session.0);
    let mut feed = |b: &[u8]| mac.update(b);
    prefixed(&mut feed, "node id", node, NODE_ID_MAX)?;
    Ok(mac)
}

/// The Answer's MAC: `HMAC-SHA256(secret, MAC_CONTEXT || T || session || len || node)`, where
/// `node` is the node the Challenge named.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `node` exceeds [`NODE_ID_MAX`].
pub fn answer_mac(
    secret: &[u8],
    transcript: &Transcript,
    session: &SessionId,
    node: &str,
) -> Result<[u8; MAC_LEN], EncodeError> {
    Ok(answer_hmac(secret, transcript, session, node)?
        .finalize()
        .into_bytes()
        .into())
}

/// Whether `mac` is [`answer_mac`] of these inputs, compared in constant time.
#[must_use]
pub fn answer_mac_matches(
    secret: &[u8],
    transcript: &Transcript,
    session: &SessionId,
    node: &str,
    mac: &[u8; MAC_LEN],
) -> bool {
    answer_hmac(secret, transcript, session, node).is_ok_and(|h| h.verify_slice(mac).is_ok())
}

/// The bytes the agent signs with its SVID key: `POP_CONTEXT || T || session || mac`.
#[must_use]
pub fn pop_signed_bytes(
    transcript: &Transcript,
    session: &SessionId,
    mac: &[u8; MAC_LEN],
) -> [u8; POP_LEN] {
    let mut out = [0u8; POP_LEN];
    let parts: [&[u8]; 4] = [POP_CONTEXT, transcript, &session.0, mac];
    let mut at = 0;
    for part in parts {
        if let Some(dst) = out.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    out
}

/// The qualifyingData of TPM2_Certify for a TPM-resident SVID key:
/// `SHA-256(CERTIFY_CONTEXT || len || cluster || len || agent || nonce)` with the Login's
/// nonce. It cannot cover `T` (the certification is part of the Login `T` hashes); the nonce
/// ties it to this Login.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `cluster` or `agent` exceeds its protocol limit.
pub fn certify_qualifying_data(
    cluster: &str,
    agent: &str,
    nonce: &[u8; NONCE_LEN],
) -> Result<[u8; 32], EncodeError> {
    let mut h = Sha256::new();
    h.update(CERTIFY_CONTEXT);
    let mut feed = |b: &[u8]| h.update(b);
    prefixed(&mut feed, "cluster id", cluster, CLUSTER_ID_MAX)?;
    prefixed(&mut feed, "agent id", agent, AGENT_ID_MAX)?;
    h.update(nonce);
    Ok(h.finalize().into())
}

/// The signer hint for a signer certificate (DER): the first bytes of its SHA-256.
#[must_use]
pub fn signer_hint(cert_der: &[u8]) -> [u8; SIGNER_HINT_LEN] {
    let digest: [u8; 32] = Sha256::digest(cert_der).into();
    let mut hint = [0u8; SIGNER_HINT_LEN];
    hint.copy_from_slice(&digest[..SIGNER_HINT_LEN]);
    hint
}

/// Serializes a byte slice as postcard's length-prefixed byte string.
mod serde_bytes_slice {
    pub(super) fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

/// What the Challenge signature covers, in postcard after [`CHALLENGE_CONTEXT`].
#[derive(Serialize)]
struct SignedChallenge<'a> {
    agent: &'a str,
    session: [u8; SESSION_ID_LEN],
    node: &'a str,
    transcript: Transcript,
    #[serde(with = "serde_bytes_slice")]
    credential_blob: &'a [u8],
    #[serde(with = "serde_bytes_slice")]
    encrypted_secret: &'a [u8],
    expires_in: u32,
}

/// Writes `CONTEXT || postcard(body)` into a bounded vector.
fn signed<const N: usize>(
    context: &[u8],
    body: &impl Serialize,
) -> Result<Vec<u8, N>, EncodeError> {
    let overflow = |_| EncodeError::BufferTooSmall {
        capacity: N,
        needed: N + 1,
    };
    let mut out: Vec<u8, N> = Vec::new();
    out.extend_from_slice(context).map_err(overflow)?;
    let start = out.len();
    out.resize(N, 0).map_err(overflow)?;
    let used = postcard::to_slice(body, &mut out[start..])
        .map_err(EncodeError::Serialize)?
        .len();
    out.truncate(start + used);
    Ok(out)
}

fn check_agent(agent: &str) -> Result<(), EncodeError> {
    if agent.len() > AGENT_ID_MAX {
        return Err(EncodeError::FieldTooLong {
            field: "agent id",
            max: AGENT_ID_MAX,
        });
    }
    Ok(())
}

/// The bytes the server signs for a Challenge to agent `agent`: [`CHALLENGE_CONTEXT`]
/// followed by the postcard encoding of (agent id, session, node, `T`, credential blob,
/// encrypted secret, `expires_in`). The signer certificate and the signature are not covered
/// (the signature is checked with the certificate's key).
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `agent` is longer than [`AGENT_ID_MAX`].
pub fn challenge_signed_bytes(
    agent: &str,
    challenge: &Challenge,
) -> Result<Vec<u8, CHALLENGE_SIGNED_MAX>, EncodeError> {
    check_agent(agent)?;
    signed(
        CHALLENGE_CONTEXT,
        &SignedChallenge {
            agent,
            session: challenge.session.0,
            node: challenge.node.as_str(),
            transcript: challenge.transcript,
            credential_blob: &challenge.credential_blob,
            encrypted_secret: &challenge.encrypted_secret,
            expires_in: challenge.expires_in,
        },
    )
}

/// What the Result signature covers, in postcard after [`RESULT_CONTEXT`].
#[derive(Serialize)]
struct SignedResult<'a> {
    agent: &'a str,
    session: [u8; SESSION_ID_LEN],
    transcript: Transcript,
    spiffe_id: &'a str,
    attributes: &'a [Attribute],
    #[serde(with = "serde_bytes_slice")]
    svid: &'a [u8],
}

/// The bytes the server signs for an [`Accepted`] Result to agent `agent` answering
/// `session` of the Login with transcript `transcript`: [`RESULT_CONTEXT`] followed by the
/// postcard encoding of (agent id, session, `T`, SPIFFE ID, attributes, SVID).
/// `accepted.signature` itself is not covered.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] if `agent` is longer than [`AGENT_ID_MAX`].
pub fn result_signed_bytes(
    agent: &str,
    session: &SessionId,
    transcript: &Transcript,
    accepted: &Accepted,
) -> Result<Vec<u8, RESULT_SIGNED_MAX>, EncodeError> {
    check_agent(agent)?;
    signed(
        RESULT_CONTEXT,
        &SignedResult {
            agent,
            session: session.0,
            transcript: *transcript,
            spiffe_id: accepted.spiffe_id.as_str(),
            attributes: &accepted.attributes,
            svid: &accepted.svid,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::AttributeName;

    const T: Transcript = [0x11; 32];

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

    fn challenge() -> Challenge {
        Challenge {
            session: SessionId([7; 16]),
            node: heapless::String::try_from("node-1").unwrap(),
            credential_blob: Vec::from_slice(&[1, 2]).unwrap(),
            encrypted_secret: Vec::from_slice(&[3, 4]).unwrap(),
            expires_in: 300,
            transcript: T,
            signer: Vec::from_slice(&[0x30; 40]).unwrap(),
            signature: Vec::from_slice(&[9; 70]).unwrap(),
        }
    }

    #[test]
    fn transcript_is_length_prefixed_and_covers_every_input() {
        let base = transcript("c-1", "ek-a", b"frame").unwrap();
        // Moving a byte from one field to the next changes T (length prefixes).
        assert_ne!(transcript("c-1e", "k-a", b"frame").unwrap(), base);
        assert_ne!(transcript("c-1", "ek-a", b"framE").unwrap(), base);
        assert_ne!(transcript("c-2", "ek-a", b"frame").unwrap(), base);
        assert_ne!(transcript("c-1", "ek-b", b"frame").unwrap(), base);
        assert_eq!(transcript("c-1", "ek-a", b"frame").unwrap(), base);
        let long = "x".repeat(AGENT_ID_MAX + 1);
        assert_eq!(
            transcript("c-1", &long, b""),
            Err(EncodeError::FieldTooLong {
                field: "agent id",
                max: AGENT_ID_MAX
            })
        );
        assert!(transcript(&long, "a", b"").is_err());
    }

    #[test]
    fn transcript_matches_an_independent_sha256() {
        let mut input = std::vec::Vec::new();
        input.extend_from_slice(TRANSCRIPT_CONTEXT);
        input.extend_from_slice(&[3]);
        input.extend_from_slice(b"c-1");
        input.extend_from_slice(&[4]);
        input.extend_from_slice(b"ek-a");
        input.extend_from_slice(b"frame");
        let want: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(transcript("c-1", "ek-a", b"frame").unwrap(), want);
    }

    #[test]
    fn mac_binds_secret_transcript_session_and_node() {
        let s = SessionId([7; 16]);
        let mac = answer_mac(&[5; 32], &T, &s, "node-1").unwrap();
        assert!(answer_mac_matches(&[5; 32], &T, &s, "node-1", &mac));
        assert!(!answer_mac_matches(&[6; 32], &T, &s, "node-1", &mac));
        assert!(!answer_mac_matches(
            &[5; 32],
            &[0x12; 32],
            &s,
            "node-1",
            &mac
        ));
        assert!(!answer_mac_matches(
            &[5; 32],
            &T,
            &SessionId([8; 16]),
            "node-1",
            &mac
        ));
        assert!(!answer_mac_matches(&[5; 32], &T, &s, "node-2", &mac));
        let mut flipped = mac;
        flipped[31] ^= 1;
        assert!(!answer_mac_matches(&[5; 32], &T, &s, "node-1", &flipped));
        // The MAC is not the secret, nor the same for two secrets.
        assert_ne!(mac, [5; 32]);
        assert_ne!(answer_mac(&[6; 32], &T, &s, "node-1").unwrap(), mac);
    }

    #[test]
    fn mac_is_rfc2104_hmac_sha256() {
        // HMAC computed by hand: H((K ^ opad) || H((K ^ ipad) || m)) with a 32-byte key.
        let key = [5u8; 32];
        let s = SessionId([7; 16]);
        let mut m = std::vec::Vec::new();
        m.extend_from_slice(MAC_CONTEXT);
        m.extend_from_slice(&T);
        m.extend_from_slice(&s.0);
        m.push(6);
        m.extend_from_slice(b"node-1");
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(&key);
        let ipad: std::vec::Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: std::vec::Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::digest([ipad.as_slice(), &m].concat());
        let want: [u8; 32] = Sha256::digest([opad.as_slice(), &inner].concat()).into();
        assert_eq!(answer_mac(&key, &T, &s, "node-1").unwrap(), want);
    }

    #[test]
    fn pop_layout() {
        let session = SessionId([7; 16]);
        let bytes = pop_signed_bytes(&T, &session, &[0xaa; 32]);
        assert_eq!(&bytes[..POP_CONTEXT.len()], POP_CONTEXT);
        let rest = &bytes[POP_CONTEXT.len()..];
        assert_eq!(&rest[..32], &T);
        assert_eq!(&rest[32..48], &[7; 16]);
        assert_eq!(&rest[48..], &[0xaa; 32]);
    }

    #[test]
    fn contexts_are_distinct_and_versioned() {
        let all = [
            TRANSCRIPT_CONTEXT,
            MAC_CONTEXT,
            POP_CONTEXT,
            CHALLENGE_CONTEXT,
            RESULT_CONTEXT,
            CERTIFY_CONTEXT,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.starts_with(b"ekattest/v2 ") && a.ends_with(b"\0"));
            for b in &all[i + 1..] {
                assert!(!a.starts_with(b) && !b.starts_with(a));
            }
        }
    }

    #[test]
    fn challenge_signature_covers_everything_but_signer_and_signature() {
        let c = challenge();
        let base = challenge_signed_bytes("ek-a", &c).unwrap();
        assert!(base.starts_with(CHALLENGE_CONTEXT));
        let mut same = c.clone();
        same.signer.clear();
        same.signature.clear();
        assert_eq!(challenge_signed_bytes("ek-a", &same).unwrap(), base);
        assert_ne!(challenge_signed_bytes("ek-b", &c).unwrap(), base);
        let edits: [fn(&mut Challenge); 6] = [
            |c| c.session.0[0] ^= 1,
            |c| c.node = heapless::String::try_from("node-2").unwrap(),
            |c| c.transcript[5] ^= 1,
            |c| c.credential_blob[0] ^= 1,
            |c| c.encrypted_secret[1] ^= 1,
            |c| c.expires_in += 1,
        ];
        for edit in edits {
            let mut other = c.clone();
            edit(&mut other);
            assert_ne!(challenge_signed_bytes("ek-a", &other).unwrap(), base);
        }
    }

    #[test]
    fn result_binds_agent_session_transcript_and_content_but_not_signature() {
        let session = SessionId([7; 16]);
        let a = accepted();
        let base = result_signed_bytes("agent-a", &session, &T, &a).unwrap();
        assert!(base.starts_with(RESULT_CONTEXT));

        let mut resigned = a.clone();
        resigned.signature.clear();
        assert_eq!(
            result_signed_bytes("agent-a", &session, &T, &resigned).unwrap(),
            base
        );

        assert_ne!(
            result_signed_bytes("agent-b", &session, &T, &a).unwrap(),
            base
        );
        assert_ne!(
            result_signed_bytes("agent-a", &SessionId([8; 16]), &T, &a).unwrap(),
            base
        );
        assert_ne!(
            result_signed_bytes("agent-a", &session, &[0x12; 32], &a).unwrap(),
            base
        );
        let mut other = a.clone();
        other.spiffe_id = heapless::String::try_from("spiffe://td/y").unwrap();
        assert_ne!(
            result_signed_bytes("agent-a", &session, &T, &other).unwrap(),
            base
        );
        let mut other = a.clone();
        other.svid[0] = 0;
        assert_ne!(
            result_signed_bytes("agent-a", &session, &T, &other).unwrap(),
            base
        );
        assert_eq!(
            result_signed_bytes(&"x".repeat(AGENT_ID_MAX + 1), &session, &T, &a),
            Err(EncodeError::FieldTooLong {
                field: "agent id",
                max: AGENT_ID_MAX
            })
        );
    }

    #[test]
    fn largest_messages_fit() {
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
        let bytes = result_signed_bytes(&agent, &SessionId([1; 16]), &T, &a).unwrap();
        assert!(bytes.len() <= RESULT_SIGNED_MAX);

        let mut c = challenge();
        c.node.clear();
        for _ in 0..NODE_ID_MAX {
            c.node.push('n').unwrap();
        }
        c.credential_blob.resize(CREDENTIAL_BLOB_MAX, 1).unwrap();
        c.encrypted_secret.resize(ENCRYPTED_SECRET_MAX, 2).unwrap();
        c.expires_in = u32::MAX;
        let bytes = challenge_signed_bytes(&agent, &c).unwrap();
        assert!(bytes.len() <= CHALLENGE_SIGNED_MAX);
    }

    #[test]
    fn hint_is_a_sha256_prefix() {
        let digest: [u8; 32] = Sha256::digest(b"cert").into();
        assert_eq!(signer_hint(b"cert"), digest[..8]);
    }
}
