//! The records inside a RecordBatch v2, for the few places that must look at them:
//! compaction (keys, tombstones, rewriting) and the compacted-topic key check on append.
//!
//! A record is `length varint`, then `attributes i8, timestampDelta varlong, offsetDelta
//! varint, keyLength varint, key, valueLength varint, value, headerCount varint,
//! headers`. Views borrow the bytes; a rewrite copies each kept record verbatim except,
//! when the batch's base timestamp changes, its timestamp delta.

use crate::batch::{
    read_varint, read_varlong, skip, BatchHeader, RecordFramingError, RECORD_BATCH_HEADER_BYTES,
};
use crate::codec::{self, CodecError};

/// One record of a batch, borrowed from the (inflated) records section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record from its length varint to its last header.
    pub bytes: &'a [u8],
    /// Where the timestamp delta starts in `bytes`.
    timestamp_at: usize,
    /// Where the offset delta starts in `bytes` (the timestamp delta ends here).
    offset_at: usize,
    /// Timestamp minus the batch's `baseTimestamp`.
    pub timestamp_delta: i64,
    /// Offset minus the batch's `baseOffset`.
    pub offset_delta: i32,
    /// The key; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value; `None` for a null value.
    pub value: Option<&'a [u8]>,
    /// Whether the value is null: a tombstone.
    pub is_tombstone: bool,
}

impl<'a> RecordView<'a> {
    /// The record's bytes after its timestamp delta (offset delta to the end).
    fn after_timestamp(&self) -> &'a [u8] {
        &self.bytes[self.offset_at..]
    }

    /// The record's attributes byte.
    fn attributes(&self) -> u8 {
        self.bytes[self.timestamp_at - 1]
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a zigzag varlong (Kafka's varint and varlong share this encoding).
pub(crate) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Parses one record starting at `records[*pos]` and advances `*pos` past it.
fn parse_one<'a>(records: &'a [u8], pos: &mut usize) -> Result<RecordView<'a>, &'static str> {
    let start = *pos;
    let len = read_varint(records, pos).ok_or("bad record length")?;
    let len = usize::try_from(len).map_err(|_| "negative record length")?;
    let body_start = *pos;
    let end = body_start
        .checked_add(len)
        .filter(|&e| e <= records.len())
        .ok_or("record runs past the batch")?;
    let body = &records[..end];
    let mut p = body_start;
    if p >= end {
        return Err("record body is empty");
    }
    p += 1; // attributes
    let timestamp_at = p - start;
    let timestamp_delta = read_varlong(body, &mut p).ok_or("bad timestamp delta")?;
    let offset_at = p - start;
    let offset_delta = read_varint(body, &mut p).ok_or("bad offset delta")?;
    let key_len = read_varint(body, &mut p).ok_or("bad key length")?;
    let key_start = p;
    skip(body, &mut p, key_len).ok_or("key runs past the record")?;
    let key = (key_len >= 0).then(|| &body[key_start..p]);
    let value_len = read_varint(body, &mut p).ok_or("bad value length")?;
    let value_start = p;
    skip(body, &mut p, value_len).ok_or("value runs past the record")?;
    let value = (value_len >= 0).then(|| &body[value_start..p]);
    let headers = read_varint(body, &mut p).ok_or("bad header count")?;
    if headers < 0 {
        return Err("negative header count");
    }
    for _ in 0..headers {
        let key_len = read_varint(body, &mut p).ok_or("bad header key length")?;
        if key_len < 0 {
            return Err("negative header key length");
        }
        skip(body, &mut p, key_len).ok_or("header key runs past the record")?;
        let value_len = read_varint(body, &mut p).ok_or("bad header value length")?;
        skip(body, &mut p, value_len).ok_or("header value runs past the record")?;
    }
    if p != end {
        return Err("record length disagrees with its fields");
    }
    *pos = end;
    Ok(RecordView {
        bytes: &records[start..end],
        timestamp_at,
        offset_at,
        timestamp_delta,
        offset_delta,
        key,
        value,
        is_tombstone: value_len < 0,
    })
}

/// Parses the `count` records of an uncompressed records section. The result grows
/// with the records actually present, never with `count`.
///
/// # Errors
/// The first framing problem, as [`crate::batch::walk_records`] reports it.
pub fn parse_records(
    records: &[u8],
    count: i32,
) -> Result<Vec<RecordView<'_>>, RecordFramingError> {
    let mut out = Vec::new();
    let mut pos = 0;
    for index in 0..i64::from(count.max(0)) {
        if pos >= records.len() {
            return Err(RecordFramingError {
                index,
                reason: "fewer records than the batch header counts",
            });
        }
        out.push(
            parse_one(records, &mut pos).map_err(|reason| RecordFramingError { index, reason })?,
        );
    }
    if pos != records.len() {
        return Err(RecordFramingError {
            index: i64::from(count),
            reason: "bytes after the last record the header counts",
        });
    }
    Ok(out)
}

/// Appends `record` to `out` with its timestamp delta replaced by `timestamp_delta`.
pub fn encode_with_timestamp_delta(
    out: &mut Vec<u8>,
    record: &RecordView<'_>,
    timestamp_delta: i64,
) {
    let mut body = Vec::with_capacity(record.bytes.len() + 4);
    body.push(record.attributes());
    put_varlong(&mut body, timestamp_delta);
    body.extend_from_slice(record.after_timestamp());
    put_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Why a batch's records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The compressed records do not inflate (or inflate past the bound).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The records do not frame as the header counts them.
    #[error("record framing: {0}")]
    Framing(#[from] RecordFramingError),
}

/// The records section of `batch` (a whole batch, header included), inflated if
/// compressed (at most `max_inflated_bytes`).
///
/// # Errors
/// See [`RecordsError`].
pub fn inflate_records<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
    max_inflated_bytes: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, RecordsError> {
    let section = batch.get(RECORD_BATCH_HEADER_BYTES..).unwrap_or_default();
    Ok(match header.compression() {
        0 => std::borrow::Cow::Borrowed(section),
        c => std::borrow::Cow::Owned(codec::decompress(c, section, max_inflated_bytes)?),
    })
}

/// The largest timestamp among the records of `batch` (inflated if compressed, at most
/// `max_inflated_bytes`); `None` if it has no records.
///
/// # Errors
/// See [`RecordsError`].
pub fn records_max_timestamp(
    header: &BatchHeader,
    batch: &[u8],
    max_inflated_bytes: usize,
) -> Result<Option<i64>, RecordsError> {
    let section = inflate_records(header, batch, max_inflated_bytes)?;
    let records = parse_records(&section, header.records_count)?;
    Ok(records
        .iter()
        .map(|r| header.base_timestamp.saturating_add(r.timestamp_delta))
        .max())
}

/// Checks that every record of a data batch has a key (a compacted topic refuses
/// records without one: Kafka's "Compacted topic cannot accept message without key").
/// Control batches are not looked into.
///
/// # Errors
/// A description of the first problem: a keyless record, or records that cannot be read.
pub fn check_keys(
    header: &BatchHeader,
    batch: &[u8],
    max_inflated_bytes: usize,
) -> Result<(), String> {
    if header.is_control() {
        return Ok(());
    }
    let section = inflate_records(header, batch, max_inflated_bytes).map_err(|e| e.to_string())?;
    let records = parse_records(&section, header.records_count).map_err(|e| e.to_string())?;
    match records.iter().position(|r| r.key.is_none()) {
        Some(i) => Err(format!(
            "compacted topic cannot accept a record without a key (record {i} of the batch)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{BatchBuilder, TestRecord};

    #[test]
    fn views_expose_keys_tombstones_and_deltas() {
        let batch = BatchBuilder::keyed(vec![
            TestRecord::value(b"k1", b"v1"),
            TestRecord::tombstone(b"k2"),
            TestRecord::unkeyed(b"v3"),
        ])
        .timestamp(1000)
        .build();
        let h = BatchHeader::parse(&batch).unwrap();
        let section = inflate_records(&h, &batch, usize::MAX).unwrap();
        let records = parse_records(&section, h.records_count).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key, Some(&b"k1"[..]));
        assert!(!records[0].is_tombstone);
        assert!(records[1].is_tombstone);
        assert_eq!(records[2].key, None);
        assert_eq!(records[2].offset_delta, 2);
        assert_eq!(records[2].timestamp_delta, 2);
        assert!(check_keys(&h, &batch, usize::MAX).is_err());
    }

    #[test]
    fn a_new_timestamp_delta_keeps_every_other_field() {
        let batch = BatchBuilder::keyed(vec![TestRecord::value(b"key", b"value")]).build();
        let h = BatchHeader::parse(&batch).unwrap();
        let records = parse_records(&batch[RECORD_BATCH_HEADER_BYTES..], 1).unwrap();
        let mut out = Vec::new();
        encode_with_timestamp_delta(&mut out, &records[0], -123_456_789);
        let again = parse_records(&out, 1).unwrap();
        assert_eq!(again[0].timestamp_delta, -123_456_789);
        assert_eq!(again[0].key, records[0].key);
        assert_eq!(again[0].offset_delta, records[0].offset_delta);
        assert_eq!(again[0].is_tombstone, records[0].is_tombstone);
        assert!(check_keys(&h, &batch, usize::MAX).is_ok());
    }

    #[test]
    fn compressed_batches_are_inflated_for_the_key_check() {
        for codec in [1, 2, 3, 4] {
            let batch = BatchBuilder::keyed(vec![
                TestRecord::value(b"a", b"1"),
                TestRecord::unkeyed(b"2"),
            ])
            .compression(codec)
            .build();
            let h = BatchHeader::parse(&batch).unwrap();
            assert_eq!(h.compression(), codec);
            let err = check_keys(&h, &batch, usize::MAX).unwrap_err();
            assert!(err.contains("without a key"), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_record_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            count in -2i32..50,
        ) {
            let _ = parse_records(&bytes, count);
        }
    }
}
