//! Writing to `__consumer_offsets`: records become one RecordBatch, appended by the
//! partition's leader like a produce with acks=all, and a write counts only once the
//! high watermark covers it (every in-sync replica has it, fsynced under the default
//! flush policy).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
};
use keel_storage::{AppendError, LeaderAppend};

use super::error::GroupError;
use crate::replication::partition::AckOutcome;
use crate::replication::Partition;

/// One key/value (or tombstone) to write.
pub struct KeyValue {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// Encodes `records` as one uncompressed, non-idempotent RecordBatch v2.
///
/// # Errors
/// The encoder refused the batch (never for well-formed keys and values).
pub fn encode_batch(records: &[KeyValue], now_ms: i64) -> Result<Bytes, GroupError> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, kv)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder groups records whose (offset - sequence) agree into one batch
            // and writes the first one's sequence as the base: -1, no sequence.
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(kv.key.clone()),
            value: kv.value.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| GroupError::CommitTooLarge(e.to_string()))?;
    Ok(buf.freeze())
}

/// Appends `batch` to the offsets partition as its leader. Returns the offset after the
/// batch: the write is durable once the high watermark reaches it. Synchronous (a
/// page-cache write), so callers may hold their own lock to order writes.
///
/// # Errors
/// `NotCoordinator` when this broker no longer leads the partition;
/// `CoordinatorNotAvailable` when the ISR is below min.insync.replicas; commit-size
/// and storage errors otherwise.
pub fn append(partition: &Partition, batch: &[u8], now_ms: i64) -> Result<i64, GroupError> {
    if !partition.has_min_insync() {
        return Err(if partition.is_leader() {
            GroupError::CoordinatorNotAvailable(
                "offsets partition below min.insync.replicas".into(),
            )
        } else {
            GroupError::NotCoordinator
        });
    }
    match partition.append_as_leader(batch, now_ms) {
        None => Err(GroupError::NotCoordinator),
        Some(Ok(LeaderAppend::Appended(info) | LeaderAppend::Duplicate(info))) => {
            Ok(info.last_offset + 1)
        }
        Some(Err(AppendError::MessageTooLarge { .. })) => Err(GroupError::CommitTooLarge(
            "larger than the offsets topic's max.message.bytes".into(),
        )),
        Some(Err(e)) => {
            tracing::warn!(topic = %partition.topic, partition = partition.index, "offsets append failed: {e}");
            Err(GroupError::NotCoordinator)
        }
    }
}

/// Waits until the high watermark of `partition` reaches `end_offset`.
///
/// # Errors
/// `NotCoordinator` if the leadership was lost meanwhile (the write may or may not
/// survive), `Timeout` after `timeout`.
pub async fn wait_durable(
    partition: &Arc<Partition>,
    end_offset: i64,
    timeout: Duration,
) -> Result<(), GroupError> {
    let deadline = tokio::time::Instant::now() + timeout;
    match partition.wait_acknowledgeable(end_offset, deadline).await {
        AckOutcome::Acked => Ok(()),
        AckOutcome::NotLeader => Err(GroupError::NotCoordinator),
        AckOutcome::TimedOut {
            below_min_isr: true,
        } => Err(GroupError::CoordinatorNotAvailable(
            "offsets partition fell below min.insync.replicas".into(),
        )),
        AckOutcome::TimedOut { .. } => Err(GroupError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::batch::{validate_batches, BatchHeader};

    #[test]
    fn records_become_one_valid_batch_without_producer_state() {
        let kvs: Vec<KeyValue> = (0..5)
            .map(|i| KeyValue {
                key: Bytes::from(format!("k{i}")),
                value: (i != 3).then(|| Bytes::from(format!("v{i}"))),
            })
            .collect();
        let batch = encode_batch(&kvs, 1_000).unwrap();
        let headers = validate_batches(&batch, usize::MAX).unwrap();
        assert_eq!(headers.len(), 1, "one batch");
        let h: &BatchHeader = &headers[0];
        assert_eq!(h.records_count, 5);
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.base_sequence, -1);
        assert_eq!(h.producer_id, -1);
    }
}
