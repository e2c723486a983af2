//! RSA secret sharing for MakeCredential: the seed encrypted with RSA-OAEP (RFC 8017 7.1),
//! hash and MGF1 hash = the EK's nameAlg, label `"IDENTITY\0"` (TPM 2.0 Part 1, 24.4 and
//! Annex B.10.3).
//!
//! Two paths give the same distribution of ciphertexts:
//! - [`encrypt_system`]: aws-lc-rs's OAEP, which draws the OAEP seed from aws-lc's CSPRNG. This is
//!   the production hot path (about 16 us for RSA-2048).
//! - [`encrypt_fixed`]: our EME-OAEP encoding over a caller-supplied OAEP seed, then the raw RSA
//!   public operation with crypto-bigint. Deterministic, so known-answer vectors are reproduced
//!   byte for byte; about 2.5x slower, so it runs only when the randomness is injected.
//!
//! The test suite proves both equal: [`encrypt_fixed`] reproduces the vectors' ciphertexts,
//! and both decrypt under the vectors' EK private keys with aws-lc's OAEP to the same seed.
//! Nothing here sees a private key; inputs are public keys already checked by the caller.

use aws_lc_rs::digest;
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OaepAlgorithm, OaepPublicEncryptingKey,
    PublicEncryptingKey,
};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use ekattest_protocol::spki::{PublicKey, SPKI_MAX};
use ekattest_protocol::tpm::public::HashAlg;

use super::CredentialError;
use super::kdf::MAX_DIGEST;

/// OAEP label of MakeCredential: "IDENTITY" with its terminating zero.
pub(crate) const LABEL: &[u8] = b"IDENTITY\0";

/// Largest modulus handled, in bytes (RSA-4096; the EK check allows 2048 and 3072 only).
const MAX_MODULUS: usize = 512;

fn oaep_alg(h: HashAlg) -> Result<&'static OaepAlgorithm, CredentialError> {
    match h {
        HashAlg::Sha256 => Ok(&OAEP_SHA256_MGF1SHA256),
        HashAlg::Sha384 => Ok(&OAEP_SHA384_MGF1SHA384),
        HashAlg::Sha1 | HashAlg::Sha512 => Err(CredentialError::Crypto {
            op: "RSA-OAEP hash",
        }),
    }
}

/// Encrypts `seed` to `key` with aws-lc-rs RSA-OAEP(`h`, label "IDENTITY\0"); returns the
/// ciphertext (modulus length).
pub(crate) fn encrypt_system(
    key: &PublicKey<'_>,
    h: HashAlg,
    seed: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let mut spki = [0u8; SPKI_MAX];
    let der = key.spki_der(&mut spki).map_err(CredentialError::EkKey)?;
    let public = PublicEncryptingKey::from_der(der).map_err(|_| CredentialError::Crypto {
        op: "RSA public key import",
    })?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| CredentialError::Crypto {
        op: "RSA-OAEP key setup",
    })?;
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let len = oaep
        .encrypt(oaep_alg(h)?, seed, &mut out, Some(LABEL))
        .map_err(|_| CredentialError::Crypto {
            op: "RSA-OAEP encrypt",
        })?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Encrypts `seed` to `key` with RSA-OAEP(`h`, label "IDENTITY\0") using `oaep_seed` (|H|
/// bytes) as the OAEP random seed; deterministic.
pub(crate) fn encrypt_fixed(
    key: &PublicKey<'_>,
    h: HashAlg,
    seed: &[u8],
    oaep_seed: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let PublicKey::Rsa { modulus, exponent } = *key else {
        return Err(CredentialError::Crypto {
            op: "RSA-OAEP on a non-RSA key",
        });
    };
    let start = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let modulus = &modulus[start..];
    let em = eme_oaep_encode(h, modulus.len(), seed, oaep_seed)?;
    raw_public(modulus, exponent, &em)
}

/// MGF1 (RFC 8017 B.2.1) with hash `d`: XORs the mask derived from `seed` into `out`.
fn mgf1_xor(d: &'static digest::Algorithm, seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(d.output_len).enumerate() {
        let mut ctx = digest::Context::new(d);
        ctx.update(seed);
        ctx.update(&u32::try_from(counter).unwrap_or(u32::MAX).to_be_bytes());
        let mask = ctx.finish();
        chunk
            .iter_mut()
            .zip(mask.as_ref())
            .for_each(|(b, m)| *b ^= m);
    }
}

/// EME-OAEP encoding (RFC 8017 7.1.1 step 2) of `message` for a `k`-byte modulus:
/// `00 || maskedSeed || maskedDB` with `DB = H(label) || PS || 01 || message`.
fn eme_oaep_encode(
    h: HashAlg,
    k: usize,
    message: &[u8],
    oaep_seed: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let d = super::kdf::digest_alg(h).ok_or(CredentialError::Crypto {
        op: "RSA-OAEP hash",
    })?;
    let h_len = d.output_len;
    if oaep_seed.len() != h_len || h_len > MAX_DIGEST {
        return Err(CredentialError::Crypto {
            op: "RSA-OAEP seed length",
        });
    }
    if k > MAX_MODULUS || message.len() + 2 * h_len + 2 > k {
        return Err(CredentialError::Crypto {
            op: "RSA-OAEP message too long for the key",
        });
    }
    let mut em = vec![0u8; k];
    let (seed_part, db) = em[1..].split_at_mut(h_len);
    db[..h_len].copy_from_slice(digest::digest(d, LABEL).as_ref());
    let one = db.len() - message.len() - 1;
    db[one] = 0x01;
    db[one + 1..].copy_from_slice(message);
    mgf1_xor(d, oaep_seed, db);
    seed_part.copy_from_slice(oaep_seed);
    mgf1_xor(d, db, seed_part);
    Ok(em)
}

/// RSAEP (RFC 8017 5.1.1): `em^exponent mod modulus`, left-padded to the modulus length.
fn raw_public(modulus: &[u8], exponent: u32, em: &[u8]) -> Result<Vec<u8>, CredentialError> {
    let bad = CredentialError::Crypto {
        op: "RSA public operation",
    };
    let k = modulus.len();
    let bits = u32::try_from(k * 8).map_err(|_| bad.clone())?;
    let n = BoxedUint::from_be_slice(modulus, bits).map_err(|_| bad.clone())?;
    let n = Option::<Odd<BoxedUint>>::from(Odd::new(n)).ok_or(bad.clone())?;
    let m = BoxedUint::from_be_slice(em, bits).map_err(|_| bad.clone())?;
    if m >= *n.as_ref() {
        return Err(bad);
    }
    let e = BoxedUint::from_be_slice(&exponent.to_be_bytes(), bits).map_err(|_| bad.clone())?;
    let params = BoxedMontyParams::new_vartime(n);
    let c = BoxedMontyForm::new(m, params)
        .pow_bounded_exp(&e, 32)
        .retrieve();
    let bytes = c.to_be_bytes();
    // BoxedUint rounds the precision up to whole limbs: keep the low k bytes.
    let skip = bytes.len().saturating_sub(k);
    if bytes[..skip].iter().any(|&b| b != 0) {
        return Err(bad);
    }
    let mut out = vec![0u8; k - (bytes.len() - skip)];
    out.extend_from_slice(&bytes[skip..]);
    Ok(out)
}
