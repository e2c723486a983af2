//! A small bounded certificate walker for the two kinds of certificate the agent reads: the
//! CA certificates of its trust bundle and the X.509-SVID the server issues. The DER
//! underneath is read with [`ekattest_protocol::der::Reader`].
//!
//! It reads exactly what [`super::identity`] checks: the signed `tbsCertificate` bytes, the
//! signature algorithm and value, issuer and subject (raw DER), the SubjectPublicKeyInfo, the
//! validity as unix seconds and the URI SubjectAltName. It walks a fixed path, never recurses
//! on input, rejects certificates over [`CERT_MAX`] bytes and stops after [`EXTENSIONS_MAX`]
//! extensions and [`SAN_MAX`] names. It never panics and never allocates. It must never grow
//! into a general X.509 parser: chain building and policy are the server's job.

use ekattest_protocol::der::{self, Reader, tag};

/// Largest certificate accepted (the protocol carries SVIDs of up to 2048 bytes).
pub const CERT_MAX: usize = 16 * 1024;

/// Most extensions read from one certificate.
pub const EXTENSIONS_MAX: usize = 32;

/// Most SubjectAltName entries read from one certificate.
pub const SAN_MAX: usize = 16;

/// DER of the OID ecdsa-with-SHA256 (1.2.840.10045.4.3.2), contents only.
pub const ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// DER of the OID id-ce-subjectAltName (2.5.29.17), contents only.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// DER of the OID id-ce-basicConstraints (2.5.29.19), contents only.
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];

/// DER of the OID id-ce-extKeyUsage (2.5.29.37), contents only.
const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];

/// Most key purposes read from one extendedKeyUsage.
const EKU_MAX: usize = 16;

/// Why a certificate could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    /// A field is not as RFC 5280 lays it out, or a bound is exceeded.
    #[error("malformed certificate: {0}")]
    Field(&'static str),
    /// The DER of a field could not be read.
    #[error("malformed certificate: {what}: {source}")]
    Der {
        /// The field being read.
        what: &'static str,
        /// What the DER reader found.
        source: der::Error,
    },
}

/// Maps a DER error at the field `what`.
fn at(what: &'static str) -> impl Fn(der::Error) -> X509Error {
    move |source| X509Error::Der { what, source }
}

/// The fields of one certificate, borrowing from its DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Certificate<'a> {
    /// The whole `tbsCertificate` TLV: the bytes the issuer signed.
    pub tbs: &'a [u8],
    /// The outer signature algorithm's OID (contents, without tag and length).
    pub signature_algorithm: &'a [u8],
    /// The signature value (the BIT STRING's contents after its unused-bits byte).
    pub signature: &'a [u8],
    /// The issuer Name (whole TLV).
    pub issuer: &'a [u8],
    /// The subject Name (whole TLV).
    pub subject: &'a [u8],
    /// The SubjectPublicKeyInfo (whole TLV).
    pub spki: &'a [u8],
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// The URI SubjectAltName, if there is exactly one.
    pub uri_san: Option<&'a str>,
    /// How many URI SubjectAltNames there are (an SVID must have exactly one).
    pub uri_sans: usize,
    /// basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// extendedKeyUsage lists the ekattest signer usage
    /// ([`ekattest_protocol::sign::SIGNER_EKU_OID`]).
    pub signer_usage: bool,
}

/// Reads a certificate.
///
/// # Errors
/// [`X509Error`] naming the field that is not as X.509 (RFC 5280) lays it out, or a
/// certificate over [`CERT_MAX`] bytes or with trailing bytes.
pub fn parse(input: &[u8]) -> Result<Certificate<'_>, X509Error> {
    if input.len() > CERT_MAX {
        return Err(X509Error::Field("certificate larger than 16 KiB"));
    }
    let mut outer = Reader::new(input);
    let mut cert = outer.sequence().map_err(at("certificate"))?;
    outer.finish().map_err(at("certificate"))?;
    let tbs = cert.read_tag(tag::SEQUENCE).map_err(at("tbsCertificate"))?;
    let mut alg = cert.sequence().map_err(at("signatureAlgorithm"))?;
    let oid = alg
        .read_tag(tag::OID)
        .map_err(at("signatureAlgorithm"))?
        .contents;
    let signature = cert
        .read_tag(tag::BIT_STRING)
        .and_then(|bits| bits.bit_string_bytes())
        .map_err(at("signatureValue"))?;
    cert.finish().map_err(at("certificate"))?;

    let mut fields = tbs.reader().map_err(at("tbsCertificate"))?;
    fields
        .read_optional(tag::context(0))
        .map_err(at("version"))?;
    fields.read_tag(tag::INTEGER).map_err(at("serialNumber"))?;
    fields.read_tag(tag::SEQUENCE).map_err(at("signature"))?;
    let issuer = fields.read_tag(tag::SEQUENCE).map_err(at("issuer"))?.whole;
    let mut validity = fields.sequence().map_err(at("validity"))?;
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    validity.finish().map_err(at("validity"))?;
    let subject = fields.read_tag(tag::SEQUENCE).map_err(at("subject"))?.whole;
    let spki = fields
        .read_tag(tag::SEQUENCE)
        .map_err(at("subjectPublicKeyInfo"))?
        .whole;

    let mut found = Extensions::default();
    while !fields.is_empty() {
        let field = fields
            .read()
            .map_err(at("field after subjectPublicKeyInfo"))?;
        match field.tag {
            // issuerUniqueID, subjectUniqueID
            0x81 | 0x82 => {}
            0xa3 => {
                let mut exts = field
                    .reader()
                    .and_then(|mut e| e.sequence())
                    .map_err(at("extensions"))?;
                found = extensions(&mut exts)?;
            }
            _ => {
                return Err(X509Error::Field(
                    "unexpected field after subjectPublicKeyInfo",
                ));
            }
        }
    }
    let Extensions {
        uri_san,
        uri_sans,
        is_ca,
        signer_usage,
    } = found;
    Ok(Certificate {
        tbs: tbs.whole,
        signature_algorithm: oid,
        signature,
        issuer,
        subject,
        spki,
        not_before,
        not_after,
        uri_san: if uri_sans == 1 { uri_san } else { None },
        uri_sans,
        is_ca,
        signer_usage,
    })
}

/// What [`extensions`] reads.
#[derive(Default)]
struct Extensions<'a> {
    uri_san: Option<&'a str>,
    uri_sans: usize,
    is_ca: bool,
    signer_usage: bool,
}

/// Walks the extensions for subjectAltName (first URI, number of URIs), basicConstraints
/// (CA) and extendedKeyUsage (the signer usage).
fn extensions<'a>(exts: &mut Reader<'a>) -> Result<Extensions<'a>, X509Error> {
    let mut found = Extensions::default();
    let mut seen = 0;
    while !exts.is_empty() {
        seen += 1;
        if seen > EXTENSIONS_MAX {
            return Err(X509Error::Field("too many extensions"));
        }
        let mut ext = exts.sequence().map_err(at("extension"))?;
        let oid = ext
            .read_tag(tag::OID)
            .map_err(at("extension OID"))?
            .contents;
        ext.read_optional(tag::BOOLEAN)
            .map_err(at("extension critical flag"))?;
        let value = ext
            .read_tag(tag::OCTET_STRING)
            .map_err(at("extension value"))?
            .contents;
        let mut value = Reader::new(value);
        match oid {
            SUBJECT_ALT_NAME => sans(&mut value, &mut found)?,
            BASIC_CONSTRAINTS => {
                let mut bc = value.sequence().map_err(at("basicConstraints"))?;
                // cA BOOLEAN DEFAULT FALSE: present and 0xff-ish (non-zero) means CA.
                if let Ok(flag) = bc.read_tag(tag::BOOLEAN) {
                    found.is_ca = flag.contents.first().is_some_and(|&b| b != 0);
                }
            }
            EXT_KEY_USAGE => {
                let mut purposes = value.sequence().map_err(at("extendedKeyUsage"))?;
                let mut count = 0;
                while !purposes.is_empty() {
                    count += 1;
                    if count > EKU_MAX {
                        return Err(X509Error::Field("too many extendedKeyUsage purposes"));
                    }
                    let purpose = purposes
                        .read_tag(tag::OID)
                        .map_err(at("extendedKeyUsage purpose"))?;
                    if purpose.contents == ekattest_protocol::sign::SIGNER_EKU_OID_DER {
                        found.signer_usage = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Reads a subjectAltName value into `found`.
fn sans<'a>(value: &mut Reader<'a>, found: &mut Extensions<'a>) -> Result<(), X509Error> {
    let mut names = value.sequence().map_err(at("subjectAltName"))?;
    let mut count = 0;
    while !names.is_empty() {
        count += 1;
        if count > SAN_MAX {
            return Err(X509Error::Field("too many subjectAltName entries"));
        }
        let name = names.read().map_err(at("subjectAltName entry"))?;
        if name.tag == tag::context_primitive(6) {
            let uri = core::str::from_utf8(name.contents)
                .map_err(|_| X509Error::Field("URI subjectAltName is not text"))?;
            if found.uri_san.is_none() {
                found.uri_san = Some(uri);
            }
            found.uri_sans += 1;
        }
    }
    Ok(())
}

/// Reads one UTCTime or GeneralizedTime (`Z` form, as RFC 5280 requires).
fn time(validity: &mut Reader<'_>) -> Result<i64, X509Error> {
    let t = validity.read().map_err(at("validity time"))?;
    let (tag, contents) = (t.tag, t.contents);
    let digits = |s: &[u8]| -> Result<i64, X509Error> {
        s.iter().try_fold(0i64, |acc, b| {
            if b.is_ascii_digit() {
                Ok(acc * 10 + i64::from(b - b'0'))
            } else {
                Err(X509Error::Field("time has a non-digit"))
            }
        })
    };
    let (year, rest) = match (tag, contents.len()) {
        (tag::UTC_TIME, 13) => {
            let yy = digits(&contents[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &contents[2..])
        }
        (tag::GENERALIZED_TIME, 15) => (digits(&contents[..4])?, &contents[4..]),
        _ => {
            return Err(X509Error::Field(
                "time is not UTCTime/GeneralizedTime in Z form",
            ));
        }
    };
    if rest.get(10) != Some(&b'Z') {
        return Err(X509Error::Field("time does not end in Z"));
    }
    let field = |i: usize| digits(rest.get(i..i + 2).unwrap_or_default());
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(X509Error::Field("time field out of range"));
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn times() {
        let time = |der: &[u8]| super::time(&mut Reader::new(der));
        let utc = b"\x17\x0d491231235959Z";
        assert_eq!(time(utc).unwrap(), 2_524_607_999);
        let utc = b"\x17\x0d500101000000Z";
        assert_eq!(time(utc).unwrap(), -631_152_000);
        let gen_time = b"\x18\x0f20380119031408Z";
        assert_eq!(time(gen_time).unwrap(), 2_147_483_648);
        assert!(time(b"\x17\x0d4912312359590").is_err());
        assert!(time(b"\x17\x0d491331235959Z").is_err());
        assert!(time(b"\x17\x0c49123123595Z").is_err());
    }

    #[test]
    fn garbage_and_truncations_error_without_panic() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x30, 0x84, 0, 0, 0, 1, 0]).is_err());
        assert!(parse(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(parse(&vec![0x30; CERT_MAX + 1]).is_err());
        let mut x = 0x9e37_79b9_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = parse(&bytes);
        }
    }
}
