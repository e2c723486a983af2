//! [`Writer`]: definite-length DER encoding into a caller's buffer.

use core::fmt;

use super::{length_len, strip_zeros, tag};

/// The caller's buffer is too small for what is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteError {
    /// Bytes the encoding needed at the point it stopped.
    pub needed: usize,
    /// The buffer's size.
    pub capacity: usize,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DER output needs at least {} bytes but the buffer holds {}",
            self.needed, self.capacity
        )
    }
}

impl core::error::Error for WriteError {}

/// Writes DER into a caller's buffer, front to back.
///
/// Constructed values take a closure that writes their contents; the header is put in front
/// once the contents' length is known (the contents are moved up by the header's size), so
/// nothing has to be measured beforehand.
///
/// ```
/// use ekattest_protocol::der::{Writer, tag};
/// let mut buf = [0u8; 16];
/// let mut w = Writer::new(&mut buf);
/// w.sequence(|w| {
///     w.uint(&[0x80])?;
///     w.null()
/// })
/// .unwrap();
/// assert_eq!(w.finish(), &[0x30, 0x06, 0x02, 0x02, 0x00, 0x80, tag::NULL, 0x00]);
/// ```
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// A writer filling `buf` from its start.
    pub const fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written so far.
    #[must_use]
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// Ends writing; returns the bytes written, borrowed from the buffer.
    #[must_use]
    pub fn finish(self) -> &'b [u8] {
        let Self { buf, len } = self;
        let buf: &'b [u8] = buf;
        buf.get(..len).unwrap_or_default()
    }

    fn too_small(&self, extra: usize) -> WriteError {
        WriteError {
            needed: self.len.saturating_add(extra),
            capacity: self.buf.len(),
        }
    }

    /// Appends bytes as they are (an already encoded TLV, or contents).
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let end = self
            .len
            .checked_add(bytes.len())
            .ok_or_else(|| self.too_small(bytes.len()))?;
        let capacity = self.buf.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(WriteError {
            needed: end,
            capacity,
        })?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Appends a tag and a length field for `len` content bytes.
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn header(&mut self, tag: u8, len: usize) -> Result<(), WriteError> {
        let mut h = [0u8; 2 + size_of::<usize>()];
        let n = encode_header(&mut h, tag, len);
        self.raw(h.get(..n).unwrap_or_default())
    }

    /// Appends a primitive TLV.
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn tlv(&mut self, tag: u8, contents: &[u8]) -> Result<(), WriteError> {
        self.header(tag, contents.len())?;
        self.raw(contents)
    }

    /// Appends a constructed TLV with tag `tag` whose contents `contents` writes.
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full, or whatever `contents` returns.
    pub fn constructed<E: From<WriteError>>(
        &mut self,
        tag: u8,
        contents: impl FnOnce(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.len;
        contents(self)?;
        let body = self.len - start;
        let mut h = [0u8; 2 + size_of::<usize>()];
        let n = encode_header(&mut h, tag, body);
        let end = self.len.checked_add(n).ok_or_else(|| self.too_small(n))?;
        if end > self.buf.len() {
            return Err(self.too_small(n).into());
        }
        self.buf.copy_within(start..self.len, start + n);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(start..start + n), h.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.len = end;
        Ok(())
    }

    /// Appends a SEQUENCE whose contents `contents` writes.
    ///
    /// # Errors
    /// As [`Self::constructed`].
    pub fn sequence<E: From<WriteError>>(
        &mut self,
        contents: impl FnOnce(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        self.constructed(tag::SEQUENCE, contents)
    }

    /// Appends an unsigned big-endian integer as a DER INTEGER: minimal, with a zero sign
    /// byte when the top bit is set (zero is `02 01 00`).
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn uint(&mut self, magnitude: &[u8]) -> Result<(), WriteError> {
        let m = strip_zeros(magnitude);
        let pad = m.first().is_none_or(|&b| b & 0x80 != 0);
        self.header(tag::INTEGER, m.len() + usize::from(pad))?;
        if pad {
            self.raw(&[0])?;
        }
        self.raw(m)
    }

    /// Appends an OBJECT IDENTIFIER from its encoded contents (no tag, no length).
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn oid(&mut self, contents: &[u8]) -> Result<(), WriteError> {
        self.tlv(tag::OID, contents)
    }

    /// Appends a NULL.
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn null(&mut self) -> Result<(), WriteError> {
        self.raw(&[tag::NULL, 0])
    }

    /// Appends a BOOLEAN (TRUE is 0xFF, as DER requires).
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn boolean(&mut self, value: bool) -> Result<(), WriteError> {
        self.raw(&[tag::BOOLEAN, 1, if value { 0xff } else { 0 }])
    }

    /// Appends an OCTET STRING.
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn octet_string(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.tlv(tag::OCTET_STRING, bytes)
    }

    /// Appends a BIT STRING of whole bytes (unused-bits byte 0).
    ///
    /// # Errors
    /// [`WriteError`] if the buffer is full.
    pub fn bit_string(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.header(tag::BIT_STRING, bytes.len().saturating_add(1))?;
        self.raw(&[0])?;
        self.raw(bytes)
    }

    /// Appends a BIT STRING (unused-bits byte 0) whose bytes `contents` writes, as an
    /// RSA SubjectPublicKeyInfo wraps its RSAPublicKey.
    ///
    /// # Errors
    /// As [`Self::constructed`].
    pub fn bit_string_with<E: From<WriteError>>(
        &mut self,
        contents: impl FnOnce(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        self.constructed(tag::BIT_STRING, |w| {
            w.raw(&[0])?;
            contents(w)
        })
    }
}

/// Writes tag and length into `out`; returns the bytes used.
fn encode_header(out: &mut [u8; 2 + size_of::<usize>()], tag: u8, len: usize) -> usize {
    out[0] = tag;
    let n = length_len(len);
    if n == 1 {
        // n == 1 means len < 0x80.
        out[1] = len.to_be_bytes()[size_of::<usize>() - 1];
        return 2;
    }
    let digits = n - 1;
    out[1] = 0x80 | (digits as u8);
    let be = len.to_be_bytes();
    for (dst, src) in out[2..2 + digits]
        .iter_mut()
        .zip(&be[size_of::<usize>() - digits..])
    {
        *dst = *src;
    }
    1 + n
}
