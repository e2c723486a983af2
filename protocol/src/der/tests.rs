use super::*;
use proptest::prelude::*;
use std::string::ToString as _;
use std::vec::Vec;

fn kind(r: Result<Tlv<'_>, Error>) -> ErrorKind {
    match r {
        Ok(t) => panic!("read {t:?}"),
        Err(e) => e.kind,
    }
}

#[test]
fn reads_nested_tlvs_with_offsets() {
    // SEQUENCE { INTEGER 5, SEQUENCE { NULL } }, then OCTET STRING "ab"
    let der = [
        0x30, 0x07, 0x02, 0x01, 0x05, 0x30, 0x02, 0x05, 0x00, 0x04, 0x02, b'a', b'b',
    ];
    let mut r = Reader::new(&der);
    let seq = r.read_tag(tag::SEQUENCE).unwrap();
    assert_eq!(seq.whole, &der[..9]);
    let mut inner = seq.reader().unwrap();
    assert_eq!(inner.offset(), 2);
    let int = inner.read_tag(tag::INTEGER).unwrap();
    assert_eq!((int.contents, int.offset), (&[5u8][..], 2));
    let mut deeper = inner.sequence().unwrap();
    assert_eq!(deeper.offset(), 7);
    assert_eq!(deeper.read().unwrap().tag, tag::NULL);
    deeper.finish().unwrap();
    inner.finish().unwrap();
    assert_eq!(r.peek_tag(), Some(tag::OCTET_STRING));
    assert_eq!(r.read_optional(tag::INTEGER).unwrap(), None);
    assert_eq!(r.read_tag(tag::OCTET_STRING).unwrap().contents, b"ab");
    assert!(r.is_empty());
    assert_eq!(r.offset(), der.len());
}

#[test]
fn unexpected_tag_and_trailing_are_named() {
    let der = [0x02, 0x01, 0x05, 0xff];
    let mut r = Reader::new(&der);
    let e = r.clone().read_tag(tag::SEQUENCE).unwrap_err();
    assert_eq!(
        e,
        Error {
            offset: 0,
            kind: ErrorKind::UnexpectedTag {
                expected: 0x30,
                found: 0x02
            }
        }
    );
    assert_eq!(
        e.to_string(),
        "DER at offset 0: tag 0x02 where 0x30 is required"
    );
    r.read().unwrap();
    assert_eq!(
        r.finish(),
        Err(Error {
            offset: 3,
            kind: ErrorKind::Trailing { bytes: 1 }
        })
    );
}

#[test]
fn truncated_lengths() {
    assert_eq!(
        kind(Reader::new(&[]).read()),
        ErrorKind::Truncated {
            needed: 2,
            available: 0
        }
    );
    assert_eq!(
        kind(Reader::new(&[0x30]).read()),
        ErrorKind::Truncated {
            needed: 2,
            available: 1
        }
    );
    // Long form with its length bytes cut off.
    assert_eq!(
        kind(Reader::new(&[0x30, 0x82, 0x01]).read()),
        ErrorKind::Truncated {
            needed: 4,
            available: 3
        }
    );
    // Contents running past the end.
    assert_eq!(
        kind(Reader::new(&[0x04, 0x81, 0x80, 0, 0]).read()),
        ErrorKind::Truncated {
            needed: 131,
            available: 5
        }
    );
    // A nested TLV may not run past its parent, even if the outer input goes on.
    let der = [0x30, 0x02, 0x04, 0x05, 1, 2, 3, 4, 5];
    let mut r = Reader::new(&der);
    let mut inner = r.sequence().unwrap();
    assert_eq!(
        inner.read().unwrap_err(),
        Error {
            offset: 2,
            kind: ErrorKind::Truncated {
                needed: 7,
                available: 2
            }
        }
    );
}

#[test]
fn indefinite_length_refused() {
    assert_eq!(
        kind(Reader::new(&[0x30, 0x80, 0x02, 0x01, 0x00, 0x00, 0x00]).read()),
        ErrorKind::IndefiniteLength
    );
}

#[test]
fn length_overflow_and_long_length_fields() {
    assert_eq!(
        kind(Reader::new(&[0x04, 0x85, 1, 0, 0, 0, 0, 0]).read()),
        ErrorKind::LengthTooLong { bytes: 5 }
    );
    assert_eq!(
        kind(Reader::new(&[0x04, 0xff, 0xff]).read()),
        ErrorKind::LengthTooLong { bytes: 127 }
    );
    // The largest four-byte length is a truncation, never an overflow or a panic.
    assert!(matches!(
        kind(Reader::new(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 0]).read()),
        ErrorKind::Truncated {
            needed: 0x1_0000_0005,
            ..
        } | ErrorKind::LengthOverflow
    ));
    // Non-minimal long form is accepted (some vendors' certificates carry it).
    let t = Reader::new(&[0x04, 0x81, 0x01, 0xaa]).read().unwrap();
    assert_eq!(t.contents, &[0xaa]);
}

#[test]
fn high_tag_number_refused() {
    assert_eq!(
        kind(Reader::new(&[0x1f, 0x81, 0x01, 0x00]).read()),
        ErrorKind::HighTagNumber { tag: 0x1f }
    );
}

#[test]
fn nesting_limit() {
    // DEPTH_MAX + 2 nested SEQUENCEs around nothing.
    let levels = usize::from(DEPTH_MAX) + 2;
    let mut der = Vec::new();
    for i in 0..levels {
        der.push(0x30);
        der.push(u8::try_from(2 * (levels - 1 - i)).unwrap());
    }
    let mut r = Reader::new(&der);
    let mut depth = 0;
    let err = loop {
        match r.sequence() {
            Ok(inner) => {
                r = inner;
                depth += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind, ErrorKind::TooDeep);
    assert_eq!(depth, usize::from(DEPTH_MAX));
    assert_eq!(err.offset, 2 * usize::from(DEPTH_MAX));
}

#[test]
fn bit_strings() {
    let t = Reader::new(&[0x03, 0x03, 0x00, 0xab, 0xcd]).read().unwrap();
    assert_eq!(t.bit_string_bytes().unwrap(), &[0xab, 0xcd]);
    let t = Reader::new(&[0x03, 0x02, 0x04, 0xf0]).read().unwrap();
    assert_eq!(
        t.bit_string_bytes().unwrap_err().kind,
        ErrorKind::UnusedBits
    );
    let t = Reader::new(&[0x03, 0x00]).read().unwrap();
    assert_eq!(
        t.bit_string_bytes().unwrap_err().kind,
        ErrorKind::UnusedBits
    );
}

#[test]
fn writer_primitives() {
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf);
    w.uint(&[0, 0, 0x7f]).unwrap();
    w.uint(&[0x80]).unwrap();
    w.uint(&[]).unwrap();
    w.oid(&[0x2a, 0x03]).unwrap();
    w.boolean(true).unwrap();
    w.null().unwrap();
    w.octet_string(b"x").unwrap();
    w.bit_string(&[0x0f]).unwrap();
    assert_eq!(
        w.finish(),
        &[
            0x02, 0x01, 0x7f, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x00, 0x06, 0x02, 0x2a, 0x03,
            0x01, 0x01, 0xff, 0x05, 0x00, 0x04, 0x01, b'x', 0x03, 0x02, 0x00, 0x0f
        ]
    );
}

#[test]
fn writer_length_forms() {
    for (len, head) in [
        (5usize, &[0x04, 5][..]),
        (127, &[0x04, 0x7f]),
        (128, &[0x04, 0x81, 0x80]),
        (200, &[0x04, 0x81, 200]),
        (300, &[0x04, 0x82, 0x01, 0x2c]),
        (70_000, &[0x04, 0x83, 0x01, 0x11, 0x70]),
    ] {
        let mut buf = std::vec![0u8; len + 8];
        let mut w = Writer::new(&mut buf);
        w.octet_string(&std::vec![7u8; len]).unwrap();
        let out = w.finish();
        assert_eq!(&out[..head.len()], head, "length {len}");
        assert_eq!(out.len(), tlv_len(len));
    }
}

#[test]
fn writer_nested_headers_grow_in_place() {
    let mut buf = [0u8; 400];
    let mut w = Writer::new(&mut buf);
    w.sequence(|w| {
        w.constructed(tag::context(0), |w| w.boolean(true))?;
        w.octet_string(&[1u8; 200])?;
        w.bit_string_with(|w| w.sequence(|w| w.uint(&[1])))
    })
    .unwrap();
    let out = w.finish();
    let mut r = Reader::new(out);
    let mut seq = r.sequence().unwrap();
    r.finish().unwrap();
    assert_eq!(out[..4], [0x30, 0x81, 0xd8, 0xa0]);
    let mut ctx = seq.nested(tag::context(0)).unwrap();
    assert_eq!(ctx.read_tag(tag::BOOLEAN).unwrap().contents, &[0xff]);
    assert_eq!(seq.read_tag(tag::OCTET_STRING).unwrap().contents.len(), 200);
    let bits = seq.read_tag(tag::BIT_STRING).unwrap();
    assert_eq!(
        bits.bit_string_bytes().unwrap(),
        &[0x30, 0x03, 0x02, 0x01, 0x01]
    );
    seq.finish().unwrap();
}

#[test]
fn writer_reports_a_full_buffer() {
    let mut buf = [0u8; 4];
    let mut w = Writer::new(&mut buf);
    assert_eq!(
        w.octet_string(&[0; 3]),
        Err(WriteError {
            needed: 5,
            capacity: 4
        })
    );
    let mut w = Writer::new(&mut buf);
    // The contents fit, the header in front of them does not.
    let r: Result<(), WriteError> = w.sequence(|w| w.raw(&[1, 2, 3]));
    assert_eq!(
        r,
        Err(WriteError {
            needed: 5,
            capacity: 4
        })
    );
}

#[test]
fn length_len_matches_the_encoding() {
    assert_eq!(length_len(0), 1);
    assert_eq!(length_len(0x7f), 1);
    assert_eq!(length_len(0x80), 2);
    assert_eq!(length_len(0xff), 2);
    assert_eq!(length_len(0x100), 3);
    assert_eq!(length_len(0x1_0000), 4);
}

/// A tree of TLVs for the round trip.
#[derive(Debug, Clone)]
enum Node {
    Prim(u8, Vec<u8>),
    Cons(u8, Vec<Node>),
}

fn node() -> impl Strategy<Value = Node> {
    let prim_tag = prop_oneof![Just(0x02u8), Just(0x04), Just(0x06), Just(0x0c), Just(0x81)];
    let cons_tag = prop_oneof![Just(0x30u8), Just(0x31), Just(0xa0), Just(0xa3)];
    let leaf = (prim_tag, proptest::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(t, v)| Node::Prim(t, v));
    leaf.prop_recursive(6, 64, 6, move |inner| {
        (cons_tag.clone(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(t, v)| Node::Cons(t, v))
    })
}

fn write(w: &mut Writer<'_>, n: &Node) -> Result<(), WriteError> {
    match n {
        Node::Prim(t, v) => w.tlv(*t, v),
        Node::Cons(t, kids) => w.constructed(*t, |w| kids.iter().try_for_each(|k| write(w, k))),
    }
}

fn check(r: &mut Reader<'_>, n: &Node) {
    let t = r.read().unwrap();
    match n {
        Node::Prim(tag, v) => {
            assert_eq!(t.tag, *tag);
            assert_eq!(t.contents, &v[..]);
        }
        Node::Cons(tag, kids) => {
            assert_eq!(t.tag, *tag);
            let mut inner = t.reader().unwrap();
            for k in kids {
                check(&mut inner, k);
            }
            inner.finish().unwrap();
        }
    }
}

proptest! {
    #[test]
    fn round_trip(n in node()) {
        let mut buf = std::vec![0u8; 1 << 20];
        let mut w = Writer::new(&mut buf);
        write(&mut w, &n).unwrap();
        let out = w.finish();
        let mut r = Reader::new(out);
        check(&mut r, &n);
        r.finish().unwrap();
        // Every prefix fails cleanly.
        for cut in [0, out.len() / 2, out.len().saturating_sub(1)] {
            if cut < out.len() {
                prop_assert!(Reader::new(&out[..cut]).read().is_err() || cut == 0);
            }
        }
    }

    #[test]
    fn reader_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut r = Reader::new(&bytes);
        let mut steps = 0;
        while let Ok(t) = r.read() {
            steps += 1;
            prop_assert!(t.whole.len() >= 2 && t.offset + t.whole.len() <= bytes.len());
            if let Ok(mut inner) = t.reader() {
                while inner.read().is_ok() {}
            }
            prop_assert!(steps <= bytes.len());
        }
    }
}
