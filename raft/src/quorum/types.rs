//! The openraft type configuration of the metadata quorum.

use std::io::Cursor;

use crate::records::MetadataBatch;

/// Raft node id of a controller (KRaft's `node.id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft types of keel's metadata quorum: a log entry carries one
    /// [`MetadataBatch`]; applying it answers nothing (the controller computed the answer
    /// before proposing); a node is known by its controller listener address.
    pub TypeConfig:
        D = MetadataBatch,
        R = (),
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type StorageIOError = openraft::StorageIOError<NodeId>;
