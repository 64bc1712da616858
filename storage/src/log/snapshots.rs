//! Producer-state snapshots: rebuilding the state from the newest intact snapshot plus
//! the batch headers after it, and making sure a snapshot exists where recovery will need
//! one once older segments are deleted.

use crate::checkpoint::{read_file, write_atomic};

use super::error::LogError;
use super::files::remove_if_exists;
use super::producer_state::ProducerStateManager;
use super::scan::{BatchCursor, HEADER_SCAN_CHUNK_BYTES};
use super::segment::scan_to_io;
use super::Log;

impl Log {
    /// Rebuilds producer state from the newest intact snapshot at or below the log end
    /// plus the batch headers after it; removes snapshots above the log end or damaged.
    /// Syncs the directory if it removed anything. Returns the snapshot used and the
    /// number of batches replayed.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn rebuild_producer_state(&mut self) -> Result<(Option<i64>, u64), LogError> {
        let log_end_offset = self.log_end_offset();
        self.remove_snapshots_above(log_end_offset)?;
        let (snapshot, replayed, state) = self.producer_state_at(log_end_offset)?;
        self.producers = state;
        if self.dir_changes > self.dir_synced_changes {
            self.fs.sync_dir(&self.dir)?;
            self.dir_synced_changes = self.dir_changes;
        }
        Ok((snapshot, replayed))
    }

    /// Writes a durable snapshot of the producer state as of `offset` (a segment base)
    /// unless one is already there.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn ensure_snapshot_at(&mut self, offset: i64) -> Result<(), LogError> {
        if self.snapshots.contains(&offset) {
            // A snapshot written at a roll just before a crash may be torn: check it.
            let path = self.snapshot_path(offset);
            if let Some(bytes) = read_file(&*self.fs, &path)? {
                if ProducerStateManager::decode_snapshot(&bytes).is_ok() {
                    return Ok(());
                }
            }
            self.snapshots.remove(&offset);
        }
        let (_, _, state) = self.producer_state_at(offset)?;
        write_atomic(
            &*self.fs,
            &self.snapshot_path(offset),
            &state.encode_snapshot(),
        )?;
        self.snapshots.insert(offset);
        Ok(())
    }

    /// Producer state as of `offset` (a batch boundary): the newest intact snapshot at or
    /// below it plus the batch headers from there up to `offset`. Damaged snapshots met
    /// on the way are removed. Returns the snapshot used, batches replayed, and the state.
    ///
    /// # Errors
    /// I/O errors.
    fn producer_state_at(
        &mut self,
        offset: i64,
    ) -> Result<(Option<i64>, u64, ProducerStateManager), LogError> {
        let mut loaded = None;
        let mut damaged = Vec::new();
        for &at in self.snapshots.range(..=offset).rev() {
            let path = self.snapshot_path(at);
            let decoded = match read_file(&*self.fs, &path)? {
                Some(bytes) => ProducerStateManager::decode_snapshot(&bytes),
                None => Err("file vanished".to_string()),
            };
            match decoded {
                Ok(state) => {
                    loaded = Some((at, state));
                    break;
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "ignoring damaged producer snapshot");
                    damaged.push(at);
                }
            }
        }
        for at in damaged {
            remove_if_exists(&*self.fs, &self.snapshot_path(at))?;
            self.snapshots.remove(&at);
            self.dir_changes += 1;
        }
        let first_base = self.segments[0].base_offset;
        let (snapshot, mut state) = match loaded {
            Some((at, state)) => (Some(at), state),
            None => (None, ProducerStateManager::default()),
        };
        let from = snapshot.unwrap_or(first_base).max(first_base);
        let mut replayed = 0;
        for seg in self
            .segments
            .iter()
            .filter(|s| s.next_offset > from && s.base_offset < offset)
        {
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
                if h.base_offset >= offset {
                    break;
                }
                state.apply_replicated(&h);
                replayed += 1;
            }
        }
        Ok((snapshot, replayed, state))
    }
}
