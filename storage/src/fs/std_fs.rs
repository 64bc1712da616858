//! [`StdFs`]: the real filesystem through `std::fs` and positioned I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FileHandle, Filesystem};

/// Real files; `sync_data` is `fdatasync`, `sync_dir` opens the directory and `fsync`s it.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

/// Most buffers handed to one `pwritev` (Linux's IOV_MAX is 1024).
const MAX_IOVECS_PER_WRITE: usize = 512;

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

    fn read_exact_at_owned(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let fd = self.file.as_raw_fd();
        while buf.len() < len {
            let filled = buf.len();
            let at = offset
                .checked_add(filled as u64)
                .and_then(|o| libc::off_t::try_from(o).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
            let spare = buf.spare_capacity_mut();
            // SAFETY: `spare` is valid for writes of `len - filled` bytes (the capacity
            // reserved above minus what is filled); pread writes at most that many.
            let n = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), len - filled, at) };
            match n {
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(with_path(e, "read", &self.path));
                    }
                }
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ends before offset {}",
                            self.path.display(),
                            offset + filled as u64
                        ),
                    ))
                }
                // SAFETY: pread initialised `n` more bytes right after the filled ones.
                n => unsafe { buf.set_len(filled + n as usize) },
            }
        }
        Ok(buf)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| with_path(e, "write", &self.path))
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let (mut index, mut skip) = (0, 0);
        let mut at = offset;
        while index < bufs.len() {
            if skip == bufs[index].len() {
                index += 1;
                skip = 0;
                continue;
            }
            let iov: Vec<libc::iovec> = std::iter::once(&bufs[index][skip..])
                .chain(bufs[index + 1..].iter().copied())
                .take(MAX_IOVECS_PER_WRITE)
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            let pos = libc::off_t::try_from(at)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
            // SAFETY: every iovec points into a live `&[u8]` of `bufs` with its length;
            // pwritev only reads them.
            let n = unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, pos) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(with_path(e, "write", &self.path));
            }
            if n == 0 {
                return Err(with_path(
                    io::ErrorKind::WriteZero.into(),
                    "write",
                    &self.path,
                ));
            }
            let mut written = n as usize;
            at += written as u64;
            while written > 0 && index < bufs.len() {
                let left = bufs[index].len() - skip;
                if written >= left {
                    written -= left;
                    index += 1;
                    skip = 0;
                } else {
                    skip += written;
                    written = 0;
                }
            }
        }
        Ok(())
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
        assert_eq!(f.read_exact_at_owned(7, 3)?, b"lo\0\0\0\0\0");
        assert_eq!(f.read_exact_at_owned(0, 15)?, b"");
        assert_eq!(
            f.read_exact_at_owned(4, 12).map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
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

    #[test]
    fn vectored_writes_land_in_order_past_the_iovec_limit() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let g = StdFs.open(&tmp.path().join("v"), true)?;
        g.write_all_at(b"0123456789", 0)?;
        g.write_all_vectored_at(&[b"ab", b"", b"cde"], 3)?;
        let many: Vec<&[u8]> = vec![&b"xy"[..]; MAX_IOVECS_PER_WRITE + 3];
        g.write_all_vectored_at(&many, 10)?;
        let contents = g.read_exact_at_owned(10 + 2 * many.len(), 0)?;
        assert_eq!(&contents[..10], b"012abcde89");
        assert!(contents[10..].chunks(2).all(|c| c == b"xy"));
        assert_eq!(g.len()?, (10 + 2 * many.len()) as u64);
        Ok(())
    }
}
