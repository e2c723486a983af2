//! Finding DER objects in TPM NV blobs (headers read with [`super::Header`]).
//!
//! EK certificates are stored in NV indices whose size is fixed at manufacturing, so the
//! certificate is often followed by padding (STMicro pads with `0xFF`), and some TPMs wrap it
//! in the TCG PC Client stored-certificate header (the `TCG_PCCLIENT_STORED_CERT` and
//! `TCG_FULL_CERT` structures of the TCG PC Client Specific Implementation Specification for
//! Conventional BIOS, where platforms keep the EK credential in NV), in one of two forms:
//!
//! - 5 bytes, `10 01 | 00 | LLLL | DER`: tag `TCG_TAG_PCCLIENT_STORED_CERT`, certType 0
//!   (full certificate), LLLL = the DER length (what some TPM 2.0 provisioning tools write);
//! - 7 bytes, `10 01 | 00 | LLLL | 10 02 | DER`: the same header followed by the
//!   `TCG_FULL_CERT` tag `TCG_TAG_PCCLIENT_FULL_CERT`, LLLL = the DER length + 2 (the tag is
//!   counted). This is the specification's layout, kept by many vendors and NV dump tools.
//!
//! Both are recognised by [`first_object`], the one trimming function the agent's NV reader
//! and `ekattestctl` share; a header whose length disagrees with the DER object behind it is
//! [`NvError::WrapperMismatch`]. The chain range 0x01C00100..=0x01C001FF holds concatenated
//! DER certificates. This module only finds object boundaries; it never interprets the
//! contents and never reads past the slice it is given.

use core::fmt;

use super::{ErrorKind, Header, tag};

/// `TCG_TAG_PCCLIENT_STORED_CERT` (0x1001) and certType 0 (full certificate): the start of
/// the PC Client stored-certificate header in front of some EK certificates.
const WRAPPER_TAG: [u8; 3] = [0x10, 0x01, 0x00];
/// `TCG_TAG_PCCLIENT_FULL_CERT` (0x1002): the 7-byte form's tag between header and DER.
const FULL_CERT_TAG: [u8; 2] = [0x10, 0x02];
/// Length of the short header form `10 01 00 LLLL`.
pub const WRAPPER_SHORT: usize = 5;
/// Length of the full header form `10 01 00 LLLL 10 02`.
pub const WRAPPER_FULL: usize = 7;

/// Largest DER length this module accepts (longer objects are not certificates).
pub const OBJECT_MAX: usize = 64 * 1024;

/// Why no DER object could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvError {
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
    /// The PC Client header's length field disagrees with the DER object behind it.
    WrapperMismatch {
        /// Header form: [`WRAPPER_SHORT`] (LLLL counts the DER) or [`WRAPPER_FULL`] (LLLL
        /// counts the `10 02` tag and the DER).
        header: usize,
        /// The header's length field LLLL.
        wrapper: usize,
        /// Length of the DER object behind the header.
        der: usize,
    },
}

impl fmt::Display for NvError {
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
            Self::WrapperMismatch {
                header: WRAPPER_FULL,
                wrapper,
                der,
            } => write!(
                f,
                "PC Client NV header `10 01 00 LLLL 10 02` says LLLL = {wrapper} bytes, but the \
                 `10 02` tag and the {der}-byte DER certificate behind it are {} bytes: the NV \
                 data is inconsistent (truncated or badly provisioned); read the index again, \
                 or send the certificate without the header",
                der.saturating_add(2)
            ),
            Self::WrapperMismatch {
                header: _,
                wrapper,
                der,
            } => write!(
                f,
                "PC Client NV header `10 01 00 LLLL` says LLLL = {wrapper} bytes, but the DER \
                 certificate behind it is {der} bytes: the NV data is inconsistent (truncated \
                 or badly provisioned); read the index again, or send the certificate without \
                 the header"
            ),
        }
    }
}

impl core::error::Error for NvError {}

/// Returns the total length (header included) of the DER object starting at `blob[0]`.
fn object_len(blob: &[u8], base: usize) -> Result<usize, NvError> {
    match blob.first() {
        None => return Err(NvError::Empty),
        Some(&tag::SEQUENCE) => {}
        Some(&found) => {
            return Err(NvError::NotSequence {
                offset: base,
                found,
            });
        }
    }
    let header = Header::parse(blob).map_err(|e| match e.kind {
        ErrorKind::Truncated { needed, available } => NvError::Truncated { needed, available },
        _ => NvError::BadLength { offset: base + 1 },
    })?;
    let total = header.total().unwrap_or(usize::MAX);
    if total > OBJECT_MAX {
        return Err(NvError::TooLong { len: total });
    }
    if total > blob.len() {
        return Err(NvError::Truncated {
            needed: total,
            available: blob.len(),
        });
    }
    Ok(total)
}

/// Trims an NV blob to its first DER object.
///
/// Accepts a bare DER object followed by anything (`0xFF`/`0x00` padding, as STMicro writes),
/// or a PC Client stored-certificate header in front of it (see the module docs): the 5-byte
/// `10 01 00 LLLL` with LLLL = DER length, or the 7-byte `10 01 00 LLLL 10 02` with LLLL =
/// DER length + 2. Whatever follows the object (padding) is ignored in every form.
///
/// # Errors
/// [`NvError`] if the blob holds no complete DER SEQUENCE at its start (after the header),
/// [`NvError::WrapperMismatch`] if a header's length disagrees with the object.
pub fn first_object(blob: &[u8]) -> Result<&[u8], NvError> {
    if blob.iter().all(|&b| b == 0xFF || b == 0x00) {
        return Err(NvError::Empty);
    }
    if let Some((head, rest)) = blob.split_first_chunk::<WRAPPER_SHORT>()
        && head[..3] == WRAPPER_TAG
    {
        let wrapper = usize::from(u16::from_be_bytes([head[3], head[4]]));
        // The full form has the TCG_FULL_CERT tag where a bare certificate has 0x30.
        let (header, inner, counted) = match rest.split_first_chunk::<2>() {
            Some((tag, inner)) if *tag == FULL_CERT_TAG => (WRAPPER_FULL, inner, 2),
            _ => (WRAPPER_SHORT, rest, 0),
        };
        if inner.is_empty() {
            return Err(NvError::Truncated {
                needed: wrapper.saturating_sub(counted),
                available: 0,
            });
        }
        let len = object_len(inner, header)?;
        if wrapper != len + counted {
            return Err(NvError::WrapperMismatch {
                header,
                wrapper,
                der: len,
            });
        }
        return inner.get(..len).ok_or(NvError::Truncated {
            needed: len,
            available: inner.len(),
        });
    }
    let len = object_len(blob, 0)?;
    blob.get(..len).ok_or(NvError::Truncated {
        needed: len,
        available: blob.len(),
    })
}

/// Iterator over concatenated DER objects; see [`objects`].
#[derive(Debug, Clone)]
pub struct Objects<'a> {
    rest: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Objects<'a> {
    type Item = Result<&'a [u8], NvError>;

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
    use std::string::ToString as _;

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
            Err(NvError::WrapperMismatch {
                header: WRAPPER_SHORT,
                wrapper: 7,
                der: 6
            })
        );
    }

    #[test]
    fn unwraps_the_seven_byte_full_cert_header() {
        // 10 01 | 00 | LLLL = DER + 2 | 10 02 | DER | padding
        let mut blob = [0xFFu8; 24];
        blob[..7].copy_from_slice(&[0x10, 0x01, 0x00, 0x00, 0x08, 0x10, 0x02]);
        blob[7..13].copy_from_slice(&CERT);
        assert_eq!(first_object(&blob), Ok(&CERT[..]));
        // Zero padding behind it, and no padding at all, trim the same way.
        let mut zeros = blob;
        zeros[13..].fill(0);
        assert_eq!(first_object(&zeros), Ok(&CERT[..]));
        assert_eq!(first_object(&blob[..13]), Ok(&CERT[..]));
    }

    #[test]
    fn seven_byte_header_with_an_inconsistent_length_is_named() {
        let mut blob = [0xFFu8; 16];
        blob[..7].copy_from_slice(&[0x10, 0x01, 0x00, 0x00, 0x06, 0x10, 0x02]);
        blob[7..13].copy_from_slice(&CERT);
        // LLLL = DER length without the tag: the 5-byte rule applied to the 7-byte form.
        let err = first_object(&blob).unwrap_err();
        assert_eq!(
            err,
            NvError::WrapperMismatch {
                header: WRAPPER_FULL,
                wrapper: 6,
                der: 6
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("`10 01 00 LLLL 10 02` says LLLL = 6 bytes"),
            "{text}"
        );
        assert!(text.contains("are 8 bytes"), "{text}");
        // A length below the tag's own two bytes.
        blob[4] = 1;
        assert!(matches!(
            first_object(&blob),
            Err(NvError::WrapperMismatch { wrapper: 1, .. })
        ));
        // A declared length running past the blob: the DER object is truncated.
        blob[4] = 8;
        assert!(matches!(
            first_object(&blob[..10]),
            Err(NvError::Truncated { .. })
        ));
        // A header with nothing behind it.
        assert_eq!(
            first_object(&blob[..7]),
            Err(NvError::Truncated {
                needed: 6,
                available: 0
            })
        );
    }

    #[test]
    fn long_form_length() {
        let mut blob = [0u8; 300];
        blob[..4].copy_from_slice(&[0x30, 0x82, 0x01, 0x00]);
        assert_eq!(first_object(&blob).map(<[u8]>::len), Ok(260));
        assert_eq!(
            first_object(&blob[..200]),
            Err(NvError::Truncated {
                needed: 260,
                available: 200
            })
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(first_object(&[]), Err(NvError::Empty));
        assert_eq!(first_object(&[0xFF; 8]), Err(NvError::Empty));
        assert_eq!(
            first_object(&[0x31, 0]),
            Err(NvError::NotSequence {
                offset: 0,
                found: 0x31
            })
        );
        assert_eq!(
            first_object(&[0x30, 0x80, 0, 0]),
            Err(NvError::BadLength { offset: 1 })
        );
        assert_eq!(
            first_object(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(NvError::BadLength { offset: 1 })
        );
        assert_eq!(
            first_object(&[0x30, 0x84, 0x10, 0, 0, 0]),
            Err(NvError::TooLong { len: 0x1000_0006 })
        );
        assert!(matches!(
            first_object(&[0x30]),
            Err(NvError::Truncated { .. })
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
        assert!(matches!(it.next(), Some(Err(NvError::Truncated { .. }))));
        assert_eq!(it.next(), None);
    }
}
