//! Opening a log: classify the directory, load each segment (trusting index entries only
//! below the recovery point, and only after checking the last one against the data),
//! re-validate every batch from there on, cut the log at the first torn or corrupt batch
//! at or after the recovery point, refuse to open if a batch below it is bad, then rebuild
//! producer state (see `snapshots.rs`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use crate::batch::{validate_batch, BatchHeader, RECORD_BATCH_HEADER_BYTES};
use crate::fs::{parent_dir, Filesystem};

use super::compaction::swap::finish_interrupted;
use super::compaction::{read_cleaner_checkpoint, CleanerState};
use super::config::LogConfig;
use super::epoch_cache::read_epoch_checkpoint;
use super::error::LogError;
use super::files::{read_log_start_offset, read_recovery_cap, remove_if_exists, DirListing};
use super::index::{OffsetIndex, TimeIndex};
use super::producer_state::ProducerStateManager;
use super::scan::{BatchCursor, ScanError, BATCH_SCAN_CHUNK_BYTES};
use super::segment::{
    delete_segment_files, offset_file, MaxTimestamp, Segment, LOG_FILE_SUFFIX,
    OFFSET_INDEX_FILE_SUFFIX, TIME_INDEX_FILE_SUFFIX,
};
use super::{Log, RecoveryReport};

/// A segment as recovery left it.
struct LoadedSegment {
    segment: Segment,
    /// Offset and bytes cut from a torn or corrupt tail.
    truncated: Option<(i64, u64)>,
    /// Index files could not be resumed from and were rebuilt from the data.
    rebuilt: bool,
    /// Files were modified (indexes rewritten, data truncated).
    changed: bool,
}

/// Which segment to load and how much of it to trust.
#[derive(Clone, Copy, Debug)]
struct SegmentLoad {
    /// Base offset (file name).
    base: i64,
    /// Index entries for offsets below this are trusted.
    trusted_below: i64,
    /// Bad batches below this are errors; at or above, the log is cut.
    recovery_point: i64,
    /// Whether walked batches have their CRC checked (else framing only).
    check_crc: bool,
}

/// Lengths of a segment's files, for reporting deleted bytes.
fn segment_file_len(fs: &dyn Filesystem, dir: &Path, base: i64) -> u64 {
    fs.open(&offset_file(dir, base, LOG_FILE_SUFFIX), false)
        .and_then(|f| f.len())
        .unwrap_or(0)
}

/// Continues `seg` from its last offset index entry if that entry points at the batch it
/// names (and the last time index entry before it names a batch with that timestamp);
/// otherwise empties the in-memory state so the caller rescans from byte 0.
/// Returns whether it resumed.
fn resume_from_index(seg: &mut Segment) -> bool {
    let reset = |seg: &mut Segment| {
        seg.offset_index.replace(Vec::new());
        seg.time_index.replace(Vec::new());
        seg.size = 0;
        seg.next_offset = seg.base_offset;
        seg.max_timestamp = None;
        seg.bytes_since_index_entry = 0;
    };
    let Some(last) = seg.offset_index.last() else {
        reset(seg);
        return false;
    };
    let position = u64::from(last.position);
    let offset = seg.base_offset + i64::from(last.relative_offset);
    let mut buf = [0u8; RECORD_BATCH_HEADER_BYTES];
    let names_batch = seg.log.read_exact_at(&mut buf, position).is_ok()
        && BatchHeader::parse(&buf).is_ok_and(|h| h.base_offset == offset);
    if !names_batch {
        reset(seg);
        return false;
    }
    seg.size = position;
    seg.next_offset = offset;
    seg.bytes_since_index_entry = 0;
    let before: Vec<_> = seg
        .time_index
        .entries()
        .iter()
        .copied()
        .filter(|e| e.relative_offset < last.relative_offset)
        .collect();
    seg.time_index.replace(before);
    seg.max_timestamp = None;
    if let Some(e) = seg.time_index.last() {
        let named = seg.base_offset + i64::from(e.relative_offset);
        match seg.locate(named) {
            Ok(Some((_, h))) if h.last_offset() == named && h.max_timestamp == e.timestamp => {
                seg.max_timestamp = Some(MaxTimestamp {
                    timestamp: e.timestamp,
                    offset: named,
                });
            }
            _ => {
                reset(seg);
                return false;
            }
        }
    }
    true
}

/// Loads one segment, trusting index entries below `trusted_below`, and walks every
/// batch after the point it resumes from, checking framing and offset continuity, and
/// CRCs too if `check_crc`. A bad batch at an offset below `recovery_point` is an error;
/// at or above it, the segment is cut there.
fn load_segment(
    fs: &dyn Filesystem,
    dir: &Path,
    how: SegmentLoad,
    config: &LogConfig,
    now_ms: i64,
) -> Result<LoadedSegment, LogError> {
    let SegmentLoad {
        base,
        trusted_below,
        recovery_point,
        check_crc,
    } = how;
    let path = offset_file(dir, base, LOG_FILE_SUFFIX);
    let log = fs.open(&path, false)?;
    let file_len = log.len()?;
    let offset_index_path = offset_file(dir, base, OFFSET_INDEX_FILE_SUFFIX);
    let time_index_path = offset_file(dir, base, TIME_INDEX_FILE_SUFFIX);
    let indexes_existed = fs.exists(&offset_index_path) && fs.exists(&time_index_path);
    let trusted_relative = trusted_below - base;
    let offset_index = OffsetIndex::load(fs.open(&offset_index_path, true)?, |e| {
        i64::from(e.relative_offset) < trusted_relative && u64::from(e.position) < file_len
    })?;
    let time_index = TimeIndex::load(fs.open(&time_index_path, true)?, |e| {
        i64::from(e.relative_offset) < trusted_relative
    })?;
    let loaded_entries = (offset_index.entries().len(), time_index.entries().len());
    let mut seg = Segment {
        base_offset: base,
        next_offset: base,
        size: 0,
        path: path.clone(),
        log: Arc::clone(&log),
        offset_index,
        time_index,
        bytes_since_index_entry: 0,
        max_timestamp: None,
        first_batch_timestamp: None,
        created_ms: now_ms,
    };
    let resumed = resume_from_index(&mut seg);
    let rebuilt = !resumed && file_len > 0 && (loaded_entries.0 > 0 || !indexes_existed);
    let known_entries = if resumed {
        (
            seg.offset_index.entries().len(),
            seg.time_index.entries().len(),
        )
    } else {
        (0, 0)
    };

    let mut truncated = None;
    let mut cursor = BatchCursor::new(&*log, seg.size, file_len, BATCH_SCAN_CHUNK_BYTES);
    loop {
        let expected = seg.next_offset;
        let (position, reason) = match cursor.next_header() {
            Ok(None) => break,
            Ok(Some((position, h))) => {
                // Offsets strictly increase; compaction leaves gaps, nothing leaves overlaps.
                let problem = if h.base_offset < expected {
                    Some(format!(
                        "batch at offset {} where at least {expected} was expected",
                        h.base_offset
                    ))
                } else if check_crc {
                    let bytes = cursor.bytes_at(position, h.total_bytes())?;
                    validate_batch(&h, bytes, usize::MAX)
                        .err()
                        .map(|e| e.to_string())
                } else {
                    None
                };
                match problem {
                    None => {
                        seg.track_recovered(&h, config.index_interval_bytes);
                        continue;
                    }
                    Some(reason) => (position, reason),
                }
            }
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Batch { position, error }) => (position, error.to_string()),
        };
        if expected < recovery_point {
            return Err(LogError::CorruptBelowRecoveryPoint {
                path,
                position,
                offset: expected,
                recovery_point,
                reason,
            });
        }
        tracing::warn!(
            path = %path.display(), position, offset = expected, %reason,
            "truncating torn or corrupt log tail"
        );
        truncated = Some((expected, file_len - position));
        break;
    }
    let mut changed = false;
    if let Some((_, bytes)) = truncated {
        log.set_len(file_len - bytes)?;
        changed = true;
    }
    changed |= seg.offset_index.persist_from(known_entries.0)?;
    changed |= seg.time_index.persist_from(known_entries.1)?;
    if seg.size > 0 {
        let mut buf = [0u8; RECORD_BATCH_HEADER_BYTES];
        if log.read_exact_at(&mut buf, 0).is_ok() {
            seg.first_batch_timestamp = BatchHeader::parse(&buf).ok().map(|h| h.max_timestamp);
        }
    }
    Ok(LoadedSegment {
        segment: seg,
        truncated,
        rebuilt,
        changed,
    })
}

impl Log {
    /// Opens or creates the partition directory `dir` and recovers it.
    ///
    /// Every batch at or after `recovery_point` (the last [`Log::flushed_offset`] the
    /// caller checkpointed) is re-validated — framing, CRC-32C, offset continuity — and
    /// the log is cut at the first torn or corrupt one; a bad batch below the recovery
    /// point is an error, never skipped. Index entries are trusted only below the
    /// recovery point, and only after the last one is checked against the data.
    /// Producer state comes from the newest intact snapshot plus the batches after it.
    /// Everything recovered is fsynced, so afterwards `flushed_offset() == log_end_offset()`.
    ///
    /// # Errors
    /// `CorruptBelowRecoveryPoint`, `CorruptCheckpoint`, or I/O errors.
    pub fn open(
        fs: Arc<dyn Filesystem>,
        dir: &Path,
        config: LogConfig,
        recovery_point: i64,
        now_ms: i64,
    ) -> Result<(Log, RecoveryReport), LogError> {
        let dir = dir.to_path_buf();
        if !fs.exists(&dir) {
            fs.create_dir_all(&dir)?;
            fs.sync_dir(parent_dir(&dir))?;
        }
        let mut dir_changes = 0u64;
        let mut listing = DirListing::read(&*fs, &dir)?;
        if !listing.swaps.is_empty() {
            // A compaction committed its cleaned segments but a crash came before they
            // replaced the old ones: finish the swap.
            for &range in &listing.swaps {
                tracing::info!(dir = %dir.display(), base = range.base, end = range.end, "finishing an interrupted compaction swap");
                dir_changes += finish_interrupted(&*fs, &dir, range, &listing.segments)?;
            }
            fs.sync_dir(&dir)?;
            listing = DirListing::read(&*fs, &dir)?;
        }
        for orphan in &listing.orphans {
            remove_if_exists(&*fs, orphan)?;
            dir_changes += 1;
        }
        let start_checkpoint = read_log_start_offset(&*fs, &dir)?;
        // Advisory (it only steers when and from where compaction maps keys): a damaged
        // one means compacting from the start again.
        let cleaner_checkpoint = read_cleaner_checkpoint(&*fs, &dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %dir.display(), "ignoring the cleaner checkpoint: {e}");
            None
        });
        let recovery_cap = read_recovery_cap(&*fs, &dir)?;
        let epoch_checkpoint = read_epoch_checkpoint(&*fs, &dir)?;
        let rp = recovery_cap.map_or(recovery_point, |c| recovery_point.min(c.below));
        let mut report = RecoveryReport {
            recovered_from: rp,
            ..RecoveryReport::default()
        };

        let bases = listing.segments;
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut to_sync = Vec::new();
        let mut cut = false;
        for (i, &base) in bases.iter().enumerate() {
            // DeleteRecords persists the new start before deleting segments; a crash in
            // between leaves segments wholly below it. They are still read (producer state
            // may live only there) and deleted once the log is open; if they are damaged,
            // they are dropped instead, since nobody can read them anyway.
            let below_start = start_checkpoint
                .is_some_and(|start| bases.get(i + 1).is_some_and(|&next| next <= start));
            let drop_prefix = |segments: &mut VecDeque<Segment>, why: &str| {
                tracing::warn!(dir = %dir.display(), base, %why, "dropping damaged segments below the log start");
                segments.clear();
            };
            if !cut {
                if let Some(prev) = segments.back() {
                    let expected = prev.next_offset;
                    // A gap between segments is what compaction leaves (a segment whose
                    // last batches it removed); an overlap is damage.
                    if base < expected {
                        if expected < rp {
                            return Err(LogError::CorruptBelowRecoveryPoint {
                                path: offset_file(&dir, base, LOG_FILE_SUFFIX),
                                position: 0,
                                offset: expected,
                                recovery_point: rp,
                                reason: format!(
                                    "segment starts at offset {base} but the previous one reaches {expected}"
                                ),
                            });
                        }
                        cut = true;
                        report.truncated_at = Some(expected);
                    }
                }
            }
            if cut {
                report.truncated_bytes += segment_file_len(&*fs, &dir, base);
                delete_segment_files(&*fs, &dir, base)?;
                report.segments_deleted += 1;
                dir_changes += 1;
                continue;
            }
            // A segment wholly below the recovery point was fsynced whole: its indexes are
            // trusted and only the batches after its last index entry are walked (headers
            // only, to find its exact end). The segment holding the recovery point and
            // every later one have their batches' CRCs checked from where they resume.
            let (trusted_below, check_crc) = match bases.get(i + 1) {
                Some(&next) if next <= rp => (next, false),
                _ => (rp, true),
            };
            let how = SegmentLoad {
                base,
                trusted_below,
                recovery_point: rp,
                check_crc,
            };
            let loaded = match load_segment(&*fs, &dir, how, &config, now_ms) {
                Ok(loaded) => loaded,
                Err(e @ LogError::CorruptBelowRecoveryPoint { .. }) if below_start => {
                    for b in segments.iter().map(|s| s.base_offset).chain([base]) {
                        delete_segment_files(&*fs, &dir, b)?;
                        report.segments_deleted += 1;
                        dir_changes += 1;
                    }
                    drop_prefix(&mut segments, &e.to_string());
                    to_sync.clear();
                    continue;
                }
                Err(e) => return Err(e),
            };
            report.indexes_rebuilt += usize::from(loaded.rebuilt);
            if let Some((offset, bytes)) = loaded.truncated {
                report.truncated_at = Some(offset);
                report.truncated_bytes += bytes;
                cut = true;
            }
            if loaded.changed || loaded.segment.next_offset > rp {
                to_sync.push(segments.len());
            }
            segments.push_back(loaded.segment);
        }
        if segments.is_empty() {
            let base = start_checkpoint.unwrap_or(0).max(0);
            segments.push_back(Segment::create(&*fs, &dir, base, now_ms)?);
            dir_changes += 1;
        }
        for i in to_sync {
            segments[i].sync()?;
        }
        let first_base = segments[0].base_offset;
        let log_end_offset = segments.back().map_or(first_base, |s| s.next_offset);
        if log_end_offset < rp {
            tracing::warn!(
                dir = %dir.display(), log_end_offset, recovery_point = rp,
                "log ends below the recovery point"
            );
            report.ended_below_recovery_point = true;
        }
        let log_start_offset = start_checkpoint
            .map_or(first_base, |s| s.max(first_base))
            .min(log_end_offset);

        let mut log = Log {
            fs,
            dir,
            config,
            segments,
            log_start_offset,
            flushed_offset: log_end_offset,
            generation: 0,
            dir_changes,
            dir_synced_changes: 0,
            unsynced_files: Vec::new(),
            unsynced_seq: 0,
            producers: ProducerStateManager::default(),
            snapshots: listing.snapshots.into_iter().collect(),
            recovery_cap,
            epochs: Default::default(),
            cleaner: CleanerState {
                first_dirty: cleaner_checkpoint
                    .map_or(first_base, |(first_dirty, _)| first_dirty)
                    .clamp(first_base, log_end_offset),
                next_horizon_ms: cleaner_checkpoint.and_then(|(_, horizon)| horizon),
                in_flight: None,
            },
        };
        let (snapshot, replayed) = log.rebuild_producer_state()?;
        while log.segments.len() > 1 && log.segments[1].base_offset <= log.log_start_offset {
            log.delete_oldest_segment()?;
            report.segments_deleted += 1;
        }
        log.recover_epochs(epoch_checkpoint, rp)?;
        log.sync_dir_now()?;
        log.producers
            .expire(now_ms, log.config.producer_id_expiration_ms);
        log.maybe_drop_recovery_cap();

        report.producer_snapshot = snapshot;
        report.replayed_batches = replayed;
        report.log_start_offset = log.log_start_offset;
        report.log_end_offset = log.log_end_offset();
        report.segments = log.segments.len();
        Ok((log, report))
    }
}
