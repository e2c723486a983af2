//! MQTT 3.1.1 fixed headers, just enough for the fault proxy to cut a byte stream into
//! packets and find a PUBLISH payload: packet type, flags, and the "remaining length"
//! variable byte integer (1 to 4 bytes, at most 268,435,455).
//!
//! Input comes from the network: nothing here panics, and a packet is only allocated after
//! its announced size was checked against the caller's bound. It never interprets anything
//! beyond the fixed header and the PUBLISH topic length.

use std::io::{self, Read};
use std::ops::Range;

use ekattest_protocol::mqtt;

/// Largest packet the proxy forwards by default (the harness's mosquitto allows 16 KiB).
pub const MAX_PACKET: usize = 256 * 1024;
/// Packet type of PUBLISH.
pub const PUBLISH: u8 = 3;
/// Largest value of the remaining length field (4 bytes of 7 bits).
pub const MAX_REMAINING: usize = mqtt::REMAINING_MAX;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type (high nibble of the first byte): 1 CONNECT ... 3 PUBLISH ... 14 DISCONNECT.
    pub packet_type: u8,
    /// Flags (low nibble of the first byte); for PUBLISH: DUP, QoS (2 bits), RETAIN.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining: usize,
    /// Bytes of the fixed header itself (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Whole packet size: fixed header plus remaining length.
    pub fn total_len(&self) -> usize {
        self.header_len.saturating_add(self.remaining)
    }

    /// Whether this is a PUBLISH.
    pub fn is_publish(&self) -> bool {
        self.packet_type == PUBLISH
    }
}

/// Why a byte stream is not a sequence of acceptable MQTT packets.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The remaining length has a continuation bit on its fourth byte.
    #[error("malformed MQTT packet: the remaining length field is longer than 4 bytes")]
    MalformedLength,
    /// The packet is bigger than the proxy forwards.
    #[error("MQTT packet of {size} bytes is bigger than the proxy's limit of {max} bytes")]
    Oversize {
        /// Announced packet size (fixed header included).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection in the middle of a packet.
    #[error("the connection closed in the middle of an MQTT packet")]
    Truncated,
    /// Reading from the socket failed.
    #[error("reading an MQTT packet failed: {0}")]
    Io(#[from] io::Error),
}

/// Parses the fixed header at the start of `buf`. `Ok(None)`: `buf` ends before the header
/// does (read more). Checks the whole packet size against `max`.
///
/// # Errors
/// [`FrameError::MalformedLength`] or [`FrameError::Oversize`].
pub fn parse_fixed_header(buf: &[u8], max: usize) -> Result<Option<FixedHeader>, FrameError> {
    // The agent's codec reads the header (any size: the proxy's limit is on the whole packet).
    let (first, remaining, header_len) = match mqtt::header(buf, usize::MAX) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::MalformedLength),
    };
    let h = FixedHeader {
        packet_type: first >> 4,
        flags: first & 0x0F,
        remaining,
        header_len,
    };
    if h.total_len() > max {
        return Err(FrameError::Oversize {
            size: h.total_len(),
            max,
        });
    }
    Ok(Some(h))
}

/// Appends the remaining-length encoding of `n` (`n <= MAX_REMAINING`; larger values are
/// clamped to it).
pub fn encode_remaining_length(n: usize, out: &mut Vec<u8>) {
    let mut bytes = [0u8; 4];
    let len = mqtt::put_remaining(n.min(MAX_REMAINING), &mut bytes);
    out.extend_from_slice(bytes.get(..len).unwrap_or_default());
}

/// Reads one whole packet (fixed header included). `Ok(None)`: the peer closed the
/// connection cleanly between packets.
///
/// # Errors
/// As [`parse_fixed_header`], [`FrameError::Truncated`] on a close inside a packet,
/// [`FrameError::Io`] when the socket fails.
pub fn read_packet<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut head = [0u8; 5];
    let mut got = 0usize;
    let header = loop {
        let Some(slot) = head.get_mut(got..=got) else {
            return Err(FrameError::MalformedLength);
        };
        match r.read(slot) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(_) => got += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
        if got >= 2
            && let Some(h) = parse_fixed_header(head.get(..got).unwrap_or(&[]), max)?
        {
            break h;
        }
    };
    let mut packet = Vec::with_capacity(header.total_len());
    packet.extend_from_slice(head.get(..header.header_len).unwrap_or(&[]));
    packet.resize(header.total_len(), 0);
    if let Some(body) = packet.get_mut(header.header_len..) {
        r.read_exact(body).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    }
    Ok(Some(packet))
}

/// The byte range of a PUBLISH packet's application payload (after the topic and, for QoS
/// 1 and 2, the packet identifier). `None` if `packet` is not a well-formed PUBLISH.
pub fn publish_payload_range(packet: &[u8]) -> Option<Range<usize>> {
    let h = parse_fixed_header(packet, usize::MAX).ok().flatten()?;
    if !h.is_publish() || packet.len() != h.total_len() {
        return None;
    }
    let topic_len_at = h.header_len;
    let hi = *packet.get(topic_len_at)?;
    let lo = *packet.get(topic_len_at + 1)?;
    let topic_len = usize::from(u16::from_be_bytes([hi, lo]));
    let qos = (h.flags >> 1) & 0x03;
    let id_len = if qos > 0 { 2 } else { 0 };
    let start = topic_len_at + 2 + topic_len + id_len;
    (start <= packet.len()).then_some(start..packet.len())
}

/// The topic of a well-formed PUBLISH packet (`None` if it is not one or the topic is not
/// UTF-8).
pub fn publish_topic(packet: &[u8]) -> Option<&str> {
    let h = parse_fixed_header(packet, usize::MAX).ok().flatten()?;
    if !h.is_publish() || packet.len() != h.total_len() {
        return None;
    }
    let at = h.header_len;
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    std::str::from_utf8(packet.get(at + 2..at + 2 + topic_len)?).ok()
}

/// The same PUBLISH packet (first byte, topic, packet identifier) with `payload` as its
/// application payload and the remaining length recomputed. `None` if `packet` is not a
/// well-formed PUBLISH or the new packet would be larger than MQTT allows.
pub fn with_payload(packet: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let h = parse_fixed_header(packet, usize::MAX).ok().flatten()?;
    let range = publish_payload_range(packet)?;
    let variable = packet.get(h.header_len..range.start)?;
    let remaining = variable.len().checked_add(payload.len())?;
    if remaining > MAX_REMAINING {
        return None;
    }
    let mut out = Vec::with_capacity(remaining + 5);
    out.push(*packet.first()?);
    encode_remaining_length(remaining, &mut out);
    out.extend_from_slice(variable);
    out.extend_from_slice(payload);
    Some(out)
}

/// QoS (0, 1 or 2) and packet identifier (QoS 1 and 2) of a well-formed PUBLISH packet.
pub fn publish_qos_and_id(packet: &[u8]) -> Option<(u8, Option<u16>)> {
    let h = parse_fixed_header(packet, usize::MAX).ok().flatten()?;
    if !h.is_publish() || packet.len() != h.total_len() {
        return None;
    }
    let qos = (h.flags >> 1) & 0x03;
    let at = h.header_len;
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    if qos == 0 {
        return Some((0, None));
    }
    let id_at = at + 2 + topic_len;
    let id = u16::from_be_bytes([*packet.get(id_at)?, *packet.get(id_at + 1)?]);
    Some((qos, Some(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_remaining_length(n, &mut v);
        v
    }

    #[test]
    fn a_replaced_payload_keeps_topic_and_packet_id() {
        // QoS 1 PUBLISH, topic "a/b", packet id 7, payload "hi".
        let packet = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, b'h', b'i',
        ];
        assert_eq!(publish_topic(&packet), Some("a/b"));
        let longer = vec![0x5a; 200];
        let out = with_payload(&packet, &longer).unwrap();
        assert_eq!(publish_topic(&out), Some("a/b"));
        assert_eq!(publish_qos_and_id(&out), Some((1, Some(7))));
        assert_eq!(
            &out[publish_payload_range(&out).unwrap()],
            longer.as_slice()
        );
        let h = parse_fixed_header(&out, usize::MAX).unwrap().unwrap();
        assert_eq!(h.total_len(), out.len());
        assert_eq!(with_payload(&[0xC0, 0x00], b"x"), None);
        assert_eq!(publish_topic(&[0xC0, 0x00]), None);
    }

    #[test]
    fn varint_edges() {
        for (n, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_REMAINING, 4),
        ] {
            let mut buf = vec![0x30];
            buf.extend(varint(n));
            assert_eq!(buf.len(), 1 + len, "{n}");
            let h = parse_fixed_header(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!((h.remaining, h.header_len), (n, 1 + len), "{n}");
            assert!(h.is_publish());
        }
        assert_eq!(varint(127), [0x7F]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(MAX_REMAINING), [0xFF, 0xFF, 0xFF, 0x7F]);
    }

    #[test]
    fn five_byte_length_is_malformed() {
        let buf = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert!(matches!(
            parse_fixed_header(&buf, usize::MAX),
            Err(FrameError::MalformedLength)
        ));
        let mut r = &buf[..];
        assert!(matches!(
            read_packet(&mut r, usize::MAX),
            Err(FrameError::MalformedLength)
        ));
    }

    #[test]
    fn oversize_is_refused_before_allocation() {
        let mut buf = vec![0x30];
        buf.extend(varint(MAX_REMAINING));
        let mut r = &buf[..];
        match read_packet(&mut r, MAX_PACKET) {
            Err(FrameError::Oversize { size, max }) => {
                assert_eq!((size, max), (MAX_REMAINING + 5, MAX_PACKET));
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine.
        let mut ok = vec![0xC0];
        ok.extend(varint(8));
        ok.extend([0u8; 8]);
        let mut r = &ok[..];
        assert_eq!(read_packet(&mut r, 10).unwrap().unwrap(), ok);
        let mut r = &ok[..];
        assert!(matches!(
            read_packet(&mut r, 9),
            Err(FrameError::Oversize { size: 10, max: 9 })
        ));
    }

    #[test]
    fn truncated_and_clean_eof() {
        assert_eq!(parse_fixed_header(&[], 100).unwrap(), None);
        assert_eq!(parse_fixed_header(&[0x30], 100).unwrap(), None);
        assert_eq!(parse_fixed_header(&[0x30, 0x80], 100).unwrap(), None);
        let mut empty: &[u8] = &[];
        assert!(read_packet(&mut empty, 100).unwrap().is_none());
        for cut in [&[0x30u8][..], &[0x30, 0x80], &[0x30, 0x05, 1, 2]] {
            let mut r = cut;
            assert!(
                matches!(read_packet(&mut r, 100), Err(FrameError::Truncated)),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn reads_consecutive_packets() {
        // PINGREQ, then a QoS 1 PUBLISH "a/b" id 7 payload "hi", then DISCONNECT.
        let publish = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, b'h', b'i',
        ];
        let mut stream = vec![0xC0, 0x00];
        stream.extend(publish);
        stream.extend([0xE0, 0x00]);
        let mut r = &stream[..];
        assert_eq!(read_packet(&mut r, 100).unwrap().unwrap(), [0xC0, 0x00]);
        let p = read_packet(&mut r, 100).unwrap().unwrap();
        assert_eq!(p, publish);
        assert_eq!(publish_payload_range(&p), Some(9..11));
        assert_eq!(publish_qos_and_id(&p), Some((1, Some(7))));
        assert_eq!(read_packet(&mut r, 100).unwrap().unwrap(), [0xE0, 0x00]);
        assert!(read_packet(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn payload_range_qos0_and_malformed() {
        let qos0 = [0x30, 0x05, 0x00, 0x01, b't', b'x', b'y'];
        assert_eq!(publish_payload_range(&qos0), Some(5..7));
        assert_eq!(publish_qos_and_id(&qos0), Some((0, None)));
        assert_eq!(publish_qos_and_id(&[0x32, 0x03, 0x00, 0x01, b't']), None);
        let empty_payload = [0x30, 0x03, 0x00, 0x01, b't'];
        assert_eq!(publish_payload_range(&empty_payload), Some(5..5));
        // Topic length beyond the packet.
        assert_eq!(publish_payload_range(&[0x30, 0x03, 0x00, 0x09, b't']), None);
        // Not a PUBLISH, or a length that does not match.
        assert_eq!(publish_payload_range(&[0xC0, 0x00]), None);
        assert_eq!(publish_payload_range(&[0x30, 0x05, 0x00, 0x01]), None);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_and_respects_the_bound(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
                if let Ok(Some(h)) = parse_fixed_header(&bytes, max) {
                    prop_assert!(h.total_len() <= max);
                    prop_assert!((2..=5).contains(&h.header_len));
                }
                let mut r = &bytes[..];
                while let Ok(Some(p)) = read_packet(&mut r, max) {
                    prop_assert!(p.len() <= max);
                    let _ = publish_payload_range(&p);
                    let _ = publish_qos_and_id(&p);
                }
            }

            #[test]
            fn varint_round_trip(n in 0usize..=MAX_REMAINING) {
                let mut buf = vec![0x30];
                encode_remaining_length(n, &mut buf);
                let h = parse_fixed_header(&buf, usize::MAX).unwrap().unwrap();
                prop_assert_eq!(h.remaining, n);
                prop_assert_eq!(h.header_len, buf.len());
            }
        }
    }
}
