//! ECDSA P-256 with SHA-256 on ring (already linked for TLS and the salted sessions): the
//! software SVID key, the checks of the server's signatures, and the DER and PEM forms they
//! travel in. Signatures are DER ECDSA-Sig-Value both ways, as X.509 and the wire protocol
//! carry them.
//!
//! Replaces RustCrypto's p256 on the device (issue 19): ring signs and verifies with the same
//! P-256 code rustls uses, so the agent carries one P-256 implementation instead of two and
//! about fifteen crates fewer. Keys are PKCS#8 v1 with the public key (RFC 5915), what ring
//! generates and what openssl, p256 and the agent before this module write and read.

use std::fmt;

use ekattest_protocol::der::{self, Reader, Writer};
use ekattest_protocol::spki::{EccCurve, PublicKey};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroizing;

/// An uncompressed SEC1 point: 0x04, x, y.
pub const POINT_LEN: usize = 65;

/// The P-256 group order n, big-endian (SEC 2, 2.4.2).
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// A P-256 public key that checks ECDSA-with-SHA-256 signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey([u8; POINT_LEN]);

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", hex::encode(self.0))
    }
}

impl VerifyingKey {
    /// The key of a DER SubjectPublicKeyInfo, if it is a P-256 key. (Whether the point is
    /// on the curve is checked by every verification, which fails if it is not.)
    #[must_use]
    pub fn from_spki(spki: &[u8]) -> Option<Self> {
        let PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x,
            y,
        } = PublicKey::from_spki_der(spki).ok()?
        else {
            return None;
        };
        let mut point = [0u8; POINT_LEN];
        point[0] = 4;
        // Right-align: the parser may have dropped leading zero bytes.
        point
            .get_mut(33usize.checked_sub(x.len())?..33)?
            .copy_from_slice(x);
        point
            .get_mut(65usize.checked_sub(y.len())?..65)?
            .copy_from_slice(y);
        Some(Self(point))
    }

    /// Whether `signature` (DER) is this key's over `message`.
    #[must_use]
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// Whether `signature` is a DER ECDSA-Sig-Value: `SEQUENCE { r INTEGER, s INTEGER }`, each
/// positive, minimally encoded and below the P-256 order, nothing after it. (Verification
/// refuses anything else too; this tells a malformed signature from a wrong one.)
#[must_use]
pub fn is_der_signature(signature: &[u8]) -> bool {
    let parse = || -> Result<bool, der::Error> {
        let mut outer = Reader::new(signature);
        let mut seq = outer.sequence()?;
        outer.finish()?;
        let r = seq.read_tag(der::tag::INTEGER)?;
        let s = seq.read_tag(der::tag::INTEGER)?;
        seq.finish()?;
        Ok(scalar_in_range(r.contents) && scalar_in_range(s.contents))
    };
    parse().unwrap_or(false)
}

/// A DER INTEGER's contents as a P-256 scalar: positive, minimal, in 1..n.
fn scalar_in_range(contents: &[u8]) -> bool {
    let minimal = match contents {
        [] => false,
        [0] => false,
        [0, next, ..] => next & 0x80 != 0,
        [first, ..] => first & 0x80 == 0,
    };
    let magnitude = der::strip_zeros(contents);
    minimal && below_order(magnitude)
}

/// Whether the big-endian `magnitude` (no leading zeros) is nonzero and below n.
fn below_order(magnitude: &[u8]) -> bool {
    if magnitude.is_empty() || magnitude.len() > ORDER.len() {
        return false;
    }
    if magnitude.len() < ORDER.len() {
        return true;
    }
    magnitude < &ORDER[..]
}

/// A DER ECDSA-Sig-Value from the big-endian scalars `r` and `s` (as a TPM returns them).
///
/// # Errors
/// A message if a scalar is zero or not below the P-256 order.
pub fn der_signature(r: &[u8], s: &[u8]) -> Result<Vec<u8>, &'static str> {
    let (r, s) = (der::strip_zeros(r), der::strip_zeros(s));
    if !below_order(r) || !below_order(s) {
        return Err("signature scalars out of range");
    }
    // Two INTEGERs of at most 33 bytes in a SEQUENCE: 72 bytes at most.
    let mut buf = [0u8; 80];
    let mut w = Writer::new(&mut buf);
    let written = w
        .sequence(|w| {
            w.uint(r)?;
            w.uint(s)
        })
        .map(|()| w.finish().to_vec());
    written.map_err(|_: der::WriteError| "signature does not fit its buffer")
}

/// The software SVID key: a P-256 key pair in the agent's memory, with its PKCS#8 form
/// (zeroed when dropped).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<private>)")
    }
}

impl SigningKey {
    /// A new key from the OS random source.
    ///
    /// # Errors
    /// A message if the random source or key generation fails.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| "P-256 key generation failed (OS random source?)".to_owned())?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 v1 DER (with the public key, as ring, openssl and p256 write).
    ///
    /// # Errors
    /// A message if `der` is not such a P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not a PKCS#8 P-256 key: {e}"))?;
        Ok(Self {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// The public key as an uncompressed point.
    #[must_use]
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The private key, PKCS#8 DER.
    #[must_use]
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// A DER signature over `message` (ECDSA with SHA-256, random nonce).
    ///
    /// # Errors
    /// A message if the random source fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, &'static str> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| "ECDSA signing failed (OS random source?)")
    }
}

/// `der` as PEM with `label`: base64 in 64-character lines (RFC 7468), LF line ends.
#[must_use]
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                b64.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'A')));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
