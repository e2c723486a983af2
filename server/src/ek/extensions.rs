//! The certificate extensions the verifier reads, decoded one by one.
//!
//! x509-parser's deep extension parsing decodes every extension it knows (certificate
//! policies, AIA, CRL distribution points, EKU...) on every parse, that is on every login for
//! the EK certificate; `cert` turns it off and this module decodes only basicConstraints,
//! keyUsage, the key identifiers and the SAN, with x509-parser's own parser for each (so
//! the same encodings are accepted) and the rules of its `basic_constraints()` and
//! `key_usage()` accessors. It only reads; it never decides trust and must never panic.

use x509_parser::der_parser::asn1_rs::{Oid, oid};
use x509_parser::extensions::{
    AuthorityKeyIdentifier, BasicConstraints, GeneralName, KeyIdentifier, KeyUsage as X509KeyUsage,
    SubjectAlternativeName, X509Extension,
};
use x509_parser::prelude::{FromDer, X509Name};

use super::types::{Basic, CertError, Identity, KNOWN_CRITICAL, KeyUsage};

const OID_BASIC_CONSTRAINTS: Oid<'static> = oid!(2.5.29.19);
const OID_KEY_USAGE: Oid<'static> = oid!(2.5.29.15);
const OID_SKI: Oid<'static> = oid!(2.5.29.14);
const OID_AKI: Oid<'static> = oid!(2.5.29.35);
const OID_SAN: Oid<'static> = oid!(2.5.29.17);
const OID_MANUFACTURER: Oid<'static> = oid!(2.23.133.2.1);
const OID_MODEL: Oid<'static> = oid!(2.23.133.2.2);
const OID_VERSION: Oid<'static> = oid!(2.23.133.2.3);

/// Longest identity value kept (the profile's values are under 40 characters).
const VALUE_MAX: usize = 256;

/// What the verifier reads from the extensions, decoded with x509-parser's parsers for each
/// of them and the same rules as its deep parsing with `basic_constraints()` and
/// `key_usage()`: basicConstraints or keyUsage present twice is an error; a keyUsage that
/// does not decode is an error, a basicConstraints that does not decode counts as absent; an
/// SKI, AKI or SAN that does not decode is ignored (a SAN is noted as malformed); when an SKI
/// or AKI repeats, the last one counts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub(crate) basic: Option<Basic>,
    pub(crate) key_usage: Option<KeyUsage>,
    pub(crate) ski: Option<Vec<u8>>,
    pub(crate) aki: Option<Vec<u8>>,
    pub(crate) identity: Identity,
    pub(crate) unknown_critical: Vec<String>,
}

impl Extensions {
    pub(crate) fn read(exts: &[X509Extension<'_>]) -> Result<Self, CertError> {
        let mut out = Self {
            basic: None,
            key_usage: None,
            ski: None,
            aki: None,
            identity: Identity::default(),
            unknown_critical: Vec::new(),
        };
        let (mut basic_seen, mut key_usage_seen, mut key_usage_bad) = (0usize, 0usize, false);
        for ext in exts {
            let oid = &ext.oid;
            if *oid == OID_BASIC_CONSTRAINTS {
                basic_seen += 1;
                out.basic = BasicConstraints::from_der(ext.value)
                    .ok()
                    .map(|(_, b)| Basic {
                        ca: b.ca,
                        path_len: b.path_len_constraint,
                    });
            } else if *oid == OID_KEY_USAGE {
                key_usage_seen += 1;
                match X509KeyUsage::from_der(ext.value) {
                    Ok((_, k)) => {
                        out.key_usage = Some(KeyUsage {
                            key_cert_sign: k.key_cert_sign(),
                            key_encipherment: k.key_encipherment(),
                            key_agreement: k.key_agreement(),
                        });
                    }
                    Err(_) => key_usage_bad = true,
                }
            } else if *oid == OID_SKI {
                if let Ok((_, k)) = KeyIdentifier::from_der(ext.value) {
                    out.ski = Some(k.0.to_vec());
                }
            } else if *oid == OID_AKI {
                if let Ok((_, a)) = AuthorityKeyIdentifier::from_der(ext.value) {
                    out.aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
            } else if *oid == OID_SAN {
                match SubjectAlternativeName::from_der(ext.value) {
                    Ok((_, san)) => {
                        for gn in &san.general_names {
                            if let GeneralName::DirectoryName(dn) = gn {
                                read_identity(dn, &mut out.identity);
                            }
                        }
                    }
                    Err(_) => out.identity.note_malformed_san(),
                }
            }
            if ext.critical && !KNOWN_CRITICAL.contains(oid) {
                out.unknown_critical.push(oid.to_id_string());
            }
        }
        if basic_seen > 1 {
            return Err(CertError::Extension {
                name: "basicConstraints",
            });
        }
        if key_usage_seen > 1 || key_usage_bad {
            return Err(CertError::Extension { name: "keyUsage" });
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use ekattest_protocol::der;
    use x509_parser::certificate::X509CertificateParser;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::nom::Parser;
    use x509_parser::prelude::X509Certificate;

    use super::*;

    /// The previous implementation: x509-parser's deep parsing and its accessors.
    fn reference(exts: &[X509Extension<'_>]) -> Result<Extensions, CertError> {
        let unique = |oid: &Oid<'_>, name| {
            let mut found = exts.iter().filter(|e| e.oid == *oid);
            let first = found.next();
            match found.next() {
                Some(_) => Err(CertError::Extension { name }),
                None => Ok(first),
            }
        };
        let basic = unique(&OID_BASIC_CONSTRAINTS, "basicConstraints")?.and_then(|e| {
            match e.parsed_extension() {
                ParsedExtension::BasicConstraints(b) => Some(Basic {
                    ca: b.ca,
                    path_len: b.path_len_constraint,
                }),
                _ => None,
            }
        });
        let key_usage = match unique(&OID_KEY_USAGE, "keyUsage")? {
            None => None,
            Some(e) => match e.parsed_extension() {
                ParsedExtension::KeyUsage(k) => Some(KeyUsage {
                    key_cert_sign: k.key_cert_sign(),
                    key_encipherment: k.key_encipherment(),
                    key_agreement: k.key_agreement(),
                }),
                _ => return Err(CertError::Extension { name: "keyUsage" }),
            },
        };
        let mut out = Extensions {
            basic,
            key_usage,
            ski: None,
            aki: None,
            identity: Identity::default(),
            unknown_critical: Vec::new(),
        };
        for ext in exts {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => out.ski = Some(k.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    out.aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        if let GeneralName::DirectoryName(dn) = gn {
                            read_identity(dn, &mut out.identity);
                        }
                    }
                }
                ParsedExtension::ParseError { .. } if ext.oid == OID_SAN => {
                    out.identity.note_malformed_san();
                }
                _ => {}
            }
            if ext.critical && !KNOWN_CRITICAL.contains(&ext.oid) {
                out.unknown_critical.push(ext.oid.to_id_string());
            }
        }
        Ok(out)
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; der::tlv_len(content.len())];
        let mut w = der::Writer::new(&mut out);
        w.tlv(tag, content).unwrap();
        out
    }

    /// Extension DER: `oid` given as its content bytes (2.5.29.x = 55 1d x).
    fn ext(oid_last: u8, critical: Option<bool>, value: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x06, &[0x55, 0x1d, oid_last]);
        if let Some(c) = critical {
            body.extend_from_slice(&tlv(0x01, &[if c { 0xff } else { 0x00 }]));
        }
        body.extend_from_slice(&tlv(0x04, value));
        tlv(0x30, &body)
    }

    fn both_ways(
        ders: &[Vec<u8>],
    ) -> (Result<Extensions, CertError>, Result<Extensions, CertError>) {
        let parse = |deep: bool| -> Vec<X509Extension<'_>> {
            ders.iter()
                .map(|d| {
                    let (rest, e) = X509ExtensionParser::new()
                        .with_deep_parse_extensions(deep)
                        .parse(d)
                        .unwrap();
                    assert!(rest.is_empty());
                    e
                })
                .collect()
        };
        (reference(&parse(true)), Extensions::read(&parse(false)))
    }

    use x509_parser::extensions::X509ExtensionParser;

    #[test]
    fn crafted_extensions_read_as_deep_parsing_did() {
        const BC: u8 = 19;
        const KU: u8 = 15;
        const SKI: u8 = 14;
        const AKI: u8 = 35;
        const SAN: u8 = 17;
        let ca = tlv(0x30, &tlv(0x01, &[0xff]));
        let ca_len = tlv(0x30, &[tlv(0x01, &[0xff]), tlv(0x02, &[3])].concat());
        let not_ca_explicit = tlv(0x30, &tlv(0x01, &[0x00]));
        let key_enc = tlv(0x03, &[0x05, 0x20]);
        let cert_sign = tlv(0x03, &[0x01, 0x06]);
        let key_id = tlv(0x04, &[1, 2, 3, 4]);
        let aki = tlv(0x30, &tlv(0x80, &[9, 8, 7]));
        let tcg = |last: u8, value: &str| {
            let oid = tlv(0x06, &[0x67, 0x81, 0x05, 0x02, last]);
            tlv(
                0x31,
                &tlv(0x30, &[oid, tlv(0x0c, value.as_bytes())].concat()),
            )
        };
        let dn = tlv(
            0x30,
            &[tcg(1, "id:53544D20"), tcg(2, "ST33"), tcg(3, "id:00490004")].concat(),
        );
        let san = tlv(0x30, &tlv(0xa4, &dn));
        let garbage = tlv(0x05, &[]);
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("none", vec![]),
            (
                "ca with pathLen",
                vec![
                    ext(BC, Some(true), &ca_len),
                    ext(KU, Some(true), &cert_sign),
                ],
            ),
            (
                "explicit DEFAULT false",
                vec![ext(BC, Some(true), &not_ca_explicit)],
            ),
            ("ca twice", vec![ext(BC, None, &ca), ext(BC, None, &ca)]),
            (
                "basicConstraints garbage",
                vec![ext(BC, Some(true), &garbage)],
            ),
            (
                "keyUsage twice",
                vec![ext(KU, None, &key_enc), ext(KU, None, &key_enc)],
            ),
            ("keyUsage garbage", vec![ext(KU, Some(true), &garbage)]),
            (
                "key ids",
                vec![ext(SKI, None, &key_id), ext(AKI, None, &aki)],
            ),
            (
                "key ids repeated",
                vec![ext(SKI, None, &key_id), ext(SKI, None, &tlv(0x04, &[5]))],
            ),
            (
                "key ids garbage",
                vec![ext(SKI, None, &garbage), ext(AKI, None, &garbage)],
            ),
            (
                "aki garbage after a good one",
                vec![ext(AKI, None, &aki), ext(AKI, None, &garbage)],
            ),
            (
                "san",
                vec![ext(SAN, Some(true), &san), ext(KU, Some(true), &key_enc)],
            ),
            ("san garbage", vec![ext(SAN, Some(true), &garbage)]),
            (
                "san twice",
                vec![ext(SAN, None, &san), ext(SAN, None, &san)],
            ),
            (
                "unknown critical",
                vec![ext(30, Some(true), &garbage), ext(32, Some(true), &garbage)],
            ),
        ];
        for (name, ders) in &cases {
            let (want, got) = both_ways(ders);
            assert_eq!(got, want, "{name}");
        }
        // The cases exercise each outcome (not only agreement on trivial input).
        let (_, twice) = both_ways(&cases[3].1);
        assert_eq!(
            twice,
            Err(CertError::Extension {
                name: "basicConstraints"
            })
        );
        let (_, garbage_bc) = both_ways(&cases[4].1);
        assert_eq!(garbage_bc.unwrap().basic, None);
        let (_, garbage_ku) = both_ways(&cases[6].1);
        assert_eq!(garbage_ku, Err(CertError::Extension { name: "keyUsage" }));
        let (_, san_ok) = both_ways(&cases[11].1);
        let san_ok = san_ok.unwrap();
        assert_eq!(san_ok.identity.model.as_deref(), Some("ST33"));
        assert_eq!(san_ok.key_usage.map(|k| k.key_encipherment), Some(true));
        let (_, san_bad) = both_ways(&cases[12].1);
        assert_eq!(san_bad.unwrap().identity.problems.len(), 1);
        let (_, ids) = both_ways(&cases[10].1);
        assert_eq!(ids.unwrap().aki, Some(vec![9, 8, 7]));
        let (_, unknown) = both_ways(&cases[14].1);
        assert_eq!(unknown.unwrap().unknown_critical, ["2.5.29.30"]);
    }

    #[test]
    fn real_certificates_read_as_deep_parsing_did() {
        let mut ders = Vec::new();
        for dir in ["ca", "leaf"] {
            let path = ekattest_testkit::testdata::existing(format!("real-ek/{dir}"));
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("test data {} is missing: {e}", path.display()));
            for entry in entries {
                let file = entry.unwrap().path();
                let bytes = std::fs::read(&file).unwrap();
                match file.extension().and_then(|e| e.to_str()) {
                    Some("pem") => ders.push(pem::parse(&bytes).unwrap().into_contents()),
                    Some("der") => ders.push(bytes),
                    _ => {}
                }
            }
        }
        assert!(ders.len() >= 52, "expected 51 CA certificates and the leaf");
        for der in &ders {
            let (_, deep) = X509Certificate::from_der(der).unwrap();
            let (_, shallow) = X509CertificateParser::new()
                .with_deep_parse_extensions(false)
                .parse(der)
                .unwrap();
            let want = reference(deep.tbs_certificate.extensions());
            let got = Extensions::read(shallow.tbs_certificate.extensions());
            assert_eq!(got, want, "{}", deep.tbs_certificate.subject);
        }
    }
}
