//! TPM 2.0 response codes, decoded to the spec's names for operators.
//!
//! TPM 2.0 Part 2, section 6.6 (TPM_RC): format-zero codes (`TPM_RC_VER1 + n` errors,
//! `TPM_RC_WARN + n` warnings, vendor codes, TPM 1.2 codes) and format-one codes
//! (`TPM_RC_FMT1 + n` with a parameter, handle or session number). Decoding never fails: an
//! unknown code prints as hex, so a chip newer than this table is still diagnosable.

use std::fmt;

/// `TPM_RC_RETRY`: the TPM was busy (first use of a DA-protected object); resend.
pub const RETRY: u32 = 0x922;
/// `TPM_RC_YIELDED`: the TPM yielded a long operation; resend.
pub const YIELDED: u32 = 0x908;
/// `TPM_RC_TESTING`: the TPM is self-testing; resend later.
pub const TESTING: u32 = 0x90A;
/// `TPM_RC_INITIALIZE`: Startup has already been done (success for our Startup).
pub const INITIALIZE: u32 = 0x100;
/// `TPM_RC_FAILURE`: the TPM is in failure mode.
pub const FAILURE: u32 = 0x101;

const FMT1: u32 = 0x080;
const VER1: u32 = 0x100;
const WARN_BIT: u32 = 0x800;
const VENDOR_BIT: u32 = 0x400;

/// A raw TPM response code with a `Display` that names it, e.g. `TPM_RC_INTEGRITY (0x1df)
/// on parameter 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

impl ResponseCode {
    /// Whether resending the same command may succeed (RETRY, YIELDED, TESTING).
    #[must_use]
    pub fn is_retry(self) -> bool {
        matches!(self.0, RETRY | YIELDED | TESTING)
    }

    /// The spec name of the base code (without parameter/handle/session number), if known.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        let rc = self.0;
        if rc == 0 {
            return Some("TPM_RC_SUCCESS");
        }
        if rc > 0xfff {
            return None;
        }
        if rc & FMT1 != 0 {
            return fmt1_name(rc & 0x3f);
        }
        if rc & VER1 == 0 || rc & VENDOR_BIT != 0 {
            return None;
        }
        if rc & WARN_BIT != 0 {
            warn_name(rc & 0x7f)
        } else {
            ver1_name(rc & 0x7f)
        }
    }

    /// Where a format-one code points: `(kind, number)` with kind "parameter", "handle" or
    /// "session".
    #[must_use]
    pub fn location(self) -> Option<(&'static str, u32)> {
        let rc = self.0;
        if rc & FMT1 == 0 || rc > 0xfff {
            return None;
        }
        let n = (rc >> 8) & 0xf;
        if rc & 0x40 != 0 {
            Some(("parameter", n))
        } else if n & 0x8 != 0 {
            Some(("session", n & 0x7))
        } else if n != 0 {
            Some(("handle", n))
        } else {
            None
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rc = self.0;
        match self.name() {
            Some(name) => write!(f, "{name} ({rc:#x})")?,
            None if rc > 0xfff => write!(f, "unknown response code ({rc:#x})")?,
            None if rc & FMT1 == 0 && rc & VER1 == 0 && rc != 0 => {
                write!(f, "TPM 1.2 response code ({rc:#x})")?;
            }
            None if rc & FMT1 == 0 && rc & VENDOR_BIT != 0 => {
                write!(f, "vendor-specific response code ({rc:#x})")?;
            }
            None => write!(f, "unknown response code ({rc:#x})")?,
        }
        if let Some((kind, n)) = self.location() {
            write!(f, " on {kind} {n}")?;
        }
        Ok(())
    }
}

fn ver1_name(n: u32) -> Option<&'static str> {
    Some(match n {
        0x000 => "TPM_RC_INITIALIZE",
        0x001 => "TPM_RC_FAILURE",
        0x003 => "TPM_RC_SEQUENCE",
        0x00B => "TPM_RC_PRIVATE",
        0x019 => "TPM_RC_HMAC",
        0x020 => "TPM_RC_DISABLED",
        0x021 => "TPM_RC_EXCLUSIVE",
        0x024 => "TPM_RC_AUTH_TYPE",
        0x025 => "TPM_RC_AUTH_MISSING",
        0x026 => "TPM_RC_POLICY",
        0x027 => "TPM_RC_PCR",
        0x028 => "TPM_RC_PCR_CHANGED",
        0x02D => "TPM_RC_UPGRADE",
        0x02E => "TPM_RC_TOO_MANY_CONTEXTS",
        0x02F => "TPM_RC_AUTH_UNAVAILABLE",
        0x030 => "TPM_RC_REBOOT",
        0x031 => "TPM_RC_UNBALANCED",
        0x042 => "TPM_RC_COMMAND_SIZE",
        0x043 => "TPM_RC_COMMAND_CODE",
        0x044 => "TPM_RC_AUTHSIZE",
        0x045 => "TPM_RC_AUTH_CONTEXT",
        0x046 => "TPM_RC_NV_RANGE",
        0x047 => "TPM_RC_NV_SIZE",
        0x048 => "TPM_RC_NV_LOCKED",
        0x049 => "TPM_RC_NV_AUTHORIZATION",
        0x04A => "TPM_RC_NV_UNINITIALIZED",
        0x04B => "TPM_RC_NV_SPACE",
        0x04C => "TPM_RC_NV_DEFINED",
        0x050 => "TPM_RC_BAD_CONTEXT",
        0x051 => "TPM_RC_CPHASH",
        0x052 => "TPM_RC_PARENT",
        0x053 => "TPM_RC_NEEDS_TEST",
        0x054 => "TPM_RC_NO_RESULT",
        0x055 => "TPM_RC_SENSITIVE",
        _ => return None,
    })
}

fn fmt1_name(n: u32) -> Option<&'static str> {
    Some(match n {
        0x001 => "TPM_RC_ASYMMETRIC",
        0x002 => "TPM_RC_ATTRIBUTES",
        0x003 => "TPM_RC_HASH",
        0x004 => "TPM_RC_VALUE",
        0x005 => "TPM_RC_HIERARCHY",
        0x007 => "TPM_RC_KEY_SIZE",
        0x008 => "TPM_RC_MGF",
        0x009 => "TPM_RC_MODE",
        0x00A => "TPM_RC_TYPE",
        0x00B => "TPM_RC_HANDLE",
        0x00C => "TPM_RC_KDF",
        0x00D => "TPM_RC_RANGE",
        0x00E => "TPM_RC_AUTH_FAIL",
        0x00F => "TPM_RC_NONCE",
        0x010 => "TPM_RC_PP",
        0x012 => "TPM_RC_SCHEME",
        0x015 => "TPM_RC_SIZE",
        0x016 => "TPM_RC_SYMMETRIC",
        0x017 => "TPM_RC_TAG",
        0x018 => "TPM_RC_SELECTOR",
        0x01A => "TPM_RC_INSUFFICIENT",
        0x01B => "TPM_RC_SIGNATURE",
        0x01C => "TPM_RC_KEY",
        0x01D => "TPM_RC_POLICY_FAIL",
        0x01F => "TPM_RC_INTEGRITY",
        0x020 => "TPM_RC_TICKET",
        0x021 => "TPM_RC_RESERVED_BITS",
        0x022 => "TPM_RC_BAD_AUTH",
        0x023 => "TPM_RC_EXPIRED",
        0x024 => "TPM_RC_POLICY_CC",
        0x025 => "TPM_RC_BINDING",
        0x026 => "TPM_RC_CURVE",
        0x027 => "TPM_RC_ECC_POINT",
        0x028 => "TPM_RC_FW_LIMITED",
        0x029 => "TPM_RC_SVN_LIMITED",
        _ => return None,
    })
}

fn warn_name(n: u32) -> Option<&'static str> {
    Some(match n {
        0x001 => "TPM_RC_CONTEXT_GAP",
        0x002 => "TPM_RC_OBJECT_MEMORY",
        0x003 => "TPM_RC_SESSION_MEMORY",
        0x004 => "TPM_RC_MEMORY",
        0x005 => "TPM_RC_SESSION_HANDLES",
        0x006 => "TPM_RC_OBJECT_HANDLES",
        0x007 => "TPM_RC_LOCALITY",
        0x008 => "TPM_RC_YIELDED",
        0x009 => "TPM_RC_CANCELED",
        0x00A => "TPM_RC_TESTING",
        0x010 => "TPM_RC_REFERENCE_H0",
        0x011 => "TPM_RC_REFERENCE_H1",
        0x012 => "TPM_RC_REFERENCE_H2",
        0x013 => "TPM_RC_REFERENCE_H3",
        0x014 => "TPM_RC_REFERENCE_H4",
        0x015 => "TPM_RC_REFERENCE_H5",
        0x016 => "TPM_RC_REFERENCE_H6",
        0x018 => "TPM_RC_REFERENCE_S0",
        0x019 => "TPM_RC_REFERENCE_S1",
        0x01A => "TPM_RC_REFERENCE_S2",
        0x01B => "TPM_RC_REFERENCE_S3",
        0x01C => "TPM_RC_REFERENCE_S4",
        0x01D => "TPM_RC_REFERENCE_S5",
        0x01E => "TPM_RC_REFERENCE_S6",
        0x020 => "TPM_RC_NV_RATE",
        0x021 => "TPM_RC_LOCKOUT",
        0x022 => "TPM_RC_RETRY",
        0x023 => "TPM_RC_NV_UNAVAILABLE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(rc: u32) -> String {
        ResponseCode(rc).to_string()
    }

    #[test]
    fn format_one_codes_carry_their_location() {
        assert_eq!(show(0x1df), "TPM_RC_INTEGRITY (0x1df) on parameter 1");
        assert_eq!(show(0xa9d), "TPM_RC_POLICY_FAIL (0xa9d) on session 2");
        assert_eq!(show(0x18b), "TPM_RC_HANDLE (0x18b) on handle 1");
        assert_eq!(show(0x9a2), "TPM_RC_BAD_AUTH (0x9a2) on session 1");
        assert_eq!(show(0x2c4), "TPM_RC_VALUE (0x2c4) on parameter 2");
    }

    #[test]
    fn format_zero_codes_and_warnings() {
        assert_eq!(show(0x12f), "TPM_RC_AUTH_UNAVAILABLE (0x12f)");
        assert_eq!(show(0x101), "TPM_RC_FAILURE (0x101)");
        assert_eq!(show(0x100), "TPM_RC_INITIALIZE (0x100)");
        assert_eq!(show(0x902), "TPM_RC_OBJECT_MEMORY (0x902)");
        assert_eq!(show(0x922), "TPM_RC_RETRY (0x922)");
        assert_eq!(show(0), "TPM_RC_SUCCESS (0x0)");
    }

    #[test]
    fn unknown_codes_print_hex_and_never_fail() {
        assert_eq!(show(0x17e), "unknown response code (0x17e)");
        assert_eq!(show(0x0000_001e), "TPM 1.2 response code (0x1e)");
        assert_eq!(show(0x0000_0500), "vendor-specific response code (0x500)");
        assert_eq!(show(0xdead_beef), "unknown response code (0xdeadbeef)");
        assert_eq!(show(0x0001_0100), "unknown response code (0x10100)");
        for rc in (0..0x1000u32).chain([u32::MAX, 0xffff_ff7f]) {
            let _ = show(rc); // every value formats
        }
    }

    #[test]
    fn retryable_set() {
        assert!(ResponseCode(RETRY).is_retry());
        assert!(ResponseCode(YIELDED).is_retry());
        assert!(ResponseCode(TESTING).is_retry());
        assert!(!ResponseCode(FAILURE).is_retry());
    }
}
