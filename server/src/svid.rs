//! The trust domain's certificate authority: X.509-SVIDs for agents' keys, the signed Result,
//! and the check of an agent's proof of possession of its SVID key (DESIGN.md section 5,
//! "Identity").
//!
//! [`Authority`] holds the CA certificate and its ECDSA P-256 key. It issues an X.509-SVID
//! (URI SAN = the agent's SPIFFE ID, short validity) for the P-256 key an agent sent in its
//! Login, and signs every [`Accepted`] Result over
//! [`ekattest_protocol::sign::result_signed_bytes`] so the agent can check it against its trust
//! bundle across an untrusted broker. [`check_svid_key`] and [`verify_pop`] are the
//! login-time and answer-time checks of the agent's key.
//!
//! This module never logs, never writes files and never panics on input; the CA private key
//! is never exposed (no accessor; `Debug` does not print it). Agent keys and signatures are
//! untrusted: they are parsed within fixed bounds and checked on the curve before use.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use ekattest_protocol::der;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::{SIGNER_CERT_MAX, SIGNER_HINT_LEN, SPIFFE_ID_MAX, SVID_MAX};
use ekattest_protocol::msg::{Accepted, Challenge, SessionId};
use ekattest_protocol::sign;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};

mod agent_key;
mod ca_files;
#[cfg(test)]
mod tests;

use agent_key::{AgentKey, p256_point};
pub use agent_key::{check_svid_key, verify_pop};
use ca_files::{CaKey, check_ca, first_certificate, load_key, pem_lf, spiffe_trust_domain};

/// Clock skew tolerated by relying parties: an SVID is valid from this long before issuance.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Longest trust domain name (SPIFFE ID specification, section 2.1).
const TRUST_DOMAIN_MAX: usize = 255;

/// Why the CA could not be loaded or created, an SVID not issued, a Result not signed, or an
/// agent's key or proof of possession not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// A CA file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (`CA certificate`, `CA key`).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file, with its path when known.
        what: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The CA certificate cannot be used as this trust domain's CA.
    #[error("{what}: {reason}")]
    CaCertificate {
        /// Which file, with its path when known.
        what: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The CA key is not an unencrypted ECDSA P-256 key.
    #[error("{what}: {reason}")]
    CaKey {
        /// Which file, with its path when known.
        what: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The CA key is not the key of the CA certificate.
    #[error(
        "{key} does not match {cert}: the private key's public point differs from the \
         certificate's subjectPublicKeyInfo; configure the key the certificate was issued for"
    )]
    KeyMismatch {
        /// The key file.
        key: String,
        /// The certificate file.
        cert: String,
    },
    /// A trust domain name for a new CA is not valid.
    #[error(
        "invalid trust domain {0:?}: use 1 to 255 lowercase letters, digits, '.', '-' or '_' \
         (e.g. example.org)"
    )]
    TrustDomain(String),
    /// The agent's `svid_key` is not a P-256 SubjectPublicKeyInfo with a valid point.
    #[error("Login svid_key is not usable: {0}; send the DER SubjectPublicKeyInfo of a P-256 key")]
    SvidKey(String),
    /// The SPIFFE ID to put in an SVID is not valid or not in this CA's trust domain.
    #[error("cannot issue an SVID for {id:?}: {reason}")]
    SpiffeId {
        /// The SPIFFE ID.
        id: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The requested validity is empty, out of range, or outside the CA's validity.
    #[error("cannot issue an SVID: {0}")]
    Validity(String),
    /// The issued SVID is larger than the protocol carries.
    #[error(
        "issued SVID is {len} bytes, more than the protocol limit of {max}; shorten the SPIFFE \
         ID or the CA subject"
    )]
    TooLarge {
        /// DER length.
        len: usize,
        /// [`SVID_MAX`].
        max: usize,
    },
    /// Building or signing a certificate failed.
    #[error("building the certificate failed: {0}")]
    Build(#[from] rcgen::Error),
    /// The CA key failed to sign, or randomness was unavailable.
    #[error("{0} failed in aws-lc")]
    Crypto(&'static str),
    /// The signed bytes could not be encoded (a field exceeds the protocol limits).
    #[error("cannot encode the signed bytes: {0}")]
    Encode(#[from] ekattest_protocol::EncodeError),
    /// The proof-of-possession signature does not verify.
    #[error(
        "proof of possession signature does not verify with the Login's svid_key over this \
         Login's transcript, the session and the Answer's MAC"
    )]
    BadPop,
    /// A signer certificate cannot be issued under this CA.
    #[error("cannot issue a signer: {0}")]
    Signer(String),
}

/// The trust domain's CA: its certificate (the agents' trust bundle) and its P-256 key.
pub struct Authority {
    cert_der: Vec<u8>,
    cert_pem: String,
    /// From the certificate's `spiffe://` URI SAN, if it has one.
    trust_domain: Option<String>,
    /// The certificate's validity, Unix seconds.
    not_before: i64,
    not_after: i64,
    issuer: Issuer<'static, CaKey>,
    /// Self-issued (subject = issuer): the trust domain's root, whose key is then online.
    root: bool,
    /// The certificate's pathLenConstraint, if any.
    path_len: Option<u32>,
    /// [`sign::signer_hint`] of the certificate.
    hint: [u8; SIGNER_HINT_LEN],
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("cert_der", &format_args!("<{} bytes>", self.cert_der.len()))
            .field("key", &"<elided>")
            .finish()
    }
}

impl Authority {
    /// Loads the CA from PEM files: the CA certificate and its key (PKCS#8 `PRIVATE KEY` or
    /// SEC1 `EC PRIVATE KEY`, P-256, unencrypted).
    ///
    /// # Errors
    /// [`SvidError::Read`] if a file cannot be read; otherwise as [`Authority::from_pem`],
    /// with the paths in the messages.
    pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<Self, SvidError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| SvidError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let cert = read("CA certificate", cert_pem)?;
        let key = read("CA key", key_pem)?;
        Self::from_pem_named(
            &cert,
            &key,
            &format!("CA certificate {}", cert_pem.display()),
            &format!("CA key {}", key_pem.display()),
        )
    }

    /// The CA from PEM bytes: the first `CERTIFICATE` block of `cert_pem` and the private key
    /// in `key_pem`.
    ///
    /// # Errors
    /// [`SvidError::Pem`] if a file holds no certificate or key; [`SvidError::CaCertificate`]
    /// if the certificate is malformed, not a CA (basicConstraints CA:TRUE), not allowed to
    /// sign certificates (keyUsage without keyCertSign), or its key is not P-256;
    /// [`SvidError::CaKey`] if the key is encrypted, not EC or not P-256;
    /// [`SvidError::KeyMismatch`] if the key is not the certificate's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidError> {
        Self::from_pem_named(cert_pem, key_pem, "CA certificate", "CA key")
    }

    fn from_pem_named(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_what: &str,
        key_what: &str,
    ) -> Result<Self, SvidError> {
        let cert_der = first_certificate(cert_pem, cert_what)?;
        let key = load_key(key_pem, key_what)?;
        let cert_err = |reason: String| SvidError::CaCertificate {
            what: cert_what.to_owned(),
            reason,
        };
        let (rest, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| cert_err(format!("not a valid X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(cert_err("trailing bytes after the certificate".to_owned()));
        }
        check_ca(&cert).map_err(cert_err)?;
        let point = p256_point(cert.public_key().raw).map_err(|reason| {
            cert_err(format!(
                "the certificate's key is not ECDSA P-256 ({reason}); the SVID CA must be a \
                 P-256 key (create one with `ekattestctl ca create`)"
            ))
        })?;
        if key.public_key().as_ref() != point.as_slice() {
            return Err(SvidError::KeyMismatch {
                key: key_what.to_owned(),
                cert: cert_what.to_owned(),
            });
        }
        let root = cert.subject().as_raw() == cert.issuer().as_raw();
        if !root && !has_signer_usage(&cert) {
            return Err(cert_err(format!(
                "an intermediate CA without the ekattest signer usage (extendedKeyUsage {}): \
                 agents ignore Challenges it signs; issue the server's signer with \
                 `ekattestctl ca issue-signer`",
                sign::SIGNER_EKU_OID
            )));
        }
        if cert_der.len() > SIGNER_CERT_MAX {
            return Err(cert_err(format!(
                "{} bytes, more than the {SIGNER_CERT_MAX} bytes a Challenge carries; use a \
                 certificate with shorter names (ekattestctl ca issue-signer)",
                cert_der.len()
            )));
        }
        let path_len = cert
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);
        let hint = sign::signer_hint(&cert_der);
        let trust_domain = spiffe_trust_domain(&cert);
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let signer = CaKey {
            key,
            rng: SystemRandom::new(),
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), signer)
            .map_err(|e| cert_err(format!("cannot use its subject as issuer: {e}")))?;
        let cert_pem = pem_lf("CERTIFICATE", cert_der.clone());
        Ok(Self {
            cert_der,
            cert_pem,
            trust_domain,
            not_before,
            not_after,
            issuer,
            root,
            path_len,
            hint,
        })
    }

    /// Whether the certificate is the trust domain's root (self-issued): its key then signs
    /// on this server, where an intermediate from `ekattestctl ca issue-signer` would let the
    /// root key stay offline.
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The signer certificate's notAfter (unix seconds): no SVID outlives it.
    #[must_use]
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A new self-signed CA for `trust_domain`: subject O=ekattest, CN=`<trust domain> CA`,
    /// URI SAN `spiffe://<trust domain>`, keyUsage keyCertSign and cRLSign, CA:TRUE with
    /// pathlen 0, valid from a minute ago for `validity`. Returns the authority, the
    /// certificate PEM and the key PEM (PKCS#8).
    ///
    /// # Errors
    /// [`SvidError::TrustDomain`] for an invalid name, [`SvidError::Validity`] for a validity
    /// out of range, [`SvidError::Crypto`] / [`SvidError::Build`] if key generation or
    /// signing fails.
    pub fn generate(
        trust_domain: &str,
        validity: Duration,
    ) -> Result<(Self, String, String), SvidError> {
        if !is_trust_domain(trust_domain) {
            return Err(SvidError::TrustDomain(trust_domain.to_owned()));
        }
        if validity.is_zero() {
            return Err(SvidError::Validity("the CA validity is zero".to_owned()));
        }
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| SvidError::Crypto("P-256 key generation"))?;
        let pkcs8 = key
            .to_pkcs8v1()
            .map_err(|_| SvidError::Crypto("PKCS#8 encoding of the CA key"))?;
        let key_pem = pem_lf("PRIVATE KEY", pkcs8.as_ref().to_vec());
        let signer = CaKey {
            key,
            rng: SystemRandom::new(),
        };

        let now = unix_secs(SystemTime::now())?;
        let mut params = CertificateParams::default();
        let not_after = now.checked_add(secs(validity)?).ok_or_else(|| {
            SvidError::Validity(format!("CA validity {validity:?} is out of range"))
        })?;
        set_validity(&mut params, now.saturating_sub(secs(BACKDATE)?), not_after)?;
        params.serial_number = Some(random_serial(&signer.rng)?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ekattest");
        dn.push(DnType::CommonName, format!("{trust_domain} CA"));
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        // pathlen 1: the root certifies the server's signer (an intermediate), which issues
        // the SVIDs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&signer)?;
        let cert_pem = cert.pem();
        let authority = Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok((authority, cert_pem, key_pem))
    }

    /// PEM of the CA certificate: what agents configure as their trust bundle.
    #[must_use]
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    /// DER of the CA certificate.
    #[must_use]
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The trust domain named by the CA certificate's `spiffe://` URI SAN, if it has one;
    /// when it does, [`Authority::issue`] only issues SPIFFE IDs in it.
    #[must_use]
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// An X.509-SVID (DER) for the agent's key `spki_der` (a P-256 SubjectPublicKeyInfo):
    /// random 128-bit serial, issuer = CA subject, empty subject, URI SAN = `spiffe_id`
    /// (critical), keyUsage digitalSignature (critical), extKeyUsage serverAuth and
    /// clientAuth, CA:FALSE, authority and subject key identifiers, ECDSA-SHA256. Valid from
    /// [`BACKDATE`] before `now` until `now + ttl`, clamped to the CA's own validity.
    ///
    /// # Errors
    /// [`SvidError::SvidKey`] for an unusable key, [`SvidError::SpiffeId`] for an invalid
    /// SPIFFE ID or one outside the CA's trust domain, [`SvidError::Validity`] for a zero or
    /// out-of-range `ttl` or an expired CA, [`SvidError::TooLarge`] if the DER exceeds
    /// [`SVID_MAX`].
    pub fn issue(
        &self,
        spki_der: &[u8],
        spiffe_id: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Vec<u8>, SvidError> {
        let key = AgentKey(p256_point(spki_der).map_err(SvidError::SvidKey)?);
        self.check_spiffe_id(spiffe_id)?;
        if ttl.is_zero() {
            return Err(SvidError::Validity("the SVID TTL is zero".to_owned()));
        }
        let now = unix_secs(now)?;
        let not_after = now
            .checked_add(secs(ttl)?)
            .ok_or_else(|| SvidError::Validity(format!("SVID TTL {ttl:?} is out of range")))?
            .min(self.not_after);
        if not_after <= now {
            return Err(SvidError::Validity(format!(
                "the CA certificate expired at {} (Unix time); renew it (ekattestctl ca create) \
                 and distribute the new trust bundle",
                self.not_after
            )));
        }
        let not_before = now.saturating_sub(secs(BACKDATE)?).max(self.not_before);

        let mut params = CertificateParams::default();
        set_validity(&mut params, not_before, not_after)?;
        params.serial_number = Some(random_serial(&self.issuer.key().rng)?);
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let der = params.signed_by(&key, &self.issuer)?.der().to_vec();
        if der.len() > SVID_MAX {
            return Err(SvidError::TooLarge {
                len: der.len(),
                max: SVID_MAX,
            });
        }
        Ok(der)
    }

    /// Signs with the CA key: DER ECDSA P-256 SHA-256.
    fn sign(&self, bytes: &[u8], what: &'static str) -> Result<Vec<u8>, SvidError> {
        let ca = self.issuer.key();
        ca.key
            .sign(&ca.rng, bytes)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SvidError::Crypto(what))
    }

    /// Fills `challenge.signer` (this certificate, unless `login_hint` says the agent holds
    /// it) and `challenge.signature` (over [`sign::challenge_signed_bytes`]).
    ///
    /// # Errors
    /// [`SvidError::Encode`] if `agent` exceeds the protocol limit, [`SvidError::Crypto`] if
    /// signing fails.
    pub fn sign_challenge(
        &self,
        agent: &str,
        login_hint: Option<[u8; SIGNER_HINT_LEN]>,
        challenge: &mut Challenge,
    ) -> Result<(), SvidError> {
        challenge.signer.clear();
        if login_hint != Some(self.hint) {
            challenge.signer = heapless::Vec::from_slice(&self.cert_der)
                .map_err(|_| SvidError::Crypto("fitting the signer certificate"))?;
        }
        let bytes = sign::challenge_signed_bytes(agent, challenge)?;
        let signature = self.sign(&bytes, "signing the Challenge")?;
        challenge.signature = heapless::Vec::from_slice(&signature)
            .map_err(|_| SvidError::Crypto("fitting the Challenge signature"))?;
        Ok(())
    }

    /// Fills `accepted.signature` with the CA key's DER ECDSA P-256 SHA-256 signature over
    /// [`sign::result_signed_bytes`]`(agent, session, transcript, accepted)`.
    ///
    /// # Errors
    /// [`SvidError::Encode`] if `agent` exceeds the protocol limit, [`SvidError::Crypto`] if
    /// signing fails.
    pub fn sign_result(
        &self,
        agent: &str,
        session: &SessionId,
        transcript: &sign::Transcript,
        accepted: &mut Accepted,
    ) -> Result<(), SvidError> {
        let bytes = sign::result_signed_bytes(agent, session, transcript, accepted)?;
        let signature = self.sign(&bytes, "signing the Result")?;
        accepted.signature = heapless::Vec::from_slice(&signature)
            .map_err(|_| SvidError::Crypto("fitting the Result signature"))?;
        Ok(())
    }

    /// A signer for this (root) CA: a new P-256 intermediate CA (O=ekattest, CN=`<trust
    /// domain> signer`, URI SAN `spiffe://<trust domain>`, CA:TRUE pathlen 0, keyUsage
    /// digitalSignature, keyCertSign and cRLSign, extendedKeyUsage serverAuth, clientAuth and
    /// [`sign::SIGNER_EKU_OID`]) valid for `validity` (clamped to this CA's). The server
    /// signs SVIDs, Challenges and Results with it; this CA's key can then stay offline.
    /// Returns the certificate PEM and the key PEM (PKCS#8).
    ///
    /// # Errors
    /// [`SvidError::Signer`] if this CA may not certify a CA (pathlen 0, made by an older
    /// `ca create`) or has expired; [`SvidError::Crypto`] / [`SvidError::Build`] if key
    /// generation or signing fails.
    pub fn issue_signer(&self, validity: Duration) -> Result<(String, String), SvidError> {
        if self.path_len == Some(0) {
            return Err(SvidError::Signer(
                "the CA has pathLenConstraint 0, so it may not certify a signer CA below it; \
                 create a new root with `ekattestctl ca create` (pathlen 1) and distribute it \
                 as the agents' trust bundle"
                    .to_owned(),
            ));
        }
        let now = unix_secs(SystemTime::now())?;
        let not_after = now
            .checked_add(secs(validity)?)
            .ok_or_else(|| SvidError::Validity(format!("validity {validity:?} is out of range")))?
            .min(self.not_after);
        if not_after <= now {
            return Err(SvidError::Signer(format!(
                "the CA expired at {} (Unix time); create a new one",
                self.not_after
            )));
        }
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| SvidError::Crypto("P-256 key generation"))?;
        let pkcs8 = key
            .to_pkcs8v1()
            .map_err(|_| SvidError::Crypto("PKCS#8 encoding of the signer key"))?;
        let key_pem = pem_lf("PRIVATE KEY", pkcs8.as_ref().to_vec());
        let signer_key = CaKey {
            key,
            rng: SystemRandom::new(),
        };
        let td = self.trust_domain.as_deref().unwrap_or("ekattest");
        let mut params = CertificateParams::default();
        set_validity(
            &mut params,
            now.saturating_sub(secs(BACKDATE)?).max(self.not_before),
            not_after,
        )?;
        params.serial_number = Some(random_serial(&signer_key.rng)?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ekattest");
        dn.push(DnType::CommonName, format!("{td} signer"));
        params.distinguished_name = dn;
        if let Some(td) = &self.trust_domain {
            params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into()?)];
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.custom_extensions = vec![signer_eku()];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&signer_key, &self.issuer)?;
        let cert_pem = cert.pem();
        // Check it loads as this server would load it.
        Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok((cert_pem, key_pem))
    }

    /// `spiffe://<trust domain>/<path>` with a valid path, in this CA's trust domain if the
    /// CA names one.
    fn check_spiffe_id(&self, id: &str) -> Result<(), SvidError> {
        let err = |reason: String| SvidError::SpiffeId {
            id: id.to_owned(),
            reason,
        };
        if id.len() > SPIFFE_ID_MAX {
            return Err(err(format!("longer than {SPIFFE_ID_MAX} bytes")));
        }
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return Err(err(
                "not a spiffe:// URI; configure the server's trust domain so SPIFFE IDs are \
                 complete"
                    .to_owned(),
            ));
        };
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !is_trust_domain(td) {
            return Err(err(format!("invalid trust domain {td:?}")));
        }
        ekattest_protocol::spiffe::validate_path(path)
            .map_err(|reason| err(format!("invalid path {path:?}: {reason}")))?;
        match &self.trust_domain {
            Some(ours) if ours != td => Err(err(format!(
                "trust domain {td:?} is not the CA's trust domain {ours:?}; configure the \
                 server's trust domain to match the CA (or use the CA of {td:?})"
            ))),
            _ => Ok(()),
        }
    }
}

/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1), OID contents.
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth (1.3.6.1.5.5.7.3.2), OID contents.
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// The signer's extendedKeyUsage (2.5.29.37, not critical): serverAuth and clientAuth (so
/// relying parties that check EKU along the chain accept the SVIDs below it) and
/// [`sign::SIGNER_EKU_OID`]. Written with [`der::Writer`]: rcgen takes OID arcs as u64 and a
/// UUID OID's last arc is 128 bits.
fn signer_eku() -> rcgen::CustomExtension {
    let mut buf = [0u8; 128];
    let mut w = der::Writer::new(&mut buf);
    let written = w.sequence(|w| {
        w.oid(SERVER_AUTH)?;
        w.oid(CLIENT_AUTH)?;
        w.oid(sign::SIGNER_EKU_OID_DER)
    });
    // Three OIDs of at most 30 bytes each always fit.
    let value = match written {
        Ok(()) => w.finish().to_vec(),
        Err(_) => Vec::new(),
    };
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], value)
}

/// Whether `cert`'s extendedKeyUsage lists [`sign::SIGNER_EKU_OID`].
fn has_signer_usage(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    cert.extended_key_usage().ok().flatten().is_some_and(|eku| {
        eku.value
            .other
            .iter()
            .any(|oid| oid.as_bytes() == sign::SIGNER_EKU_OID_DER)
    })
}

/// A SPIFFE trust domain name: 1 to 255 of `[a-z0-9._-]`.
fn is_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= TRUST_DOMAIN_MAX
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// 128 random bits, not all zero (DER encodes them as a positive INTEGER).
fn random_serial(rng: &SystemRandom) -> Result<SerialNumber, SvidError> {
    let mut bytes = [0u8; 16];
    while bytes == [0; 16] {
        rng.fill(&mut bytes)
            .map_err(|_| SvidError::Crypto("drawing a serial number"))?;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Seconds since the Unix epoch.
fn unix_secs(t: SystemTime) -> Result<i64, SvidError> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| SvidError::Validity(format!("time {t:?} is out of range")))
}

/// A duration in whole seconds as i64.
fn secs(d: Duration) -> Result<i64, SvidError> {
    i64::try_from(d.as_secs())
        .map_err(|_| SvidError::Validity(format!("duration {d:?} is out of range")))
}

/// Sets `params`' validity from Unix seconds (through x509-parser, which shares rcgen's date
/// type, so no extra dependency is needed).
fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), SvidError> {
    let date = |unix: i64| {
        x509_parser::time::ASN1Time::from_timestamp(unix)
            .map(|t| t.to_datetime())
            .map_err(|_| SvidError::Validity(format!("Unix time {unix} is out of range")))
    };
    params.not_before = date(not_before)?;
    params.not_after = date(not_after)?;
    Ok(())
}
