//! Shrinking the log: DeleteRecords (log start offset), time and size retention,
//! time-based rolls, and truncation from the end (follower divergence, leader change).

use std::io;

use super::error::LogError;
use super::files::{remove_if_exists, write_log_start_offset, write_recovery_cap, RecoveryCap};
use super::segment::{offset_file, Segment, LOG_FILE_SUFFIX};
use super::Log;

impl Log {
    /// DeleteRecords: moves the log start offset up to `offset` (the caller checks it is
    /// at most the high watermark), persists it atomically (fsync) before returning, and
    /// deletes whole segments below it. Returns the new log start offset.
    ///
    /// # Errors
    /// `OffsetOutOfRange` if `offset` is beyond the log end; I/O errors.
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        let log_end_offset = self.log_end_offset();
        if offset > log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(self.log_start_offset);
        }
        write_log_start_offset(&*self.fs, &self.dir, offset)?;
        self.log_start_offset = offset;
        while self.segments.len() > 1 && self.segments[1].base_offset <= offset {
            self.delete_oldest_segment()?;
        }
        self.epochs_after_start_moved()?;
        self.sync_dir_now()?;
        Ok(self.log_start_offset)
    }

    /// Retention by time and size over the whole log; see [`Log::enforce_retention_below`].
    ///
    /// # Errors
    /// I/O errors deleting files or rolling.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        self.enforce_retention_below(now_ms, i64::MAX)
    }

    /// Deletes the oldest segments that are entirely below `max_offset_exclusive` (the
    /// high watermark: unreplicated data is never deleted) and either below the log
    /// start offset or — if `cleanup.policy` includes `delete` — expired
    /// (`now - largest timestamp > retention_ms`), beyond `retention_bytes`, or emptied
    /// by compaction. An expired non-empty active segment is rolled first, like Kafka.
    /// Also forgets producers idle longer than `producer_id_expiration_ms`. Returns the
    /// number of segments deleted. If it deleted any, it fsyncs the directory (under the
    /// caller's lock; retention passes are rare).
    ///
    /// # Errors
    /// I/O errors deleting files or rolling.
    pub fn enforce_retention_below(
        &mut self,
        now_ms: i64,
        max_offset_exclusive: i64,
    ) -> Result<usize, LogError> {
        self.producers
            .expire(now_ms, self.config.producer_id_expiration_ms);
        let mut deleted = 0;
        let mut excess_bytes = if self.config.retention_bytes >= 0 {
            self.size_bytes() as i64 - self.config.retention_bytes
        } else {
            i64::MIN
        };
        // cleanup.policy without `delete` keeps data whatever its age or size.
        let delete = self.config.cleanup_policy.delete;
        loop {
            let seg = &self.segments[0];
            let is_active = self.segments.len() == 1;
            if (seg.is_empty() && is_active) || seg.next_offset > max_offset_exclusive {
                break;
            }
            let below_start = seg.next_offset <= self.log_start_offset;
            // Compaction can empty a segment; with `delete` it holds nothing to retain.
            let emptied = delete && seg.is_empty();
            let expired = delete
                && self.config.retention_ms >= 0
                && now_ms.saturating_sub(largest_timestamp(seg)) > self.config.retention_ms;
            let over_size =
                delete && excess_bytes != i64::MIN && excess_bytes - seg.size as i64 >= 0;
            if !(below_start || emptied || expired || over_size) {
                break;
            }
            if excess_bytes != i64::MIN {
                excess_bytes -= seg.size as i64;
            }
            if is_active {
                self.roll(now_ms)?;
            }
            self.delete_oldest_segment()?;
            deleted += 1;
        }
        // One directory fsync per pass, so deleted segments do not come back after a
        // crash and move the log start offset backwards.
        self.sync_dir_now()?;
        Ok(deleted)
    }

    /// Rolls the active segment if it is non-empty and older than `segment_ms`; the
    /// broker calls this periodically. Returns whether it rolled.
    ///
    /// # Errors
    /// I/O errors creating the new segment.
    pub fn maybe_roll(&mut self, now_ms: i64) -> Result<bool, LogError> {
        let active = self.active();
        if active.is_empty() || active.age_ms(now_ms, now_ms) <= self.config.effective_segment_ms()
        {
            return Ok(false);
        }
        self.roll(now_ms)?;
        Ok(true)
    }

    /// Drops every batch that ends at or beyond `offset` (a batch containing `offset`
    /// goes whole, like Kafka), fsyncs the truncation, and rebuilds producer state.
    /// Truncating below the first segment empties the log and restarts it at `offset`.
    ///
    /// Fsyncs under the caller's lock: truncation is rare (leader changes) and must be
    /// durable before new batches reuse the offsets.
    ///
    /// # Errors
    /// `OffsetOutOfRange` for a negative offset; I/O errors.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset >= log_end_offset {
            // No bytes to cut, but an epoch may still start at the log end: this
            // broker led that epoch and appended nothing in it before another leader
            // took over. The truncating follower was told it does not belong (Kafka
            // also always truncates the epoch cache here); kept, it would be the log's
            // latest epoch, every fetch would name it and diverge again, forever.
            return self.epochs_after_truncation();
        }
        if offset < self.segments[0].base_offset {
            return self.truncate_fully_and_start_at(offset);
        }
        self.abort_compaction()?;
        let idx = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let new_end = if offset <= self.segments[idx].base_offset {
            self.segments[idx].base_offset
        } else {
            // Within a compaction gap the next batch starts past `offset`.
            self.segments[idx]
                .boundary_at_offset(offset)?
                .offset
                .min(offset)
        };
        self.cap_recovery_point(new_end)?;
        self.generation += 1;
        while self.segments.len() > idx + 1 {
            if let Some(seg) = self.segments.pop_back() {
                seg.delete_files(&*self.fs, &self.dir)?;
                self.dir_changes += 1;
            }
        }
        let active = self.active_mut();
        active.truncate_to(offset)?;
        active.sync()?;
        self.remove_snapshots_above(new_end)?;
        self.sync_dir_now()?;
        self.flushed_offset = self.flushed_offset.min(new_end);
        self.log_start_offset = self.log_start_offset.min(new_end);
        self.rebuild_producer_state()?;
        self.epochs_after_truncation()?;
        self.cleaner_after_truncation();
        Ok(())
    }

    /// Deletes every segment and restarts the log, empty, at `offset` (a follower whose
    /// log is entirely behind the leader's log start, or divergent below its first
    /// segment). Fsyncs before returning.
    ///
    /// # Errors
    /// `OffsetOutOfRange` for a negative offset; I/O errors.
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), LogError> {
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset(),
            });
        }
        self.abort_compaction()?;
        self.cap_recovery_point(offset)?;
        write_log_start_offset(&*self.fs, &self.dir, offset)?;
        self.generation += 1;
        // Newest first, so a crash midway leaves a shorter but consistent log.
        while let Some(seg) = self.segments.pop_back() {
            if let Err(e) = seg.delete_files(&*self.fs, &self.dir) {
                self.segments.push_back(seg);
                return Err(e.into());
            }
            self.dir_changes += 1;
        }
        let now_ms = self.segments.front().map_or(0, |s| s.created_ms);
        let fresh = Segment::create(&*self.fs, &self.dir, offset, now_ms)?;
        self.segments.push_back(fresh);
        self.dir_changes += 1;
        self.remove_snapshots_above(i64::MIN)?;
        self.sync_dir_now()?;
        self.unsynced_files.clear();
        self.log_start_offset = offset;
        self.flushed_offset = offset;
        self.producers = Default::default();
        self.epochs = Default::default();
        self.write_epoch_checkpoint()?;
        self.cleaner_after_truncation();
        Ok(())
    }

    /// Before data below the flushed offset is removed, records that recovery must start
    /// at or below `new_end` until the log is flushed past today's flushed offset again.
    fn cap_recovery_point(&mut self, new_end: i64) -> io::Result<()> {
        if new_end >= self.flushed_offset {
            return Ok(());
        }
        let cap = match self.recovery_cap {
            Some(c) => RecoveryCap {
                below: c.below.min(new_end),
                until: c.until.max(self.flushed_offset),
            },
            None => RecoveryCap {
                below: new_end,
                until: self.flushed_offset,
            },
        };
        write_recovery_cap(&*self.fs, &self.dir, cap)?;
        self.recovery_cap = Some(cap);
        Ok(())
    }

    /// Fsyncs snapshot files written since the last flush, and the directory.
    fn sync_unsynced_files(&mut self) -> io::Result<()> {
        for (_, f) in &self.unsynced_files {
            f.sync_data()?;
        }
        self.unsynced_files.clear();
        self.sync_dir_now()
    }

    /// Syncs the partition directory now if entries changed since the last sync.
    pub(super) fn sync_dir_now(&mut self) -> io::Result<()> {
        if self.dir_changes > self.dir_synced_changes {
            self.fs.sync_dir(&self.dir)?;
            self.dir_synced_changes = self.dir_changes;
        }
        Ok(())
    }

    /// Removes producer snapshots at offsets above `offset` (they describe batches that
    /// are gone).
    pub(crate) fn remove_snapshots_above(&mut self, offset: i64) -> io::Result<()> {
        let doomed: Vec<i64> = self
            .snapshots
            .range(offset.saturating_add(1)..)
            .copied()
            .collect();
        for s in doomed {
            remove_if_exists(&*self.fs, &self.snapshot_path(s))?;
            self.snapshots.remove(&s);
            self.dir_changes += 1;
        }
        Ok(())
    }

    /// Deletes the oldest segment (never the last one) and the snapshots that only it
    /// needed; moves the log start offset up to the next segment if needed.
    pub(super) fn delete_oldest_segment(&mut self) -> Result<(), LogError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        self.abort_compaction()?;
        // Once this segment is gone, recovery can only start from a snapshot at or after
        // the next segment's base: make sure one exists there and is durable.
        self.sync_unsynced_files()?;
        self.ensure_snapshot_at(self.segments[1].base_offset)?;
        let base = self.segments[0].base_offset;
        // Data file first: once it is gone the segment is gone, whatever else fails.
        remove_if_exists(&*self.fs, &offset_file(&self.dir, base, LOG_FILE_SUFFIX))?;
        self.dir_changes += 1;
        if let Some(seg) = self.segments.pop_front() {
            seg.delete_files(&*self.fs, &self.dir)?;
        }
        let new_first = self.segments[0].base_offset;
        self.log_start_offset = self.log_start_offset.max(new_first);
        self.epochs_after_start_moved()?;
        let newest = self.snapshots.last().copied();
        let doomed: Vec<i64> = self
            .snapshots
            .range(..new_first)
            .copied()
            .filter(|s| Some(*s) != newest)
            .collect();
        for s in doomed {
            remove_if_exists(&*self.fs, &self.snapshot_path(s))?;
            self.snapshots.remove(&s);
        }
        Ok(())
    }
}

/// The timestamp retention compares with: the newest record's, or the segment's creation
/// time if its records carry none.
pub(crate) fn largest_timestamp(seg: &Segment) -> i64 {
    match seg.max_timestamp {
        Some(m) if m.timestamp >= 0 => m.timestamp,
        _ => seg.created_ms,
    }
}
