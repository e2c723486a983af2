//! X.509 certificate parsing into an owned, pre-digested form for path building and the TCG
//! EK profile.
//!
//! Parsing is lenient where real EK certificates break strict DER (explicitly encoded DEFAULT
//! booleans, unsorted multi-valued RDNs, critical SAN or certificatePolicies: x509-parser
//! accepts them) and bounded: a certificate larger than [`CERT_MAX`] is refused before it is
//! parsed. This module never verifies a signature and never decides trust; it only extracts
//! what `chain` and `profile` need, and it must never panic on any input.

use std::fmt;
use std::sync::OnceLock;

use ekattest_protocol::der;
use x509_parser::certificate::X509CertificateParser;
use x509_parser::der_parser::asn1_rs::{Any, Oid, Tag, oid};
use x509_parser::nom::Parser;
use x509_parser::prelude::{FromDer, X509Name};

use super::extensions::Extensions;
use super::signature::{self, KeyCache, SigAlg, SigFailure};
use super::types::{Basic, CERT_MAX, CertError, Curve, Identity, KeyKind, KeyUsage};

const OID_RSA: Oid<'static> = oid!(1.2.840.113549.1.1.1);
const OID_EC: Oid<'static> = oid!(1.2.840.10045.2.1);
const OID_P256: Oid<'static> = oid!(1.2.840.10045.3.1.7);
const OID_P384: Oid<'static> = oid!(1.3.132.0.34);
const OID_P521: Oid<'static> = oid!(1.3.132.0.35);

/// One attribute value of a distinguished name, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum NormValue {
    /// A string type: trimmed, inner whitespace collapsed, lowercased (RFC 5280 7.1, simplified).
    Text(String),
    /// Anything else: tag and content bytes.
    Raw(u32, Vec<u8>),
}

/// RDNs in order; the attributes inside one RDN sorted (multi-valued RDNs are sets).
type Normalised = Vec<Vec<(Vec<u8>, NormValue)>>;

/// A distinguished name: raw DER, and a normalised form computed on first comparison that
/// needs it (most issuer names match byte for byte, so the EK path rarely pays for it).
#[derive(Debug, Clone)]
pub(crate) struct Name {
    raw: Vec<u8>,
    empty: bool,
    norm: OnceLock<Normalised>,
}

impl Name {
    fn new(name: &X509Name<'_>) -> Self {
        Self {
            raw: name.as_raw().to_vec(),
            empty: name.iter_rdn().next().is_none(),
            norm: OnceLock::new(),
        }
    }

    fn parsed(&self) -> Option<X509Name<'_>> {
        X509Name::from_der(&self.raw).ok().map(|(_, n)| n)
    }

    fn norm(&self) -> &Normalised {
        self.norm.get_or_init(|| match self.parsed() {
            Some(n) => n
                .iter_rdn()
                .map(|rdn| {
                    let mut set: Vec<(Vec<u8>, NormValue)> = rdn
                        .iter()
                        .map(|atv| {
                            let oid = atv.attr_type().as_bytes().to_vec();
                            (oid, normalise(atv.attr_value()))
                        })
                        .collect();
                    set.sort();
                    set
                })
                .collect(),
            // Cannot happen (the name parsed before); never equal to a parsed name.
            None => vec![vec![(
                Vec::new(),
                NormValue::Raw(u32::MAX, self.raw.clone()),
            )]],
        })
    }

    /// Byte-equal, or equal after normalisation.
    pub(crate) fn matches(&self, other: &Name) -> bool {
        self.raw == other.raw || self.norm() == other.norm()
    }

    /// True if the name has no RDN (EK certificates often have an empty subject).
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// Computes the normalised form now (for certificates shared across threads).
    pub(crate) fn prepare(&self) {
        self.norm();
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parsed() {
            Some(n) => f.write_str(&display_name(&n)),
            None => f.write_str(&hex::encode(&self.raw)),
        }
    }
}

fn normalise(value: &Any<'_>) -> NormValue {
    let text = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::TeletexString
        | Tag::VisibleString => Some(String::from_utf8_lossy(value.data).into_owned()),
        Tag::BmpString => {
            let units = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            Some(
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or('\u{fffd}'))
                    .collect(),
            )
        }
        _ => None,
    };
    match text {
        Some(t) => NormValue::Text(
            t.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase(),
        ),
        None => NormValue::Raw(value.tag().0, value.data.to_vec()),
    }
}

fn display_name(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for rdn in name.iter_rdn() {
        for (i, atv) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push_str(if i == 0 { ", " } else { " + " });
            }
            let oid = atv.attr_type().to_id_string();
            let key = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.5" => "serialNumber",
                _ => oid.as_str(),
            };
            out.push_str(key);
            out.push('=');
            match atv.as_str() {
                Ok(s) => out.extend(s.chars().take(128).filter(|c| !c.is_control())),
                Err(_) => out.push_str(&hex::encode(atv.as_slice())),
            }
        }
    }
    out
}

/// A parsed certificate; owns copies of everything path building and profile checks read.
#[derive(Debug, Clone)]
pub(crate) struct Cert {
    pub(crate) der: Vec<u8>,
    pub(crate) tbs: Vec<u8>,
    pub(crate) serial: Vec<u8>,
    pub(crate) subject: Name,
    pub(crate) issuer: Name,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) basic: Option<Basic>,
    pub(crate) key_usage: Option<KeyUsage>,
    pub(crate) ski: Option<Vec<u8>>,
    pub(crate) aki: Option<Vec<u8>>,
    /// The whole SubjectPublicKeyInfo DER.
    pub(crate) spki: Vec<u8>,
    pub(crate) key_kind: KeyKind,
    /// The subjectPublicKey BIT STRING content (RSAPublicKey DER or an EC point).
    pub(crate) key_bits: Vec<u8>,
    /// `key_bits` parsed by aws-lc on first use as an issuer key (see `signature`).
    pub(crate) keys: KeyCache,
    pub(crate) sig_alg: SigAlg,
    /// True if tbsCertificate.signature equals signatureAlgorithm (RFC 5280 4.1.1.2).
    pub(crate) sig_alg_consistent: bool,
    pub(crate) signature: Vec<u8>,
    /// Critical extensions this verifier does not understand, by dotted OID.
    pub(crate) unknown_critical: Vec<String>,
    /// TPM identity fields from the SAN directoryName (TCG EK Credential Profile 3.2.9).
    pub(crate) identity: Identity,
}

impl Cert {
    /// Parses one DER certificate (exactly one: trailing bytes are refused).
    pub(crate) fn parse(der: &[u8]) -> Result<Self, CertError> {
        if der.len() > CERT_MAX {
            return Err(CertError::TooLarge {
                len: der.len(),
                limit: CERT_MAX,
            });
        }
        // Only the extensions the verifier reads are decoded (see `extensions`): x509-parser's
        // deep parsing would also decode policies, AIA, CRL points and EKU on every login.
        let (rest, x509) = X509CertificateParser::new()
            .with_deep_parse_extensions(false)
            .parse(der)
            .map_err(|e| CertError::Malformed {
                reason: describe(&e),
            })?;
        if !rest.is_empty() {
            return Err(CertError::Trailing { bytes: rest.len() });
        }
        let tbs = &x509.tbs_certificate;
        if x509.signature_value.unused_bits != 0
            || tbs.subject_pki.subject_public_key.unused_bits != 0
        {
            return Err(CertError::Malformed {
                reason: "signature or public key BIT STRING with unused bits".to_owned(),
            });
        }
        let Extensions {
            basic,
            key_usage,
            ski,
            aki,
            identity,
            unknown_critical,
        } = Extensions::read(tbs.extensions())?;
        let spki = &tbs.subject_pki;
        Ok(Self {
            der: der.to_vec(),
            tbs: tbs.as_ref().to_vec(),
            serial: tbs.raw_serial().to_vec(),
            subject: Name::new(&tbs.subject),
            issuer: Name::new(&tbs.issuer),
            not_before: tbs.validity.not_before.timestamp(),
            not_after: tbs.validity.not_after.timestamp(),
            basic,
            key_usage,
            ski,
            aki,
            spki: spki.raw.to_vec(),
            key_kind: key_kind(
                &spki.algorithm.algorithm,
                spki.algorithm.parameters.as_ref(),
            ),
            key_bits: spki.subject_public_key.data.to_vec(),
            keys: KeyCache::default(),
            sig_alg: signature::resolve(&x509.signature_algorithm),
            sig_alg_consistent: algid_consistent(der, tbs.as_ref(), tbs.raw_serial()),
            signature: x509.signature_value.data.to_vec(),
            unknown_critical,
            identity,
        })
    }

    /// A short human description for error messages: the subject, or the serial when the
    /// subject is empty (EK certificates).
    pub(crate) fn describe(&self) -> String {
        if self.subject.is_empty() {
            format!("certificate with serial {}", hex::encode(&self.serial))
        } else {
            format!("'{}'", self.subject)
        }
    }

    /// True if basicConstraints says cA.
    pub(crate) fn is_ca(&self) -> bool {
        self.basic.is_some_and(|b| b.ca)
    }

    /// True if subject and issuer are the same name (RFC 5280 "self-issued").
    pub(crate) fn self_issued(&self) -> bool {
        self.subject.matches(&self.issuer)
    }

    /// True if `issuer` may have issued `self` by name and key identifiers.
    pub(crate) fn issued_by_name(&self, issuer: &Cert) -> bool {
        // Key identifiers first: comparing them is cheap, while a name that differs in its
        // bytes must be normalised before it can be declared different.
        let ids_match = match (&self.aki, &issuer.ski) {
            (Some(a), Some(s)) => a == s,
            _ => true,
        };
        ids_match && self.issuer.matches(&issuer.subject)
    }

    /// Verifies this certificate's signature with `issuer`'s public key (parsed once per
    /// issuer certificate and algorithm, see [`KeyCache`]). A key that does not parse fails as
    /// an invalid signature, as with a key parsed per call.
    pub(crate) fn verify_signed_by(
        &self,
        issuer: &Cert,
        allow_sha1: bool,
    ) -> Result<(), SigFailure> {
        issuer.keys.verify(
            &issuer.key_kind,
            &issuer.key_bits,
            &self.sig_alg,
            &self.tbs,
            &self.signature,
            allow_sha1,
        )
    }
}

/// Offset of `part` inside `whole`, if it is a subslice.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

/// True if the outer signatureAlgorithm is byte-for-byte the tbsCertificate.signature field
/// (RFC 5280 4.1.1.2) and the signature is a BIT STRING. Checked on the bytes because the
/// parser is lenient about the tags there.
fn algid_consistent(der: &[u8], tbs: &[u8], serial: &[u8]) -> bool {
    let (Some(tbs_at), Some(serial_at)) = (offset_in(der, tbs), offset_in(tbs, serial)) else {
        return false;
    };
    let outer = der.get(tbs_at + tbs.len()..).unwrap_or_default();
    let inner = tbs.get(serial_at + serial.len()..).unwrap_or_default();
    // The outer AlgorithmIdentifier: a SEQUENCE whose first element is an OBJECT
    // IDENTIFIER, equal to the inner one, and a BIT STRING must follow.
    let mut r = der::Reader::new(outer);
    match r.read_tag(der::tag::SEQUENCE) {
        Ok(alg) => {
            inner.starts_with(alg.whole)
                && alg.contents.first() == Some(&der::tag::OID)
                && r.peek_tag() == Some(der::tag::BIT_STRING)
        }
        Err(_) => false,
    }
}

fn key_kind(alg: &Oid<'_>, params: Option<&Any<'_>>) -> KeyKind {
    if *alg == OID_RSA {
        return KeyKind::Rsa;
    }
    if *alg == OID_EC {
        let curve = params.and_then(|p| p.clone().oid().ok());
        return match curve {
            Some(c) if c == OID_P256 => KeyKind::Ec(Curve::P256),
            Some(c) if c == OID_P384 => KeyKind::Ec(Curve::P384),
            Some(c) if c == OID_P521 => KeyKind::Ec(Curve::P521),
            Some(c) => KeyKind::Other(format!("EC curve {}", c.to_id_string())),
            None => KeyKind::Other("EC key without a named curve".to_owned()),
        };
    }
    KeyKind::Other(format!("key algorithm {}", alg.to_id_string()))
}

/// Renders a UNIX time for messages (`2028-07-11T00:00:00Z`).
pub(crate) fn format_time(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("@{t}"))
}

/// The parser's failure in words an operator can act on (x509-parser prints its internals,
/// e.g. `Parsing Error: NomError(Eof)`).
fn describe(e: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    use x509_parser::error::X509Error;
    use x509_parser::nom::error::ErrorKind;
    const TRUNCATED: &str = "the DER ends before the certificate does (truncated, or cut by a \
                             copy)";
    match e {
        x509_parser::nom::Err::Incomplete(_) => TRUNCATED.to_owned(),
        x509_parser::nom::Err::Error(x) | x509_parser::nom::Err::Failure(x) => match x {
            X509Error::NomError(ErrorKind::Eof) => TRUNCATED.to_owned(),
            X509Error::Der(x509_parser::der_parser::error::BerError::Incomplete(_)) => {
                TRUNCATED.to_owned()
            }
            X509Error::NomError(_) => {
                "the bytes are not a DER-encoded X.509 certificate".to_owned()
            }
            X509Error::Der(d) => format!("invalid DER: {d}"),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::signature::Hash;
    use super::*;

    fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let content: Vec<u8> = parts.concat();
        let mut out = vec![0u8; der::tlv_len(content.len())];
        let mut w = der::Writer::new(&mut out);
        w.tlv(tag, &content).unwrap();
        out
    }

    fn atv(oid_last: u8, string_tag: u8, value: &str) -> Vec<u8> {
        let oid = [0x06, 0x03, 0x55, 0x04, oid_last];
        tlv(0x30, &[&oid, &tlv(string_tag, &[value.as_bytes()])])
    }

    fn name(der: &[u8]) -> Name {
        let (rest, n) = X509Name::from_der(der).unwrap();
        assert!(rest.is_empty());
        Name::new(&n)
    }

    #[test]
    fn multi_valued_rdns_match_in_any_order_and_string_type() {
        // Nuvoton style: one RDN holding CN, O, C in unsorted order, UTF8String.
        let unsorted = tlv(
            0x30,
            &[&tlv(
                0x31,
                &[
                    &atv(3, 0x0c, "Nuvoton TPM Root CA 2110"),
                    &atv(10, 0x0c, "Nuvoton Technology Corporation"),
                    &atv(6, 0x13, "TW"),
                ],
            )],
        );
        // The same set sorted, PrintableString, other case and spacing.
        let sorted = tlv(
            0x30,
            &[&tlv(
                0x31,
                &[
                    &atv(6, 0x13, "tw"),
                    &atv(10, 0x13, "Nuvoton  Technology Corporation "),
                    &atv(3, 0x13, "NUVOTON TPM Root CA 2110"),
                ],
            )],
        );
        assert!(name(&unsorted).matches(&name(&sorted)));
        // Three separate RDNs are a different name from one multi-valued RDN.
        let three = tlv(
            0x30,
            &[
                &tlv(0x31, &[&atv(3, 0x0c, "Nuvoton TPM Root CA 2110")]),
                &tlv(0x31, &[&atv(10, 0x0c, "Nuvoton Technology Corporation")]),
                &tlv(0x31, &[&atv(6, 0x13, "TW")]),
            ],
        );
        assert!(!name(&unsorted).matches(&name(&three)));
        let other = tlv(
            0x30,
            &[&tlv(0x31, &[&atv(3, 0x0c, "Nuvoton TPM Root CA 2111")])],
        );
        assert!(!name(&three).matches(&name(&other)));
        assert_eq!(
            name(&unsorted).to_string(),
            "CN=Nuvoton TPM Root CA 2110 + O=Nuvoton Technology Corporation + C=TW"
        );
    }

    #[test]
    fn oversized_and_trailing_input_is_refused() {
        let big = vec![0x30; CERT_MAX + 1];
        assert!(matches!(Cert::parse(&big), Err(CertError::TooLarge { .. })));
        assert!(matches!(Cert::parse(&[]), Err(CertError::Malformed { .. })));
        // Truncated: said in words, not as the parser's internals.
        let der = ekattest_testkit::testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
        let e = Cert::parse(&der[..der.len() / 2]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(!e.contains("NomError"), "{e}");
        assert!(matches!(
            Cert::parse(&[0x30, 0x00]),
            Err(CertError::Malformed { .. })
        ));
    }

    const CA: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/real-ek/ca"
    );

    fn ca(name: &str) -> Cert {
        let path = format!("{CA}/{name}");
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("test data {path}: {e}"));
        Cert::parse(pem::parse(pem).unwrap().contents()).unwrap()
    }

    #[test]
    fn issuer_keys_are_parsed_once_per_algorithm() {
        let root = ca("STM_RSA_RT.pem");
        let mut inter = ca("STM_RSA_05I.pem");
        assert_eq!(format!("{:?}", root.keys), "KeyCache(0 parsed)");
        assert_eq!(inter.verify_signed_by(&root, false), Ok(()));
        assert_eq!(inter.verify_signed_by(&root, false), Ok(()));
        assert_eq!(format!("{:?}", root.keys), "KeyCache(1 parsed)");

        // The cached key still checks every signature.
        let last = inter.signature.len() - 1;
        inter.signature[last] ^= 1;
        assert_eq!(
            inter.verify_signed_by(&root, false),
            Err(SigFailure::Invalid)
        );
        inter.signature[last] ^= 1;

        // Another algorithm gets its own key: a SHA-384 reading of this SHA-256 signature
        // fails, and does not disturb the SHA-256 key.
        inter.sig_alg = SigAlg::RsaPkcs1(Hash::Sha384);
        assert_eq!(
            inter.verify_signed_by(&root, false),
            Err(SigFailure::Invalid)
        );
        assert_eq!(format!("{:?}", root.keys), "KeyCache(2 parsed)");
        inter.sig_alg = SigAlg::RsaPkcs1(Hash::Sha256);
        assert_eq!(inter.verify_signed_by(&root, false), Ok(()));
    }

    #[test]
    fn an_unusable_issuer_key_fails_every_time() {
        let inter = ca("STM_RSA_05I.pem");
        let mut root = ca("STM_RSA_RT.pem");
        root.key_bits = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        for _ in 0..2 {
            assert_eq!(
                inter.verify_signed_by(&root, false),
                Err(SigFailure::Invalid)
            );
        }
        // Wrong key type for the algorithm: refused before any key is parsed.
        root.key_kind = KeyKind::Ec(Curve::P256);
        assert!(matches!(
            inter.verify_signed_by(&root, false),
            Err(SigFailure::KeyMismatch(_))
        ));
    }
}
