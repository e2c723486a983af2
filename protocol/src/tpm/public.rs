//! TPM 2.0 public areas (TPM2B_PUBLIC), as carried in a Login.
//!
//! The agent reads its EK and AK public areas from the TPM and sends them verbatim; the server
//! parses them to check the AK's attributes, to compare the EK with its certificate, and to
//! run MakeCredential. Both sides also need the object Name, so it lives here, once; the key
//! itself is a [`PublicKey`], whose DER SubjectPublicKeyInfo is [`crate::spki`]'s job.
//!
//! Layouts follow TPM 2.0 Library Part 2 (TPMT_PUBLIC, 12.2.4; TPMU_PUBLIC_PARMS, 12.2.3.7).
//! Only RSA and ECC objects are understood; anything else is an error, never a panic. Parsing
//! borrows from the input (through [`super::marshal::Reader`]) and allocates nothing.

use core::fmt;

use sha2::{Digest, Sha256};

use super::marshal::{MarshalError, Reader};
use crate::der;
use crate::spki::{EccCurve, PublicKey};

/// TCG algorithm identifiers (TPM_ALG_ID, TPM 2.0 Part 2, table 9) that appear in the public
/// areas we build and check. Agent templates and server checks use these, never literals.
pub mod alg {
    /// RSA object type.
    pub const RSA: u16 = 0x0001;
    /// SHA-1.
    pub const SHA1: u16 = 0x0004;
    /// AES block cipher.
    pub const AES: u16 = 0x0006;
    /// SHA-256.
    pub const SHA256: u16 = 0x000B;
    /// SHA-384.
    pub const SHA384: u16 = 0x000C;
    /// SHA-512.
    pub const SHA512: u16 = 0x000D;
    /// The null algorithm.
    pub const NULL: u16 = 0x0010;
    /// RSASSA-PKCS1-v1_5 signatures.
    pub const RSASSA: u16 = 0x0014;
    /// RSAES-PKCS1-v1_5 encryption.
    pub const RSAES: u16 = 0x0015;
    /// RSASSA-PSS signatures.
    pub const RSAPSS: u16 = 0x0016;
    /// RSAES-OAEP encryption.
    pub const OAEP: u16 = 0x0017;
    /// ECDSA signatures.
    pub const ECDSA: u16 = 0x0018;
    /// ECDH key agreement.
    pub const ECDH: u16 = 0x0019;
    /// ECDAA signatures.
    pub const ECDAA: u16 = 0x001A;
    /// ECC object type.
    pub const ECC: u16 = 0x0023;
    /// Cipher feedback mode.
    pub const CFB: u16 = 0x0043;
}

/// TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3).
pub mod attr {
    /// The object cannot be duplicated at all.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The object's parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// USER role may authorize with the object's authValue.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// ADMIN role requires a policy session.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Not subject to dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 10;
    /// Restricted key: signs only TPM-generated digests or decrypts only TPM structures.
    pub const RESTRICTED: u32 = 1 << 16;
    /// Decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// Signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// Largest TPM2B_PUBLIC accepted (an RSA-8192 key with a SHA-512 policy fits).
pub const TPM2B_PUBLIC_MAX: usize = 1400;

/// An object Name: nameAlg (2 bytes) followed by the digest of the TPMT_PUBLIC.
pub type Name = heapless::Vec<u8, 66>;

/// Why a public area or key could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicError {
    /// The input ended before field `field` was complete.
    Truncated {
        /// Name of the field being read.
        field: &'static str,
    },
    /// Bytes remain after the structure.
    Trailing {
        /// Number of bytes left over.
        bytes: usize,
    },
    /// The input is larger than [`TPM2B_PUBLIC_MAX`].
    TooLong {
        /// Input length.
        len: usize,
    },
    /// An algorithm identifier that is not supported in field `field`.
    UnsupportedAlg {
        /// Name of the field.
        field: &'static str,
        /// The TPM_ALG_ID found.
        alg: u16,
    },
    /// An ECC curve other than NIST P-256, P-384, P-521.
    UnsupportedCurve {
        /// The TPM_ECC_CURVE or OID-derived identifier found.
        curve: u16,
    },
    /// A key component is empty, too long for its curve or key size, or not canonical.
    BadKey {
        /// What is wrong.
        reason: &'static str,
    },
    /// A DER SubjectPublicKeyInfo is malformed.
    BadSpki {
        /// What is wrong.
        reason: &'static str,
    },
    /// A DER SubjectPublicKeyInfo could not be read at `field`.
    SpkiDer {
        /// The SubjectPublicKeyInfo field being read.
        field: &'static str,
        /// What the DER reader found.
        error: der::Error,
    },
    /// The output buffer is too small for the encoding.
    BufferTooSmall,
    /// An RSAES-OAEP key (id-RSAES-OAEP, 1.2.840.113549.1.1.7): what TPM 1.2 EK certificates
    /// hold (TCG Credential Profiles for TPM Family 1.2, EK credential). TPM 2.0 EK
    /// certificates use rsaEncryption or id-ecPublicKey.
    Tpm12Key,
}

impl fmt::Display for PublicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { field } => write!(f, "TPM public area truncated in {field}"),
            Self::Trailing { bytes } => {
                write!(f, "TPM public area followed by {bytes} unexpected bytes")
            }
            Self::TooLong { len } => write!(
                f,
                "TPM public area of {len} bytes exceeds the {TPM2B_PUBLIC_MAX}-byte limit"
            ),
            Self::UnsupportedAlg { field, alg } => {
                write!(f, "unsupported algorithm 0x{alg:04x} in {field}")
            }
            Self::UnsupportedCurve { curve } => {
                write!(
                    f,
                    "unsupported ECC curve 0x{curve:04x} (want P-256, P-384 or P-521)"
                )
            }
            Self::BadKey { reason } => write!(f, "invalid public key: {reason}"),
            Self::BadSpki { reason } => write!(f, "invalid SubjectPublicKeyInfo: {reason}"),
            Self::SpkiDer { field, error } => {
                write!(f, "invalid SubjectPublicKeyInfo: {field}: {error}")
            }
            Self::BufferTooSmall => f.write_str("output buffer too small for the public key"),
            Self::Tpm12Key => f.write_str(
                "it is an RSAES-OAEP key (OID 1.2.840.113549.1.1.7), the EK of a TPM 1.2; \
                 TPM 2.0 is required: switch the TPM to TPM 2.0 mode in the firmware setup if \
                 it supports that, or use a device with a TPM 2.0",
            ),
        }
    }
}

impl core::error::Error for PublicError {}

impl From<MarshalError> for PublicError {
    fn from(e: MarshalError) -> Self {
        match e {
            MarshalError::Truncated { field, .. } => Self::Truncated { field },
            MarshalError::Trailing { bytes, .. } => Self::Trailing { bytes },
        }
    }
}

/// A hash algorithm a TPM object may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (legacy; never accepted for new keys by the server).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The TPM_ALG_ID.
    pub const fn id(self) -> u16 {
        match self {
            Self::Sha1 => alg::SHA1,
            Self::Sha256 => alg::SHA256,
            Self::Sha384 => alg::SHA384,
            Self::Sha512 => alg::SHA512,
        }
    }

    /// Maps a TPM_ALG_ID to a hash, `None` for anything else.
    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            alg::SHA1 => Some(Self::Sha1),
            alg::SHA256 => Some(Self::Sha256),
            alg::SHA384 => Some(Self::Sha384),
            alg::SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// TPM_ECC_NIST_P256.
pub const CURVE_P256: u16 = 0x0003;
/// TPM_ECC_NIST_P384.
pub const CURVE_P384: u16 = 0x0004;
/// TPM_ECC_NIST_P521.
pub const CURVE_P521: u16 = 0x0005;

/// Object type of a public area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// TPM_ALG_RSA.
    Rsa,
    /// TPM_ALG_ECC.
    Ecc,
}

/// A symmetric definition (TPMT_SYM_DEF_OBJECT) that is not TPM_ALG_NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symmetric {
    /// TPM_ALG_ID of the cipher (0x0006 AES).
    pub alg: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// TPM_ALG_ID of the mode (0x0043 CFB).
    pub mode: u16,
}

/// An asymmetric scheme (TPMT_RSA_SCHEME / TPMT_ECC_SCHEME) that is not TPM_ALG_NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// TPM_ALG_ID of the scheme (e.g. 0x0018 ECDSA, 0x0014 RSASSA).
    pub alg: u16,
    /// The scheme's hash, if it names one.
    pub hash: Option<HashAlg>,
}

/// A parsed TPMT_PUBLIC (RSA or ECC), borrowing from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Public<'a> {
    /// RSA or ECC.
    pub object_type: ObjectType,
    /// The object's name algorithm.
    pub name_alg: HashAlg,
    /// TPMA_OBJECT bits; see [`attr`].
    pub attributes: u32,
    /// authPolicy digest (may be empty).
    pub auth_policy: &'a [u8],
    /// Symmetric definition for storage keys; `None` when TPM_ALG_NULL.
    pub symmetric: Option<Symmetric>,
    /// Signing or decryption scheme; `None` when TPM_ALG_NULL.
    pub scheme: Option<Scheme>,
    /// ECC only: the KDF scheme, `None` when TPM_ALG_NULL (always `None` for RSA).
    pub kdf: Option<Scheme>,
    /// RSA only: keyBits from the parameters (0 for ECC).
    pub rsa_bits: u16,
    /// The public key from `unique`.
    pub key: PublicKey<'a>,
    tpmt: &'a [u8],
}

/// The hash algorithm at the reader's position, named `field`.
fn read_hash(r: &mut Reader<'_>, field: &'static str) -> Result<HashAlg, PublicError> {
    let id = r.u16(field)?;
    HashAlg::from_id(id).ok_or(PublicError::UnsupportedAlg { field, alg: id })
}

/// TPMT_*_SCHEME: alg, then the details union (a hash for every scheme but RSAES, plus a
/// count for ECDAA).
fn read_scheme(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Scheme>, PublicError> {
    let alg = r.u16(field)?;
    match alg {
        alg::NULL => Ok(None),
        alg::RSAES => Ok(Some(Scheme { alg, hash: None })),
        _ => {
            let hash = Some(read_hash(r, field)?);
            if alg == alg::ECDAA {
                r.u16(field)?;
            }
            Ok(Some(Scheme { alg, hash }))
        }
    }
}

impl<'a> Public<'a> {
    /// Parses a TPM2B_PUBLIC: a UINT16 size, then exactly that many bytes of TPMT_PUBLIC.
    ///
    /// # Errors
    /// [`PublicError`] for truncation, trailing bytes, unsupported types or algorithms.
    pub fn decode(tpm2b_public: &'a [u8]) -> Result<Self, PublicError> {
        if tpm2b_public.len() > TPM2B_PUBLIC_MAX {
            return Err(PublicError::TooLong {
                len: tpm2b_public.len(),
            });
        }
        let mut r = Reader::new(tpm2b_public);
        let tpmt = r.tpm2b("TPM2B_PUBLIC.size")?;
        r.finish("TPM2B_PUBLIC")?;
        Self::decode_tpmt(tpmt)
    }

    /// Parses a TPMT_PUBLIC (no size prefix), rejecting trailing bytes.
    ///
    /// # Errors
    /// As [`Self::decode`].
    pub fn decode_tpmt(tpmt_public: &'a [u8]) -> Result<Self, PublicError> {
        if tpmt_public.len() > TPM2B_PUBLIC_MAX {
            return Err(PublicError::TooLong {
                len: tpmt_public.len(),
            });
        }
        let mut r = Reader::new(tpmt_public);
        let type_id = r.u16("type")?;
        let name_alg = read_hash(&mut r, "nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy")?;
        let sym_alg = r.u16("parameters.symmetric")?;
        let symmetric = if sym_alg == alg::NULL {
            None
        } else {
            let key_bits = r.u16("parameters.symmetric.keyBits")?;
            let mode = r.u16("parameters.symmetric.mode")?;
            Some(Symmetric {
                alg: sym_alg,
                key_bits,
                mode,
            })
        };
        let scheme = read_scheme(&mut r, "parameters.scheme")?;
        let (object_type, key, kdf, rsa_bits) = match type_id {
            alg::RSA => {
                let bits = r.u16("parameters.keyBits")?;
                let exponent = match r.u32("parameters.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b("unique.rsa")?;
                if modulus.len() * 8 != usize::from(bits) {
                    return Err(PublicError::BadKey {
                        reason: "RSA modulus length differs from keyBits",
                    });
                }
                let key = PublicKey::Rsa { modulus, exponent };
                (ObjectType::Rsa, key, None, bits)
            }
            alg::ECC => {
                let curve_id = r.u16("parameters.curveID")?;
                let curve = EccCurve::from_id(curve_id)
                    .ok_or(PublicError::UnsupportedCurve { curve: curve_id })?;
                let kdf = read_scheme(&mut r, "parameters.kdf")?;
                let x = r.tpm2b("unique.ecc.x")?;
                let y = r.tpm2b("unique.ecc.y")?;
                (ObjectType::Ecc, PublicKey::Ecc { curve, x, y }, kdf, 0)
            }
            other => {
                return Err(PublicError::UnsupportedAlg {
                    field: "type",
                    alg: other,
                });
            }
        };
        r.finish("TPMT_PUBLIC")?;
        Ok(Self {
            object_type,
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            kdf,
            rsa_bits,
            key,
            tpmt: tpmt_public,
        })
    }

    /// The TPMT_PUBLIC bytes this was parsed from (no size prefix).
    pub fn tpmt_bytes(&self) -> &'a [u8] {
        self.tpmt
    }

    /// The object's Name: nameAlg (big-endian UINT16) followed by nameAlg(TPMT_PUBLIC), over
    /// exactly the bytes received (TPM 2.0 Part 1, 16 "Names").
    ///
    /// # Errors
    /// Never in practice; the signature leaves room for hashes this build lacks.
    pub fn name(&self) -> Result<Name, PublicError> {
        let mut name = Name::new();
        let _ = name.extend_from_slice(&self.name_alg.id().to_be_bytes());
        let res = match self.name_alg {
            HashAlg::Sha1 => {
                return Err(PublicError::UnsupportedAlg {
                    field: "nameAlg",
                    alg: alg::SHA1,
                });
            }
            HashAlg::Sha256 => name.extend_from_slice(&Sha256::digest(self.tpmt)),
            HashAlg::Sha384 => name.extend_from_slice(&sha2::Sha384::digest(self.tpmt)),
            HashAlg::Sha512 => name.extend_from_slice(&sha2::Sha512::digest(self.tpmt)),
        };
        res.map_err(|_| PublicError::BufferTooSmall)?;
        Ok(name)
    }

    /// Whether every bit of `mask` is set in the object attributes.
    pub fn has(&self, mask: u32) -> bool {
        self.attributes & mask == mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ak_name_matches_vector() {
        let bytes = include_bytes!("../../../../shared/testdata/make-credential/ak.tpm2b_public");
        let expected = include_bytes!("../../../../shared/testdata/make-credential/ak.name");
        let p = Public::decode(bytes).unwrap();
        assert_eq!(p.object_type, ObjectType::Ecc);
        assert_eq!(p.attributes, 0x0005_0072);
        assert!(p.has(attr::RESTRICTED | attr::SIGN));
        assert_eq!(
            p.scheme,
            Some(Scheme {
                alg: 0x0018,
                hash: Some(HashAlg::Sha256)
            })
        );
        assert_eq!(p.name().unwrap().as_slice(), &expected[..]);
    }

    #[test]
    fn template_fields_of_l1_ek() {
        let bytes =
            include_bytes!("../../../../shared/testdata/make-credential/rsa2048/ek.tpm2b_public");
        let p = Public::decode(bytes).unwrap();
        assert_eq!(p.object_type, ObjectType::Rsa);
        assert_eq!(p.name_alg, HashAlg::Sha256);
        assert_eq!(p.attributes, 0x0003_00b2);
        assert_eq!(p.rsa_bits, 2048);
        assert_eq!(
            p.symmetric,
            Some(Symmetric {
                alg: 0x0006,
                key_bits: 128,
                mode: 0x0043
            })
        );
        assert_eq!(p.auth_policy.len(), 32);
    }

    #[test]
    fn truncation_and_trailing_are_errors_at_every_length() {
        let bytes =
            include_bytes!("../../../../shared/testdata/make-credential/p384/ek.tpm2b_public");
        for n in 0..bytes.len() {
            assert!(Public::decode(&bytes[..n]).is_err(), "prefix {n}");
            // A TPMT prefix must fail too, never panic.
            let _ = Public::decode_tpmt(&bytes[2..n.max(2)]);
        }
        let mut longer = heapless::Vec::<u8, 1400>::new();
        longer.extend_from_slice(bytes).unwrap();
        longer.push(0).unwrap();
        assert_eq!(
            Public::decode(&longer),
            Err(PublicError::Trailing { bytes: 1 })
        );
    }

    #[test]
    fn rejects_unsupported_type_and_curve() {
        let bytes =
            include_bytes!("../../../../shared/testdata/make-credential/p256/ek.tpm2b_public");
        let mut v = heapless::Vec::<u8, 1400>::new();
        v.extend_from_slice(bytes).unwrap();
        v[2..4].copy_from_slice(&0x0008u16.to_be_bytes());
        assert!(matches!(
            Public::decode(&v),
            Err(PublicError::UnsupportedAlg { field: "type", .. })
        ));
    }
}
