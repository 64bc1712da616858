//! [`BatchCursor`]: walks the batches of a segment file in order, reading in chunks so
//! that a walk over many small batches costs a few large reads, not one read per batch.

use std::io;

use crate::batch::{BatchError, BatchHeader, RECORD_BATCH_HEADER_BYTES};
use crate::fs::FileHandle;

/// Chunk size when only headers are needed (lookups under the log's lock).
pub(crate) const HEADER_SCAN_CHUNK_BYTES: usize = 16 << 10;
/// Chunk size when whole batches are read and checked (recovery).
pub(crate) const BATCH_SCAN_CHUNK_BYTES: usize = 4 << 20;

/// Why a walk stopped early.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// Reading the file failed.
    Io(io::Error),
    /// The bytes at `position` are not a batch.
    Batch {
        /// Byte position of the bad batch.
        position: u64,
        /// What was wrong.
        error: BatchError,
    },
}

/// Sequential reader of the batches in `[start, end)` of a file.
#[derive(Debug)]
pub(crate) struct BatchCursor<'f> {
    file: &'f dyn FileHandle,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    chunk_bytes: usize,
}

impl<'f> BatchCursor<'f> {
    /// A cursor at byte `start` that stops at byte `end`.
    pub(crate) fn new(file: &'f dyn FileHandle, start: u64, end: u64, chunk_bytes: usize) -> Self {
        Self {
            file,
            pos: start,
            end,
            buf: Vec::new(),
            buf_start: start,
            chunk_bytes,
        }
    }

    /// Makes `[pos, pos + len)` available in the buffer, reading at least `chunk` bytes
    /// if it must read; `len <= end - pos`.
    fn ensure(&mut self, pos: u64, len: usize, chunk: usize) -> io::Result<()> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if pos >= self.buf_start && pos + len as u64 <= buf_end {
            return Ok(());
        }
        let want = (len.max(chunk) as u64).min(self.end - pos) as usize;
        self.buf.resize(want, 0);
        self.buf_start = pos;
        if let Err(e) = self.file.read_exact_at(&mut self.buf, pos) {
            self.buf.clear();
            return Err(e);
        }
        Ok(())
    }

    fn header_here(&mut self) -> Result<Option<BatchHeader>, ScanError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let remaining = self.end - self.pos;
        let position = self.pos;
        if remaining < RECORD_BATCH_HEADER_BYTES as u64 {
            return Err(ScanError::Batch {
                position,
                error: BatchError::Truncated {
                    needed: RECORD_BATCH_HEADER_BYTES,
                    available: remaining as usize,
                },
            });
        }
        // Headers alone need only small reads, whatever the chunk for whole batches.
        let chunk = self.chunk_bytes.min(HEADER_SCAN_CHUNK_BYTES);
        self.ensure(position, RECORD_BATCH_HEADER_BYTES, chunk)
            .map_err(ScanError::Io)?;
        let at = (position - self.buf_start) as usize;
        let header = BatchHeader::parse(&self.buf[at..])
            .map_err(|error| ScanError::Batch { position, error })?;
        let total = header.total_bytes() as u64;
        if total > remaining {
            return Err(ScanError::Batch {
                position,
                error: BatchError::Truncated {
                    needed: total as usize,
                    available: remaining as usize,
                },
            });
        }
        Ok(Some(header))
    }

    /// The next batch's position and header, without reading its records.
    pub(crate) fn next_header(&mut self) -> Result<Option<(u64, BatchHeader)>, ScanError> {
        let Some(header) = self.header_here()? else {
            return Ok(None);
        };
        let position = self.pos;
        self.pos += header.total_bytes() as u64;
        Ok(Some((position, header)))
    }

    /// The `len` bytes at `position` (a batch the cursor has reached), read in chunks
    /// of the cursor's size so that following batches come from the same read.
    ///
    /// # Errors
    /// Read errors; `InvalidInput` if the range passes the cursor's end.
    pub(crate) fn bytes_at(&mut self, position: u64, len: usize) -> io::Result<&[u8]> {
        if position + len as u64 > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range beyond the end of the scan",
            ));
        }
        self.ensure(position, len, self.chunk_bytes)?;
        let at = (position - self.buf_start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultyFs, Filesystem};
    use crate::testing::BatchBuilder;
    use std::path::Path;

    #[test]
    fn walks_headers_and_batches_across_chunk_boundaries() -> io::Result<()> {
        let fs = FaultyFs::new();
        let file = fs.open(Path::new("/seg"), true)?;
        let mut bytes = Vec::new();
        for i in 0..20 {
            bytes.extend(
                BatchBuilder::new(1 + i % 3, 10 * i)
                    .base_offset(i as i64)
                    .build(),
            );
        }
        file.write_all_at(&bytes, 0)?;
        let end = bytes.len() as u64;
        let mut cursor = BatchCursor::new(&*file, 0, end, 100);
        let mut n = 0;
        while let Some((pos, h)) = cursor
            .next_header()
            .map_err(|e| io::Error::other(format!("{e:?}")))?
        {
            assert_eq!(h.base_offset, n);
            let b = cursor.bytes_at(pos, h.total_bytes())?;
            assert_eq!(b, &bytes[pos as usize..pos as usize + h.total_bytes()]);
            n += 1;
        }
        assert_eq!(n, 20);
        let mut cursor = BatchCursor::new(&*file, 0, end - 1, 64);
        let mut headers = 0;
        let err = loop {
            match cursor.next_header() {
                Ok(Some(_)) => headers += 1,
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        assert_eq!(headers, 19);
        assert!(matches!(
            err,
            Some(ScanError::Batch {
                error: BatchError::Truncated { .. },
                ..
            })
        ));
        Ok(())
    }
}
