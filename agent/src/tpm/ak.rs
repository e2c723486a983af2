//! The Attestation Key: a restricted signing primary in the owner hierarchy.
//!
//! A primary created from a fixed template is deterministic (same TPM, same owner seed, same
//! key), so the agent recreates it instead of storing it: fixedTPM | fixedParent |
//! sensitiveDataOrigin | userWithAuth | restricted | sign, plus noDA so the first use after
//! TPM start does not answer TPM_RC_RETRY. ECC P-256 / ECDSA-SHA256 by default (fast on real
//! chips), RSA-2048 / RSASSA-SHA256 optionally. The Name is computed with
//! `ekattest_protocol::tpm::public` and must equal the Name the TPM returns.

use ekattest_protocol::tpm::public::{Public, attr};

use super::Transport;
use super::commands::{RH_OWNER, Scope, Tpm};
use super::error::Error;
use super::templates::{self, Template};

/// The AK's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AkKind {
    /// ECC NIST P-256, ECDSA-SHA256 (default).
    #[default]
    P256,
    /// RSA-2048, RSASSA-PKCS1-v1_5-SHA256.
    Rsa2048,
}

/// How the AK is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AkOptions {
    /// Key type.
    pub kind: AkKind,
    /// Set noDA (default true). Clearing it reproduces AKs made by tools that omit it,
    /// such as the test vectors' AK (attributes 0x00050072).
    pub no_da: bool,
    /// Authorize the AK in ActivateCredential through a salted HMAC session with response
    /// parameter encryption (default true; config `parameter-encryption`), so the recovered
    /// secret never crosses the TPM bus in clear. False sends a password session, for TPMs
    /// that misbehave with salted sessions.
    pub parameter_encryption: bool,
}

impl Default for AkOptions {
    fn default() -> Self {
        Self {
            kind: AkKind::P256,
            no_da: true,
            parameter_encryption: true,
        }
    }
}

impl AkOptions {
    /// The TPMT_PUBLIC template.
    #[must_use]
    pub fn template(&self) -> Vec<u8> {
        let base: Template = match self.kind {
            AkKind::P256 => templates::AK_P256,
            AkKind::Rsa2048 => templates::AK_RSA2048,
        };
        let attrs = if self.no_da {
            base.attrs | attr::NO_DA
        } else {
            base.attrs & !attr::NO_DA
        };
        Template { attrs, ..base }.tpmt()
    }
}

/// The AK's public parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ak {
    /// TPM2B_PUBLIC bytes.
    pub public: Vec<u8>,
    /// Name: nameAlg || SHA-256(TPMT_PUBLIC), 34 bytes.
    pub name: Vec<u8>,
}

/// Creates the AK and leaves it loaded, tracked by `scope` (flushed when it ends). Returns
/// the transient handle and the public parts.
///
/// # Errors
/// TPM/transport errors, [`Error::Public`] if the returned public area does not parse,
/// [`Error::NameMismatch`] if the TPM's Name differs from the computed one.
pub fn create<T: Transport>(
    scope: &mut Scope<'_, T>,
    opts: &AkOptions,
) -> Result<(u32, Ak), Error> {
    let (handle, obj) = scope.create_primary_tracked(RH_OWNER, &opts.template())?;
    let public = Public::decode(&obj.public).map_err(|e| Error::Public {
        what: "AK".to_owned(),
        detail: e.to_string(),
    })?;
    let name = public.name().map_err(|e| Error::Public {
        what: "AK".to_owned(),
        detail: e.to_string(),
    })?;
    if name.as_slice() != obj.name.as_slice() {
        return Err(Error::NameMismatch { what: "AK" });
    }
    Ok((
        handle,
        Ak {
            public: obj.public,
            name: obj.name,
        },
    ))
}

/// Creates the AK, reads its public parts and flushes it.
///
/// # Errors
/// As [`create`].
pub fn read<T: Transport>(tpm: &mut Tpm<T>, opts: &AkOptions) -> Result<Ak, Error> {
    let mut scope = tpm.scope();
    create(&mut scope, opts).map(|(_, ak)| ak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_da_toggles_only_that_bit() {
        let with = AkOptions::default().template();
        let without = AkOptions {
            no_da: false,
            ..AkOptions::default()
        }
        .template();
        assert_eq!(&with[4..8], &0x0005_0472u32.to_be_bytes());
        assert_eq!(&without[4..8], &0x0005_0072u32.to_be_bytes());
        let mut w = with.clone();
        w[4..8].copy_from_slice(&without[4..8]);
        assert_eq!(w, without);
    }

    #[test]
    fn vector_ak_template_matches_without_no_da() {
        // The testdata AK is this template (noDA clear) with the key filled in.
        let vector = ekattest_testkit::testdata::vector("ak.tpm2b_public");
        let t = AkOptions {
            no_da: false,
            ..AkOptions::default()
        }
        .template();
        let head = t.len() - 4; // empty x, y
        assert_eq!(hex::encode(&t[..head]), hex::encode(&vector[2..2 + head]));
    }
}
