//! Bounded DER (X.690 Distinguished Encoding Rules): one reader, one writer, and the NV blob
//! trimming of EK certificates ([`nv`]).
//!
//! Every piece of the workspace that looks at DER tag and length bytes goes through this
//! module: the SubjectPublicKeyInfo codec ([`crate::spki`]), the agent's certificate walkers
//! and its `TSS2 PRIVATE KEY` writer, and the server's ECDSA and extension encoders. Whole
//! certificates are still parsed by x509-parser on the server; this module is for the fixed
//! paths through DER that the code walks itself.
//!
//! - [`Reader`] reads one TLV after another from a slice: single-byte tags (the high tag
//!   number form is refused), definite lengths of at most four length bytes (the indefinite
//!   form is refused; non-minimal length encodings, which some TPM vendors' certificates
//!   carry, are accepted), and nested readers at most [`DEPTH_MAX`] levels deep. It never
//!   reads past its slice, never panics, never allocates, and every error carries the
//!   offset from the start of the outermost input.
//! - [`Writer`] writes definite-length DER into a caller's buffer: primitives, and
//!   constructed values (SEQUENCE, SET, context tags, a BIT STRING wrapping DER) whose
//!   length is filled in when their contents are complete.

use core::fmt;

pub mod nv;
mod reader;
mod writer;

pub use reader::{Header, Reader, Tlv};
pub use writer::{WriteError, Writer};

/// Deepest nesting a [`Reader`] opens ([`Tlv::reader`] of a reader this many levels down
/// fails with [`ErrorKind::TooDeep`]). X.509 certificates need about 8.
pub const DEPTH_MAX: u8 = 16;

/// Most length octets accepted after the `0x8N` long-form byte (lengths up to 4 GiB - 1).
pub const LENGTH_BYTES_MAX: usize = 4;

/// Universal and context-specific tag bytes.
pub mod tag {
    /// BOOLEAN.
    pub const BOOLEAN: u8 = 0x01;
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// UTF8String.
    pub const UTF8_STRING: u8 = 0x0c;
    /// PrintableString.
    pub const PRINTABLE_STRING: u8 = 0x13;
    /// TeletexString (T61String).
    pub const TELETEX_STRING: u8 = 0x14;
    /// IA5String.
    pub const IA5_STRING: u8 = 0x16;
    /// UTCTime.
    pub const UTC_TIME: u8 = 0x17;
    /// GeneralizedTime.
    pub const GENERALIZED_TIME: u8 = 0x18;
    /// VisibleString.
    pub const VISIBLE_STRING: u8 = 0x1a;
    /// SEQUENCE and SEQUENCE OF (constructed).
    pub const SEQUENCE: u8 = 0x30;
    /// SET and SET OF (constructed).
    pub const SET: u8 = 0x31;

    /// The constructed context-specific tag `[n]` (`0xA0 | n`), as EXPLICIT tagging uses.
    #[must_use]
    pub const fn context(n: u8) -> u8 {
        0xa0 | (n & 0x1f)
    }

    /// The primitive context-specific tag `[n]` (`0x80 | n`), as IMPLICIT tagging of a
    /// primitive type uses (a GeneralName's `uniformResourceIdentifier` is `[6]`, 0x86).
    #[must_use]
    pub const fn context_primitive(n: u8) -> u8 {
        0x80 | (n & 0x1f)
    }

    /// Whether `tag` has the constructed bit (0x20).
    #[must_use]
    pub const fn is_constructed(tag: u8) -> bool {
        tag & 0x20 != 0
    }
}

/// Why DER could not be read: what went wrong and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Offset of the TLV at fault from the start of the outermost input.
    pub offset: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with DER input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended inside a TLV.
    Truncated {
        /// Bytes the TLV needs from its start (header, or header and contents).
        needed: usize,
        /// Bytes present from its start.
        available: usize,
    },
    /// A tag in the high tag number form (`xx011111`), never used by the structures read.
    HighTagNumber {
        /// The tag byte.
        tag: u8,
    },
    /// The indefinite length form (`0x80`), which DER forbids.
    IndefiniteLength,
    /// A long-form length of more than [`LENGTH_BYTES_MAX`] bytes (`0x85` and up).
    LengthTooLong {
        /// The number of length bytes declared.
        bytes: usize,
    },
    /// Header and contents together exceed `usize`.
    LengthOverflow,
    /// A different tag than the structure requires.
    UnexpectedTag {
        /// The tag required.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// Nested deeper than [`DEPTH_MAX`].
    TooDeep,
    /// Bytes follow the last TLV of a structure.
    Trailing {
        /// How many.
        bytes: usize,
    },
    /// A BIT STRING that is empty or has unused bits where whole bytes are required.
    UnusedBits,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, available } => write!(
                f,
                "truncated: the TLV needs {needed} bytes but only {available} are present"
            ),
            Self::HighTagNumber { tag } => {
                write!(f, "tag 0x{tag:02x} uses the high tag number form")
            }
            Self::IndefiniteLength => f.write_str("indefinite length (not DER)"),
            Self::LengthTooLong { bytes } => write!(
                f,
                "length of {bytes} bytes (at most {LENGTH_BYTES_MAX} are accepted)"
            ),
            Self::LengthOverflow => f.write_str("length overflows"),
            Self::UnexpectedTag { expected, found } => {
                write!(f, "tag 0x{found:02x} where 0x{expected:02x} is required")
            }
            Self::TooDeep => write!(f, "nested deeper than {DEPTH_MAX} levels"),
            Self::Trailing { bytes } => write!(f, "{bytes} trailing bytes after the last TLV"),
            Self::UnusedBits => f.write_str("BIT STRING is empty or has unused bits"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DER at offset {}: {}", self.offset, self.kind)
    }
}

impl core::error::Error for Error {}

/// `bytes` without leading zero bytes (an unsigned big-endian magnitude, minimal).
#[must_use]
pub fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Bytes a length field takes for a content length of `len`.
#[must_use]
pub const fn length_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        let mut n = 1;
        let mut rest = len;
        while rest > 0 {
            n += 1;
            rest >>= 8;
        }
        n
    }
}

/// Bytes a single-byte-tag TLV takes with `len` bytes of contents (saturating).
#[must_use]
pub const fn tlv_len(len: usize) -> usize {
    len.saturating_add(1 + length_len(len))
}

#[cfg(test)]
mod tests;
