//! Loading an offsets partition: replaying its records, oldest first, into the groups
//! and committed offsets it holds. Runs when this broker becomes the partition's
//! leader, on a blocking thread; the partition's groups answer
//! COORDINATOR_LOAD_IN_PROGRESS until it is done.
//!
//! The replay reads to the log end, not the high watermark: a new leader keeps its
//! whole log (followers truncate to it), so what it holds beyond the high watermark
//! becomes committed as they catch up.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::log_format::{self, OffsetsRecord};
use super::state::{Group, GroupLimits};
use crate::replication::Partition;

/// What a load produced.
pub struct Loaded {
    pub groups: HashMap<String, Group>,
    /// Records replayed.
    pub records: u64,
    /// Records that did not decode (skipped, as Kafka skips unknown record types).
    pub skipped: u64,
    /// Offset the replay reached.
    pub end_offset: i64,
}

/// Replays `partition` from its log start to its current log end, reading at most
/// `buffer_bytes` per read.
///
/// # Errors
/// A read that fails (I/O) or a log that stops making progress.
pub fn load_partition(
    partition: &Partition,
    buffer_bytes: usize,
    limits: GroupLimits,
    now_ms: i64,
) -> Result<Loaded, String> {
    let end = partition.log_end_offset();
    let mut offset = partition.log_start_offset();
    let mut groups: HashMap<String, Group> = HashMap::new();
    let (mut records, mut skipped) = (0u64, 0u64);
    while offset < end {
        let read = partition
            .read_for_replica(offset, buffer_bytes)
            .map_err(|e| format!("reading offset {offset}: {e}"))?;
        if read.plan.is_empty() {
            // Nothing at or after `offset` below the end (a log start that moved
            // under us): the replay is complete.
            break;
        }
        let bytes = read
            .plan
            .execute()
            .map_err(|e| format!("reading offset {offset}: {e}"))?;
        let next = read.plan.next_offset();
        if next <= offset {
            return Err(format!("log made no progress at offset {offset}"));
        }
        let mut buf: Bytes = bytes;
        while !buf.is_empty() {
            let set = match RecordBatchDecoder::decode(&mut buf) {
                Ok(set) => set,
                Err(e) => return Err(format!("undecodable batch near offset {offset}: {e}")),
            };
            for r in set.records {
                if r.control {
                    continue;
                }
                match log_format::decode(r.key.as_deref(), r.value.as_deref()) {
                    Ok(rec) => {
                        records += 1;
                        replay(&mut groups, rec, r.offset, limits, now_ms);
                    }
                    Err(e) => {
                        skipped += 1;
                        tracing::warn!(
                            topic = %partition.topic,
                            partition = partition.index,
                            offset = r.offset,
                            "skipping undecodable offsets record: {e}"
                        );
                    }
                }
            }
        }
        offset = next;
    }
    for g in groups.values_mut() {
        let _ = g.tick(now_ms);
    }
    groups.retain(|_, g| !g.is_forgettable());
    Ok(Loaded {
        groups,
        records,
        skipped,
        end_offset: offset,
    })
}

/// Applies one record found at `record_offset`.
pub fn replay(
    groups: &mut HashMap<String, Group>,
    rec: OffsetsRecord,
    record_offset: i64,
    limits: GroupLimits,
    now_ms: i64,
) {
    match rec {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, limits, now_ms));
            g.offsets.apply(&topic, partition, value, record_offset);
        }
        OffsetsRecord::Group {
            group,
            value: Some(value),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(&group, limits, now_ms));
            g.restore(value, now_ms);
        }
        OffsetsRecord::Group { group, value: None } => {
            // A deleted group: its offsets were tombstoned in the same batch.
            groups.remove(&group);
        }
    }
}
