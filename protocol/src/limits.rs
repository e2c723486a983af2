//! Every size bound of the wire protocol, in one place.
//!
//! Each byte or text field of a message is a `heapless` container whose capacity is one of
//! these constants, so a decoder never allocates and never accepts more than the bound: a
//! frame whose field declares a longer length fails with
//! [`DecodeError::FieldTooLong`](crate::error::DecodeError::FieldTooLong). The frame bounds at the end
//! are computed from the field bounds with postcard's encoding rules (not guessed), and a test
//! encodes a message with every field full and checks it comes out at exactly that size.
//!
//! Raising a bound is wire compatible for the side that raises it (it accepts more); lowering
//! one can reject frames an older peer sends. Change both sides together.
//!
//! This module holds numbers only: no code here may depend on a message type.

/// A TPM2B_PUBLIC (the EK's or the AK's public area) as the TPM marshals it, including its
/// 2-byte size. The largest real one, an RSA-4096 key with a SHA-512 policy, is about 604 B.
pub const TPM_PUBLIC_MAX: usize = 640;

/// The EK certificate (DER), trimmed to its first DER object. Real RSA-2048 EK certificates
/// are 1.0-1.5 KB (STMicro ST33: 1169 B; swtpm: about 1017 B).
pub const EK_CERT_MAX: usize = 2048;

/// The EK certificate chain read from the TCG NV chain range 0x01C00100-0x01C001FF: the
/// concatenated DER certificates (split them with [`crate::der::objects`]).
pub const EK_CHAIN_MAX: usize = 4096;

/// The credential blob of a Challenge: a TPM2B_ID_OBJECT including its 2-byte size
/// (`size || UINT16 hmacLen || integrityHMAC || encIdentity`). The TPM caps the object at
/// 132 B (134 B with the size), so 256 leaves room.
pub const CREDENTIAL_BLOB_MAX: usize = 256;

/// The encrypted secret of a Challenge: a TPM2B_ENCRYPTED_SECRET including its 2-byte size
/// (RSA: the OAEP ciphertext, 258 B for RSA-2048, 514 B for RSA-4096; ECC: the ephemeral
/// TPMS_ECC_POINT, 102 B for P-384).
pub const ENCRYPTED_SECRET_MAX: usize = 520;

/// The secret an agent recovers with ActivateCredential and returns in an Answer: a
/// TPM2B_DIGEST's payload, at most one SHA-512 digest. Servers send 32 bytes.
pub const SECRET_MAX: usize = 64;

/// The length of a [`SessionId`](crate::msg::SessionId): 128 random bits.
pub const SESSION_ID_LEN: usize = 16;

/// The Login transcript `T`: a SHA-256 digest ([`crate::sign::transcript`]).
pub const TRANSCRIPT_LEN: usize = 32;

/// The Answer's MAC: HMAC-SHA256 ([`crate::sign::answer_mac`]).
pub const MAC_LEN: usize = 32;

/// The Login's fresh random nonce.
pub const NONCE_LEN: usize = 16;

/// The Login's signer hint: the first bytes of the SHA-256 of a signer certificate. It only
/// selects a cached certificate (the Challenge signature is what is trusted), so 64 bits
/// are plenty.
pub const SIGNER_HINT_LEN: usize = 8;

/// The signer certificate a Challenge carries (DER): an ECDSA P-256 certificate with short
/// names is 450-600 B.
pub const SIGNER_CERT_MAX: usize = 1024;

/// A TPM2B_ATTEST (TPM2_Certify's `certifyInfo`), size prefix included: magic, type,
/// qualifiedSigner and the certified Name (each up to a SHA-512 Name), extraData (up to 64
/// B), clock info and firmware version come to about 300 B.
pub const ATTEST_MAX: usize = 512;

/// A TPMT_SIGNATURE as the TPM marshals it: RSA-4096 (2 + 2 + 2 + 512 B) is the largest.
pub const TPM_SIGNATURE_MAX: usize = 520;

/// A SPIFFE ID (`spiffe://trust-domain/path`), in bytes of UTF-8. The SPIFFE specification
/// caps the whole URI at 2048 bytes.
pub const SPIFFE_ID_MAX: usize = 2048;

/// The X.509-SVID (one DER certificate) issued on acceptance.
pub const SVID_MAX: usize = 2048;

/// The public key the agent wants its SVID issued for, as a DER SubjectPublicKeyInfo
/// (P-256: 91 B; P-384: 120 B).
pub const SVID_KEY_MAX: usize = 128;

/// A signature: the server's signature over an acceptance, or the agent's proof of
/// possession of its SVID key. Sized for RSA-4096 (512 B); ECDSA DER signatures are at most
/// 72 B (P-256) or 104 B (P-384).
pub const SIGNATURE_MAX: usize = 512;

/// An attribute value in UTF-8 bytes (`tpm_ek.public_hash` is 64 hex digits; a 20-byte
/// serial number is 40; manufacturer `id:4E544300` is 11; model and version are short
/// strings from the certificate).
pub const ATTRIBUTE_VALUE_MAX: usize = 128;

/// Attributes in one acceptance: one per [`AttributeName`](crate::msg::AttributeName)
/// (five today), with room for names appended later.
pub const ATTRIBUTES_MAX: usize = 8;

/// Attestation methods an agent offers in one Login (`tpm_ek` today).
pub const METHODS_MAX: usize = 4;

/// The operator text of a rejection, in UTF-8 bytes (the reject code's string plus detail).
pub const MESSAGE_MAX: usize = 256;

/// A server node id, as named in a Challenge and used as an MQTT topic level.
pub const NODE_ID_MAX: usize = 64;

/// An agent id (default `ek-` + 32 hex digits, 35 bytes), which is also the agent's MQTT
/// client id and a topic level.
pub const AGENT_ID_MAX: usize = 64;

/// A cluster id (`c-xxxxxx`), used as a topic level.
pub const CLUSTER_ID_MAX: usize = 64;

/// The topic prefix (default `ekattest/v1`), which may span several topic levels.
pub const TOPIC_PREFIX_MAX: usize = 64;

/// A bound on every topic and topic filter [`crate::topic`] builds: the shared-subscription
/// prefix (`$share/ekattest/`, 16 B), the topic prefix, the cluster, node and agent ids, and
/// 32 bytes for fixed levels and separators (the most any topic uses is
/// `/` + `/agents/+/login`, 16 B).
pub const TOPIC_MAX: usize =
    16 + TOPIC_PREFIX_MAX + CLUSTER_ID_MAX + NODE_ID_MAX + AGENT_ID_MAX + 32;

/// Bytes postcard uses for `n` as a length prefix or integer (LEB128 varint: 7 bits a byte).
#[must_use]
pub const fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest != 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// Encoded size of a byte or text field of at most `n` bytes: its length varint, then the
/// bytes.
const fn field(n: usize) -> usize {
    varint_len(n) + n
}

/// An enum tag (the variant index as a varint): one byte while an enum has fewer than 128
/// variants, which every protocol enum does (a test checks it for the largest).
const TAG: usize = 1;
/// The `Option` tag postcard writes before an optional field.
const OPTION: usize = 1;
/// The version byte in front of the postcard body.
const VERSION: usize = 1;

/// Largest encoded `Uplink::Login` frame: version, tag, methods, EK public, optional EK
/// certificate, EK chain, AK public, optional SVID key, optional key certification (public
/// area, attestation, signature), nonce, optional signer hint, every one full.
pub const LOGIN_FRAME_MAX: usize = VERSION
    + TAG
    + varint_len(METHODS_MAX)
    + METHODS_MAX * TAG
    + field(TPM_PUBLIC_MAX)
    + OPTION
    + field(EK_CERT_MAX)
    + field(EK_CHAIN_MAX)
    + field(TPM_PUBLIC_MAX)
    + OPTION
    + field(SVID_KEY_MAX)
    + OPTION
    + field(TPM_PUBLIC_MAX)
    + field(ATTEST_MAX)
    + field(TPM_SIGNATURE_MAX)
    + NONCE_LEN
    + OPTION
    + SIGNER_HINT_LEN;

/// Largest encoded `Uplink::Answer` frame: version, tag, session id (16 raw bytes), MAC (32
/// raw bytes), optional proof-of-possession signature.
pub const ANSWER_FRAME_MAX: usize =
    VERSION + TAG + SESSION_ID_LEN + MAC_LEN + OPTION + field(SIGNATURE_MAX);

/// Largest encoded `Downlink::Challenge` frame: version, tag, session id, node id,
/// credential blob, encrypted secret, `expires_in` (a u32 varint: at most 5 bytes),
/// transcript, signer certificate, signature.
pub const CHALLENGE_FRAME_MAX: usize = VERSION
    + TAG
    + SESSION_ID_LEN
    + field(NODE_ID_MAX)
    + field(CREDENTIAL_BLOB_MAX)
    + field(ENCRYPTED_SECRET_MAX)
    + 5
    + TRANSCRIPT_LEN
    + field(SIGNER_CERT_MAX)
    + field(SIGNATURE_MAX);

/// Largest encoded `Downlink::Result(Accepted)` frame: version, two tags, SPIFFE ID,
/// attributes (each a name tag and a value), SVID, signature.
pub const ACCEPTED_FRAME_MAX: usize = VERSION
    + TAG
    + TAG
    + field(SPIFFE_ID_MAX)
    + varint_len(ATTRIBUTES_MAX)
    + ATTRIBUTES_MAX * (TAG + field(ATTRIBUTE_VALUE_MAX))
    + field(SVID_MAX)
    + field(SIGNATURE_MAX);

/// Largest encoded `Downlink::Result(Rejected)` frame: version, two tags, the reject code
/// tag, the message.
pub const REJECTED_FRAME_MAX: usize = VERSION + TAG + TAG + TAG + field(MESSAGE_MAX);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Largest agent-to-server frame; [`decode`](crate::msg::decode) of an `Uplink` rejects
/// anything longer as [`DecodeError::TooLong`](crate::error::DecodeError::TooLong).
pub const UPLINK_FRAME_MAX: usize = max(LOGIN_FRAME_MAX, ANSWER_FRAME_MAX);

/// Largest server-to-agent frame; the bound `decode` applies to a `Downlink`.
pub const DOWNLINK_FRAME_MAX: usize = max(
    CHALLENGE_FRAME_MAX,
    max(ACCEPTED_FRAME_MAX, REJECTED_FRAME_MAX),
);

/// Largest frame in either direction (a Login with every field full, 9,275 bytes): a buffer
/// of this size holds any message, and brokers must accept payloads at least this large.
pub const FRAME_MAX: usize = max(UPLINK_FRAME_MAX, DOWNLINK_FRAME_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_leb128_boundaries() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u32::MAX as usize), 5);
    }

    #[test]
    fn login_is_the_largest_frame() {
        assert_eq!(FRAME_MAX, LOGIN_FRAME_MAX);
        assert_eq!(FRAME_MAX, 9275);
        const { assert!(DOWNLINK_FRAME_MAX < FRAME_MAX) };
    }
}
