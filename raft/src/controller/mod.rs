//! The controller: turns a request and the current image into records and an answer.
//!
//! This module owns the metadata rules (topic naming, partition counts, replica placement,
//! config changes, broker registration, liveness and fencing, ISR changes, producer-id
//! blocks). It is pure: [`handle`] reads a [`MetadataImage`], a [`ControllerConfig`], the
//! active controller's in-memory [`BrokerSessions`] and a [`ControllerContext`] (the only
//! source of time, fresh uuids and randomness) and returns records plus the response; it
//! never does I/O, reads a clock or mutates the image. [`fence_expired_brokers`] is the
//! periodic half of broker liveness. The quorum module decides when records are proposed
//! and when the caller is answered.
//!
//! The error texts follow Apache Kafka's where Kafka has one, because tools print them.

mod brokers;
mod configs;
mod liveness;
mod partitions;
mod placement;
mod reassignments;
mod sessions;
mod topics;

pub use liveness::fence_expired_brokers;
pub use reassignments::preferred_leader_elections;
pub use sessions::BrokerSession;
pub use sessions::BrokerSessions;
pub use topics::validate_topic_name;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::image::MetadataImage;
use crate::image::PartitionImage;
use crate::records::BrokerEndpoint;
use crate::records::ConfigResource;
use crate::records::MetadataRecord;

/// Partitions of a new topic that asks for the default (-1).
pub const DEFAULT_NUM_PARTITIONS: i32 = 1;
/// Replication factor of a new topic that asks for the default (-1).
pub const DEFAULT_REPLICATION_FACTOR: i16 = 1;
/// Producer ids handed to a broker per AllocateProducerIds (Kafka's block size).
pub const DEFAULT_PRODUCER_ID_BLOCK_SIZE: i64 = 1000;
/// Most partitions one CreateTopics or CreatePartitions request may create (Kafka's
/// `MAX_PARTITIONS_PER_BATCH`).
pub const DEFAULT_MAX_PARTITIONS_PER_REQUEST: i32 = 10_000;
/// Longest topic name Kafka accepts, in characters.
pub const MAX_TOPIC_NAME_CHARS: usize = 249;
/// How many fresh uuids the controller draws before giving up on finding an unused topic id.
pub const MAX_TOPIC_ID_ATTEMPTS: usize = 16;
/// A broker that has not heartbeaten for this long is fenced (Kafka's
/// `broker.session.timeout.ms`).
pub const DEFAULT_BROKER_SESSION_TIMEOUT_MS: u64 = 9_000;
/// How often the active controller moves leaderships back to preferred replicas (Kafka's
/// `leader.imbalance.check.interval.seconds`, 300 s).
pub const DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS: u64 = 300_000;

/// The controller's tunables; `Default` gives Kafka's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    pub default_num_partitions: i32,
    pub default_replication_factor: i16,
    pub producer_id_block_size: i64,
    /// Most partitions one CreateTopics/CreatePartitions request may create; more is a
    /// POLICY_VIOLATION for every topic of the request.
    pub max_partitions_per_request: i32,
    /// Whether brokers run without heartbeats: a broker is unfenced as soon as it registers
    /// and is never fenced for being silent. True for the zero-config single node; a
    /// multi-node cluster sets it to false, so a broker registers fenced, is unfenced by
    /// its first heartbeat that shows it caught up with the log, and is fenced once it is
    /// silent for longer than `broker_session_timeout_ms`.
    pub register_brokers_unfenced: bool,
    /// How long a broker may go without a heartbeat before it is fenced.
    pub broker_session_timeout_ms: u64,
    /// Whether the active controller periodically gives leaderships back to preferred
    /// replicas (Kafka's `auto.leader.rebalance.enable`).
    pub auto_leader_rebalance_enable: bool,
    /// How often it does so.
    pub leader_imbalance_check_interval_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_num_partitions: DEFAULT_NUM_PARTITIONS,
            default_replication_factor: DEFAULT_REPLICATION_FACTOR,
            producer_id_block_size: DEFAULT_PRODUCER_ID_BLOCK_SIZE,
            max_partitions_per_request: DEFAULT_MAX_PARTITIONS_PER_REQUEST,
            register_brokers_unfenced: true,
            broker_session_timeout_ms: DEFAULT_BROKER_SESSION_TIMEOUT_MS,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS,
        }
    }
}

/// Everything non-deterministic the controller may use, supplied by its caller so that the
/// controller itself stays a pure function (tests pass fixed values).
pub struct ControllerContext<'a> {
    /// The controller's clock in milliseconds. Only differences matter (broker session
    /// ages); the quorum shell passes a monotonic clock.
    pub now_ms: i64,
    /// A fresh random uuid per call.
    pub new_uuid: &'a mut dyn FnMut() -> Uuid,
    /// A uniform random number in `[0, n)` for `n > 0` (used to pick a placement start).
    pub random: &'a mut dyn FnMut(u64) -> u64,
}

impl ControllerContext<'_> {
    /// A uniform index in `[0, n)`, robust to a `random` that returns out-of-range values.
    fn random_index(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let r = (self.random)(n as u64) % (n as u64);
        usize::try_from(r).unwrap_or(0)
    }
}

/// A request to the controller.
///
/// Requests travel between nodes (a node that is not the active controller forwards them),
/// so they are plain serde data; their bytes come only from [`crate::codec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// A broker starts: it is (re-)registered and gets a broker epoch.
    RegisterBroker {
        broker_id: i32,
        incarnation_id: Uuid,
        endpoints: Vec<BrokerEndpoint>,
        rack: Option<String>,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        topics: Vec<TopicRef>,
    },
    CreatePartitions {
        topics: Vec<NewPartitions>,
        validate_only: bool,
    },
    IncrementalAlterConfigs {
        resources: Vec<AlterConfigsResource>,
        validate_only: bool,
    },
    /// Legacy AlterConfigs: each resource's override set is replaced by the given one.
    AlterConfigs {
        resources: Vec<(ConfigResource, Vec<(String, String)>)>,
        validate_only: bool,
    },
    AllocateProducerIds {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// A broker's periodic heartbeat (Kafka's BrokerHeartbeat). It keeps the broker's
    /// session alive, unfences the broker once `current_metadata_offset` (the log index of
    /// the broker's applied image) has reached its registration, and carries the broker's
    /// wish to be fenced or to shut down (controlled shutdown).
    BrokerHeartbeat {
        broker_id: i32,
        broker_epoch: i64,
        current_metadata_offset: u64,
        want_fence: bool,
        want_shutdown: bool,
    },
    /// An operator removes a broker from the cluster (Kafka's UnregisterBroker): it leaves
    /// every ISR it can leave and gives up its leaderships, then its registration goes.
    UnregisterBroker {
        broker_id: i32,
    },
    /// A partition leader changes the ISR (Kafka's AlterPartition): a compare-and-set on
    /// the partition's leader epoch and partition epoch.
    AlterPartition {
        broker_id: i32,
        broker_epoch: i64,
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    },
    /// Starts or replaces (`Some(target)`) or cancels (`None`) the reassignment of one
    /// partition to the replica list `target` (Kafka's AlterPartitionReassignments).
    AlterPartitionReassignments {
        topic_id: Uuid,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// Elects the preferred leader of one partition, or with `unclean` any live replica of
    /// a partition without a leader (Kafka's ElectLeaders).
    ElectLeaders {
        topic_id: Uuid,
        partition: i32,
        unclean: bool,
    },
}

impl ControllerRequest {
    /// The request's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ControllerRequest::RegisterBroker { .. } => "RegisterBroker",
            ControllerRequest::CreateTopics { .. } => "CreateTopics",
            ControllerRequest::DeleteTopics { .. } => "DeleteTopics",
            ControllerRequest::CreatePartitions { .. } => "CreatePartitions",
            ControllerRequest::IncrementalAlterConfigs { .. } => "IncrementalAlterConfigs",
            ControllerRequest::AlterConfigs { .. } => "AlterConfigs",
            ControllerRequest::AllocateProducerIds { .. } => "AllocateProducerIds",
            ControllerRequest::BrokerHeartbeat { .. } => "BrokerHeartbeat",
            ControllerRequest::UnregisterBroker { .. } => "UnregisterBroker",
            ControllerRequest::AlterPartition { .. } => "AlterPartition",
            ControllerRequest::AlterPartitionReassignments { .. } => "AlterPartitionReassignments",
            ControllerRequest::ElectLeaders { .. } => "ElectLeaders",
        }
    }
}

/// One topic of a CreateTopics request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1 = the default.
    pub num_partitions: i32,
    /// -1 = the default.
    pub replication_factor: i16,
    /// Manual placement: partition -> replicas (first = preferred leader). Empty = place
    /// automatically.
    pub assignments: BTreeMap<i32, Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// A topic named in a DeleteTopics request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

/// One topic of a CreatePartitions request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPartitions {
    pub name: String,
    /// The new total partition count.
    pub count: i32,
    /// Replicas of each new partition, in partition order; `None` = place automatically.
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// The operations on one resource of an IncrementalAlterConfigs request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterConfigsResource {
    pub resource: ConfigResource,
    pub ops: Vec<AlterConfigOp>,
}

/// One config operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterConfigOp {
    pub name: String,
    pub op: AlterOp,
    /// Required for Set, Append and Subtract; ignored for Delete.
    pub value: Option<String>,
}

/// Kind of an incremental config operation (Kafka's `AlterConfigOp.OpType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlterOp {
    Set,
    Delete,
    /// Add items to a list config (those not already present).
    Append,
    /// Remove items from a list config.
    Subtract,
}

/// The controller's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerResponse {
    RegisterBroker(Result<i64, ControllerError>),
    CreateTopics(Vec<CreateTopicResult>),
    DeleteTopics(Vec<DeleteTopicResult>),
    CreatePartitions(Vec<(String, Result<(), ControllerError>)>),
    AlterConfigs(Vec<(ConfigResource, Result<(), ControllerError>)>),
    AllocateProducerIds(Result<ProducerIdBlock, ControllerError>),
    BrokerHeartbeat(Result<HeartbeatReply, ControllerError>),
    UnregisterBroker(Result<(), ControllerError>),
    /// The partition's state after the change (or as it is, if nothing changed).
    AlterPartition(Result<PartitionImage, ControllerError>),
    AlterPartitionReassignments(Result<(), ControllerError>),
    /// The partition's state after the election.
    ElectLeaders(Result<PartitionImage, ControllerError>),
}

/// The answer to a broker heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The broker's metadata offset has reached its registration.
    pub is_caught_up: bool,
    /// The broker is fenced: it may not lead partitions or join ISRs.
    pub is_fenced: bool,
    /// Controlled shutdown is done: the broker leads nothing that could move elsewhere.
    pub should_shut_down: bool,
}

/// The outcome for one topic of a CreateTopics request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicResult {
    pub name: String,
    pub result: Result<CreatedTopic, ControllerError>,
}

/// A topic that was (or, with validate_only, would be) created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTopic {
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// The topic's config overrides (what the request set); defaults are not included.
    pub configs: BTreeMap<String, String>,
}

/// The outcome for one topic of a DeleteTopics request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicResult {
    /// The topic's name, if the request named it or the topic exists.
    pub name: Option<String>,
    /// The topic's id, if the request gave it or the topic exists.
    pub topic_id: Option<Uuid>,
    pub result: Result<(), ControllerError>,
}

/// A block of producer ids: `[first_producer_id, first_producer_id + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlock {
    pub first_producer_id: i64,
    pub size: i64,
}

/// Why the controller refused (part of) a request. Each variant maps to the Kafka error
/// code of the same name; `Display` is the message for the client (as Kafka's
/// `error_message`), naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControllerError {
    #[error("{0}")]
    TopicAlreadyExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    UnknownTopicOrPartition(String),
    #[error("Topic id {0} does not exist.")]
    UnknownTopicId(Uuid),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    BrokerNotAvailable(String),
    #[error("{0}")]
    StaleBrokerEpoch(String),
    /// UnregisterBroker for a broker id that is not registered.
    #[error("{0}")]
    BrokerIdNotRegistered(String),
    /// AlterPartition from a leader whose leader epoch is not the partition's.
    #[error("{0}")]
    FencedLeaderEpoch(String),
    /// AlterPartition whose partition epoch is not the partition's (a concurrent change won).
    #[error("{0}")]
    InvalidUpdateVersion(String),
    /// AlterPartition from a broker that is not the partition's leader.
    #[error("{0}")]
    NotLeaderOrFollower(String),
    /// AlterPartition adding a fenced, unregistered or shutting-down broker to the ISR.
    #[error("{0}")]
    IneligibleReplica(String),
    #[error("{0}")]
    PolicyViolation(String),
    /// The producer id space is used up (Kafka answers UNKNOWN_SERVER_ERROR).
    #[error("{0}")]
    ProducerIdsExhausted(String),
    /// The controller could not do something it should always be able to do (Kafka's
    /// UNKNOWN_SERVER_ERROR), e.g. the uuid source kept returning ids in use.
    #[error("{0}")]
    Internal(String),
    /// ElectLeaders where the wanted leader already leads (or, unclean, a leader exists).
    #[error("Leader election not needed for topic partition.")]
    ElectionNotNeeded,
    /// Preferred ElectLeaders where the preferred replica is not an eligible ISR member.
    #[error("The preferred leader was not available.")]
    PreferredLeaderNotAvailable,
    /// Unclean ElectLeaders where no replica is eligible to lead.
    #[error("Eligible topic partition leaders are not available.")]
    EligibleLeadersNotAvailable,
    /// A reassignment cancel for a partition that is not being reassigned.
    #[error("No partition reassignment is in progress.")]
    NoReassignmentInProgress,
}

/// Handles one request against `image`: returns the records that carry it out (to be
/// written to the log as ONE entry, in order) and the answer for the caller.
///
/// The image is not changed; records are the only output that changes state. `sessions`
/// (the active controller's memory of heartbeats) is updated by registrations,
/// heartbeats and unregistrations. A request that fails entirely, or is `validate_only`,
/// returns no records. Never panics.
pub fn handle(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &mut BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    req: ControllerRequest,
) -> (Vec<MetadataRecord>, ControllerResponse) {
    match req {
        ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id,
            endpoints,
            rack,
        } => {
            let (records, result) = brokers::register(
                image,
                config,
                sessions,
                ctx.now_ms,
                brokers::Registration {
                    broker_id,
                    incarnation_id,
                    endpoints,
                    rack,
                },
            );
            (records, ControllerResponse::RegisterBroker(result))
        }
        ControllerRequest::CreateTopics {
            topics,
            validate_only,
        } => {
            let (records, results) = topics::create_topics(image, config, sessions, ctx, topics);
            (
                if validate_only { Vec::new() } else { records },
                ControllerResponse::CreateTopics(results),
            )
        }
        ControllerRequest::DeleteTopics { topics } => {
            let (records, results) = topics::delete_topics(image, topics);
            (records, ControllerResponse::DeleteTopics(results))
        }
        ControllerRequest::CreatePartitions {
            topics,
            validate_only,
        } => {
            let (records, results) =
                topics::create_partitions(image, config, sessions, ctx, topics);
            (
                if validate_only { Vec::new() } else { records },
                ControllerResponse::CreatePartitions(results),
            )
        }
        ControllerRequest::IncrementalAlterConfigs {
            resources,
            validate_only,
        } => {
            let (records, results) = configs::incremental_alter(image, resources);
            (
                if validate_only { Vec::new() } else { records },
                ControllerResponse::AlterConfigs(results),
            )
        }
        ControllerRequest::AlterConfigs {
            resources,
            validate_only,
        } => {
            let (records, results) = configs::legacy_alter(image, resources);
            (
                if validate_only { Vec::new() } else { records },
                ControllerResponse::AlterConfigs(results),
            )
        }
        ControllerRequest::AllocateProducerIds {
            broker_id,
            broker_epoch,
        } => {
            let (records, result) =
                brokers::allocate_producer_ids(image, config, broker_id, broker_epoch);
            (records, ControllerResponse::AllocateProducerIds(result))
        }
        ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch,
            current_metadata_offset,
            want_fence,
            want_shutdown,
        } => {
            let (records, result) = liveness::heartbeat(
                image,
                sessions,
                ctx.now_ms,
                liveness::Heartbeat {
                    broker_id,
                    broker_epoch,
                    current_metadata_offset,
                    want_fence,
                    want_shutdown,
                },
            );
            (records, ControllerResponse::BrokerHeartbeat(result))
        }
        ControllerRequest::UnregisterBroker { broker_id } => {
            let (records, result) = liveness::unregister(image, sessions, broker_id);
            (records, ControllerResponse::UnregisterBroker(result))
        }
        ControllerRequest::AlterPartition {
            broker_id,
            broker_epoch,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            new_isr,
        } => {
            let (records, result) = partitions::alter_partition(
                image,
                sessions,
                partitions::AlterPartition {
                    broker_id,
                    broker_epoch,
                    topic_id,
                    partition,
                    leader_epoch,
                    partition_epoch,
                    new_isr,
                },
            );
            (records, ControllerResponse::AlterPartition(result))
        }
        ControllerRequest::AlterPartitionReassignments {
            topic_id,
            partition,
            target,
        } => {
            let (records, result) =
                reassignments::alter_reassignment(image, sessions, topic_id, partition, target);
            (
                records,
                ControllerResponse::AlterPartitionReassignments(result),
            )
        }
        ControllerRequest::ElectLeaders {
            topic_id,
            partition,
            unclean,
        } => {
            let (records, result) =
                reassignments::elect_leaders(image, sessions, topic_id, partition, unclean);
            (records, ControllerResponse::ElectLeaders(result))
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod liveness_tests;

#[cfg(test)]
mod reassignment_tests;

#[cfg(test)]
mod simulation;
