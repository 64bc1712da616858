//! The log cleaner: one task per broker (Kafka's `log.cleaner.threads=1`) that compacts
//! the hosted partitions of topics whose cleanup.policy includes `compact`.
//!
//! Each round it asks every such partition for a compaction plan (the storage crate
//! decides whether one is due: dirty ratio, max compaction lag, tombstone horizons),
//! executes each plan on a blocking thread — the partition lock is held only to plan
//! and to install — and installs it. Compaction is bounded by each replica's high
//! watermark, so only records every in-sync replica holds are compacted; leaders and
//! followers compact their own logs independently. When a round finds nothing to do,
//! the task sleeps `log.cleaner.backoff.ms`.

use std::sync::Arc;
use std::time::Duration;

use keel_storage::CleanerLimits;
use tokio::sync::watch;

use super::manager::{now_ms, ReplicaManager};
use super::partition::Partition;
use crate::config::BrokerConfig;

/// How the cleaner runs.
#[derive(Clone, Copy, Debug)]
pub struct CleanerSettings {
    /// Sleep between rounds that found nothing to compact (`log.cleaner.backoff.ms`).
    pub backoff: Duration,
    /// Memory bounds of one compaction.
    pub limits: CleanerLimits,
}

impl CleanerSettings {
    /// The broker's `log.cleaner.*` settings.
    pub fn from_config(config: &BrokerConfig) -> Self {
        Self {
            backoff: config.cleaner_backoff,
            limits: CleanerLimits {
                dedupe_buffer_bytes: config.cleaner_dedupe_buffer_bytes,
            },
        }
    }
}

/// Runs the cleaner until shutdown.
pub async fn run(
    manager: Arc<ReplicaManager>,
    settings: CleanerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(
        backoff_ms = settings.backoff.as_millis() as u64,
        "log cleaner started"
    );
    loop {
        let mut more_due = false;
        for p in manager.all() {
            if *shutdown.borrow() {
                return;
            }
            if p.is_stopped() || !p.is_compacted() {
                continue;
            }
            more_due |= compact(&p, &settings).await;
        }
        if more_due {
            // Another pass may be due at once (a dedupe buffer too small for the
            // dirty section); give other tasks a turn first.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.backoff) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Compacts one partition if a compaction is due; returns whether another is due at
/// once (the dedupe buffer filled before the dirty records ended).
async fn compact(p: &Arc<Partition>, settings: &CleanerSettings) -> bool {
    let plan = match p.compaction_plan(now_ms(), &settings.limits) {
        Ok(Some(plan)) => plan,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, "cannot plan compaction: {e}");
            return false;
        }
    };
    let result = match tokio::task::spawn_blocking(move || plan.execute()).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(topic = %p.topic, partition = p.index, "compaction task failed: {e}");
            return false;
        }
    };
    match p.compaction_completed(result) {
        Ok(Some(stats)) => {
            tracing::info!(
                topic = %p.topic,
                partition = p.index,
                segments_read = stats.segments_read,
                segments_written = stats.segments_written,
                bytes_before = stats.bytes_before,
                bytes_after = stats.bytes_after,
                records_removed = stats.records_removed,
                tombstones_removed = stats.tombstones_removed,
                keys = stats.keys_mapped,
                clean_point_from = stats.first_dirty_offset,
                clean_point_to = stats.next_dirty_offset,
                "compacted"
            );
            // Make the swapped directory entries durable now rather than at the next
            // group commit.
            p.flush_now().await;
            stats.map_full
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, "compaction abandoned: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    //! Batches compacted by keel-storage, read back with kafka-protocol's decoder (an
    //! implementation of the format independent of keel's), for every codec.

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use keel_storage::fs::{FaultyFs, Filesystem};
    use keel_storage::{CleanerLimits, CleanupPolicy, LeaderAppend, Log, LogConfig};

    const NOW: i64 = 1_700_000_000_000;
    const PRODUCER: i64 = 42;

    /// One batch of `(key, value)` records from producer 42 starting at `sequence`.
    fn encode(
        compression: Compression,
        records: &[(String, Option<String>)],
        sequence: i32,
    ) -> BytesMut {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: PRODUCER,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: sequence + i as i32,
                timestamp: NOW + i as i64 * 10,
                key: Some(Bytes::from(k.clone())),
                value: v.clone().map(Bytes::from),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf
    }

    #[test]
    fn compacted_batches_decode_with_an_independent_decoder_for_every_codec() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let fs = Arc::new(FaultyFs::new());
            fs.create_dir_all(Path::new("/d")).unwrap();
            let config = LogConfig {
                segment_bytes: 1_000,
                cleanup_policy: CleanupPolicy::COMPACT,
                min_cleanable_dirty_ratio: 0.0,
                ..LogConfig::default()
            };
            let (mut log, _) = Log::open(fs.clone(), Path::new("/d/t-0"), config, 0, NOW).unwrap();
            let mut latest: BTreeMap<String, (i64, Option<String>, i64)> = BTreeMap::new();
            let mut sequence = 0;
            for round in 0..6 {
                let records: Vec<(String, Option<String>)> = (0..8)
                    .map(|k| {
                        let value = (round != 5 || k % 3 != 0)
                            .then(|| format!("k{k} round {round} {}", "x".repeat(k * 7)));
                        (format!("key-{k}"), value)
                    })
                    .collect();
                let mut bytes = encode(compression, &records, sequence);
                let info = match log.append_as_leader(&mut bytes, 3, NOW).unwrap() {
                    LeaderAppend::Appended(info) => info,
                    other => panic!("{other:?}"),
                };
                for (i, (k, v)) in records.into_iter().enumerate() {
                    latest.insert(k, (info.base_offset + i as i64, v, NOW + i as i64 * 10));
                }
                sequence += 8;
            }
            log.maybe_roll(NOW + 2 * LogConfig::default().segment_ms)
                .unwrap();
            let plan = log.flush_plan().unwrap();
            plan.execute().unwrap();
            log.flush_completed(&plan);
            let plan = log
                .compaction_plan(NOW, i64::MAX, &CleanerLimits::default())
                .unwrap()
                .expect("due");
            let stats = log
                .compaction_completed(plan.execute())
                .unwrap()
                .expect("compacted");
            assert!(stats.records_removed >= 40, "{compression:?}: {stats:?}");
            let read = log.read(0, usize::MAX, i64::MAX, true).unwrap();
            let mut buf = read.execute().unwrap();
            let mut got = BTreeMap::new();
            let mut batches = 0;
            while !buf.is_empty() {
                let set = RecordBatchDecoder::decode(&mut buf).unwrap();
                for r in set.records {
                    assert_eq!(
                        (r.producer_id, r.producer_epoch, r.partition_leader_epoch),
                        (PRODUCER, 0, 3)
                    );
                    assert_eq!(
                        r.sequence as i64, r.offset,
                        "sequence and offset still line up"
                    );
                    let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                    let value = r.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                    got.insert(key, (r.offset, value, r.timestamp));
                }
                batches += 1;
            }
            assert_eq!(got, latest, "{compression:?}");
            assert!(batches >= 1);
        }
    }
}
