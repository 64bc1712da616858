//! [`CompactionPlan::execute`]: the part of compaction that reads and writes segment
//! files, outside the log's lock. It reads only segments the plan captured (immutable:
//! never active, and anything that would delete or cut them aborts the compaction
//! first) and writes only files under the cleaned and swap names.

use std::io;
use std::sync::Arc;

use crate::batch::{validate_batch, BatchHeader};
use crate::record::{inflate_records, parse_records};

use super::filter::{filter_batch, Fate, FilterContext, Filtered};
use super::offset_map::OffsetMap;
use super::swap::{cleaned_paths, remove_cleaned_files, SwapGate, SwapRange};
use super::{
    write_cleaner_checkpoint, CleanedGroup, CompactionPlan, CompactionStats, SourceSegment,
    MAX_COMPACTED_BATCH_INFLATED_BYTES,
};
use crate::log::scan::{BatchCursor, BATCH_SCAN_CHUNK_BYTES};
use crate::log::segment::{scan_to_io, Segment, MAX_RELATIVE_OFFSET};

/// Cleaned batches buffered before one write to the cleaned segment.
const CLEANER_WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The outcome of [`CompactionPlan::execute`], for [`crate::Log::compaction_completed`].
#[derive(Debug)]
pub struct CompactionResult {
    pub(crate) gate: Arc<SwapGate>,
    /// `Ok(None)`: aborted, or nothing to change.
    pub(crate) outcome: io::Result<Option<Compacted>>,
}

impl CompactionResult {
    /// What the compaction did, if it produced cleaned segments.
    pub fn stats(&self) -> Option<&CompactionStats> {
        match &self.outcome {
            Ok(Some(c)) => Some(&c.stats),
            _ => None,
        }
    }
}

/// Cleaned segments, committed and ready to install.
#[derive(Debug)]
pub(crate) struct Compacted {
    pub groups: Vec<CleanedGroup>,
    pub next_horizon_ms: Option<i64>,
    pub stats: CompactionStats,
}

fn invalid(source: &SourceSegment, position: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} at byte {position}: {what}", source.path.display()),
    )
}

impl CompactionPlan {
    /// Maps keys, writes the cleaned segments, fsyncs them, and commits them (see
    /// `swap.rs`). Runs without the log's lock; a thread of its own is best, as it reads
    /// and writes whole segments.
    pub fn execute(self) -> CompactionResult {
        let gate = Arc::clone(&self.gate);
        let outcome = self.run();
        if let Err(e) = &outcome {
            tracing::warn!(dir = %self.dir.display(), "compaction failed: {e}");
            for s in &self.sources {
                if let Err(e) = remove_cleaned_files(&*self.fs, &self.dir, s.base) {
                    tracing::warn!(dir = %self.dir.display(), "cannot remove cleaned files: {e}");
                }
            }
        }
        CompactionResult { gate, outcome }
    }

    fn run(&self) -> io::Result<Option<Compacted>> {
        let mut stats = CompactionStats {
            first_dirty_offset: self.first_dirty,
            ..CompactionStats::default()
        };
        let (map, map_end) = self.build_map()?;
        stats.keys_mapped = map.len() as u64;
        stats.map_bytes = map.bytes() as u64;
        stats.next_dirty_offset = map_end;
        stats.map_full = map_end < self.end;
        let ctx = FilterContext {
            map: &map,
            map_end,
            now_ms: self.now_ms,
            delete_retention_ms: self.delete_retention_ms,
            producer_last_batches: &self.producer_last_batches,
            max_inflated_bytes: MAX_COMPACTED_BATCH_INFLATED_BYTES,
        };
        let rewrite = self.sources.iter().take_while(|s| s.base < map_end).count();
        let mut groups = Vec::new();
        let mut next_horizon_ms: Option<i64> = None;
        for range in self.groups(rewrite) {
            let (group, horizon) = self.clean_group(range.clone(), &ctx, &mut stats)?;
            next_horizon_ms = match (next_horizon_ms, horizon) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            groups.extend(group);
        }
        for g in &groups {
            g.segment.sync()?;
        }
        let ranges: Vec<SwapRange> = groups.iter().map(|g| g.range).collect();
        if !self.gate.commit(&*self.fs, &self.dir, &ranges)? {
            return Ok(None);
        }
        self.fs.sync_dir(&self.dir)?;
        if let Err(e) = write_cleaner_checkpoint(&*self.fs, &self.dir, map_end, next_horizon_ms) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the cleaner checkpoint: {e}");
        }
        Ok(Some(Compacted {
            groups,
            next_horizon_ms,
            stats,
        }))
    }

    /// Maps key → latest offset over the dirty batches, in order, until the map is
    /// full (checked between batches; the first batch always goes in). Returns the map
    /// and the offset it covers up to (exclusive).
    fn build_map(&self) -> io::Result<(OffsetMap, i64)> {
        let mut map = OffsetMap::new(self.dedupe_buffer_bytes);
        let mut mapped = 0u64;
        for source in &self.sources {
            let Some(from) = source.dirty_from else {
                continue;
            };
            let mut cursor =
                BatchCursor::new(&*source.log, from, source.size, BATCH_SCAN_CHUNK_BYTES);
            while let Some((position, h)) = cursor
                .next_header()
                .map_err(|e| scan_to_io(&source.path, e))?
            {
                if mapped > 0 && map.is_full() {
                    return Ok((map, h.base_offset));
                }
                mapped += 1;
                if h.is_control() || h.is_transactional() {
                    continue;
                }
                let bytes = cursor.bytes_at(position, h.total_bytes())?;
                validate_batch(&h, bytes, usize::MAX).map_err(|e| invalid(source, position, e))?;
                let records = inflate_records(&h, bytes, MAX_COMPACTED_BATCH_INFLATED_BYTES)
                    .map_err(|e| e.to_string())
                    .and_then(|section| {
                        let parsed = parse_records(&section, h.records_count)
                            .map_err(|e| e.to_string())?
                            .iter()
                            .filter_map(|r| {
                                r.key.map(|k| {
                                    (k.to_vec(), h.base_offset + i64::from(r.offset_delta))
                                })
                            })
                            .collect::<Vec<_>>();
                        Ok(parsed)
                    });
                match records {
                    Ok(keys) => {
                        for (key, offset) in keys {
                            map.insert(&key, offset);
                        }
                    }
                    // Its keys stay unknown: nothing is dropped on its account.
                    Err(e) => tracing::warn!(
                        path = %source.path.display(), offset = h.base_offset,
                        "compaction cannot read a batch's records: {e}"
                    ),
                }
            }
        }
        Ok((map, self.end))
    }

    /// Splits the first `count` sources into runs of adjacent segments that fit one
    /// segment: at most `segment.bytes` and `segment.index.bytes` per index before
    /// compaction, and an offset span the index can address.
    fn groups(&self, count: usize) -> Vec<std::ops::Range<usize>> {
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for i in 0..count {
            if let Some(last) = out.last_mut() {
                let members = &self.sources[last.start..=i];
                let fits = members.iter().map(|s| s.size).sum::<u64>() <= self.segment_bytes
                    && members.iter().map(|s| s.offset_index_bytes).sum::<u64>()
                        <= self.segment_index_bytes
                    && members.iter().map(|s| s.time_index_bytes).sum::<u64>()
                        <= self.segment_index_bytes
                    && self.sources[i].next_offset - 1 - members[0].base <= MAX_RELATIVE_OFFSET;
                if fits {
                    last.end = i + 1;
                    continue;
                }
            }
            out.push(i..i + 1);
        }
        out
    }

    /// Compacts the sources in `range` into one cleaned segment under the cleaned
    /// names; `None` if the range is one segment compaction would not change. Also
    /// returns the earliest delete horizon among the tombstones kept.
    fn clean_group(
        &self,
        range: std::ops::Range<usize>,
        ctx: &FilterContext<'_>,
        stats: &mut CompactionStats,
    ) -> io::Result<(Option<CleanedGroup>, Option<i64>)> {
        let members = &self.sources[range.clone()];
        let base = members[0].base;
        let end = self.sources.get(range.end).map_or(self.end, |s| s.base);
        let mut segment = Segment::create_at(
            &*self.fs,
            &cleaned_paths(&self.dir, base),
            base,
            self.now_ms,
        )?;
        let mut changed = members.len() > 1;
        let mut horizon: Option<i64> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut headers: Vec<BatchHeader> = Vec::new();
        let interval = self.index_interval_bytes;
        let flush = |segment: &mut Segment, buf: &mut Vec<u8>, headers: &mut Vec<BatchHeader>| {
            if headers.is_empty() {
                return Ok(());
            }
            segment.append(&[buf.as_slice()], buf.len() as u64, headers, interval)?;
            buf.clear();
            headers.clear();
            io::Result::Ok(())
        };
        for source in members {
            stats.segments_read += 1;
            stats.bytes_before += source.size;
            let mut cursor = BatchCursor::new(&*source.log, 0, source.size, BATCH_SCAN_CHUNK_BYTES);
            while let Some((position, h)) = cursor
                .next_header()
                .map_err(|e| scan_to_io(&source.path, e))?
            {
                let bytes = cursor.bytes_at(position, h.total_bytes())?;
                validate_batch(&h, bytes, usize::MAX).map_err(|e| invalid(source, position, e))?;
                stats.batches_read += 1;
                let filtered = filter_batch(&h, bytes, ctx).unwrap_or_else(|e| {
                    tracing::warn!(
                        path = %source.path.display(), offset = h.base_offset,
                        "compaction keeps a batch it cannot read: {e}"
                    );
                    Filtered {
                        fate: Fate::Unchanged,
                        records_removed: 0,
                        tombstones_removed: 0,
                        horizon_ms: None,
                    }
                });
                stats.records_removed += filtered.records_removed;
                stats.tombstones_removed += filtered.tombstones_removed;
                if let Some(t) = filtered.horizon_ms {
                    horizon = Some(horizon.map_or(t, |h| h.min(t)));
                }
                match filtered.fate {
                    Fate::Unchanged => {
                        buf.extend_from_slice(bytes);
                        headers.push(h);
                    }
                    Fate::Rewritten(new) => {
                        changed = true;
                        let nh =
                            BatchHeader::parse(&new).map_err(|e| invalid(source, position, e))?;
                        buf.extend_from_slice(&new);
                        headers.push(nh);
                    }
                    Fate::Dropped => {
                        changed = true;
                        stats.batches_removed += 1;
                    }
                }
                if buf.len() >= CLEANER_WRITE_BUFFER_BYTES {
                    flush(&mut segment, &mut buf, &mut headers)?;
                }
            }
        }
        flush(&mut segment, &mut buf, &mut headers)?;
        stats.bytes_after += segment.size;
        if !changed {
            drop(segment);
            remove_cleaned_files(&*self.fs, &self.dir, base)?;
            return Ok((None, horizon));
        }
        stats.segments_written += 1;
        Ok((
            Some(CleanedGroup {
                range: SwapRange { base, end },
                replaced: members.iter().map(|s| s.base).collect(),
                segment,
            }),
            horizon,
        ))
    }
}
