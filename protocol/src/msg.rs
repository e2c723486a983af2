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
    ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, CREDENTIAL_BLOB_MAX, DOWNLINK_FRAME_MAX, EK_CERT_MAX,
    EK_CHAIN_MAX, ENCRYPTED_SECRET_MAX, MESSAGE_MAX, METHODS_MAX, NODE_ID_MAX, SECRET_MAX,
    SESSION_ID_LEN, SIGNATURE_MAX, SPIFFE_ID_MAX, SVID_KEY_MAX, SVID_MAX, TPM_PUBLIC_MAX,
    UPLINK_FRAME_MAX,
};

/// The protocol version: the first byte of every frame. It sits outside postcard and is
/// checked first, so a peer speaking another version shows up as
/// [`DecodeError::Version`], not as a malformed message.
pub const VERSION: u8 = 1;

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
/// with [`crate::public::Public::decode`].
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
}

/// The agent's answer to a [`Challenge`]. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The challenge's session.
    pub session: SessionId,
    /// The credential ActivateCredential recovered.
    #[serde(with = "bounded::bytes")]
    pub secret: Vec<u8, SECRET_MAX>,
    /// Proof of possession of the Login's `svid_key`: a signature by that key, if one was
    /// sent. The signed bytes are defined by the server that checks it.
    #[serde(with = "bounded::opt_bytes")]
    pub pop: Option<Vec<u8, SIGNATURE_MAX>>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("session", &self.session)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("pop", &self.pop.as_ref().map(|pop| pop.len()))
            .finish()
    }
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

    #[test]
    fn answer_debug_hides_the_secret() {
        let answer = Answer {
            session: SessionId([0xab; SESSION_ID_LEN]),
            secret: Vec::from_slice(&[0x5e; 32]).unwrap(),
            pop: None,
        };
        let debug = alloc_free_format(&answer);
        assert!(debug.contains("<32 bytes>"), "{debug}");
        assert!(
            !debug.contains("94"),
            "secret byte 0x5e = 94 leaked: {debug}"
        );
        assert!(debug.contains("abababab"), "{debug}");
    }

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
    fn kinds_name_the_message() {
        let rejected = Downlink::Result(Outcome::Rejected(Rejected::new(RejectCode::Busy)));
        assert_eq!(rejected.kind(), "rejected");
        let answer = Uplink::Answer(Answer {
            session: SessionId([0; SESSION_ID_LEN]),
            secret: Vec::new(),
            pop: None,
        });
        assert_eq!(answer.kind(), "answer");
    }
}
