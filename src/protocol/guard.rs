//! Decoding request bodies without trusting the counts in them.
//!
//! `kafka-protocol`'s decoders reserve `Vec::with_capacity(count)` as soon as they
//! read an array count, before they read a single element. The count comes from the
//! client: a 14-byte Metadata frame claiming 2³¹ topics makes the decoder ask for
//! hundreds of GiB, the allocation fails, and the process aborts. Every element of a
//! Kafka array takes at least one byte on the wire, so a count larger than the bytes
//! left in the frame is impossible; the codec just does not check it (upstream pull
//! requests to do so are open).
//!
//! [`decode_body`] therefore decodes twice. The first pass reads through a
//! [`ProbeBuf`], which sees every count before the codec uses it:
//!
//! - 32-bit values (array counts and byte lengths in non-flexible versions, and many
//!   ordinary fields) larger than the bytes left are lowered to one more than the bytes
//!   left. An ordinary field's value never changes how the rest of a Kafka message is
//!   laid out, so the probe walks the same path as the real decode; a count or length
//!   lowered this way still cannot be satisfied, so the probe fails. Reservations in
//!   the probe are thus bounded by the frame's size.
//! - Unsigned varints (counts, lengths and tags in flexible versions) are read one byte
//!   at a time, so the probe looks ahead at every single-byte read, decodes the varint
//!   starting there as the codec would, and refuses the frame if it exceeds the bytes
//!   left (plus one: compact encodings store count + 1) and
//!   [`UNCHECKED_VARINT_MAX`]. `Int8` fields are read by another method and never seen
//!   here; a boolean is 0 or 1, far below the threshold.
//!
//! Only when the probe succeeds — so every count in the frame fits the bytes after it
//! — does the real decode run, over the original bytes. What a request can make the
//! broker reserve is then bounded by the size of its frame, which
//! `socket.request.max.bytes` bounds.
//!
//! Deliberate differences from Apache Kafka, which decodes such frames: a boolean
//! encoded as a byte ≥ 0x80 followed by bytes that continue it into a varint above the
//! threshold, and an unknown tagged field numbered above the threshold and the bytes
//! left, are refused. No client writes either.

use bytes::{Buf, Bytes, TryGetError};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;

/// Varints up to this value are never refused, whatever the frame holds: a tagged
/// field's number is small but can exceed the bytes after it, and reserving this many
/// elements is harmless.
pub const UNCHECKED_VARINT_MAX: u64 = 1024;

/// Most bytes an unsigned varint takes in `kafka-protocol`'s decoder.
const MAX_UVARINT_BYTES: usize = 5;

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A count, length or tag in the frame claims more than the bytes left.
    #[error("a count or length of {value} with {left} bytes left in the frame")]
    ImpossibleCount {
        /// The value read.
        value: u64,
        /// Bytes left after it.
        left: usize,
    },
    /// The codec refused the body.
    #[error("{0}")]
    Codec(String),
}

/// Decodes a `T` at `version` from `buf`, refusing counts the frame cannot hold before
/// the codec reserves memory for them. On success `buf` is advanced past the body.
///
/// # Errors
/// [`DecodeError::ImpossibleCount`] or the codec's error.
pub fn decode_body<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, DecodeError> {
    let mut probe = ProbeBuf::new(buf.clone());
    if let Err(e) = T::decode(&mut probe, version) {
        return Err(probe
            .refusal
            .unwrap_or_else(|| DecodeError::Codec(e.to_string())));
    }
    T::decode(buf, version).map_err(|e| DecodeError::Codec(e.to_string()))
}

/// The buffer the probe decode reads through (see the module docs).
#[derive(Debug)]
pub struct ProbeBuf {
    inner: Bytes,
    /// The first count that could not fit, if any.
    refusal: Option<DecodeError>,
}

impl ProbeBuf {
    /// A probe over `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        ProbeBuf {
            inner: bytes,
            refusal: None,
        }
    }

    fn refuse(&mut self, value: u64, left: usize) -> TryGetError {
        if self.refusal.is_none() {
            self.refusal = Some(DecodeError::ImpossibleCount { value, left });
        }
        // The codec turns this into its "not enough bytes" error and stops.
        TryGetError {
            requested: usize::MAX,
            available: self.inner.remaining(),
        }
    }
}

/// The unsigned varint at the start of `bytes` as `kafka-protocol` decodes it (at most
/// five bytes, bits past 32 dropped), with its length; `None` if `bytes` ends inside it.
fn peek_uvarint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(MAX_UVARINT_BYTES).enumerate() {
        value |= (u32::from(b) & 0x7f) << (i * 7);
        if b < 0x80 || i + 1 == MAX_UVARINT_BYTES {
            return Some((value, i + 1));
        }
    }
    None
}

impl Buf for ProbeBuf {
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.inner.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.inner.advance(cnt)
    }

    fn try_get_i32(&mut self) -> Result<i32, TryGetError> {
        let value = self.inner.try_get_i32()?;
        let left = self.inner.remaining();
        if i64::from(value) > left as i64 {
            // One more than can be there: a count or length stays impossible, any
            // other field's value does not matter to the probe.
            return Ok(i32::try_from(left.saturating_add(1)).unwrap_or(i32::MAX));
        }
        Ok(value)
    }

    fn try_get_u8(&mut self) -> Result<u8, TryGetError> {
        if let Some((value, len)) = peek_uvarint(self.inner.chunk()) {
            let left = self.inner.remaining() - len;
            let value = u64::from(value);
            if value > UNCHECKED_VARINT_MAX && value > left as u64 + 1 {
                return Err(self.refuse(value, left));
            }
        }
        self.inner.try_get_u8()
    }
}

impl ByteBuf for ProbeBuf {
    fn peek_bytes(&mut self, r: std::ops::Range<usize>) -> Bytes {
        self.inner.slice(r)
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        self.inner.split_to(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encode<T: Encodable>(req: &T, version: i16) -> Bytes {
        let mut b = BytesMut::new();
        req.encode(&mut b, version).unwrap();
        b.freeze()
    }

    fn produce(partitions: usize) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(
                    (0..partitions)
                        .map(|i| {
                            PartitionProduceData::default()
                                .with_index(i as i32)
                                .with_records(Some(Bytes::from(vec![7u8; 300])))
                        })
                        .collect(),
                )])
    }

    #[test]
    fn valid_requests_decode_the_same_as_without_the_guard() {
        for version in [3, 8, 9, 11] {
            let req = produce(3);
            let mut bytes = encode(&req, version);
            let decoded: ProduceRequest = decode_body(&mut bytes, version).unwrap();
            assert_eq!(decoded, req, "Produce v{version}");
            assert!(bytes.is_empty());
        }
        let meta = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(
                StrBytes::from_static_str("a")
            )));
            40
        ]));
        for version in [0, 4, 9, 12] {
            let mut bytes = encode(&meta, version);
            let decoded: MetadataRequest = decode_body(&mut bytes, version).unwrap();
            assert_eq!(
                decoded.topics.map(|t| t.len()),
                Some(40),
                "Metadata v{version}"
            );
        }
        // Fields far larger than the frame (timeouts, byte limits) are not counts.
        let fetch = FetchRequest::default()
            .with_max_wait_ms(i32::MAX)
            .with_max_bytes(i32::MAX)
            .with_min_bytes(1 << 30)
            .with_session_id(i32::MAX);
        for version in [4, 11, 12, 16] {
            let mut bytes = encode(&fetch, version);
            let decoded: FetchRequest = decode_body(&mut bytes, version).unwrap();
            assert_eq!(decoded.max_wait_ms, i32::MAX, "Fetch v{version}");
            assert_eq!(decoded.min_bytes, 1 << 30);
        }
    }

    #[test]
    fn a_non_flexible_count_past_the_frame_is_refused_before_the_codec_reserves_it() {
        for count in [i32::MAX, 0x3fff_ffff, 1_000_000, 2] {
            let mut b = BytesMut::new();
            b.put_i32(count);
            b.put_u8(0);
            let err = decode_body::<MetadataRequest>(&mut b.freeze(), 0).unwrap_err();
            assert!(matches!(err, DecodeError::Codec(_)), "{count}: {err:?}");
        }
        // Nested: one topic whose partition count is huge.
        let mut b = BytesMut::new();
        b.put_i16(-1);
        b.put_i16(1);
        b.put_i32(1000);
        b.put_i32(1);
        b.put_i16(1);
        b.put_u8(b't');
        b.put_i32(i32::MAX);
        assert!(decode_body::<ProduceRequest>(&mut b.freeze(), 3).is_err());
    }

    #[test]
    fn a_compact_count_past_the_frame_is_refused_with_its_value() {
        let mut b = BytesMut::new();
        b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        b.put_slice(&[0, 0, 0]);
        let err = decode_body::<MetadataRequest>(&mut b.freeze(), 12).unwrap_err();
        assert_eq!(
            err,
            DecodeError::ImpossibleCount {
                value: u64::from(u32::MAX),
                left: 3
            }
        );
        // Up to the threshold the codec itself finds the elements missing.
        let mut b = BytesMut::new();
        b.put_u8(100);
        let err = decode_body::<MetadataRequest>(&mut b.freeze(), 12).unwrap_err();
        assert!(matches!(err, DecodeError::Codec(_)), "{err:?}");
    }

    #[test]
    fn varints_are_read_as_the_codec_reads_them() {
        assert_eq!(peek_uvarint(&[0]), Some((0, 1)));
        assert_eq!(peek_uvarint(&[0x7f, 0xff]), Some((127, 1)));
        assert_eq!(peek_uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(
            peek_uvarint(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Some((u32::MAX, 5))
        );
        // A fifth byte with its continuation bit set ends the varint anyway.
        assert_eq!(
            peek_uvarint(&[0x80, 0x80, 0x80, 0x80, 0x81, 0x01]),
            Some((1 << 28, 5))
        );
        assert_eq!(peek_uvarint(&[0x80, 0x80]), None);
        assert_eq!(peek_uvarint(&[]), None);
    }
}
