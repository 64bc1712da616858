//! Metadata records: the only way cluster metadata changes.
//!
//! This module owns the [`MetadataRecord`] enum and the types it carries. A record is a
//! fact the active controller decided ("broker 3 registered with epoch 17"); every node
//! rebuilds [`crate::MetadataImage`] by replaying them in log order. Records are plain
//! data with serde derives; their bytes on disk and on the wire are produced only by
//! [`crate::codec`], which prefixes a format version. This module must not know about
//! Raft, RocksDB or the controller's rules.

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// One change to the cluster metadata.
///
/// Records are applied by [`crate::MetadataImage::apply`]; a record that does not fit the
/// image it is applied to (unknown topic, stale broker epoch, ...) is ignored there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker (re-)registered; replaces any earlier registration of `broker_id`.
    RegisterBroker {
        broker_id: i32,
        incarnation_id: Uuid,
        broker_epoch: i64,
        endpoints: Vec<BrokerEndpoint>,
        rack: Option<String>,
        fenced: bool,
    },
    /// A broker left the cluster; applies only if `broker_epoch` is the current one.
    UnregisterBroker { broker_id: i32, broker_epoch: i64 },
    /// A broker lost its session; applies only if `broker_epoch` is the current one.
    FenceBroker { broker_id: i32, broker_epoch: i64 },
    /// A broker caught up and may lead partitions; applies only if `broker_epoch` matches.
    UnfenceBroker { broker_id: i32, broker_epoch: i64 },
    /// A topic was created (its partitions follow as [`MetadataRecord::Partition`]).
    Topic { name: String, topic_id: Uuid },
    /// A topic was deleted, with its partitions and its config overrides.
    RemoveTopic { topic_id: Uuid },
    /// The full state of one partition (creation, or replacement).
    Partition {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
    },
    /// A change to one partition. Applying it bumps `partition_epoch`, and bumps
    /// `leader_epoch` when `leader` is present and differs from the current leader.
    PartitionChange {
        topic_id: Uuid,
        partition: i32,
        leader: Option<i32>,
        isr: Option<Vec<i32>>,
        replicas: Option<Vec<i32>>,
    },
    /// Sets (`Some`) or deletes (`None`) one config override of a resource.
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    /// A block of producer ids was handed to a broker; the next block starts at
    /// `next_producer_id`.
    ProducerIds {
        broker_id: i32,
        broker_epoch: i64,
        next_producer_id: i64,
    },
    /// A feature's finalized level; level 0 removes the feature.
    FeatureLevel { name: String, level: i16 },
    /// The cluster's id, written once by the first active controller of a new cluster
    /// before any other record. Later records with another id are ignored on replay.
    ClusterId { cluster_id: String },
    /// Starts or replaces (`Some(target)`) or ends (`None`) the reassignment of one
    /// partition to the replica list `target` (KIP-455).
    ///
    /// Applied *before* the [`MetadataRecord::PartitionChange`] that widens the replica
    /// list: the replicas the reassignment starts from are the partition's replicas at
    /// that point, less the adding replicas of a reassignment it replaces. Ignored for an
    /// unknown partition or an empty target.
    ///
    /// New variants go at the END of this enum: bincode encodes the variant index, so the
    /// order is part of the log format.
    PartitionReassignment {
        topic_id: Uuid,
        partition: i32,
        target: Option<Vec<i32>>,
    },
}

/// One listener a broker serves clients on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BrokerEndpoint {
    pub listener: String,
    pub host: String,
    pub port: u16,
}

/// What a config override belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigResource {
    /// A topic, by name.
    Topic(String),
    /// One broker (`Some(id)`), or the cluster-wide broker default (`None`).
    Broker(Option<i32>),
}

impl std::fmt::Display for ConfigResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigResource::Topic(name) => write!(f, "topic '{name}'"),
            ConfigResource::Broker(Some(id)) => write!(f, "broker {id}"),
            ConfigResource::Broker(None) => write!(f, "cluster-wide broker default"),
        }
    }
}

/// The payload of one Raft log entry: the records of one controller decision, applied
/// together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatch {
    pub records: Vec<MetadataRecord>,
}

impl MetadataBatch {
    /// Wraps the records of one controller decision.
    pub fn new(records: Vec<MetadataRecord>) -> Self {
        MetadataBatch { records }
    }
}
