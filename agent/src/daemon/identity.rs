//! The agent's identity: the P-256 SVID key it generates per attestation, the proof of
//! possession it signs, the checks of the server's signed Result and X.509-SVID against the
//! trust bundle, and the files it writes (`svid.pem`, `svid.key`, `bundle.pem`).
//!
//! Nothing is written unless every check passes: the Result signature verifies with a P-256
//! CA of the trust bundle, the SVID is signed by that CA (ecdsa-with-SHA256) and names it as
//! issuer, certifies our key, carries exactly one URI SAN equal to the SPIFFE ID, and is
//! valid now. Files are replaced atomically (temporary file, then rename, in the data
//! folder); the key file is created with mode 0600, so it is never readable by others, not
//! even briefly. The private key is never logged.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use ekattest_protocol::limits::SIGNER_HINT_LEN;
use ekattest_protocol::msg::{Accepted, Challenge, SessionId};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::spki::{EccCurve, PublicKey, SPKI_MAX};
use zeroize::Zeroizing;

use crate::ecdsa::{self, SigningKey, VerifyingKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::x509;
use crate::attest::PopKey;
use crate::tpm::key::TpmKey;

/// Largest trust bundle file read.
pub const BUNDLE_MAX: u64 = 256 * 1024;

/// Most CA certificates taken from a trust bundle.
pub const BUNDLE_CAS_MAX: usize = 32;

/// Why an identity could not be created, checked or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The OS random source failed.
    #[error("cannot generate the SVID key: the OS random source failed ({0})")]
    Random(String),
    /// A key or certificate could not be encoded.
    #[error("cannot encode {0}")]
    Encode(&'static str),
    /// The trust bundle file could not be read.
    #[error("cannot read the trust bundle {path}: {reason}")]
    BundleRead {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The trust bundle holds no usable CA.
    #[error(
        "the trust bundle {path} has no P-256 CA certificate: it must hold the server's SVID \
         CA certificate (PEM){detail}"
    )]
    BundleEmpty {
        /// The file.
        path: PathBuf,
        /// What was skipped.
        detail: String,
    },
    /// The Result's signature is not the Challenge signer's.
    #[error(
        "the Result is not signed by the server that signed the Challenge: the message was \
         forged or altered"
    )]
    ResultSignature,
    /// The Challenge's signer certificate is not acceptable.
    #[error("the Challenge's signer certificate is not acceptable: {0}")]
    Signer(String),
    /// The Challenge does not verify.
    #[error("the Challenge is not acceptable: {0}")]
    Challenge(&'static str),
    /// The SVID does not parse.
    #[error("the SVID is not a certificate this agent can check")]
    SvidMalformed(#[source] x509::X509Error),
    /// The SVID fails a check.
    #[error("the SVID is not acceptable: {0}")]
    Svid(&'static str),
    /// The SVID names another SPIFFE ID than the Result.
    #[error("the SVID's URI SAN {svid:?} differs from the Result's SPIFFE ID {result:?}")]
    SpiffeMismatch {
        /// The SVID's URI SAN.
        svid: String,
        /// The Result's SPIFFE ID.
        result: String,
    },
    /// The SVID is not valid at this time.
    #[error(
        "the SVID is valid from {not_before} to {not_after} (unix time) but now is {now}: \
         check the device clock"
    )]
    Validity {
        /// notBefore.
        not_before: i64,
        /// notAfter.
        not_after: i64,
        /// The device's time.
        now: i64,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The agent's P-256 SVID key, new for each attestation.
pub struct SvidKey(SigningKey);

impl std::fmt::Debug for SvidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvidKey(<private>)")
    }
}

impl SvidKey {
    /// Generates a key from the OS random source.
    ///
    /// # Errors
    /// [`IdentityError::Random`] if the OS source fails.
    pub fn generate() -> Result<Self, IdentityError> {
        SigningKey::generate()
            .map(Self)
            .map_err(IdentityError::Random)
    }

    /// A key from its PKCS#8 DER (tests, and the fleet's simulated devices).
    ///
    /// # Errors
    /// [`IdentityError::Encode`] if `der` is not a PKCS#8 P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, IdentityError> {
        SigningKey::from_pkcs8(der)
            .map(Self)
            .map_err(|_| IdentityError::Encode("the SVID private key"))
    }

    /// The signing key, for [`crate::attest::answer`].
    #[must_use]
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The DER SubjectPublicKeyInfo sent as the Login's `svid_key` (91 bytes).
    ///
    /// # Errors
    /// [`IdentityError::Encode`] (not expected for a valid key).
    pub fn spki_der(&self) -> Result<Vec<u8>, IdentityError> {
        let point = self.0.public_point();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(IdentityError::Encode("the SVID public key"));
        };
        let key = PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x,
            y,
        };
        let mut buf = [0u8; SPKI_MAX];
        key.spki_der(&mut buf)
            .map(<[u8]>::to_vec)
            .map_err(|_| IdentityError::Encode("the SVID public key"))
    }

    /// The private key as PKCS#8 PEM (`svid.key`).
    ///
    /// # Errors
    /// [`IdentityError::Encode`] (not expected).
    pub fn pkcs8_pem(&self) -> Result<Zeroizing<String>, IdentityError> {
        Ok(Zeroizing::new(ecdsa::pem(
            "PRIVATE KEY",
            self.0.pkcs8_der(),
        )))
    }
}

/// The SVID key of an attestation in flight: a software key (default), or a key in the TPM
/// (`svid-key: tpm`).
#[derive(Debug)]
pub enum HeldKey {
    /// A P-256 key in the agent's memory; `svid.key` is PKCS#8.
    Software(SvidKey),
    /// A P-256 key in the TPM, certified by the AK; `svid.key` is a `TSS2 PRIVATE KEY`.
    Tpm(TpmKey),
}

impl HeldKey {
    /// The key that signs the Answer's proof of possession.
    #[must_use]
    pub fn pop_key(&self) -> PopKey<'_> {
        match self {
            Self::Software(k) => PopKey::Software(k.signing_key()),
            Self::Tpm(k) => PopKey::Tpm(k),
        }
    }

    /// The contents of `svid.key`: PKCS#8 PEM, or `TSS2 PRIVATE KEY` PEM (the form
    /// tpm2-openssl's provider and tpm2-tss-engine load).
    ///
    /// # Errors
    /// [`IdentityError::Encode`] (not expected).
    pub fn key_pem(&self) -> Result<Zeroizing<String>, IdentityError> {
        match self {
            Self::Software(k) => k.pkcs8_pem(),
            Self::Tpm(k) => k
                .tss2_pem()
                .map(Zeroizing::new)
                .map_err(|_| IdentityError::Encode("the TPM SVID key")),
        }
    }
}

/// One CA of the trust bundle.
#[derive(Debug, Clone)]
struct BundleCa {
    der: Vec<u8>,
    subject: Vec<u8>,
    key: VerifyingKey,
}

/// The server key that signs Challenges and Results and issues SVIDs: a CA of the trust
/// bundle itself, or an intermediate it issued with the signer usage. Checked once when it
/// arrives in a Challenge, and again (validity) whenever it is used.
#[derive(Debug, Clone)]
pub struct Signer {
    der: Vec<u8>,
    subject: Vec<u8>,
    key: VerifyingKey,
    not_before: i64,
    not_after: i64,
    /// A CA of the trust bundle (nothing to add to `svid.pem`'s chain).
    anchor: bool,
}

impl Signer {
    /// The hint a Login sends for this signer ([`sign::signer_hint`]).
    #[must_use]
    pub fn hint(&self) -> [u8; SIGNER_HINT_LEN] {
        sign::signer_hint(&self.der)
    }

    /// The certificate, DER.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether it is a CA of the trust bundle itself.
    #[must_use]
    pub fn is_anchor(&self) -> bool {
        self.anchor
    }

    fn valid_at(&self, now: i64) -> Result<(), IdentityError> {
        if now < self.not_before || now > self.not_after {
            return Err(IdentityError::Signer(format!(
                "valid from {} to {} (unix time) but now is {now}: check the device clock, or \
                 renew the server's signer",
                self.not_before, self.not_after
            )));
        }
        Ok(())
    }

    /// Checks `challenge` for this agent: signed by this signer over
    /// [`sign::challenge_signed_bytes`], naming `own` (the transcript of the Login this agent
    /// sent). Nothing else may reach the TPM.
    ///
    /// # Errors
    /// [`IdentityError::Challenge`] naming the check that failed.
    pub fn verify_challenge(
        &self,
        agent: &str,
        challenge: &Challenge,
        own: &Transcript,
        now: i64,
    ) -> Result<(), IdentityError> {
        self.valid_at(now)?;
        if !ecdsa::is_der_signature(&challenge.signature) {
            return Err(IdentityError::Challenge(
                "its signature is not a DER ECDSA signature",
            ));
        }
        let message = sign::challenge_signed_bytes(agent, challenge)
            .map_err(|_| IdentityError::Challenge("it cannot be encoded for this agent id"))?;
        if !self.key.verifies(&message, &challenge.signature) {
            return Err(IdentityError::Challenge(
                "its signature does not verify with the signer's key",
            ));
        }
        if challenge.transcript != *own {
            return Err(IdentityError::Challenge(
                "it was made for another Login than the one this agent sent (transcript \
                 differs): the Login was altered on the way, or the Challenge belongs to \
                 another attestation",
            ));
        }
        Ok(())
    }
}

/// The server's SVID CA certificate(s) the agent trusts.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pem: Vec<u8>,
    cas: Vec<BundleCa>,
}

impl TrustBundle {
    /// Reads the PEM file at `path`.
    ///
    /// # Errors
    /// [`IdentityError::BundleRead`] or [`IdentityError::BundleEmpty`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read = |reason: String| IdentityError::BundleRead {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
        if meta.len() > BUNDLE_MAX {
            return Err(read("larger than 256 KiB".into()));
        }
        let pem = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        Self::from_pem(pem, path)
    }

    /// Takes the P-256 CA certificates from PEM text (`path` names it in errors).
    ///
    /// # Errors
    /// [`IdentityError::BundleEmpty`] if there is none.
    pub fn from_pem(pem: Vec<u8>, path: &Path) -> Result<Self, IdentityError> {
        let mut cas = Vec::new();
        let mut skipped = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(&pem)
            .take(BUNDLE_CAS_MAX)
            .enumerate()
        {
            let n = i + 1;
            let Ok(cert) = cert else {
                skipped.push(format!("certificate {n}: bad PEM"));
                break;
            };
            match ca_key(&cert) {
                Ok(ca) => cas.push(ca),
                Err(why) => skipped.push(format!("certificate {n}: {why}")),
            }
        }
        if cas.is_empty() {
            let detail = if skipped.is_empty() {
                String::new()
            } else {
                format!(" (skipped {})", skipped.join("; "))
            };
            return Err(IdentityError::BundleEmpty {
                path: path.to_owned(),
                detail,
            });
        }
        for s in &skipped {
            log::warn!("trust bundle {}: ignoring {s}", path.display());
        }
        Ok(Self { pem, cas })
    }

    /// The file's bytes, written to `bundle.pem`.
    #[must_use]
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// How many usable CAs it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.cas.len()
    }

    /// Whether it holds none (never true for a loaded bundle).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }
}

fn ca_key(der: &[u8]) -> Result<BundleCa, String> {
    let cert = x509::parse(der).map_err(|e| e.to_string())?;
    let key = VerifyingKey::from_spki(cert.spki).ok_or("its key is not P-256")?;
    Ok(BundleCa {
        der: der.to_vec(),
        subject: cert.subject.to_vec(),
        key,
    })
}

impl TrustBundle {
    /// The bundle's certificate (DER) when it holds exactly one.
    #[must_use]
    pub fn single_anchor(&self) -> Option<&[u8]> {
        match self.cas.as_slice() {
            [one] => Some(&one.der),
            _ => None,
        }
    }

    /// The hint for the Login: the bundle's certificate when it holds exactly one (a server
    /// that signs with its root then leaves its certificate out of the Challenge).
    #[must_use]
    pub fn default_hint(&self) -> Option<[u8; SIGNER_HINT_LEN]> {
        match self.cas.as_slice() {
            [one] => Some(sign::signer_hint(&one.der)),
            _ => None,
        }
    }

    /// The signer a Challenge names: its certificate `der` (from the Challenge, or the one
    /// held for `hint` when the Challenge leaves it out), checked at unix time `now`: a CA of
    /// this bundle, or a P-256 CA certificate issued (ecdsa-with-SHA256) by one of them,
    /// valid now, with the ekattest signer usage.
    ///
    /// # Errors
    /// [`IdentityError::Signer`] naming the check that failed.
    pub fn signer(&self, der: &[u8], now: i64) -> Result<Signer, IdentityError> {
        let bad = |why: &str| IdentityError::Signer(why.to_owned());
        let cert = x509::parse(der).map_err(|e| IdentityError::Signer(e.to_string()))?;
        let key = VerifyingKey::from_spki(cert.spki).ok_or_else(|| bad("its key is not P-256"))?;
        let signer = Signer {
            der: der.to_vec(),
            subject: cert.subject.to_vec(),
            key,
            not_before: cert.not_before,
            not_after: cert.not_after,
            anchor: self.cas.iter().any(|ca| ca.der == der),
        };
        if signer.anchor {
            return Ok(signer);
        }
        if cert.signature_algorithm != x509::ECDSA_WITH_SHA256 {
            return Err(bad("it is not signed with ecdsa-with-SHA256"));
        }
        if !ecdsa::is_der_signature(cert.signature) {
            return Err(bad("its signature is not a DER ECDSA signature"));
        }
        let issued = self
            .cas
            .iter()
            .any(|ca| ca.subject == cert.issuer && ca.key.verifies(cert.tbs, cert.signature));
        if !issued {
            return Err(bad(
                "it is not issued by a CA of the trust bundle: the server's signer belongs to \
                 another trust domain, or the trust bundle is out of date",
            ));
        }
        if !cert.is_ca {
            return Err(bad("it is not a CA certificate, so it may not issue SVIDs"));
        }
        if !cert.signer_usage {
            return Err(IdentityError::Signer(format!(
                "it lacks the ekattest signer usage (extendedKeyUsage {}): issue the server's \
                 signer with `ekattestctl ca issue-signer`",
                sign::SIGNER_EKU_OID
            )));
        }
        signer.valid_at(now)?;
        Ok(signer)
    }
}

/// An identity that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The SVID, DER.
    pub svid: Vec<u8>,
    /// The intermediate that issued it (DER; empty when a CA of the trust bundle did):
    /// written after the SVID in `svid.pem`, so relying parties build the chain to the
    /// bundle.
    pub chain: Vec<u8>,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

/// Checks an Accepted Result for `agent` answering `session` of the Login with transcript
/// `transcript`, signed by `signer` (the Challenge's), whose SVID must certify `our_spki` (the
/// Login's `svid_key`), at unix time `now`.
///
/// # Errors
/// The first check that fails, as an [`IdentityError`].
#[allow(
    clippy::too_many_arguments,
    reason = "every input of the check is explicit"
)]
pub fn verify_result(
    signer: &Signer,
    agent: &str,
    session: &SessionId,
    transcript: &Transcript,
    accepted: &Accepted,
    our_spki: &[u8],
    now: i64,
) -> Result<Verified, IdentityError> {
    let message = sign::result_signed_bytes(agent, session, transcript, accepted)
        .map_err(|_| IdentityError::ResultSignature)?;
    if !signer.key.verifies(&message, &accepted.signature) {
        return Err(IdentityError::ResultSignature);
    }

    let svid = x509::parse(&accepted.svid).map_err(IdentityError::SvidMalformed)?;
    if svid.signature_algorithm != x509::ECDSA_WITH_SHA256 {
        return Err(IdentityError::Svid(
            "it is not signed with ecdsa-with-SHA256",
        ));
    }
    if !ecdsa::is_der_signature(svid.signature) {
        return Err(IdentityError::Svid(
            "its signature is not a DER ECDSA signature",
        ));
    }
    if !signer.key.verifies(svid.tbs, svid.signature) {
        return Err(IdentityError::Svid(
            "its signature does not verify with the CA that signed the Result",
        ));
    }
    if svid.issuer != signer.subject.as_slice() {
        return Err(IdentityError::Svid(
            "its issuer is not the CA that signed the Result",
        ));
    }
    if svid.is_ca {
        return Err(IdentityError::Svid("it is a CA certificate"));
    }
    let ours = PublicKey::from_spki_der(our_spki)
        .map_err(|_| IdentityError::Encode("the SVID public key"))?;
    let certified = PublicKey::from_spki_der(svid.spki)
        .map_err(|_| IdentityError::Svid("its public key does not parse"))?;
    if !certified.same_key(&ours) {
        return Err(IdentityError::Svid(
            "it certifies another public key than the one this agent sent",
        ));
    }
    let spiffe_id = accepted.spiffe_id.as_str();
    if !spiffe_id.starts_with("spiffe://") {
        return Err(IdentityError::Svid(
            "the SPIFFE ID does not start with spiffe://",
        ));
    }
    match (svid.uri_sans, svid.uri_san) {
        (1, Some(uri)) if uri == spiffe_id => {}
        (1, Some(uri)) => {
            return Err(IdentityError::SpiffeMismatch {
                svid: uri.to_owned(),
                result: spiffe_id.to_owned(),
            });
        }
        _ => return Err(IdentityError::Svid("it does not have exactly one URI SAN")),
    }
    if now < svid.not_before || now > svid.not_after {
        return Err(IdentityError::Validity {
            not_before: svid.not_before,
            not_after: svid.not_after,
            now,
        });
    }
    Ok(Verified {
        spiffe_id: spiffe_id.to_owned(),
        svid: accepted.svid.to_vec(),
        chain: if signer.anchor {
            Vec::new()
        } else {
            signer.der.clone()
        },
        not_before: svid.not_before,
        not_after: svid.not_after,
    })
}

/// File names in the data folder.
pub const SVID_PEM: &str = "svid.pem";
/// The private key file (mode 0600): PKCS#8 PEM, or `TSS2 PRIVATE KEY` PEM with
/// `svid-key: tpm`.
pub const SVID_KEY: &str = "svid.key";
/// The trust bundle copy.
pub const BUNDLE_PEM: &str = "bundle.pem";

/// The signer this device verified before, from the intermediate `svid.pem` in `dir` holds
/// after the SVID, checked again against `bundle` at unix time `now`; `None` if there is
/// none or it no longer checks out. Its hint then goes in the first Login, so a restarted
/// agent (and every `--once` run after the first) is not sent the signer's certificate
/// again.
#[must_use]
pub fn held_signer(dir: &Path, bundle: &TrustBundle, now: i64) -> Option<Signer> {
    let path = dir.join(SVID_PEM);
    let len = std::fs::metadata(&path).ok()?.len();
    if len > BUNDLE_MAX {
        return None;
    }
    let pem = std::fs::read(&path).ok()?;
    CertificateDer::pem_slice_iter(&pem)
        .skip(1)
        .take(BUNDLE_CAS_MAX)
        .filter_map(Result::ok)
        .find_map(|der| bundle.signer(&der, now).ok())
}

/// Writes `svid.key` (0600), `svid.pem` (the SVID, then the intermediate in `chain_der` if
/// any) and `bundle.pem` into `dir` (created 0700 if missing), each atomically.
///
/// # Errors
/// [`IdentityError::Write`] naming the file.
pub fn write_identity(
    dir: &Path,
    svid_der: &[u8],
    chain_der: &[u8],
    key_pem: &str,
    bundle_pem: &[u8],
) -> Result<(), IdentityError> {
    let wrap = |path: PathBuf| move |source| IdentityError::Write { path, source };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(wrap(dir.to_owned()))?;
    }
    let mut svid_pem = ecdsa::pem("CERTIFICATE", svid_der);
    if !chain_der.is_empty() {
        svid_pem.push_str(&ecdsa::pem("CERTIFICATE", chain_der));
    }
    write_atomic(dir, SVID_KEY, key_pem.as_bytes(), 0o600)?;
    write_atomic(dir, SVID_PEM, svid_pem.as_bytes(), 0o644)?;
    write_atomic(dir, BUNDLE_PEM, bundle_pem, 0o644)?;
    Ok(())
}

/// Writes `bytes` to `dir/name` through a temporary file created with `mode`, then renames.
///
/// # Errors
/// [`IdentityError::Write`] naming the file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // Make the rename durable.
        std::fs::File::open(dir).and_then(|d| d.sync_all())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|source| IdentityError::Write {
        path: target,
        source,
    })
}

#[cfg(test)]
mod tests;
