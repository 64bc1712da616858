//! The messages of the controller RPC, and their conversion from and to openraft's types.
//!
//! This module owns what travels between quorum nodes: one [`RpcRequest`] answered by one
//! [`RpcResponse`]. Both are encoded by [`crate::codec`] (format version prefix + bincode)
//! inside the length-prefixed frames of [`super::transport`]. openraft's messages travel in
//! keel's own forms (built from [`super::stored`]), so a change of openraft's serde layout
//! cannot change the wire format unnoticed. Every request carries the sender's cluster id
//! (when it knows one) and node id; every response carries the responder's.

use openraft::error::InstallSnapshotError;
use openraft::error::SnapshotMismatch;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::SnapshotSegmentId;
use serde::Deserialize;
use serde::Serialize;

use super::stored::StoredEntry;
use super::stored::StoredLogId;
use super::stored::StoredSnapshotMeta;
use super::stored::StoredVote;
use super::types::NodeId;
use super::types::TypeConfig;
use super::QuorumError;
use super::QuorumStatus;
use crate::controller::ControllerRequest;
use crate::controller::ControllerResponse;

/// One request to a quorum node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RpcRequest {
    /// The sender's cluster id, if it knows one; a node of another cluster refuses.
    pub cluster_id: Option<String>,
    /// The sender's node id (`None` for tools such as `keel cluster status`).
    pub from: Option<NodeId>,
    pub body: RequestBody,
}

/// What is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RequestBody {
    Vote(WireVoteRequest),
    AppendEntries(WireAppendRequest),
    InstallSnapshot(WireSnapshotRequest),
    /// Run a controller request on the active controller.
    Submit {
        request: ControllerRequest,
        timeout_ms: u64,
    },
    /// Add the sender as a learner (observer) with its controller address.
    AddLearner {
        node_id: NodeId,
        addr: String,
    },
    /// Make `node_id` a voter (adding it as a learner first and waiting until it caught up).
    AddVoter {
        node_id: NodeId,
        addr: String,
        timeout_ms: u64,
    },
    /// Take `node_id` out of the voters (it stays a learner).
    RemoveVoter {
        node_id: NodeId,
        timeout_ms: u64,
    },
    /// The responder's own [`QuorumStatus`].
    Status,
}

impl RequestBody {
    /// The request's name, for logs and errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RequestBody::Vote(_) => "Vote",
            RequestBody::AppendEntries(_) => "AppendEntries",
            RequestBody::InstallSnapshot(_) => "InstallSnapshot",
            RequestBody::Submit { .. } => "Submit",
            RequestBody::AddLearner { .. } => "AddLearner",
            RequestBody::AddVoter { .. } => "AddVoter",
            RequestBody::RemoveVoter { .. } => "RemoveVoter",
            RequestBody::Status => "Status",
        }
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RpcResponse {
    /// The responder's cluster id, if it knows one.
    pub cluster_id: Option<String>,
    pub node_id: NodeId,
    pub body: Result<ResponseBody, RpcError>,
}

/// The answer to a [`RequestBody`] of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ResponseBody {
    Vote(WireVoteResponse),
    AppendEntries(WireAppendResponse),
    InstallSnapshot(WireSnapshotResponse),
    /// The controller's answer, and the log index a node must have applied to see it.
    Submit {
        response: ControllerResponse,
        applied_index: u64,
    },
    /// A membership request (AddLearner, AddVoter, RemoveVoter) is done.
    MembershipChanged,
    Status(Box<QuorumStatus>),
}

/// Why a node did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum RpcError {
    /// Only the leader does this; it is the one named (if known).
    #[error("node is not the active controller (known leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// A snapshot chunk arrived for another snapshot or offset than expected.
    #[error("snapshot mismatch: expected {expect_id}+{expect_offset}, got {got_id}+{got_offset}")]
    SnapshotMismatch {
        expect_id: String,
        expect_offset: u64,
        got_id: String,
        got_offset: u64,
    },
    /// Anything else, as the quorum error the responder met.
    #[error("{0}")]
    Quorum(QuorumError),
}

/// openraft's `VoteRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireVoteRequest {
    pub vote: StoredVote,
    pub last_log_id: Option<StoredLogId>,
}

/// openraft's `VoteResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireVoteResponse {
    pub vote: StoredVote,
    pub vote_granted: bool,
    pub last_log_id: Option<StoredLogId>,
}

/// openraft's `AppendEntriesRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireAppendRequest {
    pub vote: StoredVote,
    pub prev_log_id: Option<StoredLogId>,
    pub entries: Vec<StoredEntry>,
    pub leader_commit: Option<StoredLogId>,
}

/// openraft's `AppendEntriesResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireAppendResponse {
    Success,
    PartialSuccess(Option<StoredLogId>),
    Conflict,
    HigherVote(StoredVote),
}

/// openraft's `InstallSnapshotRequest`: one chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireSnapshotRequest {
    pub vote: StoredVote,
    pub meta: StoredSnapshotMeta,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// openraft's `InstallSnapshotResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireSnapshotResponse {
    pub vote: StoredVote,
}

fn log_id(id: &Option<openraft::LogId<NodeId>>) -> Option<StoredLogId> {
    id.as_ref().map(StoredLogId::from_raft)
}

fn raft_log_id(id: Option<StoredLogId>) -> Option<openraft::LogId<NodeId>> {
    id.map(StoredLogId::to_raft)
}

impl WireVoteRequest {
    pub(crate) fn from_raft(r: &VoteRequest<NodeId>) -> Self {
        WireVoteRequest {
            vote: StoredVote::from_raft(&r.vote),
            last_log_id: log_id(&r.last_log_id),
        }
    }

    pub(crate) fn into_raft(self) -> VoteRequest<NodeId> {
        VoteRequest {
            vote: self.vote.to_raft(),
            last_log_id: raft_log_id(self.last_log_id),
        }
    }
}

impl WireVoteResponse {
    pub(crate) fn from_raft(r: &VoteResponse<NodeId>) -> Self {
        WireVoteResponse {
            vote: StoredVote::from_raft(&r.vote),
            vote_granted: r.vote_granted,
            last_log_id: log_id(&r.last_log_id),
        }
    }

    pub(crate) fn into_raft(self) -> VoteResponse<NodeId> {
        VoteResponse {
            vote: self.vote.to_raft(),
            vote_granted: self.vote_granted,
            last_log_id: raft_log_id(self.last_log_id),
        }
    }
}

impl WireAppendRequest {
    pub(crate) fn from_raft(r: &AppendEntriesRequest<TypeConfig>) -> Self {
        WireAppendRequest {
            vote: StoredVote::from_raft(&r.vote),
            prev_log_id: log_id(&r.prev_log_id),
            entries: r.entries.iter().map(StoredEntry::from_raft).collect(),
            leader_commit: log_id(&r.leader_commit),
        }
    }

    pub(crate) fn into_raft(self) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: self.vote.to_raft(),
            prev_log_id: raft_log_id(self.prev_log_id),
            entries: self
                .entries
                .into_iter()
                .map(StoredEntry::into_raft)
                .collect(),
            leader_commit: raft_log_id(self.leader_commit),
        }
    }
}

impl WireAppendResponse {
    pub(crate) fn from_raft(r: &AppendEntriesResponse<NodeId>) -> Self {
        match r {
            AppendEntriesResponse::Success => WireAppendResponse::Success,
            AppendEntriesResponse::PartialSuccess(id) => {
                WireAppendResponse::PartialSuccess(log_id(id))
            }
            AppendEntriesResponse::Conflict => WireAppendResponse::Conflict,
            AppendEntriesResponse::HigherVote(v) => {
                WireAppendResponse::HigherVote(StoredVote::from_raft(v))
            }
        }
    }

    pub(crate) fn into_raft(self) -> AppendEntriesResponse<NodeId> {
        match self {
            WireAppendResponse::Success => AppendEntriesResponse::Success,
            WireAppendResponse::PartialSuccess(id) => {
                AppendEntriesResponse::PartialSuccess(raft_log_id(id))
            }
            WireAppendResponse::Conflict => AppendEntriesResponse::Conflict,
            WireAppendResponse::HigherVote(v) => AppendEntriesResponse::HigherVote(v.to_raft()),
        }
    }
}

impl WireSnapshotRequest {
    pub(crate) fn from_raft(r: &InstallSnapshotRequest<TypeConfig>) -> Self {
        WireSnapshotRequest {
            vote: StoredVote::from_raft(&r.vote),
            meta: StoredSnapshotMeta::from_raft(&r.meta),
            offset: r.offset,
            data: r.data.clone(),
            done: r.done,
        }
    }

    pub(crate) fn into_raft(self) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: self.vote.to_raft(),
            meta: self.meta.to_raft(),
            offset: self.offset,
            data: self.data,
            done: self.done,
        }
    }
}

impl WireSnapshotResponse {
    pub(crate) fn from_raft(r: &InstallSnapshotResponse<NodeId>) -> Self {
        WireSnapshotResponse {
            vote: StoredVote::from_raft(&r.vote),
        }
    }

    pub(crate) fn into_raft(self) -> InstallSnapshotResponse<NodeId> {
        InstallSnapshotResponse {
            vote: self.vote.to_raft(),
        }
    }
}

impl RpcError {
    /// The wire form of openraft's install-snapshot API error.
    pub(crate) fn from_install_snapshot(e: &InstallSnapshotError) -> Self {
        match e {
            InstallSnapshotError::SnapshotMismatch(m) => RpcError::SnapshotMismatch {
                expect_id: m.expect.id.clone(),
                expect_offset: m.expect.offset,
                got_id: m.got.id.clone(),
                got_offset: m.got.offset,
            },
        }
    }

    /// openraft's install-snapshot API error, if this is one.
    pub(crate) fn to_install_snapshot(&self) -> Option<InstallSnapshotError> {
        match self {
            RpcError::SnapshotMismatch {
                expect_id,
                expect_offset,
                got_id,
                got_offset,
            } => Some(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: expect_id.clone(),
                    offset: *expect_offset,
                },
                got: SnapshotSegmentId {
                    id: got_id.clone(),
                    offset: *got_offset,
                },
            })),
            _ => None,
        }
    }
}
