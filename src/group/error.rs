//! Why a group request was refused. Converted to Kafka error codes only at the API
//! boundary, by `crate::errors::group_error`.

/// A group coordinator refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group id is empty.
    #[error("the group id is empty")]
    InvalidGroupId,
    /// This broker does not lead the group's offsets partition.
    #[error("this broker is not the coordinator of the group")]
    NotCoordinator,
    /// This broker is loading the group's offsets partition.
    #[error("the coordinator is still loading the group's offsets partition")]
    LoadInProgress,
    /// The offsets topic or its partition's leader is not there yet, or a write to it
    /// could not reach enough replicas.
    #[error("the coordinator is not available: {0}")]
    CoordinatorNotAvailable(String),
    /// A first JoinGroup (v4+): rejoin with the member id given in the answer.
    #[error("member id required: rejoin with the given member id")]
    MemberIdRequired,
    /// The member id is not (or no longer) a member of the group.
    #[error("unknown member id {0}")]
    UnknownMemberId(String),
    /// A member of an older (or newer) generation.
    #[error("generation {got} is not the group's generation {current}")]
    IllegalGeneration { got: i32, current: i32 },
    /// The group is rebalancing: the member must rejoin.
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    /// Protocol type or protocols do not match the group's.
    #[error("inconsistent group protocol: {0}")]
    InconsistentGroupProtocol(String),
    /// Session timeout outside `group.min.session.timeout.ms ..= group.max.session.timeout.ms`.
    #[error("session timeout {got} ms is outside {min}..={max} ms")]
    InvalidSessionTimeout { got: i32, min: i32, max: i32 },
    /// The group has `group.max.size` members.
    #[error("the group has reached its maximum size of {0} members")]
    GroupMaxSizeReached(usize),
    /// A static member id that another member with the same instance id replaced.
    #[error("instance id {instance_id} is now member {current}, not {got}")]
    FencedInstanceId {
        instance_id: String,
        got: String,
        current: String,
    },
    /// DeleteGroups or OffsetDelete on a group that does not exist.
    #[error("group {0} does not exist")]
    GroupIdNotFound(String),
    /// DeleteGroups on a group with members.
    #[error("group {0} still has members")]
    NonEmptyGroup(String),
    /// OffsetDelete of a topic the group's members subscribe to.
    #[error("the group is subscribed to topic {0}")]
    GroupSubscribedToTopic(String),
    /// Commit metadata longer than `offset.metadata.max.bytes`.
    #[error("commit metadata of {got} bytes is longer than {max}")]
    OffsetMetadataTooLarge { got: usize, max: usize },
    /// A commit to a partition that does not exist.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// A write to the offsets partition was not replicated in time.
    #[error("the write to the offsets topic timed out")]
    Timeout,
    /// The group's record does not fit a batch of the offsets topic.
    #[error("the commit is too large for the offsets topic: {0}")]
    CommitTooLarge(String),
    /// An invalid request field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}
