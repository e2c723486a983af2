//! TCG EK Credential Profile checks on the EK certificate (applied with CA validation).
//!
//! What the seed requires, and how it is read here (TCG EK Credential Profile 2.6, 3.2):
//! - not a CA: basicConstraints, if present, must not say cA;
//! - keyUsage allows the challenge: keyEncipherment for an RSA EK (MakeCredential encrypts the
//!   seed with RSA-OAEP), keyAgreement for an ECC EK (the seed is an ECDH shared secret).
//!   The extension must be present: the profile makes it mandatory and critical.
//!   An ECC EK with keyEncipherment but no keyAgreement (older swtpm releases issue these;
//!   the one installed here uses keyAgreement) is accepted in both modes with a warning: the challenge only needs the
//!   TPM to hold the private key, which the ActivateCredential round trip proves, and the bit
//!   pattern says nothing about the key's TPM-side attributes;
//! - TPM identity: manufacturer (2.23.133.2.1), model (.2) and version (.3) in a SAN
//!   directoryName, as one multi-valued RDN or separate RDNs, UTF8String or PrintableString
//!   (IA5String and NumericString are tolerated).
//!
//! This module only reports; [`super::validate`] decides whether a failure fails the chain
//! check (enforce) or becomes a warning (warn). It must never panic on a malformed SAN.

use std::fmt;

use asn1_rs::{Oid, oid};
use x509_parser::prelude::X509Name;

use super::cert::{Cert, KeyKind};

const OID_MANUFACTURER: Oid<'static> = oid!(2.23.133.2.1);
const OID_MODEL: Oid<'static> = oid!(2.23.133.2.2);
const OID_VERSION: Oid<'static> = oid!(2.23.133.2.3);

/// Longest identity value kept (the profile's values are under 40 characters).
const VALUE_MAX: usize = 256;

/// TPM identity fields found in the certificate's SAN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) manufacturer: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) version: Option<String>,
    /// Problems seen while reading (non-string value, conflicting repeats, malformed SAN).
    pub(crate) problems: Vec<String>,
}

impl Identity {
    pub(crate) fn note_malformed_san(&mut self) {
        self.problems
            .push("subjectAltName does not parse".to_owned());
    }
}

/// Collects the identity attributes of one SAN directoryName into `id`.
pub(crate) fn read_identity(dn: &X509Name<'_>, id: &mut Identity) {
    for atv in dn.iter_attributes() {
        let oid = atv.attr_type();
        let (slot, name) = if *oid == OID_MANUFACTURER {
            (&mut id.manufacturer, "manufacturer")
        } else if *oid == OID_MODEL {
            (&mut id.model, "model")
        } else if *oid == OID_VERSION {
            (&mut id.version, "version")
        } else {
            continue;
        };
        let value = match atv.as_str() {
            Ok(s) if s.len() <= VALUE_MAX && !s.chars().any(char::is_control) => s,
            Ok(_) => {
                id.problems
                    .push(format!("TPM {name} is too long or has control characters"));
                continue;
            }
            Err(_) => {
                id.problems
                    .push(format!("TPM {name} is not a UTF8String or PrintableString"));
                continue;
            }
        };
        match slot {
            None => *slot = Some(value.to_owned()),
            Some(first) if first == value => {}
            Some(_) => id
                .problems
                .push(format!("TPM {name} appears twice with different values")),
        }
    }
}

/// One way an EK certificate departs from the TCG EK profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileIssue {
    /// basicConstraints says cA: a CA certificate was presented as the EK certificate.
    IsCa,
    /// No keyUsage extension.
    NoKeyUsage,
    /// keyUsage lacks the bit the challenge needs.
    KeyUsage {
        /// `RSA` or `ECC`.
        key: &'static str,
        /// The bit required.
        want: &'static str,
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
            Self::IsCa => f.write_str("EK certificate is a CA certificate (basicConstraints cA)"),
            Self::NoKeyUsage => f.write_str("EK certificate has no keyUsage extension"),
            Self::KeyUsage { key, want } => {
                write!(f, "keyUsage of the {key} EK certificate lacks {want}")
            }
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
    if ek.is_ca() {
        issues.push(ProfileIssue::IsCa);
    }
    match (&ek.key_kind, ek.key_usage) {
        (KeyKind::Other(what), _) => issues.push(ProfileIssue::KeyType(what.clone())),
        (_, None) => issues.push(ProfileIssue::NoKeyUsage),
        (KeyKind::Rsa, Some(ku)) => {
            if !ku.key_encipherment {
                issues.push(ProfileIssue::KeyUsage {
                    key: "RSA",
                    want: "keyEncipherment",
                });
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
