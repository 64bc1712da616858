//! [`Log`]: the partition log — an ordered list of segments holding RecordBatch v2 bytes
//! at strictly increasing offsets (dense as appended, with gaps where compaction removed
//! records), with its idempotent-producer state, retention, compaction, truncation and
//! crash recovery.
//!
//! The log is a single-threaded object (the broker wraps it in a mutex). Every method
//! does bounded work under that lock; the slow parts of reads, fsyncs and compaction are
//! returned as [`ReadPlan`], [`FlushPlan`] and [`CompactionPlan`] to run outside it.
//! Where a method fsyncs itself (rare operations: rolls, truncation, DeleteRecords,
//! close) its docs say so.

mod append;
mod compaction;
mod config;
mod epoch_cache;
mod error;
mod files;
mod index;
mod plan;
mod producer_state;
mod read;
mod recovery;
mod retention;
mod scan;
mod segment;
mod snapshots;

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::batch::TimestampType;
pub use compaction::{
    CleanerLimits, CompactionPlan, CompactionResult, CompactionStats, DEFAULT_DEDUPE_BUFFER_BYTES,
    MAX_COMPACTED_BATCH_INFLATED_BYTES,
};
pub use config::{
    CleanupPolicy, LogConfig, DEFAULT_DELETE_RETENTION_MS, DEFAULT_INDEX_INTERVAL_BYTES,
    DEFAULT_MAX_COMPACTION_LAG_MS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
    DEFAULT_MIN_COMPACTION_LAG_MS, DEFAULT_PRODUCER_ID_EXPIRATION_MS, DEFAULT_RETENTION_BYTES,
    DEFAULT_RETENTION_MS, DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_INDEX_BYTES, DEFAULT_SEGMENT_MS,
    MAX_SEGMENT_BYTES,
};
pub use epoch_cache::{
    EpochEntry, LEADER_EPOCH_CHECKPOINT_FILE, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
};
pub use error::{AppendError, LogError, ReadError};
pub use plan::{FlushPlan, ReadPlan};

use crate::checkpoint::write_atomic;
use crate::fs::{parent_dir, FileHandle, Filesystem};
use files::{remove_if_exists, RecoveryCap, RECOVERY_POINT_CAP_FILE};
use producer_state::{ProducerStateManager, SNAPSHOT_FILE_SUFFIX};
use segment::{offset_file, Segment};

/// Where an append came from; decides which client-only rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOrigin {
    /// A producer: control batches are refused, counts must match offset ranges.
    Client,
    /// The broker's own coordinators (transaction markers): control batches allowed.
    Coordinator,
}

/// Result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The append time for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// Log start offset after the append.
    pub log_start_offset: i64,
    /// Number of records.
    pub records: u32,
}

/// Outcome of a leader append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderAppend {
    /// The batches were written.
    Appended(AppendInfo),
    /// An idempotent retry of one of the producer's last 5 batches; nothing written, the
    /// info describes where the original went.
    Duplicate(AppendInfo),
}

impl LeaderAppend {
    /// The append info, whichever the outcome.
    pub fn info(&self) -> &AppendInfo {
        match self {
            LeaderAppend::Appended(i) | LeaderAppend::Duplicate(i) => i,
        }
    }
}

/// What [`Log::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Recovery point used: batches from here on were re-validated.
    pub recovered_from: i64,
    /// Bytes cut from torn or corrupt tails (whole deleted segments included).
    pub truncated_bytes: u64,
    /// Offset where the log was cut, if it was.
    pub truncated_at: Option<i64>,
    /// First offset of the log.
    pub log_start_offset: i64,
    /// Log end offset after recovery.
    pub log_end_offset: i64,
    /// Segments in the log.
    pub segments: usize,
    /// Segments deleted (below the log start, or after a cut).
    pub segments_deleted: usize,
    /// Segments whose index files had to be rebuilt from scratch.
    pub indexes_rebuilt: usize,
    /// Offset of the producer snapshot recovery started from, if any.
    pub producer_snapshot: Option<i64>,
    /// Batch headers replayed to rebuild producer state.
    pub replayed_batches: u64,
    /// The log ended cleanly before the recovery point (data the caller believed flushed
    /// is absent, e.g. after a truncation the caller's checkpoint has not caught up with).
    pub ended_below_recovery_point: bool,
}

/// The log of one partition.
#[derive(Debug)]
pub struct Log {
    fs: Arc<dyn Filesystem>,
    dir: PathBuf,
    config: LogConfig,
    /// Ascending by base offset; never empty; the last is the active segment.
    segments: VecDeque<Segment>,
    log_start_offset: i64,
    flushed_offset: i64,
    /// Bumped by every truncation: flush plans from before it prove nothing.
    generation: u64,
    /// Count of directory entry changes made so far.
    dir_changes: u64,
    /// `dir_changes` value covered by the last completed directory sync.
    dir_synced_changes: u64,
    /// Files written outside segments (snapshots) awaiting an fsync, with a sequence.
    unsynced_files: Vec<(u64, Arc<dyn FileHandle>)>,
    unsynced_seq: u64,
    producers: ProducerStateManager,
    /// Offsets of producer snapshot files on disk.
    snapshots: BTreeSet<i64>,
    recovery_cap: Option<RecoveryCap>,
    /// Where each leader epoch starts (`leader-epoch-checkpoint`).
    epochs: epoch_cache::EpochCache,
    /// Compaction's clean point and the compaction in flight.
    cleaner: compaction::CleanerState,
}

impl Log {
    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration; takes effect on the next append or retention pass.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// First offset that can be read.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Offset up to which (exclusive) every byte is fsynced: the recovery point to
    /// checkpoint and pass to [`Log::open`].
    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }

    /// Bytes of batches in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Number of idempotent producers the log remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Current epoch and last sequence the log knows for `producer_id`.
    pub fn producer_state(&self, producer_id: i64) -> Option<(i16, Option<i32>)> {
        self.producers
            .get(producer_id)
            .map(|e| (e.epoch, e.batches.back().map(|b| b.last_seq)))
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty: open creates one and nothing removes the last.
        match self.segments.back() {
            Some(s) => s,
            None => unreachable!("a log always has an active segment"),
        }
    }

    fn active_mut(&mut self) -> &mut Segment {
        match self.segments.back_mut() {
            Some(s) => s,
            None => unreachable!("a log always has an active segment"),
        }
    }

    fn snapshot_path(&self, offset: i64) -> PathBuf {
        offset_file(&self.dir, offset, SNAPSHOT_FILE_SUFFIX)
    }

    /// Files to fsync so that everything up to the current log end is durable: segments
    /// holding unflushed data with their indexes, snapshots written since, and the
    /// directory if entries were created. `None` if there is nothing to do.
    pub fn flush_plan(&self) -> Option<FlushPlan> {
        let up_to = self.log_end_offset();
        let dir_dirty = self.dir_changes > self.dir_synced_changes;
        if self.flushed_offset >= up_to && !dir_dirty && self.unsynced_files.is_empty() {
            return None;
        }
        let mut files: Vec<Arc<dyn FileHandle>> = Vec::new();
        for seg in self
            .segments
            .iter()
            .filter(|s| s.next_offset > self.flushed_offset)
        {
            files.extend(seg.files());
        }
        files.extend(self.unsynced_files.iter().map(|(_, f)| Arc::clone(f)));
        Some(FlushPlan {
            fs: Arc::clone(&self.fs),
            files,
            dirs: if dir_dirty {
                vec![self.dir.clone()]
            } else {
                Vec::new()
            },
            up_to,
            generation: self.generation,
            dir_changes: self.dir_changes,
            unsynced_seq: self.unsynced_seq,
        })
    }

    /// Records that `plan` executed successfully: advances the flushed offset (never past
    /// the log end). A plan made before a truncation is ignored, since the offsets it
    /// covered may since hold different, unsynced batches.
    pub fn flush_completed(&mut self, plan: &FlushPlan) {
        if plan.generation != self.generation {
            return;
        }
        let up_to = plan.up_to.min(self.log_end_offset());
        self.flushed_offset = self.flushed_offset.max(up_to);
        if !plan.dirs.is_empty() {
            self.dir_synced_changes = self.dir_synced_changes.max(plan.dir_changes);
        }
        self.unsynced_files
            .retain(|(seq, _)| *seq > plan.unsynced_seq);
        self.maybe_drop_recovery_cap();
    }

    /// Forgets the recovery cap once the log is flushed past the offset it guarded.
    fn maybe_drop_recovery_cap(&mut self) {
        if let Some(cap) = self.recovery_cap {
            if self.flushed_offset >= cap.until {
                let path = self.dir.join(RECOVERY_POINT_CAP_FILE);
                // If the removal is lost in a crash the cap only makes recovery scan more.
                if let Err(e) = remove_if_exists(&*self.fs, &path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove recovery cap");
                    return;
                }
                self.recovery_cap = None;
            }
        }
    }

    /// Fsyncs everything now (under the caller's lock); used by `close`.
    fn sync_all(&mut self) -> io::Result<()> {
        let Some(plan) = self.flush_plan() else {
            return Ok(());
        };
        plan.execute()?;
        self.flush_completed(&plan);
        Ok(())
    }

    /// Writes a producer snapshot at the log end with a full fsync.
    fn write_snapshot_durably(&mut self) -> io::Result<()> {
        let offset = self.log_end_offset();
        write_atomic(
            &*self.fs,
            &self.snapshot_path(offset),
            &self.producers.encode_snapshot(),
        )?;
        self.snapshots.insert(offset);
        Ok(())
    }

    /// Flushes everything, writes a producer-state snapshot at the log end, and closes.
    ///
    /// # Errors
    /// I/O errors; the log is then recovered on next open as after a crash.
    pub fn close(mut self) -> Result<(), LogError> {
        self.sync_all()?;
        self.write_snapshot_durably()?;
        Ok(())
    }

    /// Deletes the partition directory and everything in it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete(self) -> Result<(), LogError> {
        self.fs.remove_dir_all(&self.dir)?;
        self.fs.sync_dir(parent_dir(&self.dir))?;
        Ok(())
    }
}
