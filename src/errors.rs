//! The one table mapping internal errors to Kafka error codes.
//!
//! Every layer has its own error enum; handlers convert at the API boundary through
//! these functions only. Retriable conditions map to retriable codes, and nothing on
//! the produce path maps to UNKNOWN_SERVER_ERROR (clients treat it as fatal for
//! idempotent producers, KAFKA-14034).

use kafka_protocol::ResponseError;
use keel_raft::controller::ControllerError;
use keel_raft::quorum::QuorumError;
use keel_storage::batch::BatchError;
use keel_storage::{AppendError, LogError, ReadError};

use crate::group::GroupError;
use crate::replication::partition::Role;

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_CHARS: usize = 249;

/// Whether `name` is a legal topic name: 1–249 chars of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_CHARS
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A produce append failure: the code and a message for the client.
pub fn append_error(e: &AppendError) -> (ResponseError, String) {
    let code = match e {
        // Message sets of magic 0/1 are a format keel does not store (Kafka 4 drops it too).
        AppendError::Batch(BatchError::UnsupportedMagic(0 | 1)) => {
            ResponseError::UnsupportedForMessageFormat
        }
        // A magic no format has is damage, as Kafka reports it ("Invalid magic").
        AppendError::Batch(BatchError::UnsupportedMagic(_)) => ResponseError::CorruptMessage,
        // Well-framed batches with a valid CRC whose header fields no client writes:
        // deliberate, so not retriable (Kafka's LogValidator: INVALID_RECORD).
        AppendError::Batch(
            BatchError::InvalidRecordCount(_)
            | BatchError::InvalidOffsetDelta(_)
            | BatchError::InvalidCompression(_),
        ) => ResponseError::InvalidRecord,
        // Bad framing or CRC: possibly damaged in transit, retriable.
        AppendError::Batch(_) => ResponseError::CorruptMessage,
        AppendError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        AppendError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        AppendError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        AppendError::InvalidRecord { .. } => ResponseError::InvalidRecord,
        // Only followers append with assigned offsets; on the client path this is
        // a storage inconsistency, reported as the retriable storage error.
        AppendError::OffsetsNotMonotonic { .. } | AppendError::Io(_) => {
            ResponseError::KafkaStorageError
        }
    };
    (code, e.to_string())
}

/// A fetch read failure.
pub fn read_error(e: &ReadError) -> ResponseError {
    match e {
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        ReadError::Io(_) => ResponseError::KafkaStorageError,
    }
}

/// Any other log failure (ListOffsets, DeleteRecords).
pub fn log_error(e: &LogError) -> ResponseError {
    tracing::warn!("log operation failed: {e}");
    match e {
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Io(_)
        | LogError::CorruptBelowRecoveryPoint { .. }
        | LogError::CorruptCheckpoint { .. } => ResponseError::KafkaStorageError,
    }
}

/// A controller refusal, with its message.
pub fn controller_error(e: &ControllerError) -> (ResponseError, String) {
    let code = match e {
        ControllerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        ControllerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        ControllerError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        ControllerError::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        ControllerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        ControllerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        ControllerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        ControllerError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ControllerError::BrokerNotAvailable(_) => ResponseError::BrokerNotAvailable,
        ControllerError::StaleBrokerEpoch(_) => ResponseError::StaleBrokerEpoch,
        ControllerError::BrokerIdNotRegistered(_) => ResponseError::BrokerIdNotRegistered,
        ControllerError::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
        ControllerError::InvalidUpdateVersion(_) => ResponseError::InvalidUpdateVersion,
        ControllerError::NotLeaderOrFollower(_) => ResponseError::NotLeaderOrFollower,
        ControllerError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
        ControllerError::PolicyViolation(_) => ResponseError::PolicyViolation,
        ControllerError::ProducerIdsExhausted(_) => ResponseError::UnknownServerError,
        ControllerError::Internal(_) => ResponseError::UnknownServerError,
        ControllerError::ElectionNotNeeded => ResponseError::ElectionNotNeeded,
        ControllerError::PreferredLeaderNotAvailable => ResponseError::PreferredLeaderNotAvailable,
        ControllerError::EligibleLeadersNotAvailable => ResponseError::EligibleLeadersNotAvailable,
        ControllerError::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress,
    };
    (code, e.to_string())
}

/// The quorum could not run a controller request.
pub fn quorum_error(e: &QuorumError) -> (ResponseError, String) {
    let code = match e {
        QuorumError::NotController { .. } => ResponseError::NotController,
        QuorumError::Timeout => ResponseError::RequestTimedOut,
        // No controller can commit right now: retriable for the client.
        QuorumError::ShuttingDown
        | QuorumError::Storage(_)
        | QuorumError::Corrupt(_)
        | QuorumError::Unreachable { .. } => ResponseError::NotController,
        QuorumError::Membership(_) => ResponseError::InvalidRequest,
        QuorumError::ClusterIdMismatch(_) => ResponseError::InconsistentClusterId,
        QuorumError::DirectoryLocked { .. } | QuorumError::InvalidConfig(_) => {
            ResponseError::UnknownServerError
        }
    };
    (code, e.to_string())
}

/// A group coordinator refusal. Write failures map as Kafka maps them for offset
/// commits: not enough replicas → COORDINATOR_NOT_AVAILABLE, lost leadership →
/// NOT_COORDINATOR (both make the client look the coordinator up again and retry).
pub fn group_error(e: &GroupError) -> ResponseError {
    match e {
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::LoadInProgress => ResponseError::CoordinatorLoadInProgress,
        GroupError::CoordinatorNotAvailable(_) => ResponseError::CoordinatorNotAvailable,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::UnknownMemberId(_) => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration { .. } => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InconsistentGroupProtocol(_) => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        GroupError::GroupMaxSizeReached(_) => ResponseError::GroupMaxSizeReached,
        GroupError::FencedInstanceId { .. } => ResponseError::FencedInstanceId,
        GroupError::GroupIdNotFound(_) => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
        GroupError::GroupSubscribedToTopic(_) => ResponseError::GroupSubscribedToTopic,
        GroupError::OffsetMetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
        GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        GroupError::Timeout => ResponseError::RequestTimedOut,
        GroupError::CommitTooLarge(_) => ResponseError::InvalidCommitOffsetSize,
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
    }
}

/// The code of an optional group error (0 for none).
pub fn group_error_code(e: Option<&GroupError>) -> i16 {
    e.map_or(0, |e| group_error(e).code())
}

/// Checks a request for a partition that must be read or written at its leader, in
/// Kafka's order (`Partition.getLocalLog`): the client's `current_leader_epoch` against
/// the epoch this replica knows first, then whether it leads. So a client behind the
/// times gets FENCED_LEADER_EPOCH and one ahead of this broker UNKNOWN_LEADER_EPOCH
/// (retried without a metadata refresh), even where this broker does not lead.
pub fn check_leadership(requested_epoch: i32, role: Role) -> Option<ResponseError> {
    check_leader_epoch(requested_epoch, role.epoch()).or_else(|| match role {
        Role::Leader { .. } => None,
        Role::Follower { .. } => Some(ResponseError::NotLeaderOrFollower),
    })
}

/// Checks a client's `current_leader_epoch` (-1: no check) against the partition's.
pub fn check_leader_epoch(requested: i32, current: i32) -> Option<ResponseError> {
    if requested < 0 || requested == current {
        None
    } else if requested < current {
        Some(ResponseError::FencedLeaderEpoch)
    } else {
        Some(ResponseError::UnknownLeaderEpoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules_match_kafka() {
        assert!(valid_topic_name("orders.v1_EU-2"));
        assert!(valid_topic_name(&"a".repeat(249)));
        assert!(!valid_topic_name(&"a".repeat(250)));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("has space"));
        assert!(!valid_topic_name("slash/y"));
        assert!(!valid_topic_name("ünicode"));
    }

    #[test]
    fn stale_and_future_leader_epochs_get_distinct_errors() {
        assert_eq!(check_leader_epoch(-1, 5), None);
        assert_eq!(check_leader_epoch(5, 5), None);
        assert_eq!(
            check_leader_epoch(4, 5),
            Some(ResponseError::FencedLeaderEpoch)
        );
        assert_eq!(
            check_leader_epoch(6, 5),
            Some(ResponseError::UnknownLeaderEpoch)
        );
    }
}
