//! `keel-storage`: the partition log of keel, a Kafka-compatible broker.
//!
//! The crate stores Kafka RecordBatch v2 bytes exactly as producers send them, in
//! Kafka's on-disk layout: per partition directory, segments `{base_offset:020}.log` with a
//! sparse offset index (`.index`) and a time index (`.timeindex`), producer-state
//! snapshots (`.snapshot`), and a `log-start-offset` checkpoint.
//!
//! What it owns:
//! - [`fs`]: the filesystem seam ([`fs::StdFs`] for real files, [`fs::FaultyFs`] to
//!   simulate power loss in tests).
//! - [`batch`]: RecordBatch v2 header parsing, validation (framing, CRC-32C) and the
//!   in-place patches a leader applies. Appends and reads never decode records.
//! - [`checkpoint`]: atomic small-file writes and Kafka's offset checkpoint format.
//! - [`log`]: [`Log`] — appends (leader and follower), reads planned under a lock and
//!   executed outside it, flush plans, retention, compaction (planned under the lock,
//!   executed outside it), truncation, idempotent-producer sequence checks, and crash
//!   recovery.
//! - [`record`] and [`codec`]: the records inside a batch and the compression codecs,
//!   for compaction and the compacted-topic key check only.
//! - [`testing`]: builders for valid batches.
//!
//! What it must not touch: Kafka API types (no `kafka-protocol`), Raft, networking.
//! Callers decide when to fsync (via [`FlushPlan`]) and checkpoint the recovery point
//! ([`Log::flushed_offset`]).
//!
//! Durability contract: data below `flushed_offset()` survives a power loss. On open, every
//! batch at or after the caller's recovery point is re-validated and the log is cut at the
//! first torn or corrupt batch; a bad batch below it is reported as
//! [`LogError::CorruptBelowRecoveryPoint`].

//!
//! How the broker drives a log (the lock is the broker's `Mutex<Log>`):
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use keel_storage::{fs::FaultyFs, testing::BatchBuilder, LeaderAppend, Log, LogConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fs = Arc::new(FaultyFs::new());
//! let (log, _report) = Log::open(fs, "/data/orders-0".as_ref(), LogConfig::default(), 0, 0)?;
//! let log = Mutex::new(log);
//!
//! // Produce: validate, assign offsets and write under the lock (no fsync).
//! let mut batch = BatchBuilder::new(3, 100).build();
//! let appended = log.lock().unwrap().append_as_leader(&mut batch, 0, 1_000)?;
//! assert!(matches!(appended, LeaderAppend::Appended(info) if info.base_offset == 0));
//!
//! // Group commit: plan under the lock, fsync outside it, record completion.
//! let plan = log.lock().unwrap().flush_plan();
//! if let Some(plan) = plan {
//!     plan.execute()?;
//!     log.lock().unwrap().flush_completed(&plan);
//! }
//! let recovery_point = log.lock().unwrap().flushed_offset(); // checkpoint this
//! assert_eq!(recovery_point, 3);
//!
//! // Fetch: plan under the lock (high watermark 3), read outside it.
//! let read = log.lock().unwrap().read(0, 1 << 20, 3, true)?;
//! let bytes = read.execute()?;
//! assert_eq!(bytes.len(), batch.len());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod codec;
pub mod fs;
pub mod log;
pub mod record;
pub mod testing;

pub use log::{
    AppendError, AppendInfo, AppendOrigin, CleanerLimits, CleanupPolicy, CompactionPlan,
    CompactionResult, CompactionStats, EpochEntry, FlushPlan, LeaderAppend, Log, LogConfig,
    LogError, ReadError, ReadPlan, RecoveryReport, TimestampType, LEADER_EPOCH_CHECKPOINT_FILE,
    UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
};
