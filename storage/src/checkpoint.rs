//! Small files that must be replaced atomically (temp file, fsync, rename, fsync the
//! directory) and Kafka's offset checkpoint text format (`recovery-point-offset-checkpoint`,
//! `replication-offset-checkpoint`, `log-start-offset-checkpoint`).
//!
//! This module owns only file framing; what the offsets mean is up to the caller.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fs::{parent_dir, Filesystem};

/// Version line Kafka writes first in an offset checkpoint file.
pub const OFFSET_CHECKPOINT_VERSION: i32 = 0;
/// Suffix of the temporary file an atomic write goes through.
pub const TEMP_FILE_SUFFIX: &str = ".tmp";

/// Why a checkpoint file could not be read.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("reading checkpoint: {0}")]
    Io(#[from] io::Error),
    /// The file does not follow the format.
    #[error("malformed checkpoint {path} line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

/// Path of the temporary file used to replace `path` atomically.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TEMP_FILE_SUFFIX);
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically and durably: temp file + write + fsync +
/// rename + fsync of the directory.
///
/// # Errors
/// Any I/O error; `path` then still holds its old contents (or does not exist).
pub fn write_atomic(fs: &dyn Filesystem, path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let file = fs.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_all_at(contents, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(parent_dir(path))
}

/// Whole contents of `path`, or `None` if it does not exist.
///
/// # Errors
/// Any I/O error other than the file not existing.
pub fn read_file(fs: &dyn Filesystem, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// Writes Kafka's offset checkpoint format atomically: `"0\n<count>\n"` then one
/// `"<topic> <partition> <offset>\n"` line per entry.
///
/// # Errors
/// Any I/O error from [`write_atomic`].
pub fn write_offsets(
    fs: &dyn Filesystem,
    path: &Path,
    entries: &[(String, i32, i64)],
) -> io::Result<()> {
    let mut text = format!("{OFFSET_CHECKPOINT_VERSION}\n{}\n", entries.len());
    for (topic, partition, offset) in entries {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    write_atomic(fs, path, text.as_bytes())
}

/// Reads Kafka's offset checkpoint format; a missing file reads as no entries.
///
/// # Errors
/// `Io` if the file cannot be read, `Malformed` if it does not follow the format.
pub fn read_offsets(
    fs: &dyn Filesystem,
    path: &Path,
) -> Result<Vec<(String, i32, i64)>, CheckpointError> {
    let Some(bytes) = read_file(fs, path)? else {
        return Ok(Vec::new());
    };
    let malformed = |line: usize, reason: String| CheckpointError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|e| malformed(0, e.to_string()))?;
    let mut lines = text.lines();
    let version: i32 = lines
        .next()
        .ok_or_else(|| malformed(1, "missing version".into()))?
        .trim()
        .parse()
        .map_err(|e| malformed(1, format!("version: {e}")))?;
    if version != OFFSET_CHECKPOINT_VERSION {
        return Err(malformed(1, format!("unsupported version {version}")));
    }
    let count: usize = lines
        .next()
        .ok_or_else(|| malformed(2, "missing entry count".into()))?
        .trim()
        .parse()
        .map_err(|e| malformed(2, format!("entry count: {e}")))?;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for (i, line) in lines.enumerate() {
        let line_no = i + 3;
        let mut parts = line.split(' ');
        let (Some(topic), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(line_no, format!("expected 3 fields: {line:?}")));
        };
        let partition = partition
            .parse()
            .map_err(|e| malformed(line_no, format!("partition: {e}")))?;
        let offset = offset
            .parse()
            .map_err(|e| malformed(line_no, format!("offset: {e}")))?;
        entries.push((topic.to_string(), partition, offset));
    }
    if entries.len() != count {
        return Err(malformed(
            count + 3,
            format!("header says {count} entries, found {}", entries.len()),
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FaultyFs;

    #[test]
    fn offsets_round_trip_and_survive_a_crash() -> Result<(), CheckpointError> {
        let fs = FaultyFs::new();
        fs.create_dir_all(Path::new("/data"))?;
        fs.sync_dir(Path::new("/"))?;
        let path = Path::new("/data/recovery-point-offset-checkpoint");
        let entries = vec![
            ("orders".to_string(), 0, 42),
            ("a.b-c_d".to_string(), 17, 0),
        ];
        write_offsets(&fs, path, &entries)?;
        fs.crash(3);
        assert_eq!(read_offsets(&fs, path)?, entries);
        let bytes = read_file(&fs, path)?.unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "0\n2\norders 0 42\na.b-c_d 17 0\n"
        );
        Ok(())
    }

    #[test]
    fn missing_file_reads_as_empty_and_garbage_is_malformed() -> Result<(), CheckpointError> {
        let fs = FaultyFs::new();
        let path = Path::new("/cp");
        assert!(read_offsets(&fs, path)?.is_empty());
        assert!(read_file(&fs, path)?.is_none());
        write_atomic(&fs, path, b"0\n2\nt 0 1\n")?;
        assert!(matches!(
            read_offsets(&fs, path),
            Err(CheckpointError::Malformed { .. })
        ));
        write_atomic(&fs, path, b"1\n0\n")?;
        assert!(read_offsets(&fs, path).is_err());
        Ok(())
    }

    #[test]
    fn interrupted_atomic_write_keeps_old_contents() -> io::Result<()> {
        let fs = FaultyFs::new();
        let path = Path::new("/f");
        write_atomic(&fs, path, b"old")?;
        fs.fail_next_fsync();
        assert!(write_atomic(&fs, path, b"new").is_err());
        fs.crash(9);
        assert_eq!(read_file(&fs, path)?.as_deref(), Some(&b"old"[..]));
        Ok(())
    }
}
