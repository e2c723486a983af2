//! The `tpm_ek` attributes (seed: "Attributes available for SVID issuance") and their
//! rendering rules.
//!
//! - `public_hash`: lowercase hex SHA-256 of the canonical DER SubjectPublicKeyInfo (the seed's
//!   openssl pipeline), always present.
//! - `serial_number`: lowercase hex of the certificate serial's magnitude (the DER INTEGER
//!   without its leading 00 sign byte), as openssl prints it without colons.
//! - `manufacturer`, `model`: the SAN values verbatim (`id:53544D20`, `ST33HTPHAHB4`).
//! - `version`: TCG encodes the firmware version as `id:` and 8 hex digits, the upper 16 bits
//!   being the major and the lower 16 bits the minor version (TPM_PT_FIRMWARE_VERSION_1), so
//!   the seed's `id:00070040` is `7.64`. The rule is applied to every value of that shape,
//!   without guessing: swtpm's `id:20191023` renders as `8217.4131` (0x2019.0x1023) although
//!   swtpm meant a date, because a heuristic would make a real firmware 0x2019.0x1023 render
//!   differently from what it is. Any other value is kept verbatim.
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

/// Renders a TCG tpmVersion value: `id:XXXXYYYY` (hex) as `major.minor` (decimal); anything
/// else verbatim.
pub fn render_version(value: &str) -> String {
    let parsed = value
        .strip_prefix("id:")
        .filter(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| u32::from_str_radix(h, 16).ok());
    match parsed {
        Some(v) => format!("{}.{}", v >> 16, v & 0xffff),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule_matches_the_seed_and_tcg() {
        assert_eq!(render_version("id:00070040"), "7.64");
        assert_eq!(render_version("id:00490004"), "73.4");
        assert_eq!(render_version("id:20191023"), "8217.4131");
        assert_eq!(render_version("id:0007004"), "id:0007004");
        assert_eq!(render_version("id:0007004g"), "id:0007004g");
        assert_eq!(render_version("7.2.1"), "7.2.1");
        assert_eq!(render_version("ID:00070040"), "ID:00070040");
        assert_eq!(render_version("id:+0070040"), "id:+0070040");
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
