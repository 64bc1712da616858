//! Installing cleaned segments crash-safely, and finishing or discarding an installation
//! a crash interrupted.
//!
//! A cleaned segment replaces a group of adjacent segments `[base, end)` (`end` is the
//! base of the segment after the group) and takes the first one's name. Its files go
//! through three names:
//!
//! 1. `{base}.log.cleaned` (and `.index.cleaned`, `.timeindex.cleaned`): written and
//!    fsynced outside the log's lock. Recovery deletes them: the old segments are intact.
//! 2. `{base}.{end}.log.swap` (indexes first, the data file last): the commit point. The
//!    data was fsynced before the rename, so from here on recovery finishes the swap: it
//!    deletes every segment with a base in `[base, end)` and renames the swap files to
//!    `{base}.log`, `{base}.index`, `{base}.timeindex` (an index without a swap file is
//!    deleted, to be rebuilt).
//! 3. Under the log's lock the old segments are deleted (ascending, data file first) and
//!    the swap files renamed to the final names, the data file last, so the `.log.swap`
//!    name exists until the swap is complete.
//!
//! Recovery relies on directory operations becoming durable in the order they were made
//! (ordered metadata journaling, as ext4 and XFS do; FaultyFs makes a directory's
//! entries durable all at once): every prefix of the steps above is a state it completes
//! or discards. The commit rename runs outside the log's lock, so a [`SwapGate`]
//! decides between it and anything that changes the segments meanwhile (truncation,
//! retention, DeleteRecords), which aborts the compaction first.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fs::Filesystem;
use crate::log::files::remove_if_exists;
use crate::log::segment::{
    delete_segment_files, offset_file, LOG_FILE_SUFFIX, OFFSET_INDEX_FILE_SUFFIX,
    TIME_INDEX_FILE_SUFFIX,
};

/// Suffix of a cleaned segment's files before the commit.
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";
/// Suffix of a cleaned segment's files between the commit and the swap.
pub(crate) const SWAP_SUFFIX: &str = "swap";
/// The three files of a segment, data file first.
pub(crate) const SEGMENT_FILE_SUFFIXES: [&str; 3] = [
    LOG_FILE_SUFFIX,
    OFFSET_INDEX_FILE_SUFFIX,
    TIME_INDEX_FILE_SUFFIX,
];

/// `{dir}/{base:020}.{suffix}.cleaned`.
pub(crate) fn cleaned_path(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{suffix}.{CLEANED_SUFFIX}"))
}

/// `{dir}/{base:020}.{end:020}.{suffix}.swap`.
pub(crate) fn swap_path(dir: &Path, base: i64, end: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{end:020}.{suffix}.{SWAP_SUFFIX}"))
}

/// The cleaned files of segment `base`: data, offset index, time index.
pub(crate) fn cleaned_paths(dir: &Path, base: i64) -> [PathBuf; 3] {
    SEGMENT_FILE_SUFFIXES.map(|s| cleaned_path(dir, base, s))
}

/// Parses `{base:020}.{end:020}.{suffix}.swap` file names: `(base, end, suffix)`.
pub(crate) fn parse_swap_name(name: &str) -> Option<(i64, i64, &'static str)> {
    let stem = name.strip_suffix(SWAP_SUFFIX)?.strip_suffix('.')?;
    let mut parts = stem.splitn(3, '.');
    let (base, end, suffix) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(base) || !digits(end) || !SEGMENT_FILE_SUFFIXES.contains(&suffix) {
        return None;
    }
    let suffix = SEGMENT_FILE_SUFFIXES.into_iter().find(|s| *s == suffix)?;
    Some((base.parse().ok()?, end.parse().ok()?, suffix))
}

/// Whether `name` is a cleaned file (uncommitted compaction output).
pub(crate) fn is_cleaned_name(name: &str) -> bool {
    name.strip_suffix(CLEANED_SUFFIX)
        .is_some_and(|s| s.ends_with('.'))
}

/// One cleaned segment on its way in: the group `[base, end)` it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SwapRange {
    /// Base of the first replaced segment, and of the cleaned one.
    pub base: i64,
    /// Base of the segment after the group.
    pub end: i64,
}

/// Where an in-flight compaction stands, as the executor and the log's lock holders
/// see it.
#[derive(Debug)]
enum GateState {
    /// Cleaned files are being written.
    Writing,
    /// The swap files exist for these groups; recovery would finish the swap.
    Committed(Vec<SwapRange>),
    /// Something changed the segments first; the compaction must not be installed.
    Aborted,
    /// The swap was installed (or given up) by the log.
    Done,
}

/// Decides, between the executor's commit (outside the log's lock) and operations
/// under the lock that change the segments, which one happens first.
#[derive(Debug)]
pub(crate) struct SwapGate {
    state: Mutex<GateState>,
}

impl Default for SwapGate {
    fn default() -> Self {
        Self {
            state: Mutex::new(GateState::Writing),
        }
    }
}

/// Renames the cleaned files of `range` to their swap names, indexes first, then the
/// data file: the commit.
fn rename_to_swap(fs: &dyn Filesystem, dir: &Path, range: SwapRange) -> io::Result<()> {
    for suffix in [
        OFFSET_INDEX_FILE_SUFFIX,
        TIME_INDEX_FILE_SUFFIX,
        LOG_FILE_SUFFIX,
    ] {
        fs.rename(
            &cleaned_path(dir, range.base, suffix),
            &swap_path(dir, range.base, range.end, suffix),
        )?;
    }
    Ok(())
}

/// Removes the swap files of `range`, data file first: undoes a commit.
pub(crate) fn abandon(fs: &dyn Filesystem, dir: &Path, range: SwapRange) -> io::Result<()> {
    remove_swap_files(fs, dir, range)
}

fn remove_swap_files(fs: &dyn Filesystem, dir: &Path, range: SwapRange) -> io::Result<()> {
    for suffix in SEGMENT_FILE_SUFFIXES {
        remove_if_exists(fs, &swap_path(dir, range.base, range.end, suffix))?;
    }
    Ok(())
}

/// Removes the cleaned files of the segment at `base`.
pub(crate) fn remove_cleaned_files(fs: &dyn Filesystem, dir: &Path, base: i64) -> io::Result<()> {
    for path in cleaned_paths(dir, base) {
        remove_if_exists(fs, &path)?;
    }
    Ok(())
}

impl SwapGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The executor's commit: renames every group's cleaned files to swap names unless
    /// the compaction was aborted. Returns whether it committed. On error every file of
    /// the compaction is removed (a partial commit is undone) and the gate is aborted.
    ///
    /// # Errors
    /// The rename error (after the cleanup, whose own errors are only logged).
    pub(crate) fn commit(
        &self,
        fs: &dyn Filesystem,
        dir: &Path,
        ranges: &[SwapRange],
    ) -> io::Result<bool> {
        let mut state = self.lock();
        if !matches!(*state, GateState::Writing) {
            drop(state);
            for r in ranges {
                remove_cleaned_files(fs, dir, r.base)?;
            }
            return Ok(false);
        }
        for r in ranges {
            if let Err(e) = rename_to_swap(fs, dir, *r) {
                for r in ranges {
                    let undone = remove_swap_files(fs, dir, *r)
                        .and_then(|()| remove_cleaned_files(fs, dir, r.base));
                    if let Err(e) = undone {
                        tracing::warn!(dir = %dir.display(), "cannot remove compaction files: {e}");
                    }
                }
                *state = GateState::Aborted;
                return Err(e);
            }
        }
        *state = GateState::Committed(ranges.to_vec());
        Ok(true)
    }

    /// Aborts the compaction (under the log's lock, before the segments change): a
    /// committed swap is undone by removing its swap files, so recovery will not
    /// install segments built from data that is about to change.
    ///
    /// # Errors
    /// I/O errors removing swap files; the gate is aborted anyway.
    pub(crate) fn abort(&self, fs: &dyn Filesystem, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let previous = std::mem::replace(&mut *state, GateState::Aborted);
        if let GateState::Committed(ranges) = previous {
            for r in ranges {
                remove_swap_files(fs, dir, r)?;
            }
        }
        Ok(())
    }

    /// Takes the committed groups for installation (under the log's lock); `None` if
    /// the compaction was aborted or never committed.
    pub(crate) fn take_committed(&self) -> Option<Vec<SwapRange>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, GateState::Done) {
            GateState::Committed(ranges) => Some(ranges),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// A directory operation of an installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DirOp {
    /// Remove a file (already gone is fine).
    Remove(PathBuf),
    /// Rename a file over another.
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    /// Performs the operation.
    ///
    /// # Errors
    /// I/O errors other than removing a file that is already gone.
    pub(crate) fn apply(&self, fs: &dyn Filesystem) -> io::Result<()> {
        match self {
            DirOp::Remove(path) => remove_if_exists(fs, path),
            DirOp::Rename(from, to) => fs.rename(from, to),
        }
    }
}

/// Step 3 for one group, as the directory operations in the order they must happen:
/// the replaced segments but the first (whose names the cleaned segment takes over by
/// rename) are deleted, data file first, then the swap files are renamed into place,
/// the data file last.
pub(crate) fn install_ops(dir: &Path, range: SwapRange, replaced: &[i64]) -> Vec<DirOp> {
    let mut ops = Vec::new();
    for &base in replaced.iter().filter(|&&b| b != range.base) {
        for suffix in SEGMENT_FILE_SUFFIXES {
            ops.push(DirOp::Remove(offset_file(dir, base, suffix)));
        }
    }
    for suffix in [
        OFFSET_INDEX_FILE_SUFFIX,
        TIME_INDEX_FILE_SUFFIX,
        LOG_FILE_SUFFIX,
    ] {
        ops.push(DirOp::Rename(
            swap_path(dir, range.base, range.end, suffix),
            offset_file(dir, range.base, suffix),
        ));
    }
    ops
}

/// Performs [`install_ops`] (under the log's lock; no fsync). Returns the directory
/// entries changed.
///
/// # Errors
/// The first I/O error; recovery finishes the swap from whatever step it reached.
pub(crate) fn install(
    fs: &dyn Filesystem,
    dir: &Path,
    range: SwapRange,
    replaced: &[i64],
) -> io::Result<u64> {
    let ops = install_ops(dir, range, replaced);
    for op in &ops {
        op.apply(fs)?;
    }
    Ok(ops.len() as u64)
}

/// Recovery: finishes the swap of `range` found committed on disk, given the segment
/// bases the directory holds. Returns the directory entries changed.
///
/// # Errors
/// I/O errors.
pub(crate) fn finish_interrupted(
    fs: &dyn Filesystem,
    dir: &Path,
    range: SwapRange,
    segments: &[i64],
) -> io::Result<u64> {
    let mut changes = 0;
    for &base in segments
        .iter()
        .filter(|&&b| b >= range.base && b < range.end)
    {
        delete_segment_files(fs, dir, base)?;
        changes += 3;
    }
    for suffix in [OFFSET_INDEX_FILE_SUFFIX, TIME_INDEX_FILE_SUFFIX] {
        let swap = swap_path(dir, range.base, range.end, suffix);
        let target = offset_file(dir, range.base, suffix);
        if fs.exists(&swap) {
            fs.rename(&swap, &target)?;
        } else {
            // Renamed by an earlier attempt and deleted above with the group: rebuilt.
            remove_if_exists(fs, &target)?;
        }
        changes += 1;
    }
    fs.rename(
        &swap_path(dir, range.base, range.end, LOG_FILE_SUFFIX),
        &offset_file(dir, range.base, LOG_FILE_SUFFIX),
    )?;
    Ok(changes + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_names_round_trip_and_nothing_else_parses() {
        let dir = Path::new("/d");
        let p = swap_path(dir, 5, 120, LOG_FILE_SUFFIX);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000005.00000000000000000120.log.swap");
        assert_eq!(parse_swap_name(name), Some((5, 120, "log")));
        let p = swap_path(dir, 0, 7, TIME_INDEX_FILE_SUFFIX);
        assert_eq!(
            parse_swap_name(p.file_name().unwrap().to_str().unwrap()),
            Some((0, 7, "timeindex"))
        );
        for bad in [
            "00000000000000000005.log.swap",
            "5.x.log.swap",
            "5.6.snapshot.swap",
            "5.6.log.swapped",
            "00000000000000000005.log",
        ] {
            assert_eq!(parse_swap_name(bad), None, "{bad}");
        }
        assert!(is_cleaned_name("00000000000000000005.log.cleaned"));
        assert!(!is_cleaned_name("cleaned"));
    }
}
