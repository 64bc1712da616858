//! [`VolatileFs`]: real files whose written bytes stay in this process's memory until
//! they are synced, so that killing the process (SIGKILL) loses exactly the bytes a
//! power loss would lose.
//!
//! A test-only mode for the fault-injection harness (`keel server
//! --test-volatile-writes`). [`StdFs`](super::StdFs) hands writes to the kernel's page
//! cache, which survives the death of the process, so `kill -9` alone never tests the
//! fsync discipline. Here `write_all_at` keeps the bytes in a per-file overlay of
//! pending extents; reads see the overlay on top of the file; `sync_data` writes the
//! extents to the file and `fdatasync`s it. A process killed before a sync leaves
//! behind only what it synced.
//!
//! What it does not model (kept simple on purpose, and documented in docs/TESTING.md):
//! directory operations (create, rename, remove) and `set_len` go to the real
//! filesystem at once, as if each were durable immediately; a torn write inside a
//! sync is not simulated (a sync that started completes in the page cache). Files
//! written outside this seam (RocksDB's metadata log, `meta.properties`) are not
//! affected.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileHandle, Filesystem, StdFs};

/// Real files with writes held in memory until synced; see the module docs.
#[derive(Debug, Default)]
pub struct VolatileFs {
    /// Every file opened so far, by the path it has now: handles to one path share the
    /// pending bytes, as they would share the page cache.
    inodes: Mutex<HashMap<PathBuf, Arc<Inode>>>,
}

/// One file: the real file and the bytes written to it since its last sync.
#[derive(Debug)]
struct Inode {
    file: Arc<dyn FileHandle>,
    state: Mutex<Pending>,
}

/// Unsynced writes of one file as non-overlapping, non-adjacent extents.
#[derive(Debug, Default)]
struct Pending {
    /// Start position -> bytes.
    extents: BTreeMap<u64, Vec<u8>>,
    /// Length of the real file (every write to it goes through this inode).
    disk_len: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn end_of(start: u64, bytes: &[u8]) -> u64 {
    start + bytes.len() as u64
}

impl Pending {
    /// The file's length as readers see it.
    fn len(&self) -> u64 {
        let pending_end = self
            .extents
            .iter()
            .next_back()
            .map_or(0, |(s, b)| end_of(*s, b));
        self.disk_len.max(pending_end)
    }

    /// Records a write of `data` at `at`, replacing whatever it overlaps.
    fn write(&mut self, data: &[u8], at: u64) {
        if data.is_empty() {
            return;
        }
        // Appending right after the last extent: the common case, no merging needed.
        if let Some((start, bytes)) = self.extents.iter_mut().next_back() {
            if end_of(*start, bytes) == at {
                bytes.extend_from_slice(data);
                return;
            }
        }
        let end = end_of(at, data);
        // Every extent that overlaps or touches [at, end) is merged into one.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .filter(|(s, b)| end_of(**s, b) >= at)
            .map(|(s, _)| *s)
            .collect();
        let mut merged_start = at;
        let mut merged_end = end;
        for s in &touching {
            merged_start = merged_start.min(*s);
            merged_end = merged_end.max(end_of(*s, &self.extents[s]));
        }
        let mut merged = vec![0u8; (merged_end - merged_start) as usize];
        for s in touching {
            if let Some(bytes) = self.extents.remove(&s) {
                let from = (s - merged_start) as usize;
                merged[from..from + bytes.len()].copy_from_slice(&bytes);
            }
        }
        let from = (at - merged_start) as usize;
        merged[from..from + data.len()].copy_from_slice(data);
        self.extents.insert(merged_start, merged);
    }

    /// Copies the pending bytes that fall into `[at, at + buf.len())` over `buf`.
    fn overlay(&self, buf: &mut [u8], at: u64) {
        let end = end_of(at, buf);
        for (s, bytes) in self.extents.range(..end) {
            let e = end_of(*s, bytes);
            if e <= at {
                continue;
            }
            let from = at.max(*s);
            let to = end.min(e);
            buf[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&bytes[(from - s) as usize..(to - s) as usize]);
        }
    }

    /// Drops pending bytes at or beyond `len`.
    fn truncate(&mut self, len: u64) {
        let beyond: Vec<u64> = self.extents.range(len..).map(|(s, _)| *s).collect();
        for s in beyond {
            self.extents.remove(&s);
        }
        if let Some((start, bytes)) = self.extents.iter_mut().next_back() {
            if end_of(*start, bytes) > len {
                bytes.truncate((len - start) as usize);
            }
        }
    }
}

impl Inode {
    fn open(path: &Path, create: bool) -> io::Result<Self> {
        let file = StdFs.open(path, create)?;
        let disk_len = file.len()?;
        Ok(Inode {
            file,
            state: Mutex::new(Pending {
                extents: BTreeMap::new(),
                disk_len,
            }),
        })
    }
}

/// A handle to an [`Inode`].
#[derive(Debug)]
struct VolatileFile {
    inode: Arc<Inode>,
}

impl FileHandle for VolatileFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let pending = lock(&self.inode.state);
        let len = pending.len();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let n = ((len - offset) as usize).min(buf.len());
        let buf = &mut buf[..n];
        // The real file may end before the pending bytes start: what lies between
        // reads as zeros, as a hole would.
        buf.fill(0);
        if offset < pending.disk_len {
            let on_disk = ((pending.disk_len - offset) as usize).min(n);
            self.inode.file.read_exact_at(&mut buf[..on_disk], offset)?;
        }
        pending.overlay(buf, offset);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        lock(&self.inode.state).write(buf, offset);
        Ok(())
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut pending = lock(&self.inode.state);
        let mut at = offset;
        for b in bufs {
            pending.write(b, at);
            at += b.len() as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            // Move the pending bytes into the real file (its page cache) under the lock,
            // so a reader never sees them in neither place; fdatasync outside it, so
            // appends need not wait for the disk.
            let mut pending = lock(&self.inode.state);
            let extents = std::mem::take(&mut pending.extents);
            for (start, bytes) in &extents {
                if let Err(e) = self.inode.file.write_all_at(bytes, *start) {
                    // Keep what was not written pending; the caller treats a failed sync
                    // as fatal for the log directory anyway.
                    pending.extents = extents;
                    return Err(e);
                }
                pending.disk_len = pending.disk_len.max(end_of(*start, bytes));
            }
        }
        self.inode.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pending = lock(&self.inode.state);
        pending.truncate(len);
        self.inode.file.set_len(len)?;
        pending.disk_len = len;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.inode.state).len())
    }
}

impl VolatileFs {
    /// An empty overlay over the real filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets inodes at `path` or below it (after a removal).
    fn forget(&self, path: &Path) {
        lock(&self.inodes).retain(|p, _| !p.starts_with(path));
    }
}

impl Filesystem for VolatileFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut inodes = lock(&self.inodes);
        // A file removed behind our back (or never opened) gets a fresh inode.
        let inode = match inodes.get(path) {
            Some(inode) if path.exists() => Arc::clone(inode),
            _ => {
                let inode = Arc::new(Inode::open(path, create)?);
                inodes.insert(path.to_path_buf(), Arc::clone(&inode));
                inode
            }
        };
        Ok(Arc::new(VolatileFile { inode }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        StdFs.read_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inodes = lock(&self.inodes);
        StdFs.rename(from, to)?;
        inodes.remove(to);
        if let Some(inode) = inodes.remove(from) {
            inodes.insert(to.to_path_buf(), inode);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)?;
        self.forget(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_dir_all(path)?;
        self.forget(path);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.sync_dir(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(f: &dyn FileHandle) -> Vec<u8> {
        let len = f.len().unwrap() as usize;
        f.read_exact_at_owned(len, 0).unwrap()
    }

    #[test]
    fn reads_see_unsynced_writes_but_the_real_file_gets_only_synced_ones() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("seg");
        let fs = VolatileFs::new();
        let f = fs.open(&path, true)?;
        f.write_all_at(b"hello", 0)?;
        f.sync_data()?;
        f.write_all_vectored_at(&[b" wor", b"ld"], 5)?;
        assert_eq!(contents(&*f), b"hello world");
        assert_eq!(
            std::fs::read(&path)?,
            b"hello",
            "only the synced bytes are on disk"
        );
        // A second handle to the same path shares the pending bytes.
        assert_eq!(contents(&*fs.open(&path, false)?), b"hello world");
        // The process dies: a new one (a new VolatileFs) sees what was synced.
        drop(f);
        drop(fs);
        let after = VolatileFs::new().open(&path, false)?;
        assert_eq!(contents(&*after), b"hello");
        Ok(())
    }

    #[test]
    fn overlapping_and_sparse_writes_overlay_in_order() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("idx");
        let fs = VolatileFs::new();
        let f = fs.open(&path, true)?;
        f.write_all_at(b"0123456789", 0)?;
        f.sync_data()?;
        f.write_all_at(b"ab", 3)?;
        f.write_all_at(b"XY", 14)?;
        f.write_all_at(b"cd", 4)?;
        f.write_all_at(b"Z", 13)?;
        assert_eq!(f.len()?, 16);
        assert_eq!(contents(&*f), b"012acd6789\0\0\0ZXY");
        let mut short = [0u8; 8];
        assert_eq!(f.read_at(&mut short, 12)?, 4);
        assert_eq!(&short[..4], b"\0ZXY");
        f.sync_data()?;
        assert_eq!(std::fs::read(&path)?, b"012acd6789\0\0\0ZXY");
        Ok(())
    }

    #[test]
    fn set_len_cuts_pending_bytes_and_the_file() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("t");
        let fs = VolatileFs::new();
        let f = fs.open(&path, true)?;
        f.write_all_at(b"abcdef", 0)?;
        f.sync_data()?;
        f.write_all_at(b"ghij", 6)?;
        f.set_len(8)?;
        assert_eq!(contents(&*f), b"abcdefgh");
        f.set_len(4)?;
        assert_eq!(contents(&*f), b"abcd");
        f.write_all_at(b"xy", 6)?;
        assert_eq!(contents(&*f), b"abcd\0\0xy");
        f.sync_data()?;
        assert_eq!(std::fs::read(&path)?, b"abcd\0\0xy");
        Ok(())
    }

    /// Random writes, truncations and syncs against two plain byte vectors: what reads
    /// should see and what a crash should leave on disk.
    #[test]
    fn random_operations_match_a_model_of_current_and_synced_bytes() -> io::Result<()> {
        use rand::{Rng, SeedableRng};
        let tmp = tempfile::tempdir()?;
        for seed in 0..40u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let path = tmp.path().join(format!("f{seed}"));
            let fs = VolatileFs::new();
            let f = fs.open(&path, true)?;
            let mut current: Vec<u8> = Vec::new();
            let mut synced: Vec<u8> = Vec::new();
            for step in 0..200 {
                match rng.gen_range(0..10) {
                    0..=6 => {
                        let at = rng.gen_range(0..=current.len() + 8);
                        let data: Vec<u8> = (0..rng.gen_range(1..20)).map(|_| rng.gen()).collect();
                        f.write_all_at(&data, at as u64)?;
                        if current.len() < at + data.len() {
                            current.resize(at + data.len(), 0);
                        }
                        current[at..at + data.len()].copy_from_slice(&data);
                    }
                    7 => {
                        let len = rng.gen_range(0..=current.len());
                        f.set_len(len as u64)?;
                        current.truncate(len);
                        // set_len reaches the real file at once (see the module docs).
                        synced.resize(len, 0);
                    }
                    _ => {
                        f.sync_data()?;
                        synced = current.clone();
                    }
                }
                assert_eq!(contents(&*f), current, "seed {seed} step {step}");
            }
            drop(f);
            drop(fs);
            assert_eq!(std::fs::read(&path)?, synced, "seed {seed}: what survives");
        }
        Ok(())
    }

    #[test]
    fn rename_keeps_pending_bytes_with_the_file_and_removal_forgets_them() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let fs = VolatileFs::new();
        let f = fs.open(&a, true)?;
        f.write_all_at(b"pending", 0)?;
        fs.rename(&a, &b)?;
        assert_eq!(contents(&*fs.open(&b, false)?), b"pending");
        assert!(fs.open(&a, false).is_err());
        fs.remove_file(&b)?;
        let fresh = fs.open(&b, true)?;
        assert_eq!(fresh.len()?, 0);
        Ok(())
    }
}
