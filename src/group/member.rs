//! A member of a classic group, and the inputs and outputs of the group state machine.

use bytes::Bytes;

use super::error::GroupError;

/// A group member as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// The protocols the member supports, in its order of preference, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    /// A JoinGroup of this member waits for the join phase to end.
    pub awaiting_join: bool,
    /// A SyncGroup of this member waits for the leader's assignment to be stored.
    pub awaiting_sync: bool,
    /// Joined in the current join phase, not yet answered: expires on the
    /// new-member join timeout rather than the session timeout.
    pub is_new: bool,
    /// When the member is removed unless it heartbeats (or commits, or rejoins).
    pub heartbeat_deadline_ms: i64,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata_for(&self, protocol: &str) -> Option<&Bytes> {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m)
    }

    /// Whether `protocols` are exactly the member's (names, metadata and order).
    pub fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Whether the session timeout may remove the member now.
    pub fn expired(&self, now_ms: i64) -> bool {
        let waiting = (self.awaiting_join && !self.is_new) || self.awaiting_sync;
        !waiting && self.heartbeat_deadline_ms <= now_ms
    }
}

/// A JoinGroup, as the state machine sees it.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED and a member id to rejoin with.
    pub require_known_member_id: bool,
    /// JoinGroup v9+: a static leader rejoining a stable group is told to skip assigning.
    pub supports_skip_assignment: bool,
}

/// One member as the leader sees it in its JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResult {
    pub error: Option<GroupError>,
    pub member_id: String,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResult {
    /// An error answer.
    pub fn error(member_id: &str, error: GroupError) -> Self {
        JoinResult {
            error: Some(error),
            member_id: member_id.to_string(),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }
}

/// A SyncGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResult {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    /// An error answer.
    pub fn error(error: GroupError) -> Self {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// What a JoinGroup or SyncGroup gets at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<T> {
    /// The answer.
    Now(T),
    /// The request waits; its answer comes as an [`Output`] for this member id.
    Wait(String),
}

/// Why the group's metadata is being stored; decides what happens once it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistReason {
    /// The leader's assignment for `generation`: the group becomes stable once stored.
    Assignment { generation: i32 },
    /// The join phase ended with no members: `generation` is empty.
    EmptyGeneration { generation: i32 },
    /// A static member rejoined a stable group under a new member id; it is answered
    /// once stored. `previous_leader` is what a client below JoinGroup v9 is told the
    /// leader is, so a rejoining static leader does not reassign; from v9 a rejoining
    /// leader is told it leads, with the members, and to skip the assignment
    /// (`skip_assignment`, KIP-814). `replaced` is the member as it was, put back if
    /// the write fails (the old incarnation keeps its place, as in Kafka).
    StaticMemberReplaced {
        member_id: String,
        generation: i32,
        previous_leader: String,
        skip_assignment: bool,
        replaced: Box<Member>,
    },
}

/// An effect of the state machine for the coordinator shell to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Answer the waiting JoinGroup of a member.
    Join(String, JoinResult),
    /// Answer the waiting SyncGroup of a member.
    Sync(String, SyncResult),
    /// Store the group's metadata record, then report back with `Group::persisted`.
    Persist(PersistReason),
}
