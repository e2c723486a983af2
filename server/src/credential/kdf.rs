//! The TPM key derivation functions used by MakeCredential (TPM 2.0 Part 1, 11.4.10):
//! KDFa (SP 800-108 counter mode over HMAC) and KDFe (SP 800-56A concatenation KDF).
//!
//! Both write exactly `out.len()` bytes, so the requested bit count is `8 * out.len()`
//! (MakeCredential only asks for whole bytes). They never allocate and never fail for the
//! hashes the credential code allows.

use aws_lc_rs::{digest, hmac};
use ekattest_protocol::tpm::public::HashAlg;

/// Largest digest handled (SHA-512).
pub(crate) const MAX_DIGEST: usize = 64;

/// aws-lc-rs HMAC algorithm for a TPM hash; `None` for SHA-1, which MakeCredential refuses.
pub(crate) fn hmac_alg(h: HashAlg) -> Option<hmac::Algorithm> {
    match h {
        HashAlg::Sha1 => None,
        HashAlg::Sha256 => Some(hmac::HMAC_SHA256),
        HashAlg::Sha384 => Some(hmac::HMAC_SHA384),
        HashAlg::Sha512 => Some(hmac::HMAC_SHA512),
    }
}

/// aws-lc-rs digest algorithm for a TPM hash; `None` for SHA-1.
pub(crate) fn digest_alg(h: HashAlg) -> Option<&'static digest::Algorithm> {
    match h {
        HashAlg::Sha1 => None,
        HashAlg::Sha256 => Some(&digest::SHA256),
        HashAlg::Sha384 => Some(&digest::SHA384),
        HashAlg::Sha512 => Some(&digest::SHA512),
    }
}

/// Counter block `[i]32` for i = 1.. and the bit count `[bits]32`.
fn counter_and_bits(i: usize, out_len: usize) -> ([u8; 4], [u8; 4]) {
    let i = u32::try_from(i + 1).unwrap_or(u32::MAX);
    let bits = u32::try_from(out_len.saturating_mul(8)).unwrap_or(u32::MAX);
    (i.to_be_bytes(), bits.to_be_bytes())
}

/// KDFa(H, key, label, contextU, contextV, 8*out.len()):
/// `HMAC_H(key, [i]32 || label || 00 || contextU || contextV || [bits]32)` for i = 1..,
/// concatenated and truncated. `label` is given without its terminating zero.
pub(crate) fn kdfa(
    h: hmac::Algorithm,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    out: &mut [u8],
) {
    let key = hmac::Key::new(h, key);
    let out_len = out.len();
    for (i, chunk) in out.chunks_mut(h.digest_algorithm().output_len).enumerate() {
        let (counter, bits) = counter_and_bits(i, out_len);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits);
        let tag = ctx.sign();
        chunk.copy_from_slice(&tag.as_ref()[..chunk.len()]);
    }
}

/// KDFe(H, Z, label, partyU, partyV, 8*out.len()):
/// `H([i]32 || Z || label || 00 || partyU || partyV)` for i = 1.., concatenated and truncated.
/// `label` is given without its terminating zero.
pub(crate) fn kdfe(
    h: &'static digest::Algorithm,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    out: &mut [u8],
) {
    let out_len = out.len();
    for (i, chunk) in out.chunks_mut(h.output_len).enumerate() {
        let (counter, _) = counter_and_bits(i, out_len);
        let mut ctx = digest::Context::new(h);
        ctx.update(&counter);
        ctx.update(z);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        let d = ctx.finish();
        chunk.copy_from_slice(&d.as_ref()[..chunk.len()]);
    }
}
