//! Fuzz target `mqtt_packet`: the agent's MQTT 3.1.1 decoder (`ekattest_protocol::mqtt`) on
//! arbitrary bytes from a broker, decoded packet after packet as the agent's session does.
//!
//! Invariants: a decoded packet never uses more bytes than the input holds, nor more than the
//! header it announced; every borrowed field (topic, payload, SUBACK codes) lies inside the
//! input; a refusal for size names a length over the limit; a packet the decoder accepts as
//! PUBLISH re-encodes (at QoS 1 with its packet identifier) to bytes that decode to the same
//! topic and payload; a prefix of an accepted packet is never accepted as a packet.
#![no_main]

use ekattest_protocol::mqtt::{self, Error, Packet};
use libfuzzer_sys::fuzz_target;

/// The agent's limit is about 19 KB; a small one makes the size checks reachable.
const MAX: usize = 512;

fn inside(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // At most as many packets as bytes: each uses at least two.
    while !rest.is_empty() {
        match mqtt::decode(rest, MAX) {
            Ok(None) => break,
            Ok(Some((packet, used))) => {
                assert!(used >= 2 && used <= rest.len(), "used {used} of {}", rest.len());
                let (_, remaining, header_len) = mqtt::header(rest, MAX)
                    .expect("a decoded packet has a valid header")
                    .expect("and all of it");
                assert_eq!(used, header_len + remaining);
                let whole = &rest[..used];
                for cut in [used - 1, header_len, 1] {
                    assert!(
                        !matches!(mqtt::decode(&whole[..cut.min(used - 1)], MAX), Ok(Some(_))),
                        "a prefix decoded as a packet"
                    );
                }
                match packet {
                    Packet::Publish(p) => {
                        assert!(inside(whole, p.topic.as_bytes()) && inside(whole, p.payload));
                        let mut out = vec![0u8; mqtt::publish_len(p.topic, p.payload)];
                        let id = p.packet_id.unwrap_or(1);
                        let n = mqtt::encode_publish(id, p.topic, p.payload, &mut out)
                            .expect("publish_len is the size encode_publish needs");
                        assert_eq!(n, out.len());
                        if let Ok(Some((Packet::Publish(q), m))) = mqtt::decode(&out, usize::MAX) {
                            assert_eq!(m, n);
                            assert_eq!((q.topic, q.payload, q.packet_id), (p.topic, p.payload, Some(id)));
                        } else {
                            panic!("a re-encoded PUBLISH does not decode");
                        }
                    }
                    Packet::SubAck { codes, .. } => {
                        assert!(inside(whole, codes) && !codes.is_empty());
                    }
                    Packet::ConnAck { .. }
                    | Packet::PubAck { .. }
                    | Packet::UnsubAck { .. }
                    | Packet::PingResp => {}
                }
                rest = &rest[used..];
            }
            Err(Error::TooLarge { len, max }) => {
                assert!(len > max && max == MAX);
                break;
            }
            Err(Error::BufferTooSmall { .. }) => panic!("the decoder never reports a buffer size"),
            Err(Error::Malformed(_) | Error::Unexpected { .. }) => break,
        }
    }
});
