//! [`Segment`]: one `{base}.log` file with its offset and time indexes; appends whole
//! batches at the end and finds batches by offset, byte position and timestamp.
//!
//! A segment holds batches at strictly increasing offsets in `[base_offset, next_offset)`:
//! dense as appended, with gaps once compaction has removed records. It never fsyncs
//! on its own: the log decides when (flush plans, truncation, recovery).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::BatchHeader;
use crate::fs::{FileHandle, Filesystem};

use super::config::LogConfig;
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::scan::{BatchCursor, ScanError, HEADER_SCAN_CHUNK_BYTES};

/// Extension of segment data files.
pub(crate) const LOG_FILE_SUFFIX: &str = "log";
/// Extension of offset index files.
pub(crate) const OFFSET_INDEX_FILE_SUFFIX: &str = "index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_FILE_SUFFIX: &str = "timeindex";
/// Largest offset span of one segment: relative offsets must fit the index (Kafka: i32).
pub(crate) const MAX_RELATIVE_OFFSET: i64 = i32::MAX as i64;

/// `{dir}/{offset:020}.{suffix}`, Kafka's file naming.
pub(crate) fn offset_file(dir: &Path, offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{offset:020}.{suffix}"))
}

/// The batch where a segment's largest timestamp first appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MaxTimestamp {
    /// The timestamp.
    pub timestamp: i64,
    /// An offset inside that batch.
    pub offset: i64,
}

/// What appending some batches does to a segment's indexes and counters.
#[derive(Debug)]
struct IndexUpdate {
    offset_entries: Vec<OffsetEntry>,
    time_entries: Vec<TimeEntry>,
    size: u64,
    bytes_since_index_entry: u64,
    max_timestamp: Option<MaxTimestamp>,
}

/// A batch boundary: byte position and the offset of the batch starting there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// Byte position in the segment file.
    pub position: u64,
    /// Base offset of the batch at `position` (or the segment's next offset at its end).
    pub offset: i64,
}

/// One segment of the log.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first batch; the file name.
    pub base_offset: i64,
    /// Offset after the last batch.
    pub next_offset: i64,
    /// Bytes of valid batches in the file.
    pub size: u64,
    /// The `.log` path, for errors and deletion.
    pub path: PathBuf,
    /// The `.log` file.
    pub log: Arc<dyn FileHandle>,
    /// The `.index` file and entries.
    pub offset_index: OffsetIndex,
    /// The `.timeindex` file and entries.
    pub time_index: TimeIndex,
    /// Bytes appended since the last offset index entry.
    pub bytes_since_index_entry: u64,
    /// Largest timestamp and where it first appears.
    pub max_timestamp: Option<MaxTimestamp>,
    /// `maxTimestamp` of the first batch: the clock `segment.ms` is measured on.
    pub first_batch_timestamp: Option<i64>,
    /// Wall-clock time the segment was created or loaded.
    pub created_ms: i64,
}

/// Converts a scan failure while looking up already-accepted data into an io::Error.
pub(crate) fn scan_to_io(path: &Path, e: ScanError) -> io::Error {
    match e {
        ScanError::Io(e) => e,
        ScanError::Batch { position, error } => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} at byte {position}: {error}", path.display()),
        ),
    }
}

impl Segment {
    /// Creates empty segment files at `base_offset` (emptying stale ones).
    ///
    /// # Errors
    /// I/O errors creating or truncating the files.
    pub(crate) fn create(
        fs: &dyn Filesystem,
        dir: &Path,
        base_offset: i64,
        now_ms: i64,
    ) -> io::Result<Self> {
        let paths = [
            LOG_FILE_SUFFIX,
            OFFSET_INDEX_FILE_SUFFIX,
            TIME_INDEX_FILE_SUFFIX,
        ]
        .map(|suffix| offset_file(dir, base_offset, suffix));
        Self::create_at(fs, &paths, base_offset, now_ms)
    }

    /// Creates empty segment files at the given paths (data, offset index, time index),
    /// emptying stale ones: compaction writes a segment under temporary names first.
    ///
    /// # Errors
    /// I/O errors creating or truncating the files.
    pub(crate) fn create_at(
        fs: &dyn Filesystem,
        paths: &[PathBuf; 3],
        base_offset: i64,
        now_ms: i64,
    ) -> io::Result<Self> {
        let path = paths[0].clone();
        let log = fs.open(&path, true)?;
        log.set_len(0)?;
        let offset_index = fs.open(&paths[1], true)?;
        offset_index.set_len(0)?;
        let time_index = fs.open(&paths[2], true)?;
        time_index.set_len(0)?;
        Ok(Self {
            base_offset,
            next_offset: base_offset,
            size: 0,
            path,
            log,
            offset_index: OffsetIndex::empty(offset_index),
            time_index: TimeIndex::empty(time_index),
            bytes_since_index_entry: 0,
            max_timestamp: None,
            first_batch_timestamp: None,
            created_ms: now_ms,
        })
    }

    /// Whether the segment holds no batch.
    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// `offset` relative to the base, clamped into the index's range.
    pub(crate) fn relative(&self, offset: i64) -> u32 {
        (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Time the segment has been open by `segment.ms`'s clock: the incoming (or current)
    /// time minus the first batch's timestamp, or minus the creation time without one.
    pub(crate) fn age_ms(&self, incoming_timestamp_ms: i64, now_ms: i64) -> i64 {
        match self.first_batch_timestamp {
            Some(t) if t >= 0 => incoming_timestamp_ms.saturating_sub(t),
            _ => now_ms.saturating_sub(self.created_ms),
        }
    }

    /// Whether appending these batches must go to a new segment instead.
    pub(crate) fn should_roll(
        &self,
        config: &LogConfig,
        incoming_bytes: u64,
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> bool {
        if self.is_empty() {
            return false;
        }
        let batches = headers.len() as u64;
        let last_offset = headers.last().map_or(self.next_offset, |h| h.last_offset());
        let incoming_max_ts = headers
            .iter()
            .map(|h| h.max_timestamp)
            .max()
            .unwrap_or(now_ms);
        self.size + incoming_bytes > config.effective_segment_bytes()
            || self.offset_index.bytes() + batches * 8 > config.segment_index_bytes
            || self.time_index.bytes() + batches * 12 > config.segment_index_bytes
            || last_offset - self.base_offset > MAX_RELATIVE_OFFSET
            || self.age_ms(incoming_max_ts, now_ms) > config.effective_segment_ms()
    }

    /// The index entries and counters that appending `headers` at the end would produce.
    fn index_update(&self, headers: &[BatchHeader], index_interval_bytes: u64) -> IndexUpdate {
        let mut update = IndexUpdate {
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            size: self.size,
            bytes_since_index_entry: self.bytes_since_index_entry,
            max_timestamp: self.max_timestamp,
        };
        for h in headers {
            if update.bytes_since_index_entry >= index_interval_bytes {
                if let Ok(position) = u32::try_from(update.size) {
                    update.offset_entries.push(OffsetEntry {
                        relative_offset: self.relative(h.base_offset),
                        position,
                    });
                    update.bytes_since_index_entry = 0;
                }
            }
            update.bytes_since_index_entry += h.total_bytes() as u64;
            if update
                .max_timestamp
                .is_none_or(|m| h.max_timestamp > m.timestamp)
            {
                update.max_timestamp = Some(MaxTimestamp {
                    timestamp: h.max_timestamp,
                    offset: h.base_offset,
                });
                update.time_entries.push(TimeEntry {
                    timestamp: h.max_timestamp,
                    relative_offset: self.relative(h.last_offset()),
                });
            }
            update.size += h.total_bytes() as u64;
        }
        update
    }

    /// Takes an update into memory (its entries must already be on file, or be written
    /// later by the caller).
    fn apply(&mut self, update: IndexUpdate, headers: &[BatchHeader]) {
        self.offset_index.commit(&update.offset_entries);
        self.time_index.commit(&update.time_entries);
        self.size = update.size;
        self.bytes_since_index_entry = update.bytes_since_index_entry;
        self.max_timestamp = update.max_timestamp;
        if let Some(last) = headers.last() {
            self.next_offset = last.next_offset();
        }
        if self.first_batch_timestamp.is_none() {
            self.first_batch_timestamp = headers.first().map(|h| h.max_timestamp);
        }
    }

    /// Appends validated batches whose offsets continue at `next_offset` (`len` bytes,
    /// given as `pieces` to write in order); writes the data and index entries (no
    /// fsync). On error nothing in memory changes.
    ///
    /// # Errors
    /// The first write error.
    pub(crate) fn append(
        &mut self,
        pieces: &[&[u8]],
        len: u64,
        headers: &[BatchHeader],
        index_interval_bytes: u64,
    ) -> io::Result<()> {
        let update = self.index_update(headers, index_interval_bytes);
        debug_assert_eq!(update.size - self.size, len);
        self.log.write_all_vectored_at(pieces, self.size)?;
        self.offset_index.write_after(&update.offset_entries)?;
        self.time_index.write_after(&update.time_entries)?;
        self.apply(update, headers);
        Ok(())
    }

    /// Accounts for a batch found on disk during recovery, in memory only; the index
    /// files are written afterwards with `Index::persist_from`.
    pub(crate) fn track_recovered(&mut self, header: &BatchHeader, index_interval_bytes: u64) {
        let headers = std::slice::from_ref(header);
        let update = self.index_update(headers, index_interval_bytes);
        self.apply(update, headers);
    }

    /// A cursor over the headers from byte `from` to the end of the valid data.
    fn cursor(&self, from: u64) -> BatchCursor<'_> {
        BatchCursor::new(&*self.log, from, self.size, HEADER_SCAN_CHUNK_BYTES)
    }

    /// Position and header of the batch containing `offset`, or `None` if `offset` is
    /// not below `next_offset`.
    ///
    /// # Errors
    /// Read errors, or `InvalidData` if accepted bytes no longer parse.
    pub(crate) fn locate(&self, offset: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let start = self
            .offset_index
            .floor_by_offset(self.relative(offset))
            .map_or(0, |e| u64::from(e.position));
        let mut cursor = self.cursor(start);
        while let Some((pos, h)) = cursor
            .next_header()
            .map_err(|e| scan_to_io(&self.path, e))?
        {
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
        }
        Ok(None)
    }

    /// The first batch boundary whose batch ends at or beyond `offset`, i.e. where data
    /// below `offset` stops; the segment end if `offset >= next_offset`.
    ///
    /// # Errors
    /// As [`Segment::locate`].
    pub(crate) fn boundary_at_offset(&self, offset: i64) -> io::Result<Boundary> {
        Ok(match self.locate(offset)? {
            Some((position, h)) => Boundary {
                position,
                offset: h.base_offset,
            },
            None => self.end(),
        })
    }

    /// The boundary after the last batch.
    pub(crate) fn end(&self) -> Boundary {
        Boundary {
            position: self.size,
            offset: self.next_offset,
        }
    }

    /// The last batch boundary at or before byte `limit`, searching from `from` (a
    /// boundary at or before `limit`).
    ///
    /// # Errors
    /// As [`Segment::locate`].
    pub(crate) fn boundary_at_or_before(&self, from: Boundary, limit: u64) -> io::Result<Boundary> {
        if limit >= self.size {
            return Ok(self.end());
        }
        let mut best = from;
        if let Some(e) = self.offset_index.floor_by_position(limit) {
            if u64::from(e.position) > best.position {
                best = Boundary {
                    position: u64::from(e.position),
                    offset: self.base_offset + i64::from(e.relative_offset),
                };
            }
        }
        let mut cursor = self.cursor(best.position);
        while let Some((pos, h)) = cursor
            .next_header()
            .map_err(|e| scan_to_io(&self.path, e))?
        {
            let end = pos + h.total_bytes() as u64;
            if end > limit {
                break;
            }
            best = Boundary {
                position: end,
                offset: h.next_offset(),
            };
        }
        Ok(best)
    }

    /// Position and header of the first batch ending at or after `min_offset` whose
    /// `maxTimestamp >= timestamp`.
    ///
    /// # Errors
    /// As [`Segment::locate`].
    pub(crate) fn find_by_timestamp(
        &self,
        timestamp: i64,
        min_offset: i64,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        // Every batch up to and including the one an entry names has maxTimestamp no
        // larger than the entry's, so the answer lies beyond it.
        let by_time = match self.time_index.last_below(timestamp) {
            Some(e) => self.locate(self.base_offset + i64::from(e.relative_offset))?,
            None => None,
        };
        let by_offset = if min_offset > self.base_offset {
            match self.locate(min_offset)? {
                Some(found) => Some(found),
                None => return Ok(None),
            }
        } else {
            None
        };
        let start = by_time
            .map_or(0, |(p, _)| p)
            .max(by_offset.map_or(0, |(p, _)| p));
        let mut cursor = self.cursor(start);
        while let Some((pos, h)) = cursor
            .next_header()
            .map_err(|e| scan_to_io(&self.path, e))?
        {
            if h.max_timestamp >= timestamp {
                return Ok(Some((pos, h)));
            }
        }
        Ok(None)
    }

    /// The bytes of the batch at `position` with header `header`.
    ///
    /// # Errors
    /// Read errors.
    pub(crate) fn read_batch(&self, position: u64, header: &BatchHeader) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; header.total_bytes()];
        self.log.read_exact_at(&mut buf, position)?;
        Ok(buf)
    }

    /// Removes every batch that ends at or beyond `offset` (so a batch containing `offset`
    /// goes entirely); returns the bytes removed. No fsync.
    ///
    /// # Errors
    /// I/O errors reading headers or truncating files.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> io::Result<u64> {
        let cut = if offset <= self.base_offset {
            Boundary {
                position: 0,
                offset: self.base_offset,
            }
        } else {
            self.boundary_at_offset(offset)?
        };
        if cut.position >= self.size {
            return Ok(0);
        }
        let removed = self.size - cut.position;
        let rel = self.relative(cut.offset);
        self.log.set_len(cut.position)?;
        self.offset_index.truncate_from(rel)?;
        self.time_index.truncate_from(rel)?;
        self.size = cut.position;
        // Inside a compaction gap the first removed batch starts after `offset`; the log
        // then ends at `offset` (its last batch ends earlier, which recovery may find).
        self.next_offset = cut.offset.min(offset.max(self.base_offset));
        self.max_timestamp = self.time_index.last().map(|e| MaxTimestamp {
            timestamp: e.timestamp,
            offset: self.base_offset + i64::from(e.relative_offset),
        });
        self.bytes_since_index_entry = self.size
            - self
                .offset_index
                .last()
                .map_or(0, |e| u64::from(e.position));
        if self.is_empty() {
            self.first_batch_timestamp = None;
        }
        Ok(removed)
    }

    /// Files to fsync for this segment's data to be durable.
    pub(crate) fn files(&self) -> [Arc<dyn FileHandle>; 3] {
        [
            Arc::clone(&self.log),
            Arc::clone(self.offset_index.file()),
            Arc::clone(self.time_index.file()),
        ]
    }

    /// Syncs the segment's files now.
    ///
    /// # Errors
    /// The first fsync error.
    pub(crate) fn sync(&self) -> io::Result<()> {
        for f in self.files() {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Removes the segment's files: data first, so a crash midway leaves only orphan
    /// indexes (which open deletes) and never a data file without its place in the log.
    ///
    /// # Errors
    /// The first error other than a file already being gone.
    pub(crate) fn delete_files(&self, fs: &dyn Filesystem, dir: &Path) -> io::Result<()> {
        delete_segment_files(fs, dir, self.base_offset)
    }
}

/// Removes the files of the segment at `base`, data file first; missing files are fine.
///
/// # Errors
/// The first error other than a file already being gone.
pub(crate) fn delete_segment_files(fs: &dyn Filesystem, dir: &Path, base: i64) -> io::Result<()> {
    for suffix in [
        LOG_FILE_SUFFIX,
        OFFSET_INDEX_FILE_SUFFIX,
        TIME_INDEX_FILE_SUFFIX,
    ] {
        match fs.remove_file(&offset_file(dir, base, suffix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
