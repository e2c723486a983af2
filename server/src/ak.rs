//! Attestation key (AK) checks, done on the agent's TPM2B_PUBLIC before MakeCredential.
//!
//! ActivateCredential releases the secret only to a TPM that holds both the EK and an object
//! with the AK's Name, so the server must make sure the Name describes a key the TPM created
//! and cannot export: fixedTPM, fixedParent, sensitiveDataOrigin, and a restricted signing key
//! (it signs only TPM-generated data). The Name is computed here from the exact bytes received
//! ([`ekattest_protocol::tpm::public::Public::name`]); the server never re-encodes the area.
//! This module never panics on input and allocates nothing.

use ekattest_protocol::spki::{EccCurve, PublicKey};
use ekattest_protocol::tpm::public::alg;
use ekattest_protocol::tpm::public::{
    HashAlg, Name, ObjectType, Public, PublicError, Scheme, attr,
};

/// The attributes an AK must have, with their spec names for error messages.
const REQUIRED: [(u32, &str); 5] = [
    (attr::FIXED_TPM, "fixedTPM"),
    (attr::FIXED_PARENT, "fixedParent"),
    (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (attr::RESTRICTED, "restricted"),
    (attr::SIGN, "sign"),
];

/// Key type and size of an accepted AK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AkKey {
    /// RSA with this many modulus bits (2048 or more).
    Rsa {
        /// Modulus size in bits.
        bits: u16,
    },
    /// ECC on this curve (P-256 or P-384).
    Ecc {
        /// The curve.
        curve: EccCurve,
    },
}

/// An AK that passed [`check_ak`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ak {
    /// The AK's Name (nameAlg || H(TPMT_PUBLIC)) over the bytes received: the `ak_name` input
    /// of MakeCredential.
    pub name: Name,
    /// nameAlg (SHA-256 or SHA-384).
    pub name_alg: HashAlg,
    /// Key type and size.
    pub key: AkKey,
    /// The signing scheme (RSASSA, RSAPSS or ECDSA) and its hash.
    pub scheme: Scheme,
}

/// Why an AK public area was refused. Each variant names the failed requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AkError {
    /// The TPM2B_PUBLIC does not parse.
    #[error("AK public area is malformed")]
    Decode(#[source] PublicError),
    /// A required object attribute is clear.
    #[error(
        "AK attribute {attribute} is not set: the AK must be a fixedTPM, fixedParent, sensitiveDataOrigin, restricted signing key"
    )]
    MissingAttribute {
        /// Spec name of the attribute.
        attribute: &'static str,
    },
    /// The decrypt attribute is set.
    #[error("AK has the decrypt attribute: an AK must be a signing-only key")]
    Decrypt,
    /// nameAlg is not SHA-256 or SHA-384.
    #[error("AK nameAlg 0x{alg:04x} is not supported: use SHA-256 or SHA-384")]
    NameAlg {
        /// TPM_ALG_ID of the nameAlg.
        alg: u16,
    },
    /// RSA key shorter than 2048 bits.
    #[error("AK RSA key of {bits} bits is too short: at least 2048 bits")]
    RsaTooShort {
        /// keyBits.
        bits: u16,
    },
    /// ECC curve other than P-256 or P-384.
    #[error("AK ECC curve 0x{curve:04x} is not supported: use NIST P-256 or P-384")]
    Curve {
        /// TPM_ECC_CURVE.
        curve: u16,
    },
    /// A restricted signing key without a signing scheme.
    #[error("AK has no signing scheme: a restricted signing key must name its scheme")]
    NoScheme,
    /// A scheme that does not fit the key type, or with an unsupported hash.
    #[error(
        "AK scheme 0x{alg:04x} does not fit the key: use RSASSA or RSAPSS (RSA) or ECDSA (ECC) with SHA-256, SHA-384 or SHA-512"
    )]
    Scheme {
        /// TPM_ALG_ID of the scheme.
        alg: u16,
    },
    /// A symmetric algorithm or ECC KDF on a signing key.
    #[error("AK has a symmetric algorithm or KDF: both must be NULL on a signing key")]
    Symmetric,
}

/// Parses and checks the agent's AK TPM2B_PUBLIC: fixedTPM, fixedParent, sensitiveDataOrigin,
/// restricted and sign set, decrypt clear; RSA of 2048 bits or more, or ECC P-256 or P-384;
/// nameAlg SHA-256 or SHA-384; a signing scheme matching the key type (RSASSA / RSAPSS / ECDSA
/// with SHA-256, SHA-384 or SHA-512); NULL symmetric and KDF. Returns the AK with its Name.
///
/// # Errors
/// [`AkError`] naming the first requirement that fails.
pub fn check_ak(tpm2b_public: &[u8]) -> Result<Ak, AkError> {
    let public = Public::decode(tpm2b_public).map_err(AkError::Decode)?;
    if let Some(&(_, attribute)) = REQUIRED.iter().find(|(bit, _)| !public.has(*bit)) {
        return Err(AkError::MissingAttribute { attribute });
    }
    if public.has(attr::DECRYPT) {
        return Err(AkError::Decrypt);
    }
    let name_alg = match public.name_alg {
        h @ (HashAlg::Sha256 | HashAlg::Sha384) => h,
        other => return Err(AkError::NameAlg { alg: other.id() }),
    };
    let key = match (public.object_type, public.key) {
        (ObjectType::Rsa, PublicKey::Rsa { .. }) if public.rsa_bits < 2048 => {
            return Err(AkError::RsaTooShort {
                bits: public.rsa_bits,
            });
        }
        (ObjectType::Rsa, PublicKey::Rsa { .. }) => AkKey::Rsa {
            bits: public.rsa_bits,
        },
        (ObjectType::Ecc, PublicKey::Ecc { curve, .. }) => match curve {
            EccCurve::NistP256 | EccCurve::NistP384 => AkKey::Ecc { curve },
            EccCurve::NistP521 => return Err(AkError::Curve { curve: curve.id() }),
        },
        // The parser pairs the object type with its key; keep the match total anyway.
        (ObjectType::Rsa | ObjectType::Ecc, _) => {
            return Err(AkError::Decode(PublicError::BadKey {
                reason: "object type and key do not match",
            }));
        }
    };
    let scheme = public.scheme.ok_or(AkError::NoScheme)?;
    let scheme_fits = match key {
        AkKey::Rsa { .. } => matches!(scheme.alg, alg::RSASSA | alg::RSAPSS),
        AkKey::Ecc { .. } => scheme.alg == alg::ECDSA,
    };
    let hash_ok = matches!(
        scheme.hash,
        Some(HashAlg::Sha256 | HashAlg::Sha384 | HashAlg::Sha512)
    );
    if !scheme_fits || !hash_ok {
        return Err(AkError::Scheme { alg: scheme.alg });
    }
    if public.symmetric.is_some() || public.kdf.is_some() {
        return Err(AkError::Symmetric);
    }
    let name = public.name().map_err(AkError::Decode)?;
    Ok(Ak {
        name,
        name_alg,
        key,
        scheme,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekattest_testkit::testdata;

    /// The vector AK: ECC P-256, SHA-256, attributes 0x00050072, ECDSA-SHA256.
    fn vector_ak() -> Vec<u8> {
        testdata::vector("ak.tpm2b_public")
    }

    /// Rewrites the objectAttributes of a TPM2B_PUBLIC (bytes 6..10) and returns the copy.
    fn with_attributes(bytes: &[u8], f: impl Fn(u32) -> u32) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let a = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        b[6..10].copy_from_slice(&f(a).to_be_bytes());
        b
    }

    #[test]
    fn vector_ak_passes_with_its_name() {
        let ak = check_ak(&vector_ak()).unwrap();
        assert_eq!(ak.name.as_slice(), testdata::vector("ak.name").as_slice());
        assert_eq!(
            ak.key,
            AkKey::Ecc {
                curve: EccCurve::NistP256
            }
        );
        assert_eq!(ak.name_alg, HashAlg::Sha256);
        assert_eq!(ak.scheme.alg, alg::ECDSA);
    }

    #[test]
    fn swtpm_bound_aks_pass_with_their_names() {
        for case in [
            "swtpm-bound-rsa2048",
            "swtpm-bound-p256",
            "swtpm-bound-p384",
        ] {
            let ak = check_ak(&testdata::vector(format!("{case}/ak.tpm2b_public"))).unwrap();
            assert_eq!(
                ak.name.as_slice(),
                testdata::vector(format!("{case}/ak.name")).as_slice(),
                "{case}"
            );
        }
    }

    #[test]
    fn each_missing_attribute_is_named() {
        for (bit, name) in REQUIRED {
            let bytes = with_attributes(&vector_ak(), |a| a & !bit);
            let err = check_ak(&bytes).unwrap_err();
            assert_eq!(err, AkError::MissingAttribute { attribute: name });
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn decrypt_attribute_is_refused() {
        let bytes = with_attributes(&vector_ak(), |a| a | attr::DECRYPT);
        assert_eq!(check_ak(&bytes).unwrap_err(), AkError::Decrypt);
    }

    #[test]
    fn ek_is_not_an_ak() {
        // An EK is a restricted decryption key: sign is clear.
        let err = check_ak(&testdata::vector("rsa2048/ek.tpm2b_public")).unwrap_err();
        assert_eq!(err, AkError::MissingAttribute { attribute: "sign" });
    }

    #[test]
    fn name_alg_sha1_is_refused() {
        let mut b = vector_ak();
        b[4..6].copy_from_slice(&0x0004u16.to_be_bytes());
        assert_eq!(check_ak(&b).unwrap_err(), AkError::NameAlg { alg: 0x0004 });
    }

    #[test]
    fn null_scheme_is_refused() {
        // ECC AK parameters after authPolicy: symmetric NULL (2), scheme ECDSA (2) + hash (2).
        // Replace scheme+hash by TPM_ALG_NULL and drop the hash, fixing the TPM2B size.
        let b = vector_ak();
        let policy_len = usize::from(u16::from_be_bytes([b[10], b[11]]));
        let scheme_at = 12 + policy_len + 2;
        assert_eq!(&b[scheme_at..scheme_at + 2], &alg::ECDSA.to_be_bytes());
        let mut out = b[..scheme_at].to_vec();
        out.extend_from_slice(&0x0010u16.to_be_bytes());
        out.extend_from_slice(&b[scheme_at + 4..]);
        let size = u16::try_from(out.len() - 2).unwrap();
        out[..2].copy_from_slice(&size.to_be_bytes());
        assert_eq!(check_ak(&out).unwrap_err(), AkError::NoScheme);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for bytes in [&[][..], &[0x00, 0x05, 1, 2], &[0xff; 40]] {
            assert!(matches!(check_ak(bytes), Err(AkError::Decode(_))));
        }
        let mut trailing = vector_ak();
        trailing.push(0);
        assert!(matches!(check_ak(&trailing), Err(AkError::Decode(_))));
    }

    #[test]
    fn name_covers_the_exact_bytes() {
        // userWithAuth is not required; flipping it changes the Name but not the verdict.
        let a = check_ak(&vector_ak()).unwrap();
        let b = check_ak(&with_attributes(&vector_ak(), |x| x ^ attr::USER_WITH_AUTH)).unwrap();
        assert_ne!(a.name, b.name);
    }
}
