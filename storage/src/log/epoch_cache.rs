//! The leader-epoch cache: for each leader epoch present in the log, the offset of its
//! first batch, kept in the `leader-epoch-checkpoint` file (Kafka's text format:
//! version line, entry count, then one `epoch start_offset` line per entry).
//!
//! Followers ask the leader where their last epoch ended (OffsetForLeaderEpoch) and cut
//! their log there, which is what removes a divergent tail written by a deposed leader.
//! The answers follow Kafka's `LeaderEpochFileCache.endOffsetFor`.

use std::path::{Path, PathBuf};

use crate::checkpoint::{read_file, write_atomic};
use crate::fs::Filesystem;

use super::error::LogError;
use super::scan::{BatchCursor, HEADER_SCAN_CHUNK_BYTES};
use super::segment::scan_to_io;
use super::Log;

/// File name of the epoch cache inside the partition directory.
pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// The epoch reported when none is known.
pub const UNDEFINED_EPOCH: i32 = -1;
/// The offset reported when no epoch is known.
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
/// Version line of the checkpoint file.
const EPOCH_CHECKPOINT_VERSION: &str = "0";

/// One leader epoch and the offset of its first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// Offset of the epoch's first batch.
    pub start_offset: i64,
}

/// Entries ascending in both epoch and start offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Entries it contradicts (a
    /// later-or-equal epoch, or a start at or after this one) go first, as in Kafka.
    /// Returns whether anything changed.
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if let Some(last) = self.entries.last() {
            if last.epoch == epoch && start_offset >= last.start_offset {
                return false;
            }
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Forgets epochs that start at or after `end_offset` (the log was cut there).
    pub(crate) fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        self.entries.len() != before
    }

    /// The log now starts at `start_offset`: entries wholly below it go, and the one
    /// that covers it is moved up to start there.
    pub(crate) fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let below = self
            .entries
            .iter()
            .take_while(|e| e.start_offset < start_offset)
            .count();
        if below == 0 {
            return false;
        }
        let covering = self.entries[below - 1];
        self.entries.drain(..below);
        let moved = EpochEntry {
            epoch: covering.epoch,
            start_offset,
        };
        if self.entries.first().map(|e| e.start_offset) != Some(start_offset) {
            self.entries.insert(0, moved);
        }
        true
    }

    /// Kafka's answer to "where does `requested` end": the largest epoch at or below
    /// it and the start offset of the first epoch above it (the log end for the latest
    /// epoch); undefined if `requested` is above every epoch or nothing is known.
    pub(crate) fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        let Some(latest) = self.entries.last() else {
            return undefined;
        };
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        if requested == latest.epoch {
            return (latest.epoch, log_end_offset);
        }
        let Some(higher) = self.entries.iter().find(|e| e.epoch > requested) else {
            return undefined;
        };
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        }
    }

    /// The epoch the batch at `offset` was written in: the latest entry starting at
    /// or before it (Kafka's `epochForOffset`); `None` below every entry.
    pub(crate) fn epoch_for(&self, offset: i64) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map(|e| e.epoch)
    }

    fn encode(&self) -> Vec<u8> {
        let mut text = format!("{EPOCH_CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        text.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(EPOCH_CHECKPOINT_VERSION) {
            return Err("missing or unsupported version".to_string());
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or("missing entry count")?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let line = lines.next().ok_or("fewer entries than counted")?;
            let mut fields = line.split(' ');
            let (Some(epoch), Some(offset), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("bad entry {line:?}"));
            };
            let epoch: i32 = epoch.parse().map_err(|_| format!("bad epoch {line:?}"))?;
            let offset: i64 = offset.parse().map_err(|_| format!("bad offset {line:?}"))?;
            let ordered = cache
                .entries
                .last()
                .is_none_or(|l| l.epoch < epoch && l.start_offset < offset);
            if !ordered || epoch < 0 || offset < 0 {
                return Err(format!("entry {line:?} out of order"));
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset: offset,
            });
        }
        if lines.next().is_some() {
            return Err("more entries than counted".to_string());
        }
        Ok(cache)
    }
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(LEADER_EPOCH_CHECKPOINT_FILE)
}

/// Reads the checkpoint: `Ok(None)` if missing or damaged (the caller rebuilds it
/// from the batches, which carry their epochs).
pub(crate) fn read_epoch_checkpoint(
    fs: &dyn Filesystem,
    dir: &Path,
) -> Result<Option<EpochCache>, LogError> {
    let path = checkpoint_path(dir);
    let Some(bytes) = read_file(fs, &path)? else {
        return Ok(None);
    };
    match EpochCache::decode(&bytes) {
        Ok(cache) => Ok(Some(cache)),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "damaged leader-epoch checkpoint; rebuilding it from the log");
            Ok(None)
        }
    }
}

impl Log {
    /// The latest leader epoch in the log, if any batch carries one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// The leader epoch of the batch holding `offset`, from the epoch cache; `None`
    /// when no entry covers it.
    pub fn epoch_for_offset(&self, offset: i64) -> Option<i32> {
        self.epochs.epoch_for(offset)
    }

    /// The epoch cache entries, oldest first.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        self.epochs.entries().to_vec()
    }

    /// Where `epoch` ends in this log, as OffsetForLeaderEpoch answers: the largest epoch
    /// at or below it and the first offset after it (see [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// A new leader records that its `epoch` starts at `offset` (its log end) before it
    /// appends anything, so followers asking about the previous epoch learn where it ended.
    /// Fsyncs the checkpoint if it changed.
    ///
    /// # Errors
    /// I/O errors writing the checkpoint.
    pub fn assign_epoch_start(&mut self, epoch: i32, offset: i64) -> Result<(), LogError> {
        if self.epochs.assign(epoch, offset) {
            self.write_epoch_checkpoint()?;
        }
        Ok(())
    }

    /// Durably replaces the checkpoint with the cache.
    pub(crate) fn write_epoch_checkpoint(&mut self) -> std::io::Result<()> {
        write_atomic(
            &*self.fs,
            &checkpoint_path(&self.dir),
            &self.epochs.encode(),
        )
    }

    /// Records epochs that start in just-written batches (`(epoch, base_offset)` per
    /// batch, in order); fsyncs the checkpoint if any did.
    pub(crate) fn note_batch_epochs(
        &mut self,
        batches: impl Iterator<Item = (i32, i64)>,
    ) -> std::io::Result<()> {
        let mut changed = false;
        for (epoch, base_offset) in batches {
            if epoch >= 0 && self.epochs.latest_epoch().is_none_or(|l| epoch > l) {
                changed |= self.epochs.assign(epoch, base_offset);
            }
        }
        if changed {
            self.write_epoch_checkpoint()?;
        }
        Ok(())
    }

    /// After a truncation at the end: forgets epochs starting at or after the log end.
    pub(crate) fn epochs_after_truncation(&mut self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        if self.epochs.truncate_from_end(end) {
            self.write_epoch_checkpoint()?;
        }
        Ok(())
    }

    /// After the log start moved up: moves the covering epoch's start up with it.
    pub(crate) fn epochs_after_start_moved(&mut self) -> Result<(), LogError> {
        let start = self.log_start_offset;
        if self.epochs.truncate_from_start(start) {
            self.write_epoch_checkpoint()?;
        }
        Ok(())
    }

    /// Recovery: starts from the checkpoint (if intact), drops entries beyond the
    /// recovered log, and adds epochs found in the batches from `rescan_from` on (every
    /// batch when the checkpoint was missing or damaged). Writes the checkpoint if it
    /// changed.
    pub(crate) fn recover_epochs(
        &mut self,
        checkpoint: Option<EpochCache>,
        rescan_from: i64,
    ) -> Result<(), LogError> {
        let missing = checkpoint.is_none();
        let before = checkpoint.clone().unwrap_or_default();
        self.epochs = checkpoint.unwrap_or_default();
        self.epochs.truncate_from_end(self.log_end_offset());
        let from = if missing {
            self.segments[0].base_offset
        } else {
            rescan_from.max(self.segments[0].base_offset)
        };
        let mut found = Vec::new();
        for seg in self.segments.iter().filter(|s| s.next_offset > from) {
            let start = if from > seg.base_offset {
                match seg.locate(from)? {
                    Some((position, _)) => position,
                    None => continue,
                }
            } else {
                0
            };
            let mut cursor = BatchCursor::new(&*seg.log, start, seg.size, HEADER_SCAN_CHUNK_BYTES);
            while let Some((_, h)) = cursor.next_header().map_err(|e| scan_to_io(&seg.path, e))? {
                found.push((h.partition_leader_epoch, h.base_offset));
            }
        }
        for (epoch, base_offset) in found {
            if epoch >= 0 && self.epochs.latest_epoch().is_none_or(|l| epoch > l) {
                self.epochs.assign(epoch, base_offset);
            }
        }
        self.epochs.truncate_from_start(self.log_start_offset);
        if missing || self.epochs != before {
            self.write_epoch_checkpoint()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(epoch, offset) in entries {
            assert!(c.assign(epoch, offset));
        }
        c
    }

    fn pairs(c: &EpochCache) -> Vec<(i32, i64)> {
        c.entries
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn end_offset_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        // The latest epoch ends at the log end.
        assert_eq!(c.end_offset_for(4, 40), (4, 40));
        // An epoch in the cache ends where the next one starts.
        assert_eq!(c.end_offset_for(3, 40), (3, 25));
        assert_eq!(c.end_offset_for(1, 40), (1, 10));
        // An epoch the log never saw: the largest below it, ending at the next start.
        assert_eq!(c.end_offset_for(2, 40), (1, 10));
        // Below every epoch: the requested epoch and the first start.
        assert_eq!(c.end_offset_for(0, 40), (0, 0));
        // Above every epoch, or undefined.
        assert_eq!(
            c.end_offset_for(5, 40),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
        assert_eq!(
            c.end_offset_for(-1, 40),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
        assert_eq!(
            EpochCache::default().end_offset_for(0, 40),
            (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
        );
    }

    #[test]
    fn epoch_for_an_offset_is_the_latest_starting_at_or_before_it() {
        let c = cache(&[(1, 5), (3, 10), (4, 25)]);
        assert_eq!(c.epoch_for(4), None);
        assert_eq!(c.epoch_for(5), Some(1));
        assert_eq!(c.epoch_for(24), Some(3));
        assert_eq!(c.epoch_for(25), Some(4));
        assert_eq!(c.epoch_for(1_000), Some(4));
        assert_eq!(EpochCache::default().epoch_for(0), None);
    }

    #[test]
    fn assign_removes_contradicted_entries() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        // Same epoch at a later offset: nothing to do.
        assert!(!c.assign(4, 30));
        // A new epoch starting inside the epoch 3 range replaces 3 and 4's tails.
        assert!(c.assign(5, 20));
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10), (5, 20)]);
        // An older epoch re-assigned earlier replaces everything from there on.
        assert!(c.assign(2, 5));
        assert_eq!(pairs(&c), vec![(1, 0), (2, 5)]);
        assert!(!c.assign(-1, 7));
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(c.truncate_from_end(25));
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10)]);
        assert!(!c.truncate_from_end(11));
        assert!(c.truncate_from_start(12));
        assert_eq!(pairs(&c), vec![(3, 12)]);
        assert!(!c.truncate_from_start(12));
        let mut d = cache(&[(1, 0), (3, 10)]);
        assert!(d.truncate_from_start(10));
        assert_eq!(pairs(&d), vec![(3, 10)]);
    }

    #[test]
    fn checkpoint_text_round_trips_and_rejects_garbage() {
        let c = cache(&[(0, 0), (2, 17), (9, 1_000_000)]);
        let text = c.encode();
        assert_eq!(
            std::str::from_utf8(&text).unwrap_or_default(),
            "0\n3\n0 0\n2 17\n9 1000000\n"
        );
        assert_eq!(EpochCache::decode(&text), Ok(c));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 0\n1 1\n",
            "0\n2\n3 5\n2 9\n",
            "0\n1\nx 1\n",
            "0\n1\n1 2 3\n",
        ] {
            assert!(
                EpochCache::decode(bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
