//! Encoding a response without copying its record data: the `kafka-protocol` encoder
//! writes into a [`SegmentedBuf`], which copies the small fields as usual but, when the
//! encoder puts a byte slice that *is* one of the given shared buffers (the same memory,
//! compared by address and length), keeps a reference to that buffer instead. The
//! frame goes out as a list of pieces with one vectored write.
//!
//! A Fetch response is mostly record batches read from segment files; without this,
//! each byte is copied once more into the response buffer before the socket copies it.

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Encodable, HeaderVersion};

use super::RequestContext;

/// Slices at least this long that are one of the shared buffers are referenced, not
/// copied; below it a copy is cheaper than another piece in the write.
pub const SHARE_MIN_BYTES: usize = 4 * 1024;

/// An output buffer made of owned pieces (what the encoder wrote) and shared pieces
/// (buffers it put whole that the caller listed).
pub struct SegmentedBuf<'a> {
    done: Vec<Bytes>,
    done_len: usize,
    current: BytesMut,
    shared: &'a [Bytes],
    /// Index into `shared` where the next match is expected (the encoder writes them
    /// in order); any other entry is still found.
    next_shared: usize,
}

impl<'a> SegmentedBuf<'a> {
    /// An empty buffer expecting about `owned_capacity` bytes of its own.
    pub fn new(owned_capacity: usize, shared: &'a [Bytes]) -> Self {
        Self {
            done: Vec::with_capacity(2 * shared.len() + 1),
            done_len: 0,
            current: BytesMut::with_capacity(owned_capacity),
            shared,
            next_shared: 0,
        }
    }

    /// The pieces, in order.
    pub fn into_pieces(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.freeze());
        }
        self.done
    }

    fn find_shared(&mut self, src: &[u8]) -> Option<Bytes> {
        let is = |b: &Bytes| b.as_ptr() == src.as_ptr() && b.len() == src.len();
        let n = self.shared.len();
        let found = (0..n)
            .map(|i| (self.next_shared + i) % n)
            .find(|&i| is(&self.shared[i]))?;
        self.next_shared = found + 1;
        Some(self.shared[found].clone())
    }

    /// Merges every piece back into one owned buffer: only needed if the encoder
    /// seeks back into bytes already handed over (message encoders never do).
    fn coalesce(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let mut all = BytesMut::with_capacity(self.done_len + self.current.len());
        for piece in self.done.drain(..) {
            all.extend_from_slice(&piece);
        }
        all.extend_from_slice(&self.current);
        self.current = all;
        self.done_len = 0;
    }
}

// SAFETY: every method delegates to the `BytesMut` holding the owned bytes, which
// upholds `BufMut`'s contract; `put_slice` only adds whole pieces in between.
unsafe impl BufMut for SegmentedBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded with the caller's guarantee that `cnt` bytes of the chunk
        // returned by `chunk_mut` (the `BytesMut`'s) were initialised.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SHARE_MIN_BYTES {
            if let Some(piece) = self.find_shared(src) {
                if !self.current.is_empty() {
                    let owned = self.current.split().freeze();
                    self.done_len += owned.len();
                    self.done.push(owned);
                }
                self.done_len += piece.len();
                self.done.push(piece);
                return;
            }
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for SegmentedBuf<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        if offset < self.done_len {
            self.coalesce();
        }
        self.current.resize(offset - self.done_len, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        if r.start < self.done_len {
            self.coalesce();
        }
        let base = self.done_len;
        &mut self.current[r.start - base..r.end - base]
    }
}

/// Encodes a response frame (size, header, body) as pieces, referencing rather than
/// copying any of `shared` that the body puts whole (see the module docs).
///
/// # Errors
/// As [`super::encode_response`]: the encoder refuses a field set the version cannot
/// carry.
pub fn encode_response_sharing<R: Encodable + HeaderVersion>(
    ctx: &RequestContext,
    body: &R,
    shared: &[Bytes],
) -> anyhow::Result<Vec<Bytes>> {
    let header_version = R::header_version(ctx.api_version);
    let header = ResponseHeader::default().with_correlation_id(ctx.correlation_id);
    let size = header.compute_size(header_version)? + body.compute_size(ctx.api_version)?;
    let shared_bytes: usize = shared.iter().map(Bytes::len).sum();
    let mut buf = SegmentedBuf::new((4 + size).saturating_sub(shared_bytes), shared);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, ctx.api_version)?;
    anyhow::ensure!(
        buf.offset() == 4 + size,
        "encoded {} bytes, computed {}",
        buf.offset(),
        4 + size
    );
    Ok(buf.into_pieces())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{ApiKey, FetchResponse};

    fn ctx(version: i16) -> RequestContext {
        RequestContext {
            api_key: ApiKey::Fetch,
            api_version: version,
            correlation_id: 7,
            client_id: String::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn response(records: &[Bytes], version: i16) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(100)
                    .with_records(Some(r.clone()))
            })
            .collect();
        let topic = FetchableTopicResponse::default().with_partitions(partitions);
        let topic = if version >= 13 {
            topic.with_topic_id(uuid::Uuid::from_u128(1))
        } else {
            topic.with_topic(kafka_protocol::messages::TopicName(
                kafka_protocol::protocol::StrBytes::from_static_str("t"),
            ))
        };
        FetchResponse::default()
            .with_session_id(if version >= 7 { 3 } else { 0 })
            .with_responses(vec![topic])
    }

    #[test]
    fn pieces_join_to_the_plain_encoding_and_share_the_record_buffers() {
        let big: Vec<Bytes> = (0..3u8)
            .map(|i| Bytes::from(vec![i; SHARE_MIN_BYTES * (i as usize + 1)]))
            .collect();
        let small = Bytes::from(vec![9u8; 10]);
        let mut all = big.clone();
        all.insert(1, small.clone());
        for version in [4, 12, 16] {
            let resp = response(&all, version);
            let plain = super::super::encode_response(&ctx(version), &resp).unwrap();
            let pieces = encode_response_sharing(&ctx(version), &resp, &all).unwrap();
            let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, plain.to_vec(), "v{version}");
            for b in &big {
                assert!(
                    pieces.iter().any(|p| p.as_ptr() == b.as_ptr()),
                    "v{version}: a big record buffer was copied"
                );
            }
            assert!(!pieces.iter().any(|p| p.as_ptr() == small.as_ptr()));
        }
    }

    #[test]
    fn equal_bytes_elsewhere_are_copied_not_mistaken_for_a_shared_buffer() {
        let shared = Bytes::from(vec![1u8; SHARE_MIN_BYTES]);
        let lookalike = Bytes::from(vec![1u8; SHARE_MIN_BYTES]);
        let resp = response(std::slice::from_ref(&lookalike), 16);
        let pieces =
            encode_response_sharing(&ctx(16), &resp, std::slice::from_ref(&shared)).unwrap();
        assert_eq!(pieces.len(), 1);
        assert!(pieces.iter().all(|p| p.as_ptr() != shared.as_ptr()));
    }

    #[test]
    fn seeking_back_into_shared_bytes_merges_the_pieces() {
        let shared = Bytes::from(vec![5u8; SHARE_MIN_BYTES]);
        let mut buf = SegmentedBuf::new(16, std::slice::from_ref(&shared));
        buf.put_u8(1);
        buf.put_slice(&shared);
        buf.put_u8(2);
        buf.range(0..2).copy_from_slice(&[7, 8]);
        let joined: Vec<u8> = buf.into_pieces().concat();
        assert_eq!(joined.len(), SHARE_MIN_BYTES + 2);
        assert_eq!(&joined[..3], &[7, 8, 5]);
        assert_eq!(joined[SHARE_MIN_BYTES + 1], 2);
    }
}
