//! DER SubjectPublicKeyInfo (RFC 5280 4.1.2.7; RFC 8017 for RSA, RFC 5480 for EC) of the
//! RSA and NIST-curve keys TPMs hold: [`PublicKey::from_spki_der`] reads one from a
//! certificate or a Login, [`PublicKey::spki_der`] writes the canonical form, whose SHA-256
//! is the `tpm_ek.public_hash` attribute ([`PublicKey::public_hash`]).
//!
//! Both directions go through [`crate::der`]; a [`PublicKey`] borrows from its input and
//! nothing is allocated. A key also comes out of a TPM public area
//! ([`crate::tpm::public::Public`]), so errors are the shared [`PublicError`].

use sha2::{Digest, Sha256};

use crate::der::{Reader, WriteError, Writer, strip_zeros, tag};
use crate::tpm::public::{CURVE_P256, CURVE_P384, CURVE_P521, PublicError};

/// Largest SubjectPublicKeyInfo [`PublicKey::spki_der`] produces (RSA up to 8192 bits).
pub const SPKI_MAX: usize = 1100;

/// rsaEncryption (1.2.840.113549.1.1.1), OID contents.
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// id-ecPublicKey (1.2.840.10045.2.1), OID contents.
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// id-RSAES-OAEP (RFC 4055, 1.2.840.113549.1.1.7), the key algorithm of TPM 1.2 EK
/// certificates; OID contents.
const OID_RSAES_OAEP: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x07];

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

    /// The contents of the curve's named-curve OID (no tag, no length), RFC 5480.
    const fn oid(self) -> &'static [u8] {
        match self {
            Self::NistP256 => &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
            Self::NistP384 => &[0x2B, 0x81, 0x04, 0x00, 0x22],
            Self::NistP521 => &[0x2B, 0x81, 0x04, 0x00, 0x23],
        }
    }
}

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

impl<'a> PublicKey<'a> {
    /// Parses a DER SubjectPublicKeyInfo holding an RSA or NIST-curve EC key.
    ///
    /// # Errors
    /// [`PublicError::SpkiDer`] for malformed DER (naming the field),
    /// [`PublicError::BadSpki`] for a structure that is not a key this crate handles,
    /// [`PublicError::UnsupportedCurve`], [`PublicError::Tpm12Key`] or
    /// [`PublicError::BadKey`] for keys this crate does not handle.
    pub fn from_spki_der(input: &'a [u8]) -> Result<Self, PublicError> {
        let at = |field| move |error| PublicError::SpkiDer { field, error };
        let mut outer = Reader::new(input);
        let mut spki = outer.sequence().map_err(at("SubjectPublicKeyInfo"))?;
        outer.finish().map_err(at("SubjectPublicKeyInfo"))?;
        let mut algid = spki.sequence().map_err(at("algorithm"))?;
        let bits = spki
            .read_tag(tag::BIT_STRING)
            .map_err(at("subjectPublicKey"))?;
        spki.finish().map_err(at("SubjectPublicKeyInfo"))?;
        let oid = algid.read_tag(tag::OID).map_err(at("algorithm"))?.contents;
        if oid == OID_RSA {
            match algid.read_optional(tag::NULL).map_err(at("algorithm"))? {
                Some(null) if !null.contents.is_empty() => {
                    return Err(PublicError::BadSpki {
                        reason: "rsaEncryption parameters are not NULL",
                    });
                }
                _ => {}
            }
            algid.finish().map_err(|_| PublicError::BadSpki {
                reason: "rsaEncryption parameters are not NULL",
            })?;
            let mut key = bits.bit_string_reader().map_err(at("subjectPublicKey"))?;
            let mut rsa = key.sequence().map_err(at("RSAPublicKey"))?;
            key.finish().map_err(at("RSAPublicKey"))?;
            let n = rsa.read_tag(tag::INTEGER).map_err(at("modulus"))?.contents;
            let e = rsa
                .read_tag(tag::INTEGER)
                .map_err(at("publicExponent"))?
                .contents;
            rsa.finish().map_err(at("RSAPublicKey"))?;
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
            let named = algid
                .read_tag(tag::OID)
                .map_err(|_| PublicError::UnsupportedCurve { curve: 0 })?
                .contents;
            let curve = [EccCurve::NistP256, EccCurve::NistP384, EccCurve::NistP521]
                .into_iter()
                .find(|c| c.oid() == named && algid.is_empty())
                .ok_or(PublicError::UnsupportedCurve { curve: 0 })?;
            let key = bits.bit_string_bytes().map_err(at("subjectPublicKey"))?;
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
        let mut w = Writer::new(out.as_mut_slice());
        match *self {
            Self::Rsa { modulus, exponent } => w.sequence(|w| {
                w.sequence(|w| {
                    w.oid(OID_RSA)?;
                    w.null()
                })?;
                w.bit_string_with(|w| {
                    w.sequence(|w| {
                        w.uint(modulus)?;
                        w.uint(&exponent.to_be_bytes())
                    })
                })
            }),
            Self::Ecc { curve, x, y } => w.sequence(|w| {
                w.sequence(|w| {
                    w.oid(OID_EC)?;
                    w.oid(curve.oid())
                })?;
                w.bit_string_with(|w| {
                    w.raw(&[4])?;
                    let f = curve.field_len();
                    for c in [x, y] {
                        let c = strip_zeros(c);
                        for _ in c.len()..f {
                            w.raw(&[0])?;
                        }
                        w.raw(c)?;
                    }
                    Ok(())
                })
            }),
        }
        .map_err(|_: WriteError| PublicError::BufferTooSmall)?;
        Ok(w.finish())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::public::Public;
    use std::string::ToString as _;

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
