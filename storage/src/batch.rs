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
/// KIP-534: `baseTimestamp` holds the time after which the batch's tombstones may be
/// removed by compaction (set by the first compaction that kept them).
const DELETE_HORIZON_MASK: i16 = 0x40;

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

    /// KIP-534's delete horizon: when set, `baseTimestamp` is the time from which
    /// compaction may remove the batch's tombstones.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & DELETE_HORIZON_MASK != 0).then_some(self.base_timestamp)
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

/// Encodes a whole batch: `header`'s fields (its `batch_length` and `crc` are ignored
/// and computed) followed by `records`, the records section as stored (compressed
/// or not).
pub fn encode_batch(header: &BatchHeader, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_BATCH_HEADER_BYTES + records.len());
    out.extend_from_slice(&header.base_offset.to_be_bytes());
    let batch_length = (RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32;
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    out.push(RECORD_BATCH_MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&header.attributes.to_be_bytes());
    out.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&header.base_timestamp.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&header.records_count.to_be_bytes());
    debug_assert_eq!(out.len(), RECORD_BATCH_HEADER_BYTES);
    out.extend_from_slice(records);
    let crc = compute_crc(&out);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// `attributes` with the compression codec replaced by `codec`.
pub fn with_compression(attributes: i16, codec: u8) -> i16 {
    (attributes & !COMPRESSION_MASK) | (i16::from(codec) & COMPRESSION_MASK)
}

/// `attributes` with KIP-534's delete-horizon flag set.
pub fn with_delete_horizon(attributes: i16) -> i16 {
    attributes | DELETE_HORIZON_MASK
}

/// `attributes` for a batch whose records are all gone but whose header is kept:
/// uncompressed, no delete horizon (Kafka's `writeEmptyHeader`).
pub fn empty_batch_attributes(attributes: i16) -> i16 {
    attributes & !(COMPRESSION_MASK | DELETE_HORIZON_MASK)
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
/// `TooLarge`, `CorruptCrc`, `InvalidRecordCount`, `InvalidOffsetDelta`, `InvalidCompression`,
/// checked in that order.
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
    // The CRC first, as Kafka checks it: damaged bytes are CORRUPT_MESSAGE (retriable)
    // even where the damage also makes a field below invalid.
    let actual = compute_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::CorruptCrc {
            expected: header.crc,
            actual,
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

/// Most bytes a varint (zigzag `int32`) takes, as Kafka reads it.
const MAX_VARINT_BYTES: usize = 5;
/// Most bytes a varlong (zigzag `int64`) takes.
const MAX_VARLONG_BYTES: usize = 10;

/// Why a batch's records do not frame the way its header and their own length
/// fields say (Kafka: INVALID_RECORD).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("record {index}: {reason}")]
pub struct RecordFramingError {
    /// Position of the record in the batch (the count, if the bytes run out first).
    pub index: i64,
    /// What is wrong.
    pub reason: &'static str,
}

/// The fields of one record that locate it: its offset and timestamp deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// Offset of the record minus the batch's `baseOffset`.
    pub offset_delta: i32,
    /// Timestamp of the record minus the batch's `baseTimestamp`.
    pub timestamp_delta: i64,
}

/// Reads an unsigned LEB128 value of at most `max_bytes` bytes from `buf` at `*pos`.
fn read_unsigned_leb128(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Option<u64> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let v = zigzag(read_unsigned_leb128(buf, pos, MAX_VARINT_BYTES)?);
    i32::try_from(v).ok()
}

pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    Some(zigzag(read_unsigned_leb128(buf, pos, MAX_VARLONG_BYTES)?))
}

/// Skips a length-prefixed field of `len` bytes (negative: null) inside `body`.
pub(crate) fn skip(body: &[u8], pos: &mut usize, len: i32) -> Option<()> {
    if len < 0 {
        return Some(());
    }
    let end = pos.checked_add(len as usize)?;
    if end > body.len() {
        return None;
    }
    *pos = end;
    Some(())
}

/// Parses one record body (everything after its length varint).
fn parse_record_body(body: &[u8]) -> Result<RecordPosition, &'static str> {
    let mut pos = 1; // attributes
    if body.is_empty() {
        return Err("record body is empty");
    }
    let timestamp_delta = read_varlong(body, &mut pos).ok_or("bad timestamp delta")?;
    let offset_delta = read_varint(body, &mut pos).ok_or("bad offset delta")?;
    let key_len = read_varint(body, &mut pos).ok_or("bad key length")?;
    skip(body, &mut pos, key_len).ok_or("key runs past the record")?;
    let value_len = read_varint(body, &mut pos).ok_or("bad value length")?;
    skip(body, &mut pos, value_len).ok_or("value runs past the record")?;
    let headers = read_varint(body, &mut pos).ok_or("bad header count")?;
    if headers < 0 {
        return Err("negative header count");
    }
    for _ in 0..headers {
        // Each header takes at least two bytes, so a count past the body fails here
        // after at most body.len() / 2 rounds.
        let key_len = read_varint(body, &mut pos).ok_or("bad header key length")?;
        if key_len < 0 {
            return Err("negative header key length");
        }
        skip(body, &mut pos, key_len).ok_or("header key runs past the record")?;
        let value_len = read_varint(body, &mut pos).ok_or("bad header value length")?;
        skip(body, &mut pos, value_len).ok_or("header value runs past the record")?;
    }
    if pos != body.len() {
        return Err("record length disagrees with its fields");
    }
    Ok(RecordPosition {
        offset_delta,
        timestamp_delta,
    })
}

/// Walks the uncompressed records that follow a batch header (`records` is the batch
/// from byte 61 on, or a compressed batch's records once decompressed), checking the
/// framing Kafka checks when it reads them: exactly `count` records, each as long as
/// its length varint says, no negative header counts or header key lengths, and no
/// bytes after the last record. `visit` sees each record in order and returns `false`
/// to stop early (the rest is then not checked).
///
/// Nothing is allocated: lengths and counts from the bytes only ever bound loops over
/// the bytes themselves.
///
/// # Errors
/// The first framing problem found.
pub fn walk_records(
    records: &[u8],
    count: i32,
    mut visit: impl FnMut(RecordPosition) -> bool,
) -> Result<(), RecordFramingError> {
    let mut pos = 0;
    let mut index: i64 = 0;
    let fail = |index, reason| Err(RecordFramingError { index, reason });
    while index < i64::from(count) {
        if pos >= records.len() {
            return fail(index, "fewer records than the batch header counts");
        }
        let Some(len) = read_varint(records, &mut pos) else {
            return fail(index, "bad record length");
        };
        let Some(end) = usize::try_from(len).ok().and_then(|l| pos.checked_add(l)) else {
            return fail(index, "negative record length");
        };
        if end > records.len() {
            return fail(index, "record runs past the batch");
        }
        match parse_record_body(&records[pos..end]) {
            Ok(position) => {
                if !visit(position) {
                    return Ok(());
                }
            }
            Err(reason) => return fail(index, reason),
        }
        pos = end;
        index += 1;
    }
    if pos != records.len() {
        return fail(index, "bytes after the last record the header counts");
    }
    Ok(())
}

/// Checks the records of an uncompressed batch (`batch` is the whole batch, header
/// included) against its header and returns their largest timestamp; compressed
/// batches are not looked into (`None`).
///
/// # Errors
/// See [`walk_records`].
pub fn validate_uncompressed_records(
    header: &BatchHeader,
    batch: &[u8],
) -> Result<Option<i64>, RecordFramingError> {
    if header.compression() != 0 || batch.len() < RECORD_BATCH_HEADER_BYTES {
        return Ok(None);
    }
    let mut max_delta = i64::MIN;
    walk_records(
        &batch[RECORD_BATCH_HEADER_BYTES..],
        header.records_count,
        |record| {
            max_delta = max_delta.max(record.timestamp_delta);
            true
        },
    )?;
    Ok((max_delta != i64::MIN).then(|| header.base_timestamp.saturating_add(max_delta)))
}

/// Overwrites `maxTimestamp` and recomputes the CRC (it covers the timestamps).
///
/// # Panics
/// If `batch` is shorter than a header.
pub fn set_max_timestamp(batch: &mut [u8], max_timestamp: i64) {
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
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

    fn records_of(batch: &[u8]) -> Result<Vec<RecordPosition>, RecordFramingError> {
        let h = BatchHeader::parse(batch).expect("header");
        let mut seen = Vec::new();
        walk_records(&batch[RECORD_BATCH_HEADER_BYTES..], h.records_count, |r| {
            seen.push(r);
            true
        })?;
        Ok(seen)
    }

    fn reseal(batch: &mut [u8]) {
        let len = (batch.len() - LOG_OVERHEAD_BYTES) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = compute_crc(batch);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn the_records_of_a_built_batch_walk_cleanly() {
        let bytes = BatchBuilder::new(5, 33).timestamp(100).build();
        let seen = records_of(&bytes).unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(
            seen[3],
            RecordPosition {
                offset_delta: 3,
                timestamp_delta: 3
            }
        );
        let h = BatchHeader::parse(&bytes).unwrap();
        assert!(validate_uncompressed_records(&h, &bytes).is_ok());
        // Stopping early visits only what was asked for.
        let mut visited = 0;
        walk_records(&bytes[RECORD_BATCH_HEADER_BYTES..], 5, |_| {
            visited += 1;
            visited < 2
        })
        .unwrap();
        assert_eq!(visited, 2);
    }

    #[test]
    fn a_record_count_that_disagrees_with_the_records_is_refused() {
        let mut more = BatchBuilder::new(2, 4).build();
        more[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4]
            .copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            records_of(&more).unwrap_err().reason,
            "fewer records than the batch header counts"
        );
        let mut fewer = BatchBuilder::new(2, 4).build();
        fewer[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4].copy_from_slice(&1i32.to_be_bytes());
        assert_eq!(
            records_of(&fewer).unwrap_err().reason,
            "bytes after the last record the header counts"
        );
    }

    #[test]
    fn lengths_and_counts_inside_a_record_must_fit_it() {
        // One record: [len 14][attr][ts 0][off 0][key -1][value 8][8 bytes][headers 0].
        let good = BatchBuilder::new(1, 8).build();
        assert_eq!(good.len(), RECORD_BATCH_HEADER_BYTES + 15);
        let last = good.len() - 1;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A header count of 2^30: no allocation, just a short walk to the end.
            (
                {
                    let mut b = good.clone();
                    b[last] = 0x80;
                    b.extend_from_slice(&[0x80, 0x80, 0x80, 0x08]);
                    b[RECORD_BATCH_HEADER_BYTES] += 8;
                    b
                },
                "bad header key length",
            ),
            // Header count -1.
            (
                {
                    let mut b = good.clone();
                    b[last] = 1;
                    b
                },
                "negative header count",
            ),
            // Value length 100 in a 14-byte record.
            (
                {
                    let mut b = good.clone();
                    b[RECORD_BATCH_HEADER_BYTES + 5] = 200;
                    b
                },
                "value runs past the record",
            ),
            // Record length 40 in a 15-byte remainder.
            (
                {
                    let mut b = good.clone();
                    b[RECORD_BATCH_HEADER_BYTES] = 80;
                    b
                },
                "record runs past the batch",
            ),
            // Record length -1.
            (
                {
                    let mut b = good.clone();
                    b[RECORD_BATCH_HEADER_BYTES] = 1;
                    b
                },
                "negative record length",
            ),
            // A varint of six bytes.
            (
                {
                    let mut b = good.clone();
                    b.truncate(RECORD_BATCH_HEADER_BYTES);
                    b.extend_from_slice(&[0xff; 6]);
                    b
                },
                "bad record length",
            ),
        ];
        for (mut batch, reason) in cases {
            reseal(&mut batch);
            assert_eq!(records_of(&batch).unwrap_err().reason, reason);
        }
    }

    #[test]
    fn compressed_batches_are_not_looked_into() {
        let mut b = BatchBuilder::new(1, 8).build();
        b[ATTRIBUTES_OFFSET + 1] |= 4; // zstd: the record bytes are not a record walk
        b[RECORD_BATCH_HEADER_BYTES] = 1;
        let h = BatchHeader::parse(&b).unwrap();
        assert!(validate_uncompressed_records(&h, &b).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn walking_arbitrary_record_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            count in proptest::num::i32::ANY,
        ) {
            let _ = walk_records(&bytes, count, |_| true);
        }
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
