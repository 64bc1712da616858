//! [`FaultyFs`]: an in-memory filesystem that models what survives a power loss.
//!
//! Every file has *current* contents (what reads see) and *durable* contents (what a
//! crash keeps); `sync_data` makes the current contents durable. Directory entries work
//! the same way one level up: creating, renaming or removing an entry changes the current
//! namespace at once and the durable namespace only when the parent directory is synced.
//!
//! [`FaultyFs::crash`] simulates a power loss: only durable entries survive, and each
//! surviving file keeps its durable bytes plus a random prefix of the bytes written since
//! its last sync. Optionally that torn tail ends in garbage — a few overwritten bytes at
//! the write frontier, or junk appended after it — the way a torn sector write looks.
//! Garbage is never placed in the middle of data that was fully written before the
//! frontier: a RecordBatch's `baseOffset` and `partitionLeaderEpoch` lie outside its CRC,
//! so no reader could detect bit rot there (Kafka's format has the same blind spot).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileHandle, Filesystem};

/// Most garbage bytes written over the end of a torn tail.
const TORN_GARBAGE_MAX_BYTES: u64 = 8;
/// Width of the window at the end of a torn tail in which garbage bytes land.
const TORN_GARBAGE_WINDOW_BYTES: u64 = 16;
/// Most junk bytes appended after a torn tail.
const TORN_JUNK_MAX_BYTES: u64 = 64;

/// In-memory filesystem with lazyfs-style crash simulation and fault injection.
#[derive(Debug, Default)]
pub struct FaultyFs {
    state: Mutex<Namespace>,
    faults: Arc<Faults>,
}

/// Injected failures, shared by the filesystem and its open files.
#[derive(Debug, Default)]
struct Faults {
    fsyncs_to_fail: AtomicU32,
    writes_to_fail: AtomicU32,
}

impl Faults {
    /// Consumes one pending failure from `counter`, if any.
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The current and durable directory trees.
#[derive(Debug, Default)]
struct Namespace {
    files: BTreeMap<PathBuf, Arc<MemFile>>,
    dirs: BTreeSet<PathBuf>,
    durable_files: BTreeMap<PathBuf, Arc<MemFile>>,
    durable_dirs: BTreeSet<PathBuf>,
}

/// One inode.
#[derive(Debug)]
struct MemFile {
    data: Mutex<MemData>,
    faults: Arc<Faults>,
}

/// An inode's bytes.
#[derive(Debug, Default)]
struct MemData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Lowest byte position changed since the last sync; `None` if current == durable.
    dirty_from: Option<usize>,
    /// Set on crash: handles from before a crash belong to a dead process.
    dead: bool,
}

/// SplitMix64: small, deterministic, good enough to pick crash outcomes from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }

    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.up_to(n - 1) == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

/// Roots ("/", "", ".") always exist and are always durable.
fn is_root(path: &Path) -> bool {
    path.parent().is_none() || path.as_os_str().is_empty() || path == Path::new(".")
}

/// The directory an entry lives in, normalised so relative single names live in ".".
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl MemData {
    fn mark_dirty(&mut self, from: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(from, |d| d.min(from)));
    }

    /// What this file looks like after a power loss.
    fn torn(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let Some(dirty_from) = self.dirty_from else {
            return self.durable.clone();
        };
        let stable = dirty_from.min(self.durable.len()).min(self.current.len()) as u64;
        let current_len = self.current.len() as u64;
        let keep = match rng.up_to(3) {
            0 => stable,
            1 => current_len,
            _ => stable + rng.up_to(current_len - stable),
        };
        let mut out = self.current[..keep as usize].to_vec();
        // An unsynced truncation or overwrite may be lost: the old durable bytes reappear.
        if self.durable.len() as u64 > keep && rng.one_in(2) {
            out.extend_from_slice(&self.durable[keep as usize..]);
        }
        if keep > stable && rng.one_in(3) {
            let window_start = keep.saturating_sub(TORN_GARBAGE_WINDOW_BYTES).max(stable);
            for _ in 0..=rng.up_to(TORN_GARBAGE_MAX_BYTES - 1) {
                let at = window_start + rng.up_to(keep - window_start - 1);
                out[at as usize] = rng.next_u64() as u8;
            }
        }
        if rng.one_in(4) {
            let zeros = rng.one_in(2);
            for _ in 0..=rng.up_to(TORN_JUNK_MAX_BYTES - 1) {
                out.push(if zeros { 0 } else { rng.next_u64() as u8 });
            }
        }
        out
    }
}

impl MemFile {
    fn data(&self) -> io::Result<MutexGuard<'_, MemData>> {
        let data = lock(&self.data);
        if data.dead {
            return Err(io::Error::other(
                "file handle from before a simulated crash",
            ));
        }
        Ok(data)
    }
}

impl FileHandle for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data()?;
        let len = data.current.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = (len - offset).min(buf.len() as u64) as usize;
        let start = offset as usize;
        buf[..n].copy_from_slice(&data.current[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data()?;
        if Faults::take(&self.faults.writes_to_fail) {
            return Err(io::Error::other("injected write failure"));
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if data.current.len() < end {
            let old_len = data.current.len();
            data.current.resize(end, 0);
            data.mark_dirty(old_len.min(start));
        }
        data.current[start..end].copy_from_slice(buf);
        data.mark_dirty(start);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut data = self.data()?;
        if Faults::take(&self.faults.fsyncs_to_fail) {
            return Err(io::Error::other("injected fsync failure"));
        }
        if let Some(from) = data.dirty_from.take() {
            let MemData {
                current, durable, ..
            } = &mut *data;
            durable.truncate(from.min(current.len()));
            let kept = durable.len();
            durable.extend_from_slice(&current[kept..]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut data = self.data()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old_len = data.current.len();
        if len != old_len {
            data.current.resize(len, 0);
            data.mark_dirty(len.min(old_len));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data()?.current.len() as u64)
    }
}

impl Namespace {
    fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    /// A durable entry survives a crash only if every ancestor directory does too.
    fn durable_ancestors(&self, path: &Path) -> bool {
        let mut p = parent_of(path);
        loop {
            if is_root(&p) {
                return true;
            }
            if !self.durable_dirs.contains(&p) {
                return false;
            }
            p = parent_of(&p);
        }
    }
}

impl FaultyFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` fsyncs (file or directory) fail without making anything durable.
    pub fn fail_next_fsyncs(&self, n: u32) {
        self.faults.fsyncs_to_fail.store(n, Ordering::SeqCst);
    }

    /// Makes the next fsync (file or directory) fail without making anything durable.
    pub fn fail_next_fsync(&self) {
        self.fail_next_fsyncs(1);
    }

    /// Makes the next positioned write fail without changing the file.
    pub fn fail_next_write(&self) {
        self.faults.writes_to_fail.store(1, Ordering::SeqCst);
    }

    /// Simulates a power loss; `rng_seed` decides how much of each unsynced tail survives.
    ///
    /// Handles opened before the crash fail on every later call.
    pub fn crash(&self, rng_seed: u64) {
        let mut rng = SplitMix64(rng_seed);
        let mut ns = lock(&self.state);
        let mut survivors: BTreeMap<PathBuf, Arc<MemFile>> = BTreeMap::new();
        // One inode may have several durable names (renamed but not yet synced).
        let mut torn_inodes: Vec<(Arc<MemFile>, Arc<MemFile>)> = Vec::new();
        for (path, inode) in &ns.durable_files {
            if !ns.durable_ancestors(path) {
                continue;
            }
            let fresh = match torn_inodes.iter().find(|(old, _)| Arc::ptr_eq(old, inode)) {
                Some((_, fresh)) => Arc::clone(fresh),
                None => {
                    let bytes = lock(&inode.data).torn(&mut rng);
                    let fresh = Arc::new(MemFile {
                        data: Mutex::new(MemData {
                            current: bytes.clone(),
                            durable: bytes,
                            dirty_from: None,
                            dead: false,
                        }),
                        faults: Arc::clone(&self.faults),
                    });
                    torn_inodes.push((Arc::clone(inode), Arc::clone(&fresh)));
                    fresh
                }
            };
            survivors.insert(path.clone(), fresh);
        }
        for inode in ns.files.values().chain(ns.durable_files.values()) {
            lock(&inode.data).dead = true;
        }
        let dirs: BTreeSet<PathBuf> = ns
            .durable_dirs
            .iter()
            .filter(|d| ns.durable_ancestors(d))
            .cloned()
            .collect();
        ns.files = survivors.clone();
        ns.durable_files = survivors;
        ns.dirs = dirs.clone();
        ns.durable_dirs = dirs;
        self.faults.fsyncs_to_fail.store(0, Ordering::SeqCst);
        self.faults.writes_to_fail.store(0, Ordering::SeqCst);
    }

    /// Durable length of the file at `path` (what a crash with no torn tail would keep).
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let ns = lock(&self.state);
        let inode = ns.durable_files.get(path)?;
        let len = lock(&inode.data).durable.len() as u64;
        Some(len)
    }
}

impl Filesystem for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut ns = lock(&self.state);
        if ns.dirs.contains(path) {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )));
        }
        if let Some(f) = ns.files.get(path) {
            let handle: Arc<dyn FileHandle> = f.clone();
            return Ok(handle);
        }
        if !create || !ns.dir_exists(&parent_of(path)) {
            return Err(not_found(path));
        }
        let f = Arc::new(MemFile {
            data: Mutex::new(MemData::default()),
            faults: Arc::clone(&self.faults),
        });
        ns.files.insert(path.to_path_buf(), Arc::clone(&f));
        Ok(f)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = lock(&self.state);
        let mut p = path.to_path_buf();
        while !is_root(&p) {
            if ns.files.contains_key(&p) {
                return Err(io::Error::other(format!("{} is a file", p.display())));
            }
            ns.dirs.insert(p.clone());
            p = parent_of(&p);
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let ns = lock(&self.state);
        if !ns.dir_exists(path) {
            return Err(not_found(path));
        }
        let files = ns.files.keys().filter(|p| parent_of(p) == path);
        let dirs = ns.dirs.iter().filter(|p| parent_of(p) == path);
        Ok(files.chain(dirs).cloned().collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut ns = lock(&self.state);
        if !ns.dir_exists(&parent_of(to)) || ns.dirs.contains(to) {
            return Err(not_found(to));
        }
        let inode = ns.files.remove(from).ok_or_else(|| not_found(from))?;
        ns.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut ns = lock(&self.state);
        ns.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = lock(&self.state);
        if !ns.dirs.contains(path) {
            return Err(not_found(path));
        }
        ns.files.retain(|p, _| !p.starts_with(path));
        ns.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let ns = lock(&self.state);
        ns.files.contains_key(path) || ns.dir_exists(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut ns = lock(&self.state);
        if !ns.dir_exists(path) {
            return Err(not_found(path));
        }
        if Faults::take(&self.faults.fsyncs_to_fail) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        let Namespace {
            files,
            dirs,
            durable_files,
            durable_dirs,
        } = &mut *ns;
        durable_files.retain(|p, _| parent_of(p) != path);
        for (p, f) in files.iter().filter(|(p, _)| parent_of(p) == path) {
            durable_files.insert(p.clone(), Arc::clone(f));
        }
        durable_dirs.retain(|p| parent_of(p) != path);
        for d in dirs.iter().filter(|d| parent_of(d) == path) {
            durable_dirs.insert(d.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &FaultyFs, path: &str, bytes: &[u8]) -> io::Result<Arc<dyn FileHandle>> {
        let f = fs.open(Path::new(path), true)?;
        let len = f.len()?;
        f.write_all_at(bytes, len)?;
        Ok(f)
    }

    fn contents(fs: &FaultyFs, path: &str) -> io::Result<Vec<u8>> {
        let f = fs.open(Path::new(path), false)?;
        let mut buf = vec![0u8; f.len()? as usize];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    #[test]
    fn unsynced_entry_vanishes_and_synced_bytes_survive() -> io::Result<()> {
        let fs = FaultyFs::new();
        fs.create_dir_all(Path::new("/d"))?;
        fs.sync_dir(Path::new("/"))?;
        let f = write(&fs, "/d/a", b"durable")?;
        f.sync_data()?;
        fs.sync_dir(Path::new("/d"))?;
        write(&fs, "/d/b", b"never synced entry")?.sync_data()?;
        fs.crash(7);
        assert!(fs.exists(Path::new("/d/a")));
        assert!(!fs.exists(Path::new("/d/b")));
        assert_eq!(contents(&fs, "/d/a")?, b"durable");
        assert!(f.len().is_err(), "pre-crash handles are dead");
        Ok(())
    }

    #[test]
    fn crash_keeps_durable_prefix_and_some_prefix_of_the_tail() -> io::Result<()> {
        let mut saw_partial = false;
        let mut saw_none = false;
        let mut saw_all = false;
        for seed in 0..200 {
            let fs = FaultyFs::new();
            let f = write(&fs, "/a", &[1u8; 100])?;
            f.sync_data()?;
            fs.sync_dir(Path::new("/"))?;
            f.write_all_at(&[2u8; 100], 100)?;
            fs.crash(seed);
            let bytes = contents(&fs, "/a")?;
            assert!(bytes.len() >= 100);
            assert_eq!(&bytes[..100], &[1u8; 100][..], "seed {seed}");
            match bytes.len() {
                100 => saw_none = true,
                200 if bytes[100..].iter().all(|b| *b == 2) => saw_all = true,
                _ => saw_partial = true,
            }
        }
        assert!(saw_partial && saw_none && saw_all);
        Ok(())
    }

    #[test]
    fn rename_is_durable_only_after_dir_sync() -> io::Result<()> {
        let fs = FaultyFs::new();
        let f = write(&fs, "/tmp1", b"x")?;
        f.sync_data()?;
        fs.sync_dir(Path::new("/"))?;
        fs.rename(Path::new("/tmp1"), Path::new("/final"))?;
        fs.crash(1);
        assert!(fs.exists(Path::new("/tmp1")));
        assert!(!fs.exists(Path::new("/final")));
        Ok(())
    }

    #[test]
    fn injected_fsync_failure_makes_nothing_durable() -> io::Result<()> {
        let fs = FaultyFs::new();
        let f = write(&fs, "/a", b"abc")?;
        fs.sync_dir(Path::new("/"))?;
        fs.fail_next_fsync();
        assert!(f.sync_data().is_err());
        assert_eq!(fs.durable_len(Path::new("/a")), Some(0));
        f.sync_data()?;
        assert_eq!(fs.durable_len(Path::new("/a")), Some(3));
        Ok(())
    }
}
