//! TPM2_MakeCredential in software (TPM 2.0 Part 1, 24 "Credential Protection"): wraps a
//! challenge secret so that only the TPM holding both the EK and the AK can recover it with
//! TPM2_ActivateCredential.
//!
//! ```text
//! seed          RSA: |H| random bytes, sent as RSA-OAEP(H, label "IDENTITY\0")
//!               ECC: KDFe(H, Z, "IDENTITY", Qe.x, Qek.x), sent as the ephemeral point Qe
//! symKey        = KDFa(H, seed, "STORAGE", AK Name, "", EK symmetric keyBits)
//! hmacKey       = KDFa(H, seed, "INTEGRITY", "", "", |H| * 8)
//! encIdentity   = AES-CFB(symKey, IV 0, UINT16(len) || credential)
//! integrityHMAC = HMAC_H(hmacKey, encIdentity || AK Name)
//! blob          = UINT16(size) || UINT16(|H|) || integrityHMAC || encIdentity
//! ```
//! H is the EK's nameAlg and the symmetric algorithm the EK's; only sane EK templates are
//! accepted ([`check_ek`]). All crypto is aws-lc-rs on the hot path. Randomness is injected
//! ([`Random`]): [`SystemRandom`] in production, [`FixedRandom`] to reproduce the vectors in
//! `testdata/make-credential` byte for byte.
//!
//! This module never logs, never returns or stores the seed outside [`Trace`], and never
//! panics on any EK or AK input.

mod ecc;
mod kdf;
mod random;
mod rsa;

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use ekattest_protocol::spki::{EccCurve, PublicKey};
use ekattest_protocol::tpm::public::alg;
use ekattest_protocol::tpm::public::{HashAlg, ObjectType, Public, PublicError, attr};

pub use random::{FixedRandom, Random, RandomError, SystemRandom};

use kdf::MAX_DIGEST;

/// Magic and version at the start of tpm2-tools' credential file.
const TPM2_TOOLS_HEADER: [u8; 8] = [0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];

/// What MakeCredential produces: the two parameters of TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `credentialBlob`: TPM2B_ID_OBJECT including its UINT16 size.
    pub blob: Vec<u8>,
    /// `secret`: TPM2B_ENCRYPTED_SECRET including its UINT16 size (RSA: the OAEP ciphertext;
    /// ECC: a TPMS_ECC_POINT).
    pub secret: Vec<u8>,
}

impl Credential {
    /// tpm2-tools' credential file (`tpm2_makecredential -o`, `tpm2_activatecredential -i`):
    /// `BADCC0DE || 00000001 || TPM2B_ID_OBJECT || TPM2B_ENCRYPTED_SECRET`.
    #[must_use]
    pub fn to_tpm2_tools_file(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.blob.len() + self.secret.len());
        out.extend_from_slice(&TPM2_TOOLS_HEADER);
        out.extend_from_slice(&self.blob);
        out.extend_from_slice(&self.secret);
        out
    }
}

/// Intermediate values of one MakeCredential, for known-answer tests. It holds the seed and
/// keys: never log it (its `Debug` prints nothing).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The seed (|H| bytes).
    pub seed: Vec<u8>,
    /// ECC only: Z, the x coordinate of d_e * Q_EK.
    pub ecdh_z: Vec<u8>,
    /// KDFa "STORAGE" output: the AES key.
    pub sym_key: Vec<u8>,
    /// KDFa "INTEGRITY" output: the HMAC key.
    pub hmac_key: Vec<u8>,
    /// AES-CFB ciphertext of `UINT16(len) || credential`.
    pub enc_identity: Vec<u8>,
    /// HMAC over `encIdentity || AK Name`.
    pub integrity_hmac: Vec<u8>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trace(..)")
    }
}

/// Why MakeCredential refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The EK public area is not an endorsement key template this server supports.
    #[error("EK public area is not a supported endorsement key: {reason}")]
    EkTemplate {
        /// The requirement that failed.
        reason: &'static str,
    },
    /// The EK's key material is unusable.
    #[error("invalid EK public key")]
    EkKey(#[source] PublicError),
    /// The AK Name is not `nameAlg || digest` for a known hash.
    #[error("AK name of {len} bytes is not a TPM object Name (nameAlg then its digest)")]
    AkName {
        /// Length received.
        len: usize,
    },
    /// The credential is longer than the EK's name-algorithm digest.
    #[error("credential of {len} bytes is too long: at most {max} bytes for this EK")]
    SecretTooLong {
        /// Length given.
        len: usize,
        /// |H| of the EK's nameAlg.
        max: usize,
    },
    /// The credential is empty.
    #[error("credential is empty")]
    EmptySecret,
    /// No random bytes.
    #[error("MakeCredential failed: no random bytes")]
    Random(#[source] RandomError),
    /// A cryptographic operation failed (for example an EK point not on its curve).
    #[error("MakeCredential failed in {op}")]
    Crypto {
        /// The step that failed.
        op: &'static str,
    },
}

/// The EK template parameters MakeCredential uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EkParams {
    /// H: the EK's nameAlg (SHA-256 or SHA-384).
    pub hash: HashAlg,
    /// AES key length in bytes (16 or 32).
    pub sym_key_len: usize,
}

fn template(reason: &'static str) -> CredentialError {
    CredentialError::EkTemplate { reason }
}

/// Checks that `ek` is a sane endorsement key template: a restricted decryption (storage) key
/// with fixedTPM, fixedParent and sensitiveDataOrigin, not a signing key; nameAlg SHA-256 or
/// SHA-384; symmetric AES-128 or AES-256 in CFB mode; NULL scheme (and NULL KDF for ECC);
/// RSA-2048 or RSA-3072 with exponent 65537, or ECC P-256 or P-384. This covers the TCG EK
/// templates L-1, L-2, H-2 to H-7 and swtpm's.
///
/// # Errors
/// [`CredentialError::EkTemplate`] naming the first failed requirement.
pub fn check_ek(ek: &Public<'_>) -> Result<EkParams, CredentialError> {
    let need = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::RESTRICTED
        | attr::DECRYPT;
    if !ek.has(need) {
        return Err(template(
            "attributes must include fixedTPM, fixedParent, sensitiveDataOrigin, restricted and decrypt",
        ));
    }
    if ek.has(attr::SIGN) {
        return Err(template(
            "the sign attribute must be clear on a storage key",
        ));
    }
    let hash = match ek.name_alg {
        h @ (HashAlg::Sha256 | HashAlg::Sha384) => h,
        HashAlg::Sha1 | HashAlg::Sha512 => {
            return Err(template("nameAlg must be SHA-256 or SHA-384"));
        }
    };
    let sym_key_len = match ek.symmetric {
        Some(s) if s.alg == alg::AES && s.mode == alg::CFB && s.key_bits == 128 => 16,
        Some(s) if s.alg == alg::AES && s.mode == alg::CFB && s.key_bits == 256 => 32,
        _ => return Err(template("symmetric must be AES-128-CFB or AES-256-CFB")),
    };
    if ek.scheme.is_some() || ek.kdf.is_some() {
        return Err(template("scheme and kdf must be NULL on a storage key"));
    }
    match (ek.object_type, ek.key) {
        (ObjectType::Rsa, PublicKey::Rsa { modulus, exponent }) => {
            if !matches!(ek.rsa_bits, 2048 | 3072) || modulus.first().is_none_or(|&b| b < 0x80) {
                return Err(template("RSA key must be 2048 or 3072 bits"));
            }
            if exponent != 65537 {
                return Err(template("RSA exponent must be 65537"));
            }
        }
        (ObjectType::Ecc, PublicKey::Ecc { curve, .. }) => {
            if !matches!(curve, EccCurve::NistP256 | EccCurve::NistP384) {
                return Err(template("ECC curve must be NIST P-256 or P-384"));
            }
        }
        _ => return Err(template("object type and key do not match")),
    }
    Ok(EkParams { hash, sym_key_len })
}

/// TPM2_MakeCredential: wraps `secret` (1 to |H| bytes) for the TPM holding `ek` and the AK
/// whose Name is `ak_name`. Randomness comes from `rng`: with [`SystemRandom`] the RSA-OAEP
/// seed and the ECC ephemeral key are drawn inside aws-lc-rs (fast path); any other source is
/// asked for the seed then the OAEP seed (RSA) or for the ephemeral scalar (ECC).
///
/// # Errors
/// [`CredentialError`]: unsupported EK template, malformed AK Name, bad secret length,
/// randomness or crypto failure.
pub fn make_credential<R: Random + ?Sized>(
    ek: &Public<'_>,
    ak_name: &[u8],
    secret: &[u8],
    rng: &mut R,
) -> Result<Credential, CredentialError> {
    make(ek, ak_name, secret, rng, None)
}

/// As [`make_credential`], also returning the intermediate values (known-answer tests).
///
/// # Errors
/// As [`make_credential`].
pub fn make_credential_traced<R: Random + ?Sized>(
    ek: &Public<'_>,
    ak_name: &[u8],
    secret: &[u8],
    rng: &mut R,
) -> Result<(Credential, Trace), CredentialError> {
    let mut trace = Trace::default();
    let credential = make(ek, ak_name, secret, rng, Some(&mut trace))?;
    Ok((credential, trace))
}

fn check_ak_name(ak_name: &[u8]) -> Result<(), CredentialError> {
    let bad = CredentialError::AkName { len: ak_name.len() };
    let [a, b, digest @ ..] = ak_name else {
        return Err(bad);
    };
    match HashAlg::from_id(u16::from_be_bytes([*a, *b])) {
        Some(h) if h.digest_len() == digest.len() => Ok(()),
        _ => Err(bad),
    }
}

fn with_size(body: &[u8]) -> Result<Vec<u8>, CredentialError> {
    let size =
        u16::try_from(body.len()).map_err(|_| CredentialError::Crypto { op: "size field" })?;
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn make<R: Random + ?Sized>(
    ek: &Public<'_>,
    ak_name: &[u8],
    secret: &[u8],
    rng: &mut R,
    trace: Option<&mut Trace>,
) -> Result<Credential, CredentialError> {
    let params = check_ek(ek)?;
    check_ak_name(ak_name)?;
    let h_len = params.hash.digest_len();
    if secret.is_empty() {
        return Err(CredentialError::EmptySecret);
    }
    if secret.len() > h_len {
        return Err(CredentialError::SecretTooLong {
            len: secret.len(),
            max: h_len,
        });
    }
    let no_hash = CredentialError::Crypto {
        op: "hash selection",
    };
    let hmac_alg = kdf::hmac_alg(params.hash).ok_or(no_hash.clone())?;
    let digest_alg = kdf::digest_alg(params.hash).ok_or(no_hash)?;

    // Secret sharing: the seed and how the EK receives it.
    let mut seed = [0u8; MAX_DIGEST];
    let seed = &mut seed[..h_len];
    let mut z = Vec::new();
    let encrypted = match ek.key {
        PublicKey::Rsa { .. } => {
            rng.fill(seed).map_err(CredentialError::Random)?;
            if rng.is_system() {
                rsa::encrypt_system(&ek.key, params.hash, seed)?
            } else {
                let mut oaep_seed = [0u8; MAX_DIGEST];
                let oaep_seed = &mut oaep_seed[..h_len];
                rng.fill(oaep_seed).map_err(CredentialError::Random)?;
                rsa::encrypt_fixed(&ek.key, params.hash, seed, oaep_seed)?
            }
        }
        PublicKey::Ecc { curve, x, y } => {
            let shared = ecc::share(curve, x, y, digest_alg, rng)?;
            seed.copy_from_slice(&shared.seed[..h_len]);
            if trace.is_some() {
                z.extend_from_slice(&shared.z[..curve.field_len()]);
            }
            shared.point
        }
    };

    // Key derivation, encryption and integrity (Part 1, 24.4 and 24.5).
    let mut sym_key = [0u8; 32];
    let sym_key = &mut sym_key[..params.sym_key_len];
    kdf::kdfa(hmac_alg, seed, b"STORAGE", ak_name, &[], sym_key);
    let mut hmac_key = [0u8; MAX_DIGEST];
    let hmac_key = &mut hmac_key[..h_len];
    kdf::kdfa(hmac_alg, seed, b"INTEGRITY", &[], &[], hmac_key);

    let mut enc_identity = with_size(secret)?;
    let aes = if params.sym_key_len == 16 {
        &AES_128
    } else {
        &AES_256
    };
    let crypto = |op| move |_| CredentialError::Crypto { op };
    let key = UnboundCipherKey::new(aes, sym_key).map_err(crypto("AES key setup"))?;
    EncryptingKey::cfb128(key)
        .map_err(crypto("AES-CFB setup"))?
        .less_safe_encrypt(
            &mut enc_identity,
            EncryptionContext::Iv128(FixedLength::from([0u8; 16])),
        )
        .map_err(crypto("AES-CFB encrypt"))?;

    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac_alg, hmac_key));
    mac.update(&enc_identity);
    mac.update(ak_name);
    let integrity = mac.sign();

    let mut id_object = Vec::with_capacity(2 + h_len + enc_identity.len());
    id_object.extend_from_slice(&with_size(integrity.as_ref())?);
    id_object.extend_from_slice(&enc_identity);
    let credential = Credential {
        blob: with_size(&id_object)?,
        secret: with_size(&encrypted)?,
    };

    if let Some(t) = trace {
        *t = Trace {
            seed: seed.to_vec(),
            ecdh_z: z,
            sym_key: sym_key.to_vec(),
            hmac_key: hmac_key.to_vec(),
            enc_identity,
            integrity_hmac: integrity.as_ref().to_vec(),
        };
    }
    seed.fill(0);
    sym_key.fill(0);
    hmac_key.fill(0);
    Ok(credential)
}
