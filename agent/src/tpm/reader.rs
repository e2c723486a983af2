//! A bounds-checked big-endian reader over TPM response bytes: every read returns `None`
//! instead of panicking when the input ends. Used by the command layer for the responses it
//! parses itself (capabilities, public areas); it never allocates.

pub(crate) fn split(b: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (at <= b.len()).then(|| b.split_at(at))
}

/// A bounds-checked big-endian reader over response bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = split(self.buf, n)?;
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A TPM2B's contents.
    pub(crate) fn tpm2b(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A TPM2B including its size prefix.
    pub(crate) fn tpm2b_whole(&mut self) -> Option<&'a [u8]> {
        let start = self.buf;
        let n = self.u16()?;
        self.take(usize::from(n))?;
        start.get(..2 + usize::from(n))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}
