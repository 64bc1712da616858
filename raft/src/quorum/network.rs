//! How Raft reaches the other quorum nodes.
//!
//! This module owns the [`RaftNetworkFactory`] the quorum hands to openraft. There are two
//! transports: [`Network::Unreachable`], for a single voter without a controller listener
//! (it has no peers, so every RPC reports the peer unreachable and openraft backs off), and
//! [`Network::Rpc`], the controller RPC over TCP ([`super::transport`]), which carries
//! vote, append-entries and install-snapshot calls to the address each node has in the
//! membership.

// openraft's error types are large by design; they are its API, not ours to box.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::PayloadTooLarge;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::BasicNode;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;

use super::rpc::RequestBody;
use super::rpc::ResponseBody;
use super::rpc::RpcError;
use super::rpc::WireAppendRequest;
use super::rpc::WireSnapshotRequest;
use super::rpc::WireVoteRequest;
use super::transport::CallError;
use super::transport::RpcClient;
use super::types::NodeId;
use super::types::TypeConfig;
use super::QuorumError;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// How long openraft waits before retrying a peer that was unreachable.
pub const UNREACHABLE_RETRY_MS: u64 = 200;

/// The transports the quorum can use.
pub(crate) enum Network {
    /// No transport: every peer is unreachable. Enough for a single voter.
    Unreachable,
    /// Controller RPC over TCP.
    Rpc(Arc<RpcClient>),
}

/// A connection to one peer, as made by [`Network`].
pub(crate) enum PeerClient {
    Unreachable {
        target: NodeId,
        addr: String,
    },
    Rpc {
        target: NodeId,
        addr: String,
        client: Arc<RpcClient>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("controller {target} at '{addr}' is unreachable: this node has no controller transport (single-voter quorum)")]
struct NoTransport {
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("controller {target}: {detail}")]
struct PeerFailure {
    target: NodeId,
    detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("controller {target} answered {got} to {sent}")]
struct UnexpectedAnswer {
    target: NodeId,
    sent: &'static str,
    got: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        match self {
            Network::Unreachable => PeerClient::Unreachable {
                target,
                addr: node.addr.clone(),
            },
            Network::Rpc(client) => PeerClient::Rpc {
                target,
                addr: node.addr.clone(),
                client: client.clone(),
            },
        }
    }
}

/// Why a call failed, before it is put in openraft's error type of the RPC.
enum Failure {
    /// Not sent: openraft backs off before retrying.
    Unreachable(PeerFailure),
    /// Sent but not answered (or answered nonsense).
    Network(PeerFailure),
    /// The peer expected another snapshot chunk.
    SnapshotMismatch(InstallSnapshotError),
    /// The request does not fit in a frame (not sent).
    TooLarge(PeerFailure),
}

impl Failure {
    /// For RPCs that have no API errors: a snapshot mismatch answer is a broken peer.
    fn into_rpc_error(self, target: NodeId) -> RPCError<NodeId, BasicNode, RaftError<NodeId>> {
        match self {
            Failure::Unreachable(f) => RPCError::Unreachable(Unreachable::new(&f)),
            Failure::Network(f) | Failure::TooLarge(f) => RPCError::Network(NetworkError::new(&f)),
            Failure::SnapshotMismatch(e) => RPCError::Network(NetworkError::new(&PeerFailure {
                target,
                detail: e.to_string(),
            })),
        }
    }

    fn into_snapshot_error(
        self,
        target: NodeId,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>> {
        match self {
            Failure::Unreachable(f) => RPCError::Unreachable(Unreachable::new(&f)),
            Failure::Network(f) | Failure::TooLarge(f) => RPCError::Network(NetworkError::new(&f)),
            Failure::SnapshotMismatch(e) => {
                RPCError::RemoteError(RemoteError::new(target, RaftError::APIError(e)))
            }
        }
    }
}

impl PeerClient {
    fn target(&self) -> NodeId {
        match self {
            PeerClient::Unreachable { target, .. } | PeerClient::Rpc { target, .. } => *target,
        }
    }

    /// Sends `body` within `ttl`: not sent = Unreachable, sent but unanswered = Network,
    /// answered with an error = SnapshotMismatch or Unreachable (the peer cannot serve
    /// Raft now, e.g. it is stopping or belongs to another cluster).
    async fn call(&self, body: RequestBody, ttl: Duration) -> Result<ResponseBody, Failure> {
        let (target, addr, client) = match self {
            PeerClient::Unreachable { target, addr } => {
                return Err(Failure::Unreachable(PeerFailure {
                    target: *target,
                    detail: NoTransport {
                        target: *target,
                        addr: addr.clone(),
                    }
                    .to_string(),
                }))
            }
            PeerClient::Rpc {
                target,
                addr,
                client,
            } => (*target, addr, client),
        };
        let sent = body.name();
        let deadline = Instant::now() + ttl;
        let failure = |e: &dyn std::fmt::Display| PeerFailure {
            target,
            detail: e.to_string(),
        };
        let answer = match client.call(addr, body, deadline).await {
            Ok(answer) => answer,
            Err(e @ CallError::Unreachable { .. }) => {
                return Err(Failure::Unreachable(failure(&e)))
            }
            Err(e @ (CallError::Network { .. } | CallError::Timeout { .. })) => {
                return Err(Failure::Network(failure(&e)))
            }
            Err(e @ CallError::TooLarge { .. }) => return Err(Failure::TooLarge(failure(&e))),
            Err(CallError::Remote(remote)) => {
                if let Some(api) = remote.to_install_snapshot() {
                    return Err(Failure::SnapshotMismatch(api));
                }
                if let RpcError::Quorum(QuorumError::ClusterIdMismatch(msg)) = &remote {
                    tracing::warn!(target, %msg, request = sent, "peer refused: other cluster");
                }
                return Err(Failure::Unreachable(failure(&remote)));
            }
        };
        let expected = matches!(
            (sent, &answer),
            ("Vote", ResponseBody::Vote(_))
                | ("AppendEntries", ResponseBody::AppendEntries(_))
                | ("InstallSnapshot", ResponseBody::InstallSnapshot(_))
        );
        if !expected {
            let got: String = format!("{answer:?}").chars().take(200).collect();
            return Err(Failure::Network(failure(&UnexpectedAnswer {
                target,
                sent,
                got,
            })));
        }
        Ok(answer)
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let target = self.target();
        let entries = rpc.entries.len() as u64;
        let body = RequestBody::AppendEntries(WireAppendRequest::from_raft(&rpc));
        match self.call(body, option.hard_ttl()).await {
            Ok(ResponseBody::AppendEntries(r)) => Ok(r.into_raft()),
            // openraft retries with at most this many entries.
            Err(Failure::TooLarge(_)) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Ok(_) => Err(RPCError::Network(NetworkError::new(&PeerFailure {
                target,
                detail: "unexpected answer to AppendEntries".to_string(),
            }))),
            Err(f) => Err(f.into_rpc_error(target)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let target = self.target();
        let body = RequestBody::InstallSnapshot(WireSnapshotRequest::from_raft(&rpc));
        match self.call(body, option.hard_ttl()).await {
            Ok(ResponseBody::InstallSnapshot(r)) => Ok(r.into_raft()),
            Ok(_) => Err(RPCError::Network(NetworkError::new(&PeerFailure {
                target,
                detail: "unexpected answer to InstallSnapshot".to_string(),
            }))),
            Err(f) => Err(f.into_snapshot_error(target)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let target = self.target();
        let body = RequestBody::Vote(WireVoteRequest::from_raft(&rpc));
        match self.call(body, option.hard_ttl()).await {
            Ok(ResponseBody::Vote(r)) => Ok(r.into_raft()),
            Ok(_) => Err(RPCError::Network(NetworkError::new(&PeerFailure {
                target,
                detail: "unexpected answer to Vote".to_string(),
            }))),
            Err(f) => Err(f.into_rpc_error(target)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(
            UNREACHABLE_RETRY_MS,
        )))
    }
}
