//! Reads: planning fetches (which bytes of which segment) and the timestamp lookups
//! behind ListOffsets. Planning reads a few batch headers at most (bounded by the index
//! interval); the batch bytes are read by [`ReadPlan::execute`] outside the lock.

use std::sync::Arc;

use bytes::Bytes;

use super::error::{LogError, ReadError};
use super::plan::ReadPlan;
use super::segment::{Boundary, Segment};
use super::Log;

impl Log {
    /// Index of the segment whose range starts at or before `offset`.
    fn segment_index_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    /// Plans a read of whole batches starting with the batch containing `offset` (or,
    /// if compaction removed it, the next batch after it), of at
    /// most `max_bytes` (unless `min_one_batch`, then at least that first batch), and
    /// never including a batch whose last offset is `>= max_offset_exclusive` (the high
    /// watermark). Reads from one segment. `offset` at the log end or at/after
    /// `max_offset_exclusive` gives an empty plan.
    ///
    /// # Errors
    /// `OffsetOutOfRange` if `offset` is below the log start or beyond the log end;
    /// `Io`/`Corrupt` if batch headers cannot be read.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset_exclusive: i64,
        min_one_batch: bool,
    ) -> Result<ReadPlan, ReadError> {
        let log_end_offset = self.log_end_offset();
        if offset < self.log_start_offset || offset > log_end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset,
            });
        }
        if offset == log_end_offset || offset >= max_offset_exclusive {
            return Ok(ReadPlan::empty(offset));
        }
        // With compaction's gaps, `offset` may lie past the end of the segment it falls
        // in, or in a segment compaction emptied: the read starts in the first segment
        // holding a batch that ends at or after it.
        for seg in self.segments.range(self.segment_index_for(offset)..) {
            if offset < seg.next_offset && !seg.is_empty() {
                return plan_in_segment(
                    seg,
                    offset,
                    max_bytes,
                    max_offset_exclusive,
                    min_one_batch,
                );
            }
        }
        Ok(ReadPlan::empty(offset))
    }

    /// The first batch at or after the log start whose `maxTimestamp >= timestamp_ms`:
    /// its base offset and bytes (the caller decodes it to find the exact record).
    ///
    /// # Errors
    /// I/O errors reading headers or the batch.
    pub fn find_batch_by_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, Bytes)>, LogError> {
        self.find_batch_by_timestamp_from(timestamp_ms, self.log_start_offset)
    }

    /// As [`Log::find_batch_by_timestamp`], over the batches ending at or after
    /// `from_offset` (never below the log start): a lookup whose first candidate batch
    /// holds no matching record goes on past it.
    ///
    /// # Errors
    /// I/O errors reading headers or the batch.
    pub fn find_batch_by_timestamp_from(
        &self,
        timestamp_ms: i64,
        from_offset: i64,
    ) -> Result<Option<(i64, Bytes)>, LogError> {
        let from_offset = from_offset.max(self.log_start_offset);
        let first = self.segment_index_for(from_offset);
        for seg in self.segments.range(first..) {
            if seg.max_timestamp.is_none_or(|m| m.timestamp < timestamp_ms) {
                continue;
            }
            let found = seg.find_by_timestamp(timestamp_ms, from_offset)?;
            if let Some((pos, h)) = found {
                let bytes = seg.read_batch(pos, &h)?;
                return Ok(Some((h.base_offset, Bytes::from(bytes))));
            }
        }
        Ok(None)
    }

    /// The batch holding the largest timestamp in the log (the first such batch on ties):
    /// its base offset and bytes, or `None` if the log is empty.
    ///
    /// # Errors
    /// I/O errors reading headers or the batch.
    pub fn find_batch_with_max_timestamp(&self) -> Result<Option<(i64, Bytes)>, LogError> {
        let first = self.segment_index_for(self.log_start_offset);
        let mut best: Option<(&Segment, i64, i64)> = None;
        for seg in self.segments.range(first..) {
            let Some(m) = seg.max_timestamp else { continue };
            if best.is_none_or(|(_, ts, _)| m.timestamp > ts) {
                best = Some((seg, m.timestamp, m.offset));
            }
        }
        let Some((seg, ts, offset)) = best else {
            return Ok(None);
        };
        let found = if offset >= self.log_start_offset {
            seg.locate(offset)?
        } else {
            // The batch with the maximum was deleted by DeleteRecords: find the
            // largest among what remains of this segment.
            seg.find_by_timestamp(ts, self.log_start_offset)?
        };
        match found {
            Some((pos, h)) if h.last_offset() >= self.log_start_offset => {
                let bytes = seg.read_batch(pos, &h)?;
                Ok(Some((h.base_offset, Bytes::from(bytes))))
            }
            _ => Ok(None),
        }
    }
}

/// Plans the read inside `seg`, which contains `offset`.
fn plan_in_segment(
    seg: &Segment,
    offset: i64,
    max_bytes: usize,
    max_offset_exclusive: i64,
    min_one_batch: bool,
) -> Result<ReadPlan, ReadError> {
    let Some((start_pos, first)) = seg.locate(offset)? else {
        return Ok(ReadPlan::empty(offset));
    };
    if first.last_offset() >= max_offset_exclusive {
        return Ok(ReadPlan::empty(offset));
    }
    let start = Boundary {
        position: start_pos,
        offset: first.base_offset,
    };
    let offset_end = if max_offset_exclusive >= seg.next_offset {
        seg.end()
    } else {
        seg.boundary_at_offset(max_offset_exclusive)?
    };
    let byte_limit = start_pos.saturating_add(max_bytes as u64);
    let mut end = if byte_limit >= offset_end.position {
        offset_end
    } else {
        seg.boundary_at_or_before(start, byte_limit)?
    };
    if end.position <= start_pos {
        if !min_one_batch {
            return Ok(ReadPlan::empty(offset));
        }
        end = Boundary {
            position: start_pos + first.total_bytes() as u64,
            offset: first.next_offset(),
        };
    }
    Ok(ReadPlan {
        file: Some(Arc::clone(&seg.log)),
        position: start_pos,
        length: (end.position - start_pos) as usize,
        first_offset: first.base_offset,
        next_offset: end.offset,
    })
}
