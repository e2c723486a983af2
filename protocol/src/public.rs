//! TPM 2.0 public areas (TPM2B_PUBLIC), as carried in a Login.
//!
//! The agent reads its EK and AK public areas from the TPM and sends them verbatim; the server
//! parses them to check the AK's attributes, to compare the EK with its certificate, and to
//! run MakeCredential. Both sides also need the object Name and the DER SubjectPublicKeyInfo
//! whose SHA-256 is the `tpm_ek.public_hash` attribute, so those live here, once.
//!
//! Layouts follow TPM 2.0 Library Part 2 (TPMT_PUBLIC, 12.2.4; TPMU_PUBLIC_PARMS, 12.2.3.7)
//! and RFC 5280 / RFC 5480 / RFC 8017 for SubjectPublicKeyInfo. Only RSA and ECC objects are
//! understood; anything else is an error, never a panic. Parsing borrows from the input and
//! allocates nothing.

use core::fmt;

use sha2::{Digest, Sha256};

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

/// Largest SubjectPublicKeyInfo [`PublicKey::spki_der`] produces (RSA up to 8192 bits).
pub const SPKI_MAX: usize = 1100;

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

/// A NIST curve a TPM ECC key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EccCurve {
    /// NIST P-256 (TPM_ECC_NIST_P256).
    NistP256,
    /// NIST P-384 (TPM_ECC_NIST_P384).
    NistP384,
    /// NIST P-521 (TPM_ECC_NIST_P521).
    NistP521,
}

impl EccCurve {
    /// The TPM_ECC_CURVE identifier.
    pub const fn id(self) -> u16 {
        match self {
            Self::NistP256 => CURVE_P256,
            Self::NistP384 => CURVE_P384,
            Self::NistP521 => CURVE_P521,
        }
    }

    /// Maps a TPM_ECC_CURVE identifier, `None` for unsupported curves.
    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            CURVE_P256 => Some(Self::NistP256),
            CURVE_P384 => Some(Self::NistP384),
            CURVE_P521 => Some(Self::NistP521),
            _ => None,
        }
    }

    /// Length in bytes of a field element (and of each point coordinate).
    pub const fn field_len(self) -> usize {
        match self {
            Self::NistP256 => 32,
            Self::NistP384 => 48,
            Self::NistP521 => 66,
        }
    }

    /// DER of the curve's named-curve OID (tag and length included), RFC 5480.
    const fn oid_der(self) -> &'static [u8] {
        match self {
            Self::NistP256 => &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
            Self::NistP384 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
            Self::NistP521 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23],
        }
    }
}

/// DER of the rsaEncryption OID, tag and length included.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
/// DER of the id-ecPublicKey OID, tag and length included.
const OID_EC: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// id-RSAES-OAEP (RFC 4055), the key algorithm of TPM 1.2 EK certificates.
const OID_RSAES_OAEP: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x07,
];

/// A public key, borrowed from a TPM public area or a SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKey<'a> {
    /// RSA: big-endian modulus and public exponent.
    Rsa {
        /// Big-endian modulus, possibly with leading zero bytes.
        modulus: &'a [u8],
        /// Public exponent (a TPM's 0 already mapped to 65537).
        exponent: u32,
    },
    /// ECC: affine point coordinates, big-endian.
    Ecc {
        /// The curve.
        curve: EccCurve,
        /// X coordinate, possibly shorter than the field (left-pad with zeros).
        x: &'a [u8],
        /// Y coordinate, possibly shorter than the field.
        y: &'a [u8],
    },
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&v| v != 0).unwrap_or(b.len());
    &b[start..]
}

/// Number of bytes of a DER length field for `len`.
const fn len_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else if len <= 0xFF {
        2
    } else if len <= 0xFFFF {
        3
    } else {
        4
    }
}

/// Total size of a TLV whose content is `len` bytes.
const fn tlv_len(len: usize) -> usize {
    1 + len_len(len) + len
}

/// Bounded DER writer over a caller's buffer.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), PublicError> {
        let end = self
            .pos
            .checked_add(b.len())
            .ok_or(PublicError::BufferTooSmall)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(PublicError::BufferTooSmall)?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    fn header(&mut self, tag: u8, len: usize) -> Result<(), PublicError> {
        self.bytes(&[tag])?;
        match len_len(len) {
            1 => self.bytes(&[len as u8]),
            2 => self.bytes(&[0x81, len as u8]),
            3 => self.bytes(&[0x82, (len >> 8) as u8, len as u8]),
            _ => self.bytes(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
        }
    }

    /// Writes an unsigned big-endian integer as a DER INTEGER (minimal, sign byte if needed).
    fn uint(&mut self, magnitude: &[u8]) -> Result<(), PublicError> {
        let m = strip_zeros(magnitude);
        let pad = m.first().is_none_or(|&b| b & 0x80 != 0);
        self.header(0x02, m.len() + usize::from(pad))?;
        if pad {
            self.bytes(&[0])?;
        }
        self.bytes(m)
    }
}

/// Content length of a DER INTEGER holding the unsigned `magnitude`.
fn uint_len(magnitude: &[u8]) -> usize {
    let m = strip_zeros(magnitude);
    m.len() + usize::from(m.first().is_none_or(|&b| b & 0x80 != 0))
}

impl<'a> PublicKey<'a> {
    /// Parses a DER SubjectPublicKeyInfo holding an RSA or NIST-curve EC key.
    ///
    /// # Errors
    /// [`PublicError::BadSpki`] for malformed DER, [`PublicError::UnsupportedCurve`] or
    /// [`PublicError::BadKey`] for keys this crate does not handle.
    pub fn from_spki_der(der: &'a [u8]) -> Result<Self, PublicError> {
        let (spki, rest) = read_tlv(der, 0x30)?;
        if !rest.is_empty() {
            return Err(PublicError::BadSpki {
                reason: "trailing bytes after SubjectPublicKeyInfo",
            });
        }
        let (algid, rest) = read_tlv(spki, 0x30)?;
        let (bits, rest) = read_tlv(rest, 0x03)?;
        if !rest.is_empty() {
            return Err(PublicError::BadSpki {
                reason: "extra fields in SubjectPublicKeyInfo",
            });
        }
        let key = match bits.split_first() {
            Some((0, key)) => key,
            _ => {
                return Err(PublicError::BadSpki {
                    reason: "BIT STRING with unused bits",
                });
            }
        };
        let oid_len = tlv_total(algid)?;
        let (oid, params) = algid.split_at(oid_len);
        if oid == OID_RSA {
            if !(params.is_empty() || params == [0x05, 0x00]) {
                return Err(PublicError::BadSpki {
                    reason: "rsaEncryption parameters are not NULL",
                });
            }
            let (seq, rest) = read_tlv(key, 0x30)?;
            if !rest.is_empty() {
                return Err(PublicError::BadSpki {
                    reason: "trailing bytes after RSAPublicKey",
                });
            }
            let (n, rest) = read_tlv(seq, 0x02)?;
            let (e, rest) = read_tlv(rest, 0x02)?;
            if !rest.is_empty() {
                return Err(PublicError::BadSpki {
                    reason: "trailing bytes in RSAPublicKey",
                });
            }
            let e = strip_zeros(e);
            if e.len() > 4 || e.is_empty() {
                return Err(PublicError::BadKey {
                    reason: "RSA exponent is zero or larger than 32 bits",
                });
            }
            let exponent = e.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            let key = Self::Rsa {
                modulus: strip_zeros(n),
                exponent,
            };
            key.check()?;
            Ok(key)
        } else if oid == OID_EC {
            let curve = [EccCurve::NistP256, EccCurve::NistP384, EccCurve::NistP521]
                .into_iter()
                .find(|c| c.oid_der() == params)
                .ok_or(PublicError::UnsupportedCurve { curve: 0 })?;
            let flen = curve.field_len();
            match key.split_first() {
                Some((4, xy)) if xy.len() == 2 * flen => {
                    let (x, y) = xy.split_at(flen);
                    let key = Self::Ecc { curve, x, y };
                    key.check()?;
                    Ok(key)
                }
                _ => Err(PublicError::BadKey {
                    reason: "EC point is not an uncompressed point of the curve's size",
                }),
            }
        } else if oid == OID_RSAES_OAEP {
            Err(PublicError::Tpm12Key)
        } else {
            Err(PublicError::BadSpki {
                reason: "algorithm is neither rsaEncryption nor id-ecPublicKey",
            })
        }
    }

    /// Checks sizes: a non-empty RSA modulus of at most 8192 bits, ECC coordinates that fit
    /// the curve.
    fn check(&self) -> Result<(), PublicError> {
        match *self {
            Self::Rsa { modulus, exponent } => {
                let m = strip_zeros(modulus);
                if m.len() < 64 || m.len() > 1024 {
                    return Err(PublicError::BadKey {
                        reason: "RSA modulus must be 512 to 8192 bits",
                    });
                }
                if exponent < 3 || exponent % 2 == 0 {
                    return Err(PublicError::BadKey {
                        reason: "RSA exponent must be odd and at least 3",
                    });
                }
                Ok(())
            }
            Self::Ecc { curve, x, y } => {
                let f = curve.field_len();
                if strip_zeros(x).len() > f || strip_zeros(y).len() > f {
                    return Err(PublicError::BadKey {
                        reason: "ECC coordinate longer than the curve's field",
                    });
                }
                if strip_zeros(x).is_empty() && strip_zeros(y).is_empty() {
                    return Err(PublicError::BadKey {
                        reason: "ECC point is all zeros",
                    });
                }
                Ok(())
            }
        }
    }

    /// Writes the canonical DER SubjectPublicKeyInfo, the same bytes as
    /// `openssl pkey -pubin -outform DER` (RSA with NULL parameters, EC uncompressed points).
    ///
    /// # Errors
    /// [`PublicError::BadKey`] if a component does not fit its algorithm.
    pub fn spki_der<'b>(&self, out: &'b mut [u8; SPKI_MAX]) -> Result<&'b [u8], PublicError> {
        self.check()?;
        let mut w = Writer {
            buf: &mut out[..],
            pos: 0,
        };
        match *self {
            Self::Rsa { modulus, exponent } => {
                let e = exponent.to_be_bytes();
                let rsa_len = tlv_len(uint_len(modulus)) + tlv_len(uint_len(&e));
                let bits_len = 1 + tlv_len(rsa_len);
                let alg_len = OID_RSA.len() + 2;
                w.header(0x30, tlv_len(alg_len) + tlv_len(bits_len))?;
                w.header(0x30, alg_len)?;
                w.bytes(OID_RSA)?;
                w.bytes(&[0x05, 0x00])?;
                w.header(0x03, bits_len)?;
                w.bytes(&[0])?;
                w.header(0x30, rsa_len)?;
                w.uint(modulus)?;
                w.uint(&e)?;
            }
            Self::Ecc { curve, x, y } => {
                let f = curve.field_len();
                let bits_len = 2 + 2 * f;
                let alg_len = OID_EC.len() + curve.oid_der().len();
                w.header(0x30, tlv_len(alg_len) + tlv_len(bits_len))?;
                w.header(0x30, alg_len)?;
                w.bytes(OID_EC)?;
                w.bytes(curve.oid_der())?;
                w.header(0x03, bits_len)?;
                w.bytes(&[0, 4])?;
                for c in [x, y] {
                    let c = strip_zeros(c);
                    for _ in c.len()..f {
                        w.bytes(&[0])?;
                    }
                    w.bytes(c)?;
                }
            }
        }
        let len = w.pos;
        Ok(&out[..len])
    }

    /// SHA-256 of [`Self::spki_der`]: the `tpm_ek.public_hash` attribute and the allow-list
    /// fingerprint, equal to the seed's `openssl x509 -pubkey | openssl pkey -pubin -outform
    /// DER | sha256sum` pipeline.
    ///
    /// # Errors
    /// As [`Self::spki_der`].
    pub fn public_hash(&self) -> Result<[u8; 32], PublicError> {
        let mut buf = [0u8; SPKI_MAX];
        let der = self.spki_der(&mut buf)?;
        Ok(Sha256::digest(der).into())
    }

    /// Whether both describe the same key (leading zero bytes ignored).
    pub fn same_key(&self, other: &PublicKey<'_>) -> bool {
        match (*self, *other) {
            (
                Self::Rsa {
                    modulus: m1,
                    exponent: e1,
                },
                PublicKey::Rsa {
                    modulus: m2,
                    exponent: e2,
                },
            ) => e1 == e2 && strip_zeros(m1) == strip_zeros(m2),
            (
                Self::Ecc {
                    curve: c1,
                    x: x1,
                    y: y1,
                },
                PublicKey::Ecc {
                    curve: c2,
                    x: x2,
                    y: y2,
                },
            ) => {
                c1 == c2 && strip_zeros(x1) == strip_zeros(x2) && strip_zeros(y1) == strip_zeros(y2)
            }
            _ => false,
        }
    }
}

/// Splits the TLV at the start of `input` into (header length, content length), bounds-checked.
fn tlv_parts(input: &[u8]) -> Result<(usize, usize), PublicError> {
    const TRUNC: PublicError = PublicError::BadSpki {
        reason: "truncated DER",
    };
    let first = *input.get(1).ok_or(TRUNC)?;
    let (hdr, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return Err(PublicError::BadSpki {
                reason: "unsupported DER length",
            });
        }
        let bytes = input.get(2..2 + n).ok_or(TRUNC)?;
        (
            2 + n,
            bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)),
        )
    };
    if hdr + len > input.len() {
        return Err(TRUNC);
    }
    Ok((hdr, len))
}

/// Total length (header + content) of the TLV at the start of `input`.
fn tlv_total(input: &[u8]) -> Result<usize, PublicError> {
    let (hdr, len) = tlv_parts(input)?;
    Ok(hdr + len)
}

/// Reads one DER TLV with the expected tag; returns (content, rest).
fn read_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), PublicError> {
    let (hdr, len) = tlv_parts(input)?;
    if input.first() != Some(&tag) {
        return Err(PublicError::BadSpki {
            reason: "unexpected DER tag",
        });
    }
    Ok((&input[hdr..hdr + len], &input[hdr + len..]))
}

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

/// Big-endian reader over a TPM structure.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PublicError> {
        if self.buf.len() < n {
            return Err(PublicError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, PublicError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, PublicError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn tpm2b(&mut self, field: &'static str) -> Result<&'a [u8], PublicError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    fn hash(&mut self, field: &'static str) -> Result<HashAlg, PublicError> {
        let id = self.u16(field)?;
        HashAlg::from_id(id).ok_or(PublicError::UnsupportedAlg { field, alg: id })
    }

    /// TPMT_*_SCHEME: alg, then the details union (a hash for every scheme but RSAES, plus a
    /// count for ECDAA).
    fn scheme(&mut self, field: &'static str) -> Result<Option<Scheme>, PublicError> {
        let alg = self.u16(field)?;
        match alg {
            alg::NULL => Ok(None),
            alg::RSAES => Ok(Some(Scheme { alg, hash: None })),
            _ => {
                let hash = Some(self.hash(field)?);
                if alg == alg::ECDAA {
                    self.u16(field)?;
                }
                Ok(Some(Scheme { alg, hash }))
            }
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
        let mut r = Reader { buf: tpm2b_public };
        let tpmt = r.tpm2b("TPM2B_PUBLIC.size")?;
        if !r.buf.is_empty() {
            return Err(PublicError::Trailing { bytes: r.buf.len() });
        }
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
        let mut r = Reader { buf: tpmt_public };
        let type_id = r.u16("type")?;
        let name_alg = r.hash("nameAlg")?;
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
        let scheme = r.scheme("parameters.scheme")?;
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
                let kdf = r.scheme("parameters.kdf")?;
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
        if !r.buf.is_empty() {
            return Err(PublicError::Trailing { bytes: r.buf.len() });
        }
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
    use std::string::ToString as _;

    #[test]
    fn ak_name_matches_vector() {
        let bytes = include_bytes!("../../../shared/testdata/make-credential/ak.tpm2b_public");
        let expected = include_bytes!("../../../shared/testdata/make-credential/ak.name");
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
    fn ek_spki_matches_vectors() {
        let cases: [(&[u8], &[u8]); 3] = [
            (
                include_bytes!("../../../shared/testdata/make-credential/rsa2048/ek.tpm2b_public"),
                include_bytes!("../../../shared/testdata/make-credential/rsa2048/ek.spki.der"),
            ),
            (
                include_bytes!("../../../shared/testdata/make-credential/p256/ek.tpm2b_public"),
                include_bytes!("../../../shared/testdata/make-credential/p256/ek.spki.der"),
            ),
            (
                include_bytes!("../../../shared/testdata/make-credential/p384/ek.tpm2b_public"),
                include_bytes!("../../../shared/testdata/make-credential/p384/ek.spki.der"),
            ),
        ];
        for (public, spki) in cases {
            let p = Public::decode(public).unwrap();
            let mut buf = [0u8; SPKI_MAX];
            assert_eq!(p.key.spki_der(&mut buf).unwrap(), spki);
            let parsed = PublicKey::from_spki_der(spki).unwrap();
            assert!(parsed.same_key(&p.key));
            assert_eq!(
                parsed.public_hash().unwrap(),
                <[u8; 32]>::from(Sha256::digest(spki))
            );
        }
    }

    #[test]
    fn template_fields_of_l1_ek() {
        let bytes =
            include_bytes!("../../../shared/testdata/make-credential/rsa2048/ek.tpm2b_public");
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
        let bytes = include_bytes!("../../../shared/testdata/make-credential/p384/ek.tpm2b_public");
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
        let bytes = include_bytes!("../../../shared/testdata/make-credential/p256/ek.tpm2b_public");
        let mut v = heapless::Vec::<u8, 1400>::new();
        v.extend_from_slice(bytes).unwrap();
        v[2..4].copy_from_slice(&0x0008u16.to_be_bytes());
        assert!(matches!(
            Public::decode(&v),
            Err(PublicError::UnsupportedAlg { field: "type", .. })
        ));
    }

    #[test]
    fn spki_parser_rejects_garbage() {
        assert!(PublicKey::from_spki_der(&[]).is_err());
        assert!(PublicKey::from_spki_der(&[0x30, 0x03, 0x30, 0x01]).is_err());
        let spki = include_bytes!("../../../shared/testdata/make-credential/p256/ek.spki.der");
        for n in 0..spki.len() {
            assert!(PublicKey::from_spki_der(&spki[..n]).is_err());
        }
    }

    #[test]
    fn rsaes_oaep_spki_is_named_a_tpm12_key() {
        let rsa = include_bytes!("../../../shared/testdata/make-credential/rsa2048/ek.spki.der");
        let mut oaep = heapless::Vec::<u8, 512>::new();
        oaep.extend_from_slice(rsa).unwrap();
        let at = oaep
            .windows(OID_RSA.len())
            .position(|w| w == OID_RSA)
            .unwrap();
        // rsaEncryption (.1.1.1) -> id-RSAES-OAEP (.1.1.7): same length, same key.
        oaep[at + OID_RSA.len() - 1] = 0x07;
        assert_eq!(PublicKey::from_spki_der(&oaep), Err(PublicError::Tpm12Key));
        let text = PublicError::Tpm12Key.to_string();
        assert!(text.contains("TPM 1.2") && text.contains("TPM 2.0 is required"));
        assert!(PublicKey::from_spki_der(rsa).is_ok());
    }

    #[test]
    fn spki_with_the_zero_point_is_refused() {
        // Found by the tpm_public fuzz target: parsed, then refused by spki_der.
        let mut der = [0u8; 91];
        der[..26].copy_from_slice(&[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ]);
        der[26] = 0x04;
        assert!(matches!(
            PublicKey::from_spki_der(&der),
            Err(PublicError::BadKey { .. })
        ));
    }

    #[test]
    fn same_key_ignores_leading_zeros() {
        let a = PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x: &[0, 0, 1],
            y: &[2],
        };
        let b = PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x: &[1],
            y: &[0, 2],
        };
        assert!(a.same_key(&b));
        let c = PublicKey::Ecc {
            curve: EccCurve::NistP384,
            x: &[1],
            y: &[2],
        };
        assert!(!a.same_key(&c));
    }
}
