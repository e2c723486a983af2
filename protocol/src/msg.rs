//! The messages agent and server exchange, and the frame codec.
//!
//! A frame is one version byte ([`VERSION`]), then the postcard encoding of an [`Uplink`]
//! (agent to server) or a [`Downlink`] (server to agent). Each direction has its own type, so
//! an agent cannot decode its own output. Every byte and text field is a `heapless`
//! container bounded by a constant in [`crate::limits`]; decoding never allocates.
//!
//! # Wire stability
//! postcard encodes structs as their fields in declaration order and enums as the variant's
//! declaration index, so **every enum here is append-only and every struct is frozen**:
//! never reorder, remove or retype a field or variant. Adding a variant at the end is
//! compatible with older receivers only for frames that do not use it; changing a struct
//! needs a new [`VERSION`]. The golden frames in `protocol/tests/golden/` fail on any change.
//!
//! This module must never panic on input, log, or allocate.

mod bounded;

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{DecodeError, EncodeError, RejectCode};
use crate::limits::{
    ATTEST_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, CREDENTIAL_BLOB_MAX, DOWNLINK_FRAME_MAX,
    EK_CERT_MAX, EK_CHAIN_MAX, ENCRYPTED_SECRET_MAX, MAC_LEN, MESSAGE_MAX, METHODS_MAX,
    NODE_ID_MAX, NONCE_LEN, SESSION_ID_LEN, SIGNATURE_MAX, SIGNER_CERT_MAX, SIGNER_HINT_LEN,
    SPIFFE_ID_MAX, SVID_KEY_MAX, SVID_MAX, TPM_PUBLIC_MAX, TPM_SIGNATURE_MAX, TRANSCRIPT_LEN,
    UPLINK_FRAME_MAX,
};

/// The protocol version: the first byte of every frame. It sits outside postcard and is
/// checked first, so a peer speaking another version shows up as
/// [`DecodeError::Version`], not as a malformed message.
///
/// Version 2 binds every message to the Login transcript (DESIGN.md section 2): the Answer
/// carries a MAC instead of the secret, Challenges are signed. There is no fallback to
/// version 1: its Answer sent the secret in clear and nothing bound the SVID key to the TPM
/// proof. A server answers a version 1 frame with [`encode_legacy_rejection`], which a
/// version 1 agent can read.
pub const VERSION: u8 = 2;

/// Versions whose `Downlink::Result(Rejected)` frame has the same layout as this version's,
/// so a server can tell an old agent, in its own version, that it must be upgraded.
pub const LEGACY_VERSIONS: &[u8] = &[1];

/// Agent to server. Append-only: postcard encodes the variant index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Uplink {
    /// Start an attestation: the agent's EK and AK.
    Login(Login),
    /// The answer to a [`Challenge`].
    Answer(Answer),
}

impl Uplink {
    /// Short name of the message kind for logs (`"login"`, `"answer"`).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Login(_) => "login",
            Self::Answer(_) => "answer",
        }
    }
}

/// Server to agent. Append-only: postcard encodes the variant index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downlink {
    /// A credential the agent's TPM must open.
    Challenge(Challenge),
    /// The end of an attestation.
    Result(Outcome),
}

impl Downlink {
    /// Short name of the message kind for logs (`"challenge"`, `"accepted"`, `"rejected"`).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Challenge(_) => "challenge",
            Self::Result(Outcome::Accepted(_)) => "accepted",
            Self::Result(Outcome::Rejected(_)) => "rejected",
        }
    }
}

/// An attestation method an agent offers (the seed's `providedMethods`). Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// TPM Endorsement Key attestation.
    TpmEk,
}

impl Method {
    /// Every method, in wire order.
    pub const ALL: &'static [Method] = &[Self::TpmEk];

    /// The method's name in configuration and logs (`"tpm_ek"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TpmEk => "tpm_ek",
        }
    }

    /// Looks a method up by its name (`"tpm_ek"`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// First message of an attestation (DESIGN.md section 2).
///
/// TPM structures travel exactly as the TPM marshals them, size prefix included; parse them
/// with [`crate::tpm::public::Public::decode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// Methods the agent offers (`[TpmEk]`).
    #[serde(with = "bounded::seq")]
    pub methods: Vec<Method, METHODS_MAX>,
    /// The EK's TPM2B_PUBLIC.
    #[serde(with = "bounded::bytes")]
    pub ek_public: Vec<u8, TPM_PUBLIC_MAX>,
    /// The EK certificate (DER, trimmed to its first DER object), if the TPM has one.
    #[serde(with = "bounded::opt_bytes")]
    pub ek_cert: Option<Vec<u8, EK_CERT_MAX>>,
    /// Certificates from the TPM's NV chain range, concatenated DER; empty if there are none.
    #[serde(with = "bounded::bytes")]
    pub ek_chain: Vec<u8, EK_CHAIN_MAX>,
    /// The AK's TPM2B_PUBLIC (its Name is what the credential is bound to).
    #[serde(with = "bounded::bytes")]
    pub ak_public: Vec<u8, TPM_PUBLIC_MAX>,
    /// The public key to issue the X.509-SVID for (DER SubjectPublicKeyInfo), if the agent
    /// wants one.
    #[serde(with = "bounded::opt_bytes")]
    pub svid_key: Option<Vec<u8, SVID_KEY_MAX>>,
    /// The AK's certification of a TPM-resident `svid_key` (TPM2_Certify); `None` for a
    /// software key.
    pub key_certify: Option<KeyCertify>,
    /// Fresh random bytes, so that every Login, and so its transcript, is unique even when
    /// every other field repeats (a TPM-resident key, a deterministic AK).
    pub nonce: [u8; NONCE_LEN],
    /// The first bytes of the SHA-256 of the signer certificate the agent already holds
    /// ([`crate::sign::signer_hint`]); a server whose signer matches leaves its certificate
    /// out of the Challenge.
    pub signer_hint: Option<[u8; SIGNER_HINT_LEN]>,
}

/// A TPM-resident SVID key certified by the AK: TPM2_Certify's output, as the TPM marshals
/// it, size prefixes included. `qualifyingData` is [`crate::sign::certify_qualifying_data`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCertify {
    /// The certified key's TPM2B_PUBLIC (its Name is what the attestation names).
    #[serde(with = "bounded::bytes")]
    pub public: Vec<u8, TPM_PUBLIC_MAX>,
    /// The TPM2B_ATTEST (`certifyInfo`).
    #[serde(with = "bounded::bytes")]
    pub attest: Vec<u8, ATTEST_MAX>,
    /// The AK's TPMT_SIGNATURE over the attestation.
    #[serde(with = "bounded::bytes")]
    pub signature: Vec<u8, TPM_SIGNATURE_MAX>,
}

/// Identifies one pending challenge on one server node: 128 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl fmt::Display for SessionId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The server's challenge: a credential made with TPM2_MakeCredential for the agent's EK and
/// AK Name (TPM 2.0 Part 1, Credential Protection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The session the answer must name.
    pub session: SessionId,
    /// The server node holding the session; the answer goes to its topic
    /// ([`crate::topic::Topics::answer`]).
    #[serde(with = "bounded::string")]
    pub node: String<NODE_ID_MAX>,
    /// TPM2B_ID_OBJECT, size prefix included: ActivateCredential's `credentialBlob`.
    #[serde(with = "bounded::bytes")]
    pub credential_blob: Vec<u8, CREDENTIAL_BLOB_MAX>,
    /// TPM2B_ENCRYPTED_SECRET, size prefix included: ActivateCredential's `secret`.
    #[serde(with = "bounded::bytes")]
    pub encrypted_secret: Vec<u8, ENCRYPTED_SECRET_MAX>,
    /// Seconds until the server discards the session.
    pub expires_in: u32,
    /// The Login transcript `T` the server computed ([`crate::sign::transcript`]): an agent
    /// acts only on a Challenge whose `T` is its own Login's.
    pub transcript: [u8; TRANSCRIPT_LEN],
    /// The signer's certificate (DER), issued by a CA of the agent's trust bundle; empty when
    /// the Login's `signer_hint` named it.
    #[serde(with = "bounded::bytes")]
    pub signer: Vec<u8, SIGNER_CERT_MAX>,
    /// The signer's ECDSA signature (DER) over [`crate::sign::challenge_signed_bytes`].
    #[serde(with = "bounded::bytes")]
    pub signature: Vec<u8, SIGNATURE_MAX>,
}

/// The agent's answer to a [`Challenge`]. It never carries the secret: only a MAC keyed with
/// it over the transcript ([`crate::sign::answer_mac`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The challenge's session.
    pub session: SessionId,
    /// `HMAC-SHA256(secret, context || T || session || node)`.
    pub mac: [u8; MAC_LEN],
    /// Proof of possession of the Login's `svid_key`: its signature over
    /// [`crate::sign::pop_signed_bytes`], if a key was sent.
    #[serde(with = "bounded::opt_bytes")]
    pub pop: Option<Vec<u8, SIGNATURE_MAX>>,
}

/// How an attestation ended. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The agent proved its TPM and receives its identity.
    Accepted(Accepted),
    /// The server refused; the agent may log in again.
    Rejected(Rejected),
}

/// A successful attestation: the agent's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The SPIFFE ID rendered from the policy's template.
    #[serde(with = "bounded::string")]
    pub spiffe_id: String<SPIFFE_ID_MAX>,
    /// The attestation attributes, each name at most once.
    #[serde(with = "bounded::seq")]
    pub attributes: Vec<Attribute, ATTRIBUTES_MAX>,
    /// The X.509-SVID (DER) for the Login's `svid_key`; empty if none was asked for.
    #[serde(with = "bounded::bytes")]
    pub svid: Vec<u8, SVID_MAX>,
    /// The server's signature over this result, so the agent can check it came from its
    /// server across an untrusted broker. The signed bytes are defined by the server.
    #[serde(with = "bounded::bytes")]
    pub signature: Vec<u8, SIGNATURE_MAX>,
}

/// A failed attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Why, as a closed code.
    pub code: RejectCode,
    /// Operator text: the code's string, optionally followed by detail.
    #[serde(with = "bounded::string")]
    pub message: String<MESSAGE_MAX>,
}

impl Rejected {
    /// A rejection whose message is `code`'s operator string.
    #[must_use]
    pub fn new(code: RejectCode) -> Self {
        Self::with_detail(code, "")
    }

    /// A rejection whose message is `"{code}: {detail}"` (just `"{code}"` if `detail` is
    /// empty), cut at a character boundary to [`MESSAGE_MAX`] bytes.
    #[must_use]
    pub fn with_detail(code: RejectCode, detail: &str) -> Self {
        let mut message = String::new();
        let separator = if detail.is_empty() { "" } else { ": " };
        for ch in code
            .as_str()
            .chars()
            .chain(separator.chars())
            .chain(detail.chars())
        {
            if message.push(ch).is_err() {
                break;
            }
        }
        Self { code, message }
    }
}

/// An attestation attribute name (all have origin `tpm_ek`). Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AttributeName {
    /// `tpm_ek.public_hash`: lowercase hex SHA-256 of the EK's DER SubjectPublicKeyInfo.
    PublicHash,
    /// `tpm_ek.serial_number`: the EK certificate's serial number, lowercase hex.
    SerialNumber,
    /// `tpm_ek.manufacturer`: TPM manufacturer from the certificate (`id:4E544300`).
    Manufacturer,
    /// `tpm_ek.model`: TPM model from the certificate.
    Model,
    /// `tpm_ek.version`: TPM firmware version from the certificate (`7.64`).
    Version,
}

impl AttributeName {
    /// Every name, in wire order.
    pub const ALL: &'static [AttributeName] = &[
        Self::PublicHash,
        Self::SerialNumber,
        Self::Manufacturer,
        Self::Model,
        Self::Version,
    ];

    /// The attribute's full name as in logs and SPIFFE ID templates (`"tpm_ek.public_hash"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PublicHash => "tpm_ek.public_hash",
            Self::SerialNumber => "tpm_ek.serial_number",
            Self::Manufacturer => "tpm_ek.manufacturer",
            Self::Model => "tpm_ek.model",
            Self::Version => "tpm_ek.version",
        }
    }

    /// The attribute's origin (the attestor type), `"tpm_ek"` for all of them.
    #[must_use]
    pub const fn origin(self) -> Method {
        Method::TpmEk
    }

    /// The name whose [`as_str`](Self::as_str) is `name`, e.g. from a SPIFFE ID template.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|n| n.as_str() == name)
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attestation attribute: a name and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Which attribute.
    pub name: AttributeName,
    /// Its value, as logged (`tpm_ek:tpm_ek.manufacturer="id:4E544300"`).
    #[serde(with = "bounded::string")]
    pub value: String<ATTRIBUTE_VALUE_MAX>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Uplink {}
    impl Sealed for super::Downlink {}
}

/// A message that travels as one frame: [`Uplink`] or [`Downlink`].
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// The largest valid frame of this direction; [`decode`] rejects longer ones unread.
    const FRAME_MAX: usize;
}

impl Message for Uplink {
    const FRAME_MAX: usize = UPLINK_FRAME_MAX;
}

impl Message for Downlink {
    const FRAME_MAX: usize = DOWNLINK_FRAME_MAX;
}

/// Writes `msg` as a frame into `out` and returns the frame (a prefix of `out`).
///
/// # Errors
/// [`EncodeError::BufferTooSmall`] if `out` is shorter than the frame; a buffer of
/// [`crate::limits::FRAME_MAX`] bytes always fits.
pub fn encode<'b, M: Message>(msg: &M, out: &'b mut [u8]) -> Result<&'b [u8], EncodeError> {
    let capacity = out.len();
    let written = match out.split_first_mut() {
        None => Err(postcard::Error::SerializeBufferFull),
        Some((first, body)) => {
            *first = VERSION;
            postcard::to_slice(msg, body).map(|body| body.len())
        }
    };
    let too_small = |msg: &M| match postcard::serialize_with_flavor(
        msg,
        postcard::ser_flavors::Size::default(),
    ) {
        Ok(size) => EncodeError::BufferTooSmall {
            capacity,
            needed: size + 1,
        },
        Err(error) => EncodeError::Serialize(error),
    };
    match written {
        Ok(len) => out.get(..len + 1).ok_or_else(|| too_small(msg)),
        Err(postcard::Error::SerializeBufferFull) => Err(too_small(msg)),
        Err(error) => Err(EncodeError::Serialize(error)),
    }
}

/// Writes a rejection as a frame of an older protocol `version` (one of
/// [`LEGACY_VERSIONS`], whose Rejected Result is laid out as in this version), so an agent
/// that speaks only that version reads why it was refused (usually
/// [`RejectCode::UnsupportedVersion`]) instead of an undecodable frame.
///
/// # Errors
/// [`EncodeError::UnsupportedVersion`] for a version not in [`LEGACY_VERSIONS`], or the
/// errors of [`encode`].
pub fn encode_legacy_rejection<'b>(
    version: u8,
    rejected: &Rejected,
    out: &'b mut [u8],
) -> Result<&'b [u8], EncodeError> {
    if !LEGACY_VERSIONS.contains(&version) {
        return Err(EncodeError::UnsupportedVersion(version));
    }
    let frame = encode(&Downlink::Result(Outcome::Rejected(rejected.clone())), out)?;
    let len = frame.len();
    let out = out.get_mut(..len).ok_or(EncodeError::BufferTooSmall {
        capacity: len,
        needed: len,
    })?;
    if let Some(first) = out.first_mut() {
        *first = version;
    }
    Ok(out)
}

/// Reads one frame of direction `M` (`decode::<Uplink>` on the server,
/// `decode::<Downlink>` on the agent).
///
/// # Errors
/// In the order checked: [`DecodeError::TooLong`] (longer than `M::FRAME_MAX`),
/// [`DecodeError::Empty`], [`DecodeError::Version`], then [`DecodeError::FieldTooLong`] or
/// [`DecodeError::Malformed`] while reading the body, and [`DecodeError::Trailing`] if bytes
/// follow the message.
pub fn decode<M: Message>(frame: &[u8]) -> Result<M, DecodeError> {
    if frame.len() > M::FRAME_MAX {
        return Err(DecodeError::TooLong {
            len: frame.len(),
            limit: M::FRAME_MAX,
        });
    }
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version {
            got: version,
            want: VERSION,
        });
    }
    let mut deserializer = postcard::Deserializer::from_bytes(body);
    let result = M::deserialize(&mut deserializer);
    let rest = deserializer.finalize().map_or(0, <[u8]>::len);
    let offset = frame.len().saturating_sub(rest);
    match result {
        Ok(msg) if rest == 0 => Ok(msg),
        Ok(_) => Err(DecodeError::Trailing { bytes: rest }),
        // Only the bounded-field adapters reach postcard's WontImplement (msg/bounded.rs).
        Err(postcard::Error::WontImplement) => Err(DecodeError::FieldTooLong { offset }),
        Err(error) => Err(DecodeError::Malformed { offset, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `format!` without alloc: writes into a heapless string.
    fn alloc_free_format(value: &impl fmt::Debug) -> String<256> {
        use core::fmt::Write;
        let mut out = String::new();
        write!(out, "{value:?}").unwrap();
        out
    }

    #[test]
    fn session_id_displays_as_lowercase_hex() {
        let mut bytes = [0u8; SESSION_ID_LEN];
        bytes[0] = 0xde;
        bytes[15] = 0x0f;
        let shown = alloc_free_format(&SessionId(bytes));
        assert_eq!(shown, "SessionId(de00000000000000000000000000000f)");
    }

    #[test]
    fn attribute_names_parse_back() {
        for name in AttributeName::ALL {
            assert_eq!(AttributeName::from_name(name.as_str()), Some(*name));
            assert!(name.as_str().starts_with("tpm_ek."));
            assert_eq!(name.origin().as_str(), "tpm_ek");
        }
        assert_eq!(AttributeName::from_name("tpm_ek.unknown"), None);
        assert_eq!(AttributeName::from_name("public_hash"), None);
    }

    #[test]
    fn legacy_rejection_is_the_current_frame_with_the_old_version_byte() {
        let rejected = Rejected::new(RejectCode::UnsupportedVersion);
        let mut current = [0u8; 300];
        let current = encode(
            &Downlink::Result(Outcome::Rejected(rejected.clone())),
            &mut current,
        )
        .unwrap();
        let mut legacy = [0u8; 300];
        let legacy = encode_legacy_rejection(1, &rejected, &mut legacy).unwrap();
        assert_eq!(legacy[0], 1);
        assert_eq!(current[0], VERSION);
        assert_eq!(legacy[1..], current[1..]);
        let mut buf = [0u8; 300];
        assert_eq!(
            encode_legacy_rejection(VERSION, &rejected, &mut buf),
            Err(EncodeError::UnsupportedVersion(VERSION))
        );
        assert_eq!(
            encode_legacy_rejection(0, &rejected, &mut buf),
            Err(EncodeError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn kinds_name_the_message() {
        let rejected = Downlink::Result(Outcome::Rejected(Rejected::new(RejectCode::Busy)));
        assert_eq!(rejected.kind(), "rejected");
        let answer = Uplink::Answer(Answer {
            session: SessionId([0; SESSION_ID_LEN]),
            mac: [0; MAC_LEN],
            pop: None,
        });
        assert_eq!(answer.kind(), "answer");
    }
}
