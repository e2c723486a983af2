//! Signed policy documents: the envelope that the config topic carries (DESIGN.md sections 2
//! and 8, "policy changes over the bus need an operator's signature").
//!
//! An envelope is the `AgentAttestation` document, byte for byte, followed by a trailer of
//! YAML comment lines, so the whole envelope is still a valid document an operator can read
//! with `cat` or check with `ekattestctl config validate`:
//!
//! ```text
//! section: AgentAttestation            <- the document: every byte up to the trailer
//! ...
//! # -----BEGIN EKATTEST POLICY SIGNATURE-----
//! # cluster: c-1
//! # issued: 1718000000 2024-06-10T06:13:20Z
//! # signer: sha256:<64 hex: SHA-256 of the signer's DER SubjectPublicKeyInfo>
//! # signature: <hex: ECDSA P-256 SHA-256, ASN.1 DER>
//! # -----END EKATTEST POLICY SIGNATURE-----
//! ```
//!
//! The signature covers the transcript ([`transcript`]):
//! `"ekattest/v2 policy document\0" || u16be(len cluster) || cluster || u64be(issued) ||
//! u64be(len document) || document`, so a document signed for one cluster is refused by the
//! servers of another, its issue time cannot be changed, and not one byte of the document can.
//! The date after the issue time and the signer fingerprint are for operators (the fingerprint
//! also picks the pinned key to try); neither is trusted.
//!
//! Decoding takes untrusted bytes from the broker: the input is bounded ([`ENVELOPE_MAX`]),
//! the trailer is searched for only in its last [`TRAILER_MAX`] bytes, every line has one
//! exact form, and nothing may follow the END line. [`Envelope::encode`] of a decoded
//! envelope gives back the input byte for byte. Never panics, never logs.

use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use ekattest_protocol::spki::{EccCurve, PublicKey};
use sha2::{Digest, Sha256};

use super::MAX_DOCUMENT_BYTES;

/// The context string that starts every signed transcript (never used for anything else).
pub const CONTEXT: &[u8] = b"ekattest/v2 policy document\0";
/// The trailer's first line.
pub const BEGIN: &str = "# -----BEGIN EKATTEST POLICY SIGNATURE-----\n";
/// The trailer's last line.
pub const END: &str = "# -----END EKATTEST POLICY SIGNATURE-----\n";
/// Largest trailer: the four header lines with a maximal cluster id and signature.
pub const TRAILER_MAX: usize = 1024;
/// Largest envelope: a maximal document plus a maximal trailer.
pub const ENVELOPE_MAX: usize = MAX_DOCUMENT_BYTES + TRAILER_MAX;
/// Longest cluster id in a trailer (a topic level; the protocol's limit is lower).
const CLUSTER_MAX: usize = 255;
/// Longest DER ECDSA P-256 signature (two 33-byte INTEGERs and headers).
const SIGNATURE_MAX: usize = 80;

/// Why an envelope is refused. [`EnvelopeError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// No trailer: an unsigned document.
    #[error(
        "document is not signed (no \"# -----BEGIN EKATTEST POLICY SIGNATURE-----\" trailer); \
         sign it with `ekattestctl config sign` or publish it with `ekattestctl config set \
         cluster --sign-key KEY.pem`"
    )]
    Unsigned,
    /// The input is larger than [`ENVELOPE_MAX`].
    #[error(
        "signed document of {len} bytes is larger than {limit} bytes; publish a smaller \
         document (or use policy-files)"
    )]
    TooLong {
        /// Its length.
        len: usize,
        /// [`ENVELOPE_MAX`].
        limit: usize,
    },
    /// A trailer line is not of its one accepted form.
    #[error(
        "signature trailer line {line}: {reason}; sign the document again with `ekattestctl \
         config sign` (the trailer must not be edited)"
    )]
    Malformed {
        /// 1-based line of the trailer (1 = the BEGIN line).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The document was signed for another cluster.
    #[error(
        "document is signed for cluster {signed:?}, but this server is in cluster {ours:?}; \
         sign it with --id {ours}"
    )]
    WrongCluster {
        /// The trailer's cluster.
        signed: String,
        /// This server's `cluster-id`.
        ours: String,
    },
    /// No pinned key has the trailer's fingerprint.
    #[error(
        "document is signed by key sha256:{signer}, which is not in policy-signers; add its \
         public key to policy-signers or sign with a pinned key"
    )]
    UnknownSigner {
        /// The fingerprint (hex).
        signer: String,
    },
    /// The signature does not verify with the pinned key.
    #[error(
        "signature does not verify with policy-signers key sha256:{signer}: the document, \
         cluster or issue time was changed after signing, or it was signed with another key; \
         sign it again"
    )]
    BadSignature {
        /// The fingerprint (hex).
        signer: String,
    },
}

impl EnvelopeError {
    /// The `reason` label of `attestation_policy_documents_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::TooLong { .. } | Self::Malformed { .. } => "malformed",
            Self::WrongCluster { .. } => "wrong_cluster",
            Self::UnknownSigner { .. } => "unknown_signer",
            Self::BadSignature { .. } => "bad_signature",
        }
    }
}

/// A decoded (not yet verified) envelope, borrowing the input.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The document bytes (everything before the trailer).
    pub document: &'a [u8],
    /// The cluster it was signed for.
    pub cluster: &'a str,
    /// Issue time, unix seconds.
    pub issued: u64,
    /// SHA-256 of the signer's DER SubjectPublicKeyInfo.
    pub signer: [u8; 32],
    /// The DER ECDSA signature.
    pub signature: Vec<u8>,
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("document_bytes", &self.document.len())
            .field("cluster", &self.cluster)
            .field("issued", &self.issued)
            .field("signer", &hex::encode(self.signer))
            .finish_non_exhaustive()
    }
}

/// The bytes the signature covers.
pub fn transcript(cluster: &str, issued: u64, document: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + 2 + cluster.len() + 16 + document.len());
    out.extend_from_slice(CONTEXT);
    let len = u16::try_from(cluster.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(cluster.as_bytes());
    out.extend_from_slice(&issued.to_be_bytes());
    out.extend_from_slice(&(document.len() as u64).to_be_bytes());
    out.extend_from_slice(document);
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    ekattest_protocol::timestamp::UtcSeconds(secs).to_string()
}

impl<'a> Envelope<'a> {
    /// Splits `bytes` into the document and its trailer, checking every trailer line.
    ///
    /// # Errors
    /// [`EnvelopeError::Unsigned`] without a trailer, [`EnvelopeError::TooLong`] or
    /// [`EnvelopeError::Malformed`] otherwise.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > ENVELOPE_MAX {
            return Err(EnvelopeError::TooLong {
                len: bytes.len(),
                limit: ENVELOPE_MAX,
            });
        }
        let window_start = bytes.len().saturating_sub(TRAILER_MAX);
        let window = bytes.get(window_start..).unwrap_or_default();
        let begin = BEGIN.as_bytes();
        // The trailer starts a line: at the very start of the input or after a newline.
        let at = window
            .windows(begin.len())
            .enumerate()
            .rev()
            .map(|(i, _)| i + window_start)
            .find(|&i| {
                bytes.get(i..i + begin.len()) == Some(begin)
                    && (i == 0 || bytes.get(i - 1) == Some(&b'\n'))
            })
            .ok_or(EnvelopeError::Unsigned)?;
        let document = bytes.get(..at).unwrap_or_default();
        let trailer = bytes.get(at..).unwrap_or_default();
        let trailer = std::str::from_utf8(trailer).map_err(|_| EnvelopeError::Malformed {
            line: 1,
            reason: "not UTF-8",
        })?;
        let Some(body) = trailer.strip_suffix('\n') else {
            return Err(EnvelopeError::Malformed {
                line: trailer.lines().count(),
                reason: "the trailer must end with a newline",
            });
        };
        let lines: Vec<&str> = body.split('\n').take(7).collect();
        if lines.len() != 6 {
            return Err(EnvelopeError::Malformed {
                line: lines.len().min(6),
                reason: "the trailer has six lines: BEGIN, cluster, issued, signer, signature, \
                         END, and nothing follows END",
            });
        }
        let bad = |line: usize, reason: &'static str| EnvelopeError::Malformed { line, reason };
        let field = |line: usize, key: &'static str| {
            lines
                .get(line - 1)
                .and_then(|l| l.strip_prefix(key))
                .ok_or(bad(line, "unexpected line; see the trailer format"))
        };
        let cluster = field(2, "# cluster: ")?;
        if cluster.is_empty()
            || cluster.len() > CLUSTER_MAX
            || !cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(2, "cluster is not a cluster id (A-Z a-z 0-9 - _ .)"));
        }
        let issued_text = field(3, "# issued: ")?;
        let (secs, date) = issued_text
            .split_once(' ')
            .ok_or(bad(3, "expected `# issued: SECONDS DATE`"))?;
        if secs.is_empty() || secs.len() > 19 || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(3, "issue time is not unix seconds"));
        }
        if secs.len() > 1 && secs.starts_with('0') {
            return Err(bad(3, "issue time has a leading zero"));
        }
        let issued: u64 = secs
            .parse()
            .map_err(|_| bad(3, "issue time is not unix seconds"))?;
        if date != utc(issued) {
            return Err(bad(3, "the date does not match the issue time"));
        }
        let signer_hex = field(4, "# signer: sha256:")?;
        let mut signer = [0u8; 32];
        if signer_hex.len() != 64
            || signer_hex.bytes().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(signer_hex, &mut signer).is_err()
        {
            return Err(bad(4, "signer is not sha256: and 64 lowercase hex digits"));
        }
        let sig_hex = field(5, "# signature: ")?;
        if sig_hex.is_empty()
            || sig_hex.len() > 2 * SIGNATURE_MAX
            || sig_hex.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(bad(
                5,
                "signature is not lowercase hex of a DER ECDSA signature",
            ));
        }
        let signature =
            hex::decode(sig_hex).map_err(|_| bad(5, "signature is not lowercase hex"))?;
        if lines.get(5) != Some(&END.trim_end_matches('\n')) {
            return Err(bad(6, "expected the END line"));
        }
        Ok(Self {
            document,
            cluster,
            issued,
            signer,
            signature,
        })
    }

    /// The envelope as bytes: the document, then the trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.document.len() + TRAILER_MAX);
        out.extend_from_slice(self.document);
        out.extend_from_slice(BEGIN.as_bytes());
        out.extend_from_slice(format!("# cluster: {}\n", self.cluster).as_bytes());
        out.extend_from_slice(
            format!("# issued: {} {}\n", self.issued, utc(self.issued)).as_bytes(),
        );
        out.extend_from_slice(
            format!("# signer: sha256:{}\n", hex::encode(self.signer)).as_bytes(),
        );
        out.extend_from_slice(
            format!("# signature: {}\n", hex::encode(&self.signature)).as_bytes(),
        );
        out.extend_from_slice(END.as_bytes());
        out
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, or no block of the expected kind.
    #[error("{0}")]
    Format(String),
    /// The key is not an ECDSA P-256 key.
    #[error("not an ECDSA P-256 key: {0}")]
    Key(String),
}

/// The pinned public keys (`policy-signers`).
#[derive(Clone, Default)]
pub struct Signers {
    keys: Vec<([u8; 32], Vec<u8>)>,
}

impl fmt::Debug for Signers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(fp, _)| hex::encode(fp)))
            .finish()
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo: a signer's fingerprint.
pub fn fingerprint(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

impl Signers {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PEM `PUBLIC KEY` (SubjectPublicKeyInfo of an ECDSA P-256 key); returns its
    /// fingerprint.
    ///
    /// # Errors
    /// [`KeyError`] if the text holds no such key.
    pub fn add_pem(&mut self, pem_text: &[u8]) -> Result<[u8; 32], KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Format(e.to_string()))?;
        let spki = blocks
            .into_iter()
            .find(|b| b.tag() == "PUBLIC KEY")
            .ok_or_else(|| {
                KeyError::Format(
                    "no PEM PUBLIC KEY block (write it with `ekattestctl config keygen` or \
                     `openssl pkey -pubout`)"
                        .to_owned(),
                )
            })?
            .into_contents();
        let key = PublicKey::from_spki_der(&spki).map_err(|e| KeyError::Key(e.to_string()))?;
        if !matches!(
            key,
            PublicKey::Ecc {
                curve: EccCurve::NistP256,
                ..
            }
        ) {
            return Err(KeyError::Key("another key type or curve".to_owned()));
        }
        let fp = fingerprint(&spki);
        if !self.keys.iter().any(|(k, _)| *k == fp) {
            self.keys.push((fp, spki));
        }
        Ok(fp)
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is pinned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `envelope` is for `cluster` and signed by a pinned key.
    ///
    /// # Errors
    /// [`EnvelopeError::WrongCluster`], [`EnvelopeError::UnknownSigner`] or
    /// [`EnvelopeError::BadSignature`].
    pub fn verify(&self, envelope: &Envelope<'_>, cluster: &str) -> Result<(), EnvelopeError> {
        if envelope.cluster != cluster {
            return Err(EnvelopeError::WrongCluster {
                signed: envelope.cluster.to_owned(),
                ours: cluster.to_owned(),
            });
        }
        let signer = hex::encode(envelope.signer);
        let (_, spki) = self
            .keys
            .iter()
            .find(|(fp, _)| *fp == envelope.signer)
            .ok_or_else(|| EnvelopeError::UnknownSigner {
                signer: signer.clone(),
            })?;
        let message = transcript(envelope.cluster, envelope.issued, envelope.document);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki)
            .verify(&message, &envelope.signature)
            .map_err(|_| EnvelopeError::BadSignature { signer })
    }
}

/// An operator's signing key (ECDSA P-256). Its `Debug` never shows the key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey(sha256:{})",
            hex::encode(fingerprint(&self.spki))
        )
    }
}

impl SigningKey {
    /// Generates a key; returns it with its PKCS#8 PEM (`PRIVATE KEY`).
    ///
    /// # Errors
    /// [`KeyError::Key`] if the system RNG fails.
    pub fn generate() -> Result<(Self, String), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let key = Self::from_der(pkcs8.as_ref())?;
        Ok((key, pem_text))
    }

    /// Reads a PEM private key: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY` (openssl).
    ///
    /// # Errors
    /// [`KeyError`] if the text holds no unencrypted P-256 key.
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Format(e.to_string()))?;
        let der = blocks
            .into_iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "EC PRIVATE KEY")
            .ok_or_else(|| {
                KeyError::Format(
                    "no PEM PRIVATE KEY or EC PRIVATE KEY block (an encrypted key is not \
                     supported)"
                        .to_owned(),
                )
            })?
            .into_contents();
        Self::from_der(&der)
    }

    fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|e| KeyError::Key(e.to_string()))?
            .as_ref()
            .to_vec();
        Ok(Self { pair, spki })
    }

    /// The public key as PEM `PUBLIC KEY` (for `policy-signers`).
    pub fn public_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// SHA-256 of the public key's DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.spki)
    }

    /// Signs `document` for `cluster` at `issued` (unix seconds) and returns the envelope.
    /// A document that does not end with a newline gets one (it becomes part of the signed
    /// document), so the trailer starts a line.
    ///
    /// # Errors
    /// [`KeyError::Key`] if signing fails (RNG).
    pub fn sign(&self, document: &[u8], cluster: &str, issued: u64) -> Result<Vec<u8>, KeyError> {
        let mut doc = document.to_vec();
        if !doc.is_empty() && !doc.ends_with(b"\n") {
            doc.push(b'\n');
        }
        let message = transcript(cluster, issued, &doc);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), &message)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        Ok(Envelope {
            document: &doc,
            cluster,
            issued,
            signer: self.fingerprint(),
            signature: signature.as_ref().to_vec(),
        }
        .encode())
    }
}

#[cfg(test)]
mod tests;
