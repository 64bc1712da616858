//! [`LogConfig`]: the per-topic settings the log obeys, with Kafka's defaults.

use crate::batch::TimestampType;

/// Default `segment.bytes`: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Default `segment.ms`: 7 days.
pub const DEFAULT_SEGMENT_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Default `segment.index.bytes`: 10 MiB.
pub const DEFAULT_SEGMENT_INDEX_BYTES: u64 = 10 << 20;
/// Default `index.interval.bytes`.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
/// Default `retention.ms`: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Default `retention.bytes`: unlimited.
pub const DEFAULT_RETENTION_BYTES: i64 = -1;
/// Default `max.message.bytes`: 1 MiB plus the 12-byte log overhead.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
/// Default `producer.id.expiration.ms`: 1 day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;
/// Default `delete.retention.ms`: how long tombstones outlive their first compaction.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Default `min.cleanable.dirty.ratio`.
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;
/// Default `min.compaction.lag.ms`.
pub const DEFAULT_MIN_COMPACTION_LAG_MS: i64 = 0;
/// Default `max.compaction.lag.ms`: never forces a compaction.
pub const DEFAULT_MAX_COMPACTION_LAG_MS: i64 = i64::MAX;
/// Largest segment file: index entries store positions as u32, and Kafka caps
/// `segment.bytes` at `i32::MAX`.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// `cleanup.policy`: what happens to old data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// `delete`: segments go by `retention.ms` and `retention.bytes`.
    pub delete: bool,
    /// `compact`: only the latest record of each key is kept (and tombstones for
    /// `delete.retention.ms`); records without a key are refused.
    pub compact: bool,
}

impl CleanupPolicy {
    /// Kafka's default, `delete`.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    /// `compact`.
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };

    /// Parses Kafka's list syntax (`delete`, `compact`, `compact,delete`); `None` for
    /// anything else. An empty list is Kafka's "neither": data is kept forever.
    pub fn parse(text: &str) -> Option<CleanupPolicy> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        Some(policy)
    }
}

/// Settings of one partition log (Kafka topic configs of the same names).
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// Roll when the active segment would grow beyond this many bytes.
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this.
    pub segment_ms: i64,
    /// Roll when either index of the active segment would grow beyond this many bytes.
    pub segment_index_bytes: u64,
    /// Bytes of log between offset index entries.
    pub index_interval_bytes: u64,
    /// Delete segments whose newest timestamp is older than this; -1 keeps forever.
    pub retention_ms: i64,
    /// Delete oldest segments while the log is larger than this; -1 is unlimited.
    pub retention_bytes: i64,
    /// Largest batch accepted from a producer, log overhead included.
    pub max_message_bytes: u32,
    /// Whether producer timestamps are kept or replaced by the append time.
    pub message_timestamp_type: TimestampType,
    /// Forget an idempotent producer after this long without a write; -1 never.
    pub producer_id_expiration_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// How long compaction keeps a tombstone after the first compaction that kept it.
    pub delete_retention_ms: i64,
    /// Compact once dirty bytes are at least this fraction of the compactable bytes.
    pub min_cleanable_dirty_ratio: f64,
    /// Records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// Compact (whatever the dirty ratio) once the oldest dirty record is this old;
    /// the active segment of a compacted log also rolls at this age.
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            segment_index_bytes: DEFAULT_SEGMENT_INDEX_BYTES,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: DEFAULT_RETENTION_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            message_timestamp_type: TimestampType::CreateTime,
            producer_id_expiration_ms: DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            min_compaction_lag_ms: DEFAULT_MIN_COMPACTION_LAG_MS,
            max_compaction_lag_ms: DEFAULT_MAX_COMPACTION_LAG_MS,
        }
    }
}

impl LogConfig {
    /// `segment_bytes` clamped to what a segment file can address.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.clamp(1, MAX_SEGMENT_BYTES)
    }

    /// Age at which the active segment rolls: `segment.ms`, or `max.compaction.lag.ms`
    /// if the log is compacted and that is sooner (KIP-354: the active segment is never
    /// compacted, so it must not outlive the lag).
    pub(crate) fn effective_segment_ms(&self) -> i64 {
        if self.cleanup_policy.compact {
            self.segment_ms.min(self.max_compaction_lag_ms)
        } else {
            self.segment_ms
        }
    }
}
