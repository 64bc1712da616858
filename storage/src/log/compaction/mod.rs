//! Log compaction (`cleanup.policy=compact`): keeping only the latest record of each
//! key, and tombstones until `delete.retention.ms` after the compaction that first kept
//! them — Kafka's LogCleaner, in the plan/execute shape of the log's reads and flushes.
//!
//! - [`Log::compaction_plan`] (under the lock, bounded work): picks the compactable
//!   segments — never the active one, none reaching the caller's bound (the high
//!   watermark) or the flushed offset, none with records younger than
//!   `min.compaction.lag.ms` — and decides whether compaction is due: dirty bytes
//!   (written since the last compaction's clean point) at least
//!   `min.cleanable.dirty.ratio` of the compactable bytes, the oldest dirty record older
//!   than `max.compaction.lag.ms`, or a tombstone's delete horizon passed.
//! - [`CompactionPlan::execute`] (no lock; the segments it reads are immutable): maps
//!   key → latest offset over the dirty records within the dedupe buffer (stopping at a
//!   batch boundary when full: only records below that point are compacted), then
//!   rewrites every compactable segment below it (see `filter.rs` for what happens to a
//!   batch), grouping adjacent segments into one up to `segment.bytes`, and commits the
//!   cleaned segments crash-safely (see `swap.rs`).
//! - [`Log::compaction_completed`] (under the lock): installs the cleaned segments
//!   unless the log was truncated or trimmed meanwhile (those operations abort an
//!   in-flight compaction first), and records the new clean point, which is also
//!   persisted (`cleaner-offset-checkpoint`, like Kafka's) so a restart does not
//!   compact from scratch. The checkpoint only steers when and from where compaction
//!   maps keys; which records may be dropped never depends on it.
//!
//! Offsets never change: a compacted log has fewer offsets, with gaps between them,
//! and every other part of the log reads across those gaps.

mod execute;
mod filter;
mod offset_map;
pub(crate) mod swap;

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::fs::{FileHandle, Filesystem};

use super::error::LogError;
use super::files::{read_fields, write_fields};
use super::retention::largest_timestamp;
use super::segment::{offset_file, Segment, LOG_FILE_SUFFIX};
use super::Log;
use swap::{SwapGate, SwapRange};

pub use execute::CompactionResult;

/// Default `log.cleaner.dedupe.buffer.size`: 128 MiB, Kafka's.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 128 << 20;
/// Largest inflated records section of a batch compaction looks into; larger batches
/// are kept as they are (and their keys do not supersede older records).
pub const MAX_COMPACTED_BATCH_INFLATED_BYTES: usize = 64 << 20;
/// Partition file holding the clean point and the next tombstone horizon.
pub(crate) const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Stored in the checkpoint for "no tombstone horizon known".
const NO_HORIZON: i64 = -1;

/// Broker-wide bounds on compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanerLimits {
    /// Bytes the key → offset map may hold (`log.cleaner.dedupe.buffer.size`; it may
    /// pass this by one batch's keys).
    pub dedupe_buffer_bytes: usize,
}

impl Default for CleanerLimits {
    fn default() -> Self {
        Self {
            dedupe_buffer_bytes: DEFAULT_DEDUPE_BUFFER_BYTES,
        }
    }
}

/// What one compaction did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Clean point before: records from here on were mapped.
    pub first_dirty_offset: i64,
    /// Clean point after: records below it were compacted against the map.
    pub next_dirty_offset: i64,
    /// Keys in the map.
    pub keys_mapped: u64,
    /// Bytes the map held.
    pub map_bytes: u64,
    /// Segments compacted (read and rewritten, or found to need nothing).
    pub segments_read: u64,
    /// Segments written in their place.
    pub segments_written: u64,
    /// Bytes of the compacted segments before.
    pub bytes_before: u64,
    /// Bytes of the same range after.
    pub bytes_after: u64,
    /// Batches read.
    pub batches_read: u64,
    /// Batches removed whole.
    pub batches_removed: u64,
    /// Records removed (superseded, keyless, or tombstones past their horizon).
    pub records_removed: u64,
    /// Tombstones removed because their delete horizon passed.
    pub tombstones_removed: u64,
    /// The dedupe buffer filled before the dirty records ended: another compaction is
    /// due at once.
    pub map_full: bool,
}

/// A segment the plan reads: immutable while the compaction runs.
#[derive(Debug)]
pub(crate) struct SourceSegment {
    pub base: i64,
    pub next_offset: i64,
    pub size: u64,
    pub offset_index_bytes: u64,
    pub time_index_bytes: u64,
    pub log: Arc<dyn FileHandle>,
    pub path: PathBuf,
    /// Byte position of the first dirty batch, if the segment holds any.
    pub dirty_from: Option<u64>,
}

/// A compaction prepared under the log's lock, to run outside it.
#[derive(Debug)]
pub struct CompactionPlan {
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes: u64,
    pub(crate) segment_index_bytes: u64,
    pub(crate) index_interval_bytes: u64,
    pub(crate) delete_retention_ms: i64,
    pub(crate) now_ms: i64,
    pub(crate) sources: Vec<SourceSegment>,
    /// Base of the segment after the last source.
    pub(crate) end: i64,
    pub(crate) first_dirty: i64,
    pub(crate) producer_last_batches: HashSet<(i64, i64)>,
    pub(crate) dedupe_buffer_bytes: usize,
    pub(crate) gate: Arc<SwapGate>,
}

impl CompactionPlan {
    /// Offsets the plan may compact: from the log's first segment up to (exclusive) this.
    pub fn end_offset(&self) -> i64 {
        self.end
    }

    /// The clean point the plan starts from.
    pub fn first_dirty_offset(&self) -> i64 {
        self.first_dirty
    }
}

/// The log's side of compaction: the clean point and the compaction in flight.
#[derive(Debug, Default)]
pub(crate) struct CleanerState {
    /// Records below this were compacted against a map of everything up to here.
    pub first_dirty: i64,
    /// Earliest delete horizon of a tombstone compaction kept.
    pub next_horizon_ms: Option<i64>,
    /// The compaction planned and not yet completed.
    pub in_flight: Option<Arc<SwapGate>>,
}

/// Reads the partition's cleaner checkpoint: `(clean point, next horizon)`.
///
/// # Errors
/// I/O errors or `CorruptCheckpoint`.
pub(crate) fn read_cleaner_checkpoint(
    fs: &dyn Filesystem,
    dir: &std::path::Path,
) -> Result<Option<(i64, Option<i64>)>, LogError> {
    Ok(read_fields(fs, &dir.join(CLEANER_CHECKPOINT_FILE), 2)?
        .map(|f| (f[0], (f[1] != NO_HORIZON).then_some(f[1]))))
}

/// Writes the partition's cleaner checkpoint atomically (fsync, rename, directory fsync).
pub(crate) fn write_cleaner_checkpoint(
    fs: &dyn Filesystem,
    dir: &std::path::Path,
    first_dirty: i64,
    next_horizon_ms: Option<i64>,
) -> io::Result<()> {
    write_fields(
        fs,
        &dir.join(CLEANER_CHECKPOINT_FILE),
        &[first_dirty, next_horizon_ms.unwrap_or(NO_HORIZON)],
    )
}

impl Log {
    /// The clean point: records below it have been compacted against every record
    /// up to it.
    pub fn first_dirty_offset(&self) -> i64 {
        self.cleaner.first_dirty
    }

    /// Whether a compaction is planned and not yet completed.
    pub fn compaction_in_flight(&self) -> bool {
        self.cleaner.in_flight.is_some()
    }

    /// Plans a compaction if the log is compacted and one is due (see the module
    /// docs), compacting nothing at or beyond `max_offset_exclusive` (the high
    /// watermark). `None` if nothing is due or a compaction is already in flight.
    /// Bounded work: a few batch headers per segment, found through the index.
    ///
    /// # Errors
    /// I/O errors reading headers.
    pub fn compaction_plan(
        &mut self,
        now_ms: i64,
        max_offset_exclusive: i64,
        limits: &CleanerLimits,
    ) -> Result<Option<CompactionPlan>, LogError> {
        if !self.config.cleanup_policy.compact || self.cleaner.in_flight.is_some() {
            return Ok(None);
        }
        let bound = max_offset_exclusive.min(self.flushed_offset);
        let first_dirty = self.cleaner.first_dirty.max(self.segments[0].base_offset);
        let min_lag = self.config.min_compaction_lag_ms;
        let mut sources = Vec::new();
        // Never the active (last) segment.
        for seg in self.segments.iter().take(self.segments.len() - 1) {
            if seg.next_offset > bound
                || (min_lag > 0 && now_ms.saturating_sub(largest_timestamp(seg)) < min_lag)
            {
                break;
            }
            let dirty_from = if seg.next_offset <= first_dirty || seg.is_empty() {
                None
            } else if seg.base_offset >= first_dirty {
                Some(0)
            } else {
                seg.locate(first_dirty)?.map(|(position, _)| position)
            };
            sources.push(SourceSegment {
                base: seg.base_offset,
                next_offset: seg.next_offset,
                size: seg.size,
                offset_index_bytes: seg.offset_index.bytes(),
                time_index_bytes: seg.time_index.bytes(),
                log: Arc::clone(&seg.log),
                path: seg.path.clone(),
                dirty_from,
            });
        }
        if sources.is_empty() {
            return Ok(None);
        }
        let end = self.segments[sources.len()].base_offset;
        let total_bytes: u64 = sources.iter().map(|s| s.size).sum();
        let dirty_bytes: u64 = sources
            .iter()
            .filter_map(|s| s.dirty_from.map(|from| s.size - from))
            .sum();
        let oldest_dirty_ms = self
            .segments
            .iter()
            .take(sources.len())
            .zip(&sources)
            .find(|(_, s)| s.dirty_from.is_some())
            .map(|(seg, _)| seg.first_batch_timestamp.unwrap_or(seg.created_ms));
        let max_lag = self.config.max_compaction_lag_ms;
        let lag_due = oldest_dirty_ms.is_some_and(|t| now_ms.saturating_sub(t) >= max_lag);
        let ratio_due = dirty_bytes > 0
            && dirty_bytes as f64 / total_bytes.max(1) as f64
                >= self.config.min_cleanable_dirty_ratio;
        let horizon_due = self.cleaner.next_horizon_ms.is_some_and(|t| t <= now_ms);
        if !(ratio_due || (dirty_bytes > 0 && lag_due) || horizon_due) {
            return Ok(None);
        }
        let gate = Arc::new(SwapGate::default());
        self.cleaner.in_flight = Some(Arc::clone(&gate));
        Ok(Some(CompactionPlan {
            fs: Arc::clone(&self.fs),
            dir: self.dir.clone(),
            segment_bytes: self.config.effective_segment_bytes(),
            segment_index_bytes: self.config.segment_index_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            delete_retention_ms: self.config.delete_retention_ms,
            now_ms,
            sources,
            end,
            first_dirty,
            producer_last_batches: self.producers.last_batches().collect(),
            dedupe_buffer_bytes: limits.dedupe_buffer_bytes,
            gate,
        }))
    }

    /// Installs what an executed plan produced: replaces the compacted segments (no
    /// fsync under the lock; the cleaned files were fsynced and committed by
    /// `execute`, and the directory is synced by the next flush plan) and records the
    /// new clean point. Returns what the compaction did, or `None` if it was aborted
    /// (the log was truncated or trimmed meanwhile) or found nothing to change.
    ///
    /// # Errors
    /// The execution's error (the compaction is then abandoned; the old segments are
    /// untouched), or I/O errors installing the files (recovery finishes the swap).
    pub fn compaction_completed(
        &mut self,
        result: CompactionResult,
    ) -> Result<Option<CompactionStats>, LogError> {
        let ours = self
            .cleaner
            .in_flight
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, &result.gate));
        if !ours {
            return Ok(None);
        }
        self.cleaner.in_flight = None;
        let compacted = match result.outcome {
            Err(e) => {
                result.gate.abort(&*self.fs, &self.dir)?;
                return Err(e.into());
            }
            Ok(None) => return Ok(None),
            Ok(Some(c)) => c,
        };
        if result.gate.take_committed().is_none() {
            return Ok(None);
        }
        for group in &compacted.groups {
            let present: Vec<i64> = self
                .segments
                .iter()
                .map(|s| s.base_offset)
                .filter(|&b| b >= group.range.base && b < group.range.end)
                .collect();
            if present != group.replaced {
                // Whatever changed the segments should have aborted the compaction.
                for g in &compacted.groups {
                    swap::abandon(&*self.fs, &self.dir, g.range)?;
                }
                self.dir_changes += 1;
                return Err(LogError::Io(io::Error::other(format!(
                    "segments {:?} changed under compaction of {:?}",
                    present, group.replaced
                ))));
            }
        }
        for group in compacted.groups {
            let changes = swap::install(&*self.fs, &self.dir, group.range, &group.replaced)?;
            self.dir_changes += changes;
            let mut segment: Segment = group.segment;
            segment.path = offset_file(&self.dir, group.range.base, LOG_FILE_SUFFIX);
            let at = self
                .segments
                .iter()
                .position(|s| s.base_offset == group.range.base)
                .unwrap_or(0);
            for _ in 0..group.replaced.len() {
                self.segments.remove(at);
            }
            self.segments.insert(at, segment);
        }
        self.cleaner.first_dirty = compacted.stats.next_dirty_offset;
        self.cleaner.next_horizon_ms = compacted.next_horizon_ms;
        Ok(Some(compacted.stats))
    }

    /// Aborts the compaction in flight, if any, before the segments change under it.
    pub(crate) fn abort_compaction(&mut self) -> io::Result<()> {
        if let Some(gate) = self.cleaner.in_flight.take() {
            gate.abort(&*self.fs, &self.dir)?;
            self.dir_changes += 1;
        }
        Ok(())
    }

    /// After a truncation at the end: nothing at or past the log end is clean.
    pub(crate) fn cleaner_after_truncation(&mut self) {
        self.cleaner.first_dirty = self.cleaner.first_dirty.min(self.log_end_offset());
    }
}

/// A cleaned segment ready to replace the group `range`.
#[derive(Debug)]
pub(crate) struct CleanedGroup {
    pub range: SwapRange,
    /// Bases of the segments it replaces, ascending.
    pub replaced: Vec<i64>,
    /// The cleaned segment, its handles on the cleaned (now swap) files.
    pub segment: Segment,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchHeader, BatchIter};
    use crate::fs::FaultyFs;
    use crate::log::{CleanupPolicy, LogConfig};
    use crate::record::{inflate_records, parse_records};
    use crate::testing::{BatchBuilder, TestRecord};
    use std::path::Path;

    const NOW: i64 = 1_700_000_000_000;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 600,
            index_interval_bytes: 100,
            cleanup_policy: CleanupPolicy::COMPACT,
            min_cleanable_dirty_ratio: 0.0,
            ..LogConfig::default()
        }
    }

    /// Every (offset, key, value) in the log.
    fn contents(log: &Log) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let plan = log.read(offset, usize::MAX, i64::MAX, true).unwrap();
            if plan.is_empty() {
                break;
            }
            let bytes = plan.execute().unwrap();
            for item in BatchIter::new(&bytes) {
                let (h, batch): (BatchHeader, &[u8]) = item.unwrap();
                let section = inflate_records(&h, batch, usize::MAX).unwrap();
                for r in parse_records(&section, h.records_count).unwrap() {
                    out.push((
                        h.base_offset + i64::from(r.offset_delta),
                        r.key.unwrap().to_vec(),
                        r.value.map(<[u8]>::to_vec),
                    ));
                }
            }
            offset = plan.next_offset();
        }
        out
    }

    fn write_round(log: &mut Log, round: u8, now: i64) {
        for k in 0..6u8 {
            let mut b = BatchBuilder::keyed(vec![TestRecord::value(&[b'k', k], &[round; 20])])
                .timestamp(now)
                .build();
            log.append_as_leader(&mut b, 0, now).unwrap();
        }
        log.maybe_roll(now + LogConfig::default().segment_ms + 1)
            .unwrap();
        let plan = log.flush_plan().unwrap();
        plan.execute().unwrap();
        log.flush_completed(&plan);
    }

    /// A log of 6 keys written 8 times in small segments and compacted (which leaves
    /// one small segment per old one: grouping goes by the sizes before), then written
    /// once more, with a second compaction executed (committed, its commit durable)
    /// but not installed: that one groups the small segments.
    fn executed() -> (Arc<FaultyFs>, Log, CompactionResult) {
        let fs = Arc::new(FaultyFs::new());
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let (mut log, _) = Log::open(fs.clone(), Path::new("/d/t-0"), config(), 0, NOW).unwrap();
        for round in 0..8u8 {
            write_round(&mut log, round, NOW);
        }
        let limits = CleanerLimits::default();
        let plan = log
            .compaction_plan(NOW, i64::MAX, &limits)
            .unwrap()
            .expect("due");
        log.compaction_completed(plan.execute())
            .unwrap()
            .expect("installed");
        write_round(&mut log, 8, NOW + 2 * LogConfig::default().segment_ms);
        let plan = log
            .compaction_plan(NOW, i64::MAX, &limits)
            .unwrap()
            .expect("due");
        let result = plan.execute();
        (fs, log, result)
    }

    #[test]
    fn recovery_finishes_a_swap_from_every_step_of_its_installation() {
        let (fs, mut log, result) = executed();
        let expected = {
            let before = log.segment_count();
            log.compaction_completed(result)
                .unwrap()
                .expect("installed");
            assert!(log.segment_count() < before, "grouped");
            contents(&log)
        };
        assert_eq!(expected.len(), 6);
        let (_, _, result) = executed();
        let Ok(Some(compacted)) = &result.outcome else {
            panic!("nothing compacted")
        };
        let ops: Vec<swap::DirOp> = compacted
            .groups
            .iter()
            .flat_map(|g| swap::install_ops(Path::new("/d/t-0"), g.range, &g.replaced))
            .collect();
        assert!(
            compacted.groups.iter().any(|g| g.replaced.len() > 1),
            "the test needs a group of several segments"
        );
        for steps in 0..=ops.len() {
            let (fs, log, _result) = executed();
            let rp = log.flushed_offset();
            drop(log);
            for op in &ops[..steps] {
                op.apply(&*fs).unwrap();
            }
            fs.sync_dir(Path::new("/d/t-0")).unwrap();
            fs.crash(steps as u64);
            let (log, _) = Log::open(fs.clone(), Path::new("/d/t-0"), config(), rp, NOW)
                .unwrap_or_else(|e| panic!("open after {steps} steps: {e}"));
            assert_eq!(
                contents(&log),
                expected,
                "after {steps} of {} steps",
                ops.len()
            );
            let names: Vec<String> = fs
                .read_dir(Path::new("/d/t-0"))
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.ends_with(".swap")), "{names:?}");
        }
        drop(fs);
    }

    #[test]
    fn an_abort_after_the_commit_removes_what_recovery_would_install() {
        let (fs, mut log, result) = executed();
        let before = contents(&log);
        let rp = log.flushed_offset();
        // A truncation comes between the commit and the installation.
        log.truncate_to(log.log_end_offset() - 1).unwrap();
        assert!(log.compaction_completed(result).unwrap().is_none());
        let after_truncation = contents(&log);
        assert_eq!(after_truncation[..], before[..before.len() - 1]);
        drop(log);
        fs.crash(5);
        let (log, _) = Log::open(fs.clone(), Path::new("/d/t-0"), config(), rp, NOW).unwrap();
        assert_eq!(contents(&log), after_truncation);
    }
}
