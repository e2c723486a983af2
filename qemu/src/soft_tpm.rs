//! A software TPM for load generation: an endorsement key whose private half lives in the
//! harness, its TPM2B_PUBLIC exactly as a TPM marshals it for the TCG default EK template,
//! an attestation key's public area, and TPM2_ActivateCredential done in software.
//!
//! Templates (TCG EK Credential Profile 2.x, 2.2.1): L-1 RSA-2048 and L-2 ECC P-256, both
//! nameAlg SHA-256, attributes `0x000300B2` (fixedTPM, fixedParent, sensitiveDataOrigin,
//! adminWithPolicy, restricted, decrypt), authPolicy PolicySecret(TPM_RH_ENDORSEMENT)
//! `8371…69AA`, AES-128-CFB, scheme NULL (and KDF NULL for ECC), RSA exponent 0 (65537),
//! with `unique` set to the public key. The AK is the agent's default AK: ECC P-256
//! restricted signing key, ECDSA-SHA256, attributes `0x00050472`. Only its public area and
//! Name are kept: the server never asks the AK to sign (the Name alone binds the credential),
//! so its private key is not needed and not kept.
//!
//! ActivateCredential is the inverse of the server's `credential::make_credential` (TPM 2.0
//! Part 1, 24): recover the seed (RSA-OAEP-SHA256 with label `"IDENTITY\0"`, or ECDH with
//! the EK's static private key and KDFe), derive the HMAC key (KDFa "INTEGRITY") and check
//! the outer HMAC over `encIdentity || AK Name` in constant time *before* decrypting,
//! derive the AES key (KDFa "STORAGE" with the AK Name), and AES-128-CFB-decrypt the
//! TPM2B_DIGEST credential.
//!
//! This module is a test fixture: its keys are for load tests only. It never logs, never
//! panics on any credential input, and never allocates more than the input's size.

use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
use aws_lc_rs::cipher::{AES_128, DecryptingKey, DecryptionContext, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey};
use aws_lc_rs::rsa::{PrivateDecryptingKey, PublicEncryptingKey};
use aws_lc_rs::{digest, hmac};
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::{Public, alg};

/// PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the low-range EK authPolicy (PolicyA).
pub const EK_POLICY_A: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];
/// EK attributes of the low-range templates L-1 and L-2.
pub const EK_ATTRIBUTES: u32 = 0x0003_00b2;
/// AK attributes (the agent's default AK): fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, noDA, restricted, sign.
pub const AK_ATTRIBUTES: u32 = 0x0005_0472;
/// `"IDENTITY\0"`: the OAEP label of MakeCredential's RSA secret sharing.
const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";
/// TPM_ECC_NIST_P256.
const CURVE_P256: u16 = 0x0003;
/// SHA-256 output length: the seed and HMAC sizes for a SHA-256 EK.
const H_LEN: usize = 32;

/// Which TCG default EK template a [`SoftEk`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EkAlg {
    /// L-1: RSA-2048.
    Rsa2048,
    /// L-2: ECC NIST P-256.
    P256,
}

impl EkAlg {
    /// The name used on the command line and in reports (`rsa2048`, `p256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::P256 => "p256",
        }
    }
}

/// Why a soft-TPM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoftTpmError {
    /// Key generation or import failed.
    #[error("soft TPM key: {0}")]
    Key(&'static str),
    /// A credential parameter is not the TPM structure it should be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The outer HMAC does not verify: the credential was made for another EK or AK Name
    /// (a TPM answers `TPM_RC_INTEGRITY`).
    #[error("credential integrity check failed (made for another EK or AK name)")]
    Integrity,
    /// A cryptographic step failed.
    #[error("ActivateCredential failed in {0}")]
    Crypto(&'static str),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SoftTpmError>;

enum EkPrivate {
    Rsa(OaepPrivateDecryptingKey),
    P256 {
        key: agreement::PrivateKey,
        x: [u8; 32],
    },
}

/// A software endorsement key: private key, TPM2B_PUBLIC and `tpm_ek.public_hash`.
pub struct SoftEk {
    alg: EkAlg,
    key: EkPrivate,
    tpm2b_public: Vec<u8>,
    public_hash: [u8; 32],
}

impl std::fmt::Debug for SoftEk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftEk")
            .field("alg", &self.alg)
            .field("public_hash", &hex::encode(self.public_hash))
            .finish_non_exhaustive()
    }
}

impl SoftEk {
    /// A fresh key on `alg`'s template (RSA-2048 takes tens of milliseconds; P-256 about
    /// twenty microseconds).
    ///
    /// # Errors
    /// [`SoftTpmError::Key`] if key generation fails.
    pub fn generate(alg: EkAlg) -> Result<Self> {
        match alg {
            EkAlg::Rsa2048 => {
                let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
                    .map_err(|_| SoftTpmError::Key("RSA-2048 generation"))?;
                Self::from_rsa(key)
            }
            EkAlg::P256 => {
                let key = agreement::PrivateKey::generate(&ECDH_P256)
                    .map_err(|_| SoftTpmError::Key("P-256 generation"))?;
                Self::from_p256(key)
            }
        }
    }

    /// Imports a private key (unencrypted PKCS#8 DER, e.g. the test vectors'
    /// `ek_private.pk8.pem`).
    ///
    /// # Errors
    /// [`SoftTpmError::Key`] if the bytes are not a key of `alg`.
    pub fn from_pkcs8(alg: EkAlg, der: &[u8]) -> Result<Self> {
        match alg {
            EkAlg::Rsa2048 => {
                let key = PrivateDecryptingKey::from_pkcs8(der)
                    .map_err(|_| SoftTpmError::Key("not an RSA PKCS#8 key"))?;
                if key.key_size_bits() != 2048 {
                    return Err(SoftTpmError::Key("RSA key is not 2048 bits"));
                }
                Self::from_rsa(key)
            }
            EkAlg::P256 => {
                let key = agreement::PrivateKey::from_private_key_der(&ECDH_P256, der)
                    .map_err(|_| SoftTpmError::Key("not a P-256 PKCS#8 key"))?;
                Self::from_p256(key)
            }
        }
    }

    fn from_rsa(key: PrivateDecryptingKey) -> Result<Self> {
        let public: PublicEncryptingKey = key.public_key();
        let spki = public
            .as_der()
            .map_err(|_| SoftTpmError::Key("RSA public key encoding"))?;
        let parsed = PublicKey::from_spki_der(spki.as_ref())
            .map_err(|_| SoftTpmError::Key("RSA public key parse"))?;
        let PublicKey::Rsa { modulus, .. } = parsed else {
            return Err(SoftTpmError::Key("RSA public key parse"));
        };
        let modulus = strip_zeros(modulus);
        if modulus.len() != 256 {
            return Err(SoftTpmError::Key("RSA modulus is not 256 bytes"));
        }
        let mut t = ek_head(alg::RSA);
        put16(&mut t, 2048);
        t.extend_from_slice(&0u32.to_be_bytes());
        put2b(&mut t, modulus);
        let key = OaepPrivateDecryptingKey::new(key)
            .map_err(|_| SoftTpmError::Key("RSA OAEP key setup"))?;
        Self::finish(EkAlg::Rsa2048, EkPrivate::Rsa(key), &t)
    }

    fn from_p256(key: agreement::PrivateKey) -> Result<Self> {
        let point = key
            .compute_public_key()
            .map_err(|_| SoftTpmError::Key("P-256 public key"))?;
        let (x, y) = split_point(point.as_ref()).ok_or(SoftTpmError::Key("P-256 point"))?;
        let mut t = ek_head(alg::ECC);
        put16(&mut t, CURVE_P256);
        put16(&mut t, alg::NULL);
        put2b(&mut t, &x);
        put2b(&mut t, &y);
        Self::finish(EkAlg::P256, EkPrivate::P256 { key, x }, &t)
    }

    fn finish(alg: EkAlg, key: EkPrivate, tpmt: &[u8]) -> Result<Self> {
        let tpm2b_public = with_size(tpmt)?;
        let public_hash = Public::decode(&tpm2b_public)
            .and_then(|p| p.key.public_hash())
            .map_err(|_| SoftTpmError::Key("public area does not parse back"))?;
        Ok(Self {
            alg,
            key,
            tpm2b_public,
            public_hash,
        })
    }

    /// The template this key follows.
    pub fn alg(&self) -> EkAlg {
        self.alg
    }

    /// The EK's TPM2B_PUBLIC (UINT16 size included), as in a Login's `ek_public`.
    pub fn tpm2b_public(&self) -> &[u8] {
        &self.tpm2b_public
    }

    /// `tpm_ek.public_hash`: SHA-256 of the canonical SubjectPublicKeyInfo.
    pub fn public_hash(&self) -> &[u8; 32] {
        &self.public_hash
    }

    /// TPM2_ActivateCredential: recovers the credential of a Challenge's `credential_blob`
    /// (TPM2B_ID_OBJECT) and `encrypted_secret` (TPM2B_ENCRYPTED_SECRET), both with their
    /// UINT16 size, for the AK whose Name is `ak_name`.
    ///
    /// # Errors
    /// [`SoftTpmError::Malformed`] for a structure that does not parse,
    /// [`SoftTpmError::Integrity`] when the credential was made for another EK or AK Name,
    /// [`SoftTpmError::Crypto`] when a decryption step fails.
    pub fn activate_credential(
        &self,
        ak_name: &[u8],
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>> {
        let id_object = tpm2b_exact(credential_blob, "TPM2B_ID_OBJECT")?;
        let (integrity, enc_identity) = split_tpm2b(id_object, "TPM2B_ID_OBJECT integrityHMAC")?;
        if integrity.len() != H_LEN || enc_identity.len() < 2 {
            return Err(SoftTpmError::Malformed("TPM2B_ID_OBJECT"));
        }
        let secret = tpm2b_exact(encrypted_secret, "TPM2B_ENCRYPTED_SECRET")?;
        let mut seed = [0u8; H_LEN];
        self.recover_seed(secret, &mut seed)?;

        let mut hmac_key = [0u8; H_LEN];
        kdfa(&seed, b"INTEGRITY", &[], &mut hmac_key);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
        let mut msg = Vec::with_capacity(enc_identity.len() + ak_name.len());
        msg.extend_from_slice(enc_identity);
        msg.extend_from_slice(ak_name);
        let verified = hmac::verify(&key, &msg, integrity);
        hmac_key.fill(0);
        if verified.is_err() {
            seed.fill(0);
            return Err(SoftTpmError::Integrity);
        }

        let mut sym_key = [0u8; 16];
        kdfa(&seed, b"STORAGE", ak_name, &mut sym_key);
        seed.fill(0);
        let cipher = UnboundCipherKey::new(&AES_128, &sym_key)
            .map_err(|_| SoftTpmError::Crypto("AES key setup"));
        sym_key.fill(0);
        let mut plain = enc_identity.to_vec();
        DecryptingKey::cfb128(cipher?)
            .map_err(|_| SoftTpmError::Crypto("AES-CFB setup"))?
            .decrypt(
                &mut plain,
                DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
            .map_err(|_| SoftTpmError::Crypto("AES-CFB decrypt"))?;
        let credential = tpm2b_exact(&plain, "credential TPM2B_DIGEST")?;
        if credential.is_empty() || credential.len() > H_LEN {
            return Err(SoftTpmError::Malformed("credential TPM2B_DIGEST"));
        }
        Ok(credential.to_vec())
    }

    fn recover_seed(&self, secret: &[u8], seed: &mut [u8; H_LEN]) -> Result<()> {
        match &self.key {
            EkPrivate::Rsa(key) => {
                if secret.len() != key.key_size_bytes() {
                    return Err(SoftTpmError::Malformed("TPM2B_ENCRYPTED_SECRET (RSA)"));
                }
                let mut out = [0u8; 256];
                let plain = key
                    .decrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        secret,
                        &mut out,
                        Some(IDENTITY_LABEL),
                    )
                    .map_err(|_| SoftTpmError::Integrity)?;
                if plain.len() != H_LEN {
                    return Err(SoftTpmError::Integrity);
                }
                seed.copy_from_slice(plain);
                out.fill(0);
                Ok(())
            }
            EkPrivate::P256 { key, x } => {
                let bad = SoftTpmError::Malformed("TPMS_ECC_POINT");
                let (qe_x, rest) = split_tpm2b(secret, "TPMS_ECC_POINT x")?;
                let qe_y = tpm2b_exact(rest, "TPMS_ECC_POINT y")?;
                if qe_x.len() > 32 || qe_y.len() > 32 {
                    return Err(bad);
                }
                let mut peer = [0u8; 65];
                peer[0] = 0x04;
                peer[33 - qe_x.len()..33].copy_from_slice(qe_x);
                peer[65 - qe_y.len()..].copy_from_slice(qe_y);
                let mut z = [0u8; 32];
                agreement::agree(
                    key,
                    UnparsedPublicKey::new(&ECDH_P256, &peer[..]),
                    SoftTpmError::Crypto("ECDH (ephemeral point not on P-256)"),
                    |shared| {
                        z.get_mut(..shared.len())
                            .ok_or(SoftTpmError::Crypto("ECDH output"))?
                            .copy_from_slice(shared);
                        Ok(())
                    },
                )?;
                kdfe(&z, b"IDENTITY", &peer[1..33], x, seed);
                z.fill(0);
                Ok(())
            }
        }
    }
}

/// A software attestation key: the agent's default AK template (ECC P-256 restricted
/// signing, ECDSA-SHA256) with a fresh public point. Only the public area and Name are kept
/// (the flow never asks the AK to sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftAk {
    tpm2b_public: Vec<u8>,
    name: Vec<u8>,
}

impl SoftAk {
    /// A fresh AK.
    ///
    /// # Errors
    /// [`SoftTpmError::Key`] if key generation fails.
    pub fn generate() -> Result<Self> {
        let key = agreement::PrivateKey::generate(&ECDH_P256)
            .map_err(|_| SoftTpmError::Key("P-256 generation"))?;
        let point = key
            .compute_public_key()
            .map_err(|_| SoftTpmError::Key("P-256 public key"))?;
        let (x, y) = split_point(point.as_ref()).ok_or(SoftTpmError::Key("P-256 point"))?;
        let mut t = Vec::with_capacity(92);
        put16(&mut t, alg::ECC);
        put16(&mut t, alg::SHA256);
        t.extend_from_slice(&AK_ATTRIBUTES.to_be_bytes());
        put16(&mut t, 0); // authPolicy: empty
        put16(&mut t, alg::NULL); // symmetric
        put16(&mut t, alg::ECDSA);
        put16(&mut t, alg::SHA256);
        put16(&mut t, CURVE_P256);
        put16(&mut t, alg::NULL); // kdf
        put2b(&mut t, &x);
        put2b(&mut t, &y);
        let tpm2b_public = with_size(&t)?;
        let name = Public::decode(&tpm2b_public)
            .and_then(|p| p.name())
            .map_err(|_| SoftTpmError::Key("AK public area does not parse back"))?
            .to_vec();
        Ok(Self { tpm2b_public, name })
    }

    /// The AK's TPM2B_PUBLIC (UINT16 size included), as in a Login's `ak_public`.
    pub fn tpm2b_public(&self) -> &[u8] {
        &self.tpm2b_public
    }

    /// The AK's Name: `000B || SHA-256(TPMT_PUBLIC)`.
    pub fn name(&self) -> &[u8] {
        &self.name
    }
}

/// TPMT_PUBLIC up to the algorithm parameters' key-specific part: type, nameAlg,
/// attributes, authPolicy, AES-128-CFB, scheme NULL.
fn ek_head(object_type: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(320);
    put16(&mut t, object_type);
    put16(&mut t, alg::SHA256);
    t.extend_from_slice(&EK_ATTRIBUTES.to_be_bytes());
    put2b(&mut t, &EK_POLICY_A);
    put16(&mut t, alg::AES);
    put16(&mut t, 128);
    put16(&mut t, alg::CFB);
    put16(&mut t, alg::NULL);
    t
}

fn split_point(uncompressed: &[u8]) -> Option<([u8; 32], [u8; 32])> {
    let [0x04, rest @ ..] = uncompressed else {
        return None;
    };
    let x: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let y: [u8; 32] = rest.get(32..)?.try_into().ok()?;
    Some((x, y))
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    &v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..]
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// Appends a TPM2B; only called with our own buffers of at most 256 bytes.
fn put2b(v: &mut Vec<u8>, data: &[u8]) {
    put16(v, u16::try_from(data.len()).unwrap_or(u16::MAX));
    v.extend_from_slice(data);
}

fn with_size(body: &[u8]) -> Result<Vec<u8>> {
    let size = u16::try_from(body.len()).map_err(|_| SoftTpmError::Key("public area size"))?;
    let mut out = Vec::with_capacity(2 + body.len());
    put16(&mut out, size);
    out.extend_from_slice(body);
    Ok(out)
}

/// Splits a TPM2B off the front of `bytes`: `(body, rest)`.
fn split_tpm2b<'a>(bytes: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8])> {
    let [a, b, rest @ ..] = bytes else {
        return Err(SoftTpmError::Malformed(what));
    };
    let len = usize::from(u16::from_be_bytes([*a, *b]));
    if rest.len() < len {
        return Err(SoftTpmError::Malformed(what));
    }
    Ok(rest.split_at(len))
}

/// A TPM2B that fills `bytes` exactly: its body.
fn tpm2b_exact<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    match split_tpm2b(bytes, what)? {
        (body, []) => Ok(body),
        _ => Err(SoftTpmError::Malformed(what)),
    }
}

/// KDFa(SHA-256, key, label, contextU, "", 8*out.len()) for out.len() <= 32.
fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bits = u32::try_from(out.len() * 8).unwrap_or(u32::MAX);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(label);
    ctx.update(&[0]);
    ctx.update(context_u);
    ctx.update(&bits.to_be_bytes());
    let tag = ctx.sign();
    let n = out.len().min(H_LEN);
    out[..n].copy_from_slice(&tag.as_ref()[..n]);
}

/// KDFe(SHA-256, Z, label, partyU, partyV, 256 bits).
fn kdfe(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], out: &mut [u8; H_LEN]) {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&1u32.to_be_bytes());
    ctx.update(z);
    ctx.update(label);
    ctx.update(&[0]);
    ctx.update(party_u);
    ctx.update(party_v);
    out.copy_from_slice(ctx.finish().as_ref());
}

#[cfg(test)]
mod tests;
