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
/// Largest segment file: index entries store positions as u32, and Kafka caps
/// `segment.bytes` at `i32::MAX`.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// Settings of one partition log (Kafka topic configs of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}

impl LogConfig {
    /// `segment_bytes` clamped to what a segment file can address.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.clamp(1, MAX_SEGMENT_BYTES)
    }
}
