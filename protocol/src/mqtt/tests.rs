use super::*;
use proptest::prelude::*;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

const MAX: usize = 20_000;

fn connect(c: &Connect<'_>) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    let n = encode_connect(c, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn connect_matches_the_specification_layout() {
    // MQTT 3.1.1 section 3.1: "MQTT", level 4, clean session, keepalive, then the payload.
    let bytes = connect(&Connect {
        client_id: "ek-1",
        keep_alive: 30,
        username: None,
        password: None,
    });
    assert_eq!(
        bytes,
        [
            0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 4, b'e', b'k', b'-', b'1'
        ]
    );
    let with_login = connect(&Connect {
        client_id: "a",
        keep_alive: 0x0102,
        username: Some("u"),
        password: Some(b"pw"),
    });
    assert_eq!(
        with_login,
        [
            0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 1, 2, 0, 1, b'a', 0, 1, b'u', 0, 2,
            b'p', b'w'
        ]
    );
    // A password without a user name is not sent (3.1.2.9: it would be a protocol error).
    let no_user = connect(&Connect {
        client_id: "a",
        keep_alive: 1,
        username: None,
        password: Some(b"pw"),
    });
    assert_eq!(no_user[9], 0x02);
    assert_eq!(no_user.len(), 15);
}

#[test]
fn subscribe_and_publish_layouts() {
    let mut out = [0u8; 64];
    let n = encode_subscribe(7, "a/b", &mut out).unwrap();
    assert_eq!(out[..n], [0x82, 8, 0, 7, 0, 3, b'a', b'/', b'b', 1]);
    let n = encode_publish(0x0203, "t", b"xyz", &mut out).unwrap();
    assert_eq!(out[..n], [0x32, 8, 0, 1, b't', 2, 3, b'x', b'y', b'z']);
    assert_eq!(publish_len("t", b"xyz"), n);
    assert_eq!(puback(0x0102), [0x40, 2, 1, 2]);
}

#[test]
fn encoders_refuse_a_small_buffer_without_writing_past_it() {
    let mut out = [0u8; 9];
    assert_eq!(
        encode_publish(1, "topic", b"payload", &mut out),
        Err(Error::BufferTooSmall { needed: 18 })
    );
    assert_eq!(
        encode_subscribe(1, "a/very/long/topic", &mut out),
        Err(Error::BufferTooSmall { needed: 24 })
    );
    let long = "x".repeat(70_000);
    let mut big = vec![0u8; 80_000];
    assert!(matches!(
        encode_subscribe(1, &long, &mut big),
        Err(Error::TooLarge { len: 70_000, .. })
    ));
}

#[test]
fn remaining_lengths_use_one_to_four_bytes() {
    for (len, bytes) in [
        (0usize, &[0x00][..]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xff, 0xff, 0x7f]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (REMAINING_MAX, &[0xff, 0xff, 0xff, 0x7f]),
    ] {
        let mut out = [0u8; 4];
        let n = put_remaining(len, &mut out);
        assert_eq!(&out[..n], bytes, "{len}");
        let mut packet = vec![0x30];
        packet.extend_from_slice(bytes);
        assert_eq!(
            header(&packet, usize::MAX),
            Ok(Some((0x30, len, 1 + n))),
            "{len}"
        );
    }
    assert_eq!(
        header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
        Err(Error::Malformed("remaining length longer than four bytes"))
    );
}

#[test]
fn a_packet_over_the_limit_is_refused_from_its_header_alone() {
    // Only the header has arrived: the decoder must not wait for 2 MB to refuse it.
    assert_eq!(
        decode(&[0x30, 0x80, 0x80, 0x80, 0x01], MAX),
        Err(Error::TooLarge {
            len: 2_097_152,
            max: MAX
        })
    );
}

#[test]
fn every_prefix_of_a_packet_asks_for_more() {
    let mut out = [0u8; 64];
    let n = encode_publish(9, "a/b", b"hello", &mut out).unwrap();
    // Our own QoS 1 PUBLISH decodes as one (the broker sends the same layout).
    let whole = &out[..n];
    for cut in 0..n {
        assert_eq!(decode(&whole[..cut], MAX), Ok(None), "cut at {cut}");
    }
    let mut two = whole.to_vec();
    two.extend_from_slice(&[0xd0, 0]);
    let (p, used) = decode(&two, MAX).unwrap().unwrap();
    assert_eq!(used, n);
    assert_eq!(
        p,
        Packet::Publish(Publish {
            topic: "a/b",
            packet_id: Some(9),
            payload: b"hello"
        })
    );
    assert_eq!(decode(&two[used..], MAX), Ok(Some((Packet::PingResp, 2))));
}

#[test]
fn broker_packets_decode() {
    let cases: [(&[u8], Packet<'_>); 7] = [
        (
            &[0x20, 2, 0, 0],
            Packet::ConnAck {
                session_present: false,
                code: ConnectCode::ACCEPTED,
            },
        ),
        (
            &[0x20, 2, 0, 5],
            Packet::ConnAck {
                session_present: false,
                code: ConnectCode(5),
            },
        ),
        (
            &[0x90, 3, 0, 1, 0x80],
            Packet::SubAck {
                packet_id: 1,
                codes: &[0x80],
            },
        ),
        (&[0x40, 2, 1, 0], Packet::PubAck { packet_id: 256 }),
        (&[0xb0, 2, 0, 3], Packet::UnsubAck { packet_id: 3 }),
        (&[0xd0, 0], Packet::PingResp),
        (
            &[0x30, 4, 0, 1, b't', b'!'],
            Packet::Publish(Publish {
                topic: "t",
                packet_id: None,
                payload: b"!",
            }),
        ),
    ];
    for (bytes, packet) in cases {
        assert_eq!(
            decode(bytes, MAX),
            Ok(Some((packet, bytes.len()))),
            "{bytes:x?}"
        );
    }
    assert_eq!(ConnectCode(5).to_string(), "not authorized (return code 5)");
    assert_eq!(
        ConnectCode(4).to_string(),
        "bad user name or password (return code 4)"
    );
}

#[test]
fn malformed_and_unexpected_packets_are_errors() {
    for bytes in [
        &[0x20, 3, 0, 0, 0][..],      // CONNACK too long
        &[0x21, 2, 0, 0],             // CONNACK flags
        &[0x20, 2, 2, 0],             // CONNACK reserved bit
        &[0x30, 3, 0, 5, b't'],       // topic longer than the packet
        &[0x30, 3, 0, 1, 0xff],       // topic not UTF-8
        &[0x32, 3, 0, 1, b't'],       // QoS 1 without packet id
        &[0x36, 5, 0, 1, b't', 0, 1], // QoS 3
        &[0x40, 3, 0, 1, 0],          // long PUBACK
        &[0x90, 2, 0, 1],             // SUBACK without codes
        &[0x90, 3, 0, 1, 7],          // SUBACK code 7
        &[0xd0, 1, 0],                // PINGRESP with a body
    ] {
        assert!(
            matches!(decode(bytes, MAX), Err(Error::Malformed(_))),
            "{bytes:x?}: {:?}",
            decode(bytes, MAX)
        );
    }
    for (bytes, kind) in [
        (&[0x34, 5, 0, 1, b't', 0, 1][..], 3), // QoS 2 PUBLISH: never subscribed at QoS 2
        (&[0x10, 0], 1),                       // CONNECT
        (&[0x50, 2, 0, 1], 5),                 // PUBREC
        (&[0x82, 0], 8),                       // SUBSCRIBE
        (&[0xc0, 0], 12),                      // PINGREQ
        (&[0xf0, 0], 15),                      // reserved
        (&[0x00, 0], 0),                       // reserved
    ] {
        assert_eq!(
            decode(bytes, MAX),
            Err(Error::Unexpected { kind }),
            "{bytes:x?}"
        );
    }
}

proptest! {
    #[test]
    fn publish_round_trips(
        id in any::<u16>(),
        topic in "[a-z0-9/_-]{0,64}",
        payload in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut out = vec![0u8; publish_len(&topic, &payload)];
        let n = encode_publish(id, &topic, &payload, &mut out).unwrap();
        prop_assert_eq!(n, out.len());
        let (p, used) = decode(&out, MAX).unwrap().unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(p, Packet::Publish(Publish { topic: &topic, packet_id: Some(id), payload: &payload }));
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((_, used))) = decode(&bytes, 48) {
            prop_assert!(used <= bytes.len());
        }
    }
}
