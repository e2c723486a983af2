//! The TPM-resident SVID key (`svid-key: tpm`): a P-256 ECDSA key created in the TPM under the
//! owner hierarchy's ECC storage primary, certified by the AK, and used for the Answer's proof
//! of possession; afterwards workloads use it through OpenSSL's tpm2 provider.
//!
//! - The key is fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign,
//!   not restricted, not decrypt ([`templates::SVID_KEY_P256`]). Its private half exists only
//!   wrapped by the storage primary, which is recreated from a fixed template
//!   ([`templates::SRK_P256`], the one tpm2-openssl uses for parent TPM_RH_OWNER): the
//!   wrapped blob is useless on any other TPM, or on this one after a TPM2_Clear.
//! - TPM2_Certify by the AK over `qualifyingData` = [`sign::certify_qualifying_data`] (cluster,
//!   agent id and the Login's nonce) tells the server the key lives in the TPM whose AK
//!   the credential activation proves. The TPM refuses Certify of a public-only object loaded
//!   with TPM2_LoadExternal (its authValue is unavailable), so a software key cannot be
//!   certified whatever attributes its public area claims.
//! - With three object slots and no resource manager, the storage primary is flushed as
//!   soon as the key is loaded; every handle lives in a [`super::Scope`].
//!
//! [`sign::certify_qualifying_data`]: ekattest_protocol::sign::certify_qualifying_data

use ekattest_protocol::der;
use ekattest_protocol::spki::{PublicKey, SPKI_MAX};
use ekattest_protocol::tpm::marshal::Reader;
use ekattest_protocol::tpm::public::Public;
use sha2::{Digest, Sha256};

use super::Transport;
use super::ak::{self, AkOptions};
use super::commands::{Certification, CreatedKey, RH_OWNER, Scope, Tpm};
use super::error::Error;
use super::templates;

/// `id-loadablekey` (TCG/openssl_tpm2_engine "TPM 2.0 Key Files"): a key for TPM2_Load.
const OID_LOADABLE_KEY: [u8; 6] = [0x67, 0x81, 0x05, 0x0A, 0x01, 0x03];
/// The PEM label tpm2-openssl and tpm2-tss-engine read.
pub const TSS2_PEM_LABEL: &str = "TSS2 PRIVATE KEY";

/// A key created in the TPM: the public area and the parent-wrapped private blob, with the
/// public key as a SubjectPublicKeyInfo for the Login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKey {
    blob: CreatedKey,
    spki: Vec<u8>,
}

/// A [`TpmKey`] and the AK's certification of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// The key.
    pub key: TpmKey,
    /// TPM2_Certify's attestation and AK signature.
    pub certification: Certification,
}

impl TpmKey {
    /// Wraps a created key, checking that its public area is a P-256 key.
    ///
    /// # Errors
    /// [`Error::Public`] if the public area does not parse or is not ECC P-256.
    pub fn new(blob: CreatedKey) -> Result<Self, Error> {
        let bad = |detail: String| Error::Public {
            what: "SVID key".to_owned(),
            detail,
        };
        let public = Public::decode(&blob.public).map_err(|e| bad(e.to_string()))?;
        if !matches!(public.key, PublicKey::Ecc { .. }) {
            return Err(bad("not an ECC key".into()));
        }
        let mut buf = [0u8; SPKI_MAX];
        let spki = public
            .key
            .spki_der(&mut buf)
            .map_err(|e| bad(e.to_string()))?
            .to_vec();
        Ok(Self { blob, spki })
    }

    /// The TPM2B_PUBLIC.
    #[must_use]
    pub fn public(&self) -> &[u8] {
        &self.blob.public
    }

    /// The public key as DER SubjectPublicKeyInfo (the Login's `svid_key`).
    #[must_use]
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The key as a `TSS2 PRIVATE KEY` DER: `SEQUENCE { type id-loadablekey, emptyAuth [0]
    /// TRUE, parent TPM_RH_OWNER, pubkey OCTET STRING, privkey OCTET STRING }`.
    #[must_use]
    pub fn tss2_der(&self) -> Vec<u8> {
        let (public, private) = (&self.blob.public, &self.blob.private);
        // Every field's header is at most 1 + 1 + size_of::<usize>() bytes.
        let mut der = vec![0u8; public.len() + private.len() + 96];
        let mut w = der::Writer::new(&mut der);
        let written = w
            .sequence(|w| {
                w.oid(&OID_LOADABLE_KEY)?;
                w.constructed(der::tag::context(0), |w| w.boolean(true))?;
                w.uint(&RH_OWNER.to_be_bytes())?;
                w.octet_string(public)?;
                w.octet_string(private)
            })
            .map(|()| w.len());
        // The buffer is sized for the fields above, so writing cannot run out of room.
        der.truncate(written.unwrap_or(0));
        der
    }

    /// [`TpmKey::tss2_der`] as PEM, the `svid.key` of `svid-key: tpm`.
    ///
    /// # Errors
    /// A message if PEM encoding fails (not expected).
    pub fn tss2_pem(&self) -> Result<String, String> {
        Ok(crate::ecdsa::pem(TSS2_PEM_LABEL, &self.tss2_der()))
    }
}

/// Loads the storage primary and `key` under it, flushing the primary at once; returns the
/// key's handle (tracked by `scope`).
fn load<T: Transport>(scope: &mut Scope<'_, T>, key: &TpmKey) -> Result<u32, Error> {
    let (srk, _) = scope.create_primary_tracked(RH_OWNER, &templates::SRK_P256.tpmt())?;
    let (handle, name) = scope.load_tracked(srk, &key.blob)?;
    scope.flush_now(srk)?;
    check_name(key, &name)?;
    Ok(handle)
}

/// The Name the TPM gave the loaded key must be the one its public area hashes to.
fn check_name(key: &TpmKey, name: &[u8]) -> Result<(), Error> {
    let expected = Public::decode(&key.blob.public)
        .and_then(|p| p.name())
        .map_err(|e| Error::Public {
            what: "SVID key".to_owned(),
            detail: e.to_string(),
        })?;
    if expected.as_slice() != name {
        return Err(Error::NameMismatch { what: "SVID key" });
    }
    Ok(())
}

/// Creates a P-256 signing key in the TPM and has the AK (made with `ak`) certify it with
/// `qualifying` as extraData. Flushes everything it loaded.
///
/// # Errors
/// TPM and transport errors; [`Error::NameMismatch`] if the TPM names the loaded key
/// differently from its public area.
pub fn create_certified<T: Transport>(
    tpm: &mut Tpm<T>,
    ak: &AkOptions,
    qualifying: &[u8],
) -> Result<CertifiedKey, Error> {
    create_certified_from(tpm, ak, qualifying, &templates::SVID_KEY_P256.tpmt())
}

/// [`create_certified`] from any ECC key template (TPMT_PUBLIC): how tests make genuine
/// certifications of keys the server must refuse (without fixedTPM, say).
///
/// # Errors
/// As [`create_certified`]; the TPM's own errors for a template it refuses.
pub fn create_certified_from<T: Transport>(
    tpm: &mut Tpm<T>,
    ak: &AkOptions,
    qualifying: &[u8],
    template: &[u8],
) -> Result<CertifiedKey, Error> {
    let mut scope = tpm.scope();
    let (srk, _) = scope.create_primary_tracked(RH_OWNER, &templates::SRK_P256.tpmt())?;
    let key = TpmKey::new(scope.create(srk, template)?)?;
    let (handle, name) = scope.load_tracked(srk, &key.blob)?;
    scope.flush_now(srk)?;
    check_name(&key, &name)?;
    let (ak_handle, _) = ak::create(&mut scope, ak)?;
    let certification = scope.certify(handle, ak_handle, qualifying)?;
    Ok(CertifiedKey { key, certification })
}

/// Signs SHA-256(`message`) with `key` in the TPM; returns the ECDSA signature as DER (the
/// form the Answer's `pop` carries).
///
/// # Errors
/// TPM and transport errors (`TPM_RC_INTEGRITY` from Load: the key was made by another TPM
/// or before a TPM2_Clear); [`Error::Malformed`] for a signature that is not ECDSA P-256.
pub fn sign<T: Transport>(
    tpm: &mut Tpm<T>,
    key: &TpmKey,
    message: &[u8],
) -> Result<Vec<u8>, Error> {
    let digest: [u8; 32] = Sha256::digest(message).into();
    let mut scope = tpm.scope();
    let handle = load(&mut scope, key)?;
    let signature = scope.sign_ecdsa_sha256(handle, &digest)?;
    ecdsa_der(&signature)
}

/// A TPMT_SIGNATURE (ECDSA, SHA-256, P-256) as a DER ECDSA-Sig-Value.
fn ecdsa_der(tpmt_signature: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |detail: &str| Error::Malformed {
        command: "Sign",
        detail: detail.to_owned(),
    };
    let mut r = Reader::new(tpmt_signature);
    if r.u16("sigAlg") != Ok(0x0018) || r.u16("hash") != Ok(0x000B) {
        return Err(bad("signature is not ECDSA with SHA-256"));
    }
    let sr = r
        .tpm2b("signatureR truncated")
        .map_err(|e| bad(e.field()))?;
    let ss = r
        .tpm2b("signatureS truncated")
        .map_err(|e| bad(e.field()))?;
    crate::ecdsa::der_signature(sr, ss).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss2_der_layout() {
        let key = TpmKey {
            blob: CreatedKey {
                public: vec![0xAA; 200],
                private: vec![0xBB; 5],
            },
            spki: Vec::new(),
        };
        let der = key.tss2_der();
        assert_eq!(&der[..3], &[0x30, 0x81, 0xE5]);
        assert_eq!(der.len(), 3 + 0xE5);
        // type, emptyAuth [0] TRUE, parent 0x40000001 (a positive INTEGER), pubkey, privkey
        let head = [
            0x06, 0x06, 0x67, 0x81, 0x05, 0x0A, 0x01, 0x03, 0xA0, 0x03, 0x01, 0x01, 0xFF, 0x02,
            0x04, 0x40, 0x00, 0x00, 0x01, 0x04, 0x81, 200,
        ];
        assert_eq!(&der[3..3 + head.len()], &head);
        assert_eq!(
            &der[der.len() - 7..],
            &[0x04, 0x05, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB]
        );
    }

    #[test]
    fn ecdsa_der_refuses_other_schemes() {
        assert!(ecdsa_der(&[0x00, 0x14, 0x00, 0x0B, 0x00, 0x00]).is_err());
        assert!(ecdsa_der(&[0x00, 0x18, 0x00, 0x0B, 0x00]).is_err());
        assert!(ecdsa_der(&[]).is_err());
    }
}
