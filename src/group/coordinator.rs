//! The group coordinator: the async shell around the pure group state machine.
//!
//! A group lives in partition `partition_for(group)` of `__consumer_offsets`, and the
//! leader of that partition coordinates it. [`GroupCoordinator::run`] follows the
//! metadata image: when this broker becomes leader of an offsets partition it loads
//! the partition's groups (a *shard*, answering COORDINATOR_LOAD_IN_PROGRESS until
//! loaded); when it stops leading it drops them, and every parked request is answered
//! NOT_COORDINATOR, so clients look the coordinator up again.
//!
//! One mutex guards every shard: the work under it is in-memory state changes and the
//! page-cache append of the records a change needs, so the order of records in the log
//! is the order of the changes. Waiting for those records to be replicated happens
//! outside it; only then are commits visible and assignments handed out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::image::MetadataImage;
use tokio::sync::{oneshot, watch, Notify};

use super::error::GroupError;
use super::load;
use super::log_format::{self, OffsetValue};
use super::member::{JoinRequest, JoinResult, Member, Output, PersistReason, Reply, SyncResult};
use super::offsets::CommittedOffset;
use super::offsets_topic::{partition_for, OFFSETS_TOPIC};
use super::persist::{self, KeyValue};
use super::state::{Group, GroupLimits, GroupState};
use crate::replication::manager::now_ms;
use crate::replication::{Partition, ReplicaManager};

/// How often the group timers (session, rebalance and sync timeouts) are checked.
pub const GROUP_TIMER_TICK: Duration = Duration::from_millis(100);
/// How long a failed load of an offsets partition waits before it is tried again.
pub const LOAD_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How often the coordinator checks its shards against the image even when the image
/// has not changed (a leadership the replica manager applied late).
const SHARD_RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long the coordinator waits for the replica manager to apply an image before
/// acting on it anyway.
const IMAGE_APPLY_WAIT: Duration = Duration::from_secs(10);

/// The coordinator's settings, from the broker configuration.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// This broker.
    pub node_id: i32,
    /// Group limits (session timeouts, initial delay, size).
    pub limits: GroupLimits,
    /// offsets.topic.num.partitions, until the topic exists.
    pub offsets_partitions: i32,
    /// offsets.commit.timeout.ms: how long a write waits for replication.
    pub commit_timeout: Duration,
    /// offsets.retention.minutes, in ms.
    pub retention_ms: i64,
    /// offsets.retention.check.interval.ms
    pub retention_check_interval: Duration,
    /// offsets.load.buffer.size
    pub load_buffer_bytes: usize,
}

/// One committed offset to write.
#[derive(Clone, Debug)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: i32,
    pub value: OffsetValue,
}

/// A group as DescribeGroups reports it.
#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<Member>,
}

/// One group as ListGroups reports it.
#[derive(Clone, Debug)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Default)]
struct Waiters {
    join: HashMap<String, oneshot::Sender<JoinResult>>,
    sync: HashMap<String, oneshot::Sender<SyncResult>>,
}

struct GroupEntry {
    group: Group,
    waiters: Waiters,
    /// Commits appended but not yet replicated, per partition: OffsetFetch waits for
    /// them, so a new owner never resumes from an offset that is about to move.
    pending_commits: HashMap<(String, i32), u32>,
    /// Partitions whose offsets were deleted (OffsetDelete) while a commit to them was
    /// being replicated: the log offset of the tombstone. That commit, older in the log,
    /// must not come back in memory when it completes. Dropped once none is pending.
    deleted_while_pending: HashMap<(String, i32), i64>,
    /// Tells this entry from one of the same name made after a DeleteGroups: a commit
    /// started in the deleted group is not applied to the new one.
    incarnation: u64,
}

/// Source of [`GroupEntry::incarnation`].
static NEXT_INCARNATION: AtomicU64 = AtomicU64::new(0);

impl GroupEntry {
    fn new(group: Group) -> Self {
        GroupEntry {
            group,
            waiters: Waiters::default(),
            pending_commits: HashMap::new(),
            deleted_while_pending: HashMap::new(),
            incarnation: NEXT_INCARNATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Nothing to keep: no members, offsets or parked requests, and no commit still
    /// being replicated (its offsets are applied when it completes; forgetting the
    /// group before would answer the commit and then lose it from memory).
    fn is_forgettable(&self) -> bool {
        self.group.is_forgettable()
            && self.waiters.join.is_empty()
            && self.waiters.sync.is_empty()
            && self.pending_commits.is_empty()
    }

    fn has_pending(&self, partitions: &Option<Vec<(String, Vec<i32>)>>) -> bool {
        match partitions {
            None => !self.pending_commits.is_empty(),
            Some(list) => list.iter().any(|(t, ps)| {
                ps.iter()
                    .any(|p| self.pending_commits.contains_key(&(t.clone(), *p)))
            }),
        }
    }
}

/// A commit appended to the offsets partition and waiting to be replicated.
struct CommitWrite {
    shard_ref: ShardRef,
    /// [`GroupEntry::incarnation`] of the group it was made in.
    incarnation: u64,
    /// Log end offset after the commit's records.
    end: i64,
    /// Log offset of its first record.
    first_record: i64,
}

/// The groups of one offsets partition this broker leads.
struct Shard {
    leader_epoch: i32,
    partition: Arc<Partition>,
    loading: bool,
    groups: HashMap<String, GroupEntry>,
}

struct Inner {
    shards: HashMap<i32, Shard>,
    /// Partitions of the offsets topic (from the image once it exists).
    partitions: i32,
}

/// Where a group's shard is, to come back to it after waiting.
#[derive(Clone)]
struct ShardRef {
    index: i32,
    leader_epoch: i32,
    partition: Arc<Partition>,
}

/// Coordinates the groups of the offsets partitions this broker leads.
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    replicas: Arc<ReplicaManager>,
    inner: Mutex<Inner>,
    /// Woken whenever a pending commit is settled (replicated or failed).
    commits_settled: Notify,
}

impl GroupCoordinator {
    /// A coordinator with no shards; [`GroupCoordinator::run`] loads them.
    pub fn new(config: CoordinatorConfig, replicas: Arc<ReplicaManager>) -> Arc<Self> {
        let partitions = config.offsets_partitions;
        Arc::new(GroupCoordinator {
            config,
            replicas,
            inner: Mutex::new(Inner {
                shards: HashMap::new(),
                partitions,
            }),
            commits_settled: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The process aborts on panic in release builds, so poisoning only happens in
        // tests; the state is still consistent (every change completes under the lock).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits groups run with.
    pub fn limits(&self) -> GroupLimits {
        self.config.limits
    }

    /// The offsets partition of `group`.
    pub fn partition_of(&self, group: &str) -> i32 {
        partition_for(group, self.lock().partitions)
    }

    // ------------------------------------------------------------ leadership

    /// Follows the metadata image (loading and dropping shards) and runs the group
    /// timers and offset expiration, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut image: watch::Receiver<Arc<MetadataImage>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(GROUP_TIMER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(self.config.retention_check_interval);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(SHARD_RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let current = image.borrow_and_update().clone();
        self.follow(&current).await;
        loop {
            tokio::select! {
                r = image.changed() => {
                    if r.is_err() { return; }
                    let current = image.borrow_and_update().clone();
                    self.follow(&current).await;
                }
                _ = resync.tick() => {
                    let current = image.borrow().clone();
                    self.follow(&current).await;
                }
                _ = tick.tick() => self.tick(now_ms()),
                _ = retention.tick() => self.expire_offsets(now_ms()),
                _ = shutdown.changed() => {
                    self.lock().shards.clear();
                    return;
                }
            }
        }
    }

    /// Loads the offsets partitions this broker now leads and drops the others.
    async fn follow(self: &Arc<Self>, image: &Arc<MetadataImage>) {
        if !self
            .replicas
            .wait_applied(image.last_applied_index, IMAGE_APPLY_WAIT)
            .await
        {
            tracing::warn!(
                "replica manager slow to apply image {}",
                image.last_applied_index
            );
        }
        let node = self.config.node_id;
        let topic = image.topic_by_name(OFFSETS_TOPIC);
        let mut to_load = Vec::new();
        {
            let mut inner = self.lock();
            inner.partitions = topic.map_or(self.config.offsets_partitions, |t| {
                t.partitions.len() as i32
            });
            let mut keep = Vec::new();
            if let Some(topic) = topic {
                for (index, p) in &topic.partitions {
                    if p.leader != node {
                        continue;
                    }
                    let Some(local) = self.replicas.get(topic.topic_id, *index) else {
                        continue;
                    };
                    if !local.is_leader() || local.leader_epoch() != p.leader_epoch {
                        continue;
                    }
                    keep.push(*index);
                    let current = inner.shards.get(index).map(|s| s.leader_epoch);
                    if current != Some(p.leader_epoch) {
                        tracing::info!(
                            partition = index,
                            epoch = p.leader_epoch,
                            "loading offsets partition"
                        );
                        inner.shards.insert(
                            *index,
                            Shard {
                                leader_epoch: p.leader_epoch,
                                partition: local.clone(),
                                loading: true,
                                groups: HashMap::new(),
                            },
                        );
                        to_load.push(ShardRef {
                            index: *index,
                            leader_epoch: p.leader_epoch,
                            partition: local,
                        });
                    }
                }
            }
            let dropped: Vec<i32> = inner
                .shards
                .keys()
                .filter(|i| !keep.contains(i))
                .copied()
                .collect();
            for index in dropped {
                tracing::info!(
                    partition = index,
                    "no longer coordinating offsets partition"
                );
                // Dropping the shard drops every parked request's sender: they answer
                // NOT_COORDINATOR.
                inner.shards.remove(&index);
            }
        }
        for shard in to_load {
            tokio::spawn(self.clone().load(shard));
        }
    }

    async fn load(self: Arc<Self>, shard: ShardRef) {
        loop {
            let started = Instant::now();
            let partition = shard.partition.clone();
            let limits = self.config.limits;
            let buffer = self.config.load_buffer_bytes;
            let result = tokio::task::spawn_blocking(move || {
                load::load_partition(&partition, buffer, limits, now_ms())
            })
            .await
            .unwrap_or_else(|e| Err(format!("load task failed: {e}")));
            let done = {
                let mut inner = self.lock();
                match inner.shards.get_mut(&shard.index) {
                    Some(s) if s.leader_epoch == shard.leader_epoch && s.loading => match result {
                        Ok(loaded) => {
                            tracing::info!(
                                partition = shard.index,
                                epoch = shard.leader_epoch,
                                groups = loaded.groups.len(),
                                records = loaded.records,
                                skipped = loaded.skipped,
                                end_offset = loaded.end_offset,
                                ms = started.elapsed().as_millis() as u64,
                                "loaded offsets partition"
                            );
                            s.groups = loaded
                                .groups
                                .into_iter()
                                .map(|(id, group)| (id, GroupEntry::new(group)))
                                .collect();
                            s.loading = false;
                            true
                        }
                        Err(e) => {
                            tracing::error!(
                                partition = shard.index,
                                "cannot load offsets partition: {e}"
                            );
                            false
                        }
                    },
                    // Replaced or dropped meanwhile.
                    _ => true,
                }
            };
            if done {
                return;
            }
            tokio::time::sleep(LOAD_RETRY_BACKOFF).await;
        }
    }

    /// The shard of `group`, if this broker coordinates it and has loaded it, with the
    /// group's due timers run first: a request sees every session that has expired by
    /// now, as precisely as Kafka's timers, not only those the last tick found.
    fn shard_of<'a>(
        self: &Arc<Self>,
        inner: &'a mut Inner,
        group: &str,
    ) -> Result<&'a mut Shard, GroupError> {
        if group.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let index = partition_for(group, inner.partitions);
        let shard = inner
            .shards
            .get_mut(&index)
            .ok_or(GroupError::NotCoordinator)?;
        if shard.loading {
            return Err(GroupError::LoadInProgress);
        }
        let shard_ref = ShardRef {
            index,
            leader_epoch: shard.leader_epoch,
            partition: shard.partition.clone(),
        };
        if let Some(entry) = shard.groups.get_mut(group) {
            let outputs = entry.group.tick(now_ms());
            if !outputs.is_empty() {
                self.dispatch(&shard_ref, entry, outputs);
            }
        }
        Ok(shard)
    }

    // ------------------------------------------------------------ effects

    /// Carries out the state machine's outputs for the group `entry` of `shard`.
    fn dispatch(self: &Arc<Self>, shard: &ShardRef, entry: &mut GroupEntry, outputs: Vec<Output>) {
        let mut queue: std::collections::VecDeque<Output> = outputs.into();
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Join(member, result) => {
                    if let Some(tx) = entry.waiters.join.remove(&member) {
                        let _ = tx.send(result);
                    }
                }
                Output::Sync(member, result) => {
                    if let Some(tx) = entry.waiters.sync.remove(&member) {
                        let _ = tx.send(result);
                    }
                }
                Output::Persist(reason) => {
                    let now = now_ms();
                    let record = KeyValue {
                        key: log_format::group_key(&entry.group.id),
                        value: Some(log_format::group_value(&entry.group.to_stored())),
                    };
                    let appended = persist::encode_batch(&[record], now)
                        .and_then(|batch| persist::append(&shard.partition, &batch, now));
                    match appended {
                        Err(e) => {
                            tracing::warn!(group = %entry.group.id, "cannot store group metadata: {e}");
                            queue.extend(entry.group.persisted(&reason, Err(e), now));
                        }
                        Ok(end) => {
                            let me = self.clone();
                            let shard = shard.clone();
                            let group = entry.group.id.clone();
                            let timeout = self.config.commit_timeout;
                            tokio::spawn(async move {
                                let result =
                                    persist::wait_durable(&shard.partition, end, timeout).await;
                                me.persist_completed(&shard, &group, &reason, result);
                            });
                        }
                    }
                }
            }
        }
    }

    fn persist_completed(
        self: &Arc<Self>,
        shard: &ShardRef,
        group: &str,
        reason: &PersistReason,
        result: Result<(), GroupError>,
    ) {
        if let Err(e) = &result {
            tracing::warn!(group, "group metadata not replicated: {e}");
        }
        let mut inner = self.lock();
        let Some(s) = inner.shards.get_mut(&shard.index) else {
            return;
        };
        if s.leader_epoch != shard.leader_epoch {
            return;
        }
        let Some(entry) = s.groups.get_mut(group) else {
            return;
        };
        let outputs = entry.group.persisted(reason, result, now_ms());
        self.dispatch(shard, entry, outputs);
    }

    fn tick(self: &Arc<Self>, now: i64) {
        let mut inner = self.lock();
        for (index, s) in inner.shards.iter_mut() {
            if s.loading {
                continue;
            }
            let shard = ShardRef {
                index: *index,
                leader_epoch: s.leader_epoch,
                partition: s.partition.clone(),
            };
            for entry in s.groups.values_mut() {
                let outputs = entry.group.tick(now);
                if !outputs.is_empty() {
                    self.dispatch(&shard, entry, outputs);
                }
            }
            // Groups that never stored anything (a first join that never came back).
            s.groups
                .retain(|_, e| !(e.is_forgettable() && e.group.generation() == 0));
        }
    }

    // ------------------------------------------------------------ membership

    /// JoinGroup: the membership change happens now, in request order; the returned
    /// future waits until the join phase ends (or is ready at once).
    pub fn join(
        self: &Arc<Self>,
        group_id: &str,
        req: JoinRequest,
    ) -> impl Future<Output = JoinResult> + Send + 'static {
        let requested_member = req.member_id.clone();
        let started = self.start_join(group_id, req);
        async move {
            match started {
                Err(now) => now,
                Ok(rx) => rx.await.unwrap_or_else(|_| {
                    JoinResult::error(&requested_member, GroupError::NotCoordinator)
                }),
            }
        }
    }

    fn start_join(
        self: &Arc<Self>,
        group_id: &str,
        req: JoinRequest,
    ) -> Result<oneshot::Receiver<JoinResult>, JoinResult> {
        let requested_member = req.member_id.clone();
        let prefix = req
            .instance_id
            .clone()
            .unwrap_or_else(|| req.client_id.clone());
        let new_member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        let rx = {
            let mut inner = self.lock();
            let shard = match self.shard_of(&mut inner, group_id) {
                Ok(s) => s,
                Err(e) => return Err(JoinResult::error(&requested_member, e)),
            };
            let shard_ref = ShardRef {
                index: shard.partition.index,
                leader_epoch: shard.leader_epoch,
                partition: shard.partition.clone(),
            };
            let now = now_ms();
            if !shard.groups.contains_key(group_id) {
                if !requested_member.is_empty() {
                    return Err(JoinResult::error(
                        &requested_member,
                        GroupError::UnknownMemberId(requested_member.clone()),
                    ));
                }
                shard.groups.insert(
                    group_id.to_string(),
                    GroupEntry::new(Group::new(group_id, self.config.limits, now)),
                );
            }
            let Some(entry) = shard.groups.get_mut(group_id) else {
                return Err(JoinResult::error(
                    &requested_member,
                    GroupError::NotCoordinator,
                ));
            };
            let (reply, outputs) = entry.group.join(req, new_member_id, now);
            let rx = match reply {
                Reply::Now(result) => {
                    self.dispatch(&shard_ref, entry, outputs);
                    return Err(result);
                }
                Reply::Wait(member) => {
                    let (tx, rx) = oneshot::channel();
                    if let Some(old) = entry.waiters.join.insert(member.clone(), tx) {
                        // The member sent a second JoinGroup while its first was parked.
                        let _ =
                            old.send(JoinResult::error(&member, GroupError::RebalanceInProgress));
                    }
                    rx
                }
            };
            self.dispatch(&shard_ref, entry, outputs);
            rx
        };
        Ok(rx)
    }

    /// SyncGroup: the state change happens now, in request order; the returned future
    /// waits until the leader's assignment is stored (or is ready at once).
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> impl Future<Output = SyncResult> + Send + 'static {
        let started = self.start_sync(
            group_id,
            member_id,
            instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        );
        async move {
            match started {
                Err(now) => now,
                Ok(rx) => rx
                    .await
                    .unwrap_or_else(|_| SyncResult::error(GroupError::NotCoordinator)),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_sync(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<oneshot::Receiver<SyncResult>, SyncResult> {
        let rx = {
            let mut inner = self.lock();
            let shard = match self.shard_of(&mut inner, group_id) {
                Ok(s) => s,
                Err(e) => return Err(SyncResult::error(e)),
            };
            let shard_ref = ShardRef {
                index: shard.partition.index,
                leader_epoch: shard.leader_epoch,
                partition: shard.partition.clone(),
            };
            let Some(entry) = shard.groups.get_mut(group_id) else {
                return Err(SyncResult::error(GroupError::UnknownMemberId(
                    member_id.to_string(),
                )));
            };
            let (reply, outputs) = entry.group.sync(
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
                now_ms(),
            );
            let rx = match reply {
                Reply::Now(result) => {
                    self.dispatch(&shard_ref, entry, outputs);
                    return Err(result);
                }
                Reply::Wait(member) => {
                    let (tx, rx) = oneshot::channel();
                    if let Some(old) = entry.waiters.sync.insert(member, tx) {
                        let _ = old.send(SyncResult::error(GroupError::RebalanceInProgress));
                    }
                    rx
                }
            };
            self.dispatch(&shard_ref, entry, outputs);
            rx
        };
        Ok(rx)
    }

    /// Heartbeat.
    ///
    /// # Errors
    /// As `Group::heartbeat`, plus the coordinator errors.
    pub fn heartbeat(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        let mut inner = self.lock();
        let shard = self.shard_of(&mut inner, group_id)?;
        let entry = shard
            .groups
            .get_mut(group_id)
            .ok_or_else(|| GroupError::UnknownMemberId(member_id.to_string()))?;
        entry
            .group
            .heartbeat(member_id, instance_id, generation, now_ms())
    }

    /// LeaveGroup of `members` (member id, instance id).
    ///
    /// # Errors
    /// Coordinator errors (a group that does not exist answers UNKNOWN_MEMBER_ID per
    /// member).
    pub fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        let mut inner = self.lock();
        let shard = self.shard_of(&mut inner, group_id)?;
        let shard_ref = ShardRef {
            index: shard.partition.index,
            leader_epoch: shard.leader_epoch,
            partition: shard.partition.clone(),
        };
        let Some(entry) = shard.groups.get_mut(group_id) else {
            // As Kafka: the request succeeds, each member is unknown.
            return Ok(members
                .iter()
                .map(|(member_id, _)| Err(GroupError::UnknownMemberId(member_id.clone())))
                .collect());
        };
        let (results, outputs) = entry.group.leave(members, now_ms());
        self.dispatch(&shard_ref, entry, outputs);
        Ok(results)
    }

    // ------------------------------------------------------------ offsets

    /// OffsetCommit: stores `entries` once replicated. A commit with a negative
    /// generation to a group that does not exist creates it (consumers that assign
    /// partitions themselves).
    ///
    /// # Errors
    /// Membership errors (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
    /// FENCED_INSTANCE_ID), coordinator errors, and write errors (the commit may or may
    /// not have been stored).
    pub fn commit_offsets(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        entries: Vec<CommitEntry>,
    ) -> impl Future<Output = Result<(), GroupError>> + Send + 'static {
        let started = self.start_commit(group_id, member_id, instance_id, generation, &entries);
        let me = self.clone();
        let group_id = group_id.to_string();
        async move {
            match started? {
                None => Ok(()),
                Some((shard_ref, incarnation, end, first_record)) => {
                    let written = CommitWrite {
                        shard_ref,
                        incarnation,
                        end,
                        first_record,
                    };
                    me.finish_commit(&group_id, written, entries).await
                }
            }
        }
    }

    /// Validates and appends a commit; `None` when there is nothing to write.
    #[allow(clippy::type_complexity)]
    fn start_commit(
        self: &Arc<Self>,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        entries: &[CommitEntry],
    ) -> Result<Option<(ShardRef, u64, i64, i64)>, GroupError> {
        {
            let mut inner = self.lock();
            let shard = self.shard_of(&mut inner, group_id)?;
            let shard_ref = ShardRef {
                index: shard.partition.index,
                leader_epoch: shard.leader_epoch,
                partition: shard.partition.clone(),
            };
            let now = now_ms();
            if !shard.groups.contains_key(group_id) {
                if generation >= 0 {
                    return Err(GroupError::IllegalGeneration {
                        got: generation,
                        current: -1,
                    });
                }
                shard.groups.insert(
                    group_id.to_string(),
                    GroupEntry::new(Group::new(group_id, self.config.limits, now)),
                );
            }
            let Some(entry) = shard.groups.get_mut(group_id) else {
                return Err(GroupError::NotCoordinator);
            };
            entry
                .group
                .validate_offset_commit(member_id, instance_id, generation, now)?;
            if entries.is_empty() {
                return Ok(None);
            }
            let records: Vec<KeyValue> = entries
                .iter()
                .map(|e| KeyValue {
                    key: log_format::offset_key(group_id, &e.topic, e.partition),
                    value: Some(log_format::offset_value(&e.value)),
                })
                .collect();
            let batch = persist::encode_batch(&records, now)?;
            let end = persist::append(&shard_ref.partition, &batch, now)?;
            for e in entries {
                *entry
                    .pending_commits
                    .entry((e.topic.clone(), e.partition))
                    .or_default() += 1;
            }
            Ok(Some((
                shard_ref,
                entry.incarnation,
                end,
                end - records.len() as i64,
            )))
        }
    }

    async fn finish_commit(
        &self,
        group_id: &str,
        written: CommitWrite,
        entries: Vec<CommitEntry>,
    ) -> Result<(), GroupError> {
        let CommitWrite {
            shard_ref,
            incarnation,
            end,
            first_record,
        } = written;
        let result =
            persist::wait_durable(&shard_ref.partition, end, self.config.commit_timeout).await;
        {
            let mut inner = self.lock();
            let entry = inner
                .shards
                .get_mut(&shard_ref.index)
                .filter(|s| s.leader_epoch == shard_ref.leader_epoch)
                .and_then(|s| s.groups.get_mut(group_id))
                .filter(|entry| entry.incarnation == incarnation);
            if let Some(entry) = entry {
                for (i, e) in entries.into_iter().enumerate() {
                    let key = (e.topic.clone(), e.partition);
                    let record_offset = first_record + i as i64;
                    // A tombstone written after this commit's record wins, as it will
                    // when the log is loaded again.
                    let deleted_since = entry
                        .deleted_while_pending
                        .get(&key)
                        .is_some_and(|at| *at > record_offset);
                    if result.is_ok() && !deleted_since {
                        entry.group.offsets.apply(
                            &e.topic,
                            e.partition,
                            Some(e.value),
                            record_offset,
                        );
                    }
                    if let Some(n) = entry.pending_commits.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            entry.pending_commits.remove(&key);
                            entry.deleted_while_pending.remove(&key);
                        }
                    }
                }
            }
        }
        self.commits_settled.notify_waiters();
        result
    }

    /// OffsetFetch: the committed offsets of `partitions` (every committed one if
    /// `None`); partitions without a commit are `None`. Waits (up to
    /// `offsets.commit.timeout.ms`) for commits to those partitions that are still
    /// being replicated, so a new owner never resumes from an offset about to move.
    ///
    /// # Errors
    /// Coordinator errors.
    #[allow(clippy::type_complexity)]
    pub async fn fetch_offsets(
        self: &Arc<Self>,
        group_id: &str,
        partitions: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, i32, Option<CommittedOffset>)>, GroupError> {
        let deadline = tokio::time::Instant::now() + self.config.commit_timeout;
        loop {
            let settled = self.commits_settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut inner = self.lock();
                let shard = self.shard_of(&mut inner, group_id)?;
                let entry = shard.groups.get(group_id);
                let pending = entry.is_some_and(|e| e.has_pending(&partitions));
                if !pending || tokio::time::Instant::now() >= deadline {
                    return Ok(Self::committed(entry.map(|e| &e.group), &partitions));
                }
            }
            let _ = tokio::time::timeout_at(deadline, settled).await;
        }
    }

    #[allow(clippy::type_complexity)]
    fn committed(
        group: Option<&Group>,
        partitions: &Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        match partitions {
            Some(list) => list
                .iter()
                .flat_map(|(topic, parts)| parts.iter().map(move |p| (topic.clone(), *p)))
                .map(|(topic, p)| {
                    let c = group.and_then(|g| g.offsets.get(&topic, p)).cloned();
                    (topic, p, c)
                })
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// OffsetDelete: removes the committed offsets of `partitions` from a group that
    /// does not consume their topics.
    ///
    /// # Errors
    /// Coordinator errors, GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP for a non-consumer
    /// group with members, and write errors.
    #[allow(clippy::type_complexity)]
    pub fn delete_offsets(
        self: &Arc<Self>,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> impl Future<Output = Result<Vec<((String, i32), Result<(), GroupError>)>, GroupError>>
           + Send
           + 'static {
        let started = self.start_delete_offsets(group_id, partitions);
        let timeout = self.config.commit_timeout;
        async move {
            let (results, write) = started?;
            if let Some((partition, end)) = write {
                persist::wait_durable(&partition, end, timeout).await?;
            }
            Ok(results)
        }
    }

    #[allow(clippy::type_complexity)]
    fn start_delete_offsets(
        self: &Arc<Self>,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<
        (
            Vec<((String, i32), Result<(), GroupError>)>,
            Option<(Arc<Partition>, i64)>,
        ),
        GroupError,
    > {
        {
            let mut inner = self.lock();
            let shard = self.shard_of(&mut inner, group_id)?;
            let shard_ref = ShardRef {
                index: shard.partition.index,
                leader_epoch: shard.leader_epoch,
                partition: shard.partition.clone(),
            };
            let entry = shard
                .groups
                .get_mut(group_id)
                .ok_or_else(|| GroupError::GroupIdNotFound(group_id.to_string()))?;
            let group = &mut entry.group;
            let subscribed = if group.state() == GroupState::Empty {
                Some(Default::default())
            } else if group.protocol_type() != Some(super::state::CONSUMER_PROTOCOL_TYPE) {
                return Err(GroupError::NonEmptyGroup(group_id.to_string()));
            } else {
                group.subscribed_topics()
            };
            let mut results = Vec::new();
            let mut deleted = Vec::new();
            for (topic, p) in partitions {
                let is_subscribed = subscribed.as_ref().is_none_or(|s| s.contains(&topic));
                if is_subscribed {
                    results.push((
                        (topic.clone(), p),
                        Err(GroupError::GroupSubscribedToTopic(topic)),
                    ));
                } else {
                    if group.offsets.get(&topic, p).is_some() {
                        deleted.push((topic.clone(), p));
                    }
                    results.push(((topic, p), Ok(())));
                }
            }
            if deleted.is_empty() {
                return Ok((results, None));
            }
            let records: Vec<KeyValue> = deleted
                .iter()
                .map(|(t, p)| KeyValue {
                    key: log_format::offset_key(group_id, t, *p),
                    value: None,
                })
                .collect();
            let now = now_ms();
            let batch = persist::encode_batch(&records, now)?;
            let end = persist::append(&shard_ref.partition, &batch, now)?;
            let first = end - records.len() as i64;
            for (i, (t, p)) in deleted.into_iter().enumerate() {
                let at = first + i as i64;
                entry.group.offsets.apply(&t, p, None, at);
                let key = (t, p);
                if entry.pending_commits.contains_key(&key) {
                    entry.deleted_while_pending.insert(key, at);
                }
            }
            Ok((results, Some((shard_ref.partition, end))))
        }
    }

    // ------------------------------------------------------------ administration

    /// ListGroups: the groups of every loaded shard.
    pub fn list_groups(&self) -> Vec<GroupListing> {
        let inner = self.lock();
        inner
            .shards
            .values()
            .filter(|s| !s.loading)
            .flat_map(|s| s.groups.values())
            .filter(|e| e.group.state() != GroupState::Dead)
            .map(|e| GroupListing {
                group_id: e.group.id.clone(),
                protocol_type: e.group.protocol_type().unwrap_or("").to_string(),
                state: e.group.state(),
            })
            .collect()
    }

    /// Whether this broker coordinates `group` and has loaded its offsets partition.
    pub fn is_ready_for(&self, group: &str) -> bool {
        let inner = self.lock();
        let index = partition_for(group, inner.partitions);
        inner.shards.get(&index).is_some_and(|s| !s.loading)
    }

    /// Whether every offsets partition this broker leads is loaded.
    pub fn is_loading(&self) -> bool {
        self.lock().shards.values().any(|s| s.loading)
    }

    /// DescribeGroups of one group; a group that does not exist is `Dead`.
    ///
    /// # Errors
    /// Coordinator errors.
    pub fn describe(self: &Arc<Self>, group_id: &str) -> Result<GroupDescription, GroupError> {
        let mut inner = self.lock();
        let shard = self.shard_of(&mut inner, group_id)?;
        Ok(match shard.groups.get(group_id) {
            Some(e) => GroupDescription {
                state: e.group.state(),
                protocol_type: e.group.protocol_type().unwrap_or("").to_string(),
                protocol: e.group.protocol().unwrap_or("").to_string(),
                members: e.group.members().values().cloned().collect(),
            },
            None => GroupDescription {
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        })
    }

    /// DeleteGroups of one group: its offsets and metadata are tombstoned.
    ///
    /// # Errors
    /// Coordinator errors, GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP, write errors.
    pub fn delete_group(
        self: &Arc<Self>,
        group_id: &str,
    ) -> impl Future<Output = Result<(), GroupError>> + Send + 'static {
        let started = self.start_delete_group(group_id);
        let timeout = self.config.commit_timeout;
        async move {
            let (partition, end) = started?;
            persist::wait_durable(&partition, end, timeout).await
        }
    }

    fn start_delete_group(
        self: &Arc<Self>,
        group_id: &str,
    ) -> Result<(Arc<Partition>, i64), GroupError> {
        {
            let mut inner = self.lock();
            let shard = self.shard_of(&mut inner, group_id)?;
            let partition = shard.partition.clone();
            let entry = shard
                .groups
                .get(group_id)
                .ok_or_else(|| GroupError::GroupIdNotFound(group_id.to_string()))?;
            match entry.group.state() {
                GroupState::Empty => {}
                GroupState::Dead => return Err(GroupError::GroupIdNotFound(group_id.to_string())),
                _ => return Err(GroupError::NonEmptyGroup(group_id.to_string())),
            }
            // Tombstones for every offset, and for every partition with a commit still
            // being replicated: that commit is earlier in the log, and once compaction
            // drops the group tombstone nothing else would hide it.
            let mut keys: std::collections::BTreeSet<(&str, i32)> = entry
                .group
                .offsets
                .iter()
                .map(|((t, p), _)| (t.as_str(), *p))
                .collect();
            keys.extend(entry.pending_commits.keys().map(|(t, p)| (t.as_str(), *p)));
            let mut records: Vec<KeyValue> = keys
                .into_iter()
                .map(|(t, p)| KeyValue {
                    key: log_format::offset_key(group_id, t, p),
                    value: None,
                })
                .collect();
            records.push(KeyValue {
                key: log_format::group_key(group_id),
                value: None,
            });
            let now = now_ms();
            let batch = persist::encode_batch(&records, now)?;
            let end = persist::append(&partition, &batch, now)?;
            shard.groups.remove(group_id);
            Ok((partition, end))
        }
    }

    /// Expires offsets past `offsets.retention.minutes` and forgets groups left with
    /// neither members nor offsets, writing their tombstones.
    fn expire_offsets(self: &Arc<Self>, now: i64) {
        let retention = self.config.retention_ms;
        let mut inner = self.lock();
        for s in inner.shards.values_mut() {
            if s.loading {
                continue;
            }
            let mut records = Vec::new();
            let mut forget = Vec::new();
            for (id, e) in s.groups.iter_mut() {
                let pending = &e.pending_commits;
                let g = &mut e.group;
                let mut expired = match (g.state(), g.protocol_type()) {
                    (GroupState::Empty, Some(_)) => {
                        g.offsets
                            .expired(now, retention, Some(g.state_timestamp_ms()))
                    }
                    (GroupState::Empty, None) => g.offsets.expired(now, retention, None),
                    _ => Vec::new(),
                };
                // A partition whose new commit is being replicated has not expired (as
                // in Kafka): its tombstone would come after that commit in the log.
                expired.retain(|key| !pending.contains_key(key));
                for (t, p) in &expired {
                    records.push(KeyValue {
                        key: log_format::offset_key(id, t, *p),
                        value: None,
                    });
                    g.offsets.apply(t, *p, None, i64::MAX);
                }
                if !expired.is_empty() {
                    tracing::info!(group = %id, partitions = expired.len(), "committed offsets expired");
                }
                if e.is_forgettable() {
                    records.push(KeyValue {
                        key: log_format::group_key(id),
                        value: None,
                    });
                    forget.push(id.clone());
                }
            }
            for id in forget {
                s.groups.remove(&id);
            }
            if records.is_empty() {
                continue;
            }
            let appended = persist::encode_batch(&records, now)
                .and_then(|batch| persist::append(&s.partition, &batch, now));
            if let Err(e) = appended {
                // Memory has forgotten these offsets already; a reload brings them back
                // from the log, and the first check after it expires them again.
                tracing::warn!(
                    partition = s.partition.index,
                    "cannot write expired-offset tombstones: {e}"
                );
            }
        }
    }
}
