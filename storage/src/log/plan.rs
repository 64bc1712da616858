//! Plans: the slow half of a read or a flush, prepared under the log's lock and executed
//! outside it. A plan holds its own file handles, so segments deleted or rolled meanwhile
//! stay readable and syncable.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{BatchHeader, BatchIter};
use crate::fs::{FileHandle, Filesystem};

/// A positioned read of whole batches from one segment file.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    pub(crate) file: Option<Arc<dyn FileHandle>>,
    pub(crate) position: u64,
    pub(crate) length: usize,
    pub(crate) first_offset: i64,
    pub(crate) next_offset: i64,
}

impl ReadPlan {
    /// A plan that reads nothing, positioned at `offset`.
    pub(crate) fn empty(offset: i64) -> Self {
        Self {
            file: None,
            position: 0,
            length: 0,
            first_offset: offset,
            next_offset: offset,
        }
    }

    /// Whether the plan reads nothing.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Bytes the plan reads.
    pub fn len(&self) -> usize {
        self.length
    }

    /// Base offset of the first batch (the requested offset if empty).
    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }

    /// Offset after the last batch read (the requested offset if empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Reads the bytes: one positioned read, no lock needed. The result is always whole
    /// batches starting at [`ReadPlan::first_offset`].
    ///
    /// # Errors
    /// Read errors; `InvalidData` if the bytes are no longer the batches planned (the log
    /// was truncated and rewritten between planning and reading: plan again).
    pub fn execute(&self) -> io::Result<Bytes> {
        let Some(file) = &self.file else {
            return Ok(Bytes::new());
        };
        let buf = file.read_exact_at_owned(self.length, self.position)?;
        // Cheap (headers only): a truncation racing with the read must not hand out a
        // partial or foreign batch.
        let first_matches =
            BatchHeader::parse(&buf).is_ok_and(|h| h.base_offset == self.first_offset);
        if !first_matches || BatchIter::new(&buf).any(|b| b.is_err()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "batches from offset {} changed before they were read (log truncated?)",
                    self.first_offset
                ),
            ));
        }
        Ok(Bytes::from(buf))
    }
}

/// Files and directories to fsync so the log is durable up to [`FlushPlan::up_to`].
#[derive(Debug)]
pub struct FlushPlan {
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) files: Vec<Arc<dyn FileHandle>>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) up_to: i64,
    pub(crate) generation: u64,
    pub(crate) dir_changes: u64,
    pub(crate) unsynced_seq: u64,
}

impl FlushPlan {
    /// Offset up to which (exclusive) the log is durable once the plan has executed.
    pub fn up_to(&self) -> i64 {
        self.up_to
    }

    /// Fsyncs the files, then the directories. Do not retry after an error: the kernel
    /// may have dropped the dirty pages, so treat the log directory as failed.
    ///
    /// # Errors
    /// The first fsync error.
    pub fn execute(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        for d in &self.dirs {
            self.fs.sync_dir(d)?;
        }
        Ok(())
    }
}
