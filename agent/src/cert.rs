//! A tiny DER walker for the few X.509 fields the operator commands print: serial number,
//! issuer, subject and the SubjectPublicKeyInfo.
//!
//! The agent does not validate certificates (the server does, with a real X.509 parser); it
//! only shows what the TPM holds and compares the certificate's key with the EK. So this walks
//! a fixed path of at most a few levels, never recurses on input, and bounds its output
//! (names longer than [`NAME_MAX`] are cut). It must never grow into a certificate parser.

use std::fmt::Write as _;

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
#[error("malformed certificate: {0}")]
pub struct CertError(pub &'static str);

/// One DER TLV: tag, contents, and what follows.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let (&tag, rest) = input.split_first().ok_or(CertError("truncated tag"))?;
    let (&first, rest) = rest.split_first().ok_or(CertError("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return Err(CertError("unsupported length form"));
        }
        let bytes = rest.get(..n).ok_or(CertError("truncated length"))?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(n..).unwrap_or_default())
    };
    let contents = rest.get(..len).ok_or(CertError("length past end"))?;
    Ok((tag, contents, rest.get(len..).unwrap_or_default()))
}

fn expect<'a>(
    input: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertError> {
    let (tag, c, rest) = tlv(input)?;
    if tag != want {
        return Err(CertError(what));
    }
    Ok((c, rest))
}

/// Reads serial, issuer, subject and SPKI from a DER certificate.
///
/// # Errors
/// [`CertError`] if the structure up to the SubjectPublicKeyInfo is not as X.509 lays it out.
pub fn summarize(der: &[u8]) -> Result<CertSummary<'_>, CertError> {
    let (cert, _) = expect(der, 0x30, "certificate is not a SEQUENCE")?;
    let (tbs, _) = expect(cert, 0x30, "tbsCertificate is not a SEQUENCE")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2; // [0] version
    }
    let (serial, rest) = expect(rest, 0x02, "serialNumber is not an INTEGER")?;
    let (_, rest) = expect(rest, 0x30, "signature algorithm is not a SEQUENCE")?;
    let (issuer, rest) = expect(rest, 0x30, "issuer is not a SEQUENCE")?;
    let (_, rest) = expect(rest, 0x30, "validity is not a SEQUENCE")?;
    let (subject, rest) = expect(rest, 0x30, "subject is not a SEQUENCE")?;
    let (tag, _, after) = tlv(rest)?;
    if tag != 0x30 {
        return Err(CertError("subjectPublicKeyInfo is not a SEQUENCE"));
    }
    let spki = rest.get(..rest.len() - after.len()).unwrap_or_default();
    let trimmed = match serial.iter().position(|b| *b != 0) {
        Some(i) => serial.get(i..).unwrap_or_default(),
        None => serial
            .get(serial.len().saturating_sub(1)..)
            .unwrap_or_default(),
    };
    Ok(CertSummary {
        serial: hex::encode(trimmed),
        issuer: name(issuer)?,
        subject: name(subject)?,
        spki,
    })
}

/// Renders a Name (SEQUENCE OF RDN) as `K=V, K=V`, multi-valued RDNs joined with `+`.
fn name(mut rdns: &[u8]) -> Result<String, CertError> {
    let mut out = String::new();
    while !rdns.is_empty() {
        let (set, rest) = expect(rdns, 0x31, "RDN is not a SET")?;
        rdns = rest;
        let mut atvs = set;
        let mut first = true;
        while !atvs.is_empty() {
            let (atv, rest) = expect(atvs, 0x30, "attribute is not a SEQUENCE")?;
            atvs = rest;
            let (oid, value) = expect(atv, 0x06, "attribute type is not an OID")?;
            let (vtag, v, _) = tlv(value)?;
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
                0x0c | 0x13 | 0x16 | 0x14 | 0x1a => {
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
        let key = ekattest_protocol::public::PublicKey::from_spki_der(s.spki).unwrap();
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
