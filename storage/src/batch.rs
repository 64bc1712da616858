//! Kafka RecordBatch v2 headers: parsing, validation (framing, magic, CRC-32C, size) and
//! the in-place patches the leader applies (base offset, partition leader epoch,
//! LogAppendTime).
//!
//! This module owns the byte layout of a batch header and nothing else: it never decodes
//! individual records, so appends and reads stay proportional to the number of batches.

use thiserror::Error;

/// Bytes in a RecordBatch v2 header, up to and including `recordsCount`.
pub const RECORD_BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `partitionLeaderEpoch` that are not counted in `batchLength`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record batch format this log stores.
pub const RECORD_BATCH_MAGIC_V2: i8 = 2;
/// `producerId` of a batch written without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;
/// `baseSequence` of a batch written without idempotence.
pub const NO_SEQUENCE: i32 = -1;
/// `maxTimestamp` of a batch whose records carry no timestamp.
pub const NO_TIMESTAMP: i64 = -1;
/// Highest compression codec id Kafka defines (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
pub const MAX_COMPRESSION_CODEC: u8 = 4;

const BATCH_LENGTH_OFFSET: usize = 8;
const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
/// The CRC covers everything from `attributes` to the end of the batch.
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;
/// Smallest legal `batchLength`: a header with no records.
const MIN_BATCH_LENGTH: i32 = (RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;

/// How a batch's timestamps were assigned (`message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker when it appended the batch.
    LogAppendTime,
}

/// Why bytes are not a well-formed RecordBatch v2 sequence.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The buffer ends inside a batch.
    #[error("record batch truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// `batchLength` is smaller than a header.
    #[error("invalid record batch length {0}")]
    InvalidLength(i32),
    /// Not a v2 batch.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// Stored CRC does not match the bytes.
    #[error("record batch CRC mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    CorruptCrc {
        /// CRC stored in the batch.
        expected: u32,
        /// CRC computed over the batch.
        actual: u32,
    },
    /// Batch (including log overhead) larger than allowed.
    #[error("record batch of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Batch size in bytes including the 12-byte log overhead.
        size: usize,
        /// Largest allowed size.
        max: usize,
    },
    /// Negative `recordsCount`.
    #[error("invalid record count {0}")]
    InvalidRecordCount(i32),
    /// Negative `lastOffsetDelta`.
    #[error("invalid last offset delta {0}")]
    InvalidOffsetDelta(i32),
    /// Compression codec id Kafka does not define.
    #[error("invalid compression codec {0}")]
    InvalidCompression(u8),
}

/// The fixed 61-byte header of a RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch when the leader appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 once parsed.
    pub magic: i8,
    /// CRC-32C of everything from `attributes` on.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest record timestamp (or the append time under LogAppendTime).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

impl BatchHeader {
    /// Parses the header at the start of `buf` (which may hold more).
    ///
    /// # Errors
    /// `Truncated` if `buf` is shorter than a header, `InvalidLength` if `batchLength`
    /// is smaller than a header, `UnsupportedMagic` unless magic is 2.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < RECORD_BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: RECORD_BATCH_HEADER_BYTES,
                available: buf.len(),
            });
        }
        let batch_length = be_i32(buf, BATCH_LENGTH_OFFSET);
        let magic = buf[MAGIC_OFFSET] as i8;
        if magic != RECORD_BATCH_MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::InvalidLength(batch_length));
        }
        Ok(Self {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH_OFFSET),
            magic,
            crc: be_i32(buf, CRC_OFFSET) as u32,
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_OFFSET),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(buf, BASE_SEQUENCE_OFFSET),
            records_count: be_i32(buf, RECORDS_COUNT_OFFSET),
        })
    }

    /// Size of the whole batch in bytes, log overhead included.
    pub fn total_bytes(&self) -> usize {
        // batch_length >= MIN_BATCH_LENGTH > 0 once parsed.
        self.batch_length.max(0) as usize + LOG_OVERHEAD_BYTES
    }

    /// Offset of the last record (or of the last offset the batch reserves).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset after the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Sequence of the last record; wraps past `i32::MAX` to 0 like Kafka's.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            return NO_SEQUENCE;
        }
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_MASK != 0
    }

    /// Whether the batch holds control records (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_MASK != 0
    }

    /// Whether an idempotent producer wrote the batch.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// How the batch's timestamps were assigned.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_MASK != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }
}

/// `sequence + increment`, wrapping past `i32::MAX` to 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// CRC-32C a v2 batch must carry: over everything from `attributes` to its end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET.min(batch.len())..])
}

/// Iterates `(header, batch bytes)` over a buffer of batches, checking framing but not CRCs.
///
/// Yields an error and then stops if the buffer is not a whole number of batches.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Byte position of the next batch in the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let total = header.total_bytes();
        if total > rest.len() {
            self.failed = true;
            return Some(Err(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            }));
        }
        self.pos += total;
        Some(Ok((header, &rest[..total])))
    }
}

/// Checks everything about one batch that does not depend on the log it goes into.
///
/// # Errors
/// `TooLarge`, `CorruptCrc`, `InvalidRecordCount`, `InvalidOffsetDelta`, `InvalidCompression`.
pub fn validate_batch(
    header: &BatchHeader,
    bytes: &[u8],
    max_batch_bytes: usize,
) -> Result<(), BatchError> {
    if bytes.len() > max_batch_bytes {
        return Err(BatchError::TooLarge {
            size: bytes.len(),
            max: max_batch_bytes,
        });
    }
    if header.records_count < 0 {
        return Err(BatchError::InvalidRecordCount(header.records_count));
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidOffsetDelta(header.last_offset_delta));
    }
    if header.compression() > MAX_COMPRESSION_CODEC {
        return Err(BatchError::InvalidCompression(header.compression()));
    }
    let actual = compute_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::CorruptCrc {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// Walks a buffer holding one or more batches and checks each one's framing, magic,
/// size (at most `max_batch_bytes`, log overhead included), CRC-32C, and that counts and
/// offset deltas are not negative.
///
/// Record-level rules that only apply to client writes (count matches the offset range,
/// no control batches) are the log's business, because followers and compacted
/// batches legitimately break them.
///
/// # Errors
/// The first problem found, as a [`BatchError`].
pub fn validate_batches(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    let mut headers = Vec::new();
    for item in BatchIter::new(buf) {
        let (header, bytes) = item?;
        validate_batch(&header, bytes, max_batch_bytes)?;
        headers.push(header);
    }
    Ok(headers)
}

/// Overwrites `baseOffset` (outside the CRC, so the CRC stays valid).
///
/// # Panics
/// If `batch` is shorter than a header; callers patch only validated batches.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites `partitionLeaderEpoch` (outside the CRC).
///
/// # Panics
/// If `batch` is shorter than a header.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// For `message.timestamp.type=LogAppendTime`: sets the timestamp-type bit and
/// `maxTimestamp` to `now_ms`, then recomputes the CRC.
///
/// Like Kafka, `baseTimestamp` is left alone: readers of a LogAppendTime batch take every
/// record's timestamp from `maxTimestamp`.
///
/// # Panics
/// If `batch` is shorter than a header.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_MASK;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BatchBuilder;

    const MAX: usize = 1 << 20;

    #[test]
    fn parses_a_built_batch() -> Result<(), BatchError> {
        let bytes = BatchBuilder::new(3, 10)
            .base_offset(42)
            .producer(7, 2, 100)
            .timestamp(1_000)
            .build();
        let headers = validate_batches(&bytes, MAX)?;
        assert_eq!(headers.len(), 1);
        let h = headers[0];
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.total_bytes(), bytes.len());
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset(), 44);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 2, 100)
        );
        assert_eq!(h.last_sequence(), 102);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
        assert!(!h.is_transactional() && !h.is_control());
        Ok(())
    }

    #[test]
    fn several_batches_in_one_buffer() -> Result<(), BatchError> {
        let mut buf = BatchBuilder::new(1, 5).build();
        buf.extend(BatchBuilder::new(4, 50).build());
        buf.extend(BatchBuilder::new(2, 0).build());
        let counts: Vec<i32> = validate_batches(&buf, MAX)?
            .iter()
            .map(|h| h.records_count)
            .collect();
        assert_eq!(counts, vec![1, 4, 2]);
        Ok(())
    }

    #[test]
    fn bad_crc_is_rejected() {
        let mut bytes = BatchBuilder::new(2, 10).build();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            validate_batches(&bytes, MAX),
            Err(BatchError::CorruptCrc { .. })
        ));
    }

    #[test]
    fn truncated_input_is_rejected() {
        let bytes = BatchBuilder::new(2, 10).build();
        for cut in [1, 11, 12, 60, bytes.len() - 1] {
            assert!(
                matches!(
                    validate_batches(&bytes[..cut], MAX),
                    Err(BatchError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_magic_length_and_size_are_rejected() {
        let good = BatchBuilder::new(2, 10).build();
        let mut bad_magic = good.clone();
        bad_magic[MAGIC_OFFSET] = 1;
        assert_eq!(
            validate_batches(&bad_magic, MAX),
            Err(BatchError::UnsupportedMagic(1))
        );
        let mut bad_len = good.clone();
        bad_len[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(
            validate_batches(&bad_len, MAX),
            Err(BatchError::InvalidLength(10))
        );
        assert!(matches!(
            validate_batches(&good, good.len() - 1),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(validate_batches(&good, good.len()).is_ok());
    }

    #[test]
    fn patches_outside_the_crc_keep_it_valid() -> Result<(), BatchError> {
        let mut bytes = BatchBuilder::new(2, 10).build();
        set_base_offset(&mut bytes, 1234);
        set_partition_leader_epoch(&mut bytes, 9);
        let h = validate_batches(&bytes, MAX)?[0];
        assert_eq!((h.base_offset, h.partition_leader_epoch), (1234, 9));
        Ok(())
    }

    #[test]
    fn log_append_time_sets_type_and_max_timestamp_and_crc() -> Result<(), BatchError> {
        let mut bytes = BatchBuilder::new(2, 10).timestamp(5).build();
        set_log_append_time(&mut bytes, 99_000);
        let h = validate_batches(&bytes, MAX)?[0];
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(h.max_timestamp, 99_000);
        assert_eq!(h.base_timestamp, 5);
        Ok(())
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 0), 5);
    }

    #[test]
    fn iterator_stops_after_a_framing_error() {
        let mut buf = BatchBuilder::new(1, 5).build();
        buf.extend_from_slice(&[0u8; 20]);
        let items: Vec<_> = BatchIter::new(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok() && items[1].is_err());
    }
}
