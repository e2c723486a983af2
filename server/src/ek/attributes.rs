//! The `tpm_ek` attributes (seed: "Attributes available for SVID issuance") and their
//! rendering rules.
//!
//! - `public_hash`: lowercase hex SHA-256 of the canonical DER SubjectPublicKeyInfo (the seed's
//!   openssl pipeline), always present.
//! - `serial_number`: lowercase hex of the certificate serial's magnitude (the DER INTEGER
//!   without its leading 00 sign byte), as openssl prints it without colons.
//! - `manufacturer`, `model`: the SAN values verbatim (`id:53544D20`, `ST33HTPHAHB4`).
//! - `version`: one rule for every value of the form `id:` + hex digits (TCG EK Credential
//!   Profile 2.x, the SAN's tpmVersion attribute 2.23.133.2.3: `id:` and the hex of the
//!   firmware version, TPM_PT_FIRMWARE_VERSION_1, whose upper half is the major and lower
//!   half the minor version). The prefix and the digits are
//!   read in either case:
//!   - 4, 8, 12 or 16 digits (an even number of bytes) render as `major.minor`, the decimal
//!     values of the first and second half: the seed's `id:00070040` is `7.64`, STMicro's
//!     `id:00490004` is `73.4`, the 2-byte `id:073F` (one byte per half, as some vendors
//!     write it) is `7.63`, and `id:073f` is `7.63` too;
//!   - any other number of digits (1 to 16) cannot be split into two whole-byte halves and
//!     renders as `id:` + the digits in upper case (`id:7a3` is `id:7A3`), so the attribute,
//!     and a SPIFFE path built from it, never depends on letter case;
//!   - anything else (no `id:` prefix, a non-hex character, more than 16 digits) is kept
//!     verbatim.
//!
//!   The rule never guesses: swtpm's `id:20191023` renders as `8217.4131` (0x2019.0x1023)
//!   although swtpm meant a date, because a heuristic would make a real firmware
//!   0x2019.0x1023 render differently from what it is.
//!
//! Values are only rendered here; this module never decides whether they are trustworthy.

/// The `tpm_ek` attributes of a validated EK, in the seed's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Lowercase hex SHA-256 of the EK's DER SubjectPublicKeyInfo. Always present.
    pub public_hash: String,
    /// Lowercase hex certificate serial; only with an EK certificate.
    pub serial_number: Option<String>,
    /// `id:XXXXXXXX` as written in the certificate; only with TPM identity fields.
    pub manufacturer: Option<String>,
    /// TPM model as written; only with TPM identity fields.
    pub model: Option<String>,
    /// Firmware version, `major.minor` (see the module docs); only with TPM identity fields.
    pub version: Option<String>,
}

impl Attributes {
    /// Looks an attribute up by name, with or without the `tpm_ek.` prefix.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = name.strip_prefix("tpm_ek.").unwrap_or(name);
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The present attributes in the seed's order: public_hash, serial_number, manufacturer,
    /// model, version.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("public_hash", Some(self.public_hash.as_str())),
            ("serial_number", self.serial_number.as_deref()),
            ("manufacturer", self.manufacturer.as_deref()),
            ("model", self.model.as_deref()),
            ("version", self.version.as_deref()),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
    }
}

/// Lowercase hex of a DER INTEGER's content without leading zero bytes (one byte is kept
/// for a zero serial).
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(start..).unwrap_or_default())
}

/// Renders a TCG tpmVersion value (see the module docs for the rule): `id:` + 4, 8, 12 or 16
/// hex digits as `major.minor` (decimal halves), other `id:` + hex values as `id:` + upper
/// case digits, anything else verbatim. Case-insensitive, so the result never depends on the
/// letter case the certificate used.
pub fn render_version(value: &str) -> String {
    /// Most hex digits read (two 32-bit halves).
    const DIGITS_MAX: usize = 16;
    let digits = value
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("id:"))
        .and_then(|_| value.get(3..))
        .filter(|h| {
            (1..=DIGITS_MAX).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit())
        });
    let Some(digits) = digits else {
        return value.to_owned();
    };
    if digits.len() % 4 == 0 {
        let (major, minor) = digits.split_at(digits.len() / 2);
        if let (Ok(major), Ok(minor)) = (
            u64::from_str_radix(major, 16),
            u64::from_str_radix(minor, 16),
        ) {
            return format!("{major}.{minor}");
        }
    }
    format!("id:{}", digits.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule_matches_the_seed_and_tcg() {
        assert_eq!(render_version("id:00070040"), "7.64");
        assert_eq!(render_version("id:00490004"), "73.4");
        assert_eq!(render_version("id:20191023"), "8217.4131");
        assert_eq!(render_version("id:0007004g"), "id:0007004g");
        assert_eq!(render_version("7.2.1"), "7.2.1");
        assert_eq!(render_version("id:+0070040"), "id:+0070040");
        assert_eq!(render_version("id:"), "id:");
        assert_eq!(render_version(""), "");
        assert_eq!(render_version("é"), "é");
    }

    #[test]
    fn every_length_of_hex_id_follows_one_rule() {
        // Two whole-byte halves: major.minor in decimal, whatever the length.
        assert_eq!(render_version("id:073F"), "7.63");
        assert_eq!(render_version("id:00070040"), "7.64");
        assert_eq!(render_version("id:000102000304"), "258.772");
        assert_eq!(render_version("id:0000000700000040"), "7.64");
        assert_eq!(
            render_version("id:FFFFFFFFFFFFFFFF"),
            "4294967295.4294967295"
        );
        // No whole-byte halves: canonical id: + upper-case digits.
        assert_eq!(render_version("id:0007004"), "id:0007004");
        assert_eq!(render_version("id:7a3"), "id:7A3");
        assert_eq!(render_version("id:0a"), "id:0A");
        assert_eq!(render_version("id:0a0b0c"), "id:0A0B0C");
        // Longer than two 32-bit halves: verbatim.
        let long = "id:00000007000000400";
        assert_eq!(render_version(long), long);
    }

    #[test]
    fn version_rendering_ignores_letter_case() {
        for (a, b) in [
            ("id:073F", "id:073f"),
            ("id:073F", "ID:073F"),
            ("id:00a0000b", "Id:00A0000B"),
            ("id:7a3", "iD:7A3"),
        ] {
            assert_eq!(render_version(a), render_version(b), "{a} vs {b}");
        }
        assert_eq!(render_version("ID:00070040"), "7.64");
        // Rendered values hold digits, dots, upper-case hex and the `id:` prefix only (the
        // SPIFFE template maps the ':' to '_').
        for v in ["id:073f", "id:7a3", "id:00070040"] {
            let r = render_version(v);
            assert!(
                r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b':'),
                "{r}"
            );
        }
    }

    #[test]
    fn serial_drops_the_sign_byte_only() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x4c, 0x00]), "4c00");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
    }

    #[test]
    fn iter_keeps_seed_order_and_skips_absent() {
        let a = Attributes {
            public_hash: "ab".into(),
            manufacturer: Some("id:1".into()),
            version: Some("1.2".into()),
            ..Attributes::default()
        };
        let names: Vec<_> = a.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["public_hash", "manufacturer", "version"]);
        assert_eq!(a.get("tpm_ek.manufacturer"), Some("id:1"));
        assert_eq!(a.get("model"), None);
    }
}
