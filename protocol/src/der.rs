//! Finding DER objects in TPM NV blobs.
//!
//! EK certificates are stored in NV indices whose size is fixed at manufacturing, so the
//! certificate is often followed by padding (STMicro pads with `0xFF`), and some TPMs wrap it
//! in the PC Client header `10 01 00 <u16 length>` (TCG PC Client Platform Firmware Profile,
//! "EK Credential" NV data). The chain range 0x01C00100..=0x01C001FF holds concatenated DER
//! certificates. This module only finds object boundaries; it never interprets the contents
//! and never reads past the slice it is given.

use core::fmt;

/// The PC Client NV wrapper tag in front of some EK certificates.
const WRAPPER_TAG: [u8; 3] = [0x10, 0x01, 0x00];

/// Largest DER length this module accepts (longer objects are not certificates).
pub const OBJECT_MAX: usize = 64 * 1024;

/// Why no DER object could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerError {
    /// The blob is empty, or holds only padding.
    Empty,
    /// The first byte is not a SEQUENCE (0x30) tag.
    NotSequence {
        /// Offset of the offending byte.
        offset: usize,
        /// The byte found there.
        found: u8,
    },
    /// The length field is malformed (indefinite, or more than four length bytes).
    BadLength {
        /// Offset of the length field.
        offset: usize,
    },
    /// The declared length runs past the end of the blob.
    Truncated {
        /// Bytes the object declares (header included).
        needed: usize,
        /// Bytes available from its start.
        available: usize,
    },
    /// The declared length exceeds [`OBJECT_MAX`].
    TooLong {
        /// Declared object length.
        len: usize,
    },
    /// The PC Client wrapper's length disagrees with the DER object inside it.
    WrapperMismatch {
        /// Length in the wrapper.
        wrapper: usize,
        /// Length of the DER object.
        der: usize,
    },
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no DER object: the blob is empty or only padding"),
            Self::NotSequence { offset, found } => {
                write!(
                    f,
                    "no DER SEQUENCE at offset {offset}: found byte 0x{found:02x}"
                )
            }
            Self::BadLength { offset } => {
                write!(f, "malformed DER length at offset {offset}")
            }
            Self::Truncated { needed, available } => write!(
                f,
                "DER object declares {needed} bytes but only {available} are present"
            ),
            Self::TooLong { len } => {
                write!(
                    f,
                    "DER object of {len} bytes exceeds the {OBJECT_MAX}-byte limit"
                )
            }
            Self::WrapperMismatch { wrapper, der } => write!(
                f,
                "PC Client NV wrapper says {wrapper} bytes but the DER object is {der} bytes"
            ),
        }
    }
}

impl core::error::Error for DerError {}

/// Returns the total length (header included) of the DER object starting at `blob[0]`.
fn object_len(blob: &[u8], base: usize) -> Result<usize, DerError> {
    match blob.first() {
        None => return Err(DerError::Empty),
        Some(0x30) => {}
        Some(&found) => {
            return Err(DerError::NotSequence {
                offset: base,
                found,
            });
        }
    }
    let first = *blob.get(1).ok_or(DerError::Truncated {
        needed: 2,
        available: blob.len(),
    })?;
    let (header, body) = if first < 0x80 {
        (2usize, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(DerError::BadLength { offset: base + 1 });
        }
        let bytes = blob.get(2..2 + n).ok_or(DerError::Truncated {
            needed: 2 + n,
            available: blob.len(),
        })?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + n, len)
    };
    let total = header.saturating_add(body);
    if total > OBJECT_MAX {
        return Err(DerError::TooLong { len: total });
    }
    if total > blob.len() {
        return Err(DerError::Truncated {
            needed: total,
            available: blob.len(),
        });
    }
    Ok(total)
}

/// Trims an NV blob to its first DER object.
///
/// Accepts a bare DER object followed by anything (`0xFF`/`0x00` padding, as STMicro writes),
/// or the PC Client wrapper `10 01 00 <u16 len>` followed by the DER object.
///
/// # Errors
/// [`DerError`] if the blob holds no complete DER SEQUENCE at its start.
pub fn first_object(blob: &[u8]) -> Result<&[u8], DerError> {
    if blob.iter().all(|&b| b == 0xFF || b == 0x00) {
        return Err(DerError::Empty);
    }
    if blob.len() >= 5 && blob[..3] == WRAPPER_TAG {
        let wrapper = usize::from(u16::from_be_bytes([blob[3], blob[4]]));
        let inner = &blob[5..];
        let len = object_len(inner, 5)?;
        if wrapper != len {
            return Err(DerError::WrapperMismatch { wrapper, der: len });
        }
        return Ok(&inner[..len]);
    }
    let len = object_len(blob, 0)?;
    Ok(&blob[..len])
}

/// Iterator over concatenated DER objects; see [`objects`].
#[derive(Debug, Clone)]
pub struct Objects<'a> {
    rest: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Objects<'a> {
    type Item = Result<&'a [u8], DerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Padding (0xFF erased flash, or zeros) ends the list.
        if self.rest.first().is_none_or(|&b| b == 0xFF || b == 0x00) {
            self.done = true;
            return None;
        }
        match object_len(self.rest, self.offset) {
            Ok(len) => {
                let (obj, rest) = self.rest.split_at(len);
                self.rest = rest;
                self.offset += len;
                Some(Ok(obj))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Splits concatenated DER objects (the EK chain NV range), stopping at padding.
///
/// Yields an error once, then stops, if a malformed object is found.
pub fn objects(blob: &[u8]) -> Objects<'_> {
    Objects {
        rest: blob,
        offset: 0,
        done: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: [u8; 6] = [0x30, 0x04, 0x02, 0x02, 0x01, 0x02];

    #[test]
    fn trims_padding() {
        let mut blob = [0xFFu8; 32];
        blob[..6].copy_from_slice(&CERT);
        assert_eq!(first_object(&blob), Ok(&CERT[..]));
    }

    #[test]
    fn unwraps_pc_client_header() {
        let mut blob = [0u8; 16];
        blob[..5].copy_from_slice(&[0x10, 0x01, 0x00, 0x00, 0x06]);
        blob[5..11].copy_from_slice(&CERT);
        assert_eq!(first_object(&blob), Ok(&CERT[..]));
        blob[4] = 7;
        assert_eq!(
            first_object(&blob),
            Err(DerError::WrapperMismatch { wrapper: 7, der: 6 })
        );
    }

    #[test]
    fn long_form_length() {
        let mut blob = [0u8; 300];
        blob[..4].copy_from_slice(&[0x30, 0x82, 0x01, 0x00]);
        assert_eq!(first_object(&blob).map(<[u8]>::len), Ok(260));
        assert_eq!(
            first_object(&blob[..200]),
            Err(DerError::Truncated {
                needed: 260,
                available: 200
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(first_object(&[]), Err(DerError::Empty));
        assert_eq!(first_object(&[0xFF; 8]), Err(DerError::Empty));
        assert_eq!(
            first_object(&[0x31, 0]),
            Err(DerError::NotSequence {
                offset: 0,
                found: 0x31
            })
        );
        assert_eq!(
            first_object(&[0x30, 0x80, 0, 0]),
            Err(DerError::BadLength { offset: 1 })
        );
        assert_eq!(
            first_object(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(DerError::BadLength { offset: 1 })
        );
        assert_eq!(
            first_object(&[0x30, 0x84, 0x10, 0, 0, 0]),
            Err(DerError::TooLong { len: 0x1000_0006 })
        );
        assert!(matches!(
            first_object(&[0x30]),
            Err(DerError::Truncated { .. })
        ));
    }

    #[test]
    fn splits_chain_until_padding() {
        let mut blob = [0xFFu8; 20];
        blob[..6].copy_from_slice(&CERT);
        blob[6..12].copy_from_slice(&CERT);
        let mut it = objects(&blob);
        assert_eq!(it.next(), Some(Ok(&CERT[..])));
        assert_eq!(it.next(), Some(Ok(&CERT[..])));
        assert_eq!(it.next(), None);
        let bad = [0x30, 0x04, 0x02, 0x02, 0x01, 0x02, 0x30, 0x09, 0x00];
        let mut it = objects(&bad);
        assert_eq!(it.next(), Some(Ok(&CERT[..])));
        assert!(matches!(it.next(), Some(Err(DerError::Truncated { .. }))));
        assert_eq!(it.next(), None);
    }
}
