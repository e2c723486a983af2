//! A tiny certificate walker for the few X.509 fields the operator commands print: serial
//! number, issuer, subject and the SubjectPublicKeyInfo. The DER underneath is read with
//! [`ekattest_protocol::der::Reader`].
//!
//! The agent does not validate certificates (the server does, with a real X.509 parser); it
//! only shows what the TPM holds and compares the certificate's key with the EK. So this walks
//! a fixed path of at most a few levels, never recurses on input, and bounds its output
//! (names longer than [`NAME_MAX`] are cut). It must never grow into a certificate parser.

use std::fmt::Write as _;

use ekattest_protocol::der::{self, Reader, tag};

/// Longest issuer/subject string produced.
pub const NAME_MAX: usize = 512;

/// Fields read from a certificate, borrowing from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary<'a> {
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// Issuer distinguished name, e.g. `C=CH, O=STMicroelectronics NV, CN=...`.
    pub issuer: String,
    /// Subject distinguished name (often empty on EK certificates).
    pub subject: String,
    /// The DER SubjectPublicKeyInfo.
    pub spki: &'a [u8],
}

/// Why a certificate could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {what}: {source}")]
pub struct CertError {
    /// The field being read.
    pub what: &'static str,
    /// What the DER reader found.
    pub source: der::Error,
}

/// Maps a DER error at the field `what`.
fn at(what: &'static str) -> impl Fn(der::Error) -> CertError {
    move |source| CertError { what, source }
}

/// Reads serial, issuer, subject and SPKI from a DER certificate.
///
/// # Errors
/// [`CertError`] if the structure up to the SubjectPublicKeyInfo is not as X.509 lays it out.
pub fn summarize(input: &[u8]) -> Result<CertSummary<'_>, CertError> {
    let mut cert = Reader::new(input).sequence().map_err(at("certificate"))?;
    let mut tbs = cert.sequence().map_err(at("tbsCertificate"))?;
    tbs.read_optional(tag::context(0)).map_err(at("version"))?;
    let serial = tbs
        .read_tag(tag::INTEGER)
        .map_err(at("serialNumber"))?
        .contents;
    tbs.read_tag(tag::SEQUENCE)
        .map_err(at("signature algorithm"))?;
    let issuer = tbs.read_tag(tag::SEQUENCE).map_err(at("issuer"))?;
    tbs.read_tag(tag::SEQUENCE).map_err(at("validity"))?;
    let subject = tbs.read_tag(tag::SEQUENCE).map_err(at("subject"))?;
    let spki = tbs
        .read_tag(tag::SEQUENCE)
        .map_err(at("subjectPublicKeyInfo"))?
        .whole;
    let trimmed = match serial.iter().position(|b| *b != 0) {
        Some(i) => serial.get(i..).unwrap_or_default(),
        None => serial
            .get(serial.len().saturating_sub(1)..)
            .unwrap_or_default(),
    };
    Ok(CertSummary {
        serial: hex::encode(trimmed),
        issuer: name(&mut issuer.reader().map_err(at("issuer"))?)?,
        subject: name(&mut subject.reader().map_err(at("subject"))?)?,
        spki,
    })
}

/// Renders a Name (SEQUENCE OF RDN) as `K=V, K=V`, multi-valued RDNs joined with `+`.
fn name(rdns: &mut Reader<'_>) -> Result<String, CertError> {
    let mut out = String::new();
    while !rdns.is_empty() {
        let mut atvs = rdns.nested(tag::SET).map_err(at("RDN"))?;
        let mut first = true;
        while !atvs.is_empty() {
            let mut atv = atvs.sequence().map_err(at("attribute"))?;
            let oid = atv
                .read_tag(tag::OID)
                .map_err(at("attribute type"))?
                .contents;
            let value = atv.read().map_err(at("attribute value"))?;
            let (vtag, v) = (value.tag, value.contents);
            let sep = if out.is_empty() {
                ""
            } else if first {
                ", "
            } else {
                " + "
            };
            first = false;
            let _ = write!(out, "{sep}{}=", oid_name(oid));
            match vtag {
                tag::UTF8_STRING
                | tag::PRINTABLE_STRING
                | tag::IA5_STRING
                | tag::TELETEX_STRING
                | tag::VISIBLE_STRING => {
                    out.extend(
                        String::from_utf8_lossy(v)
                            .chars()
                            .map(|c| if c.is_control() { '?' } else { c }),
                    );
                }
                _ => {
                    let _ = write!(out, "#{}", hex::encode(v));
                }
            }
            if out.len() > NAME_MAX {
                let mut cut = NAME_MAX;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                out.push_str("...");
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn oid_name(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        _ => "",
    };
    if !short.is_empty() {
        return short.to_owned();
    }
    // Dotted form, bounded by the OID's length.
    let mut s = String::new();
    let mut acc: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if s.is_empty() {
                let (a, b) = if acc < 80 {
                    (acc / 40, acc % 40)
                } else {
                    (2, acc - 80)
                };
                let _ = write!(s, "{a}.{b}");
            } else {
                let _ = write!(s, ".{acc}");
            }
            acc = 0;
        } else if i > 64 || acc > (u64::MAX >> 8) {
            return format!("#{}", hex::encode(oid));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stm() -> Vec<u8> {
        ekattest_testkit::testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der")
    }

    #[test]
    fn stm_certificate_fields() {
        let der = stm();
        let s = summarize(&der).unwrap();
        assert_eq!(s.serial, "4cbd0fe61ee762edb28d50b268fc3586ff3d5e82");
        assert_eq!(
            s.issuer,
            "C=CH, O=STMicroelectronics NV, CN=STM TPM EK Intermediate CA 05"
        );
        assert_eq!(s.subject, "");
        let key = ekattest_protocol::spki::PublicKey::from_spki_der(s.spki).unwrap();
        assert_eq!(
            hex::encode(key.public_hash().unwrap()),
            "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab"
        );
    }

    #[test]
    fn truncations_never_panic() {
        let der = stm();
        for n in 0..der.len() {
            let _ = summarize(&der[..n]);
        }
        let mut bad = der.clone();
        for i in 0..bad.len().min(400) {
            bad[i] ^= 0xff;
            let _ = summarize(&bad);
            bad[i] ^= 0xff;
        }
    }

    #[test]
    fn dotted_oids() {
        assert_eq!(oid_name(&[0x67, 0x81, 0x05, 0x02, 0x01]), "2.23.133.2.1");
        assert_eq!(oid_name(&[0x55, 0x04, 0x03]), "CN");
    }
}
