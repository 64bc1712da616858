//! keel's own on-disk and on-the-wire forms of openraft's types.
//!
//! openraft's serde layout may change between its releases; the forms here are keel's and
//! only change together with a format version in [`crate::codec`]. This module converts
//! between them and openraft's types. The conversion from disk never panics: a value that
//! does not fit is a [`StoredError`].

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::BasicNode;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::LeaderId;
use openraft::LogId;
use openraft::Membership;
use openraft::SnapshotMeta;
use openraft::StoredMembership as RaftStoredMembership;
use openraft::Vote;
use serde::Deserialize;
use serde::Serialize;

use super::types::Entry;
use super::types::NodeId;
use crate::image::MetadataImage;
use crate::records::MetadataBatch;

/// A Raft log id: the leader (term and node) that proposed the entry, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredLogId {
    pub term: u64,
    pub node_id: NodeId,
    pub index: u64,
}

impl StoredLogId {
    pub(crate) fn from_raft(id: &LogId<NodeId>) -> Self {
        StoredLogId {
            term: id.leader_id.term,
            node_id: id.leader_id.node_id,
            index: id.index,
        }
    }

    pub(crate) fn to_raft(self) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(self.term, self.node_id), self.index)
    }
}

/// The vote: the term, the candidate voted for, and whether that leader is established
/// (granted by a quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredVote {
    pub term: u64,
    pub node_id: NodeId,
    pub committed: bool,
}

impl StoredVote {
    pub(crate) fn from_raft(v: &Vote<NodeId>) -> Self {
        StoredVote {
            term: v.leader_id.term,
            node_id: v.leader_id.node_id,
            committed: v.committed,
        }
    }

    pub(crate) fn to_raft(self) -> Vote<NodeId> {
        Vote {
            leader_id: LeaderId::new(self.term, self.node_id),
            committed: self.committed,
        }
    }
}

/// A membership config (joint configs of voter sets, plus every node's address) and the id
/// of the log entry that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMembership {
    pub log_id: Option<StoredLogId>,
    pub configs: Vec<BTreeSet<NodeId>>,
    /// node id -> controller address
    pub nodes: BTreeMap<NodeId, String>,
}

impl StoredMembership {
    pub(crate) fn from_raft(m: &RaftStoredMembership<NodeId, BasicNode>) -> Self {
        let (configs, nodes) = membership_parts(m.membership());
        StoredMembership {
            log_id: m.log_id().as_ref().map(StoredLogId::from_raft),
            configs,
            nodes,
        }
    }

    pub(crate) fn to_raft(&self) -> RaftStoredMembership<NodeId, BasicNode> {
        RaftStoredMembership::new(
            self.log_id.map(StoredLogId::to_raft),
            membership_from_parts(&self.configs, &self.nodes),
        )
    }
}

fn membership_parts(
    m: &Membership<NodeId, BasicNode>,
) -> (Vec<BTreeSet<NodeId>>, BTreeMap<NodeId, String>) {
    let configs = m.get_joint_config().clone();
    let nodes = m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    (configs, nodes)
}

fn membership_from_parts(
    configs: &[BTreeSet<NodeId>],
    nodes: &BTreeMap<NodeId, String>,
) -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> = nodes
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    Membership::new(configs.to_vec(), nodes)
}

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StoredPayload {
    /// A new leader's first entry.
    Blank,
    /// Metadata records of one controller decision.
    Records(MetadataBatch),
    /// A membership change.
    Membership {
        configs: Vec<BTreeSet<NodeId>>,
        nodes: BTreeMap<NodeId, String>,
    },
}

/// One Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub log_id: StoredLogId,
    pub payload: StoredPayload,
}

impl StoredEntry {
    pub(crate) fn from_raft(e: &Entry) -> Self {
        let payload = match &e.payload {
            EntryPayload::Blank => StoredPayload::Blank,
            EntryPayload::Normal(batch) => StoredPayload::Records(batch.clone()),
            EntryPayload::Membership(m) => {
                let (configs, nodes) = membership_parts(m);
                StoredPayload::Membership { configs, nodes }
            }
        };
        StoredEntry {
            log_id: StoredLogId::from_raft(&e.log_id),
            payload,
        }
    }

    pub(crate) fn into_raft(self) -> Entry {
        let payload = match self.payload {
            StoredPayload::Blank => EntryPayload::Blank,
            StoredPayload::Records(batch) => EntryPayload::Normal(batch),
            StoredPayload::Membership { configs, nodes } => {
                EntryPayload::Membership(membership_from_parts(&configs, &nodes))
            }
        };
        Entry {
            log_id: self.log_id.to_raft(),
            payload,
        }
    }
}

/// The description of a snapshot (openraft's `SnapshotMeta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSnapshotMeta {
    pub last_log_id: Option<StoredLogId>,
    pub membership: StoredMembership,
    pub snapshot_id: String,
}

impl StoredSnapshotMeta {
    pub(crate) fn from_raft(m: &SnapshotMeta<NodeId, BasicNode>) -> Self {
        StoredSnapshotMeta {
            last_log_id: m.last_log_id.as_ref().map(StoredLogId::from_raft),
            membership: StoredMembership::from_raft(&m.last_membership),
            snapshot_id: m.snapshot_id.clone(),
        }
    }

    pub(crate) fn to_raft(&self) -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: self.last_log_id.map(StoredLogId::to_raft),
            last_membership: self.membership.to_raft(),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
}

/// The data of a snapshot: the whole state machine as of `last_applied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload {
    pub last_applied: Option<StoredLogId>,
    pub membership: StoredMembership,
    pub image: MetadataImage,
}
