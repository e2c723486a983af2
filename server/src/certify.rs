//! Verification of a TPM-resident SVID key's certification (`Login.key_certify`, the agent's
//! `svid-key: tpm`): the AK's TPM2_Certify over the key, checked before a session is opened.
//!
//! What it proves, with the credential activation that follows: the key whose public area
//! the Login carries is loaded, with its private part, in the TPM that holds the AK, and that
//! TPM holds the EK (ActivateCredential releases the secret only there). The key's attributes
//! (fixedTPM, fixedParent, sensitiveDataOrigin) say the TPM generated it and will never
//! export it, and the TPM tells the truth about them: it refuses to load a key with fixedTPM
//! or fixedParent from outside (TPM2_LoadExternal with a private part, TPM2_Import), and
//! refuses TPM2_Certify of a public-only object (`TPM_RC_AUTH_UNAVAILABLE`), so a software key
//! cannot be certified whatever its public area claims.
//!
//! Checked, in this order (cheapest first, the signature last):
//! 1. the key's public area: ECC P-256, nameAlg SHA-256 or SHA-384, fixedTPM, fixedParent,
//!    sensitiveDataOrigin and sign set, restricted and decrypt clear, scheme NULL or ECDSA,
//!    and it is the Login's `svid_key`;
//! 2. the TPMS_ATTEST: magic `TPM_GENERATED_VALUE`, type `TPM_ST_ATTEST_CERTIFY`,
//!    qualifiedSigner = the qualified Name of the Login's AK as a primary key of the owner or
//!    endorsement hierarchy, extraData = [`sign::certify_qualifying_data`] for this cluster,
//!    agent id and the Login's nonce, attested Name = the key's Name over the bytes received;
//! 3. the AK's signature over the TPMS_ATTEST with the AK's own scheme.
//!
//! Never panics on input; allocates only the signature's DER form.
//!
//! [`sign::certify_qualifying_data`]: ekattest_protocol::sign::certify_qualifying_data

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use ekattest_protocol::der;
use ekattest_protocol::msg::KeyCertify;
use ekattest_protocol::spki::{EccCurve, PublicKey};
use ekattest_protocol::tpm::marshal::{MarshalError, Reader};
use ekattest_protocol::tpm::public::{HashAlg, ObjectType, Public, PublicError, attr};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// `TPM_GENERATED_VALUE`: the first field of every TPMS_ATTEST the TPM makes.
const TPM_GENERATED: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_CERTIFY`.
const ST_ATTEST_CERTIFY: u16 = 0x8017;
/// `TPM_RH_OWNER` and `TPM_RH_ENDORSEMENT`: the hierarchies an AK primary may live in.
const AK_HIERARCHIES: [u32; 2] = [0x4000_0001, 0x4000_000B];

const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;

/// Attributes the certified key must have, with their spec names.
const REQUIRED: [(u32, &str); 4] = [
    (attr::FIXED_TPM, "fixedTPM"),
    (attr::FIXED_PARENT, "fixedParent"),
    (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (attr::SIGN, "sign"),
];

/// Why a key certification was refused. Each variant names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertifyError {
    /// The certified key's TPM2B_PUBLIC does not parse.
    #[error("the certified key's public area is malformed")]
    KeyDecode(#[source] PublicError),
    /// A required attribute is clear: not a key the TPM made and keeps.
    #[error(
        "the certified key lacks {attribute}: the SVID key must be a fixedTPM, fixedParent, \
         sensitiveDataOrigin signing key created in the TPM"
    )]
    MissingAttribute {
        /// Spec name of the attribute.
        attribute: &'static str,
    },
    /// restricted or decrypt is set.
    #[error(
        "the certified key is restricted or can decrypt: the SVID key must be an unrestricted, signing-only key"
    )]
    Usage,
    /// Not ECC P-256 with a SHA-256/384 nameAlg and a NULL or ECDSA scheme.
    #[error(
        "the certified key is not an ECC P-256 ECDSA key with nameAlg SHA-256 or SHA-384: \
         X.509-SVIDs are issued for P-256 keys"
    )]
    KeyType,
    /// The Login has no `svid_key`, or it is another key than the certified one.
    #[error("the Login's svid_key is not the certified key's public key")]
    SvidKeyMismatch,
    /// The TPM2B_ATTEST or the TPMT_SIGNATURE does not parse.
    #[error("the key certification is malformed: {0}")]
    Malformed(&'static str),
    /// The attestation does not start with TPM_GENERATED_VALUE: not made by a TPM.
    #[error(
        "the key certification's magic is {0:#010x}, not TPM_GENERATED_VALUE: it was not produced by a TPM"
    )]
    Magic(u32),
    /// Another attestation type (a quote, a creation certificate, ...).
    #[error("the key certification has type {0:#06x}, not TPM_ST_ATTEST_CERTIFY (0x8017)")]
    Type(u16),
    /// qualifiedSigner is not the Login's AK.
    #[error(
        "the key certification was signed by another key than the Login's AK (qualifiedSigner differs)"
    )]
    Signer,
    /// extraData is not this Login's qualifying data.
    #[error(
        "the key certification's qualifyingData is not this Login's (cluster, agent id, nonce): \
         it was made for another Login"
    )]
    QualifyingData,
    /// The attested Name is not the Name of the public area sent.
    #[error("the key certification attests another key than the public area the Login carries")]
    Name,
    /// The signature's scheme is not the AK's.
    #[error(
        "the key certification's signature scheme {alg:#06x} with hash {hash:#06x} is not the AK's"
    )]
    Scheme {
        /// TPM_ALG_ID of the signature.
        alg: u16,
        /// Its hash.
        hash: u16,
    },
    /// The signature does not verify with the AK's public key.
    #[error("the key certification's signature does not verify with the Login's AK")]
    Signature,
}

/// Checks `kc` for a Login with AK `ak_public` (TPM2B_PUBLIC, already accepted by
/// [`crate::ak::check_ak`]), `svid_key` and `qualifying` (its expected extraData).
///
/// # Errors
/// [`CertifyError`] naming the first check that fails.
pub fn check(
    kc: &KeyCertify,
    ak_public: &[u8],
    svid_key: Option<&[u8]>,
    qualifying: &[u8; 32],
) -> Result<(), CertifyError> {
    let key = Public::decode(&kc.public).map_err(CertifyError::KeyDecode)?;
    check_key(&key, svid_key)?;
    let ak = Public::decode(ak_public).map_err(|_| CertifyError::Malformed("AK public area"))?;
    let attest = parse_attest(&kc.attest)?;
    if !qualified_names(&ak)?
        .iter()
        .any(|qn| qn.as_slice() == attest.signer)
    {
        return Err(CertifyError::Signer);
    }
    if attest.extra_data != qualifying {
        return Err(CertifyError::QualifyingData);
    }
    let name = key.name().map_err(CertifyError::KeyDecode)?;
    if attest.name != name.as_slice() {
        return Err(CertifyError::Name);
    }
    verify_signature(&ak, attest.body, &kc.signature)
}

fn check_key(key: &Public<'_>, svid_key: Option<&[u8]>) -> Result<(), CertifyError> {
    if let Some(&(_, attribute)) = REQUIRED.iter().find(|(bit, _)| !key.has(*bit)) {
        return Err(CertifyError::MissingAttribute { attribute });
    }
    if key.has(attr::RESTRICTED) || key.has(attr::DECRYPT) {
        return Err(CertifyError::Usage);
    }
    let p256 = matches!(
        key.key,
        PublicKey::Ecc {
            curve: EccCurve::NistP256,
            ..
        }
    );
    let scheme_ok = key.scheme.is_none_or(|s| s.alg == ALG_ECDSA);
    let name_ok = matches!(key.name_alg, HashAlg::Sha256 | HashAlg::Sha384);
    if key.object_type != ObjectType::Ecc || !p256 || !scheme_ok || !name_ok {
        return Err(CertifyError::KeyType);
    }
    let sent = svid_key
        .and_then(|der| PublicKey::from_spki_der(der).ok())
        .ok_or(CertifyError::SvidKeyMismatch)?;
    if !sent.same_key(&key.key) {
        return Err(CertifyError::SvidKeyMismatch);
    }
    Ok(())
}

/// The fields of a TPMS_ATTEST of type certify that are checked.
struct Attest<'a> {
    /// The TPMS_ATTEST bytes (what the AK signed).
    body: &'a [u8],
    signer: &'a [u8],
    extra_data: &'a [u8],
    name: &'a [u8],
}

impl From<MarshalError> for CertifyError {
    fn from(e: MarshalError) -> Self {
        Self::Malformed(e.field())
    }
}

/// Parses a TPM2B_ATTEST holding a TPMS_ATTEST of type certify.
fn parse_attest(tpm2b: &[u8]) -> Result<Attest<'_>, CertifyError> {
    let mut outer = Reader::new(tpm2b);
    let body = outer.tpm2b("TPM2B_ATTEST truncated")?;
    outer.finish("bytes after the TPM2B_ATTEST")?;
    let mut r = Reader::new(body);
    let magic = r.u32("magic missing")?;
    if magic != TPM_GENERATED {
        return Err(CertifyError::Magic(magic));
    }
    let kind = r.u16("type missing")?;
    if kind != ST_ATTEST_CERTIFY {
        return Err(CertifyError::Type(kind));
    }
    let signer = r.tpm2b("qualifiedSigner truncated")?;
    let extra_data = r.tpm2b("extraData truncated")?;
    // clockInfo (clock, resetCount, restartCount, safe) and firmwareVersion: not checked.
    r.take(8 + 4 + 4 + 1 + 8, "clockInfo or firmwareVersion truncated")?;
    let name = r.tpm2b("attested name truncated")?;
    r.tpm2b("attested qualifiedName truncated")?;
    r.finish("bytes after the TPMS_CERTIFY_INFO")?;
    Ok(Attest {
        body,
        signer,
        extra_data,
        name,
    })
}

/// The qualified Names the AK has as a primary of the owner or endorsement hierarchy:
/// nameAlg || H(hierarchy handle || Name) (TPM 2.0 Part 1, 16.6).
fn qualified_names(ak: &Public<'_>) -> Result<Vec<Vec<u8>>, CertifyError> {
    let name = ak
        .name()
        .map_err(|_| CertifyError::Malformed("AK public area"))?;
    Ok(AK_HIERARCHIES
        .iter()
        .map(|h| {
            let mut input = h.to_be_bytes().to_vec();
            input.extend_from_slice(name.as_slice());
            let mut qn = ak.name_alg.id().to_be_bytes().to_vec();
            qn.extend_from_slice(&digest(ak.name_alg, &input));
            qn
        })
        .collect())
}

fn digest(h: HashAlg, data: &[u8]) -> Vec<u8> {
    match h {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        // Names with SHA-1 never pass `check_ak`; an empty digest matches nothing.
        _ => Vec::new(),
    }
}

/// Verifies the TPMT_SIGNATURE `signature` over `message` with the AK, in the AK's scheme.
fn verify_signature(ak: &Public<'_>, message: &[u8], signature: &[u8]) -> Result<(), CertifyError> {
    let mut r = Reader::new(signature);
    let alg = r.u16("signature algorithm missing")?;
    let hash = r.u16("signature hash missing")?;
    let own = ak
        .scheme
        .filter(|s| s.alg == alg && s.hash.map(HashAlg::id) == Some(hash));
    if own.is_none() {
        return Err(CertifyError::Scheme { alg, hash });
    }
    let bad_scheme = CertifyError::Scheme { alg, hash };
    match (alg, ak.key) {
        (ALG_ECDSA, PublicKey::Ecc { curve, x, y }) => {
            let sr = r.tpm2b("signatureR truncated")?;
            let ss = r.tpm2b("signatureS truncated")?;
            r.finish("bytes after the signature")?;
            let algorithm: &sig::EcdsaVerificationAlgorithm = match (curve, hash) {
                (EccCurve::NistP256, 0x000B) => &sig::ECDSA_P256_SHA256_ASN1,
                (EccCurve::NistP256, 0x000C) => &sig::ECDSA_P256_SHA384_ASN1,
                (EccCurve::NistP256, 0x000D) => &sig::ECDSA_P256_SHA512_ASN1,
                (EccCurve::NistP384, 0x000B) => &sig::ECDSA_P384_SHA256_ASN1,
                (EccCurve::NistP384, 0x000C) => &sig::ECDSA_P384_SHA384_ASN1,
                (EccCurve::NistP384, 0x000D) => &sig::ECDSA_P384_SHA512_ASN1,
                _ => return Err(bad_scheme),
            };
            let len = curve.field_len();
            let mut point = vec![0x04];
            point.extend_from_slice(&left_pad(x, len).ok_or(CertifyError::Signature)?);
            point.extend_from_slice(&left_pad(y, len).ok_or(CertifyError::Signature)?);
            let der = ecdsa_der(sr, ss);
            UnparsedPublicKey::new(algorithm, &point)
                .verify(message, &der)
                .map_err(|_| CertifyError::Signature)
        }
        (ALG_RSASSA | ALG_RSAPSS, PublicKey::Rsa { modulus, exponent }) => {
            let s = r.tpm2b("RSA signature truncated")?;
            r.finish("bytes after the signature")?;
            let params: &sig::RsaParameters = match (alg, hash) {
                (ALG_RSASSA, 0x000B) => &sig::RSA_PKCS1_2048_8192_SHA256,
                (ALG_RSASSA, 0x000C) => &sig::RSA_PKCS1_2048_8192_SHA384,
                (ALG_RSASSA, 0x000D) => &sig::RSA_PKCS1_2048_8192_SHA512,
                (ALG_RSAPSS, 0x000B) => &sig::RSA_PSS_2048_8192_SHA256,
                (ALG_RSAPSS, 0x000C) => &sig::RSA_PSS_2048_8192_SHA384,
                (ALG_RSAPSS, 0x000D) => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return Err(bad_scheme),
            };
            let e = exponent.to_be_bytes();
            let components = RsaPublicKeyComponents {
                n: modulus,
                e: &e[..],
            };
            components
                .verify(params, message, s)
                .map_err(|_| CertifyError::Signature)
        }
        _ => Err(bad_scheme),
    }
}

/// `v` left-padded with zeros to `len` bytes; `None` if longer.
fn left_pad(v: &[u8], len: usize) -> Option<Vec<u8>> {
    let v = v.get(v.iter().take_while(|b| **b == 0).count()..)?;
    if v.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(v);
    Some(out)
}

/// ECDSA-Sig-Value `SEQUENCE { INTEGER r, INTEGER s }` for big-endian `r` and `s`.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    // Each INTEGER: tag, length (at most 1 + size_of::<usize>() bytes), sign byte, value.
    let mut out = vec![0u8; 2 * (r.len() + s.len()) + 32];
    let mut w = der::Writer::new(&mut out);
    let written = w
        .sequence(|w| {
            w.uint(r)?;
            w.uint(s)
        })
        .map(|()| w.len());
    // The buffer is sized for both integers, so writing cannot run out of room.
    out.truncate(written.unwrap_or(0));
    out
}

#[cfg(test)]
mod tests;
