//! A small bounded DER walker for the two kinds of certificate the agent reads: the CA
//! certificates of its trust bundle and the X.509-SVID the server issues.
//!
//! It reads exactly what [`super::identity`] checks: the signed `tbsCertificate` bytes, the
//! signature algorithm and value, issuer and subject (raw DER), the SubjectPublicKeyInfo, the
//! validity as unix seconds and the URI SubjectAltName. It walks a fixed path, never recurses
//! on input, rejects certificates over [`CERT_MAX`] bytes and stops after [`EXTENSIONS_MAX`]
//! extensions and [`SAN_MAX`] names. It never panics and never allocates. It must never grow
//! into a general X.509 parser: chain building and policy are the server's job.

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
#[error("malformed certificate: {0}")]
pub struct X509Error(pub &'static str);

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

/// One TLV: (tag, contents, the whole TLV, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// An expected TLV: (contents, the whole TLV, what follows).
type Field<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Result<Tlv<'_>, X509Error> {
    let (&tag, rest) = input.split_first().ok_or(X509Error("truncated tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(X509Error("multi-byte tags are not used in certificates"));
    }
    let (&first, rest) = rest.split_first().ok_or(X509Error("truncated length"))?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return Err(X509Error("length form not used in certificates this size"));
        }
        let bytes = rest.get(..n).ok_or(X509Error("truncated length"))?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header
        .checked_add(len)
        .ok_or(X509Error("length overflows"))?;
    let whole = input.get(..end).ok_or(X509Error("length past end"))?;
    let contents = whole.get(header..).ok_or(X509Error("length past end"))?;
    let after = input.get(end..).ok_or(X509Error("length past end"))?;
    Ok((tag, contents, whole, after))
}

fn expect<'a>(input: &'a [u8], want: u8, what: &'static str) -> Result<Field<'a>, X509Error> {
    let (tag, contents, whole, after) = tlv(input)?;
    if tag != want {
        return Err(X509Error(what));
    }
    Ok((contents, whole, after))
}

/// Reads a certificate.
///
/// # Errors
/// [`X509Error`] naming the field that is not as X.509 (RFC 5280) lays it out, or a
/// certificate over [`CERT_MAX`] bytes or with trailing bytes.
pub fn parse(der: &[u8]) -> Result<Certificate<'_>, X509Error> {
    if der.len() > CERT_MAX {
        return Err(X509Error("certificate larger than 16 KiB"));
    }
    let (cert, _, after) = expect(der, 0x30, "certificate is not a SEQUENCE")?;
    if !after.is_empty() {
        return Err(X509Error("trailing bytes after the certificate"));
    }
    let (tbs_contents, tbs, rest) = expect(cert, 0x30, "tbsCertificate is not a SEQUENCE")?;
    let (alg, _, rest) = expect(rest, 0x30, "signatureAlgorithm is not a SEQUENCE")?;
    let (oid, _, _) = expect(alg, 0x06, "signatureAlgorithm has no OID")?;
    let (bits, _, rest) = expect(rest, 0x03, "signatureValue is not a BIT STRING")?;
    if !rest.is_empty() {
        return Err(X509Error("trailing fields after signatureValue"));
    }
    let signature = match bits.split_first() {
        Some((0, sig)) => sig,
        _ => return Err(X509Error("signatureValue has unused bits")),
    };

    let mut rest = tbs_contents;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.3; // [0] EXPLICIT version
    }
    let (_, _, rest) = expect(rest, 0x02, "serialNumber is not an INTEGER")?;
    let (_, _, rest) = expect(rest, 0x30, "signature is not a SEQUENCE")?;
    let (_, issuer, rest) = expect(rest, 0x30, "issuer is not a SEQUENCE")?;
    let (validity, _, rest) = expect(rest, 0x30, "validity is not a SEQUENCE")?;
    let (not_before, validity) = time(validity)?;
    let (not_after, validity) = time(validity)?;
    if !validity.is_empty() {
        return Err(X509Error("validity has more than two times"));
    }
    let (_, subject, rest) = expect(rest, 0x30, "subject is not a SEQUENCE")?;
    let (_, spki, mut rest) = expect(rest, 0x30, "subjectPublicKeyInfo is not a SEQUENCE")?;

    let mut found = Extensions::default();
    while let Some(&tag) = rest.first() {
        let (_, contents, _, after) = tlv(rest)?;
        rest = after;
        match tag {
            0x81 | 0x82 => {} // issuerUniqueID, subjectUniqueID
            0xa3 => {
                let (exts, _, _) = expect(contents, 0x30, "extensions is not a SEQUENCE")?;
                found = extensions(exts)?;
            }
            _ => return Err(X509Error("unexpected field after subjectPublicKeyInfo")),
        }
    }
    let Extensions {
        uri_san,
        uri_sans,
        is_ca,
        signer_usage,
    } = found;
    Ok(Certificate {
        tbs,
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
fn extensions(mut exts: &[u8]) -> Result<Extensions<'_>, X509Error> {
    let mut found = Extensions::default();
    let mut seen = 0;
    while !exts.is_empty() {
        seen += 1;
        if seen > EXTENSIONS_MAX {
            return Err(X509Error("too many extensions"));
        }
        let (ext, _, after) = expect(exts, 0x30, "extension is not a SEQUENCE")?;
        exts = after;
        let (oid, _, mut rest) = expect(ext, 0x06, "extension has no OID")?;
        if rest.first() == Some(&0x01) {
            rest = tlv(rest)?.3; // critical BOOLEAN
        }
        let (value, _, _) = expect(rest, 0x04, "extension value is not an OCTET STRING")?;
        match oid {
            SUBJECT_ALT_NAME => sans(value, &mut found)?,
            BASIC_CONSTRAINTS => {
                let (bc, _, _) = expect(value, 0x30, "basicConstraints is not a SEQUENCE")?;
                // cA BOOLEAN DEFAULT FALSE: present and 0xff-ish (non-zero) means CA.
                if let Ok((0x01, flag, _, _)) = tlv(bc) {
                    found.is_ca = flag.first().is_some_and(|&b| b != 0);
                }
            }
            EXT_KEY_USAGE => {
                let (mut purposes, _, _) =
                    expect(value, 0x30, "extendedKeyUsage is not a SEQUENCE")?;
                let mut count = 0;
                while !purposes.is_empty() {
                    count += 1;
                    if count > EKU_MAX {
                        return Err(X509Error("too many extendedKeyUsage purposes"));
                    }
                    let (purpose, _, after) =
                        expect(purposes, 0x06, "extendedKeyUsage purpose is not an OID")?;
                    purposes = after;
                    if purpose == ekattest_protocol::sign::SIGNER_EKU_OID_DER {
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
fn sans<'a>(value: &'a [u8], found: &mut Extensions<'a>) -> Result<(), X509Error> {
    let (mut names, _, _) = expect(value, 0x30, "subjectAltName is not a SEQUENCE")?;
    let mut count = 0;
    while !names.is_empty() {
        count += 1;
        if count > SAN_MAX {
            return Err(X509Error("too many subjectAltName entries"));
        }
        let (tag, contents, _, after) = tlv(names)?;
        names = after;
        if tag == 0x86 {
            let uri = core::str::from_utf8(contents)
                .map_err(|_| X509Error("URI subjectAltName is not text"))?;
            if found.uri_san.is_none() {
                found.uri_san = Some(uri);
            }
            found.uri_sans += 1;
        }
    }
    Ok(())
}

/// Reads one UTCTime or GeneralizedTime (`Z` form, as RFC 5280 requires).
fn time(input: &[u8]) -> Result<(i64, &[u8]), X509Error> {
    let (tag, contents, _, after) = tlv(input)?;
    let digits = |s: &[u8]| -> Result<i64, X509Error> {
        s.iter().try_fold(0i64, |acc, b| {
            if b.is_ascii_digit() {
                Ok(acc * 10 + i64::from(b - b'0'))
            } else {
                Err(X509Error("time has a non-digit"))
            }
        })
    };
    let (year, rest) = match (tag, contents.len()) {
        (0x17, 13) => {
            let yy = digits(&contents[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &contents[2..])
        }
        (0x18, 15) => (digits(&contents[..4])?, &contents[4..]),
        _ => return Err(X509Error("time is not UTCTime/GeneralizedTime in Z form")),
    };
    if rest.get(10) != Some(&b'Z') {
        return Err(X509Error("time does not end in Z"));
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
        return Err(X509Error("time field out of range"));
    }
    let days = days_from_civil(year, month, day);
    Ok((days * 86_400 + hour * 3600 + minute * 60 + second, after))
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
        let utc = b"\x17\x0d491231235959Z";
        assert_eq!(time(utc).unwrap().0, 2_524_607_999);
        let utc = b"\x17\x0d500101000000Z";
        assert_eq!(time(utc).unwrap().0, -631_152_000);
        let gen_time = b"\x18\x0f20380119031408Z";
        assert_eq!(time(gen_time).unwrap().0, 2_147_483_648);
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
