//! ECC secret sharing for MakeCredential (TPM 2.0 Part 1, Annex C.6.4 and 24.4): an ephemeral
//! key on the EK's curve, Z = x of d_e * Q_EK, and
//! `seed = KDFe(H, Z, "IDENTITY", Qe.x, Qek.x, |H| * 8)`.
//!
//! The ephemeral private key comes from aws-lc-rs key generation when the randomness is the
//! system CSPRNG, or from a scalar drawn from the injected [`Random`] otherwise (known-answer
//! tests). The ephemeral private key never leaves this module.

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, PrivateKey, UnparsedPublicKey};
use ekattest_protocol::spki::EccCurve;

use super::kdf::{MAX_DIGEST, kdfe};
use super::{CredentialError, Random};

/// Largest field handled (P-384; the EK check allows P-256 and P-384 only).
const MAX_FIELD: usize = 48;

/// Result of the key agreement: the seed and the encoded ephemeral point.
pub(crate) struct Shared {
    /// The seed (|H| bytes in `seed[..seed_len]`).
    pub(crate) seed: [u8; MAX_DIGEST],
    /// Z, the shared x coordinate (`z[..field_len]`), kept for known-answer traces.
    pub(crate) z: [u8; MAX_FIELD],
    /// TPMS_ECC_POINT of the ephemeral public key: `UINT16 || x || UINT16 || y`.
    pub(crate) point: Vec<u8>,
}

fn left_pad<'b>(v: &[u8], out: &'b mut [u8; MAX_FIELD], len: usize) -> Option<&'b [u8]> {
    let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..];
    let dst = out.get_mut(..len)?;
    let pad = len.checked_sub(v.len())?;
    dst[..pad].fill(0);
    dst[pad..].copy_from_slice(v);
    Some(dst)
}

/// Runs the ECDH half of MakeCredential against the EK point (`x`, `y`) on `curve`, with
/// `seed_len` = |H| bytes of seed derived by KDFe over `kdf_hash`.
pub(crate) fn share<R: Random + ?Sized>(
    curve: EccCurve,
    x: &[u8],
    y: &[u8],
    kdf_hash: &'static aws_lc_rs::digest::Algorithm,
    rng: &mut R,
) -> Result<Shared, CredentialError> {
    let alg: &'static agreement::Algorithm = match curve {
        EccCurve::NistP256 => &ECDH_P256,
        EccCurve::NistP384 => &ECDH_P384,
        EccCurve::NistP521 => return Err(CredentialError::Crypto { op: "ECDH curve" }),
    };
    let fl = curve.field_len();
    let bad_point = CredentialError::Crypto {
        op: "EK point coordinates",
    };
    let (mut xb, mut yb) = ([0u8; MAX_FIELD], [0u8; MAX_FIELD]);
    let ek_x = left_pad(x, &mut xb, fl).ok_or(bad_point.clone())?;
    let ek_y = left_pad(y, &mut yb, fl).ok_or(bad_point)?;
    let mut peer = [0u8; 1 + 2 * MAX_FIELD];
    peer[0] = 0x04;
    peer[1..=fl].copy_from_slice(ek_x);
    peer[1 + fl..=2 * fl].copy_from_slice(ek_y);
    let peer = UnparsedPublicKey::new(alg, &peer[..=2 * fl]);

    let ephemeral = if rng.is_system() {
        PrivateKey::generate(alg).map_err(|_| CredentialError::Crypto {
            op: "ECDH key generation",
        })?
    } else {
        let mut scalar = [0u8; MAX_FIELD];
        rng.fill(&mut scalar[..fl])
            .map_err(CredentialError::Random)?;
        let key =
            PrivateKey::from_private_key(alg, &scalar[..fl]).map_err(|_| CredentialError::Crypto {
                op: "ECDH ephemeral scalar",
            });
        scalar.fill(0);
        key?
    };
    let qe = ephemeral
        .compute_public_key()
        .map_err(|_| CredentialError::Crypto {
            op: "ECDH public key",
        })?;
    let qe = qe.as_ref();
    if qe.len() != 1 + 2 * fl {
        return Err(CredentialError::Crypto {
            op: "ECDH public key",
        });
    }
    let (qe_x, qe_y) = qe[1..].split_at(fl);

    let mut z = [0u8; MAX_FIELD];
    agreement::agree(&ephemeral, peer, (), |shared| {
        z.get_mut(..shared.len()).ok_or(())?.copy_from_slice(shared);
        Ok(())
    })
    .map_err(|()| CredentialError::Crypto {
        op: "ECDH with the EK point (not on the curve?)",
    })?;
    let mut seed = [0u8; MAX_DIGEST];
    kdfe(
        kdf_hash,
        &z[..fl],
        b"IDENTITY",
        qe_x,
        ek_x,
        &mut seed[..kdf_hash.output_len],
    );

    let flen = u16::try_from(fl).unwrap_or(u16::MAX).to_be_bytes();
    let mut point = Vec::with_capacity(4 + 2 * fl);
    point.extend_from_slice(&flen);
    point.extend_from_slice(qe_x);
    point.extend_from_slice(&flen);
    point.extend_from_slice(qe_y);
    Ok(Shared { seed, z, point })
}
