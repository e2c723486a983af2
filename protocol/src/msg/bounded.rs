//! Serde adapters for the bounded `heapless` fields of the messages.
//!
//! On the wire these are postcard's plain encodings (a length varint, then the bytes or
//! elements), identical to what `heapless`'s own serde impls write. They differ in two ways:
//! - byte fields are written with `serialize_bytes` (one copy instead of one call per byte);
//! - a length over the bound is refused before any element is read (or, when the declared
//!   length runs past the end of the frame and postcard gives no length hint, at the first
//!   element over the bound: never more than the bound is stored), and refused in a way
//!   [`decode`](super::decode) can tell apart from every other error: the visitor asks the
//!   deserializer for one more element through `deserialize_ignored_any`, which postcard
//!   answers with `Error::WontImplement`. Our schema never reaches that call otherwise (no
//!   `deserialize_any`, `deserialize_identifier` or ignored fields), so `decode` maps
//!   `WontImplement` to [`DecodeError::FieldTooLong`](crate::error::DecodeError::FieldTooLong).
//!   With other, self-describing formats the same path ends in an ordinary
//!   `invalid_length` error.
//!
//! Nothing here allocates: elements go straight into the `heapless` container.

use core::fmt;
use core::marker::PhantomData;

use heapless::{String, Vec};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// Asks for one element in a way postcard refuses with `WontImplement` (see the module doc).
struct OverLimit;

impl<'de> DeserializeSeed<'de> for OverLimit {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_ignored_any(IgnoredAny).map(|_| ())
    }
}

/// The error for a sequence of `len` elements where at most `limit` fit.
fn over_limit<'de, A: SeqAccess<'de>>(seq: &mut A, len: usize, limit: usize) -> A::Error {
    match seq.next_element_seed(OverLimit) {
        Err(error) => error,
        Ok(_) => de::Error::invalid_length(len, &Limit(limit)),
    }
}

/// `Expected` text for a bound.
struct Limit(usize);

impl de::Expected for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} elements", self.0)
    }
}

/// Reads a sequence into a `heapless::Vec`, refusing an over-long one up front.
struct SeqVisitor<T, const N: usize>(PhantomData<T>);

impl<'de, T: de::Deserialize<'de>, const N: usize> Visitor<'de> for SeqVisitor<T, N> {
    type Value = Vec<T, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {N} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if let Some(len) = seq.size_hint()
            && len > N
        {
            return Err(over_limit(&mut seq, len, N));
        }
        let mut out = Vec::new();
        while let Some(value) = seq.next_element()? {
            if out.push(value).is_err() {
                return Err(over_limit(&mut seq, N + 1, N));
            }
        }
        Ok(out)
    }
}

/// `heapless::Vec<u8, N>` as a byte string.
pub(crate) mod bytes {
    use super::{Deserializer, PhantomData, SeqVisitor, Serializer, Vec};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        value: &Vec<u8, N>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<Vec<u8, N>, D::Error> {
        deserializer.deserialize_seq(SeqVisitor::<u8, N>(PhantomData))
    }
}

/// `Option<heapless::Vec<u8, N>>` as an optional byte string.
pub(crate) mod opt_bytes {
    use super::{Deserializer, PhantomData, Serialize, Serializer, Vec, Visitor, de, fmt};

    struct AsBytes<'a, const N: usize>(&'a Vec<u8, N>);

    impl<const N: usize> Serialize for AsBytes<'_, N> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        value: &Option<Vec<u8, N>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(bytes) => serializer.serialize_some(&AsBytes(bytes)),
        }
    }

    struct OptVisitor<const N: usize>(PhantomData<Vec<u8, N>>);

    impl<'de, const N: usize> Visitor<'de> for OptVisitor<N> {
        type Value = Option<Vec<u8, N>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an optional byte string of at most {N} bytes")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            super::bytes::deserialize(deserializer).map(Some)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<Option<Vec<u8, N>>, D::Error> {
        deserializer.deserialize_option(OptVisitor::<N>(PhantomData))
    }
}

/// `heapless::Vec<T, N>` of any element type, as a sequence.
pub(crate) mod seq {
    use super::{Deserializer, PhantomData, SeqVisitor, Serialize, Serializer, Vec, de};

    pub(crate) fn serialize<S: Serializer, T: Serialize, const N: usize>(
        value: &Vec<T, N>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_slice().serialize(serializer)
    }

    pub(crate) fn deserialize<
        'de,
        D: Deserializer<'de>,
        T: de::Deserialize<'de>,
        const N: usize,
    >(
        deserializer: D,
    ) -> Result<Vec<T, N>, D::Error> {
        deserializer.deserialize_seq(SeqVisitor::<T, N>(PhantomData))
    }
}

/// `heapless::String<N>` as a string. Binary formats read it as a byte sequence, so the bound
/// is checked before the bytes are read, then the bytes are checked to be UTF-8.
pub(crate) mod string {
    use super::{Deserializer, PhantomData, SeqVisitor, Serializer, String, de};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        value: &String<N>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<String<N>, D::Error> {
        if deserializer.is_human_readable() {
            return <String<N> as de::Deserialize<'de>>::deserialize(deserializer);
        }
        let bytes = deserializer.deserialize_seq(SeqVisitor::<u8, N>(PhantomData))?;
        String::from_utf8(bytes).map_err(|_| {
            de::Error::invalid_value(
                de::Unexpected::Other("bytes that are not UTF-8"),
                &"UTF-8 text",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use heapless::{String, Vec};
    use serde::{Deserialize, Serialize};

    /// The same fields with `heapless`'s own serde impls.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        bytes: Vec<u8, 8>,
        opt: Option<Vec<u8, 8>>,
        list: Vec<u16, 3>,
        text: String<8>,
    }

    /// With this module's adapters.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Bounded {
        #[serde(with = "super::bytes")]
        bytes: Vec<u8, 8>,
        #[serde(with = "super::opt_bytes")]
        opt: Option<Vec<u8, 8>>,
        #[serde(with = "super::seq")]
        list: Vec<u16, 3>,
        #[serde(with = "super::string")]
        text: String<8>,
    }

    #[test]
    fn wire_format_equals_heapless_serde() {
        let plain = Plain {
            bytes: Vec::from_slice(&[1, 2, 3]).unwrap(),
            opt: Some(Vec::from_slice(&[0xff; 8]).unwrap()),
            list: Vec::from_slice(&[1, 300, 65535]).unwrap(),
            text: String::try_from("héllo").unwrap(),
        };
        let bounded = Bounded {
            bytes: plain.bytes.clone(),
            opt: plain.opt.clone(),
            list: plain.list.clone(),
            text: plain.text.clone(),
        };
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        let a = postcard::to_slice(&plain, &mut a).unwrap();
        let b = postcard::to_slice(&bounded, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::from_bytes::<Bounded>(a).unwrap(), bounded);
        assert_eq!(postcard::from_bytes::<Plain>(b).unwrap(), plain);
    }

    #[test]
    fn over_limit_is_wont_implement_and_plain_heapless_is_not() {
        // bytes: 9 of 8.
        let frame = [9u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            postcard::from_bytes::<Bounded>(&frame).unwrap_err(),
            postcard::Error::WontImplement
        );
        assert_eq!(
            postcard::from_bytes::<Plain>(&frame).unwrap_err(),
            postcard::Error::SerdeDeCustom
        );
    }
}
