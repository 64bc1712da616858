//! The classic group protocol as a pure state machine: JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup and the timers, over plain data. No I/O, no clock: the time
//! and new member ids come in as arguments; effects (answers to parked requests,
//! metadata to store) go out as [`Output`]s for the coordinator shell.
//!
//! States and transitions follow Apache Kafka's classic group coordinator:
//! `Empty → PreparingRebalance` (a member joins) `→ CompletingRebalance` (every known
//! member rejoined, or the rebalance timeout passed; the generation is bumped and the
//! leader gets the members) `→ Stable` (the leader's assignment is stored). A member
//! joining, leaving, expiring or changing its protocols sends a non-empty group back to
//! `PreparingRebalance`; a join phase that ends with no members leaves it `Empty`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::error::GroupError;
use super::log_format::{GroupValue, StoredMember};
use super::member::{
    JoinRequest, JoinResult, JoinedMember, Member, Output, PersistReason, Reply, SyncResult,
};
use super::offsets::OffsetStore;

/// Kafka's limit for how long a new member's first JoinGroup may stay parked.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// The protocol type of Kafka consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Where a group is in its rebalance cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Group limits from the broker configuration.
#[derive(Clone, Copy, Debug)]
pub struct GroupLimits {
    /// group.min.session.timeout.ms
    pub min_session_timeout_ms: i32,
    /// group.max.session.timeout.ms
    pub max_session_timeout_ms: i32,
    /// group.initial.rebalance.delay.ms
    pub initial_rebalance_delay_ms: i32,
    /// group.max.size
    pub max_size: usize,
}

/// The delayed first join of an empty group: more members get a chance to join
/// before the first generation (Kafka's InitialDelayedJoin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InitialDelay {
    /// How much longer the delay may still be extended, in ms.
    remaining_ms: i64,
    /// A member joined during the current delay.
    new_member_added: bool,
}

/// One classic group.
#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    state: GroupState,
    state_timestamp_ms: i64,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// instance id → member id.
    static_members: BTreeMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with when they lapse.
    pending_join: BTreeMap<String, i64>,
    /// Members of the new generation that have not sent SyncGroup yet.
    pending_sync: BTreeSet<String>,
    /// End of the join phase (PreparingRebalance) or of the sync phase.
    deadline_ms: Option<i64>,
    initial_delay: Option<InitialDelay>,
    limits: GroupLimits,
    /// Committed offsets.
    pub offsets: OffsetStore,
}

impl Group {
    /// A new, empty group.
    pub fn new(id: &str, limits: GroupLimits, now_ms: i64) -> Self {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_join: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            deadline_ms: None,
            initial_delay: None,
            limits,
            offsets: OffsetStore::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> GroupState {
        self.state
    }

    /// When the group entered its current state.
    pub fn state_timestamp_ms(&self) -> i64 {
        self.state_timestamp_ms
    }

    /// The current generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The protocol type of the members (None until the first member joins).
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// The protocol selected for the current generation.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The leader's member id.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// The members, by member id.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Whether the group has neither members nor committed offsets (it can be forgotten).
    pub fn is_forgettable(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.offsets.is_empty()
            && self.pending_join.is_empty()
    }

    fn transition(&mut self, to: GroupState, now_ms: i64) {
        self.state = to;
        self.state_timestamp_ms = now_ms;
    }

    // ---------------------------------------------------------------- JoinGroup

    /// Handles a JoinGroup. `new_member_id` is the id a first-time member gets
    /// (`<client id or instance id>-<uuid>`, made by the caller).
    pub fn join(
        &mut self,
        req: JoinRequest,
        new_member_id: String,
        now_ms: i64,
    ) -> (Reply<JoinResult>, Vec<Output>) {
        let mut out = Vec::new();
        let limits = self.limits;
        let fail = |e: GroupError| (Reply::Now(JoinResult::error(&req.member_id, e)), Vec::new());
        if self.state == GroupState::Dead {
            return fail(GroupError::CoordinatorNotAvailable(
                "group is being removed".into(),
            ));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(GroupError::InconsistentGroupProtocol(
                "a protocol type and at least one protocol are required".into(),
            ));
        }
        if !self.members.is_empty() {
            if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
                return fail(GroupError::InconsistentGroupProtocol(format!(
                    "the group's protocol type is {}",
                    self.protocol_type.as_deref().unwrap_or("")
                )));
            }
            if !self.supports_protocols(&req.protocols, Some(&req.member_id)) {
                return fail(GroupError::InconsistentGroupProtocol(
                    "none of the member's protocols is supported by every member".into(),
                ));
            }
        }
        if req.session_timeout_ms < limits.min_session_timeout_ms
            || req.session_timeout_ms > limits.max_session_timeout_ms
        {
            return fail(GroupError::InvalidSessionTimeout {
                got: req.session_timeout_ms,
                min: limits.min_session_timeout_ms,
                max: limits.max_session_timeout_ms,
            });
        }
        let known = !req.member_id.is_empty();
        if known && self.pending_join.remove(&req.member_id).is_some() {
            // A member rejoining with the id MEMBER_ID_REQUIRED gave it.
            let id = req.member_id.clone();
            self.add_member(req, id.clone(), now_ms, &mut out);
            self.maybe_prepare_rebalance_or_complete_join(now_ms, &mut out);
            return (Reply::Wait(id), out);
        }
        if !known {
            let is_new_static = req
                .instance_id
                .as_ref()
                .is_none_or(|i| !self.static_members.contains_key(i));
            if is_new_static && self.members.len() + self.pending_join.len() >= limits.max_size {
                return fail(GroupError::GroupMaxSizeReached(limits.max_size));
            }
            if let Some(instance) = req.instance_id.clone() {
                if let Some(old) = self.static_members.get(&instance).cloned() {
                    return self.replace_static_member(req, old, new_member_id, now_ms);
                }
                self.add_member(req, new_member_id.clone(), now_ms, &mut out);
                self.maybe_prepare_rebalance_or_complete_join(now_ms, &mut out);
                return (Reply::Wait(new_member_id), out);
            }
            if req.require_known_member_id {
                self.pending_join.insert(
                    new_member_id.clone(),
                    now_ms + i64::from(req.session_timeout_ms),
                );
                return (
                    Reply::Now(JoinResult::error(
                        &new_member_id,
                        GroupError::MemberIdRequired,
                    )),
                    out,
                );
            }
            self.add_member(req, new_member_id.clone(), now_ms, &mut out);
            self.maybe_prepare_rebalance_or_complete_join(now_ms, &mut out);
            return (Reply::Wait(new_member_id), out);
        }
        if let Err(e) = self.validate_member(&req.member_id, req.instance_id.as_deref()) {
            return fail(e);
        }
        let id = req.member_id.clone();
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member(&req, now_ms);
                self.maybe_complete_join(now_ms, &mut out);
                (Reply::Wait(id), out)
            }
            GroupState::CompletingRebalance => {
                if self.members[&id].matches(&req.protocols) {
                    // A retry of a join whose answer was lost: the same answer again.
                    (Reply::Now(self.join_result(&id, self.is_leader(&id))), out)
                } else {
                    self.update_member(&req, now_ms);
                    self.prepare_rebalance(now_ms, &mut out);
                    (Reply::Wait(id), out)
                }
            }
            GroupState::Stable => {
                if self.is_leader(&id) || !self.members[&id].matches(&req.protocols) {
                    // The leader rejoins to trigger a rebalance (new topics, say).
                    self.update_member(&req, now_ms);
                    self.prepare_rebalance(now_ms, &mut out);
                    (Reply::Wait(id), out)
                } else {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                    }
                    (Reply::Now(self.join_result(&id, false)), out)
                }
            }
            GroupState::Empty | GroupState::Dead => fail(GroupError::UnknownMemberId(id)),
        }
    }

    fn add_member(&mut self, req: JoinRequest, id: String, now_ms: i64, out: &mut Vec<Output>) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.state == GroupState::PreparingRebalance {
            if let Some(delay) = self.initial_delay.as_mut() {
                delay.new_member_added = true;
            }
        }
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        let member = Member {
            member_id: id.clone(),
            instance_id: req.instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocol_type: req.protocol_type,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: true,
            awaiting_sync: false,
            is_new: true,
            heartbeat_deadline_ms: now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS,
        };
        if let Some(old) = self.members.insert(id.clone(), member) {
            // Cannot happen (ids are fresh), but never leave a parked request behind.
            if old.awaiting_join {
                out.push(Output::Join(
                    id.clone(),
                    JoinResult::error(&id, GroupError::UnknownMemberId(id.clone())),
                ));
            }
        }
    }

    fn update_member(&mut self, req: &JoinRequest, now_ms: i64) {
        let Some(m) = self.members.get_mut(&req.member_id) else {
            return;
        };
        // A second JoinGroup while the first is parked replaces it; the shell answers
        // the first one when it parks the second.
        m.protocols = req.protocols.clone();
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.session_timeout_ms = req.session_timeout_ms;
        m.awaiting_join = true;
        m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
    }

    /// A known static member (instance id) joined with no member id: it takes a new
    /// member id, and in a stable group whose protocol does not change it keeps its
    /// assignment without a rebalance (KIP-345).
    fn replace_static_member(
        &mut self,
        req: JoinRequest,
        old_id: String,
        new_id: String,
        now_ms: i64,
    ) -> (Reply<JoinResult>, Vec<Output>) {
        let mut out = Vec::new();
        let previous_leader = self.leader.clone().unwrap_or_default();
        let Some(mut member) = self.members.remove(&old_id) else {
            return (
                Reply::Now(JoinResult::error("", GroupError::UnknownMemberId(old_id))),
                out,
            );
        };
        let fenced = GroupError::FencedInstanceId {
            instance_id: req.instance_id.clone().unwrap_or_default(),
            got: old_id.clone(),
            current: new_id.clone(),
        };
        if member.awaiting_join {
            out.push(Output::Join(
                old_id.clone(),
                JoinResult::error(&old_id, fenced.clone()),
            ));
        }
        if member.awaiting_sync {
            out.push(Output::Sync(old_id.clone(), SyncResult::error(fenced)));
        }
        let replaced = Box::new(Member {
            awaiting_join: false,
            awaiting_sync: false,
            ..member.clone()
        });
        member.member_id = new_id.clone();
        member.protocols = req.protocols.clone();
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.awaiting_join = true;
        member.awaiting_sync = false;
        member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(&old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        match self.state {
            GroupState::Stable => {
                if self.select_protocol().as_deref() == self.protocol.as_deref() {
                    out.push(Output::Persist(PersistReason::StaticMemberReplaced {
                        member_id: new_id.clone(),
                        generation: self.generation,
                        previous_leader,
                        skip_assignment: req.supports_skip_assignment && self.is_leader(&new_id),
                        replaced,
                    }));
                } else {
                    self.prepare_rebalance(now_ms, &mut out);
                }
            }
            GroupState::CompletingRebalance => self.prepare_rebalance(now_ms, &mut out),
            _ => self.maybe_complete_join(now_ms, &mut out),
        }
        (Reply::Wait(new_id), out)
    }

    /// Undoes a static member's replacement whose write failed: the new member id
    /// goes, the old incarnation is back under its id, leading if it led.
    fn restore_static_member(&mut self, new_id: &str, replaced: &Member) {
        let Some(instance) = replaced.instance_id.clone() else {
            return;
        };
        if self.static_members.get(&instance).map(String::as_str) != Some(new_id) {
            return;
        }
        self.members.remove(new_id);
        self.members
            .insert(replaced.member_id.clone(), replaced.clone());
        self.static_members
            .insert(instance, replaced.member_id.clone());
        if self.leader.as_deref() == Some(new_id) {
            self.leader = Some(replaced.member_id.clone());
        }
        if self.pending_sync.remove(new_id) {
            self.pending_sync.insert(replaced.member_id.clone());
        }
    }

    fn maybe_prepare_rebalance_or_complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.prepare_rebalance(now_ms, out)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms, out),
            GroupState::Dead => {}
        }
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms.max(0)))
            .max()
            .unwrap_or(0)
    }

    fn prepare_rebalance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_assignments_with(GroupError::RebalanceInProgress, out);
        }
        let was_empty = self.state == GroupState::Empty;
        self.transition(GroupState::PreparingRebalance, now_ms);
        let timeout = self.max_rebalance_timeout_ms();
        if was_empty && i64::from(self.limits.initial_rebalance_delay_ms) > 0 {
            let delay = i64::from(self.limits.initial_rebalance_delay_ms).min(timeout);
            self.initial_delay = Some(InitialDelay {
                remaining_ms: (timeout - i64::from(self.limits.initial_rebalance_delay_ms)).max(0),
                new_member_added: false,
            });
            self.deadline_ms = Some(now_ms + delay);
        } else {
            self.initial_delay = None;
            self.deadline_ms = Some(now_ms + timeout);
            self.maybe_complete_join(now_ms, out);
        }
    }

    /// Members of the sync phase still waiting get `error`; assignments are cleared.
    fn reset_assignments_with(&mut self, error: GroupError, out: &mut Vec<Output>) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            if m.awaiting_sync {
                m.awaiting_sync = false;
                out.push(Output::Sync(
                    m.member_id.clone(),
                    SyncResult::error(error.clone()),
                ));
            }
        }
        self.pending_sync.clear();
    }

    fn all_members_joined(&self) -> bool {
        self.pending_join.is_empty() && self.members.values().all(|m| m.awaiting_join)
    }

    fn maybe_complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay.is_none()
            && self.all_members_joined()
        {
            self.complete_join(now_ms, out);
        }
    }

    /// Ends the join phase: dynamic members that did not rejoin are removed, the
    /// generation is bumped and every joined member is answered (the leader with the
    /// member list). A static member that did not rejoin stays (KIP-345, as in Kafka):
    /// the leader assigns it partitions, and its session timeout decides whether it is
    /// gone.
    fn complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id, out);
        }
        // The leader must be a member that rejoined: only it is answered with the
        // member list (Kafka's maybeElectNewJoinedLeader). If only absent static members
        // are left, the join phase waits another rebalance timeout for them, or for
        // their sessions to end.
        if !self.members.is_empty() {
            let leader_rejoined = self
                .leader
                .as_ref()
                .and_then(|l| self.members.get(l))
                .is_some_and(|m| m.awaiting_join);
            if !leader_rejoined {
                match self.members.values().find(|m| m.awaiting_join) {
                    Some(m) => self.leader = Some(m.member_id.clone()),
                    None => {
                        self.deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
                        return;
                    }
                }
            }
        }
        self.initial_delay = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.deadline_ms = None;
            self.transition(GroupState::Empty, now_ms);
            out.push(Output::Persist(PersistReason::EmptyGeneration {
                generation: self.generation,
            }));
            return;
        }
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.protocol = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now_ms);
        self.pending_sync = self.members.keys().cloned().collect();
        self.deadline_ms = Some(now_ms + self.max_rebalance_timeout_ms());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.is_leader(&id);
            let result = self.join_result(&id, is_leader);
            if let Some(m) = self.members.get_mut(&id) {
                m.awaiting_join = false;
                m.is_new = false;
                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
            }
            out.push(Output::Join(id, result));
        }
    }

    fn join_result(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol.clone();
        let members = if with_members {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: protocol
                        .as_deref()
                        .and_then(|p| m.metadata_for(p))
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            member_id: member_id.to_string(),
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: protocol,
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: false,
            members,
        }
    }

    /// The protocol every member supports that most members prefer (ties: the one
    /// the first member lists first).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        let mut best: Option<(&String, usize)> = None;
        for c in &candidates {
            let n = votes.get(c).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((c, n));
            }
        }
        best.map(|(name, _)| name.clone())
    }

    /// Whether at least one of `protocols` is supported by every member other than
    /// `except` (a member rejoining with new protocols).
    fn supports_protocols(&self, protocols: &[(String, Bytes)], except: Option<&str>) -> bool {
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| Some(m.member_id.as_str()) != except)
            .collect();
        protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    /// Checks that `member_id` is a member and, for a static member, that it is the
    /// member its instance id currently maps to.
    fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        if let Some(instance) = instance_id {
            if let Some(current) = self.static_members.get(instance) {
                if current != member_id {
                    return Err(GroupError::FencedInstanceId {
                        instance_id: instance.to_string(),
                        got: member_id.to_string(),
                        current: current.clone(),
                    });
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId(member_id.to_string()));
        }
        Ok(())
    }

    fn remove_member(&mut self, member_id: &str, out: &mut Vec<Output>) {
        let Some(m) = self.members.remove(member_id) else {
            return;
        };
        if let Some(instance) = &m.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        if m.awaiting_join {
            out.push(Output::Join(
                member_id.to_string(),
                JoinResult::error(
                    member_id,
                    GroupError::UnknownMemberId(member_id.to_string()),
                ),
            ));
        }
        if m.awaiting_sync {
            out.push(Output::Sync(
                member_id.to_string(),
                SyncResult::error(GroupError::UnknownMemberId(member_id.to_string())),
            ));
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    // ---------------------------------------------------------------- SyncGroup

    /// Handles a SyncGroup. `assignments` is what the leader sends (others send none).
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
    ) -> (Reply<SyncResult>, Vec<Output>) {
        let mut out = Vec::new();
        let fail = |e: GroupError| (Reply::Now(SyncResult::error(e)), Vec::new());
        if self.state == GroupState::Dead {
            return fail(GroupError::CoordinatorNotAvailable(
                "group is being removed".into(),
            ));
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            return fail(e);
        }
        if generation != self.generation {
            return fail(GroupError::IllegalGeneration {
                got: generation,
                current: self.generation,
            });
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref()) {
            return fail(GroupError::InconsistentGroupProtocol(
                "protocol type differs from the group's".into(),
            ));
        }
        if protocol_name.is_some_and(|p| Some(p) != self.protocol.as_deref()) {
            return fail(GroupError::InconsistentGroupProtocol(
                "protocol name differs from the generation's".into(),
            ));
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                fail(GroupError::UnknownMemberId(member_id.to_string()))
            }
            GroupState::PreparingRebalance => fail(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.awaiting_sync = true;
                    m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                }
                self.pending_sync.remove(member_id);
                if self.is_leader(member_id) {
                    let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.member_id).unwrap_or_default();
                    }
                    out.push(Output::Persist(PersistReason::Assignment {
                        generation: self.generation,
                    }));
                }
                (Reply::Wait(member_id.to_string()), out)
            }
            GroupState::Stable => {
                let m = self.members.get_mut(member_id);
                let assignment = m
                    .map(|m| {
                        m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                        m.assignment.clone()
                    })
                    .unwrap_or_default();
                (
                    Reply::Now(SyncResult {
                        error: None,
                        protocol_type: self.protocol_type.clone(),
                        protocol_name: self.protocol.clone(),
                        assignment,
                    }),
                    out,
                )
            }
        }
    }

    /// The group's metadata record was stored (`Ok`) or could not be (`Err`).
    pub fn persisted(
        &mut self,
        reason: &PersistReason,
        result: Result<(), GroupError>,
        now_ms: i64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        match reason {
            PersistReason::Assignment { generation } => {
                if self.state != GroupState::CompletingRebalance || self.generation != *generation {
                    return out;
                }
                match result {
                    Ok(()) => {
                        self.transition(GroupState::Stable, now_ms);
                        self.deadline_ms = None;
                        let protocol_type = self.protocol_type.clone();
                        let protocol_name = self.protocol.clone();
                        for m in self.members.values_mut() {
                            if m.awaiting_sync {
                                m.awaiting_sync = false;
                                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                                out.push(Output::Sync(
                                    m.member_id.clone(),
                                    SyncResult {
                                        error: None,
                                        protocol_type: protocol_type.clone(),
                                        protocol_name: protocol_name.clone(),
                                        assignment: m.assignment.clone(),
                                    },
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        self.reset_assignments_with(group_write_error(e), &mut out);
                        self.prepare_rebalance(now_ms, &mut out);
                    }
                }
            }
            PersistReason::EmptyGeneration { .. } => {}
            PersistReason::StaticMemberReplaced {
                member_id,
                generation,
                previous_leader,
                skip_assignment,
                replaced,
            } => {
                let Some(m) = self.members.get_mut(member_id) else {
                    return out;
                };
                if !m.awaiting_join || self.generation != *generation {
                    return out;
                }
                m.awaiting_join = false;
                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                let answer = match result {
                    Ok(()) if *skip_assignment => JoinResult {
                        skip_assignment: true,
                        ..self.join_result(member_id, true)
                    },
                    Ok(()) => JoinResult {
                        leader: previous_leader.clone(),
                        ..self.join_result(member_id, false)
                    },
                    Err(e) => {
                        if self.state == GroupState::Stable {
                            self.restore_static_member(member_id, replaced);
                        }
                        JoinResult::error(member_id, group_write_error(e))
                    }
                };
                out.push(Output::Join(member_id.clone(), answer));
            }
        }
        out
    }

    // ---------------------------------------------------------------- Heartbeat, LeaveGroup

    /// Handles a Heartbeat.
    ///
    /// # Errors
    /// The Kafka refusals: unknown member, fenced instance, wrong generation, and
    /// REBALANCE_IN_PROGRESS while the group prepares a rebalance (the member rejoins).
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable(
                "group is being removed".into(),
            ));
        }
        self.validate_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                got: generation,
                current: self.generation,
            });
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Err(GroupError::UnknownMemberId(member_id.to_string()))
            }
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    /// Handles a LeaveGroup of `members` (member id, instance id): one result each.
    pub fn leave(
        &mut self,
        members: &[(String, Option<String>)],
        now_ms: i64,
    ) -> (Vec<Result<(), GroupError>>, Vec<Output>) {
        let mut out = Vec::new();
        let mut results = Vec::with_capacity(members.len());
        let mut removed_any = false;
        let mut removed_pending = false;
        for (member_id, instance_id) in members {
            let result = match instance_id {
                Some(instance) => match self.static_members.get(instance).cloned() {
                    None => Err(GroupError::UnknownMemberId(member_id.clone())),
                    Some(current) if !member_id.is_empty() && *member_id != current => {
                        Err(GroupError::FencedInstanceId {
                            instance_id: instance.clone(),
                            got: member_id.clone(),
                            current,
                        })
                    }
                    Some(current) => {
                        self.remove_member(&current, &mut out);
                        removed_any = true;
                        Ok(())
                    }
                },
                None => {
                    if self.pending_join.remove(member_id).is_some() {
                        removed_pending = true;
                        Ok(())
                    } else if self.members.contains_key(member_id) {
                        self.remove_member(member_id, &mut out);
                        removed_any = true;
                        Ok(())
                    } else {
                        Err(GroupError::UnknownMemberId(member_id.clone()))
                    }
                }
            };
            results.push(result);
        }
        if removed_any {
            self.after_member_removed(now_ms, &mut out);
        } else if removed_pending {
            self.after_pending_member_removed(now_ms, &mut out);
        }
        (results, out)
    }

    /// A member id given with MEMBER_ID_REQUIRED that never joined is gone: it held no
    /// place in the generation, so only a join phase waiting for it may now complete
    /// (Kafka's removePendingMemberAndUpdateGroup); no rebalance starts.
    fn after_pending_member_removed(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now_ms, out);
        }
    }

    fn after_member_removed(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, out)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms, out),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ---------------------------------------------------------------- timers

    /// Runs the timers due at `now_ms`: the end of the join phase (or its initial
    /// delay), the end of the sync phase, expired sessions and lapsed member ids.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        let lapsed: Vec<String> = self
            .pending_join
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        let mut removed = false;
        let mut removed_pending = false;
        for id in lapsed {
            self.pending_join.remove(&id);
            removed_pending = true;
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expired(now_ms) || (m.is_new && m.heartbeat_deadline_ms <= now_ms))
            .map(|m| m.member_id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(&id, &mut out);
            removed = true;
        }
        if removed {
            self.after_member_removed(now_ms, &mut out);
        } else if removed_pending {
            self.after_pending_member_removed(now_ms, &mut out);
        }
        if self.deadline_ms.is_some_and(|d| d <= now_ms) {
            match self.state {
                GroupState::PreparingRebalance => match self.initial_delay {
                    Some(d) if d.new_member_added && d.remaining_ms > 0 => {
                        let step =
                            i64::from(self.limits.initial_rebalance_delay_ms).min(d.remaining_ms);
                        self.initial_delay = Some(InitialDelay {
                            remaining_ms: d.remaining_ms - step,
                            new_member_added: false,
                        });
                        self.deadline_ms = Some(now_ms + step);
                    }
                    _ => self.complete_join(now_ms, &mut out),
                },
                GroupState::CompletingRebalance => {
                    let laggards: Vec<String> = self.pending_sync.iter().cloned().collect();
                    self.deadline_ms = None;
                    if !laggards.is_empty() {
                        for id in laggards {
                            tracing::info!(group = %self.id, member = %id, "member did not sync in time");
                            self.remove_member(&id, &mut out);
                        }
                        self.prepare_rebalance(now_ms, &mut out);
                    }
                }
                _ => self.deadline_ms = None,
            }
        }
        out
    }

    // ---------------------------------------------------------------- offsets

    /// Checks whether an OffsetCommit from `member_id` in `generation` may commit.
    /// A commit with a negative generation and no member is allowed while the group
    /// is empty (consumers that assign partitions themselves).
    ///
    /// # Errors
    /// Fenced instances, unknown members, wrong generations and REBALANCE_IN_PROGRESS
    /// during the sync phase.
    pub fn validate_offset_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable(
                "group is being removed".into(),
            ));
        }
        if let Some(instance) = instance_id {
            if let Some(current) = self.static_members.get(instance) {
                if current != member_id {
                    return Err(GroupError::FencedInstanceId {
                        instance_id: instance.to_string(),
                        got: member_id.to_string(),
                        current: current.clone(),
                    });
                }
            }
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(GroupError::UnknownMemberId(member_id.to_string()));
        };
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                got: generation,
                current: self.generation,
            });
        }
        m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        match self.state {
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Topics the members subscribe to, for a consumer group whose subscriptions
    /// parse; `None` when unknown (then every topic counts as subscribed).
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return Some(BTreeSet::new());
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            let meta = m.metadata_for(protocol)?;
            topics.extend(super::consumer_protocol::subscribed_topics(meta)?);
        }
        Some(topics)
    }

    // ---------------------------------------------------------------- storage

    /// The group's metadata as stored in the offsets topic.
    pub fn to_stored(&self) -> GroupValue {
        let protocol = self.protocol.clone();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: protocol
                        .as_deref()
                        .and_then(|p| m.metadata_for(p))
                        .cloned()
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Replaces the membership with a stored one (loading the offsets partition): a
    /// group with members is stable in its stored generation, each member's session
    /// starting now.
    pub fn restore(&mut self, stored: GroupValue, now_ms: i64) {
        self.generation = stored.generation;
        self.protocol_type = Some(stored.protocol_type.clone()).filter(|t| !t.is_empty());
        self.protocol = stored.protocol.clone();
        self.leader = stored.leader.clone();
        self.members.clear();
        self.static_members.clear();
        self.pending_join.clear();
        self.pending_sync.clear();
        self.deadline_ms = None;
        self.initial_delay = None;
        for m in stored.members {
            if let Some(instance) = &m.instance_id {
                self.static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = match &stored.protocol {
                Some(p) => vec![(p.clone(), m.subscription.clone())],
                None => Vec::new(),
            };
            self.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    protocol_type: stored.protocol_type.clone(),
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: false,
                    awaiting_sync: false,
                    is_new: false,
                    heartbeat_deadline_ms: now_ms + i64::from(m.session_timeout_ms),
                },
            );
        }
        let state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        self.state = state;
        self.state_timestamp_ms = if stored.state_timestamp_ms >= 0 {
            stored.state_timestamp_ms
        } else {
            now_ms
        };
    }

    /// Marks the group deleted; later requests recreate it.
    pub fn mark_dead(&mut self, now_ms: i64) {
        self.transition(GroupState::Dead, now_ms);
    }
}

/// What a JoinGroup or SyncGroup is told when the group's write to the offsets topic
/// failed. A write that was not replicated in time is COORDINATOR_NOT_AVAILABLE, as
/// Kafka answers it: Java clients take REQUEST_TIMED_OUT from these APIs for a fatal,
/// unexpected error, while COORDINATOR_NOT_AVAILABLE makes them find the coordinator
/// and rejoin.
fn group_write_error(e: GroupError) -> GroupError {
    match e {
        GroupError::Timeout => GroupError::CoordinatorNotAvailable(
            "the group's write to the offsets topic was not replicated in time".into(),
        ),
        other => other,
    }
}
