//! The agent's SVID key: the login-time check of its SubjectPublicKeyInfo and the
//! answer-time check of its proof of possession.
//!
//! The key and the signature come from the network: they are parsed within fixed bounds and
//! the point is checked on the curve before any use. Never panics, never logs.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use ekattest_protocol::limits::MAC_LEN;
use ekattest_protocol::msg::SessionId;
use ekattest_protocol::sign;
use ekattest_protocol::spki::{EccCurve, PublicKey};

use super::SvidError;

/// An agent's P-256 public key (uncompressed point), whose private half we never see.
pub(super) struct AgentKey(pub(super) [u8; 65]);

impl rcgen::PublicKeyData for AgentKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Checks a Login's `svid_key`: a DER SubjectPublicKeyInfo, id-ecPublicKey with prime256v1,
/// an uncompressed point on the curve, no trailing bytes. Cheap; run at login before
/// MakeCredential.
///
/// # Errors
/// [`SvidError::SvidKey`] naming the problem.
pub fn check_svid_key(spki_der: &[u8]) -> Result<(), SvidError> {
    p256_point(spki_der).map(|_| ()).map_err(SvidError::SvidKey)
}

/// Verifies an Answer's proof of possession `pop` (DER ECDSA P-256 SHA-256) over
/// [`sign::pop_signed_bytes`]`(transcript, session, mac)` with the Login's `svid_key`.
///
/// # Errors
/// [`SvidError::SvidKey`] for an unusable key, [`SvidError::BadPop`] if the signature does
/// not verify.
pub fn verify_pop(
    spki_der: &[u8],
    transcript: &sign::Transcript,
    session: &SessionId,
    mac: &[u8; MAC_LEN],
    pop: &[u8],
) -> Result<(), SvidError> {
    let point = p256_point(spki_der).map_err(SvidError::SvidKey)?;
    let msg = sign::pop_signed_bytes(transcript, session, mac);
    let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .map_err(|e| SvidError::SvidKey(format!("point rejected: {e}")))?;
    key.verify_sig(&msg, pop).map_err(|_| SvidError::BadPop)
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo, checked to lie on the curve.
pub(super) fn p256_point(spki_der: &[u8]) -> Result<[u8; 65], String> {
    let key = PublicKey::from_spki_der(spki_der).map_err(|e| e.to_string())?;
    let (x, y) = match key {
        PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x,
            y,
        } => (x, y),
        PublicKey::Ecc { curve, .. } => {
            return Err(format!("curve {curve:?}, not P-256"));
        }
        PublicKey::Rsa { .. } => return Err("an RSA key, not ECDSA P-256".to_owned()),
    };
    let mut point = [0u8; 65];
    point[0] = 4;
    let (px, py) = point[1..].split_at_mut(32);
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 coordinates are not 32 bytes each".to_owned());
    }
    px.copy_from_slice(x);
    py.copy_from_slice(y);
    ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .map_err(|e| format!("the point is not on the P-256 curve ({e})"))?;
    Ok(point)
}
