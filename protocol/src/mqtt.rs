//! The MQTT 3.1.1 packets the agent speaks, and nothing more: CONNECT (clean session),
//! SUBSCRIBE with QoS 1, PUBLISH with QoS 1, PUBACK, PINGREQ and DISCONNECT out; CONNACK,
//! SUBACK, PUBLISH (QoS 0 or 1), PUBACK, UNSUBACK and PINGRESP in.
//!
//! Encoders write into a caller's buffer and return the length; [`decode`] reads one packet
//! from the front of a buffer without copying and says how many bytes it used, or that more
//! are needed. Every length is checked against the buffer and against the caller's limit
//! before anything is read, so a broker (or anyone on the path of a plaintext connection)
//! cannot make the decoder read past its input, allocate, or panic. A packet the agent never
//! asked for (QoS 2 flow, CONNECT, SUBSCRIBE) is [`Error::Unexpected`]: the caller drops the
//! connection.

use core::fmt;

/// MQTT 3.1.1 protocol level.
pub const PROTOCOL_LEVEL: u8 = 4;

/// The largest fixed header: one type byte and four remaining-length bytes.
pub const HEADER_MAX: usize = 5;

/// The largest remaining length MQTT can express (four variable-length bytes).
pub const REMAINING_MAX: usize = 268_435_455;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// Why a packet could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The packet's remaining length is over the caller's limit.
    TooLarge {
        /// The remaining length the header announced (or the encoder needed).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A malformed packet: what is wrong with it.
    Malformed(&'static str),
    /// A well-formed packet of a type the agent never expects from a broker.
    Unexpected {
        /// The packet type (upper four bits of the first byte).
        kind: u8,
    },
    /// The output buffer is too small for the packet (an encoder's caller bug).
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(
                f,
                "MQTT packet of {len} bytes is larger than the limit of {max} bytes"
            ),
            Self::Malformed(what) => write!(f, "malformed MQTT packet: {what}"),
            Self::Unexpected { kind } => {
                write!(f, "unexpected MQTT packet type {kind} from the broker")
            }
            Self::BufferTooSmall { needed } => {
                write!(f, "MQTT packet needs a {needed}-byte buffer")
            }
        }
    }
}

impl core::error::Error for Error {}

/// A CONNACK return code (MQTT 3.1.1 section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCode(pub u8);

impl ConnectCode {
    /// Connection accepted.
    pub const ACCEPTED: Self = Self(0);

    /// The specification's name of the code.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "connection accepted",
            1 => "unacceptable protocol version",
            2 => "client identifier rejected",
            3 => "server unavailable",
            4 => "bad user name or password",
            5 => "not authorized",
            _ => "reserved return code",
        }
    }
}

impl fmt::Display for ConnectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (return code {})", self.name(), self.0)
    }
}

/// A packet from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNACK.
    ConnAck {
        /// Whether the broker kept a session (never, with a clean session).
        session_present: bool,
        /// The return code.
        code: ConnectCode,
    },
    /// SUBACK: one return code per topic filter (0x80 is a refusal).
    SubAck {
        /// The SUBSCRIBE's packet identifier.
        packet_id: u16,
        /// Granted QoS per filter, or 0x80.
        codes: &'a [u8],
    },
    /// PUBLISH.
    Publish(Publish<'a>),
    /// PUBACK for one of our QoS 1 PUBLISHes.
    PubAck {
        /// Its packet identifier.
        packet_id: u16,
    },
    /// UNSUBACK (the agent never unsubscribes; tolerated).
    UnsubAck {
        /// Its packet identifier.
        packet_id: u16,
    },
    /// PINGRESP.
    PingResp,
}

/// A PUBLISH, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The topic name.
    pub topic: &'a str,
    /// The packet identifier (QoS 1 only).
    pub packet_id: Option<u16>,
    /// The message.
    pub payload: &'a [u8],
}

/// What the CONNECT says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The client identifier (the agent id).
    pub client_id: &'a str,
    /// Keepalive in seconds.
    pub keep_alive: u16,
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Password, if any (only with a user name).
    pub password: Option<&'a [u8]>,
}

/// Encodes a remaining length (the variable byte integer of the fixed header; values over
/// [`REMAINING_MAX`] are cut to their low 28 bits) into `out`; returns the bytes used (1..=4).
pub fn put_remaining(len: usize, out: &mut [u8; 4]) -> usize {
    let mut len = len;
    let mut n = 0;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out[n] = byte;
        n += 1;
        if len == 0 || n == 4 {
            return n;
        }
    }
}

/// Writes fields into a buffer, tracking the position; the first overflow is remembered.
struct Writer<'b> {
    out: &'b mut [u8],
    pos: usize,
    needed: usize,
}

impl<'b> Writer<'b> {
    fn new(out: &'b mut [u8]) -> Self {
        Self {
            out,
            pos: 0,
            needed: 0,
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        let end = self.pos + b.len();
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.copy_from_slice(b);
        }
        self.pos = end;
        self.needed = end;
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    /// A length-prefixed string or binary field.
    fn field(&mut self, b: &[u8]) -> Result<(), Error> {
        let len = u16::try_from(b.len()).map_err(|_| Error::TooLarge {
            len: b.len(),
            max: usize::from(u16::MAX),
        })?;
        self.u16(len);
        self.bytes(b);
        Ok(())
    }

    fn header(&mut self, first: u8, remaining: usize) -> Result<(), Error> {
        if remaining > REMAINING_MAX {
            return Err(Error::TooLarge {
                len: remaining,
                max: REMAINING_MAX,
            });
        }
        let mut len = [0u8; 4];
        let n = put_remaining(remaining, &mut len);
        self.bytes(&[first]);
        self.bytes(len.get(..n).unwrap_or_default());
        Ok(())
    }

    fn finish(self) -> Result<usize, Error> {
        if self.needed > self.out.len() {
            return Err(Error::BufferTooSmall {
                needed: self.needed,
            });
        }
        Ok(self.pos)
    }
}

fn field_len(b: &[u8]) -> usize {
    2 + b.len()
}

/// Encodes a CONNECT with a clean session.
///
/// # Errors
/// [`Error::TooLarge`] for a field over 65,535 bytes, [`Error::BufferTooSmall`].
pub fn encode_connect(c: &Connect<'_>, out: &mut [u8]) -> Result<usize, Error> {
    let mut flags = 0x02; // clean session
    let mut remaining = field_len(b"MQTT") + 1 + 1 + 2 + field_len(c.client_id.as_bytes());
    if let Some(user) = c.username {
        flags |= 0x80;
        remaining += field_len(user.as_bytes());
        if let Some(pw) = c.password {
            flags |= 0x40;
            remaining += field_len(pw);
        }
    }
    let mut w = Writer::new(out);
    w.header(CONNECT << 4, remaining)?;
    w.field(b"MQTT")?;
    w.bytes(&[PROTOCOL_LEVEL, flags]);
    w.u16(c.keep_alive);
    w.field(c.client_id.as_bytes())?;
    if let Some(user) = c.username {
        w.field(user.as_bytes())?;
        if let Some(pw) = c.password {
            w.field(pw)?;
        }
    }
    w.finish()
}

/// Encodes a SUBSCRIBE to one topic filter with maximum QoS 1.
///
/// # Errors
/// [`Error::TooLarge`], [`Error::BufferTooSmall`].
pub fn encode_subscribe(packet_id: u16, filter: &str, out: &mut [u8]) -> Result<usize, Error> {
    let mut w = Writer::new(out);
    w.header(
        (SUBSCRIBE << 4) | 0x02,
        2 + field_len(filter.as_bytes()) + 1,
    )?;
    w.u16(packet_id);
    w.field(filter.as_bytes())?;
    w.bytes(&[1]);
    w.finish()
}

/// The encoded size of a PUBLISH with QoS 1.
#[must_use]
pub fn publish_len(topic: &str, payload: &[u8]) -> usize {
    let remaining = field_len(topic.as_bytes()) + 2 + payload.len();
    let mut len = [0u8; 4];
    1 + put_remaining(remaining, &mut len) + remaining
}

/// Encodes a PUBLISH with QoS 1 (not retained, not a duplicate).
///
/// # Errors
/// [`Error::TooLarge`], [`Error::BufferTooSmall`].
pub fn encode_publish(
    packet_id: u16,
    topic: &str,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, Error> {
    let mut w = Writer::new(out);
    w.header(
        (PUBLISH << 4) | 0x02,
        field_len(topic.as_bytes()) + 2 + payload.len(),
    )?;
    w.field(topic.as_bytes())?;
    w.u16(packet_id);
    w.bytes(payload);
    w.finish()
}

/// A PUBACK.
#[must_use]
pub fn puback(packet_id: u16) -> [u8; 4] {
    let [hi, lo] = packet_id.to_be_bytes();
    [PUBACK << 4, 2, hi, lo]
}

/// A PINGREQ.
pub const PINGREQ_PACKET: [u8; 2] = [PINGREQ << 4, 0];

/// A DISCONNECT.
pub const DISCONNECT_PACKET: [u8; 2] = [DISCONNECT << 4, 0];

/// The fixed header at the front of `buf`: `(first byte, remaining length, header length)`,
/// or `None` if `buf` does not hold all of it yet.
///
/// # Errors
/// [`Error::Malformed`] for a remaining length of more than four bytes,
/// [`Error::TooLarge`] if it is over `max`.
pub fn header(buf: &[u8], max: usize) -> Result<Option<(u8, usize, usize)>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if len > max {
                return Err(Error::TooLarge { len, max });
            }
            return Ok(Some((first, len, 2 + i)));
        }
    }
    Err(Error::Malformed("remaining length longer than four bytes"))
}

/// A bounded reader over one packet's variable header and payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if n > self.rest.len() {
            return Err(Error::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ]))
    }

    fn exactly_empty(&self, what: &'static str) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed(what))
        }
    }
}

/// Decodes the packet at the front of `buf`: `Ok(None)` if `buf` does not hold all of it
/// yet, else the packet and the bytes it used. A remaining length over `max` is refused
/// before its bytes arrive.
///
/// # Errors
/// [`Error::TooLarge`], [`Error::Malformed`] (bad flags, short fields, a topic that is not
/// UTF-8, QoS 3), [`Error::Unexpected`] for packet types a client never receives or the
/// agent never asked for (QoS 2).
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Packet<'_>, usize)>, Error> {
    let Some((first, remaining, header_len)) = header(buf, max)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    let Some(body) = buf.get(header_len..total) else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0f;
    let mut r = Reader { rest: body };
    let packet = match kind {
        CONNACK => {
            if flags != 0 || remaining != 2 {
                return Err(Error::Malformed("CONNACK is not 2 bytes with flags 0"));
            }
            let b = r.take(2, "short CONNACK")?;
            let ack = b.first().copied().unwrap_or(0);
            if ack & 0xfe != 0 {
                return Err(Error::Malformed("CONNACK reserved bits set"));
            }
            Packet::ConnAck {
                session_present: ack & 1 == 1,
                code: ConnectCode(b.get(1).copied().unwrap_or(0)),
            }
        }
        PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            let topic_len = r.u16("PUBLISH without a topic length")?;
            let topic = r.take(
                usize::from(topic_len),
                "PUBLISH topic longer than the packet",
            )?;
            let topic = core::str::from_utf8(topic)
                .map_err(|_| Error::Malformed("PUBLISH topic is not UTF-8"))?;
            let packet_id = match qos {
                0 => None,
                1 => Some(r.u16("QoS 1 PUBLISH without a packet identifier")?),
                2 => return Err(Error::Unexpected { kind }),
                _ => return Err(Error::Malformed("PUBLISH with QoS 3")),
            };
            Packet::Publish(Publish {
                topic,
                packet_id,
                payload: r.rest,
            })
        }
        PUBACK | UNSUBACK => {
            if flags != 0 || remaining != 2 {
                return Err(Error::Malformed(
                    "PUBACK/UNSUBACK is not 2 bytes with flags 0",
                ));
            }
            let packet_id = r.u16("short PUBACK")?;
            r.exactly_empty("long PUBACK")?;
            if kind == PUBACK {
                Packet::PubAck { packet_id }
            } else {
                Packet::UnsubAck { packet_id }
            }
        }
        SUBACK => {
            if flags != 0 || remaining < 3 {
                return Err(Error::Malformed("SUBACK shorter than 3 bytes or flags set"));
            }
            let packet_id = r.u16("short SUBACK")?;
            if r.rest.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return Err(Error::Malformed("SUBACK return code not 0, 1, 2 or 0x80"));
            }
            Packet::SubAck {
                packet_id,
                codes: r.rest,
            }
        }
        PINGRESP => {
            if flags != 0 || remaining != 0 {
                return Err(Error::Malformed("PINGRESP with flags or a body"));
            }
            Packet::PingResp
        }
        _ => return Err(Error::Unexpected { kind }),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests;
