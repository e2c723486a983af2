//! Every `DecodeError` and `EncodeError` variant, produced from a real frame, with the
//! numbers it carries and its message.
use crate::common;

use common::{golden_challenge, golden_login, read_hex};
use ekattest_protocol::error::{DecodeError, EncodeError, RejectCode};
use ekattest_protocol::limits::{
    ATTRIBUTES_MAX, DOWNLINK_FRAME_MAX, EK_CERT_MAX, FRAME_MAX, METHODS_MAX, NODE_ID_MAX,
    TPM_PUBLIC_MAX, UPLINK_FRAME_MAX,
};
use ekattest_protocol::msg::{Downlink, Uplink, VERSION, decode, encode};

fn golden(name: &str) -> Vec<u8> {
    read_hex(&format!(
        "{}/tests/golden/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    ))
}

/// Appends `n` as a postcard varint.
fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Version, Uplink::Login, methods [TpmEk]: the start of every Login frame.
fn login_head() -> Vec<u8> {
    vec![VERSION, 0x00, 0x01, 0x00]
}

#[test]
fn empty_frame() {
    let err = decode::<Uplink>(&[]).unwrap_err();
    assert_eq!(err, DecodeError::Empty);
    assert_eq!(decode::<Downlink>(&[]).unwrap_err(), DecodeError::Empty);
    assert!(err.to_string().contains("empty frame"));
}

#[test]
fn unknown_version() {
    let mut frame = golden("login");
    for version in [0u8, 1, 3, 0xff] {
        frame[0] = version;
        let err = decode::<Uplink>(&frame).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Version {
                got: version,
                want: VERSION
            }
        );
        assert!(err.to_string().contains(&format!("version {version}")));
        assert_eq!(err.reject_code(), RejectCode::UnsupportedVersion);
    }
}

#[test]
fn version_only_frame_is_truncated() {
    let err = decode::<Uplink>(&[VERSION]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Malformed {
            offset: 1,
            error: postcard::Error::DeserializeUnexpectedEnd
        }
    );
}

#[test]
fn unknown_message_variant_is_malformed() {
    let err = decode::<Uplink>(&[VERSION, 0x02]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Malformed {
            offset: 2,
            error: postcard::Error::SerdeDeCustom
        }
    );
    assert!(err.to_string().contains("unknown enum variant"), "{err}");
    assert_eq!(err.reject_code(), RejectCode::Malformed);
}

#[test]
fn unknown_method_is_malformed_not_field_too_long() {
    let frame = [VERSION, 0x00, 0x01, 0x07];
    assert!(matches!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::Malformed {
            offset: 4,
            error: postcard::Error::SerdeDeCustom
        }
    ));
}

#[test]
fn truncated_frames_are_malformed_at_every_length() {
    for name in ["login", "answer"] {
        let frame = golden(name);
        for len in 1..frame.len() {
            let err = decode::<Uplink>(&frame[..len]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Malformed { offset, .. } if offset <= len),
                "{name} cut to {len} bytes: {err:?}"
            );
        }
    }
    for name in ["challenge", "accepted", "rejected"] {
        let frame = golden(name);
        for len in 1..frame.len() {
            let err = decode::<Downlink>(&frame[..len]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Malformed { .. }),
                "{name} cut to {len} bytes: {err:?}"
            );
        }
    }
}

#[test]
fn bad_option_tag_is_malformed() {
    // Login up to ek_public, then an Option tag of 2 for ek_cert.
    let mut frame = login_head();
    frame.extend_from_slice(&[0x01, 0xaa, 0x02]);
    let err = decode::<Uplink>(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Malformed {
            offset: 7,
            error: postcard::Error::DeserializeBadOption
        }
    );
    assert!(err.to_string().contains("at byte 7"), "{err}");
}

#[test]
fn text_that_is_not_utf8_is_malformed() {
    let mut frame = encode_vec(&golden_challenge());
    // node "node-1" starts at 1 + 1 + 16 + 1 = 19; put an invalid UTF-8 byte in it.
    assert_eq!(&frame[19..25], b"node-1");
    frame[20] = 0xff;
    assert!(matches!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::Malformed {
            error: postcard::Error::SerdeDeCustom,
            ..
        }
    ));
}

#[test]
fn trailing_bytes() {
    let mut frame = golden("login");
    frame.extend_from_slice(&[0x00, 0x00, 0x00]);
    let err = decode::<Uplink>(&frame).unwrap_err();
    assert_eq!(err, DecodeError::Trailing { bytes: 3 });
    assert!(err.to_string().contains("3 trailing bytes"));

    let mut frame = golden("rejected");
    frame.push(0x01);
    assert_eq!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::Trailing { bytes: 1 }
    );
}

#[test]
fn oversize_frames_are_refused_unread() {
    // Starts like a valid Login, so only the length can make it fail.
    let mut frame = golden("login");
    frame.resize(UPLINK_FRAME_MAX + 1, 0);
    let err = decode::<Uplink>(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLong {
            len: UPLINK_FRAME_MAX + 1,
            limit: UPLINK_FRAME_MAX
        }
    );
    assert!(err.to_string().contains(&UPLINK_FRAME_MAX.to_string()));

    let mut frame = golden("challenge");
    frame.resize(DOWNLINK_FRAME_MAX + 1, 0);
    assert_eq!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::TooLong {
            len: DOWNLINK_FRAME_MAX + 1,
            limit: DOWNLINK_FRAME_MAX
        }
    );
    // A frame at the direction's limit is parsed (and here has trailing zeros).
    frame.truncate(DOWNLINK_FRAME_MAX);
    assert!(matches!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::Trailing { .. }
    ));
}

#[test]
fn byte_field_over_limit() {
    // ek_public declares TPM_PUBLIC_MAX + 1 bytes and carries them all.
    let mut frame = login_head();
    varint(&mut frame, TPM_PUBLIC_MAX + 1);
    let offset = frame.len();
    frame.resize(frame.len() + TPM_PUBLIC_MAX + 1, 0xab);
    let err = decode::<Uplink>(&frame).unwrap_err();
    assert_eq!(err, DecodeError::FieldTooLong { offset });
    assert!(err.to_string().contains("longer than its protocol limit"));
    assert_eq!(err.reject_code(), RejectCode::Malformed);

    // The same field at exactly its limit is accepted (the frame then ends early).
    let mut frame = login_head();
    varint(&mut frame, TPM_PUBLIC_MAX);
    frame.resize(frame.len() + TPM_PUBLIC_MAX, 0xab);
    assert!(matches!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::Malformed {
            error: postcard::Error::DeserializeUnexpectedEnd,
            ..
        }
    ));
}

#[test]
fn declared_length_beyond_the_frame() {
    // Over the limit and beyond the frame: postcard gives no length hint, so the field is
    // read up to its limit; with nothing there the frame is truncated...
    let mut frame = login_head();
    varint(&mut frame, 1 << 30);
    let offset = frame.len();
    assert_eq!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::Malformed {
            offset,
            error: postcard::Error::DeserializeUnexpectedEnd
        }
    );
    // ...and with more than the limit there, it stops one element past the limit.
    frame.resize(offset + TPM_PUBLIC_MAX + 100, 0xab);
    assert_eq!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::FieldTooLong {
            offset: offset + TPM_PUBLIC_MAX + 1
        }
    );
}

#[test]
fn optional_field_over_limit() {
    let mut frame = login_head();
    frame.extend_from_slice(&[0x01, 0xaa, 0x01]); // ek_public, ek_cert: Some
    varint(&mut frame, EK_CERT_MAX + 1);
    let offset = frame.len();
    frame.resize(frame.len() + EK_CERT_MAX + 1, 0x30);
    assert_eq!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::FieldTooLong { offset }
    );
}

#[test]
fn list_over_limit() {
    let mut frame = vec![VERSION, 0x00];
    varint(&mut frame, METHODS_MAX + 1);
    frame.extend(std::iter::repeat_n(0x00, METHODS_MAX + 1));
    assert_eq!(
        decode::<Uplink>(&frame).unwrap_err(),
        DecodeError::FieldTooLong { offset: 3 }
    );

    // Accepted with ATTRIBUTES_MAX + 1 attributes.
    let mut frame = vec![VERSION, 0x01, 0x00, 0x00]; // Result, Accepted, empty SPIFFE ID
    varint(&mut frame, ATTRIBUTES_MAX + 1);
    let offset = frame.len();
    for _ in 0..=ATTRIBUTES_MAX {
        frame.extend_from_slice(&[0x00, 0x01, b'x']);
    }
    assert_eq!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::FieldTooLong { offset }
    );
}

#[test]
fn text_field_over_limit() {
    // Challenge whose node id is NODE_ID_MAX + 1 ASCII bytes.
    let mut frame = vec![VERSION, 0x00];
    frame.extend_from_slice(&[0u8; 16]);
    varint(&mut frame, NODE_ID_MAX + 1);
    let offset = frame.len();
    frame.extend(std::iter::repeat_n(b'n', NODE_ID_MAX + 1));
    assert_eq!(
        decode::<Downlink>(&frame).unwrap_err(),
        DecodeError::FieldTooLong { offset }
    );
}

#[test]
fn a_login_frame_is_not_a_downlink() {
    let frame = golden("login");
    assert!(decode::<Downlink>(&frame).is_err());
    let frame = golden("challenge");
    assert!(decode::<Uplink>(&frame).is_err());
}

fn encode_vec(msg: &Downlink) -> Vec<u8> {
    let mut buf = vec![0u8; FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

#[test]
fn encode_into_small_buffer() {
    let msg = golden_login();
    let needed = golden("login").len();
    for capacity in [0, 1, 2, needed - 1] {
        let mut buf = vec![0u8; capacity];
        let err = encode(&msg, &mut buf).unwrap_err();
        assert_eq!(err, EncodeError::BufferTooSmall { capacity, needed });
        assert!(err.to_string().contains(&format!("needs {needed} bytes")));
    }
    let mut buf = vec![0u8; needed];
    assert_eq!(encode(&msg, &mut buf).unwrap().len(), needed);
}

#[test]
fn errors_are_std_errors() {
    fn takes(_: &dyn std::error::Error) {}
    takes(&DecodeError::Empty);
    takes(&EncodeError::BufferTooSmall {
        capacity: 0,
        needed: 1,
    });
    let err = DecodeError::Malformed {
        offset: 1,
        error: postcard::Error::DeserializeBadVarint,
    };
    assert!(std::error::Error::source(&err).is_some());
}
