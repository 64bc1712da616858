//! One client connection: a reader that decodes and starts requests in arrival order,
//! and a writer that sends their responses in the same order.
//!
//! Requests of one connection run concurrently once started (so a pipelining
//! producer's acks=all requests share one group commit), but each is started in
//! order, and at most `queued.max.requests.per.connection` requests and
//! [`MAX_QUEUED_REQUEST_BYTES_PER_CONNECTION`] bytes of request frames are in flight:
//! beyond either the reader stops reading, which pushes back on the client through TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::dispatch::dispatch;
use super::frame::{read_frame_body_into, read_frame_size};
use crate::api::Reply;
use crate::broker::Broker;

/// Bytes of request frames one connection may hold in memory at once (read, not yet
/// answered). A frame larger than this is still served, alone. With acks=all a
/// pipelining producer keeps its requests here until their group commit: the bound
/// keeps memory per connection fixed whatever the client's in-flight limit.
pub const MAX_QUEUED_REQUEST_BYTES_PER_CONNECTION: usize = 16 * 1024 * 1024;
/// A connection keeps the memory of its frames for the next ones up to this size;
/// after a larger frame (up to `socket.request.max.bytes`) the memory is let go.
pub const MAX_RETAINED_FRAME_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Read buffer per connection: small requests (fetches, metadata) and the size
/// prefixes of large ones come out of it without a system call each; reads of large
/// bodies bypass it.
pub const CONNECTION_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Write buffer per connection: responses that are ready together (acknowledgements of
/// pipelined produce requests) go out in one system call.
pub const CONNECTION_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Most pieces handed to one vectored write (Linux's IOV_MAX is 1024).
const MAX_IOV_PIECES: usize = 64;

/// A started request: its response, and the share of the byte budget its frame holds
/// until the response is written.
type InFlight = (tokio::task::JoinHandle<Reply>, OwnedSemaphorePermit);

/// Serves one connection until the client closes it, it idles out, it sends something
/// malformed, or the broker shuts down.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(CONNECTION_READ_BUFFER_BYTES, reader);
    let mut writer = BufWriter::with_capacity(CONNECTION_WRITE_BUFFER_BYTES, writer);
    let (tx, mut rx) = mpsc::channel::<InFlight>(broker.config.queued_max_requests_per_connection);
    let budget = Arc::new(Semaphore::new(MAX_QUEUED_REQUEST_BYTES_PER_CONNECTION));

    let writer_task = tokio::spawn(async move {
        loop {
            let (handle, permit) = match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing more is ready: send what is buffered before waiting.
                    if let Err(e) = writer.flush().await {
                        tracing::debug!(%peer, "write failed: {e}");
                        return;
                    }
                    match rx.recv().await {
                        Some(next) => next,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            if !handle.is_finished() {
                // This response may take a while (a group commit, a long poll): the
                // ones before it must not wait in the buffer meanwhile.
                if let Err(e) = writer.flush().await {
                    tracing::debug!(%peer, "write failed: {e}");
                    return;
                }
            }
            match handle.await {
                Ok(Reply::Frame(bytes)) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        tracing::debug!(%peer, "write failed: {e}");
                        return;
                    }
                }
                Ok(Reply::Frames(pieces)) => {
                    if let Err(e) = write_pieces(&mut writer, &pieces).await {
                        tracing::debug!(%peer, "write failed: {e}");
                        return;
                    }
                }
                Ok(Reply::None) => {}
                Ok(Reply::Close) => {
                    let _ = writer.flush().await;
                    return;
                }
                Err(e) => {
                    tracing::error!(%peer, "request task failed: {e}");
                    let _ = writer.flush().await;
                    return;
                }
            }
            drop(permit);
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    });

    let idle = broker.config.connections_max_idle;
    let max_frame = broker.config.socket_request_max_bytes;
    let mut shutdown = broker.shutdown_signal();
    let mut frames = bytes::BytesMut::new();
    loop {
        let size = tokio::select! {
            r = tokio::time::timeout(idle, read_frame_size(&mut reader, max_frame)) => r,
            _ = shutdown.changed() => break,
        };
        let size = match size {
            Err(_) => {
                tracing::debug!(%peer, "closing idle connection");
                break;
            }
            Ok(Ok(Some(size))) => size,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        // Reserve the frame's bytes before reading it; a frame over the whole budget
        // waits until it is alone.
        let cost = size.min(MAX_QUEUED_REQUEST_BYTES_PER_CONNECTION) as u32;
        let permit = tokio::select! {
            p = Arc::clone(&budget).acquire_many_owned(cost) => p,
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permit else {
            break; // the semaphore is never closed
        };
        let frame = tokio::select! {
            r = tokio::time::timeout(idle, read_frame_body_into(&mut reader, size, &mut frames)) => r,
            _ = shutdown.changed() => break,
        };
        if size > MAX_RETAINED_FRAME_BUFFER_BYTES {
            // Let the big allocation go with its frame.
            frames = bytes::BytesMut::new();
        }
        let frame = match frame {
            Err(_) => {
                tracing::debug!(%peer, "closing connection idle inside a frame");
                break;
            }
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        match dispatch(&broker, frame, peer) {
            Ok(pending) => {
                if tx.send((tokio::spawn(pending), permit)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer_task.await;
}

/// Writes `pieces` in order: small ones through the buffer, large ones with vectored
/// writes straight to the socket (after what is buffered), so shared record data is
/// never copied in user space.
async fn write_pieces<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    pieces: &[Bytes],
) -> std::io::Result<()> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    if total <= CONNECTION_WRITE_BUFFER_BYTES.saturating_sub(writer.buffer().len()) {
        for p in pieces {
            writer.write_all(p).await?;
        }
        return Ok(());
    }
    writer.flush().await?;
    let socket = writer.get_mut();
    let (mut index, mut offset) = (0, 0);
    while index < pieces.len() {
        if offset == pieces[index].len() {
            index += 1;
            offset = 0;
            continue;
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(&pieces[index][offset..])
            .chain(pieces[index + 1..].iter().map(|p| &p[..]))
            .take(MAX_IOV_PIECES)
            .map(IoSlice::new)
            .collect();
        let mut written = socket.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && index < pieces.len() {
            let left = pieces[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn pieces_arrive_whole_and_in_order_through_short_writes() {
        let (client, mut server) = tokio::io::duplex(1000);
        let mut writer = BufWriter::with_capacity(64, client);
        writer.write_all(b"before-").await.unwrap();
        let pieces: Vec<Bytes> = vec![
            Bytes::from_static(b"head-"),
            Bytes::new(),
            Bytes::from(vec![b'x'; CONNECTION_WRITE_BUFFER_BYTES + 5000]),
            Bytes::from_static(b"-tail"),
        ];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        write_pieces(&mut writer, &pieces).await.unwrap();
        writer.write_all(b"-after").await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        let got = reader.await.unwrap();
        let mut want = b"before-head-".to_vec();
        want.extend(vec![b'x'; CONNECTION_WRITE_BUFFER_BYTES + 5000]);
        want.extend(b"-tail-after");
        assert_eq!(got, want);
    }
}
