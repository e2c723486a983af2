//! Fuzz target `der_reader`: the bounded DER reader and writer (`ekattest_protocol::der`)
//! walking arbitrary input as a tree of TLVs.
//!
//! Invariants: every TLV is the sub-slice of the input at the offset it reports, its contents
//! its tail; nested readers start at the contents' offset and never go deeper than
//! `DEPTH_MAX`; an error's offset lies inside the input; a TLV whose length is minimally
//! encoded is rewritten byte for byte by `Writer` (a primitive with `tlv`, a constructed one
//! from its rewritten children with `constructed`); `Header::parse` agrees with `read`.
#![no_main]

use ekattest_protocol::der::{self, DEPTH_MAX, Header, Reader, Writer};
use libfuzzer_sys::fuzz_target;

/// Offset of `part` inside `whole`; panics if it is not a sub-slice.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    assert!(
        p >= w && p + part.len() <= w + whole.len(),
        "returned slice is not inside the input"
    );
    p - w
}

/// Walks every TLV of `r`; rewrites the canonical ones into `w`. Returns whether everything
/// read was canonical (so `w` holds the same bytes).
fn walk(input: &[u8], r: &mut Reader<'_>, depth: u8, w: &mut Writer<'_>) -> bool {
    assert!(depth <= DEPTH_MAX, "reader deeper than DEPTH_MAX");
    let mut canonical = true;
    loop {
        let before = r.offset();
        if r.is_empty() {
            return canonical;
        }
        let tlv = match r.read() {
            Ok(t) => t,
            Err(e) => {
                assert_eq!(e.offset, before, "error not at the TLV that failed");
                assert!(e.offset < input.len(), "error offset past the input");
                return false;
            }
        };
        assert_eq!(offset_in(input, tlv.whole), tlv.offset, "offset is wrong");
        assert_eq!(tlv.offset, before);
        assert!(tlv.whole.ends_with(tlv.contents));
        assert_eq!(r.offset(), before + tlv.whole.len());
        let h = Header::parse(tlv.whole).expect("a TLV read has a header");
        assert_eq!(h.tag, tlv.tag);
        assert_eq!(h.total(), Some(tlv.whole.len()));
        let minimal = h.header_len == 1 + der::length_len(tlv.contents.len());
        let start = w.len();
        let rewritten = if der::tag::is_constructed(tlv.tag) {
            match tlv.reader() {
                Ok(mut inner) => {
                    assert_eq!(inner.offset(), tlv.offset + h.header_len);
                    let mut ok = true;
                    let res = w.constructed(tlv.tag, |w| {
                        ok = walk(input, &mut inner, depth + 1, w);
                        Ok::<_, der::WriteError>(())
                    });
                    ok && res.is_ok()
                }
                Err(e) => {
                    assert_eq!(e.kind, der::ErrorKind::TooDeep);
                    assert_eq!(depth, DEPTH_MAX, "TooDeep before DEPTH_MAX");
                    false
                }
            }
        } else {
            w.tlv(tlv.tag, tlv.contents).is_ok()
        };
        if rewritten && minimal {
            assert_eq!(
                w.written().get(start..),
                Some(tlv.whole),
                "a canonical TLV is not rewritten byte for byte"
            );
        } else {
            canonical = false;
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut buf = vec![0u8; input.len() + 64];
    let mut w = Writer::new(&mut buf);
    let mut r = Reader::new(input);
    if walk(input, &mut r, 0, &mut w) {
        assert_eq!(
            w.finish(),
            input,
            "a canonical input is not rewritten byte for byte"
        );
    }
});
