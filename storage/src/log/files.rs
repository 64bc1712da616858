//! The files of a partition directory besides segments: what their names are, how the
//! directory listing is classified, and the two small checkpoints the log keeps for itself
//! (`log-start-offset` and `recovery-point-cap`).

use std::io;
use std::path::{Path, PathBuf};

use crate::checkpoint::{read_file, write_atomic, TEMP_FILE_SUFFIX};
use crate::fs::Filesystem;

use super::compaction::swap::{is_cleaned_name, parse_swap_name, SwapRange};
use super::error::LogError;
use super::producer_state::SNAPSHOT_FILE_SUFFIX;
use super::segment::{LOG_FILE_SUFFIX, OFFSET_INDEX_FILE_SUFFIX, TIME_INDEX_FILE_SUFFIX};

/// Holds the log start offset set by DeleteRecords (Kafka keeps this per log directory).
pub(crate) const LOG_START_OFFSET_FILE: &str = "log-start-offset";
/// Written by a truncation below the flushed offset: see [`RecoveryCap`].
pub(crate) const RECOVERY_POINT_CAP_FILE: &str = "recovery-point-cap";
/// Version line of the log's own small checkpoint files.
const PARTITION_CHECKPOINT_VERSION: &str = "0";

/// After `truncate_to(below)` the caller's recovery point may still be the higher flushed
/// offset from before; until the log is flushed to `until` again, recovery must start no
/// later than `below`, or freshly appended, unsynced data would look like corruption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecoveryCap {
    /// Recovery starts at or below this offset.
    pub below: i64,
    /// The cap may go once the log is flushed up to here.
    pub until: i64,
}

/// What a partition directory holds, classified by name.
#[derive(Debug, Default)]
pub(crate) struct DirListing {
    /// Base offsets of `.log` files, ascending.
    pub segments: Vec<i64>,
    /// Index files whose segment is missing, leftover temp files, compaction output
    /// that was never committed (`.cleaned`), and index swap files without their data
    /// file's swap.
    pub orphans: Vec<PathBuf>,
    /// Offsets of `.snapshot` files, ascending.
    pub snapshots: Vec<i64>,
    /// Committed compaction swaps (`{base}.{end}.log.swap`) to finish, ascending.
    pub swaps: Vec<SwapRange>,
}

fn offset_stem(path: &Path, suffix: &str) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl DirListing {
    /// Lists and classifies `dir`; unknown files are left alone.
    ///
    /// # Errors
    /// Errors listing the directory.
    pub(crate) fn read(fs: &dyn Filesystem, dir: &Path) -> io::Result<Self> {
        let mut listing = Self::default();
        let mut indexes = Vec::new();
        let mut index_swaps = Vec::new();
        for path in fs.read_dir(dir)? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if let Some((base, end, suffix)) = parse_swap_name(name) {
                let range = SwapRange { base, end };
                if suffix == LOG_FILE_SUFFIX {
                    listing.swaps.push(range);
                } else {
                    index_swaps.push((range, path));
                }
            } else if is_cleaned_name(name) {
                listing.orphans.push(path);
            } else if let Some(base) = offset_stem(&path, LOG_FILE_SUFFIX) {
                listing.segments.push(base);
            } else if let Some(offset) = offset_stem(&path, SNAPSHOT_FILE_SUFFIX) {
                listing.snapshots.push(offset);
            } else if let Some(base) = offset_stem(&path, OFFSET_INDEX_FILE_SUFFIX)
                .or_else(|| offset_stem(&path, TIME_INDEX_FILE_SUFFIX))
            {
                indexes.push((base, path));
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(TEMP_FILE_SUFFIX))
            {
                listing.orphans.push(path);
            }
        }
        listing.segments.sort_unstable();
        listing.snapshots.sort_unstable();
        listing.swaps.sort_unstable_by_key(|r| r.base);
        for (range, path) in index_swaps {
            if !listing.swaps.contains(&range) {
                listing.orphans.push(path);
            }
        }
        for (base, path) in indexes {
            if listing.segments.binary_search(&base).is_err() {
                listing.orphans.push(path);
            }
        }
        Ok(listing)
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> LogError {
    LogError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads `"0\n<fields>\n"`; `None` if the file does not exist.
pub(crate) fn read_fields(
    fs: &dyn Filesystem,
    path: &Path,
    n: usize,
) -> Result<Option<Vec<i64>>, LogError> {
    let Some(bytes) = read_file(fs, path)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|e| corrupt(path, e.to_string()))?;
    let mut lines = text.lines();
    if lines.next() != Some(PARTITION_CHECKPOINT_VERSION) {
        return Err(corrupt(path, "missing or unsupported version"));
    }
    let fields: Result<Vec<i64>, _> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .map(str::parse)
        .collect();
    match fields {
        Ok(f) if f.len() == n && lines.next().is_none() => Ok(Some(f)),
        _ => Err(corrupt(path, format!("expected {n} offsets: {text:?}"))),
    }
}

pub(crate) fn write_fields(fs: &dyn Filesystem, path: &Path, fields: &[i64]) -> io::Result<()> {
    let values: Vec<String> = fields.iter().map(i64::to_string).collect();
    let text = format!("{PARTITION_CHECKPOINT_VERSION}\n{}\n", values.join(" "));
    write_atomic(fs, path, text.as_bytes())
}

/// The persisted log start offset, if DeleteRecords ever set one.
///
/// # Errors
/// I/O errors, or `CorruptCheckpoint`.
pub(crate) fn read_log_start_offset(
    fs: &dyn Filesystem,
    dir: &Path,
) -> Result<Option<i64>, LogError> {
    Ok(read_fields(fs, &dir.join(LOG_START_OFFSET_FILE), 1)?.map(|f| f[0]))
}

/// Persists the log start offset atomically and durably.
///
/// # Errors
/// I/O errors.
pub(crate) fn write_log_start_offset(
    fs: &dyn Filesystem,
    dir: &Path,
    offset: i64,
) -> io::Result<()> {
    write_fields(fs, &dir.join(LOG_START_OFFSET_FILE), &[offset])
}

/// The recovery cap left by a truncation, if any.
///
/// # Errors
/// I/O errors, or `CorruptCheckpoint`.
pub(crate) fn read_recovery_cap(
    fs: &dyn Filesystem,
    dir: &Path,
) -> Result<Option<RecoveryCap>, LogError> {
    Ok(
        read_fields(fs, &dir.join(RECOVERY_POINT_CAP_FILE), 2)?.map(|f| RecoveryCap {
            below: f[0],
            until: f[1],
        }),
    )
}

/// Persists a recovery cap atomically and durably.
///
/// # Errors
/// I/O errors.
pub(crate) fn write_recovery_cap(
    fs: &dyn Filesystem,
    dir: &Path,
    cap: RecoveryCap,
) -> io::Result<()> {
    write_fields(
        fs,
        &dir.join(RECOVERY_POINT_CAP_FILE),
        &[cap.below, cap.until],
    )
}

/// Removes a file, treating "already gone" as success.
///
/// # Errors
/// Any other error.
pub(crate) fn remove_if_exists(fs: &dyn Filesystem, path: &Path) -> io::Result<()> {
    match fs.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
