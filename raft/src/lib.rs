//! keel-raft: keel's metadata quorum (KRaft style).
//!
//! Cluster metadata is a log of [`MetadataRecord`]s kept by a Raft quorum of controllers.
//! The crate is layered, pure core first:
//!
//! - [`records`]: the record enum, the only way metadata changes;
//! - [`image`]: [`MetadataImage`], built only by replaying records;
//! - [`topic_config`]: the catalog of Kafka topic configs and their validation;
//! - [`controller`]: pure `(image, request) -> (records, response)`;
//! - [`codec`]: the single place values become versioned bytes (bincode 2);
//! - [`quorum`]: the async shell: openraft, RocksDB, the controller RPC between nodes
//!   (voters replicate the log; observers follow it as learners), the active-controller
//!   task.
//!
//! openraft and RocksDB types never appear in the public API; the broker talks to
//! [`MetadataQuorum`] and reads [`MetadataImage`]s. This crate knows nothing of segment
//! files or the Kafka wire protocol.

pub mod codec;
pub mod controller;
pub mod image;
pub mod quorum;
pub mod records;
pub mod topic_config;

pub use controller::handle;
pub use controller::preferred_leader_elections;
pub use controller::AlterConfigOp;
pub use controller::AlterConfigsResource;
pub use controller::AlterOp;
pub use controller::BrokerSessions;
pub use controller::ControllerConfig;
pub use controller::ControllerContext;
pub use controller::ControllerError;
pub use controller::ControllerRequest;
pub use controller::ControllerResponse;
pub use controller::CreateTopicResult;
pub use controller::CreatedTopic;
pub use controller::DeleteTopicResult;
pub use controller::HeartbeatReply;
pub use controller::NewPartitions;
pub use controller::NewTopic;
pub use controller::ProducerIdBlock;
pub use controller::TopicRef;
pub use image::BrokerImage;
pub use image::MetadataImage;
pub use image::PartitionImage;
pub use image::Reassignment;
pub use image::TopicImage;
pub use quorum::MemberRole;
pub use quorum::MemberStatus;
pub use quorum::MetadataQuorum;
pub use quorum::QuorumConfig;
pub use quorum::QuorumError;
pub use quorum::QuorumRole;
pub use quorum::QuorumStatus;
pub use records::BrokerEndpoint;
pub use records::ConfigResource;
pub use records::MetadataBatch;
pub use records::MetadataRecord;
pub use topic_config::validate_topic_config;
pub use topic_config::ConfigDef;
pub use topic_config::ConfigKind;
pub use topic_config::TOPIC_CONFIGS;
