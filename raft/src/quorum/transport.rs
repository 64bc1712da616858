//! The controller RPC transport: length-prefixed frames over TCP.
//!
//! This module owns sockets and frames, nothing else. A frame is a 4-byte big-endian
//! length followed by that many bytes of [`crate::codec`] output (version prefix + bincode)
//! of an [`RpcRequest`] or [`RpcResponse`]. A connection carries one request at a time:
//! the client writes a request and reads its response, then returns the connection to a
//! small per-peer pool for reuse.
//!
//! Every outgoing connection binds the node's own controller-listener IP (port 0) before
//! connecting, so that the node's traffic carries its address as the source and tests can
//! partition nodes with iptables rules on source and destination IPs. Failed connects back
//! off (per peer address, exponentially up to [`RECONNECT_BACKOFF_MAX_MS`]); every read,
//! write and connect waits at most the caller's deadline.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::sync::Semaphore;

use super::rpc::RequestBody;
use super::rpc::ResponseBody;
use super::rpc::RpcError;
use super::rpc::RpcRequest;
use super::rpc::RpcResponse;
use super::types::NodeId;
use super::QuorumError;
use crate::codec;

/// Largest frame either side accepts (a snapshot chunk or a batch of log entries).
pub const MAX_RPC_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Longest a TCP connect may take (within the caller's deadline).
pub const RPC_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A pooled connection unused for this long is closed instead of reused.
pub const RPC_POOL_IDLE_MS: u64 = 30_000;
/// Most idle connections kept per peer address.
pub const MAX_IDLE_CONNECTIONS_PER_PEER: usize = 8;
/// Most connections open at once to one peer address; more requests wait (within their
/// deadline) for one to be free.
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// First delay before reconnecting to a peer whose connect failed.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 20;
/// Longest delay before reconnecting to a peer whose connects keep failing.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 500;
/// The server closes a connection that sends nothing for this long.
pub const SERVER_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Most connections the server serves at once; more wait to be accepted.
pub const MAX_SERVER_CONNECTIONS: usize = 1024;
/// Longest the server waits to write one response.
pub const SERVER_WRITE_TIMEOUT_MS: u64 = 30_000;

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// The request was not sent: no connection could be made.
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    /// The request may have been sent, but the connection failed before the answer.
    #[error("connection to {addr} failed: {detail}")]
    Network { addr: String, detail: String },
    /// No answer before the deadline; the request may have been carried out.
    #[error("no answer from {addr} in time")]
    Timeout { addr: String },
    /// The request is larger than a frame may be; it was not sent.
    #[error(
        "a {what} request of {bytes} bytes exceeds the frame limit of {MAX_RPC_FRAME_BYTES} bytes"
    )]
    TooLarge { what: &'static str, bytes: usize },
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(RpcError),
}

impl CallError {
    /// The quorum error a public caller sees for this.
    pub(crate) fn into_quorum_error(self) -> QuorumError {
        match self {
            CallError::Unreachable { addr, detail } => QuorumError::Unreachable { addr, detail },
            CallError::Network { addr, detail } => QuorumError::Unreachable { addr, detail },
            CallError::Timeout { .. } => QuorumError::Timeout,
            e @ CallError::TooLarge { .. } => QuorumError::Storage(e.to_string()),
            CallError::Remote(RpcError::Quorum(e)) => e,
            CallError::Remote(RpcError::NotLeader { leader_id, .. }) => {
                QuorumError::NotController { leader_id }
            }
            CallError::Remote(e @ RpcError::SnapshotMismatch { .. }) => {
                QuorumError::Storage(e.to_string())
            }
        }
    }
}

/// Who this side of a connection is: the node id and cluster id its requests carry and
/// its responses are checked against.
pub(crate) trait Identity: Send + Sync + 'static {
    /// This node's id (`None` for a tool).
    fn node_id(&self) -> Option<NodeId>;
    /// The cluster id this node knows (`None` while it knows none).
    fn cluster_id(&self) -> Option<String>;
}

/// An identity that knows nothing: used by tools that query a node.
pub(crate) struct Anonymous;

impl Identity for Anonymous {
    fn node_id(&self) -> Option<NodeId> {
        None
    }

    fn cluster_id(&self) -> Option<String> {
        None
    }
}

/// The message a node answers when a peer of another cluster talks to it.
pub(crate) fn cluster_mismatch(
    other: &str,
    other_cluster: &str,
    this: &str,
    this_cluster: &str,
) -> QuorumError {
    QuorumError::ClusterIdMismatch(format!(
        "{other} belongs to cluster {other_cluster}, this is cluster {this_cluster} ({this})"
    ))
}

fn describe(node: Option<NodeId>) -> String {
    match node {
        Some(id) => format!("node {id}"),
        None => "the caller".to_string(),
    }
}

struct PeerState {
    idle: Vec<(TcpStream, Instant)>,
    connect_failures: u32,
    retry_at: Option<Instant>,
    slots: Arc<Semaphore>,
}

impl PeerState {
    fn new() -> Self {
        PeerState {
            idle: Vec::new(),
            connect_failures: 0,
            retry_at: None,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PEER)),
        }
    }
}

/// Outgoing connections of one node, pooled per peer address.
pub(crate) struct RpcClient {
    source_ip: Option<IpAddr>,
    identity: Arc<dyn Identity>,
    peers: Mutex<HashMap<String, PeerState>>,
    /// Last successful answer from each node (for status on the leader).
    contacts: Mutex<BTreeMap<NodeId, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RpcClient {
    /// A client whose connections come from `source_ip` (any local address if `None`).
    pub(crate) fn new(source_ip: Option<IpAddr>, identity: Arc<dyn Identity>) -> Self {
        RpcClient {
            source_ip,
            identity,
            peers: Mutex::new(HashMap::new()),
            contacts: Mutex::new(BTreeMap::new()),
        }
    }

    /// When `node` last answered a call, if ever.
    pub(crate) fn last_contact(&self, node: NodeId) -> Option<Instant> {
        lock(&self.contacts).get(&node).copied()
    }

    /// Sends `body` to the node at `addr` and waits (until `deadline`) for its answer.
    ///
    /// # Errors
    /// [`CallError`]; `Unreachable` guarantees the request was not sent.
    pub(crate) async fn call(
        &self,
        addr: &str,
        body: RequestBody,
        deadline: Instant,
    ) -> Result<ResponseBody, CallError> {
        let what = body.name();
        let request = RpcRequest {
            cluster_id: self.identity.cluster_id(),
            from: self.identity.node_id(),
            body,
        };
        let frame = codec::encode(&request).map_err(|e| CallError::Unreachable {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
        if frame.len() > MAX_RPC_FRAME_BYTES {
            return Err(CallError::TooLarge {
                what,
                bytes: frame.len(),
            });
        }
        let timeout = || CallError::Timeout {
            addr: addr.to_string(),
        };

        let slots = lock(&self.peers)
            .entry(addr.to_string())
            .or_insert_with(PeerState::new)
            .slots
            .clone();
        let _slot = match tokio::time::timeout_at(deadline.into(), slots.acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                return Err(CallError::Unreachable {
                    addr: addr.to_string(),
                    detail: format!("all {MAX_CONNECTIONS_PER_PEER} connections to it are busy"),
                })
            }
        };

        // A pooled connection may have been closed by the peer meanwhile; such a failure
        // before any answer byte arrived is retried once on a fresh connection.
        let mut reused = self.take_idle(addr);
        loop {
            let fresh = reused.is_none();
            let mut stream = match reused.take() {
                Some(s) => s,
                None => self.connect(addr, deadline).await?,
            };
            let exchange = async {
                write_frame(&mut stream, &frame).await?;
                read_frame(&mut stream, MAX_RPC_FRAME_BYTES).await
            };
            let reply = match tokio::time::timeout_at(deadline.into(), exchange).await {
                Err(_) => return Err(timeout()),
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) | Ok(Err(_)) if !fresh => continue,
                Ok(Ok(None)) => {
                    return Err(CallError::Network {
                        addr: addr.to_string(),
                        detail: format!("closed the connection instead of answering {what}"),
                    })
                }
                Ok(Err(e)) => {
                    return Err(CallError::Network {
                        addr: addr.to_string(),
                        detail: e.to_string(),
                    })
                }
            };
            let response: RpcResponse = codec::decode(&reply).map_err(|e| CallError::Network {
                addr: addr.to_string(),
                detail: format!("undecodable answer to {what}: {e}"),
            })?;
            self.give_back(addr, stream);
            return self.check_response(addr, response);
        }
    }

    fn check_response(&self, addr: &str, response: RpcResponse) -> Result<ResponseBody, CallError> {
        if let (Some(theirs), Some(ours)) = (&response.cluster_id, self.identity.cluster_id()) {
            if *theirs != ours {
                return Err(CallError::Remote(RpcError::Quorum(cluster_mismatch(
                    &format!("node {} at {addr}", response.node_id),
                    theirs,
                    &describe(self.identity.node_id()),
                    &ours,
                ))));
            }
        }
        lock(&self.contacts).insert(response.node_id, Instant::now());
        response.body.map_err(CallError::Remote)
    }

    fn take_idle(&self, addr: &str) -> Option<TcpStream> {
        let mut peers = lock(&self.peers);
        let peer = peers.get_mut(addr)?;
        while let Some((stream, since)) = peer.idle.pop() {
            if since.elapsed() > Duration::from_millis(RPC_POOL_IDLE_MS) {
                continue;
            }
            // Data or EOF on an idle connection means it is unusable.
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(stream),
                _ => continue,
            }
        }
        None
    }

    fn give_back(&self, addr: &str, stream: TcpStream) {
        let mut peers = lock(&self.peers);
        let peer = peers.entry(addr.to_string()).or_insert_with(PeerState::new);
        if peer.idle.len() < MAX_IDLE_CONNECTIONS_PER_PEER {
            peer.idle.push((stream, Instant::now()));
        }
    }

    async fn connect(&self, addr: &str, deadline: Instant) -> Result<TcpStream, CallError> {
        let unreachable = |detail: String| CallError::Unreachable {
            addr: addr.to_string(),
            detail,
        };
        if let Some(retry_at) = lock(&self.peers).get(addr).and_then(|p| p.retry_at) {
            if Instant::now() < retry_at {
                return Err(unreachable("backing off after failed connects".to_string()));
            }
        }
        let connect_deadline =
            deadline.min(Instant::now() + Duration::from_millis(RPC_CONNECT_TIMEOUT_MS));
        let attempt = async {
            let target = resolve(addr).await?;
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = self.source_ip {
                if ip.is_ipv4() == target.is_ipv4() && !ip.is_unspecified() {
                    socket.bind(SocketAddr::new(ip, 0))?;
                }
            }
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok::<TcpStream, io::Error>(stream)
        };
        let result = match tokio::time::timeout_at(connect_deadline.into(), attempt).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".to_string()),
        };
        let mut peers = lock(&self.peers);
        let peer = peers.entry(addr.to_string()).or_insert_with(PeerState::new);
        match result {
            Ok(stream) => {
                peer.connect_failures = 0;
                peer.retry_at = None;
                Ok(stream)
            }
            Err(detail) => {
                peer.connect_failures = peer.connect_failures.saturating_add(1);
                let shift = peer.connect_failures.saturating_sub(1).min(16);
                let backoff_ms = RECONNECT_BACKOFF_MIN_MS
                    .saturating_mul(1u64 << shift)
                    .min(RECONNECT_BACKOFF_MAX_MS);
                peer.retry_at = Some(Instant::now() + Duration::from_millis(backoff_ms));
                Err(unreachable(detail))
            }
        }
    }
}

async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("'{addr}' resolves to no address"),
        )
    })
}

async fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_RPC_FRAME_BYTES)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes exceeds the limit of {MAX_RPC_FRAME_BYTES}",
                    payload.len()
                ),
            )
        })?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads one frame; `None` on a clean end of stream before its first byte.
async fn read_frame(stream: &mut TcpStream, max_bytes: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => stream.read_exact(&mut len[1..]).await?,
    };
    let len = u32::from_be_bytes(len) as usize;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max_bytes}"),
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// What the server side of a node does with one request.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request (already decoded).
    fn handle(&self, request: RpcRequest) -> impl Future<Output = RpcResponse> + Send;
    /// The answer to a frame that could not be decoded.
    fn undecodable(&self, error: String) -> RpcResponse;
}

/// Accepts controller RPC connections on `listener` until `stop` turns true.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SERVER_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler, stop).await {
                        tracing::debug!(%peer, error = %e, "controller RPC connection closed");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "controller listener accept failed");
                tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MIN_MS)).await;
            }
        }
    }
    tracing::debug!("controller RPC listener stopped");
}

async fn serve_connection<H: Handler>(
    mut stream: TcpStream,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            frame = tokio::time::timeout(
                Duration::from_millis(SERVER_IDLE_TIMEOUT_MS),
                read_frame(&mut stream, MAX_RPC_FRAME_BYTES),
            ) => frame,
        };
        let bytes = match frame {
            Err(_) => return Ok(()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Err(e)) => return Err(e),
        };
        let response = match codec::decode::<RpcRequest>(&bytes) {
            Ok(request) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    response = handler.handle(request) => response,
                }
            }
            Err(e) => handler.undecodable(e.to_string()),
        };
        let encoded = codec::encode(&response)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        tokio::time::timeout(
            Duration::from_millis(SERVER_WRITE_TIMEOUT_MS),
            write_frame(&mut stream, &encoded),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response write timed out"))??;
    }
}
