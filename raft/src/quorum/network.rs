//! How Raft reaches the other controller voters.
//!
//! This module owns the [`RaftNetworkFactory`] the quorum hands to openraft. Today there is
//! one transport, [`Network::Unreachable`], for a single voter: it has no peers, so every
//! RPC reports the peer unreachable (openraft then backs off and retries). The multi-node
//! quorum adds a variant (controller RPC, framed with [`crate::codec`], over TCP on the
//! controller listener) to [`Network`] and [`PeerClient`]; nothing else changes.

// openraft's error types are large by design; they are its API, not ours to box.
#![allow(clippy::result_large_err)]

use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
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

use super::types::NodeId;
use super::types::TypeConfig;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// The transports the quorum can use.
pub(crate) enum Network {
    /// No transport: every peer is unreachable. Enough for a single voter.
    Unreachable,
}

/// A connection to one peer, as made by [`Network`].
pub(crate) enum PeerClient {
    Unreachable { target: NodeId, addr: String },
}

#[derive(Debug, thiserror::Error)]
#[error("controller {target} at '{addr}' is unreachable: this node has no controller transport (single-voter quorum)")]
struct NoTransport {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable<T, E: std::error::Error>(&self) -> RpcResult<T, E> {
        match self {
            PeerClient::Unreachable { target, addr } => {
                Err(RPCError::Unreachable(Unreachable::new(&NoTransport {
                    target: *target,
                    addr: addr.clone(),
                })))
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        match self {
            Network::Unreachable => PeerClient::Unreachable {
                target,
                addr: node.addr.clone(),
            },
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.unreachable()
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.unreachable()
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.unreachable()
    }
}
