//! One client connection: a reader that decodes and starts requests in arrival order,
//! and a writer that sends their responses in the same order.
//!
//! Requests of one connection run concurrently once started (so a pipelining
//! producer's acks=all requests share one group commit), but each is started in
//! order, and at most `queued.max.requests.per.connection` are in flight: beyond that
//! the reader stops reading, which pushes back on the client through TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::dispatch::dispatch;
use super::frame::read_frame;
use crate::api::Reply;
use crate::broker::Broker;

/// Serves one connection until the client closes it, it idles out, it sends something
/// malformed, or the broker shuts down.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<Reply>>(
        broker.config.queued_max_requests_per_connection,
    );

    let writer_task = tokio::spawn(async move {
        while let Some(handle) = rx.recv().await {
            match handle.await {
                Ok(Reply::Frame(bytes)) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        tracing::debug!(%peer, "write failed: {e}");
                        return;
                    }
                }
                Ok(Reply::None) => {}
                Ok(Reply::Close) => return,
                Err(e) => {
                    tracing::error!(%peer, "request task failed: {e}");
                    return;
                }
            }
        }
        let _ = writer.shutdown().await;
    });

    let idle = broker.config.connections_max_idle;
    let max_frame = broker.config.socket_request_max_bytes;
    let mut shutdown = broker.shutdown_signal();
    loop {
        let frame = tokio::select! {
            r = tokio::time::timeout(idle, read_frame(&mut reader, max_frame)) => r,
            _ = shutdown.changed() => break,
        };
        let frame = match frame {
            Err(_) => {
                tracing::debug!(%peer, "closing idle connection");
                break;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        match dispatch(&broker, frame, peer) {
            Ok(pending) => {
                if tx.send(tokio::spawn(pending)).await.is_err() {
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
