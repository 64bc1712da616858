//! [`OffsetMap`]: key → offset of the latest record with that key, over the dirty part
//! of a log, within a memory bound.
//!
//! Keys are stored whole, not hashed (Kafka stores MD5 digests): a collision could make
//! compaction drop a record whose key's latest value it never saw, and exactness costs
//! only memory, which the bound caps.

use std::collections::HashMap;

/// Bytes an entry costs beyond its key: the hash table slot (boxed slice pointer and
/// length, the offset), control bytes, spare capacity and allocator rounding.
pub(crate) const MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Latest offset per key, with the bytes it holds counted against a limit.
#[derive(Debug)]
pub(crate) struct OffsetMap {
    entries: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    limit_bytes: usize,
}

impl OffsetMap {
    /// An empty map that reports itself full once it holds `limit_bytes`.
    pub(crate) fn new(limit_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            limit_bytes,
        }
    }

    /// Records that `key` has a record at `offset`; the larger offset wins. Never
    /// refuses: callers check [`OffsetMap::is_full`] between batches, so the map can
    /// pass its limit by at most one batch's keys.
    pub(crate) fn insert(&mut self, key: &[u8], offset: i64) {
        match self.entries.get_mut(key) {
            Some(latest) => *latest = (*latest).max(offset),
            None => {
                self.bytes += key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                self.entries.insert(key.into(), offset);
            }
        }
    }

    /// The latest offset recorded for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(key).copied()
    }

    /// Whether the map holds its limit of bytes or more.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= self.limit_bytes
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes counted.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_offset_wins_and_bytes_are_counted_once_per_key() {
        let mut m = OffsetMap::new(3 * (MAP_ENTRY_OVERHEAD_BYTES + 1));
        m.insert(b"a", 5);
        m.insert(b"a", 3);
        m.insert(b"b", 7);
        assert_eq!(m.get(b"a"), Some(5));
        assert_eq!(m.get(b"b"), Some(7));
        assert_eq!(m.get(b"c"), None);
        assert_eq!(m.len(), 2);
        assert!(!m.is_full());
        m.insert(b"c", 9);
        assert!(m.is_full());
        assert_eq!(m.bytes(), 3 * (MAP_ENTRY_OVERHEAD_BYTES + 1));
    }
}
