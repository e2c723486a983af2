//! [`Reader`]: bounded DER decoding over a borrowed slice.

use super::{DEPTH_MAX, Error, ErrorKind, LENGTH_BYTES_MAX, tag};

/// The identifier and length octets of one TLV, parsed without looking at its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The tag byte.
    pub tag: u8,
    /// Bytes of tag and length (2 to 2 + [`LENGTH_BYTES_MAX`]).
    pub header_len: usize,
    /// The declared content length.
    pub content_len: usize,
}

impl Header {
    /// Parses the tag and length at the start of `input`; the contents need not be present
    /// (see [`Header::total`]). Errors carry offset 0.
    ///
    /// # Errors
    /// [`ErrorKind::Truncated`] if the header itself is cut short,
    /// [`ErrorKind::HighTagNumber`], [`ErrorKind::IndefiniteLength`],
    /// [`ErrorKind::LengthTooLong`].
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        let err = |kind| Error { offset: 0, kind };
        let truncated = |needed| {
            err(ErrorKind::Truncated {
                needed,
                available: input.len(),
            })
        };
        let (&tag, rest) = input.split_first().ok_or_else(|| truncated(2))?;
        if tag & 0x1f == 0x1f {
            return Err(err(ErrorKind::HighTagNumber { tag }));
        }
        let (&first, rest) = rest.split_first().ok_or_else(|| truncated(2))?;
        if first < 0x80 {
            return Ok(Self {
                tag,
                header_len: 2,
                content_len: usize::from(first),
            });
        }
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(err(ErrorKind::IndefiniteLength));
        }
        if n > LENGTH_BYTES_MAX {
            return Err(err(ErrorKind::LengthTooLong { bytes: n }));
        }
        let bytes = rest.get(..n).ok_or_else(|| truncated(2 + n))?;
        let len = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let content_len = usize::try_from(len).map_err(|_| err(ErrorKind::LengthOverflow))?;
        Ok(Self {
            tag,
            header_len: 2 + n,
            content_len,
        })
    }

    /// Header and contents together, `None` if that overflows `usize`.
    #[must_use]
    pub const fn total(&self) -> Option<usize> {
        self.header_len.checked_add(self.content_len)
    }
}

/// One TLV read by a [`Reader`], borrowing from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag byte.
    pub tag: u8,
    /// The contents (no tag, no length).
    pub contents: &'a [u8],
    /// The whole TLV: tag, length and contents.
    pub whole: &'a [u8],
    /// Offset of the TLV from the start of the outermost input.
    pub offset: usize,
    depth: u8,
}

impl<'a> Tlv<'a> {
    /// A reader over the contents of this (constructed) TLV, one level deeper.
    ///
    /// # Errors
    /// [`ErrorKind::TooDeep`] past [`DEPTH_MAX`] levels.
    pub fn reader(&self) -> Result<Reader<'a>, Error> {
        if self.depth >= DEPTH_MAX {
            return Err(Error {
                offset: self.offset,
                kind: ErrorKind::TooDeep,
            });
        }
        Ok(Reader {
            rest: self.contents,
            offset: self.offset + (self.whole.len() - self.contents.len()),
            depth: self.depth + 1,
        })
    }

    /// Fails with [`ErrorKind::UnexpectedTag`] unless the tag is `expected`.
    ///
    /// # Errors
    /// As described.
    pub fn expect(self, expected: u8) -> Result<Self, Error> {
        if self.tag == expected {
            Ok(self)
        } else {
            Err(Error {
                offset: self.offset,
                kind: ErrorKind::UnexpectedTag {
                    expected,
                    found: self.tag,
                },
            })
        }
    }

    /// A reader over the bytes of a BIT STRING with no unused bits that holds DER (an RSA
    /// SubjectPublicKeyInfo's RSAPublicKey), one level deeper.
    ///
    /// # Errors
    /// As [`Self::bit_string_bytes`] and [`Self::reader`].
    pub fn bit_string_reader(&self) -> Result<Reader<'a>, Error> {
        let bytes = self.bit_string_bytes()?;
        let mut r = self.reader()?;
        r.rest = bytes;
        r.offset += 1;
        Ok(r)
    }

    /// The bytes of a BIT STRING with no unused bits (the form keys and signatures use):
    /// the contents after the leading unused-bits byte, which must be 0.
    ///
    /// # Errors
    /// [`ErrorKind::UnusedBits`] for an empty BIT STRING or one with unused bits.
    pub fn bit_string_bytes(&self) -> Result<&'a [u8], Error> {
        match self.contents.split_first() {
            Some((0, bytes)) => Ok(bytes),
            _ => Err(Error {
                offset: self.offset,
                kind: ErrorKind::UnusedBits,
            }),
        }
    }
}

/// Reads one TLV after another from a slice; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
    depth: u8,
}

impl<'a> Reader<'a> {
    /// A reader over `input`, at offset 0 and depth 0.
    #[must_use]
    pub const fn new(input: &'a [u8]) -> Self {
        Self {
            rest: input,
            offset: 0,
            depth: 0,
        }
    }

    /// Whether everything has been read.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// What has not been read yet.
    #[must_use]
    pub const fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Offset of the next TLV from the start of the outermost input.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// The tag of the next TLV, `None` at the end.
    #[must_use]
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next TLV, whatever its tag.
    ///
    /// # Errors
    /// [`Error`] for a malformed header or contents running past the input.
    pub fn read(&mut self) -> Result<Tlv<'a>, Error> {
        let at = |kind| Error {
            offset: self.offset,
            kind,
        };
        let h = Header::parse(self.rest).map_err(|e| at(e.kind))?;
        let total = h.total().ok_or_else(|| at(ErrorKind::LengthOverflow))?;
        let (whole, rest) = self.rest.split_at_checked(total).ok_or_else(|| {
            at(ErrorKind::Truncated {
                needed: total,
                available: self.rest.len(),
            })
        })?;
        let contents = whole.get(h.header_len..).unwrap_or_default();
        let tlv = Tlv {
            tag: h.tag,
            contents,
            whole,
            offset: self.offset,
            depth: self.depth,
        };
        self.rest = rest;
        self.offset += total;
        Ok(tlv)
    }

    /// Reads the next TLV, which must have tag `expected`.
    ///
    /// # Errors
    /// As [`Self::read`]; [`ErrorKind::UnexpectedTag`] for another tag (nothing is consumed).
    pub fn read_tag(&mut self, expected: u8) -> Result<Tlv<'a>, Error> {
        match self.peek_tag() {
            Some(found) if found != expected => Err(Error {
                offset: self.offset,
                kind: ErrorKind::UnexpectedTag { expected, found },
            }),
            _ => self.read(),
        }
    }

    /// Reads the next TLV if its tag is `tag` (an OPTIONAL or DEFAULT field), else nothing.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn read_optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, Error> {
        if self.peek_tag() == Some(tag) {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads a constructed TLV with tag `expected` and returns a reader over its contents.
    ///
    /// # Errors
    /// As [`Self::read_tag`] and [`Tlv::reader`].
    pub fn nested(&mut self, expected: u8) -> Result<Reader<'a>, Error> {
        self.read_tag(expected)?.reader()
    }

    /// Reads a SEQUENCE and returns a reader over its contents.
    ///
    /// # Errors
    /// As [`Self::nested`].
    pub fn sequence(&mut self) -> Result<Reader<'a>, Error> {
        self.nested(tag::SEQUENCE)
    }

    /// Fails with [`ErrorKind::Trailing`] unless everything has been read.
    ///
    /// # Errors
    /// As described.
    pub fn finish(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error {
                offset: self.offset,
                kind: ErrorKind::Trailing {
                    bytes: self.rest.len(),
                },
            })
        }
    }
}
