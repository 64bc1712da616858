//! [`StdFs`]: the real filesystem through `std::fs` and positioned I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FileHandle, Filesystem};

/// Real files; `sync_data` is `fdatasync`, `sync_dir` opens the directory and `fsync`s it.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

/// A real file opened read-write.
#[derive(Debug)]
struct StdFile {
    file: File,
    path: PathBuf,
}

/// Adds the path to an error so a failure in a directory of thousands of files says which.
fn with_path(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

impl FileHandle for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| with_path(e, "write", &self.path))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| with_path(e, "fdatasync", &self.path))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| with_path(e, "truncate", &self.path))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Filesystem for StdFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| with_path(e, "open", path))?;
        Ok(Arc::new(StdFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path).map_err(|e| with_path(e, "mkdir", path))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| with_path(e, "read_dir", path))? {
            out.push(entry?.path());
        }
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to).map_err(|e| with_path(e, "rename", from))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path).map_err(|e| with_path(e, "remove", path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path).map_err(|e| with_path(e, "remove_dir_all", path))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| with_path(e, "fsync dir", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positioned_writes_and_short_reads_at_eof() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let fs = StdFs;
        let path = tmp.path().join("f");
        let f = fs.open(&path, true)?;
        f.write_all_at(b"hello", 0)?;
        f.write_all_at(b"world", 10)?;
        assert_eq!(f.len()?, 15);
        let mut buf = [0u8; 8];
        assert_eq!(f.read_at(&mut buf, 12)?, 3);
        assert!(f.read_exact_at(&mut buf, 12).is_err());
        f.set_len(5)?;
        f.sync_data()?;
        fs.sync_dir(tmp.path())?;
        assert_eq!(fs.read_dir(tmp.path())?, vec![path.clone()]);
        fs.rename(&path, &tmp.path().join("g"))?;
        assert!(!fs.exists(&path));
        assert!(fs.open(&path, false).is_err());
        Ok(())
    }
}
