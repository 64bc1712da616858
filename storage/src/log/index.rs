//! A segment's two sparse indexes, kept in memory and appended to their files as the
//! segment grows: the offset index (`.index`: relative offset u32, file position u32) and
//! the time index (`.timeindex`: timestamp i64, relative offset u32), both big-endian as in
//! Kafka.
//!
//! Offsets here are relative to the segment's base offset; the segment converts. Entries
//! are strictly increasing, which is how a torn or stale index file is recognised on load.

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

use crate::fs::FileHandle;

/// One fixed-size index record.
pub(crate) trait IndexEntry: Copy + Debug {
    /// Encoded size in bytes.
    const BYTES: usize;
    /// Offset relative to the segment base.
    fn relative_offset(&self) -> u32;
    /// Appends the big-endian encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes from exactly `Self::BYTES` bytes.
    fn decode(buf: &[u8]) -> Self;
    /// Whether `next` may follow `self` in a well-formed index.
    fn precedes(&self, next: &Self) -> bool;
}

/// Offset index entry: the batch starting at `relative_offset` starts at byte `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Base offset of the batch, relative to the segment base.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// Time index entry: the largest timestamp so far first appears in the batch whose last
/// offset is `relative_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest timestamp in the segment up to and including that batch.
    pub timestamp: i64,
    /// Last offset of the batch, relative to the segment base (Kafka's convention).
    pub relative_offset: u32,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

impl IndexEntry for OffsetEntry {
    const BYTES: usize = 8;

    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        Self {
            relative_offset: u32_at(buf, 0),
            position: u32_at(buf, 4),
        }
    }

    fn precedes(&self, next: &Self) -> bool {
        self.relative_offset < next.relative_offset && self.position < next.position
    }
}

impl IndexEntry for TimeEntry {
    const BYTES: usize = 12;

    fn relative_offset(&self) -> u32 {
        self.relative_offset
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
    }

    fn decode(buf: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[..8]);
        Self {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32_at(buf, 8),
        }
    }

    fn precedes(&self, next: &Self) -> bool {
        self.timestamp < next.timestamp && self.relative_offset < next.relative_offset
    }
}

/// An index file and its entries in memory.
#[derive(Debug)]
pub(crate) struct Index<E: IndexEntry> {
    file: Arc<dyn FileHandle>,
    entries: Vec<E>,
}

/// The offset index of a segment.
pub(crate) type OffsetIndex = Index<OffsetEntry>;
/// The time index of a segment.
pub(crate) type TimeIndex = Index<TimeEntry>;

impl<E: IndexEntry> Index<E> {
    /// An index with no entries over `file` (whose contents are replaced on first write).
    pub(crate) fn empty(file: Arc<dyn FileHandle>) -> Self {
        Self {
            file,
            entries: Vec::new(),
        }
    }

    /// Loads the longest well-formed prefix of `file` whose entries all satisfy `trust`,
    /// then cuts the file to exactly those entries.
    ///
    /// # Errors
    /// I/O errors reading or truncating the file.
    pub(crate) fn load(file: Arc<dyn FileHandle>, trust: impl Fn(&E) -> bool) -> io::Result<Self> {
        let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
        let mut buf = vec![0u8; len - len % E::BYTES];
        file.read_exact_at(&mut buf, 0)?;
        let mut entries: Vec<E> = Vec::with_capacity(buf.len() / E::BYTES);
        for chunk in buf.chunks_exact(E::BYTES) {
            let e = E::decode(chunk);
            let ordered = entries.last().is_none_or(|last| last.precedes(&e));
            if !ordered || !trust(&e) {
                break;
            }
            entries.push(e);
        }
        let index = Self { file, entries };
        if index.bytes() != len as u64 {
            index.file.set_len(index.bytes())?;
        }
        Ok(index)
    }

    /// The index file.
    pub(crate) fn file(&self) -> &Arc<dyn FileHandle> {
        &self.file
    }

    /// Entries in order.
    pub(crate) fn entries(&self) -> &[E] {
        &self.entries
    }

    /// Last entry, if any.
    pub(crate) fn last(&self) -> Option<E> {
        self.entries.last().copied()
    }

    /// Size of the index in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        (self.entries.len() * E::BYTES) as u64
    }

    /// Whether `next` may be appended after the current entries.
    pub(crate) fn accepts(&self, next: &E) -> bool {
        self.entries.last().is_none_or(|last| last.precedes(next))
    }

    /// Writes `new` after the current entries on file without adding them in memory;
    /// call [`Index::commit`] once everything they describe is written too.
    ///
    /// # Errors
    /// The write error; memory is unchanged.
    pub(crate) fn write_after(&self, new: &[E]) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(new.len() * E::BYTES);
        for e in new {
            e.encode(&mut buf);
        }
        self.file.write_all_at(&buf, self.bytes())
    }

    /// Adds entries already written with [`Index::write_after`].
    pub(crate) fn commit(&mut self, new: &[E]) {
        for e in new {
            debug_assert!(self.accepts(e), "index entries must increase");
        }
        self.entries.extend_from_slice(new);
    }

    /// Makes the file match memory, given that its first `known` entries already do;
    /// returns whether the file changed.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn persist_from(&self, known: usize) -> io::Result<bool> {
        let known = known.min(self.entries.len());
        if known == self.entries.len() && self.file.len()? == self.bytes() {
            return Ok(false);
        }
        let at = (known * E::BYTES) as u64;
        self.file.set_len(at)?;
        let mut buf = Vec::with_capacity((self.entries.len() - known) * E::BYTES);
        for e in &self.entries[known..] {
            e.encode(&mut buf);
        }
        self.file.write_all_at(&buf, at)?;
        Ok(true)
    }

    /// Replaces the in-memory entries (the file is rewritten separately).
    pub(crate) fn replace(&mut self, entries: Vec<E>) {
        self.entries = entries;
    }

    /// Drops every entry with relative offset >= `relative_offset`, in memory and on file.
    ///
    /// # Errors
    /// I/O errors truncating the file.
    pub(crate) fn truncate_from(&mut self, relative_offset: u32) -> io::Result<()> {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset() < relative_offset);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
        }
        self.file.set_len(self.bytes())
    }
}

impl Index<OffsetEntry> {
    /// The last entry at or below `relative_offset`.
    pub(crate) fn floor_by_offset(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let n = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry at or below byte `position`.
    pub(crate) fn floor_by_position(&self, position: u64) -> Option<OffsetEntry> {
        let n = self
            .entries
            .partition_point(|e| u64::from(e.position) <= position);
        n.checked_sub(1).map(|i| self.entries[i])
    }
}

impl Index<TimeEntry> {
    /// The last entry whose timestamp is strictly below `timestamp`.
    pub(crate) fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let n = self.entries.partition_point(|e| e.timestamp < timestamp);
        n.checked_sub(1).map(|i| self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultyFs, Filesystem};
    use std::path::Path;

    fn oe(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn offset_lookup_finds_floor_entries() -> io::Result<()> {
        let fs = FaultyFs::new();
        let mut idx = OffsetIndex::empty(fs.open(Path::new("/i"), true)?);
        let new = [oe(10, 4096), oe(20, 8200), oe(35, 12300)];
        idx.write_after(&new)?;
        idx.commit(&new);
        assert_eq!(idx.floor_by_offset(5), None);
        assert_eq!(idx.floor_by_offset(10), Some(oe(10, 4096)));
        assert_eq!(idx.floor_by_offset(34), Some(oe(20, 8200)));
        assert_eq!(idx.floor_by_offset(1000), Some(oe(35, 12300)));
        assert_eq!(idx.floor_by_position(8199), Some(oe(10, 4096)));
        assert_eq!(idx.floor_by_position(8200), Some(oe(20, 8200)));
        assert_eq!(idx.file().len()?, 24);
        Ok(())
    }

    #[test]
    fn load_keeps_the_trusted_monotonic_prefix_and_cuts_the_file() -> io::Result<()> {
        let fs = FaultyFs::new();
        let file = fs.open(Path::new("/i"), true)?;
        let idx = OffsetIndex::empty(file.clone());
        idx.write_after(&[oe(1, 100), oe(2, 200), oe(3, 300), oe(2, 400), oe(9, 900)])?;
        file.write_all_at(&[7, 7, 7], 40)?; // a torn partial entry
        let loaded = OffsetIndex::load(file.clone(), |e| e.relative_offset < 100)?;
        assert_eq!(loaded.entries(), &[oe(1, 100), oe(2, 200), oe(3, 300)]);
        assert_eq!(file.len()?, 24);
        let trusted = OffsetIndex::load(file, |e| e.relative_offset < 3)?;
        assert_eq!(trusted.entries().len(), 2);
        Ok(())
    }

    #[test]
    fn time_index_lookup_and_truncation() -> io::Result<()> {
        let fs = FaultyFs::new();
        let mut idx = TimeIndex::empty(fs.open(Path::new("/t"), true)?);
        let new = [
            TimeEntry {
                timestamp: 100,
                relative_offset: 0,
            },
            TimeEntry {
                timestamp: 200,
                relative_offset: 5,
            },
        ];
        idx.write_after(&new)?;
        idx.commit(&new);
        assert_eq!(idx.last_below(100), None);
        assert_eq!(idx.last_below(101).map(|e| e.relative_offset), Some(0));
        assert_eq!(idx.last_below(i64::MAX).map(|e| e.timestamp), Some(200));
        idx.truncate_from(5)?;
        assert_eq!(idx.entries().len(), 1);
        assert_eq!(idx.file().len()?, 12);
        Ok(())
    }
}
