//! Fuzz target `der`: NV blob trimming and chain splitting (`ekattest_protocol::der::nv`).
//!
//! Invariants: every returned object is a sub-slice of the input that starts with a SEQUENCE
//! tag; `first_object` is idempotent; behind a PC Client header the object starts at offset 5
//! (`10 01 00 LLLL`, LLLL = its length) or 7 (`10 01 00 LLLL 10 02`, LLLL = its length + 2); `objects` returns contiguous objects from the start of
//! the input, at most one error and nothing after it, stays finished once finished, and
//! agrees with `first_object` on unwrapped blobs.
#![no_main]

use ekattest_protocol::der::nv::{WRAPPER_FULL, WRAPPER_SHORT, first_object, objects};
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

fuzz_target!(|blob: &[u8]| {
    let first = first_object(blob);
    if let Ok(obj) = first {
        offset_in(blob, obj);
        assert!(
            obj.len() >= 2 && obj[0] == 0x30,
            "not a SEQUENCE: {obj:02x?}"
        );
        assert_eq!(first_object(obj), Ok(obj), "first_object is not idempotent");
        if let [0x10, 0x01, 0x00, hi, lo, ..] = *blob {
            let declared = usize::from(u16::from_be_bytes([hi, lo]));
            match offset_in(blob, obj) {
                WRAPPER_SHORT => assert_eq!(declared, obj.len(), "5-byte header length"),
                WRAPPER_FULL => {
                    assert_eq!(blob[5..7], [0x10, 0x02], "7-byte header without 10 02");
                    assert_eq!(declared, obj.len() + 2, "7-byte header length");
                }
                other => panic!("object behind a PC Client header at offset {other}"),
            }
        } else {
            assert_eq!(offset_in(blob, obj), 0, "bare object not at offset 0");
        }
        let mut again = objects(obj);
        assert_eq!(again.next(), Some(Ok(obj)));
        assert_eq!(again.next(), None);
    }

    let mut it = objects(blob);
    let mut next = 0;
    let mut count = 0;
    let mut first_item = None;
    for item in it.by_ref() {
        count += 1;
        assert!(count <= blob.len() / 2 + 1, "objects() does not terminate");
        if first_item.is_none() {
            first_item = Some(item);
        }
        match item {
            Ok(obj) => {
                assert_eq!(offset_in(blob, obj), next, "objects are not contiguous");
                assert!(
                    obj.len() >= 2 && obj[0] == 0x30,
                    "not a SEQUENCE: {obj:02x?}"
                );
                next += obj.len();
            }
            // Checked below: nothing follows an error.
            Err(_) => break,
        }
    }
    assert_eq!(
        it.next(),
        None,
        "objects() went on after an error or its end"
    );
    // On a blob without the PC Client wrapper both functions read the same first object.
    match first_item {
        Some(Ok(obj)) => assert_eq!(first, Ok(obj)),
        _ if blob.first() == Some(&0x30) => {
            assert!(first.is_err(), "first_object found what objects() rejected")
        }
        _ => {}
    }
});
