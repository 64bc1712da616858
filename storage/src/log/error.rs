//! Errors of the log, one enum per operation family.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;

/// Why an append was refused. Nothing was written unless the variant is `Io`.
#[derive(Debug, Error)]
pub enum AppendError {
    /// The bytes are not valid RecordBatch v2 batches (Kafka: CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    Batch(#[from] BatchError),
    /// A batch is larger than `max.message.bytes` (Kafka: MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Batch size including the log overhead.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The producer has been fenced by a newer epoch (Kafka: INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id} epoch {epoch} is older than current epoch {current_epoch}")]
    InvalidProducerEpoch {
        /// Producer id.
        producer_id: i64,
        /// Epoch in the batch.
        epoch: i16,
        /// Epoch the log knows.
        current_epoch: i16,
    },
    /// The batch's sequence does not follow the producer's last one
    /// (Kafka: OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id} epoch {epoch}: expected sequence {expected}, got {received}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// Epoch in the batch.
        epoch: i16,
        /// Sequence the log expected (0 for a new producer or epoch).
        expected: i32,
        /// First sequence of the batch.
        received: i32,
    },
    /// The batch breaks a rule for client writes (Kafka: INVALID_RECORD).
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// Follower batches must start at or after the log end, in increasing order.
    #[error("replicated batch starts at offset {actual}, expected at least {expected}")]
    OffsetsNotMonotonic {
        /// The offset the next batch must start at or after.
        expected: i64,
        /// The offset it starts at.
        actual: i64,
    },
    /// The write failed; the log end did not move.
    #[error("append I/O error: {0}")]
    Io(#[from] io::Error),
}

impl AppendError {
    /// Whether the batch was refused by the idempotent-producer rules (a fenced epoch
    /// or a sequence gap), as opposed to bad bytes or I/O.
    pub fn is_producer_state_violation(&self) -> bool {
        matches!(
            self,
            Self::InvalidProducerEpoch { .. } | Self::OutOfOrderSequence { .. }
        )
    }
}

/// Why a read could not be planned.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The offset is below the log start or beyond the log end (Kafka: OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset in the log.
        log_start_offset: i64,
        /// Offset the next append gets.
        log_end_offset: i64,
    },
    /// Reading batch headers to find the range failed (`InvalidData` if bytes the log
    /// accepted no longer parse).
    #[error("read I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Errors opening, recovering or maintaining the log.
#[derive(Debug, Error)]
pub enum LogError {
    /// A filesystem call failed.
    #[error("log I/O error: {0}")]
    Io(#[from] io::Error),
    /// A batch that was fsynced (below the recovery point) is torn, corrupt or missing.
    #[error("corruption below the recovery point {recovery_point} in {path} at byte {position} (offset {offset}): {reason}")]
    CorruptBelowRecoveryPoint {
        /// Segment file.
        path: PathBuf,
        /// Byte position of the bad batch.
        position: u64,
        /// Offset the batch should have started at.
        offset: i64,
        /// Recovery point in effect.
        recovery_point: i64,
        /// What was wrong.
        reason: String,
    },
    /// A checkpoint file in the partition directory does not parse.
    #[error("corrupt checkpoint {path}: {reason}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The offset is outside what the operation accepts.
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset in the log.
        log_start_offset: i64,
        /// Offset the next append gets.
        log_end_offset: i64,
    },
}
