//! One partition replica on this broker: its log, its role (leader or follower, as the
//! metadata image says), its high watermark and its flusher.
//!
//! Locks: `replication` (role and the leader's follower tracking) before `log`, never
//! the other way; both are held only for in-memory work and page-cache writes. Fsync
//! and fetch reads run outside them through the storage crate's plans. Durability is
//! group commit: appends mark the partition dirty, one flusher task per partition
//! fsyncs everything appended so far in one go, then advances the durable offset.
//!
//! The high watermark (what consumers see, and what acks=all waits for) is, on a
//! leader, computed by [`LeaderState`] from the followers' fetch offsets and this
//! broker's own acknowledgeable offset: its durable offset under
//! `log.flush.policy=always` (so the HW only covers bytes fsynced on every in-sync
//! replica; followers fsync before they fetch again), its log end under `interval`.
//! On a follower it is the leader's, capped at the local log end.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use keel_storage::{
    AppendError, AppendInfo, CleanerLimits, CompactionPlan, CompactionResult, CompactionStats,
    LeaderAppend, Log, LogConfig, LogError, ReadError, ReadPlan,
};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::leader_state::LeaderState;
use crate::config::FlushPolicy;

/// How long a leader waits before proposing an ISR change again after one failed.
pub const ISR_RETRY_BACKOFF_MS: i64 = 500;

/// Exit status when an fsync fails: the log directory can no longer be trusted.
pub const EXIT_STATUS_FSYNC_FAILED: i32 = 74;

/// This broker's role for the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leader in `epoch`.
    Leader { epoch: i32 },
    /// Follower of `leader` (-1: none elected) in `epoch`.
    Follower { leader: i32, epoch: i32 },
}

impl Role {
    /// The leader epoch of the role.
    pub fn epoch(&self) -> i32 {
        match self {
            Role::Leader { epoch } | Role::Follower { epoch, .. } => *epoch,
        }
    }
}

struct Replication {
    role: Role,
    /// Present while this broker leads.
    leader: Option<LeaderState>,
    /// min.insync.replicas of the topic.
    min_insync_replicas: usize,
}

/// Why an acks=all wait ended without an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The high watermark reached the offset.
    Acked,
    /// This broker stopped leading (or the partition was removed): the write may or may
    /// not survive under the new leader.
    NotLeader,
    /// The deadline passed; `below_min_isr` tells whether the ISR is too small.
    TimedOut { below_min_isr: bool },
}

/// A partition replica hosted here.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub index: i32,
    node_id: i32,
    log: Mutex<Log>,
    replication: RwLock<Replication>,
    high_watermark: watch::Sender<i64>,
    log_start_offset: AtomicI64,
    log_end_offset: AtomicI64,
    policy: FlushPolicy,
    lag_time_max_ms: i64,
    /// Offset below which every byte is fsynced.
    durable: watch::Sender<i64>,
    /// Bumped on every role or leader-epoch change; acks=all waiters give up on it.
    generation: watch::Sender<u64>,
    /// Woken when the high watermark or log start moves (consumer long polls).
    changed: Notify,
    /// Woken when the log end moves (follower long polls on the leader).
    appended: Notify,
    /// Woken by appends; the flusher waits on it.
    dirty: Notify,
    stopped: AtomicBool,
    stop: Notify,
}

/// What a fetch read gets: the data plan and the offsets a response reports.
pub struct PartitionRead {
    /// Bytes to send, read outside the lock.
    pub plan: ReadPlan,
    /// High watermark when the plan was made.
    pub high_watermark: i64,
    /// Log start offset when the plan was made.
    pub log_start_offset: i64,
    /// Log end offset when the plan was made.
    pub log_end_offset: i64,
}

/// Settings a partition runs with that come from configs.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaSettings {
    /// This broker.
    pub node_id: i32,
    /// Durability policy.
    pub policy: FlushPolicy,
    /// replica.lag.time.max.ms.
    pub lag_time_max_ms: i64,
    /// min.insync.replicas of the topic.
    pub min_insync_replicas: usize,
}

impl Partition {
    /// Wraps an opened log, with no role yet: the replica manager then calls
    /// `become_leader` or `become_follower` with the partition's state from the image.
    /// The high watermark starts at `initial_high_watermark` (the checkpointed one),
    /// within the log; the flusher is kicked at once to cover any recovered tail.
    pub fn new(
        topic: String,
        topic_id: Uuid,
        index: i32,
        log: Log,
        initial_high_watermark: i64,
        settings: ReplicaSettings,
    ) -> Arc<Self> {
        let flushed = log.flushed_offset();
        let end = log.log_end_offset();
        let hw = initial_high_watermark.clamp(log.log_start_offset(), end);
        let p = Arc::new(Partition {
            topic,
            topic_id,
            index,
            node_id: settings.node_id,
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log_end_offset: AtomicI64::new(end),
            log: Mutex::new(log),
            replication: RwLock::new(Replication {
                role: Role::Follower {
                    leader: -1,
                    epoch: -1,
                },
                leader: None,
                min_insync_replicas: settings.min_insync_replicas,
            }),
            high_watermark: watch::Sender::new(hw),
            policy: settings.policy,
            lag_time_max_ms: settings.lag_time_max_ms,
            durable: watch::Sender::new(flushed),
            generation: watch::Sender::new(0),
            changed: Notify::new(),
            appended: Notify::new(),
            dirty: Notify::new(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        });
        p.dirty.notify_one();
        p
    }

    /// The log, locked. Hold it only for in-memory work.
    pub fn log(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock means a panic mid-append; the process aborts on panic
        // (panic = "abort" in release), so poisoning only happens in tests.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn repl(&self) -> RwLockReadGuard<'_, Replication> {
        self.replication.read().unwrap_or_else(|e| e.into_inner())
    }

    fn repl_mut(&self) -> RwLockWriteGuard<'_, Replication> {
        self.replication.write().unwrap_or_else(|e| e.into_inner())
    }

    /// This broker's role.
    pub fn role(&self) -> Role {
        self.repl().role
    }

    /// Whether this broker leads the partition.
    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Role::Leader { .. })
    }

    /// Current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.role().epoch()
    }

    /// How long (ms) this broker has led the partition in its current leader epoch, at
    /// `now_ms`; `None` unless it leads.
    pub fn leading_for_ms(&self, now_ms: i64) -> Option<i64> {
        self.repl()
            .leader
            .as_ref()
            .map(|state| now_ms.saturating_sub(state.started_ms))
    }

    /// Where this broker's current leader epoch starts in the log; `None` unless it
    /// leads.
    pub fn epoch_start_offset(&self) -> Option<i64> {
        self.repl()
            .leader
            .as_ref()
            .map(|state| state.epoch_start_offset)
    }

    /// The leader's state, for tests and status.
    pub fn leader_state(&self) -> Option<LeaderState> {
        self.repl().leader.clone()
    }

    /// The newest leader epoch this replica knows of, if `epoch` is older than it.
    ///
    /// Leader epochs only grow, so a role in an older epoch comes from an image older
    /// than what this replica has seen: a broker replaying its metadata log after a
    /// restart passes through every image since its last applied one. Taking such a
    /// role would be wrong twice over: it could make this broker lead (or follow) a
    /// partition in an epoch that is over, and a leader records its epoch's start in
    /// the epoch cache, where an old epoch at today's log end erases every later entry
    /// (the cache then no longer describes the log's batches, and truncation against it
    /// goes astray). The newest known epoch is the current role's, or the latest epoch
    /// any batch of the log carries (after a restart the role is not known yet).
    fn stale(&self, epoch: i32, role: Role) -> Option<i32> {
        let known = role.epoch().max(self.log().latest_epoch().unwrap_or(-1));
        (epoch < known).then_some(known)
    }

    /// Becomes (or stays) leader in `epoch` with the committed `replicas` and `isr`.
    /// A role in an epoch older than one this replica already knows is ignored.
    /// A new leadership records its epoch's start offset in the epoch cache, so a
    /// follower asking about an older epoch learns where it ended.
    pub fn become_leader(
        &self,
        epoch: i32,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) {
        let mut repl = self.repl_mut();
        if let Some(known) = self.stale(epoch, repl.role) {
            tracing::debug!(topic = %self.topic, partition = self.index, epoch, known, "ignoring leadership in a stale epoch");
            return;
        }
        if let (Role::Leader { epoch: current }, Some(state)) = (repl.role, repl.leader.as_mut()) {
            if current == epoch {
                state.apply_committed(partition_epoch, replicas, isr, now_ms);
                drop(repl);
                self.recompute_high_watermark();
                return;
            }
        }
        let end = {
            let mut log = self.log();
            let end = log.log_end_offset();
            if let Err(e) = log.assign_epoch_start(epoch, end) {
                tracing::warn!(topic = %self.topic, partition = self.index, "cannot record epoch {epoch} start: {e}");
            }
            log.log_end_offset()
        };
        let min_isr = repl.min_insync_replicas;
        repl.role = Role::Leader { epoch };
        repl.leader = Some(LeaderState::new(
            self.node_id,
            epoch,
            partition_epoch,
            replicas,
            isr,
            min_isr,
            self.lag_time_max_ms,
            end,
            self.high_watermark(),
            now_ms,
        ));
        // Bumped before the new role is visible to appends: a produce that appended in
        // this leadership must not take this change for the loss of it.
        self.generation.send_modify(|g| *g += 1);
        drop(repl);
        tracing::info!(topic = %self.topic, partition = self.index, epoch, "became leader");
        self.recompute_high_watermark();
        // Fetches parked under the previous epoch learn of the new one now.
        self.changed.notify_waiters();
    }

    /// Becomes (or stays) a follower of `leader` in `epoch`. Returns whether anything
    /// changed (the fetcher must then truncate before fetching). A role in an epoch
    /// older than one this replica already knows is ignored.
    pub fn become_follower(&self, leader: i32, epoch: i32) -> bool {
        let mut repl = self.repl_mut();
        if let Some(known) = self.stale(epoch, repl.role) {
            tracing::debug!(topic = %self.topic, partition = self.index, leader, epoch, known, "ignoring a role in a stale epoch");
            return false;
        }
        let role = Role::Follower { leader, epoch };
        if repl.role == role {
            return false;
        }
        repl.role = role;
        repl.leader = None;
        self.generation.send_modify(|g| *g += 1);
        drop(repl);
        tracing::info!(topic = %self.topic, partition = self.index, leader, epoch, "became follower");
        self.changed.notify_waiters();
        true
    }

    /// Sets min.insync.replicas (a topic config change).
    pub fn set_min_insync_replicas(&self, n: usize) {
        let mut repl = self.repl_mut();
        repl.min_insync_replicas = n;
        if let Some(state) = repl.leader.as_mut() {
            state.min_insync_replicas = n;
        }
    }

    /// Offset below which records are visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.load(Ordering::Acquire)
    }

    /// Offset below which every byte is on disk.
    pub fn durable_offset(&self) -> i64 {
        *self.durable.borrow()
    }

    /// What this broker contributes to the high watermark.
    fn acknowledgeable_offset(&self) -> i64 {
        match self.policy {
            FlushPolicy::Always => self.durable_offset().min(self.log_end_offset()),
            FlushPolicy::Interval => self.log_end_offset(),
        }
    }

    /// Applies a topic config change.
    pub fn set_config(&self, config: LogConfig) {
        self.log().set_config(config);
    }

    /// Whether an acks=all produce may be appended now: this broker leads and the ISR
    /// has at least min.insync.replicas members.
    pub fn has_min_insync(&self) -> bool {
        self.repl()
            .leader
            .as_ref()
            .is_some_and(LeaderState::has_min_insync)
    }

    /// Appends a producer's batches as leader, straight from the caller's bytes (not
    /// copied, not modified). Does not wait for fsync or followers. Returns `None` if
    /// this broker is not the leader.
    ///
    /// # Errors
    /// Invalid batches, producer-state violations and I/O errors from the log.
    pub fn append_as_leader(
        &self,
        batches: &[u8],
        now_ms: i64,
    ) -> Option<Result<LeaderAppend, AppendError>> {
        let repl = self.repl();
        let Role::Leader { epoch } = repl.role else {
            return None;
        };
        let mut log = self.log();
        let result = log.append_as_leader_shared(batches, epoch, now_ms);
        self.log_end_offset
            .store(log.log_end_offset(), Ordering::Release);
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        drop(log);
        drop(repl);
        if result.is_ok() {
            self.appended.notify_waiters();
            self.dirty.notify_one();
            if self.policy == FlushPolicy::Interval {
                self.recompute_high_watermark();
            }
        }
        Some(result)
    }

    /// Appends batches fetched from the leader (offsets already assigned), if this
    /// broker still follows in `epoch`. `None` if the role changed meanwhile.
    ///
    /// # Errors
    /// Batches that do not continue the log, corrupt batches, I/O errors.
    pub fn append_as_follower(
        &self,
        epoch: i32,
        batches: &[u8],
        now_ms: i64,
    ) -> Option<Result<AppendInfo, AppendError>> {
        let repl = self.repl();
        if !matches!(repl.role, Role::Follower { epoch: e, .. } if e == epoch) {
            return None;
        }
        let mut log = self.log();
        let result = log.append_as_follower(batches, now_ms);
        self.log_end_offset
            .store(log.log_end_offset(), Ordering::Release);
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        drop(log);
        drop(repl);
        self.dirty.notify_one();
        Some(result)
    }

    /// Truncates a follower's log to `offset` (a divergent tail, found through
    /// OffsetForLeaderEpoch). The high watermark never exceeds the log end.
    ///
    /// # Errors
    /// I/O errors from the log.
    pub fn truncate_to(&self, epoch: i32, offset: i64) -> Result<(), LogError> {
        let repl = self.repl();
        if !Self::follows_in(&repl, epoch) {
            return Ok(());
        }
        let mut log = self.log();
        if offset >= log.log_end_offset() {
            // Nothing to cut but maybe an epoch assigned at the log end (see
            // `Log::truncate_to`).
            return log.truncate_to(offset);
        }
        tracing::info!(
            topic = %self.topic,
            partition = self.index,
            from = log.log_end_offset(),
            to = offset,
            "truncating divergent tail"
        );
        log.truncate_to(offset)?;
        self.after_truncation(&log);
        Ok(())
    }

    /// Empties a follower's log and restarts it at `offset` (the leader's log start
    /// is past everything this follower has).
    ///
    /// # Errors
    /// I/O errors from the log.
    pub fn truncate_fully_and_start_at(&self, epoch: i32, offset: i64) -> Result<(), LogError> {
        let repl = self.repl();
        if !Self::follows_in(&repl, epoch) {
            return Ok(());
        }
        let mut log = self.log();
        log.truncate_fully_and_start_at(offset)?;
        self.after_truncation(&log);
        Ok(())
    }

    fn after_truncation(&self, log: &Log) {
        let end = log.log_end_offset();
        self.log_end_offset.store(end, Ordering::Release);
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        self.durable
            .send_modify(|d| *d = (*d).min(log.flushed_offset()));
        self.high_watermark.send_if_modified(|hw| {
            let moved = *hw > end || *hw < log.log_start_offset();
            *hw = (*hw).clamp(log.log_start_offset(), end);
            moved
        });
    }

    /// Latest leader epoch in the local log and the end offset of a given epoch
    /// (Kafka's OffsetForLeaderEpoch semantics).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.log().end_offset_for_epoch(epoch)
    }

    /// Where a follower's log parts from this leader's, judged from its fetch: its last
    /// fetched epoch ends here at an earlier epoch or before its fetch offset (Kafka's
    /// diverging-epoch check). An epoch this log does not know at all, newer than all of
    /// its own, also diverges, answered `(-1, -1)`: the follower holds records of a
    /// later leader, so its fetch offset says nothing about this log. (Found by
    /// keel-faults: a follower's fetcher, reconnecting across a heal, sent an old
    /// leader the log end it had reached under the new one, and the old leader counted
    /// it as replication of its own divergent records and acknowledged them.)
    pub fn follower_divergence(
        &self,
        last_fetched_epoch: i32,
        fetch_offset: i64,
    ) -> Option<(i32, i64)> {
        if last_fetched_epoch < 0 {
            return None;
        }
        let (epoch, end) = self.end_offset_for_epoch(last_fetched_epoch);
        if epoch < 0 {
            return Some((epoch, end));
        }
        (epoch < last_fetched_epoch || end < fetch_offset).then_some((epoch, end))
    }

    /// Whether this replica follows in `epoch` (what the fetcher's work was for).
    fn follows_in(repl: &Replication, epoch: i32) -> bool {
        matches!(repl.role, Role::Follower { epoch: e, .. } if e == epoch)
    }

    /// A follower's high watermark: the leader's (of `epoch`), capped at the local log
    /// end. Ignored unless this replica still follows in `epoch`: a fetch answered
    /// after this broker became leader (found by keel-faults: a delayed answer of the
    /// old, partitioned leader) must not set the leader's high watermark, which would
    /// then go down and hide acknowledged records from consumers.
    pub fn update_follower_high_watermark(&self, epoch: i32, leader_high_watermark: i64) {
        let repl = self.repl();
        if !Self::follows_in(&repl, epoch) {
            tracing::info!(topic = %self.topic, partition = self.index, epoch, high_watermark = leader_high_watermark, "ignoring a fetched high watermark: no longer following in that epoch");
            return;
        }
        let hw = leader_high_watermark.min(self.log_end_offset());
        let moved = self.high_watermark.send_if_modified(|cur| {
            let moved = *cur != hw;
            *cur = hw;
            moved
        });
        if moved {
            self.changed.notify_waiters();
        }
    }

    /// Records a follower's fetch (the leader side of replication). Returns the ISR
    /// change to propose to the controller, if one is due; it is then pending.
    pub fn on_follower_fetch(
        &self,
        follower: i32,
        fetch_offset: i64,
        follower_log_start: i64,
        now_ms: i64,
    ) -> Option<IsrProposal> {
        let (proposal, start_moved) = {
            let mut repl = self.repl_mut();
            let state = repl.leader.as_mut()?;
            let end = self.log_end_offset();
            state.on_follower_fetch(follower, fetch_offset, end, now_ms);
            let start_moved = state.record_follower_log_start(follower, follower_log_start);
            (Self::propose_isr_change(state, end, now_ms), start_moved)
        };
        self.recompute_high_watermark();
        if start_moved {
            self.changed.notify_waiters();
        }
        proposal
    }

    /// The low watermark if this broker leads (see [`LeaderState::low_watermark`]).
    pub fn low_watermark(&self) -> Option<i64> {
        let repl = self.repl();
        repl.leader
            .as_ref()
            .map(|state| state.low_watermark(self.log_start_offset()))
    }

    /// Checks for followers that stopped fetching (called periodically on leaders).
    pub fn maybe_shrink_isr(&self, now_ms: i64) -> Option<IsrProposal> {
        let mut repl = self.repl_mut();
        let state = repl.leader.as_mut()?;
        Self::propose_isr_change(state, self.log_end_offset(), now_ms)
    }

    fn propose_isr_change(
        state: &mut LeaderState,
        leader_end: i64,
        now_ms: i64,
    ) -> Option<IsrProposal> {
        let new_isr = state.isr_change(leader_end, now_ms)?;
        state.pending_isr = Some(new_isr.clone());
        Some(IsrProposal {
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr,
        })
    }

    /// The controller refused or could not be reached: forget the pending change so a
    /// check after `ISR_RETRY_BACKOFF_MS` proposes again (against the then-current state).
    pub fn isr_change_failed(&self, proposal: &IsrProposal, now_ms: i64) {
        let mut repl = self.repl_mut();
        if let Some(state) = repl.leader.as_mut() {
            if state.pending_isr.as_ref() == Some(&proposal.new_isr) {
                state.pending_isr = None;
                state.isr_retry_after_ms = now_ms + ISR_RETRY_BACKOFF_MS;
            }
        }
    }

    /// Recomputes the leader's high watermark and wakes whoever waits on it.
    pub fn recompute_high_watermark(&self) {
        let own = self.acknowledgeable_offset();
        // The leader's own value, not only a move of it: the published high watermark
        // must never stay below what the leader state has computed.
        let moved = {
            let mut repl = self.repl_mut();
            match repl.leader.as_mut() {
                Some(state) => {
                    state.update_high_watermark(own);
                    Some(state.high_watermark).filter(|hw| *hw > self.high_watermark())
                }
                None => None,
            }
        };
        if let Some(hw) = moved {
            self.high_watermark.send_if_modified(|cur| {
                let moved = hw > *cur;
                *cur = (*cur).max(hw);
                moved
            });
            self.changed.notify_waiters();
        }
    }

    /// Waits until the high watermark covers `offset` (exclusive), this broker stops
    /// leading, or `deadline` passes.
    pub async fn wait_acknowledgeable(
        &self,
        offset: i64,
        deadline: tokio::time::Instant,
    ) -> AckOutcome {
        let mut hw = self.high_watermark.subscribe();
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        if !self.is_leader() || self.is_stopped() {
            return AckOutcome::NotLeader;
        }
        let outcome = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                r = hw.wait_for(|h| *h >= offset) => if r.is_ok() { AckOutcome::Acked } else { AckOutcome::NotLeader },
                _ = generation.changed() => AckOutcome::NotLeader,
            }
        })
        .await;
        match outcome {
            Ok(o) => o,
            Err(_) => AckOutcome::TimedOut {
                below_min_isr: !self.has_min_insync(),
            },
        }
    }

    /// Plans a consumer read, bounded by the high watermark.
    ///
    /// # Errors
    /// `ReadError::OffsetOutOfRange` and I/O errors.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<PartitionRead, ReadError> {
        let hw = self.high_watermark();
        self.read_below(offset, max_bytes, min_one_batch, hw)
    }

    /// Plans a follower's read, bounded by the log end.
    ///
    /// # Errors
    /// `ReadError::OffsetOutOfRange` and I/O errors.
    pub fn read_for_replica(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<PartitionRead, ReadError> {
        self.read_below(offset, max_bytes, true, i64::MAX)
    }

    fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        bound: i64,
    ) -> Result<PartitionRead, ReadError> {
        let hw = self.high_watermark();
        let log = self.log();
        let end = log.log_end_offset();
        let plan = log.read(offset, max_bytes, bound.min(end), min_one_batch)?;
        Ok(PartitionRead {
            plan,
            high_watermark: hw,
            log_start_offset: log.log_start_offset(),
            log_end_offset: end,
        })
    }

    /// A future that completes on the next high-watermark or log-start change.
    /// Create it before checking for data so that no change is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// A future that completes on the next append (follower long polls).
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Moves the log start offset (DeleteRecords on the leader, or a follower following
    /// the leader's log start), persisted before returning.
    ///
    /// # Errors
    /// Offsets beyond the log end, and I/O errors.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, LogError> {
        let mut log = self.log();
        let start = log.delete_records_before(offset)?;
        self.log_start_offset.store(start, Ordering::Release);
        drop(log);
        self.changed.notify_waiters();
        Ok(start)
    }

    /// Runs retention (never past the high watermark) and time-based rolls.
    pub fn housekeeping(&self, now_ms: i64) {
        let hw = self.high_watermark();
        let mut log = self.log();
        if let Err(e) = log.maybe_roll(now_ms) {
            tracing::warn!(topic = %self.topic, partition = self.index, "roll failed: {e}");
        }
        match log.enforce_retention_below(now_ms, hw) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                topic = %self.topic,
                partition = self.index,
                "retention deleted {n} segments, log start now {}",
                log.log_start_offset()
            ),
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, "retention failed: {e}")
            }
        }
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        drop(log);
        self.changed.notify_waiters();
        self.dirty.notify_one();
    }

    /// Whether the topic's cleanup.policy includes `compact`.
    pub fn is_compacted(&self) -> bool {
        self.log().config().cleanup_policy.compact
    }

    /// Plans a compaction of this replica's log if one is due, never touching offsets
    /// at or past the high watermark (the leader's, or on a follower the leader's capped
    /// at its log end). Each replica compacts its own log.
    ///
    /// # Errors
    /// I/O errors reading batch headers.
    pub fn compaction_plan(
        &self,
        now_ms: i64,
        limits: &CleanerLimits,
    ) -> Result<Option<CompactionPlan>, LogError> {
        let hw = self.high_watermark();
        self.log().compaction_plan(now_ms, hw, limits)
    }

    /// Installs an executed compaction and wakes the flusher, which makes the swapped
    /// directory entries durable.
    ///
    /// # Errors
    /// The compaction's own error, or I/O errors installing it.
    pub fn compaction_completed(
        &self,
        result: CompactionResult,
    ) -> Result<Option<CompactionStats>, LogError> {
        let installed = self.log().compaction_completed(result);
        self.dirty.notify_one();
        installed
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops the flusher after a last flush, and wakes every waiter.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.dirty.notify_one();
        self.generation.send_modify(|g| *g += 1);
        self.changed.notify_waiters();
        self.appended.notify_waiters();
    }

    /// Fsyncs everything appended so far, then recomputes the high watermark. A failed
    /// fsync stops the process: the kernel may have dropped the dirty pages, so a retry
    /// could report success for data that is gone.
    pub async fn flush_now(self: &Arc<Self>) {
        loop {
            let Some(plan) = self.log().flush_plan() else {
                return;
            };
            let result = tokio::task::spawn_blocking(move || plan.execute().map(|()| plan)).await;
            let plan = match result {
                Ok(Ok(plan)) => plan,
                Ok(Err(e)) => fatal_fsync(&self.topic, self.index, &e.to_string()),
                Err(e) => fatal_fsync(&self.topic, self.index, &e.to_string()),
            };
            let flushed = {
                let mut log = self.log();
                log.flush_completed(&plan);
                log.flushed_offset()
            };
            self.durable.send_if_modified(|d| {
                let moved = flushed > *d;
                *d = (*d).max(flushed);
                moved
            });
            self.recompute_high_watermark();
        }
    }

    /// The flusher: under `always` it runs whenever appends arrive (group commit);
    /// under `interval` every `interval`.
    pub async fn run_flusher(self: Arc<Self>, interval: Duration) {
        loop {
            if self.is_stopped() {
                self.flush_now().await;
                return;
            }
            match self.policy {
                FlushPolicy::Always => self.dirty.notified().await,
                FlushPolicy::Interval => {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = self.stop.notified() => {}
                    }
                }
            }
            self.flush_now().await;
        }
    }
}

/// An ISR change the leader wants the controller to make (AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    /// The leader's epoch.
    pub leader_epoch: i32,
    /// The partition epoch the change is based on.
    pub partition_epoch: i32,
    /// The proposed ISR.
    pub new_isr: Vec<i32>,
}

fn fatal_fsync(topic: &str, partition: i32, error: &str) -> ! {
    tracing::error!(
        topic,
        partition,
        "fsync failed: {error}; stopping the broker, the log directory cannot be trusted"
    );
    eprintln!("keel: fatal: fsync of {topic}-{partition} failed: {error}");
    std::process::exit(EXIT_STATUS_FSYNC_FAILED);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use keel_storage::fs::{FaultyFs, Filesystem};
    use keel_storage::testing::BatchBuilder;

    use super::*;

    const NODE: i32 = 1;

    fn open(fs: &Arc<FaultyFs>) -> Arc<Partition> {
        let fs: Arc<dyn Filesystem> = fs.clone();
        let (log, _) =
            Log::open(fs, Path::new("/data/t-0"), LogConfig::default(), 0, 0).expect("open");
        Partition::new(
            "t".into(),
            Uuid::nil(),
            0,
            log,
            0,
            ReplicaSettings {
                node_id: NODE,
                policy: FlushPolicy::Always,
                lag_time_max_ms: 10_000,
                min_insync_replicas: 1,
            },
        )
    }

    fn epochs(p: &Partition) -> Vec<(i32, i64)> {
        p.log()
            .epoch_entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn a_follower_naming_an_epoch_newer_than_the_leaders_diverges() {
        let fs = Arc::new(FaultyFs::new());
        let p = open(&fs);
        p.become_leader(4, 2, vec![NODE, 2], vec![NODE, 2], 0);
        let batch = BatchBuilder::new(10, 10).build();
        p.append_as_leader(&batch, 0)
            .expect("leader")
            .expect("append");
        assert_eq!(p.follower_divergence(-1, 3), None, "no epoch named");
        assert_eq!(p.follower_divergence(4, 10), None, "caught up in epoch 4");
        assert_eq!(
            p.follower_divergence(4, 12),
            Some((4, 10)),
            "past epoch 4's end"
        );
        assert_eq!(
            p.follower_divergence(5, 12),
            Some((-1, -1)),
            "records of a later leader: the fetch offset must not count"
        );
    }

    #[test]
    fn a_fetch_answer_of_an_older_epoch_leaves_a_new_leaders_high_watermark_alone() {
        let fs = Arc::new(FaultyFs::new());
        let p = open(&fs);
        assert!(p.become_follower(2, 3));
        let batch = BatchBuilder::new(10, 10)
            .base_offset(0)
            .leader_epoch(3)
            .build();
        p.append_as_follower(3, &batch, 0)
            .expect("follower")
            .expect("append");
        p.update_follower_high_watermark(3, 10);
        assert_eq!(p.high_watermark(), 10);
        p.become_leader(4, 2, vec![NODE, 2], vec![NODE, 2], 0);
        // The old leader's answer to a fetch sent before the leadership change.
        p.update_follower_high_watermark(3, 4);
        assert_eq!(
            p.high_watermark(),
            10,
            "a leader's high watermark never goes down"
        );
        p.truncate_to(3, 2).expect("ignored");
        assert_eq!(
            p.log_end_offset(),
            10,
            "nor does a stale truncation cut its log"
        );
        // A follower of the current epoch does follow its leader's high watermark.
        assert!(p.become_follower(2, 5));
        p.update_follower_high_watermark(5, 7);
        assert_eq!(p.high_watermark(), 7);
    }

    /// What a broker restarting with a stale metadata image goes through: replaying
    /// old images, it is told to lead or follow in epochs its log is already past.
    #[test]
    fn roles_in_epochs_older_than_the_log_knows_are_ignored_and_leave_the_epoch_cache_alone() {
        let fs = Arc::new(FaultyFs::new());
        let p = open(&fs);
        assert!(p.become_follower(2, 3));
        let batch = BatchBuilder::new(5, 10)
            .base_offset(0)
            .leader_epoch(3)
            .build();
        p.append_as_follower(3, &batch, 0)
            .expect("follower")
            .expect("append");
        let batch = BatchBuilder::new(5, 10)
            .base_offset(5)
            .leader_epoch(4)
            .build();
        p.append_as_follower(3, &batch, 0)
            .expect("follower")
            .expect("append");
        assert_eq!(epochs(&p), vec![(3, 0), (4, 5)]);
        // A stale image of this same process: ignored.
        p.become_leader(2, 1, vec![NODE, 2], vec![NODE, 2], 0);
        assert!(!p.become_follower(3, 1));
        assert_eq!(
            p.role(),
            Role::Follower {
                leader: 2,
                epoch: 3
            }
        );
        drop(p);

        // A restart: the role is unknown, the log says epoch 4 exists.
        let p = open(&fs);
        assert_eq!(epochs(&p), vec![(3, 0), (4, 5)]);
        p.become_leader(1, 1, vec![NODE, 2], vec![NODE, 2], 0);
        assert!(
            !p.is_leader(),
            "a leadership in epoch 1 of a log at epoch 4"
        );
        assert!(!p.become_follower(2, 3));
        assert_eq!(
            epochs(&p),
            vec![(3, 0), (4, 5)],
            "the cache still describes the log"
        );
        // The current epoch applies as usual, and a newer one after it.
        assert!(p.become_follower(2, 4));
        p.become_leader(5, 2, vec![NODE, 2], vec![NODE, 2], 0);
        assert!(p.is_leader());
        assert_eq!(epochs(&p), vec![(3, 0), (4, 5), (5, 10)]);
    }
}
