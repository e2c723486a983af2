//! TCG EK Credential Profile checks on the EK certificate (applied with CA validation).
//!
//! What the seed requires, and how it is read here (TCG EK Credential Profile for TPM Family
//! 2.0, 2.x, section 3.2 "X.509 EK certificate": keyUsage critical, keyEncipherment for an
//! RSA EK, keyAgreement for an ECC EK):
//! - not a CA: checked before the path is built, in every mode (see `chain`), since a CA
//!   certificate is never an EK certificate whatever the profile mode;
//! - keyUsage allows the challenge. The extension must be present (the profile makes it
//!   mandatory and critical) and must assert a key-establishment bit, keyEncipherment or
//!   keyAgreement; a keyUsage with neither (digitalSignature only, say) fails. The profile's
//!   bit for the key type (keyEncipherment for RSA: MakeCredential encrypts the seed with
//!   RSA-OAEP; keyAgreement for ECC: the seed is an ECDH shared secret) passes silently. The
//!   other bit passes with a warning, in both modes: RSA EK certificates with keyAgreement
//!   only are what firmware TPMs such as Microsoft Pluton issue, ECC EK certificates with
//!   keyEncipherment only what older swtpm releases issue. Both are genuine EKs: the
//!   challenge needs only that the TPM holds the private key and uses it for ActivateCredential
//!   (a property of the key's TPM-side attributes, which the round trip proves), and the
//!   certificate's bits say nothing about those;
//! - TPM identity: manufacturer (2.23.133.2.1), model (.2) and version (.3) in a SAN
//!   directoryName, as one multi-valued RDN or separate RDNs, UTF8String or PrintableString
//!   (IA5String and NumericString are tolerated).
//!
//! This module only reports; [`super::validate`] decides whether a failure fails the chain
//! check (enforce) or becomes a warning (warn). It must never panic on a malformed SAN.

use std::fmt;

use super::cert::Cert;
use super::types::KeyKind;

/// One way an EK certificate departs from the TCG EK profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileIssue {
    /// No keyUsage extension.
    NoKeyUsage,
    /// keyUsage has neither key-establishment bit the challenge may rely on.
    KeyUsage {
        /// `RSA` or `ECC`.
        key: &'static str,
        /// The TCG profile's bit for this key type.
        want: &'static str,
        /// The other bit, also accepted (with a warning).
        also: &'static str,
    },
    /// The EK key is neither RSA nor ECC on a supported curve.
    KeyType(String),
    /// TPM identity fields absent from the SAN.
    MissingIdentity {
        /// Which of manufacturer, model, version.
        missing: Vec<&'static str>,
        /// Problems seen reading the SAN, if any.
        problems: Vec<String>,
    },
}

impl fmt::Display for ProfileIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKeyUsage => f.write_str("EK certificate has no keyUsage extension"),
            Self::KeyUsage { key, want, also } => write!(
                f,
                "keyUsage of the {key} EK certificate lacks {want} (and {also}, also accepted): \
                 the key is not certified for the challenge"
            ),
            Self::KeyType(what) => write!(f, "EK key type not supported: {what}"),
            Self::MissingIdentity { missing, problems } => {
                write!(
                    f,
                    "EK certificate lacks TPM identity fields ({}) in its subjectAltName",
                    missing.join(", ")
                )?;
                if !problems.is_empty() {
                    write!(f, " ({})", problems.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

/// The TCG EK profile failures of a certificate (all of them, in a stable order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// Each failed requirement.
    pub issues: Vec<ProfileIssue>,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EK certificate does not follow the TCG EK profile: ")?;
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProfileError {}

/// Checks the EK certificate against the profile. Returns the failures (empty if it
/// conforms) and warnings that apply in both modes.
pub(crate) fn check(ek: &Cert) -> (Vec<ProfileIssue>, Vec<String>) {
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    match (&ek.key_kind, ek.key_usage) {
        (KeyKind::Other(what), _) => issues.push(ProfileIssue::KeyType(what.clone())),
        (_, None) => issues.push(ProfileIssue::NoKeyUsage),
        (KeyKind::Rsa, Some(ku)) => {
            if !ku.key_encipherment {
                if ku.key_agreement {
                    warnings.push(
                        "RSA EK certificate has keyAgreement instead of keyEncipherment (as \
                         firmware TPMs such as Microsoft Pluton issue them); accepted: the \
                         challenge is RSA-OAEP decryption with the EK, which the TPM does \
                         whatever the certificate's keyUsage says"
                            .to_owned(),
                    );
                } else {
                    issues.push(ProfileIssue::KeyUsage {
                        key: "RSA",
                        want: "keyEncipherment",
                        also: "keyAgreement",
                    });
                }
            }
        }
        (KeyKind::Ec(_), Some(ku)) => {
            if !ku.key_agreement {
                if ku.key_encipherment {
                    warnings.push(
                        "ECC EK certificate has keyEncipherment instead of keyAgreement \
                         (as older swtpm releases issue them); accepted: the challenge is \
                         ECDH with the EK"
                            .to_owned(),
                    );
                } else {
                    issues.push(ProfileIssue::KeyUsage {
                        key: "ECC",
                        want: "keyAgreement",
                        also: "keyEncipherment",
                    });
                }
            }
        }
    }
    let id = &ek.identity;
    let missing: Vec<&'static str> = [
        ("manufacturer", id.manufacturer.is_none()),
        ("model", id.model.is_none()),
        ("version", id.version.is_none()),
    ]
    .into_iter()
    .filter_map(|(n, absent)| absent.then_some(n))
    .collect();
    if !missing.is_empty() {
        issues.push(ProfileIssue::MissingIdentity {
            missing,
            problems: id.problems.clone(),
        });
    } else if !id.problems.is_empty() {
        warnings.push(format!("TPM identity fields: {}", id.problems.join("; ")));
    }
    (issues, warnings)
}
