//! The EK module's leaf types: what `cert`, `extensions`, `profile`, `signature` and `chain`
//! share, so that none of them needs another for its vocabulary (the module graph of `ek` is
//! a DAG: `types` <- `extensions`, `signature` <- `cert` <- `profile` <- `chain` <- `mod`).
//!
//! Plain data and constants; nothing here parses, verifies or decides.

use x509_parser::der_parser::asn1_rs::{Oid, oid};

/// Largest certificate accepted (real EK and vendor CA certificates are 0.5-2 KiB).
pub const CERT_MAX: usize = 16 * 1024;

/// Extensions a verifier may see marked critical without rejecting the certificate: the ones
/// read (see `extensions`), plus certificatePolicies (STMicro marks it critical; we require no policy) and
/// the informational ones. Anything else critical (nameConstraints, policyConstraints, vendor
/// extensions) is not understood, so the certificate is refused (RFC 5280 4.2).
pub(crate) const KNOWN_CRITICAL: &[Oid<'static>] = &[
    oid!(2.5.29.15),         // keyUsage
    oid!(2.5.29.19),         // basicConstraints
    oid!(2.5.29.17),         // subjectAltName
    oid!(2.5.29.37),         // extKeyUsage (not used for path building; EK has 2.23.133.8.1)
    oid!(2.5.29.32),         // certificatePolicies
    oid!(2.5.29.14),         // subjectKeyIdentifier
    oid!(2.5.29.35),         // authorityKeyIdentifier
    oid!(2.5.29.9),          // subjectDirectoryAttributes (TCG TPM specification attributes)
    oid!(2.5.29.31),         // cRLDistributionPoints
    oid!(1.3.6.1.5.5.7.1.1), // authorityInfoAccess
];

/// Why a certificate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The certificate exceeds [`CERT_MAX`].
    #[error("certificate of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size found.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a DER X.509 certificate.
    #[error("not an X.509 certificate: {reason}")]
    Malformed {
        /// The parser's description.
        reason: String,
    },
    /// Bytes follow the certificate.
    #[error("{bytes} unexpected bytes after the certificate")]
    Trailing {
        /// How many.
        bytes: usize,
    },
    /// A security-relevant extension (basicConstraints, keyUsage) is malformed or repeated.
    #[error("extension {name} is malformed or repeated")]
    Extension {
        /// Which extension.
        name: &'static str,
    },
}

/// The curves EK and vendor CA keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

/// The subject key type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    Ec(Curve),
    /// Anything else, by OID (and curve OID for unknown curves).
    Other(String),
}

/// The keyUsage bits the verifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct KeyUsage {
    pub(crate) key_cert_sign: bool,
    pub(crate) key_encipherment: bool,
    pub(crate) key_agreement: bool,
}

/// basicConstraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Basic {
    pub(crate) ca: bool,
    pub(crate) path_len: Option<u32>,
}

/// TPM identity fields found in the certificate's SAN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) manufacturer: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) version: Option<String>,
    /// Problems seen while reading (non-string value, conflicting repeats, malformed SAN).
    pub(crate) problems: Vec<String>,
}

impl Identity {
    pub(crate) fn note_malformed_san(&mut self) {
        self.problems
            .push("subjectAltName does not parse".to_owned());
    }
}

/// Options of the chain path builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainOptions {
    /// Accept SHA-1 signatures (legacy Infineon and Nuvoton CAs). Off by default.
    pub allow_sha1: bool,
    /// Most certificates in a path, EK certificate and anchor included (default 8).
    pub max_depth: usize,
    /// Accept an EK certificate outside its validity period (expired, or not yet valid) when
    /// its chain is otherwise valid: the issuers must still be valid now. The policy's
    /// `acceptExpiredEk`; off by default. Chips outlive their EK certificates, and the
    /// challenge proves possession of the key whatever the certificate's dates say; an
    /// accepted EK outside its validity period is reported as a verdict warning.
    pub accept_expired_ek: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            allow_sha1: false,
            max_depth: 8,
            accept_expired_ek: false,
        }
    }
}
