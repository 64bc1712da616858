//! What compaction does to one batch: a pure function of the batch, the offset map and
//! the clock.
//!
//! A record is kept unless a later record with the same key is in the map, it has no
//! key (Kafka's cleaner drops those too), or it is a tombstone whose batch's delete
//! horizon (KIP-534) has passed. A batch keeps its base offset, last offset delta,
//! producer id, epoch and base sequence and partition leader epoch; it is rewritten only
//! if records go or its tombstones need a horizon:
//!
//! - records count, CRC and lengths are recomputed; compressed records are inflated and
//!   deflated again with the same codec;
//! - the first compaction that keeps a tombstone sets the batch's delete horizon to
//!   `now + delete.retention.ms`: the horizon flag (attribute bit 6) and the base
//!   timestamp holding it, each kept record's timestamp delta re-encoded against it
//!   (every record keeps its timestamp); later compactions remove the tombstones once
//!   the horizon has passed;
//! - `maxTimestamp` becomes the largest kept record's (the append time under
//!   LogAppendTime);
//! - a batch left without records is dropped, unless it is the last batch its producer
//!   has in the log: then its header stays, uncompressed and without records (Kafka
//!   does the same), so the producer's sequence and epoch survive a restart.
//!
//! Control batches, and transactional batches (whose fate depends on transaction
//! markers keel does not yet interpret for compaction), are left as they are.

use std::collections::HashSet;

use crate::batch::{
    empty_batch_attributes, encode_batch, with_delete_horizon, BatchHeader, TimestampType,
};
use crate::codec;
use crate::record::{encode_with_timestamp_delta, inflate_records, parse_records, RecordsError};

use super::offset_map::OffsetMap;

/// What the filter knows besides the batch.
#[derive(Debug)]
pub(crate) struct FilterContext<'a> {
    /// Latest offset per key over the mapped range.
    pub map: &'a OffsetMap,
    /// Records at or after this offset were not mapped; batches there stay as they are.
    pub map_end: i64,
    /// The clock.
    pub now_ms: i64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
    /// `(producer id, last offset)` of each producer's last batch in the log.
    pub producer_last_batches: &'a HashSet<(i64, i64)>,
    /// Largest inflated records section a batch may have to be rewritten.
    pub max_inflated_bytes: usize,
}

/// The batch's fate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Kept byte for byte.
    Unchanged,
    /// Replaced by these bytes.
    Rewritten(Vec<u8>),
    /// Removed.
    Dropped,
}

/// What happened to one batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Filtered {
    /// The batch's fate.
    pub fate: Fate,
    /// Records removed.
    pub records_removed: u64,
    /// Tombstones removed because their horizon passed.
    pub tombstones_removed: u64,
    /// Delete horizon of the tombstones the batch still holds, if any.
    pub horizon_ms: Option<i64>,
}

impl Filtered {
    fn unchanged() -> Self {
        Self {
            fate: Fate::Unchanged,
            records_removed: 0,
            tombstones_removed: 0,
            horizon_ms: None,
        }
    }
}

/// Decides the fate of one batch (`batch` is the whole batch, header included).
///
/// # Errors
/// A batch whose records cannot be read (bad compression, inflating past the bound,
/// bad framing); the caller keeps it as it is.
pub(crate) fn filter_batch(
    h: &BatchHeader,
    batch: &[u8],
    ctx: &FilterContext<'_>,
) -> Result<Filtered, RecordsError> {
    if h.is_control() || h.is_transactional() || h.base_offset >= ctx.map_end {
        return Ok(Filtered::unchanged());
    }
    let section = inflate_records(h, batch, ctx.max_inflated_bytes)?;
    let records = parse_records(&section, h.records_count)?;
    let horizon = h.delete_horizon_ms();
    let tombstones_expire = horizon.is_some_and(|t| ctx.now_ms >= t);
    let mut kept = Vec::with_capacity(records.len());
    let mut tombstones_removed = 0;
    for r in &records {
        let offset = h.base_offset + i64::from(r.offset_delta);
        let Some(key) = r.key else { continue };
        if ctx.map.get(key).is_some_and(|latest| latest > offset) {
            continue;
        }
        if r.is_tombstone && tombstones_expire {
            tombstones_removed += 1;
            continue;
        }
        kept.push(r);
    }
    let records_removed = (records.len() - kept.len()) as u64;
    let keeps_tombstones = kept.iter().any(|r| r.is_tombstone);
    let new_horizon = (keeps_tombstones && horizon.is_none())
        .then(|| ctx.now_ms.saturating_add(ctx.delete_retention_ms));
    let horizon_ms = if keeps_tombstones {
        new_horizon.or(horizon)
    } else {
        None
    };
    let outcome = |fate| Filtered {
        fate,
        records_removed,
        tombstones_removed,
        horizon_ms,
    };
    if records_removed == 0 && new_horizon.is_none() {
        return Ok(outcome(Fate::Unchanged));
    }
    if kept.is_empty() {
        let last_of_producer = h.has_producer_id()
            && ctx
                .producer_last_batches
                .contains(&(h.producer_id, h.last_offset()));
        if !last_of_producer {
            return Ok(outcome(Fate::Dropped));
        }
        let empty = BatchHeader {
            attributes: empty_batch_attributes(h.attributes),
            base_timestamp: h.max_timestamp,
            records_count: 0,
            ..*h
        };
        return Ok(outcome(Fate::Rewritten(encode_batch(&empty, &[]))));
    }
    let base_timestamp = new_horizon.unwrap_or(h.base_timestamp);
    let mut out = Vec::with_capacity(section.len());
    let mut max_timestamp = i64::MIN;
    for r in &kept {
        let timestamp = h.base_timestamp.saturating_add(r.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        if base_timestamp == h.base_timestamp {
            out.extend_from_slice(r.bytes);
        } else {
            encode_with_timestamp_delta(&mut out, r, timestamp.saturating_sub(base_timestamp));
        }
    }
    if h.timestamp_type() == TimestampType::LogAppendTime {
        max_timestamp = h.max_timestamp;
    }
    let records_section = match h.compression() {
        0 => out,
        c => codec::compress(c, &out, &batch[crate::batch::RECORD_BATCH_HEADER_BYTES..])?,
    };
    let rewritten = BatchHeader {
        attributes: if new_horizon.is_some() {
            with_delete_horizon(h.attributes)
        } else {
            h.attributes
        },
        base_timestamp,
        max_timestamp,
        records_count: kept.len() as i32,
        ..*h
    };
    Ok(outcome(Fate::Rewritten(encode_batch(
        &rewritten,
        &records_section,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate_batch, RECORD_BATCH_HEADER_BYTES};
    use crate::testing::{BatchBuilder, TestRecord};

    const NOW: i64 = 1_000_000;
    const RETENTION: i64 = 500;

    fn ctx<'a>(map: &'a OffsetMap, last: &'a HashSet<(i64, i64)>) -> FilterContext<'a> {
        FilterContext {
            map,
            map_end: i64::MAX,
            now_ms: NOW,
            delete_retention_ms: RETENTION,
            producer_last_batches: last,
            max_inflated_bytes: 1 << 20,
        }
    }

    /// (offset, timestamp, key, tombstone) of one record.
    type Record = (i64, i64, Vec<u8>, bool);

    /// The header and every record of a batch.
    fn contents(batch: &[u8]) -> (BatchHeader, Vec<Record>) {
        let h = BatchHeader::parse(batch).unwrap();
        validate_batch(&h, batch, usize::MAX).unwrap();
        let section = inflate_records(&h, batch, usize::MAX).unwrap();
        let records = parse_records(&section, h.records_count)
            .unwrap()
            .iter()
            .map(|r| {
                (
                    h.base_offset + i64::from(r.offset_delta),
                    h.base_timestamp + r.timestamp_delta,
                    r.key.unwrap_or_default().to_vec(),
                    r.is_tombstone,
                )
            })
            .collect();
        (h, records)
    }

    fn sample(codec: u8) -> Vec<u8> {
        BatchBuilder::keyed(vec![
            TestRecord::value(b"a", b"1"),
            TestRecord::value(b"b", b"2"),
            TestRecord::tombstone(b"c"),
            TestRecord::value(b"a", b"3"),
        ])
        .base_offset(100)
        .timestamp(5_000)
        .producer(7, 1, 40)
        .compression(codec)
        .build()
    }

    #[test]
    fn superseded_records_go_and_the_rest_keep_offsets_timestamps_and_producer() {
        for codec in 0..=4 {
            let batch = sample(codec);
            let h = BatchHeader::parse(&batch).unwrap();
            let mut map = OffsetMap::new(usize::MAX);
            map.insert(b"a", 103);
            map.insert(b"b", 200);
            let none = HashSet::new();
            let out = filter_batch(&h, &batch, &ctx(&map, &none)).unwrap();
            assert_eq!(out.records_removed, 2);
            let Fate::Rewritten(bytes) = out.fate else {
                panic!("{codec}: {:?}", out.fate)
            };
            let (nh, records) = contents(&bytes);
            assert_eq!(nh.compression(), codec);
            assert_eq!(
                records,
                vec![
                    (102, 5_002, b"c".to_vec(), true),
                    (103, 5_003, b"a".to_vec(), false)
                ]
            );
            assert_eq!(
                (
                    nh.base_offset,
                    nh.last_offset_delta,
                    nh.producer_id,
                    nh.producer_epoch,
                    nh.base_sequence
                ),
                (100, 3, 7, 1, 40)
            );
            assert_eq!(nh.records_count, 2);
            assert_eq!(nh.max_timestamp, 5_003);
            // The tombstone it kept got its horizon.
            assert_eq!(nh.delete_horizon_ms(), Some(NOW + RETENTION));
            assert_eq!(out.horizon_ms, Some(NOW + RETENTION));
        }
    }

    #[test]
    fn tombstones_go_only_once_their_horizon_has_passed() {
        let batch = sample(0);
        let h = BatchHeader::parse(&batch).unwrap();
        let map = OffsetMap::new(usize::MAX);
        let none = HashSet::new();
        let first = filter_batch(&h, &batch, &ctx(&map, &none)).unwrap();
        let Fate::Rewritten(stamped) = first.fate else {
            panic!("{:?}", first.fate)
        };
        assert_eq!(first.records_removed, 0);
        let sh = BatchHeader::parse(&stamped).unwrap();
        // Before the horizon: nothing to do.
        let again = filter_batch(&sh, &stamped, &ctx(&map, &none)).unwrap();
        assert_eq!(again.fate, Fate::Unchanged);
        assert_eq!(again.horizon_ms, Some(NOW + RETENTION));
        // After it: the tombstone goes, the timestamps of the others stay.
        let later = FilterContext {
            now_ms: NOW + RETENTION,
            ..ctx(&map, &none)
        };
        let gone = filter_batch(&sh, &stamped, &later).unwrap();
        assert_eq!((gone.records_removed, gone.tombstones_removed), (1, 1));
        assert_eq!(gone.horizon_ms, None);
        let Fate::Rewritten(bytes) = gone.fate else {
            panic!()
        };
        let (_, records) = contents(&bytes);
        let keys: Vec<_> = records.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(keys, vec![(100, 5_000), (101, 5_001), (103, 5_003)]);
    }

    #[test]
    fn an_emptied_batch_is_dropped_unless_it_is_its_producers_last() {
        let batch = sample(4);
        let h = BatchHeader::parse(&batch).unwrap();
        let mut map = OffsetMap::new(usize::MAX);
        for k in [b"a", b"b", b"c"] {
            map.insert(k, 500);
        }
        let none = HashSet::new();
        let out = filter_batch(&h, &batch, &ctx(&map, &none)).unwrap();
        assert_eq!((out.fate, out.records_removed), (Fate::Dropped, 4));
        let last: HashSet<_> = [(7, 103)].into();
        let out = filter_batch(&h, &batch, &ctx(&map, &last)).unwrap();
        let Fate::Rewritten(bytes) = out.fate else {
            panic!()
        };
        assert_eq!(bytes.len(), RECORD_BATCH_HEADER_BYTES);
        let (eh, records) = contents(&bytes);
        assert!(records.is_empty());
        assert_eq!(eh.compression(), 0);
        assert_eq!((eh.base_offset, eh.last_sequence()), (100, 43));
    }

    #[test]
    fn keyless_records_go_and_control_transactional_and_unmapped_batches_stay() {
        let batch = BatchBuilder::keyed(vec![
            TestRecord::unkeyed(b"x"),
            TestRecord::value(b"k", b"y"),
        ])
        .build();
        let h = BatchHeader::parse(&batch).unwrap();
        let map = OffsetMap::new(usize::MAX);
        let none = HashSet::new();
        assert_eq!(
            filter_batch(&h, &batch, &ctx(&map, &none))
                .unwrap()
                .records_removed,
            1
        );
        let mut full = OffsetMap::new(usize::MAX);
        full.insert(b"k", 99);
        for special in [
            BatchBuilder::keyed(vec![TestRecord::value(b"k", b"y")])
                .transactional()
                .build(),
            BatchBuilder::keyed(vec![TestRecord::value(b"k", b"y")])
                .control()
                .build(),
        ] {
            let sh = BatchHeader::parse(&special).unwrap();
            assert_eq!(
                filter_batch(&sh, &special, &ctx(&full, &none))
                    .unwrap()
                    .fate,
                Fate::Unchanged
            );
        }
        let beyond = FilterContext {
            map_end: 0,
            ..ctx(&full, &none)
        };
        assert_eq!(
            filter_batch(&h, &batch, &beyond).unwrap().fate,
            Fate::Unchanged
        );
    }
}
