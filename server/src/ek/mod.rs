//! EK validation: certificate chain, TCG EK profile, allow-list, attributes.
//!
//! [`validate`] takes what a device presented ([`Evidence`]) and one policy's EK settings
//! ([`EkPolicy`]) and either returns a [`Verdict`] with the `tpm_ek` attributes or an
//! [`EkError`] whose `Display` is the operator string of the seed. The rules:
//!
//! 1. The EK certificate (DER, or a raw NV blob trimmed to its first DER object) and the EK
//!    public area (TPM2B_PUBLIC) must describe the same key when both are sent, else
//!    [`EkError::KeyMismatch`]. The key identity is the SHA-256 of the canonical DER SPKI
//!    (`ekattest_protocol::spki`), of the certificate's key or, without a certificate, of
//!    the public area.
//! 2. Chain check (caCerts configured): the EK certificate is not a CA certificate (in every
//!    mode), then a path from the EK certificate to any configured CA (see `chain`), then the
//!    TCG EK profile (see `profile`): in [`ProfileMode::Enforce`] a profile failure fails the
//!    chain check, in [`ProfileMode::Warn`] it becomes a warning.
//! 3. Allow-list check (allowedHashes configured): the key hash is listed. It needs no
//!    certificate and no profile (the seed applies the profile to CA validation only).
//! 4. Either check passing is enough; the chain check is reported when both pass, and when
//!    only the allow-list passes, identity attributes are not taken from the (unverified)
//!    certificate: only `tpm_ek.public_hash` is emitted, with a warning if a chain check
//!    failed.
//! 5. Failure: if only the chain check is configured, [`EkError::Chain`] ("failed to verify
//!    EK certificate chain") with the chain reason as its source; otherwise (allow-list alone
//!    or both) [`EkError::NotTrusted`] ("EK did not pass any configured validation check")
//!    carrying each check's reason. The daemon logs the source chain.
//!
//! Device input never panics and never allocates without bound: certificates are limited to
//! 16 KiB, the presented chain to [`CHAIN_MAX`] certificates, path search to a fixed budget.

mod attributes;
mod cert;
mod chain;
mod extensions;
mod profile;
mod signature;
mod types;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ekattest_protocol::der::nv;
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::{Public, PublicError};

pub use attributes::{Attributes, render_version};
pub use chain::{ChainError, SIGNATURE_BUDGET, STEP_BUDGET};
pub use profile::{ProfileError, ProfileIssue};
pub use types::{CERT_MAX, CertError, ChainOptions};

use cert::Cert;

/// Most certificates accepted in the device's chain (the NV chain range holds a handful).
pub const CHAIN_MAX: usize = 8;
/// Most certificates accepted in each of caCerts and intermediateCerts.
pub const TRUST_MAX: usize = 1024;

/// Parsed trust anchors (caCerts) and intermediates, ready for path building; cloning is
/// cheap (shared). Each certificate's public key is parsed by aws-lc the first time it checks
/// a signature and kept for the store's lifetime (per signature algorithm, at most 7).
#[derive(Debug, Clone)]
pub struct TrustStore {
    store: Arc<chain::Store>,
    opts: ChainOptions,
}

impl TrustStore {
    /// Parses the configured CA certificates (every one is a trust anchor, self-signed or
    /// not) and intermediates, both as DER.
    ///
    /// # Errors
    /// [`EkError::Config`] naming the list and index of a certificate that does not parse,
    /// [`EkError::TooManyCerts`] beyond [`TRUST_MAX`] per list.
    pub fn new(
        ca_der: Vec<Vec<u8>>,
        intermediate_der: Vec<Vec<u8>>,
        opts: ChainOptions,
    ) -> Result<Self, EkError> {
        let parse = |field: &'static str, list: Vec<Vec<u8>>| {
            if list.len() > TRUST_MAX {
                return Err(EkError::TooManyCerts {
                    field,
                    count: list.len(),
                    limit: TRUST_MAX,
                });
            }
            list.iter()
                .enumerate()
                .map(|(index, der)| {
                    Cert::parse(der).map_err(|source| EkError::Config {
                        field,
                        index,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let store = chain::Store {
            anchors: parse("caCerts", ca_der)?,
            intermediates: parse("intermediateCerts", intermediate_der)?,
        };
        for c in store.anchors.iter().chain(&store.intermediates) {
            c.subject.prepare();
        }
        Ok(Self {
            store: Arc::new(store),
            opts,
        })
    }

    /// The options given to [`TrustStore::new`] (informational: [`validate`] uses
    /// [`EkPolicy::chain`]).
    pub fn options(&self) -> ChainOptions {
        self.opts
    }

    /// Number of trust anchors and intermediates.
    pub fn len(&self) -> (usize, usize) {
        (self.store.anchors.len(), self.store.intermediates.len())
    }

    /// True if the store holds no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.store.anchors.is_empty() && self.store.intermediates.is_empty()
    }

    /// Descriptions of the configured certificates that are outside their validity period at
    /// `now` (for config validation warnings; paths through them fail).
    pub fn not_valid_at(&self, now: SystemTime) -> Vec<String> {
        let t = unix(now);
        let all = self.store.anchors.iter().chain(&self.store.intermediates);
        all.filter(|c| t < c.not_before || t > c.not_after)
            .map(|c| {
                format!(
                    "{} (valid {} to {})",
                    c.describe(),
                    cert::format_time(c.not_before),
                    cert::format_time(c.not_after)
                )
            })
            .collect()
    }
}

/// What a TCG EK profile failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileMode {
    /// A profile failure fails the chain check (the seed's "strict requirements").
    #[default]
    Enforce,
    /// A profile failure becomes a warning in the verdict.
    Warn,
}

/// The EK part of one policy.
#[derive(Debug, Clone, Default)]
pub struct EkPolicy {
    /// CA-based validation (caCerts + intermediateCerts); `None` if caCerts is not configured.
    pub trust: Option<TrustStore>,
    /// SHA-256 of trusted EK SubjectPublicKeyInfo DER (allowedHashes); empty if not configured.
    pub allowed_hashes: HashSet<[u8; 32]>,
    /// What a TCG EK profile failure does.
    pub profile: ProfileMode,
    /// Path builder options used by [`validate`].
    pub chain: ChainOptions,
}

/// What the device presented.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// EK certificate: DER, or the raw NV blob (padding or PC Client wrapper allowed).
    pub ek_cert: Option<&'a [u8]>,
    /// Concatenated DER chain certificates (the NV chain range), maybe padded, maybe empty.
    pub ek_chain: &'a [u8],
    /// The EK public area, decoded from its TPM2B_PUBLIC once by the caller
    /// ([`Public::decode`]; a decoding failure is [`EkError::EkPublic`]) and passed on as is,
    /// so the Login's public area is decoded once for the template check, EK validation and
    /// MakeCredential.
    pub ek_public: Option<Public<'a>>,
}

/// Which check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The certificate chained to a configured CA (and met the profile, or warn mode).
    Chain,
    /// The key hash is in allowedHashes.
    AllowList,
}

impl Check {
    /// A stable lowercase name for logs and JSON (`chain`, `allow_list`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chain => "chain",
            Self::AllowList => "allow_list",
        }
    }
}

/// A successful validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The check that passed.
    pub passed: Check,
    /// The `tpm_ek` attributes.
    pub attributes: Attributes,
    /// Profile warnings (warn mode), ignored chain certificates, unverified attributes.
    pub warnings: Vec<String>,
}

/// The reasons of each configured check when none passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailures {
    /// Why the chain check failed, if configured.
    pub chain: Option<ChainError>,
    /// Why the allow-list check failed, if configured.
    pub allow_list: Option<String>,
}

impl fmt::Display for CheckFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.chain, &self.allow_list) {
            (Some(c), Some(a)) => write!(f, "caCerts: {c}; allowedHashes: {a}"),
            (Some(c), None) => write!(f, "caCerts: {c}"),
            (None, Some(a)) => write!(f, "allowedHashes: {a}"),
            (None, None) => f.write_str("no validation check is configured"),
        }
    }
}

/// No `source`: `Display` already holds each check's reason, and a chain error's own text is
/// complete (no nested sources), so an error chain never prints a reason twice.
impl std::error::Error for CheckFailures {}

/// EK validation failures. The first two are the seed's operator strings; the reason is in
/// the error source.
#[derive(Debug, thiserror::Error)]
pub enum EkError {
    /// No configured check passed (allowedHashes configured, alone or with caCerts).
    #[error("EK did not pass any configured validation check")]
    NotTrusted {
        /// Lowercase hex key hash, if the key could be read.
        ek_hash: Option<String>,
        /// Each check's reason.
        #[source]
        reasons: Box<CheckFailures>,
    },
    /// Only caCerts is configured and the chain check failed.
    #[error("failed to verify EK certificate chain")]
    Chain {
        /// Lowercase hex key hash, if the key could be read.
        ek_hash: Option<String>,
        /// Why.
        #[source]
        source: ChainError,
    },
    /// The EK public area and the EK certificate hold different keys.
    #[error("EK public key does not match the EK certificate")]
    KeyMismatch {
        /// Hash of the public area's key.
        ek_hash: String,
        /// Hash of the certificate's key.
        cert_hash: String,
    },
    /// Neither an EK certificate nor an EK public area was sent.
    #[error("the device sent neither an EK certificate nor an EK public key")]
    NoKey,
    /// The EK public area does not decode. (The reason is in the message, not a `source`.)
    #[error("EK public area (TPM2B_PUBLIC) is malformed: {0}")]
    EkPublic(PublicError),
    /// The EK certificate's key is not a TPM 2.0 EK key type (RSA, ECC P-256/384/521); a
    /// TPM 1.2 EK (RSAES-OAEP key) says so. (The reason is in the message, not a `source`.)
    #[error("EK certificate key is not a supported EK key: {0}")]
    UnsupportedKey(PublicError),
    /// A configured certificate does not parse.
    #[error("{field}: certificate {index} is not usable: {source}")]
    Config {
        /// `caCerts` or `intermediateCerts`.
        field: &'static str,
        /// Position in the list (0-based).
        index: usize,
        /// Why.
        #[source]
        source: CertError,
    },
    /// Too many configured certificates.
    #[error("{field}: {count} certificates, more than the limit of {limit}")]
    TooManyCerts {
        /// `caCerts` or `intermediateCerts`.
        field: &'static str,
        /// Count given.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn parse_ek_cert(blob: &[u8]) -> Result<Cert, ChainError> {
    let der = nv::first_object(blob).map_err(|e| {
        ChainError::Certificate(CertError::Malformed {
            reason: format!("no DER certificate in the NV blob: {e}"),
        })
    })?;
    Cert::parse(der).map_err(ChainError::Certificate)
}

/// Splits and parses the device's chain; unusable elements are skipped with a warning.
fn parse_chain(blob: &[u8], warnings: &mut Vec<String>) -> Result<Vec<Cert>, ChainError> {
    let mut certs = Vec::new();
    for (i, obj) in nv::objects(blob).enumerate() {
        if i >= CHAIN_MAX {
            return Err(ChainError::TooManyChainCerts {
                count: i + 1,
                limit: CHAIN_MAX,
            });
        }
        match obj
            .map_err(|e| e.to_string())
            .and_then(|d| Cert::parse(d).map_err(|e| e.to_string()))
        {
            Ok(c) => certs.push(c),
            Err(e) => warnings.push(format!("device chain certificate {i} ignored: {e}")),
        }
    }
    Ok(certs)
}

fn chain_check(
    trust: &TrustStore,
    policy: &EkPolicy,
    ev: &Evidence<'_>,
    ek: Option<&Result<Cert, ChainError>>,
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<(), ChainError> {
    let ek = match ek {
        None => return Err(ChainError::NoCertificate),
        Some(Err(e)) => return Err(e.clone()),
        Some(Ok(c)) => c,
    };
    let mut notes = Vec::new();
    let presented = parse_chain(ev.ek_chain, &mut notes)?;
    chain::build(&trust.store, ek, &presented, policy.chain, now)?;
    // Only reached outside the validity period with acceptExpiredEk (else build failed).
    if now > ek.not_after {
        notes.push(format!(
            "EK certificate {} expired on {} (notAfter); accepted because acceptExpiredEk is true",
            ek.describe(),
            cert::format_time(ek.not_after)
        ));
    } else if now < ek.not_before {
        notes.push(format!(
            "EK certificate {} is not valid before {} (notBefore); accepted because \
             acceptExpiredEk is true",
            ek.describe(),
            cert::format_time(ek.not_before)
        ));
    }
    let (issues, profile_notes) = profile::check(ek);
    notes.extend(profile_notes);
    if !issues.is_empty() {
        let err = ProfileError { issues };
        match policy.profile {
            ProfileMode::Enforce => return Err(ChainError::Profile(err)),
            ProfileMode::Warn => notes.push(err.to_string()),
        }
    }
    warnings.extend(notes);
    Ok(())
}

/// Validates the device's EK against one policy at time `now`.
///
/// # Errors
/// See the module docs: [`EkError::Chain`] or [`EkError::NotTrusted`] when no check passes,
/// [`EkError::KeyMismatch`], [`EkError::NoKey`], [`EkError::EkPublic`],
/// [`EkError::UnsupportedKey`] for unusable evidence.
pub fn validate(policy: &EkPolicy, ev: &Evidence<'_>, now: SystemTime) -> Result<Verdict, EkError> {
    let now = unix(now);
    let ek_cert = ev.ek_cert.map(parse_ek_cert);
    let ek_public = ev.ek_public;
    let cert = ek_cert.as_ref().and_then(|c| c.as_ref().ok());
    let hash = match (cert, &ek_public) {
        (Some(c), public) => {
            let key = PublicKey::from_spki_der(&c.spki).map_err(EkError::UnsupportedKey)?;
            let cert_hash = key.public_hash().map_err(EkError::UnsupportedKey)?;
            if let Some(p) = public
                && !p.key.same_key(&key)
            {
                return Err(EkError::KeyMismatch {
                    ek_hash: p
                        .key
                        .public_hash()
                        .map(hex::encode)
                        .unwrap_or_else(|e| e.to_string()),
                    cert_hash: hex::encode(cert_hash),
                });
            }
            Some(cert_hash)
        }
        (None, Some(p)) => Some(p.key.public_hash().map_err(EkError::EkPublic)?),
        (None, None) if ek_cert.is_none() => return Err(EkError::NoKey),
        (None, None) => None,
    };
    let ek_hash = hash.map(hex::encode);

    let mut warnings = Vec::new();
    let chain = policy
        .trust
        .as_ref()
        .map(|t| chain_check(t, policy, ev, ek_cert.as_ref(), now, &mut warnings));
    let listed = (!policy.allowed_hashes.is_empty())
        .then(|| hash.is_some_and(|h| policy.allowed_hashes.contains(&h)));

    let passed = match (&chain, listed) {
        (Some(Ok(())), _) => Check::Chain,
        (chain, Some(true)) => {
            if let Some(Err(e)) = chain {
                warnings.push(format!(
                    "passed on allowedHashes only; EK certificate not verified ({e}), \
                     so only tpm_ek.public_hash is emitted"
                ));
            }
            Check::AllowList
        }
        (Some(Err(e)), None) => {
            return Err(EkError::Chain {
                ek_hash,
                source: e.clone(),
            });
        }
        (chain, _) => {
            let allow_list = listed.map(|_| match &ek_hash {
                Some(h) => format!("EK public key hash {h} is not listed"),
                None => "no EK public key to hash".to_owned(),
            });
            return Err(EkError::NotTrusted {
                ek_hash,
                reasons: Box::new(CheckFailures {
                    chain: chain.as_ref().and_then(|c| c.as_ref().err().cloned()),
                    allow_list,
                }),
            });
        }
    };

    let mut attributes = Attributes {
        public_hash: ek_hash.unwrap_or_default(),
        ..Attributes::default()
    };
    // Identity attributes come only from a certificate whose chain verified. On an
    // allow-list pass the certificate's contents are the device's word: anyone can mint a
    // certificate for an allow-listed key that claims another manufacturer, so only
    // public_hash is emitted (as for a TPM without a certificate).
    if let (Some(c), Check::Chain) = (cert, passed) {
        attributes.serial_number = Some(attributes::serial_hex(&c.serial));
        attributes.manufacturer = c.identity.manufacturer.clone();
        attributes.model = c.identity.model.clone();
        attributes.version = c.identity.version.as_deref().map(render_version);
    }
    Ok(Verdict {
        passed,
        attributes,
        warnings,
    })
}
