//! The CA's files and key: PEM parsing of the certificate and the private key, the checks
//! that make a certificate usable as the SVID CA, and the key as rcgen's signer.
//!
//! Never logs and never prints or returns key material; errors name the file and what to do.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{SvidError, is_trust_domain};

/// The CA key as rcgen's signer: ECDSA P-256 with SHA-256, DER signatures.
pub(super) struct CaKey {
    pub(super) key: EcdsaKeyPair,
    pub(super) rng: SystemRandom,
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// PEM with Unix line endings (the pem crate defaults to CRLF).
pub(super) fn pem_lf(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The DER of the first `CERTIFICATE` block.
pub(super) fn first_certificate(pem_bytes: &[u8], what: &str) -> Result<Vec<u8>, SvidError> {
    let blocks = pem::parse_many(pem_bytes).map_err(|e| SvidError::Pem {
        what: what.to_owned(),
        reason: format!("not valid PEM ({e})"),
    })?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .ok_or_else(|| SvidError::Pem {
            what: what.to_owned(),
            reason: "no -----BEGIN CERTIFICATE----- block; give the CA certificate in PEM"
                .to_owned(),
        })
}

/// The P-256 key of the first private key block (PKCS#8 or SEC1).
pub(super) fn load_key(pem_bytes: &[u8], what: &str) -> Result<EcdsaKeyPair, SvidError> {
    let err = |reason: &str| SvidError::CaKey {
        what: what.to_owned(),
        reason: reason.to_owned(),
    };
    let blocks = pem::parse_many(pem_bytes).map_err(|e| SvidError::Pem {
        what: what.to_owned(),
        reason: format!("not valid PEM ({e})"),
    })?;
    for block in blocks {
        match block.tag() {
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                return EcdsaKeyPair::from_private_key_der(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    block.contents(),
                )
                .map_err(|_| {
                    err(
                        "not an ECDSA P-256 private key; the SVID CA key must be P-256 \
                         (create one with `ekattestctl ca create`)",
                    )
                });
            }
            "RSA PRIVATE KEY" => {
                return Err(err(
                    "is an RSA key; the SVID CA key must be ECDSA P-256 (create one with \
                     `ekattestctl ca create`)",
                ));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(err(
                    "is encrypted; store it unencrypted with restrictive permissions \
                     (openssl pkey -in KEY -out KEY.plain)",
                ));
            }
            _ => {}
        }
    }
    Err(SvidError::Pem {
        what: what.to_owned(),
        reason: "no -----BEGIN PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY----- block".to_owned(),
    })
}

/// The CA's basicConstraints and keyUsage allow it to issue SVIDs.
pub(super) fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("malformed basicConstraints: {e}"))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(
            "not a CA certificate (basicConstraints CA:TRUE missing); use the trust \
                    domain's CA certificate, not an SVID or other leaf"
                .to_owned(),
        );
    }
    let ku = cert
        .key_usage()
        .map_err(|e| format!("malformed keyUsage: {e}"))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err("keyUsage does not include keyCertSign, so it may not sign SVIDs".to_owned());
    }
    Ok(())
}

/// The trust domain of the certificate's first `spiffe://` URI SAN.
pub(super) fn spiffe_trust_domain(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://")
            .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
            .filter(|td| is_trust_domain(td)),
        _ => None,
    })
}
