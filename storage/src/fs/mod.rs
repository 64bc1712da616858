//! The filesystem seam: every byte the log reads or writes goes through [`Filesystem`]
//! and [`FileHandle`], so tests can swap real files ([`StdFs`]) for an in-memory
//! filesystem that forgets unsynced data on a simulated power loss ([`FaultyFs`]), or
//! for real processes under the fault harness, real files whose unsynced writes die
//! with the process ([`VolatileFs`]).
//!
//! This module owns only the traits and their implementations; it knows nothing of
//! segments, batches or offsets.

mod faulty;
mod std_fs;
mod volatile;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use faulty::FaultyFs;
pub use std_fs::StdFs;
pub use volatile::VolatileFs;

/// An open file supporting positioned reads and writes; shared between threads.
pub trait FileHandle: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns fewer (possibly 0) at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file ends first, or any error from [`FileHandle::read_at`].
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends before offset {offset}"),
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads exactly `len` bytes at `offset` into a new buffer. Implementations may fill
    /// the buffer without zeroing it first (a fetch reads up to megabytes at a time).
    ///
    /// # Errors
    /// As [`FileHandle::read_exact_at`].
    fn read_exact_at_owned(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Writes `bufs` one after another from `offset`, as one write where the
    /// implementation can (`pwritev`), so a batch can be written from pieces without
    /// first being copied into one buffer.
    ///
    /// # Errors
    /// As [`FileHandle::write_all_at`]; some pieces may have been written.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_all_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Makes the file's contents durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// Truncates or zero-extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Directory and file operations the log needs; paths are absolute or relative to the
/// process, exactly as given.
pub trait Filesystem: Send + Sync + std::fmt::Debug + 'static {
    /// Opens `path` for reading and writing, creating it (empty) if `create` and absent.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>>;
    /// Creates `path` and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Full paths of the entries directly inside `path`.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; open handles stay usable.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Makes creations, renames and removals of entries directly inside `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// Directory holding `path`, for `sync_dir` after creating or renaming `path`.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
