//! TPM2_ActivateCredential with this device's AK and one of its EKs, and the tpm2-tools
//! credential file format operators use to test it.
//!
//! Sessions (TPM 2.0 Part 3, 12.5; TPM-NOTES): the AK (activateHandle) with a password
//! session; the EK (keyHandle) with a policy session satisfied by
//! PolicySecret(TPM_RH_ENDORSEMENT) when userWithAuth is clear (L-1, L-2), or a password
//! session when it is set (high-range templates such as swtpm's P-384 EK). Every transient
//! object and session is flushed on every path. The recovered secret is never logged.
//!
//! Parameter encryption ([`AkOptions::parameter_encryption`], on by default): the AK is
//! authorized through a salted HMAC session instead of a password session. The salt is
//! encrypted to the EK (only this TPM can read it), and the session carries the encrypt
//! attribute, so the TPM returns certInfo (the secret) AES-128-CFB encrypted and the bus
//! (SPI, LPC, the swtpm socket) never carries it in clear; the response HMAC is verified
//! before decryption ([`super::session`]). Using the AK's own authorization rather than a
//! third, encrypt-only session keeps the command at two sessions (libtpms has three slots)
//! and makes the TPM check our HMAC, so a wrong salt fails loudly at the TPM
//! (`TPM_RC_AUTH_FAIL`/`BAD_AUTH`) instead of only at our response check.

use super::Transport;
use super::ak::{self, AkOptions};
use super::commands::{Auth, RH_ENDORSEMENT, Tpm};
use super::ek::{self, Ek};
use super::error::Error;

/// tpm2-tools credential file magic.
pub const MAGIC: u32 = 0xBADC_C0DE;
/// tpm2-tools credential file version.
pub const VERSION: u32 = 1;
/// Largest TPM2B_ID_OBJECT body (2 * (64 + 2)).
pub const ID_OBJECT_MAX: usize = 132;
/// Largest TPM2B_ENCRYPTED_SECRET body (an RSA-4096 OAEP block).
pub const SECRET_MAX: usize = 512;

/// A credential as MakeCredential produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// credentialBlob: TPM2B_ID_OBJECT contents (without the size prefix).
    pub id_object: Vec<u8>,
    /// secret: TPM2B_ENCRYPTED_SECRET contents (without the size prefix).
    pub secret: Vec<u8>,
}

/// Why a credential file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Fewer bytes than a field needs.
    #[error("credential file truncated in {field}: need {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Not a tpm2-tools credential file.
    #[error("not a tpm2-tools credential file: magic {found:#010x}, expected 0xbadcc0de")]
    Magic {
        /// The first four bytes.
        found: u32,
    },
    /// A version other than 1.
    #[error("unsupported tpm2-tools credential file version {found} (expected 1)")]
    Version {
        /// The version field.
        found: u32,
    },
    /// A buffer larger than the TPM structure allows.
    #[error("{field} of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Which buffer.
        field: &'static str,
        /// Its declared size.
        len: usize,
        /// The structure's limit.
        limit: usize,
    },
    /// Bytes after the encrypted secret.
    #[error("credential file has {bytes} unexpected bytes after the encrypted secret")]
    Trailing {
        /// How many.
        bytes: usize,
    },
}

impl Credential {
    /// Parses tpm2-tools' format: `BADCC0DE 00000001 TPM2B_ID_OBJECT
    /// TPM2B_ENCRYPTED_SECRET`, strictly (no trailing bytes, sizes within TPM limits).
    ///
    /// # Errors
    /// [`CredentialError`] naming the field at fault.
    pub fn decode_tpm2_tools(mut bytes: &[u8]) -> Result<Self, CredentialError> {
        let mut take = |field: &'static str, n: usize| -> Result<&[u8], CredentialError> {
            if bytes.len() < n {
                return Err(CredentialError::Truncated {
                    field,
                    needed: n,
                    available: bytes.len(),
                });
            }
            let (head, tail) = bytes.split_at(n);
            bytes = tail;
            Ok(head)
        };
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let magic = be32(take("magic", 4)?);
        if magic != MAGIC {
            return Err(CredentialError::Magic { found: magic });
        }
        let version = be32(take("version", 4)?);
        if version != VERSION {
            return Err(CredentialError::Version { found: version });
        }
        let (id_object, rest) = split_tpm2b(bytes, "TPM2B_ID_OBJECT", ID_OBJECT_MAX)?;
        let (secret, rest) = split_tpm2b(rest, "TPM2B_ENCRYPTED_SECRET", SECRET_MAX)?;
        if !rest.is_empty() {
            return Err(CredentialError::Trailing { bytes: rest.len() });
        }
        Ok(Self {
            id_object: id_object.to_vec(),
            secret: secret.to_vec(),
        })
    }

    /// Builds a credential from the two TPM2B values of a Challenge (`credential_blob`,
    /// `encrypted_secret`, each with its UINT16 size), strictly.
    ///
    /// # Errors
    /// [`CredentialError`] naming the field at fault.
    pub fn from_tpm2b(id_object: &[u8], secret: &[u8]) -> Result<Self, CredentialError> {
        let exact = |bytes: &[u8], field, limit| {
            let (body, rest) = split_tpm2b(bytes, field, limit)?;
            if rest.is_empty() {
                Ok(body.to_vec())
            } else {
                Err(CredentialError::Trailing { bytes: rest.len() })
            }
        };
        Ok(Self {
            id_object: exact(id_object, "TPM2B_ID_OBJECT", ID_OBJECT_MAX)?,
            secret: exact(secret, "TPM2B_ENCRYPTED_SECRET", SECRET_MAX)?,
        })
    }

    /// Encodes in tpm2-tools' format (the inverse of [`Credential::decode_tpm2_tools`]).
    #[must_use]
    pub fn encode_tpm2_tools(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.id_object.len() + self.secret.len());
        v.extend_from_slice(&MAGIC.to_be_bytes());
        v.extend_from_slice(&VERSION.to_be_bytes());
        for b in [&self.id_object, &self.secret] {
            v.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
            v.extend_from_slice(b);
        }
        v
    }
}

/// Splits a TPM2B (UINT16 size, then that many bytes, at most `limit`) off the front of
/// `bytes`.
fn split_tpm2b<'a>(
    bytes: &'a [u8],
    field: &'static str,
    limit: usize,
) -> Result<(&'a [u8], &'a [u8]), CredentialError> {
    let truncated = |needed: usize| CredentialError::Truncated {
        field,
        needed,
        available: bytes.len(),
    };
    let [a, b, rest @ ..] = bytes else {
        return Err(truncated(2));
    };
    let len = usize::from(u16::from_be_bytes([*a, *b]));
    if len > limit {
        return Err(CredentialError::TooLarge { field, len, limit });
    }
    if rest.len() < len {
        return Err(truncated(2 + len));
    }
    Ok(rest.split_at(len))
}

/// Runs ActivateCredential for `credential` with the AK made from `ak` and the EK `ek`
/// (persistent, or recreated from its template), returning the recovered secret.
///
/// # Errors
/// `TPM_RC_INTEGRITY (0x1df)` if the credential was made for another AK Name or EK; other
/// TPM, transport or public-area errors.
pub fn activate<T: Transport>(
    tpm: &mut Tpm<T>,
    ek: &Ek,
    ak: &AkOptions,
    credential: &Credential,
) -> Result<Vec<u8>, Error> {
    let mut scope = tpm.scope();
    let (ak_handle, ak_public) = ak::create(&mut scope, ak)?;
    let ek_handle = ek::load(&mut scope, ek)?;
    // The salted session first: libtpms has three session slots, and it must exist before
    // the policy session is satisfied for this command.
    let salted = if ak.parameter_encryption {
        let s = scope.start_salted_session(ek_handle, &ek.public)?;
        scope.track(s.handle);
        Some(s)
    } else {
        None
    };
    let ek_auth = if ek.needs_policy()? {
        let session = scope.start_policy_session_tracked(ek.name_alg()?)?;
        scope.policy_secret(RH_ENDORSEMENT, session)?;
        Auth::Policy(session)
    } else {
        Auth::Password
    };
    let result = match &salted {
        Some(s) => scope.activate_credential_encrypted(
            (ak_handle, &ak_public.name),
            (ek_handle, &ek.name, ek_auth),
            s,
            &credential.id_object,
            &credential.secret,
        ),
        None => scope.activate_credential(
            (ak_handle, Auth::Password),
            (ek_handle, ek_auth),
            &credential.id_object,
            &credential.secret,
        ),
    };
    // Sessions with continueSession clear are flushed by the TPM when the command succeeds.
    // After any error the scope flushes them: if the TPM had already done so (our check of
    // its response failed), that flush fails harmlessly and is logged at debug level.
    if result.is_ok() {
        if let Auth::Policy(session) = ek_auth {
            scope.forget(session);
        }
        if let Some(s) = &salted {
            scope.forget(s.handle);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(case: &str) -> Vec<u8> {
        ekattest_testkit::testdata::make_credential(case, "expected.tpm2tools_credential")
    }

    #[test]
    fn decodes_the_vectors_and_round_trips() {
        for (case, secret_len) in [("rsa2048", 256), ("p256", 68), ("p384", 100)] {
            let bytes = vector(case);
            let c = Credential::decode_tpm2_tools(&bytes).unwrap();
            assert_eq!(c.secret.len(), secret_len, "{case}");
            assert_eq!(c.encode_tpm2_tools(), bytes, "{case}");
        }
    }

    #[test]
    fn strict_parse_names_the_problem() {
        let good = vector("p256");
        let e = |b: &[u8]| Credential::decode_tpm2_tools(b).unwrap_err();
        assert!(matches!(
            e(&good[..3]),
            CredentialError::Truncated { field: "magic", .. }
        ));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(e(&bad).to_string().contains("0x00dcc0de"));
        let mut bad = good.clone();
        bad[7] = 2;
        assert_eq!(e(&bad), CredentialError::Version { found: 2 });
        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(e(&bad), CredentialError::Trailing { bytes: 1 });
        assert!(matches!(
            e(&good[..good.len() - 1]),
            CredentialError::Truncated {
                field: "TPM2B_ENCRYPTED_SECRET",
                ..
            }
        ));
        let mut bad = good.clone();
        bad[8..10].copy_from_slice(&200u16.to_be_bytes());
        assert!(matches!(
            e(&bad),
            CredentialError::TooLarge {
                field: "TPM2B_ID_OBJECT",
                ..
            }
        ));
        for n in 0..good.len() {
            let _ = Credential::decode_tpm2_tools(&good[..n]);
        }
    }
}
