//! Appends: the leader path (validate, check producer sequences, assign offsets, patch,
//! write) and the follower path (validate, check continuity, write), and segment rolls.
//! No fsync happens here; durability comes from [`super::FlushPlan`].

use std::io;
use std::sync::Arc;

use crate::batch::{
    set_base_offset, set_log_append_time, set_max_timestamp, set_partition_leader_epoch,
    validate_batches, validate_uncompressed_records, BatchError, BatchHeader, TimestampType,
    RECORD_BATCH_HEADER_BYTES,
};

use crate::record::{check_keys, records_max_timestamp};

use super::compaction::MAX_COMPACTED_BATCH_INFLATED_BYTES;
use super::error::AppendError;
use super::producer_state::Verdict;
use super::segment::Segment;
use super::{AppendInfo, AppendOrigin, LeaderAppend, Log};

/// Largest batch a follower accepts: whatever the leader accepted (`batchLength` is i32).
const FOLLOWER_MAX_BATCH_BYTES: usize = i32::MAX as usize;
/// Attribute bit a LogAppendTime batch carries.
const LOG_APPEND_TIME_ATTRIBUTE: i16 = 0x08;

/// What a leader append writes at the start of one batch instead of what it was given.
enum Patched {
    /// The batch's header with offsets and leader epoch assigned, and the batch's length;
    /// the rest of the batch is written as it came.
    Header([u8; RECORD_BATCH_HEADER_BYTES], usize),
    /// A patched copy of the whole batch (LogAppendTime changes bytes under the CRC).
    Whole(Vec<u8>),
}

impl Patched {
    /// The patched bytes, from the start of the batch.
    fn bytes(&self) -> &[u8] {
        match self {
            Patched::Header(h, _) => h,
            Patched::Whole(v) => v,
        }
    }

    /// Length of the whole batch.
    fn total_bytes(&self) -> usize {
        match self {
            Patched::Header(_, total) => *total,
            Patched::Whole(v) => v.len(),
        }
    }
}

/// Checks that only apply to batches written by producers (Kafka's LogValidator).
fn check_client_rules(h: &BatchHeader, origin: AppendOrigin) -> Result<(), AppendError> {
    if h.records_count <= 0 {
        return Err(AppendError::InvalidRecord(format!(
            "batch reports {} records",
            h.records_count
        )));
    }
    if i64::from(h.last_offset_delta) + 1 != i64::from(h.records_count) {
        return Err(AppendError::InvalidRecord(format!(
            "batch has {} records but spans {} offsets",
            h.records_count,
            i64::from(h.last_offset_delta) + 1
        )));
    }
    if h.is_control() && origin == AppendOrigin::Client {
        return Err(AppendError::InvalidRecord(
            "clients may not write control batches".to_string(),
        ));
    }
    if h.has_producer_id() && !h.is_control() && h.base_sequence < 0 {
        return Err(AppendError::InvalidRecord(format!(
            "producer {} wrote sequence {}",
            h.producer_id, h.base_sequence
        )));
    }
    Ok(())
}

impl Log {
    /// Appends batches from a producer: validates them (framing, CRC, size, client rules),
    /// checks idempotent-producer sequences for batches with a producer id, assigns
    /// offsets and `leader_epoch` in place, applies LogAppendTime if configured, rolls the
    /// segment if needed, and writes. Does not fsync.
    ///
    /// # Errors
    /// See [`AppendError`]; nothing is written unless the error is `Io`.
    pub fn append_as_leader(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LeaderAppend, AppendError> {
        self.append_as_leader_from(batches, leader_epoch, now_ms, AppendOrigin::Client)
    }

    /// [`Log::append_as_leader`] for a given origin (coordinators may write control batches).
    ///
    /// # Errors
    /// See [`AppendError`].
    pub fn append_as_leader_from(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
        origin: AppendOrigin,
    ) -> Result<LeaderAppend, AppendError> {
        let (appended, patched) = self.append_leader(batches, leader_epoch, now_ms, origin)?;
        let mut position = 0;
        for p in &patched {
            let written = p.bytes();
            let total = p.total_bytes();
            batches[position..position + written.len()].copy_from_slice(written);
            position += total;
        }
        Ok(appended)
    }

    /// [`Log::append_as_leader`] for batches the caller cannot lend mutably (a slice
    /// of a request frame): the batches are not patched in place; the patched headers
    /// are written next to the unchanged rest of each batch (one vectored write), so
    /// the bytes are never copied in user space.
    ///
    /// # Errors
    /// See [`AppendError`]; nothing is written unless the error is `Io`.
    pub fn append_as_leader_shared(
        &mut self,
        batches: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LeaderAppend, AppendError> {
        self.append_leader(batches, leader_epoch, now_ms, AppendOrigin::Client)
            .map(|(appended, _)| appended)
    }

    /// The leader append; returns what was written in place of each batch's start
    /// (empty for a duplicate, which writes nothing).
    fn append_leader(
        &mut self,
        batches: &[u8],
        leader_epoch: i32,
        now_ms: i64,
        origin: AppendOrigin,
    ) -> Result<(LeaderAppend, Vec<Patched>), AppendError> {
        let max = self.config.max_message_bytes as usize;
        let mut headers = validate_batches(batches, max).map_err(|e| match e {
            BatchError::TooLarge { size, max } => AppendError::MessageTooLarge { size, max },
            e => AppendError::Batch(e),
        })?;
        if headers.is_empty() {
            return Err(AppendError::InvalidRecord("no record batches".to_string()));
        }
        let mut position = 0;
        // Batches whose header's maxTimestamp is not their records' largest timestamp
        // (some clients, e.g. sarama, leave it -1): stored with the true one, as Kafka's
        // validator sets it, so the time index and ListOffsets by timestamp find them.
        let mut fix_max_timestamp = vec![false; headers.len()];
        for (h, fix) in headers.iter_mut().zip(&mut fix_max_timestamp) {
            check_client_rules(h, origin)?;
            // Readers trust a stored batch's record count and lengths (Kafka refuses
            // batches whose records disagree with them, and so does keel, for the
            // batches it can read without decompressing).
            let bytes = &batches[position..position + h.total_bytes()];
            let mut records_max = validate_uncompressed_records(h, bytes)
                .map_err(|e| AppendError::InvalidRecord(e.to_string()))?;
            if records_max.is_none() && h.max_timestamp < h.base_timestamp && !h.is_control() {
                // A compressed batch whose header cannot be right (its largest
                // timestamp below its first): only then are its records inflated.
                records_max = records_max_timestamp(h, bytes, MAX_COMPACTED_BATCH_INFLATED_BYTES)
                    .map_err(|e| AppendError::InvalidRecord(e.to_string()))?;
            }
            if let Some(records_max) = records_max.filter(|m| *m != h.max_timestamp) {
                h.max_timestamp = records_max;
                *fix = true;
            }
            // Compaction keeps the latest record per key: a record without one has no
            // place in a compacted log (Kafka decompresses to check this too).
            if self.config.cleanup_policy.compact {
                check_keys(h, bytes, MAX_COMPACTED_BATCH_INFLATED_BYTES)
                    .map_err(AppendError::InvalidRecord)?;
            }
            position += h.total_bytes();
        }
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let timestamp_of = |h: &BatchHeader| {
            if log_append_time {
                now_ms
            } else {
                h.max_timestamp
            }
        };

        let base_offset = self.log_end_offset();
        let mut pending = self.producers.begin();
        let mut next = base_offset;
        for h in &headers {
            if h.has_producer_id() {
                if let Verdict::Duplicate(b) = pending.check_leader(h, next, timestamp_of(h))? {
                    let info = AppendInfo {
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                        log_append_time_ms: if log_append_time { b.timestamp } else { -1 },
                        log_start_offset: self.log_start_offset,
                        records: (b.last_offset - b.base_offset + 1) as u32,
                    };
                    return Ok((LeaderAppend::Duplicate(info), Vec::new()));
                }
            }
            next += i64::from(h.last_offset_delta) + 1;
        }
        let staged = pending.into_staged();

        let mut position = 0;
        let mut next = base_offset;
        let mut records: u32 = 0;
        let mut patched = Vec::with_capacity(headers.len());
        for (h, fix_max_timestamp) in headers.iter_mut().zip(fix_max_timestamp) {
            let batch = &batches[position..position + h.total_bytes()];
            let p = if log_append_time {
                // The CRC covers the timestamps: patch a copy of the whole batch.
                let mut copy = batch.to_vec();
                set_base_offset(&mut copy, next);
                set_partition_leader_epoch(&mut copy, leader_epoch);
                set_log_append_time(&mut copy, now_ms);
                h.max_timestamp = now_ms;
                h.attributes |= LOG_APPEND_TIME_ATTRIBUTE;
                Patched::Whole(copy)
            } else if fix_max_timestamp {
                let mut copy = batch.to_vec();
                set_base_offset(&mut copy, next);
                set_partition_leader_epoch(&mut copy, leader_epoch);
                set_max_timestamp(&mut copy, h.max_timestamp);
                Patched::Whole(copy)
            } else {
                // Offsets and the leader epoch lie outside the CRC: only the header
                // changes.
                let mut header = [0u8; RECORD_BATCH_HEADER_BYTES];
                header.copy_from_slice(&batch[..RECORD_BATCH_HEADER_BYTES]);
                set_base_offset(&mut header, next);
                set_partition_leader_epoch(&mut header, leader_epoch);
                Patched::Header(header, h.total_bytes())
            };
            patched.push(p);
            h.base_offset = next;
            h.partition_leader_epoch = leader_epoch;
            next = h.next_offset();
            position += h.total_bytes();
            records = records.saturating_add(h.records_count as u32);
        }
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(2 * patched.len());
        let mut position = 0;
        for p in &patched {
            pieces.push(p.bytes());
            let rest = position + p.bytes().len()..position + p.total_bytes();
            if !rest.is_empty() {
                pieces.push(&batches[rest]);
            }
            position += p.total_bytes();
        }
        self.write_batches(&pieces, position as u64, &headers, now_ms)?;
        self.producers.commit(staged);
        let info = AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset: self.log_start_offset,
            records,
        };
        Ok((LeaderAppend::Appended(info), patched))
    }

    /// Appends batches replicated from the leader: offsets are already assigned and must
    /// strictly increase from the log end (a compacted leader's batches skip the offsets
    /// it removed, so gaps are accepted, as in Kafka; each replica compacts its own log);
    /// framing and CRCs are checked; producer state is updated without sequence checks.
    /// Does not fsync.
    ///
    /// # Errors
    /// `Batch` for bad bytes, `OffsetsNotMonotonic` for a batch starting below the log
    /// end or the previous batch's end, `Io`.
    pub fn append_as_follower(
        &mut self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, AppendError> {
        let headers = validate_batches(batches, FOLLOWER_MAX_BATCH_BYTES)?;
        let base_offset = self.log_end_offset();
        let mut expected = base_offset;
        let mut records: u32 = 0;
        for h in &headers {
            if h.base_offset < expected {
                return Err(AppendError::OffsetsNotMonotonic {
                    expected,
                    actual: h.base_offset,
                });
            }
            expected = h.next_offset();
            records = records.saturating_add(h.records_count.max(0) as u32);
        }
        if !headers.is_empty() {
            self.write_batches(&[batches], batches.len() as u64, &headers, now_ms)?;
            for h in &headers {
                self.producers.apply_replicated(h);
            }
        }
        Ok(AppendInfo {
            base_offset: headers.first().map_or(base_offset, |h| h.base_offset),
            last_offset: expected - 1,
            log_append_time_ms: -1,
            log_start_offset: self.log_start_offset,
            records,
        })
    }

    /// Rolls if needed, then writes validated batches (`len` bytes in `pieces`, in
    /// order) at the end of the active segment.
    fn write_batches(
        &mut self,
        pieces: &[&[u8]],
        len: u64,
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<(), AppendError> {
        if self
            .active()
            .should_roll(&self.config, len, headers, now_ms)
        {
            self.roll(now_ms)?;
        }
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(pieces, len, headers, interval)?;
        self.note_batch_epochs(
            headers
                .iter()
                .map(|h| (h.partition_leader_epoch, h.base_offset)),
        )?;
        Ok(())
    }

    /// Starts a new active segment at the log end and snapshots producer state there.
    ///
    /// Fsyncs the outgoing segment first (under the caller's lock; rolls are rare), so
    /// a new segment that survives a crash always follows a complete one: a gap between
    /// segments on disk is then only ever one that compaction or replication of a
    /// compacted leader made, never lost data, and recovery can accept it.
    /// The snapshot is written without fsync: the next flush plan syncs it and the new
    /// directory entries; a torn snapshot fails its CRC on recovery and an older one is used.
    pub(crate) fn roll(&mut self, now_ms: i64) -> io::Result<()> {
        let base = self.log_end_offset();
        if self.active().base_offset == base {
            return Ok(());
        }
        self.active().sync()?;
        let segment = Segment::create(&*self.fs, &self.dir, base, now_ms)?;
        self.dir_changes += 1;
        // A snapshot already at `base` describes the same batches (truncation removes
        // those above the log end); never overwrite one in place, it may be the only
        // durable copy.
        if !self.snapshots.contains(&base) {
            let snapshot = self.fs.open(&self.snapshot_path(base), true)?;
            snapshot.set_len(0)?;
            snapshot.write_all_at(&self.producers.encode_snapshot(), 0)?;
            self.snapshots.insert(base);
            self.unsynced_seq += 1;
            self.unsynced_files
                .push((self.unsynced_seq, Arc::clone(&snapshot)));
        }
        self.segments.push_back(segment);
        Ok(())
    }
}
