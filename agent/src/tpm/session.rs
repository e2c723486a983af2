//! Salted HMAC sessions with response parameter encryption, sans-IO: the salt sent in
//! TPM2_StartAuthSession, the session key, command and response HMACs, and the decryption
//! of the first response parameter (TPM 2.0 Part 1: 11.4.10 KDFa/KDFe, 19.6 "HMAC
//! Computation", 19.6.8 sessionKey, 21 "Session-based Encryption" (CFB), Annex B.10.3 RSA
//! and Annex C.6.1 ECC secret sharing; Part 3, 11.1 StartAuthSession).
//!
//! Why: ActivateCredential answers with the credential secret, which would otherwise cross
//! the TPM bus (SPI, LPC, the swtpm socket) in clear. The salt is encrypted to the EK, which
//! only this TPM can decrypt, so a bus observer learns neither the session key nor the secret.
//! The session is unbound and the AK's authValue is empty, so the HMAC and CFB keys are the
//! sessionKey alone.
//!
//! Must never: log a salt, key or decrypted parameter; decrypt a response whose HMAC did not
//! verify; panic on response bytes.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use ekattest_protocol::spki::{EccCurve, PublicKey};
use ekattest_protocol::tpm::public::{HashAlg, Public};
use ring::{agreement, digest, hmac};

/// The session's authHash: SHA-256 (the KDFa of the session key, HMACs and CFB keys).
pub const SESSION_HASH: HashAlg = HashAlg::Sha256;
/// nonceCaller length for the session (the digest size of [`SESSION_HASH`]).
pub const NONCE_LEN: usize = 32;
/// TPMA_SESSION.encrypt: the TPM encrypts the first response parameter.
pub const ATTR_ENCRYPT: u8 = 0x40;
/// TPMT_SYM_DEF of the session: TPM_ALG_AES, 128 bits, TPM_ALG_CFB.
pub const SYMMETRIC_AES128_CFB: [u8; 6] = [0x00, 0x06, 0x00, 0x80, 0x00, 0x43];

/// Why session crypto failed. Static strings: the caller names the command.
pub type Fault = &'static str;

/// A salt and its encryption to the EK (TPM2B_ENCRYPTED_SECRET contents).
#[derive(Clone, PartialEq, Eq)]
pub struct Salt {
    /// The salt itself: |H| bytes, H = the EK's nameAlg. Never logged.
    pub secret: Vec<u8>,
    /// encryptedSalt: the RSA-OAEP ciphertext, or the ephemeral TPMS_ECC_POINT.
    pub encrypted: Vec<u8>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salt")
            .field("encrypted", &hex::encode(&self.encrypted))
            .finish_non_exhaustive()
    }
}

fn digest_alg(h: HashAlg) -> Result<&'static digest::Algorithm, Fault> {
    match h {
        HashAlg::Sha256 => Ok(&digest::SHA256),
        HashAlg::Sha384 => Ok(&digest::SHA384),
        HashAlg::Sha512 => Ok(&digest::SHA512),
        HashAlg::Sha1 => Err("SHA-1 sessions are not supported"),
    }
}

fn hmac_alg(h: HashAlg) -> Result<hmac::Algorithm, Fault> {
    match h {
        HashAlg::Sha256 => Ok(hmac::HMAC_SHA256),
        HashAlg::Sha384 => Ok(hmac::HMAC_SHA384),
        HashAlg::Sha512 => Ok(hmac::HMAC_SHA512),
        HashAlg::Sha1 => Err("SHA-1 sessions are not supported"),
    }
}

/// Fills `out` from the operating system's CSPRNG.
///
/// # Errors
/// If the OS has no randomness to give.
pub fn random(out: &mut [u8]) -> Result<(), Fault> {
    getrandom::getrandom(out).map_err(|_| "the operating system gave no random bytes")
}

/// `[i]32` for block `i` (0-based) and `[bits]32` for an output of `out_len` bytes.
fn counter_and_bits(i: usize, out_len: usize) -> ([u8; 4], [u8; 4]) {
    let i = u32::try_from(i + 1).unwrap_or(u32::MAX);
    let bits = u32::try_from(out_len.saturating_mul(8)).unwrap_or(u32::MAX);
    (i.to_be_bytes(), bits.to_be_bytes())
}

/// KDFa(H, key, label, contextU, contextV, 8*out.len()) (Part 1, 11.4.10.2):
/// `HMAC_H(key, [i]32 || label || 00 || contextU || contextV || [bits]32)`, i = 1..,
/// concatenated and truncated. `label` is given without its terminating zero.
///
/// # Errors
/// An unsupported hash.
pub fn kdfa(
    h: HashAlg,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    out: &mut [u8],
) -> Result<(), Fault> {
    let alg = hmac_alg(h)?;
    let key = hmac::Key::new(alg, key);
    let out_len = out.len();
    for (i, chunk) in out.chunks_mut(h.digest_len()).enumerate() {
        let (counter, bits) = counter_and_bits(i, out_len);
        let mut ctx = hmac::Context::with_key(&key);
        for part in [&counter[..], label, &[0], context_u, context_v, &bits] {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let n = chunk.len();
        chunk.copy_from_slice(tag.as_ref().get(..n).ok_or("KDFa block too short")?);
    }
    Ok(())
}

/// KDFe(H, Z, label, partyU, partyV, 8*out.len()) (Part 1, 11.4.10.3):
/// `H([i]32 || Z || label || 00 || partyU || partyV)`, i = 1.., concatenated and truncated.
///
/// # Errors
/// An unsupported hash.
pub fn kdfe(
    h: HashAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    out: &mut [u8],
) -> Result<(), Fault> {
    let alg = digest_alg(h)?;
    let out_len = out.len();
    for (i, chunk) in out.chunks_mut(h.digest_len()).enumerate() {
        let (counter, _) = counter_and_bits(i, out_len);
        let mut ctx = digest::Context::new(alg);
        for part in [&counter[..], z, label, &[0], party_u, party_v] {
            ctx.update(part);
        }
        let d = ctx.finish();
        let n = chunk.len();
        chunk.copy_from_slice(d.as_ref().get(..n).ok_or("KDFe block too short")?);
    }
    Ok(())
}

/// AES-128 in CFB mode with full-block feedback (Part 1, 21.2: "CFB mode"), decrypting
/// `data` in place. The final block may be partial.
pub fn cfb_decrypt(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    cfb(key, iv, data, false);
}

/// AES-128-CFB encryption in place (the TPM's side; tests and fakes).
pub fn cfb_encrypt(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    cfb(key, iv, data, true);
}

fn cfb(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8], encrypt: bool) {
    let aes = Aes128::new(GenericArray::from_slice(key));
    let mut feedback = GenericArray::clone_from_slice(iv);
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        aes.encrypt_block(&mut stream);
        for (i, (b, s)) in chunk.iter_mut().zip(stream.iter()).enumerate() {
            let c = if encrypt { *b ^ s } else { *b };
            *b ^= s;
            if let Some(f) = feedback.get_mut(i) {
                *f = c;
            }
        }
    }
}

/// Makes a salt for a session whose tpmKey is the EK with public area `ek` (TPM2B_PUBLIC).
/// RSA: a random |H|-byte salt, RSA-OAEP(H, MGF1(H), label "SECRET\0") (Part 1, B.10.3).
/// ECC: an ephemeral key on the EK's curve, Z = x(d_e * Q_ek), salt = KDFe(H, Z, "SECRET",
/// Qe.x, Qek.x, 8*|H|), sent as TPMS_ECC_POINT Qe (Part 1, C.6.1). H = the EK's nameAlg.
///
/// # Errors
/// An EK public area that does not parse, an unsupported curve or hash, or no randomness.
pub fn salt_for(ek: &[u8]) -> Result<Salt, Fault> {
    let public = Public::decode(ek).map_err(|_| "the EK public area does not parse")?;
    make_salt(&public)
}

fn make_salt(ek: &Public<'_>) -> Result<Salt, Fault> {
    let h = ek.name_alg;
    let h_len = h.digest_len();
    match ek.key {
        PublicKey::Rsa { modulus, exponent } => {
            let mut secret = vec![0u8; h_len];
            random(&mut secret)?;
            let mut oaep_seed = vec![0u8; h_len];
            random(&mut oaep_seed)?;
            let encrypted = oaep_encrypt(h, modulus, exponent, b"SECRET\0", &secret, &oaep_seed)?;
            Ok(Salt { secret, encrypted })
        }
        PublicKey::Ecc { curve, x, y } => {
            let (alg, field) = match curve {
                EccCurve::NistP256 => (&agreement::ECDH_P256, 32),
                EccCurve::NistP384 => (&agreement::ECDH_P384, 48),
                EccCurve::NistP521 => return Err("P-521 EKs are not supported"),
            };
            let mut peer = vec![0x04];
            for c in [x, y] {
                let c = strip_zeros(c);
                if c.len() > field {
                    return Err("EK point coordinate longer than the field");
                }
                peer.resize(peer.len() + field - c.len(), 0);
                peer.extend_from_slice(c);
            }
            let rng = ring::rand::SystemRandom::new();
            let ephemeral = agreement::EphemeralPrivateKey::generate(alg, &rng)
                .map_err(|_| "ephemeral ECDH key generation failed")?;
            let qe = ephemeral
                .compute_public_key()
                .map_err(|_| "ephemeral ECDH public key failed")?;
            let qe = qe.as_ref();
            let qe_x = qe.get(1..=field).ok_or("ephemeral point too short")?;
            let qe_y = qe.get(1 + field..).ok_or("ephemeral point too short")?;
            let qek_x = peer.get(1..=field).ok_or("EK point too short")?.to_vec();
            let peer = agreement::UnparsedPublicKey::new(alg, peer);
            let mut secret = vec![0u8; h_len];
            agreement::agree_ephemeral(ephemeral, &peer, |z| {
                kdfe(h, z, b"SECRET", qe_x, &qek_x, &mut secret)
            })
            .map_err(|_| "ECDH with the EK failed (not a point on its curve?)")??;
            let mut encrypted = Vec::with_capacity(4 + 2 * field);
            for c in [qe_x, qe_y] {
                encrypted.extend_from_slice(&u16::try_from(c.len()).unwrap_or(0).to_be_bytes());
                encrypted.extend_from_slice(c);
            }
            Ok(Salt { secret, encrypted })
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&v| v != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// Largest RSA modulus handled, in bytes (RSA-4096).
const MAX_MODULUS: usize = 512;

/// RSAES-OAEP-ENCRYPT (RFC 8017 7.1.1) with hash and MGF1 hash `h`, `label` (with its
/// terminating zero, as the TPM hashes it) and the caller's `oaep_seed` (|H| bytes).
///
/// # Errors
/// A modulus that is even, too large, or too small for the message.
pub fn oaep_encrypt(
    h: HashAlg,
    modulus: &[u8],
    exponent: u32,
    label: &[u8],
    message: &[u8],
    oaep_seed: &[u8],
) -> Result<Vec<u8>, Fault> {
    let d = digest_alg(h)?;
    let h_len = d.output_len();
    let modulus = strip_zeros(modulus);
    let k = modulus.len();
    if oaep_seed.len() != h_len {
        return Err("RSA-OAEP seed length");
    }
    if k > MAX_MODULUS || message.len() + 2 * h_len + 2 > k {
        return Err("RSA-OAEP message too long for the EK");
    }
    // EM = 00 || maskedSeed || maskedDB, DB = H(label) || PS || 01 || message.
    let mut em = vec![0u8; k];
    let (seed_part, db) = em
        .get_mut(1..)
        .ok_or("RSA modulus empty")?
        .split_at_mut(h_len);
    let one = db.len() - message.len() - 1;
    db.get_mut(..h_len)
        .ok_or("OAEP DB too short")?
        .copy_from_slice(digest::digest(d, label).as_ref());
    *db.get_mut(one).ok_or("OAEP DB too short")? = 0x01;
    db.get_mut(one + 1..)
        .ok_or("OAEP DB too short")?
        .copy_from_slice(message);
    mgf1_xor(d, oaep_seed, db);
    seed_part.copy_from_slice(oaep_seed);
    mgf1_xor(d, db, seed_part);
    raw_public(modulus, exponent, &em)
}

/// MGF1 (RFC 8017 B.2.1): XORs the mask derived from `seed` into `out`.
fn mgf1_xor(d: &'static digest::Algorithm, seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(d.output_len()).enumerate() {
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

/// RSAEP (RFC 8017 5.1.1): `em^exponent mod modulus`, left-padded to the modulus length.
fn raw_public(modulus: &[u8], exponent: u32, em: &[u8]) -> Result<Vec<u8>, Fault> {
    const BAD: Fault = "RSA public operation on the EK key failed";
    let k = modulus.len();
    let bits = u32::try_from(k * 8).map_err(|_| BAD)?;
    let n = BoxedUint::from_be_slice(modulus, bits).map_err(|_| BAD)?;
    let n = Option::<Odd<BoxedUint>>::from(Odd::new(n)).ok_or(BAD)?;
    let m = BoxedUint::from_be_slice(em, bits).map_err(|_| BAD)?;
    if m >= *n.as_ref() {
        return Err(BAD);
    }
    let e = BoxedUint::from_be_slice(&exponent.to_be_bytes(), bits).map_err(|_| BAD)?;
    let params = BoxedMontyParams::new_vartime(n);
    let c = BoxedMontyForm::new(m, params)
        .pow_bounded_exp(&e, 32)
        .retrieve()
        .to_be_bytes();
    // BoxedUint rounds the precision up to whole limbs: keep the low k bytes.
    let skip = c.len().saturating_sub(k);
    let (high, low) = c.split_at(skip);
    if high.iter().any(|&b| b != 0) {
        return Err(BAD);
    }
    let mut out = vec![0u8; k - low.len()];
    out.extend_from_slice(low);
    Ok(out)
}

/// cpHash (Part 1, 18.7): `H(commandCode || Name(handle 1) || ... || parameters)`.
///
/// # Errors
/// An unsupported hash.
pub fn cp_hash(h: HashAlg, cc: u32, names: &[&[u8]], params: &[u8]) -> Result<Vec<u8>, Fault> {
    let mut ctx = digest::Context::new(digest_alg(h)?);
    ctx.update(&cc.to_be_bytes());
    for n in names {
        ctx.update(n);
    }
    ctx.update(params);
    Ok(ctx.finish().as_ref().to_vec())
}

/// rpHash (Part 1, 18.8) of a successful response: `H(0u32 || commandCode || parameters)`.
///
/// # Errors
/// An unsupported hash.
pub fn rp_hash(h: HashAlg, cc: u32, params: &[u8]) -> Result<Vec<u8>, Fault> {
    let mut ctx = digest::Context::new(digest_alg(h)?);
    ctx.update(&0u32.to_be_bytes());
    ctx.update(&cc.to_be_bytes());
    ctx.update(params);
    Ok(ctx.finish().as_ref().to_vec())
}

/// An open salted, unbound HMAC session with AES-128-CFB parameter encryption.
pub struct Session {
    /// The session handle (0x02xxxxxx).
    pub handle: u32,
    key: Vec<u8>,
    nonce_tpm: Vec<u8>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &format_args!("{:#010x}", self.handle))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session StartAuthSession opened: sessionKey = KDFa(SHA-256, salt, "ATH",
    /// nonceTPM, nonceCaller, 256) (Part 1, 19.6.8; no bind value).
    ///
    /// # Errors
    /// An unsupported hash (not with [`SESSION_HASH`]).
    pub fn new(
        handle: u32,
        salt: &[u8],
        nonce_tpm: &[u8],
        nonce_caller: &[u8],
    ) -> Result<Self, Fault> {
        let mut key = vec![0u8; SESSION_HASH.digest_len()];
        kdfa(
            SESSION_HASH,
            salt,
            b"ATH",
            nonce_tpm,
            nonce_caller,
            &mut key,
        )?;
        Ok(Self {
            handle,
            key,
            nonce_tpm: nonce_tpm.to_vec(),
        })
    }

    /// The command HMAC (Part 1, 19.6.5): `HMAC(sessionKey || authValue, cpHash ||
    /// nonceCaller || nonceTPM || sessionAttributes)`; authValue is empty (the AK's).
    ///
    /// # Errors
    /// An unsupported hash.
    pub fn command_hmac(
        &self,
        cp_hash: &[u8],
        nonce_caller: &[u8],
        attrs: u8,
    ) -> Result<Vec<u8>, Fault> {
        let key = hmac::Key::new(hmac_alg(SESSION_HASH)?, &self.key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in [cp_hash, nonce_caller, &self.nonce_tpm, &[attrs]] {
            ctx.update(part);
        }
        Ok(ctx.sign().as_ref().to_vec())
    }

    /// Checks the response HMAC (Part 1, 19.6.5: `HMAC(sessionKey || authValue, rpHash ||
    /// nonceTPM(new) || nonceCaller || sessionAttributes)`) in constant time, then decrypts
    /// the first response parameter, a TPM2B at the start of `params`, in place (Part 1,
    /// 21.2: key || IV = KDFa(H, sessionKey || authValue, "CFB", nonceTPM(new),
    /// nonceCaller, 256)).
    ///
    /// # Errors
    /// A wrong HMAC (a response this session's key did not make), or a first parameter
    /// longer than the parameter area.
    pub fn open_response(
        &self,
        cc: u32,
        params: &mut [u8],
        nonce_tpm: &[u8],
        nonce_caller: &[u8],
        attrs: u8,
        response_hmac: &[u8],
    ) -> Result<(), Fault> {
        let rp = rp_hash(SESSION_HASH, cc, params)?;
        let key = hmac::Key::new(hmac_alg(SESSION_HASH)?, &self.key);
        let mut msg = Vec::with_capacity(rp.len() + nonce_tpm.len() + nonce_caller.len() + 1);
        for part in [&rp[..], nonce_tpm, nonce_caller, &[attrs]] {
            msg.extend_from_slice(part);
        }
        hmac::verify(&key, &msg, response_hmac)
            .map_err(|_| "response HMAC does not verify (tampered response or wrong salt)")?;
        if attrs & ATTR_ENCRYPT == 0 {
            return Err("the TPM did not encrypt the response (encrypt attribute clear)");
        }
        let mut kiv = [0u8; 32];
        kdfa(
            SESSION_HASH,
            &self.key,
            b"CFB",
            nonce_tpm,
            nonce_caller,
            &mut kiv,
        )?;
        let (k, iv) = kiv.split_at(16);
        let (mut key16, mut iv16) = ([0u8; 16], [0u8; 16]);
        key16.copy_from_slice(k);
        iv16.copy_from_slice(iv);
        let (size, rest) = params
            .split_at_mut_checked(2)
            .ok_or("first response parameter truncated")?;
        let len = usize::from(u16::from_be_bytes([size[0], size[1]]));
        let data = rest
            .get_mut(..len)
            .ok_or("first response parameter longer than the parameter area")?;
        cfb_decrypt(&key16, &iv16, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
