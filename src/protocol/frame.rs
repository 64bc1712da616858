//! Kafka wire framing: a 4-byte big-endian size followed by that many bytes.
//!
//! Owns reading one request frame under a size limit; knows nothing of API bodies.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Smallest valid request frame: api key, api version, correlation id (2+2+4 bytes)
/// plus a client id length (2 bytes).
pub const MIN_REQUEST_FRAME_BYTES: usize = 10;

/// Why a frame could not be read; each closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than `socket.request.max.bytes`.
    #[error("request frame of {size} bytes exceeds socket.request.max.bytes={max}")]
    TooLarge { size: i64, max: usize },
    /// The announced size is negative or too small to hold a request header.
    #[error("request frame size {0} is invalid")]
    InvalidSize(i32),
    /// The socket failed or closed mid-frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
///
/// # Errors
/// Oversized or invalid sizes, and I/O errors including EOF inside a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_frame_size(reader, max_bytes).await? {
        Some(size) => Ok(Some(read_frame_body(reader, size).await?)),
        None => Ok(None),
    }
}

/// Reads a frame's 4-byte size and checks it, so the caller can reserve memory for
/// the body before reading it. `Ok(None)` is a clean end of stream between frames.
///
/// # Errors
/// Oversized or invalid sizes, and I/O errors.
pub async fn read_frame_size<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<usize>, FrameError> {
    let mut size_buf = [0u8; 4];
    match reader.read_exact(&mut size_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(size_buf);
    if size < 0 || (size as usize) < MIN_REQUEST_FRAME_BYTES {
        return Err(FrameError::InvalidSize(size));
    }
    if size as usize > max_bytes {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max: max_bytes,
        });
    }
    Ok(Some(size as usize))
}

/// Reads a frame body of `size` bytes (as checked by [`read_frame_size`]) into a buffer
/// of its own. The buffer is filled straight from the socket, never zeroed first: a
/// produce frame is up to a megabyte or more, and clearing it would cost as much as
/// reading it.
///
/// # Errors
/// I/O errors, including EOF before `size` bytes.
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Result<Bytes, FrameError> {
    read_frame_body_into(reader, size, &mut BytesMut::new()).await
}

/// [`read_frame_body`] into the free space of `buf`, a buffer the caller keeps between
/// frames: once every earlier frame cut from it has been dropped, its memory is reused
/// instead of allocating (and page-faulting in) a new buffer for every request.
/// `buf` must be empty (frames are split off it whole).
///
/// # Errors
/// I/O errors, including EOF before `size` bytes.
pub async fn read_frame_body_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    buf: &mut BytesMut,
) -> Result<Bytes, FrameError> {
    debug_assert!(buf.is_empty());
    buf.clear();
    buf.reserve(size);
    let mut body = reader.take(size as u64);
    while buf.len() < size {
        if body.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(buf.split_to(size).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_its_body() {
        let mut data: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut data, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[tokio::test]
    async fn negative_and_tiny_sizes_are_invalid() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut data, 1024).await,
            Err(FrameError::InvalidSize(-1))
        ));
        let mut data: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert!(matches!(
            read_frame(&mut data, 1024).await,
            Err(FrameError::InvalidSize(3))
        ));
    }

    #[tokio::test]
    async fn clean_eof_between_frames_is_none_and_mid_frame_is_an_error() {
        let mut data: &[u8] = &[];
        assert!(read_frame(&mut data, 1024).await.unwrap().is_none());
        let mut data: &[u8] = &[0, 0, 0, 20, 1, 2];
        assert!(matches!(
            read_frame(&mut data, 1024).await,
            Err(FrameError::Io(_))
        ));
    }

    #[tokio::test]
    async fn a_body_arriving_in_pieces_is_read_whole_and_nothing_after_it() {
        let (mut client, mut server) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut frame = vec![0, 0, 0, 40];
            frame.extend((0..40u8).collect::<Vec<_>>());
            frame.extend([0, 0, 0, 10]);
            client.write_all(&frame).await.unwrap();
        });
        let size = read_frame_size(&mut server, 1024).await.unwrap().unwrap();
        assert_eq!(size, 40);
        let body = read_frame_body(&mut server, size).await.unwrap();
        assert_eq!(&body[..], &(0..40u8).collect::<Vec<_>>()[..]);
        assert_eq!(read_frame_size(&mut server, 1024).await.unwrap(), Some(10));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_buffer_is_reused_once_its_frames_are_dropped() {
        let mut data: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut buf = BytesMut::new();
        let first = read_frame_body_into(&mut data, 6, &mut buf).await.unwrap();
        let first_ptr = first.as_ptr();
        assert_eq!(&first[..], &[1, 2, 3, 4, 5, 6]);
        drop(first);
        let second = read_frame_body_into(&mut data, 6, &mut buf).await.unwrap();
        assert_eq!(&second[..], &[7, 8, 9, 10, 11, 12]);
        assert_eq!(
            second.as_ptr(),
            first_ptr,
            "the dropped frame's memory was not reused"
        );
    }

    #[tokio::test]
    async fn a_whole_frame_is_returned() {
        let mut data: &[u8] = &[0, 0, 0, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99];
        let frame = read_frame(&mut data, 1024).await.unwrap().unwrap();
        assert_eq!(&frame[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
