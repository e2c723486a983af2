//! Key templates as marshalled TPMT_PUBLIC bytes: the TCG EK templates and our AK.
//!
//! Sources: TCG EK Credential Profile for TPM Family 2.0, Level 0, Version 2.5+ (section 2.2.1,
//! templates L-1, L-2, H-3, H-6) and swtpm 0.7.1's persisted EKs. Templates are plain byte
//! strings so the exact bytes sent in CreatePrimary can be compared with what the TPM reports
//! for a persistent EK. This module only builds bytes; it never talks to a TPM.

use ekattest_protocol::tpm::public::{CURVE_P256, CURVE_P384, alg};

/// PolicyA (SHA-256): PolicySecret(TPM_RH_ENDORSEMENT), the low-range EK authPolicy.
pub(crate) const POLICY_A_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// PolicyB (SHA-384): PolicyOR(PolicyA, PolicyC), the high-range SHA-384 EK authPolicy
/// (the digest swtpm 0.7.1 puts on its P-384 EK).
pub(crate) const POLICY_B_SHA384: [u8; 48] = [
    0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc, 0xf5, 0xfd, 0x3a, 0x1a,
    0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4, 0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca,
    0xcb, 0x47, 0xba, 0x09, 0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12,
];

/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt.
pub(crate) const EK_ATTRS_LOW: u32 = 0x0003_00b2;
/// EK_ATTRS_LOW | userWithAuth (high-range templates).
pub(crate) const EK_ATTRS_HIGH: u32 = 0x0003_00f2;
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign.
pub(crate) const AK_ATTRS: u32 = 0x0005_0472;

/// How the template's `unique` field is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unique {
    /// Zero bytes of the key size (low-range templates L-1, L-2).
    Zeros,
    /// Empty buffers (high-range templates).
    Empty,
}

/// The algorithm-specific part of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyParams {
    /// RSA with this modulus size in bits (exponent 0 = 65537).
    Rsa { bits: u16 },
    /// ECC on this TPM curve id with field size `len` bytes.
    Ecc { curve: u16, len: usize },
}

/// Everything that defines a storage/decrypt or signing primary's TPMT_PUBLIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) name_alg: u16,
    pub(crate) attrs: u32,
    pub(crate) policy: &'static [u8],
    /// `(keyBits)` of AES-CFB, or `None` for TPM_ALG_NULL (signing keys).
    pub(crate) aes_bits: Option<u16>,
    /// Signing scheme `(alg, hash)`, or `None` for TPM_ALG_NULL.
    pub(crate) scheme: Option<(u16, u16)>,
    pub(crate) key: KeyParams,
    pub(crate) unique: Unique,
}

impl Template {
    /// Marshals the template as TPMT_PUBLIC (no size prefix).
    pub(crate) fn tpmt(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(600);
        let object_type = match self.key {
            KeyParams::Rsa { .. } => alg::RSA,
            KeyParams::Ecc { .. } => alg::ECC,
        };
        put16(&mut v, object_type);
        put16(&mut v, self.name_alg);
        v.extend_from_slice(&self.attrs.to_be_bytes());
        put2b(&mut v, self.policy);
        match self.aes_bits {
            Some(bits) => {
                put16(&mut v, alg::AES);
                put16(&mut v, bits);
                put16(&mut v, alg::CFB);
            }
            None => put16(&mut v, alg::NULL),
        }
        match self.scheme {
            Some((alg, hash)) => {
                put16(&mut v, alg);
                put16(&mut v, hash);
            }
            None => put16(&mut v, alg::NULL),
        }
        match self.key {
            KeyParams::Rsa { bits } => {
                put16(&mut v, bits);
                v.extend_from_slice(&0u32.to_be_bytes());
                let n = match self.unique {
                    Unique::Zeros => usize::from(bits / 8),
                    Unique::Empty => 0,
                };
                put2b(&mut v, &vec![0u8; n]);
            }
            KeyParams::Ecc { curve, len } => {
                put16(&mut v, curve);
                put16(&mut v, alg::NULL); // kdf
                let n = match self.unique {
                    Unique::Zeros => len,
                    Unique::Empty => 0,
                };
                put2b(&mut v, &vec![0u8; n]);
                put2b(&mut v, &vec![0u8; n]);
            }
        }
        v
    }
}

impl Template {
    /// The template with the TCG EK nonce (NV 0x01C00003 / 0x01C0000B) in `unique`: RSA
    /// modulus = nonce then zeros to the key size; ECC x = nonce then zeros, y = zeros
    /// (EK Credential Profile 2.x, 2.2.1.5). Longer nonces are cut to the key size.
    pub(crate) fn tpmt_with_nonce(&self, nonce: &[u8]) -> Vec<u8> {
        let mut v = Template {
            unique: Unique::Zeros,
            ..*self
        }
        .tpmt();
        let (key_len, tail) = match self.key {
            KeyParams::Rsa { bits } => (usize::from(bits / 8), 0),
            KeyParams::Ecc { len, .. } => (len, 2 + len),
        };
        let start = v.len() - tail - key_len;
        let n = nonce.len().min(key_len);
        if let (Some(dst), Some(src)) = (v.get_mut(start..start + n), nonce.get(..n)) {
            dst.copy_from_slice(src);
        }
        v
    }
}

/// Offset of the `unique` field in a marshalled RSA or ECC TPMT_PUBLIC, i.e. the length of
/// everything a template fixes. `None` if the bytes do not parse that far.
pub(crate) fn unique_offset(tpmt: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let u16_at = |at: &mut usize| -> Option<u16> {
        let b = tpmt.get(*at..*at + 2)?;
        *at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    let object_type = u16_at(&mut at)?;
    u16_at(&mut at)?; // nameAlg
    at += 4; // attributes
    let policy = u16_at(&mut at)?;
    at += usize::from(policy);
    if u16_at(&mut at)? != alg::NULL {
        at += 4; // keyBits, mode
    }
    let scheme = u16_at(&mut at)?;
    if scheme != alg::NULL {
        at += 2; // hash
        if scheme == 0x001a {
            at += 2; // ECDAA count
        }
    }
    match object_type {
        alg::RSA => at += 2 + 4,
        alg::ECC => {
            at += 2; // curve
            if u16_at(&mut at)? != alg::NULL {
                at += 2; // kdf hash
            }
        }
        _ => return None,
    }
    (at <= tpmt.len()).then_some(at)
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}

fn put2b(v: &mut Vec<u8>, data: &[u8]) {
    // Templates are ours and small: every buffer here is at most 512 bytes.
    put16(v, u16::try_from(data.len()).unwrap_or(u16::MAX));
    v.extend_from_slice(data);
}

/// TCG L-1: RSA-2048, SHA-256, AES-128-CFB, PolicyA, unique 256 zero bytes.
pub(crate) const EK_L1_RSA2048: Template = Template {
    name_alg: alg::SHA256,
    attrs: EK_ATTRS_LOW,
    policy: &POLICY_A_SHA256,
    aes_bits: Some(128),
    scheme: None,
    key: KeyParams::Rsa { bits: 2048 },
    unique: Unique::Zeros,
};

/// TCG L-2: ECC P-256, SHA-256, AES-128-CFB, PolicyA, unique x, y 32 zero bytes each.
pub(crate) const EK_L2_P256: Template = Template {
    name_alg: alg::SHA256,
    attrs: EK_ATTRS_LOW,
    policy: &POLICY_A_SHA256,
    aes_bits: Some(128),
    scheme: None,
    key: KeyParams::Ecc {
        curve: CURVE_P256,
        len: 32,
    },
    unique: Unique::Zeros,
};

/// TCG H-3 (as swtpm 0.7.1 makes it): ECC P-384, SHA-384, AES-256-CFB, userWithAuth,
/// PolicyB-SHA384, empty unique.
pub(crate) const EK_H3_P384: Template = Template {
    name_alg: alg::SHA384,
    attrs: EK_ATTRS_HIGH,
    policy: &POLICY_B_SHA384,
    aes_bits: Some(256),
    scheme: None,
    key: KeyParams::Ecc {
        curve: CURVE_P384,
        len: 48,
    },
    unique: Unique::Empty,
};

/// TCG H-6: RSA-3072, SHA-384, AES-256-CFB, userWithAuth, PolicyB-SHA384, empty unique.
pub(crate) const EK_H6_RSA3072: Template = Template {
    name_alg: alg::SHA384,
    attrs: EK_ATTRS_HIGH,
    policy: &POLICY_B_SHA384,
    aes_bits: Some(256),
    scheme: None,
    key: KeyParams::Rsa { bits: 3072 },
    unique: Unique::Empty,
};

/// Our AK: ECC P-256 restricted signing key, ECDSA-SHA256, nameAlg SHA-256, noDA.
pub(crate) const AK_P256: Template = Template {
    name_alg: alg::SHA256,
    attrs: AK_ATTRS,
    policy: &[],
    aes_bits: None,
    scheme: Some((alg::ECDSA, alg::SHA256)),
    key: KeyParams::Ecc {
        curve: CURVE_P256,
        len: 32,
    },
    unique: Unique::Empty,
};

/// Optional AK: RSA-2048 restricted signing key, RSASSA-SHA256, nameAlg SHA-256, noDA.
pub(crate) const AK_RSA2048: Template = Template {
    name_alg: alg::SHA256,
    attrs: AK_ATTRS,
    policy: &[],
    aes_bits: None,
    scheme: Some((alg::RSASSA, alg::SHA256)),
    key: KeyParams::Rsa { bits: 2048 },
    unique: Unique::Empty,
};

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt:
/// a storage key.
pub(crate) const SRK_ATTRS: u32 = 0x0003_0472;
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | sign: an
/// unrestricted signing key that never leaves this TPM.
pub(crate) const SVID_KEY_ATTRS: u32 = 0x0004_0472;

/// The ECC P-256 storage primary in the owner hierarchy that tpm2-openssl (and
/// tpm2-tss-engine) recreate for a `TSS2 PRIVATE KEY` whose parent is TPM_RH_OWNER
/// (tpm2-openssl `primaryEccTemplate`: AES-128-CFB, NULL scheme and KDF, empty unique). A key
/// created under it loads through those tools with no persistent handle.
pub(crate) const SRK_P256: Template = Template {
    name_alg: alg::SHA256,
    attrs: SRK_ATTRS,
    policy: &[],
    aes_bits: Some(128),
    scheme: None,
    key: KeyParams::Ecc {
        curve: CURVE_P256,
        len: 32,
    },
    unique: Unique::Empty,
};

/// The TPM-resident SVID key (`svid-key: tpm`): P-256, ECDSA-SHA256 only.
pub(crate) const SVID_KEY_P256: Template = Template {
    name_alg: alg::SHA256,
    attrs: SVID_KEY_ATTRS,
    policy: &[],
    aes_bits: None,
    scheme: Some((alg::ECDSA, alg::SHA256)),
    key: KeyParams::Ecc {
        curve: CURVE_P256,
        len: 32,
    },
    unique: Unique::Empty,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ref_tpmt(case: &str) -> Vec<u8> {
        let b = ekattest_testkit::testdata::make_credential(case, "ek.tpm2b_public");
        b[2..].to_vec()
    }

    /// Everything up to `unique` must equal the reference EKs in testdata (made by TCG
    /// templates and by swtpm respectively).
    #[test]
    fn ek_templates_match_reference_public_areas() {
        for (case, t, unique_len) in [
            ("rsa2048", EK_L1_RSA2048, 2 + 256),
            ("p256", EK_L2_P256, 2 + 32 + 2 + 32),
            ("p384", EK_H3_P384, 2 + 2),
        ] {
            let ours = t.tpmt();
            let theirs = ref_tpmt(case);
            let ours_head = &ours[..ours.len() - unique_len];
            assert_eq!(
                hex::encode(ours_head),
                hex::encode(&theirs[..ours_head.len()]),
                "{case}"
            );
            assert_eq!(unique_offset(&ours), Some(ours_head.len()), "{case}");
            assert_eq!(unique_offset(&theirs), Some(ours_head.len()), "{case}");
        }
    }

    #[test]
    fn nonce_goes_into_unique() {
        let t = EK_L2_P256.tpmt_with_nonce(&[0xaa; 40]);
        let off = unique_offset(&t).unwrap();
        assert_eq!(&t[off..off + 2], &[0, 32]);
        assert_eq!(&t[off + 2..off + 34], &[0xaa; 32]);
        assert_eq!(&t[off + 34..], &[&[0u8, 32][..], &[0; 32]].concat()[..]);
        let r = EK_L1_RSA2048.tpmt_with_nonce(&[1, 2, 3]);
        let off = unique_offset(&r).unwrap();
        assert_eq!(&r[off..off + 5], &[1, 0, 1, 2, 3]);
        assert!(r[off + 5..].iter().all(|b| *b == 0));
        assert_eq!(r.len(), off + 2 + 256);
        for n in 0..t.len() {
            let _ = unique_offset(&t[..n]);
        }
    }

    #[test]
    fn ak_template_bytes() {
        // AK: 0023 000b 00050472 0000 0010 0018 000b 0003 0010 0000 0000
        assert_eq!(
            hex::encode(AK_P256.tpmt()),
            "0023000b00050472000000100018000b0003001000000000"
        );
    }
}
