//! A bounds-checked big-endian reader over TPM-marshalled bytes (TPM 2.0 Part 1, 18
//! "Structure Marshalling"): the one the agent's command layer, the public-area parser and
//! the server's TPM2_Certify check share.
//!
//! Every read names the field it reads, so a short input is reported as the field it cut
//! off ([`MarshalError::Truncated`]), and [`Reader::finish`] names the structure that has
//! bytes left over.

use core::fmt;

/// Why TPM-marshalled bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarshalError {
    /// The input ended inside `field`.
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes remain after the structure `field`.
    Trailing {
        /// The structure that should have ended.
        field: &'static str,
        /// How many bytes are left.
        bytes: usize,
    },
}

impl MarshalError {
    /// The field or structure named by the read that failed.
    #[must_use]
    pub const fn field(&self) -> &'static str {
        match *self {
            Self::Truncated { field, .. } | Self::Trailing { field, .. } => field,
        }
    }
}

impl fmt::Display for MarshalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated {
                field,
                needed,
                available,
            } => write!(
                f,
                "{field} truncated: {needed} bytes needed, {available} left"
            ),
            Self::Trailing { field, bytes } => {
                write!(f, "{field} followed by {bytes} unexpected bytes")
            }
        }
    }
}

impl core::error::Error for MarshalError {}

/// Reads big-endian integers and size-prefixed buffers from the front of a slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    #[must_use]
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field` if fewer are left.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MarshalError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(MarshalError::Truncated {
                field,
                needed: n,
                available: self.buf.len(),
            })?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], MarshalError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(MarshalError::Truncated {
                field,
                needed: N,
                available: self.buf.len(),
            })?;
        self.buf = tail;
        Ok(*head)
    }

    /// A UINT8 (or BYTE, TPMI_YES_NO).
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, MarshalError> {
        self.array::<1>(field).map(|[b]| b)
    }

    /// A big-endian UINT16.
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, MarshalError> {
        self.array(field).map(u16::from_be_bytes)
    }

    /// A big-endian UINT32.
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, MarshalError> {
        self.array(field).map(u32::from_be_bytes)
    }

    /// A big-endian UINT64.
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, MarshalError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// A TPM2B's contents (UINT16 size, then that many bytes).
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn tpm2b(&mut self, field: &'static str) -> Result<&'a [u8], MarshalError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    /// A TPM2B including its size prefix.
    ///
    /// # Errors
    /// [`MarshalError::Truncated`] naming `field`.
    pub fn tpm2b_whole(&mut self, field: &'static str) -> Result<&'a [u8], MarshalError> {
        let start = self.buf;
        let n = self.u16(field)?;
        self.take(usize::from(n), field)?;
        Ok(start.get(..2 + usize::from(n)).unwrap_or_default())
    }

    /// Everything not read yet.
    #[must_use]
    pub const fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether everything has been read.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless everything has been read.
    ///
    /// # Errors
    /// [`MarshalError::Trailing`] naming `field` (the structure that should have ended).
    pub fn finish(&self, field: &'static str) -> Result<(), MarshalError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MarshalError::Trailing {
                field,
                bytes: self.buf.len(),
            })
        }
    }
}

/// `b` split at `at`, `None` if it is shorter.
#[must_use]
pub fn split(b: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    b.split_at_checked(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_names_the_field_that_ran_out() {
        let mut r = Reader::new(&[0x01, 0x00, 0x02, 0xaa, 0xbb, 0x00, 0x00, 0x00, 0x07, 9]);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.tpm2b("b"), Ok(&[0xaa, 0xbb][..]));
        assert_eq!(r.u32("c"), Ok(7));
        assert_eq!(
            r.finish("s"),
            Err(MarshalError::Trailing {
                field: "s",
                bytes: 1
            })
        );
        assert_eq!(
            r.u16("d"),
            Err(MarshalError::Truncated {
                field: "d",
                needed: 2,
                available: 1
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.rest(), &[9]);
        assert_eq!(r.u64("e").unwrap_err().field(), "e");
    }

    #[test]
    fn tpm2b_whole_keeps_the_size() {
        let mut r = Reader::new(&[0x00, 0x01, 0x05, 0xff]);
        assert_eq!(r.tpm2b_whole("x"), Ok(&[0x00, 0x01, 0x05][..]));
        assert!(r.tpm2b("y").is_err());
        assert_eq!(split(&[1, 2], 3), None);
    }
}
