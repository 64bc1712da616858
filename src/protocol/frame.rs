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
    let mut buf = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
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
    async fn a_whole_frame_is_returned() {
        let mut data: &[u8] = &[0, 0, 0, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99];
        let frame = read_frame(&mut data, 1024).await.unwrap().unwrap();
        assert_eq!(&frame[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}
