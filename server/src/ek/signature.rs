//! Certificate signature algorithms and their verification with aws-lc-rs.
//!
//! Supported: RSA PKCS#1 v1.5 with SHA-256/384/512, RSASSA-PSS with SHA-256/384/512 (MGF1 with
//! the same hash, salt length = hash length: the only parameters aws-lc-rs verifies), ECDSA on
//! P-256/P-384/P-521 with SHA-256/384/512 in any combination, and SHA-1 (RSA, ECDSA P-256 and
//! P-521) only when the caller allows it. RSA keys below 2048 bits are refused. This module
//! must never accept a signature whose algorithm does not fit the issuer's key type.
//!
//! Issuer keys are parsed by aws-lc once per certificate and algorithm ([`KeyCache`]): the
//! configured CA and intermediate certificates live as long as the policy, so their keys (and
//! aws-lc's per-key RSA Montgomery context) are built on first use instead of on every
//! signature check.

use std::sync::OnceLock;

use asn1_rs::{Any, Oid, Tag, oid};
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::AlgorithmIdentifier;

use super::cert::{Cert, Curve, KeyKind};

/// A hash function used in a certificate signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// The signature algorithm of a certificate, resolved from its AlgorithmIdentifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigAlg {
    RsaPkcs1(Hash),
    RsaPss(Hash),
    Ecdsa(Hash),
    /// Not supported, with a description (OID, or PSS parameters we cannot verify).
    Unsupported(String),
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigFailure {
    /// The child's signature algorithm is not supported.
    Unsupported(String),
    /// SHA-1 and `allow_sha1` is off.
    Sha1NotAllowed,
    /// The algorithm does not fit the issuer's key (e.g. ECDSA signature, RSA key).
    KeyMismatch(String),
    /// The signature does not verify.
    Invalid,
}

const SHA1_RSA: Oid<'static> = oid!(1.2.840.113549.1.1.5);
const SHA256_RSA: Oid<'static> = oid!(1.2.840.113549.1.1.11);
const SHA384_RSA: Oid<'static> = oid!(1.2.840.113549.1.1.12);
const SHA512_RSA: Oid<'static> = oid!(1.2.840.113549.1.1.13);
const RSA_PSS: Oid<'static> = oid!(1.2.840.113549.1.1.10);
const ECDSA_SHA1: Oid<'static> = oid!(1.2.840.10045.4.1);
const ECDSA_SHA256: Oid<'static> = oid!(1.2.840.10045.4.3.2);
const ECDSA_SHA384: Oid<'static> = oid!(1.2.840.10045.4.3.3);
const ECDSA_SHA512: Oid<'static> = oid!(1.2.840.10045.4.3.4);

/// Resolves a certificate's signatureAlgorithm. PKCS#1 v1.5 parameters may be NULL or absent
/// and ECDSA parameters absent or NULL (both seen in the wild); PSS parameters must be one of
/// the three exact sets aws-lc-rs verifies.
pub(crate) fn resolve(alg: &AlgorithmIdentifier<'_>) -> SigAlg {
    let oid = &alg.algorithm;
    let params = alg.parameters.as_ref();
    let null_or_absent = params.is_none_or(|p| p.tag() == Tag::Null && p.data.is_empty());
    let simple = [
        (&SHA1_RSA, SigAlg::RsaPkcs1(Hash::Sha1)),
        (&SHA256_RSA, SigAlg::RsaPkcs1(Hash::Sha256)),
        (&SHA384_RSA, SigAlg::RsaPkcs1(Hash::Sha384)),
        (&SHA512_RSA, SigAlg::RsaPkcs1(Hash::Sha512)),
        (&ECDSA_SHA1, SigAlg::Ecdsa(Hash::Sha1)),
        (&ECDSA_SHA256, SigAlg::Ecdsa(Hash::Sha256)),
        (&ECDSA_SHA384, SigAlg::Ecdsa(Hash::Sha384)),
        (&ECDSA_SHA512, SigAlg::Ecdsa(Hash::Sha512)),
    ];
    for (known, resolved) in simple {
        if oid == known {
            return if null_or_absent {
                resolved
            } else {
                SigAlg::Unsupported(format!("{} with unexpected parameters", oid.to_id_string()))
            };
        }
    }
    if *oid == RSA_PSS {
        return params
            .and_then(pss_hash)
            .map(SigAlg::RsaPss)
            .unwrap_or_else(|| {
                SigAlg::Unsupported(
                    "RSASSA-PSS with parameters other than MGF1 and salt = hash length".to_owned(),
                )
            });
    }
    SigAlg::Unsupported(format!("signature algorithm {}", oid.to_id_string()))
}

/// Matches RSASSA-PSS-params against the canonical encodings for SHA-256/384/512 (MGF1 with
/// the same hash, salt length = hash length, trailer 1 by default), with and without NULL
/// hash parameters.
fn pss_hash(params: &Any<'_>) -> Option<Hash> {
    if params.tag() != Tag::Sequence {
        return None;
    }
    let hashes = [
        (1u8, 32u8, Hash::Sha256),
        (2, 48, Hash::Sha384),
        (3, 64, Hash::Sha512),
    ];
    for (last, salt, hash) in hashes {
        for with_null in [true, false] {
            if params.data == pss_params(last, salt, with_null).as_slice() {
                return Some(hash);
            }
        }
    }
    None
}

fn pss_params(hash_last_arc: u8, salt: u8, with_null: bool) -> Vec<u8> {
    // id-sha256/384/512 = 2.16.840.1.101.3.4.2.{1,2,3}; id-mgf1 = 1.2.840.113549.1.1.8
    let hash_oid = [
        0x06,
        0x09,
        0x60,
        0x86,
        0x48,
        0x01,
        0x65,
        0x03,
        0x04,
        0x02,
        hash_last_arc,
    ];
    let mgf1_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    ];
    let mut hash_alg = hash_oid.to_vec();
    if with_null {
        hash_alg.extend_from_slice(&[0x05, 0x00]);
    }
    let hash_alg = tlv(0x30, &hash_alg);
    let mut mgf = mgf1_oid.to_vec();
    mgf.extend_from_slice(&hash_alg);
    let mgf = tlv(0x30, &mgf);
    let mut out = tlv(0xa0, &hash_alg);
    out.extend_from_slice(&tlv(0xa1, &mgf));
    out.extend_from_slice(&tlv(0xa2, &[0x02, 0x01, salt]));
    out
}

/// Short-form TLV (all PSS parameter parts are shorter than 128 bytes).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, u8::try_from(content.len()).unwrap_or(0)];
    out.extend_from_slice(content);
    out
}

/// Distinct verification algorithms one issuer key can serve: RSA PKCS#1 v1.5 with 4 hashes
/// and PSS with 3; ECDSA with 4 hashes on the key's curve.
const KEY_SLOTS: usize = 7;

/// An issuer's public key parsed by aws-lc, per verification algorithm, made on first use (an
/// issuer normally signs with one algorithm, so one slot is filled). `None` in a slot: the key
/// does not parse for that algorithm. Cloning copies the parsed keys (a cache of `key_bits`).
#[derive(Clone, Default)]
pub(crate) struct KeyCache {
    slots: [OnceLock<Option<ParsedPublicKey>>; KEY_SLOTS],
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parsed = self.slots.iter().filter(|s| s.get().is_some()).count();
        write!(f, "KeyCache({parsed} parsed)")
    }
}

impl KeyCache {
    /// The key for algorithm `slot` (from [`algorithm`]), parsing `key_bits` the first time.
    fn get(
        &self,
        slot: usize,
        alg: &'static dyn VerificationAlgorithm,
        key_bits: &[u8],
    ) -> Option<&ParsedPublicKey> {
        self.slots
            .get(slot)?
            .get_or_init(|| ParsedPublicKey::new(alg, key_bits).ok())
            .as_ref()
    }
}

/// Picks the aws-lc-rs algorithm for `alg` under an issuer key of kind `key`, with its
/// [`KeyCache`] slot.
fn algorithm(
    alg: &SigAlg,
    key: &KeyKind,
    allow_sha1: bool,
) -> Result<(usize, &'static dyn VerificationAlgorithm), SigFailure> {
    use Hash::{Sha1, Sha256, Sha384, Sha512};
    if matches!(alg, SigAlg::RsaPkcs1(Sha1) | SigAlg::Ecdsa(Sha1)) && !allow_sha1 {
        return Err(SigFailure::Sha1NotAllowed);
    }
    let chosen: &'static dyn VerificationAlgorithm = match (alg, key) {
        (SigAlg::Unsupported(what), _) => return Err(SigFailure::Unsupported(what.clone())),
        (SigAlg::RsaPkcs1(h), KeyKind::Rsa) => match h {
            Sha1 => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        },
        (SigAlg::RsaPss(h), KeyKind::Rsa) => match h {
            Sha256 => &sig::RSA_PSS_2048_8192_SHA256,
            Sha384 => &sig::RSA_PSS_2048_8192_SHA384,
            Sha512 => &sig::RSA_PSS_2048_8192_SHA512,
            Sha1 => return Err(SigFailure::Unsupported("RSASSA-PSS with SHA-1".to_owned())),
        },
        (SigAlg::Ecdsa(h), KeyKind::Ec(curve)) => match (curve, h) {
            (Curve::P256, Sha1) => &sig::ECDSA_P256_SHA1_ASN1,
            (Curve::P256, Sha256) => &sig::ECDSA_P256_SHA256_ASN1,
            (Curve::P256, Sha384) => &sig::ECDSA_P256_SHA384_ASN1,
            (Curve::P256, Sha512) => &sig::ECDSA_P256_SHA512_ASN1,
            (Curve::P384, Sha256) => &sig::ECDSA_P384_SHA256_ASN1,
            (Curve::P384, Sha384) => &sig::ECDSA_P384_SHA384_ASN1,
            (Curve::P384, Sha512) => &sig::ECDSA_P384_SHA512_ASN1,
            (Curve::P521, Sha1) => &sig::ECDSA_P521_SHA1_ASN1,
            (Curve::P521, Sha256) => &sig::ECDSA_P521_SHA256_ASN1,
            (Curve::P521, Sha384) => &sig::ECDSA_P521_SHA384_ASN1,
            (Curve::P521, Sha512) => &sig::ECDSA_P521_SHA512_ASN1,
            (Curve::P384, Sha1) => {
                return Err(SigFailure::Unsupported("ECDSA P-384 with SHA-1".to_owned()));
            }
        },
        (alg, key) => {
            return Err(SigFailure::KeyMismatch(format!(
                "{alg:?} signature under a {} issuer key",
                key_name(key)
            )));
        }
    };
    let slot = match alg {
        SigAlg::RsaPkcs1(h) | SigAlg::Ecdsa(h) => hash_index(*h),
        SigAlg::RsaPss(h) => 3 + hash_index(*h),
        SigAlg::Unsupported(_) => 0,
    };
    Ok((slot, chosen))
}

/// 0 to 3 for SHA-1, SHA-256, SHA-384, SHA-512.
fn hash_index(h: Hash) -> usize {
    match h {
        Hash::Sha1 => 0,
        Hash::Sha256 => 1,
        Hash::Sha384 => 2,
        Hash::Sha512 => 3,
    }
}

fn key_name(key: &KeyKind) -> String {
    match key {
        KeyKind::Rsa => "RSA".to_owned(),
        KeyKind::Ec(c) => format!("ECDSA {c:?}"),
        KeyKind::Other(what) => what.clone(),
    }
}

/// Verifies `child`'s signature with `issuer`'s public key (parsed once per issuer
/// certificate and algorithm). A key that does not parse fails as an invalid signature, as
/// with a key parsed per call.
pub(crate) fn verify(child: &Cert, issuer: &Cert, allow_sha1: bool) -> Result<(), SigFailure> {
    let (slot, alg) = algorithm(&child.sig_alg, &issuer.key_kind, allow_sha1)?;
    issuer
        .keys
        .get(slot, alg, &issuer.key_bits)
        .ok_or(SigFailure::Invalid)?
        .verify_sig(&child.tbs, &child.signature)
        .map_err(|_| SigFailure::Invalid)
}

impl std::fmt::Display for SigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "unsupported signature: {what}"),
            Self::Sha1NotAllowed => {
                f.write_str("SHA-1 signature refused (enable allowSha1 for legacy vendor CAs)")
            }
            Self::KeyMismatch(what) => write!(f, "signature algorithm does not fit: {what}"),
            Self::Invalid => f.write_str("signature does not verify"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> Cert {
        let pem = ekattest_testkit::testdata::real_ek(&format!("ca/{name}"));
        Cert::parse(pem::parse(pem).unwrap().contents()).unwrap()
    }

    #[test]
    fn issuer_keys_are_parsed_once_per_algorithm() {
        let root = ca("STM_RSA_RT.pem");
        let mut inter = ca("STM_RSA_05I.pem");
        assert_eq!(format!("{:?}", root.keys), "KeyCache(0 parsed)");
        assert_eq!(verify(&inter, &root, false), Ok(()));
        assert_eq!(verify(&inter, &root, false), Ok(()));
        assert_eq!(format!("{:?}", root.keys), "KeyCache(1 parsed)");

        // The cached key still checks every signature.
        let last = inter.signature.len() - 1;
        inter.signature[last] ^= 1;
        assert_eq!(verify(&inter, &root, false), Err(SigFailure::Invalid));
        inter.signature[last] ^= 1;

        // Another algorithm gets its own key: a SHA-384 reading of this SHA-256 signature
        // fails, and does not disturb the SHA-256 key.
        inter.sig_alg = SigAlg::RsaPkcs1(Hash::Sha384);
        assert_eq!(verify(&inter, &root, false), Err(SigFailure::Invalid));
        assert_eq!(format!("{:?}", root.keys), "KeyCache(2 parsed)");
        inter.sig_alg = SigAlg::RsaPkcs1(Hash::Sha256);
        assert_eq!(verify(&inter, &root, false), Ok(()));
    }

    #[test]
    fn an_unusable_issuer_key_fails_every_time() {
        let inter = ca("STM_RSA_05I.pem");
        let mut root = ca("STM_RSA_RT.pem");
        root.key_bits = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        for _ in 0..2 {
            assert_eq!(verify(&inter, &root, false), Err(SigFailure::Invalid));
        }
        // Wrong key type for the algorithm: refused before any key is parsed.
        root.key_kind = KeyKind::Ec(Curve::P256);
        assert!(matches!(
            verify(&inter, &root, false),
            Err(SigFailure::KeyMismatch(_))
        ));
    }
}
