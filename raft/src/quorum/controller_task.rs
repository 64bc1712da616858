//! The active controller: the one task that owns the pure controller on the leader.
//!
//! Requests are handled one at a time, in arrival order, against a *speculative* image: the
//! committed image plus the records of every request this controller already proposed in
//! its current term (so two CreateTopics for one name cannot both succeed, even while the
//! first is not yet committed). A request's records are proposed as ONE log entry without
//! waiting for earlier proposals to commit (pipelining); its caller is answered once that
//! entry is committed and applied. A request that produces no records (an error, a
//! validate-only request, most heartbeats) is answered once every earlier proposal has
//! committed, because its answer may depend on them.
//!
//! The speculative image is rebuilt from the committed image whenever this node starts a
//! new term as leader or a proposal fails (which means leadership was lost): first the
//! proposals of the old term are waited out, then a linearizable read makes sure the
//! committed image holds everything committed before this term. Becoming active also
//! starts every broker's session afresh and, in a brand-new cluster, proposes the cluster
//! id before anything else.
//!
//! Every [`CONTROLLER_TICK_INTERVAL_MS`] the task checks its leadership and, while active,
//! fences brokers whose sessions expired ([`controller::fence_expired_brokers`]) and,
//! every `leader_imbalance_check_interval_ms` when `auto_leader_rebalance_enable` is on,
//! gives leaderships back to preferred replicas
//! ([`controller::preferred_leader_elections`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::RaftError;
use openraft::ServerState;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::types::NodeId;
use super::types::Raft;
use super::QuorumError;
use crate::controller;
use crate::controller::BrokerSessions;
use crate::controller::ControllerConfig;
use crate::controller::ControllerContext;
use crate::controller::ControllerRequest;
use crate::controller::ControllerResponse;
use crate::image::MetadataImage;
use crate::records::MetadataBatch;
use crate::records::MetadataRecord;

/// Most proposals the controller may have in the log, not yet committed.
pub(crate) const MAX_IN_FLIGHT_PROPOSALS: u32 = 1024;
/// Longest the controller waits, when it starts a term, for the old term's proposals to
/// settle and for a linearizable read of the committed image.
pub(crate) const REBASE_TIMEOUT_MS: u64 = 10_000;
/// How often the controller task checks leadership and broker sessions.
pub const CONTROLLER_TICK_INTERVAL_MS: u64 = 250;

/// The answer to a request and the log index up to which the image must be applied for a
/// reader to see its effects.
pub(crate) type Answer = (ControllerResponse, u64);

pub(crate) type Reply = oneshot::Sender<Result<Answer, QuorumError>>;

/// One request waiting for the controller.
pub(crate) struct Job {
    pub req: ControllerRequest,
    pub reply: Reply,
}

/// Whether a proposal committed (and at which log index): `None` while pending.
type Outcome = watch::Receiver<Option<Result<u64, QuorumError>>>;

struct Speculative {
    image: MetadataImage,
    term: u64,
}

pub(crate) struct ControllerTask {
    node_id: NodeId,
    raft: Raft,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    config: ControllerConfig,
    /// The cluster id this node was configured with, proposed if the cluster has none.
    cluster_id: Option<String>,
    spec: Option<Speculative>,
    /// Shared with commit waiters, which note the log index of committed registrations.
    sessions: Arc<Mutex<BrokerSessions>>,
    in_flight: Arc<Semaphore>,
    /// The outcome of the latest proposal, for answers that depend on it.
    last_proposal: Option<Outcome>,
    /// Bumped by a waiter whose proposal failed; the speculative image is then stale.
    failures: Arc<AtomicU64>,
    failures_seen: u64,
    /// When the last preferred-leader rebalance ran (`None`: not since this task started;
    /// the first one then runs an interval later).
    last_rebalance_ms: Option<i64>,
}

fn fatal_to_error(f: &Fatal<NodeId>) -> QuorumError {
    match f {
        Fatal::StorageError(e) => QuorumError::Storage(e.to_string()),
        Fatal::Panicked => QuorumError::Storage("the Raft core panicked".to_string()),
        Fatal::Stopped => QuorumError::ShuttingDown,
    }
}

/// The controller's clock: milliseconds on a monotonic clock (only differences matter, so
/// a wall-clock jump cannot fence every broker at once).
fn now_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn lock_sessions(sessions: &Mutex<BrokerSessions>) -> std::sync::MutexGuard<'_, BrokerSessions> {
    sessions
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new cluster id: 16 random bytes in URL-safe base64 without padding (22 characters),
/// the form Kafka uses.
pub(crate) fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

impl ControllerTask {
    pub(crate) fn new(
        node_id: NodeId,
        raft: Raft,
        image_rx: watch::Receiver<Arc<MetadataImage>>,
        config: ControllerConfig,
        cluster_id: Option<String>,
    ) -> Self {
        ControllerTask {
            node_id,
            raft,
            image_rx,
            config,
            cluster_id,
            spec: None,
            sessions: Arc::new(Mutex::new(BrokerSessions::new())),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PROPOSALS as usize)),
            last_proposal: None,
            failures: Arc::new(AtomicU64::new(0)),
            failures_seen: 0,
            last_rebalance_ms: None,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(CONTROLLER_TICK_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        enum Event {
            Stop,
            Job(Job),
            Tick,
        }
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Event::Stop,
                job = jobs.recv() => match job {
                    Some(job) => Event::Job(job),
                    None => Event::Stop,
                },
                _ = tick.tick() => Event::Tick,
            };
            match event {
                Event::Stop => break,
                Event::Job(job) => self.handle(job).await,
                Event::Tick => self.on_tick().await,
            }
        }
        // Refuse whatever is still queued.
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            let _ = job.reply.send(Err(QuorumError::ShuttingDown));
        }
        tracing::info!("metadata controller task stopped");
    }

    /// Makes sure this node is the active controller with a speculative image of its
    /// current term.
    async fn ensure_active(&mut self) -> Result<(), QuorumError> {
        let (leader, term, is_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.current_term,
                m.state == ServerState::Leader,
            )
        };
        if leader != Some(self.node_id) || !is_leader {
            if self.spec.take().is_some() {
                lock_sessions(&self.sessions).clear();
                tracing::info!(term, "metadata controller no longer active");
            }
            return Err(QuorumError::NotController { leader_id: leader });
        }
        let failures = self.failures.load(Ordering::Acquire);
        if failures != self.failures_seen {
            self.failures_seen = failures;
            self.spec = None;
        }
        if self.spec.as_ref().is_some_and(|s| s.term != term) {
            self.spec = None;
        }
        if self.spec.is_none() {
            let spec = self.rebase(term).await?;
            lock_sessions(&self.sessions).activate(&spec.image, now_ms());
            let needs_cluster_id = spec.image.cluster_id.is_none();
            self.spec = Some(spec);
            if needs_cluster_id {
                let cluster_id = self.cluster_id.clone().unwrap_or_else(new_cluster_id);
                tracing::info!(%cluster_id, "new cluster: recording its cluster id");
                self.propose(vec![MetadataRecord::ClusterId { cluster_id }], None)
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self) {
        if self.ensure_active().await.is_err() {
            return;
        }
        let Some(spec) = self.spec.as_ref() else {
            return;
        };
        let records = {
            let mut sessions = lock_sessions(&self.sessions);
            controller::fence_expired_brokers(&spec.image, &self.config, &mut sessions, now_ms())
        };
        if !records.is_empty() {
            if let Err(e) = self.propose(records, None).await {
                tracing::warn!(error = %e, "could not propose the fencing of expired brokers");
            }
        }
        self.rebalance_leaders().await;
    }

    /// Moves leaderships back to preferred replicas once per
    /// `leader_imbalance_check_interval_ms`, when the config enables it.
    async fn rebalance_leaders(&mut self) {
        if !self.config.auto_leader_rebalance_enable {
            return;
        }
        let now = now_ms();
        let interval_ms =
            i64::try_from(self.config.leader_imbalance_check_interval_ms).unwrap_or(i64::MAX);
        match self.last_rebalance_ms {
            None => {
                self.last_rebalance_ms = Some(now);
                return;
            }
            Some(last) if now.saturating_sub(last) < interval_ms => return,
            Some(_) => self.last_rebalance_ms = Some(now),
        }
        let Some(spec) = self.spec.as_ref() else {
            return;
        };
        let records = {
            let sessions = lock_sessions(&self.sessions);
            controller::preferred_leader_elections(&spec.image, &sessions)
        };
        if records.is_empty() {
            return;
        }
        tracing::info!(
            partitions = records.len(),
            "moving leaderships back to preferred replicas"
        );
        if let Err(e) = self.propose(records, None).await {
            tracing::warn!(error = %e, "could not propose the preferred leader elections");
        }
    }

    async fn handle(&mut self, job: Job) {
        if let Err(e) = self.ensure_active().await {
            let _ = job.reply.send(Err(e));
            return;
        }
        let Some(spec) = self.spec.as_mut() else {
            let _ = job
                .reply
                .send(Err(QuorumError::NotController { leader_id: None }));
            return;
        };

        let req_name = job.req.name();
        // The context borrows non-Send closures; keep it out of any await.
        let (records, response) = {
            let mut new_uuid = Uuid::new_v4;
            let mut random = |n: u64| {
                if n == 0 {
                    0
                } else {
                    (Uuid::new_v4().as_u128() % u128::from(n)) as u64
                }
            };
            let mut ctx = ControllerContext {
                now_ms: now_ms(),
                new_uuid: &mut new_uuid,
                random: &mut random,
            };
            let mut sessions = lock_sessions(&self.sessions);
            controller::handle(&spec.image, &self.config, &mut sessions, &mut ctx, job.req)
        };

        if records.is_empty() {
            match self.last_proposal.clone() {
                None => {
                    let applied = self.image_rx.borrow().last_applied_index;
                    let _ = job.reply.send(Ok((response, applied)));
                }
                Some(mut outcome) => {
                    tokio::spawn(async move {
                        let settled = outcome.wait_for(|o| o.is_some()).await.map(|o| o.clone());
                        let answer = match settled {
                            Ok(Some(Ok(index))) => Ok((response, index)),
                            Ok(Some(Err(e))) => Err(e),
                            Ok(None) | Err(_) => Err(QuorumError::ShuttingDown),
                        };
                        let _ = job.reply.send(answer);
                    });
                }
            }
            return;
        }
        tracing::debug!(
            request = req_name,
            records = records.len(),
            "proposing metadata entry"
        );
        if let Err(e) = self.propose(records, Some((job.reply, response))).await {
            tracing::debug!(request = req_name, error = %e, "proposal failed");
        }
    }

    /// Proposes `records` as one log entry on top of the speculative image; `reply` (if
    /// any) is answered with the response once the entry is committed and applied, or
    /// with the error that prevented it.
    async fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        reply: Option<(Reply, ControllerResponse)>,
    ) -> Result<(), QuorumError> {
        let fail = |reply: Option<(Reply, ControllerResponse)>, e: QuorumError| {
            if let Some((reply, _)) = reply {
                let _ = reply.send(Err(e.clone()));
            }
            Err(e)
        };
        // Bound the proposals in flight before the speculative image takes the records.
        let permit = match self.in_flight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return fail(reply, QuorumError::ShuttingDown),
        };
        let Some(spec) = self.spec.as_mut() else {
            return fail(reply, QuorumError::NotController { leader_id: None });
        };
        for r in &records {
            spec.image.apply(r);
        }
        let registrations: Vec<(i32, i64)> = records
            .iter()
            .filter_map(|r| match r {
                MetadataRecord::RegisterBroker {
                    broker_id,
                    broker_epoch,
                    ..
                } => Some((*broker_id, *broker_epoch)),
                _ => None,
            })
            .collect();
        let committed = match self.raft.client_write_ff(MetadataBatch::new(records)).await {
            Ok(committed) => committed,
            Err(fatal) => {
                self.spec = None;
                return fail(reply, fatal_to_error(&fatal));
            }
        };
        let (outcome_tx, outcome_rx) = watch::channel(None);
        self.last_proposal = Some(outcome_rx);
        let failures = self.failures.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let result = match committed.await {
                Ok(Ok(written)) => {
                    let mut sessions = lock_sessions(&sessions);
                    for (broker_id, broker_epoch) in registrations {
                        sessions.registration_committed(
                            broker_id,
                            broker_epoch,
                            written.log_id.index,
                        );
                    }
                    Ok(written.log_id.index)
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(QuorumError::NotController {
                    leader_id: f.leader_id,
                }),
                Ok(Err(e)) => Err(QuorumError::Storage(e.to_string())),
                Err(_) => Err(QuorumError::ShuttingDown),
            };
            if result.is_err() {
                failures.fetch_add(1, Ordering::AcqRel);
            }
            outcome_tx.send_replace(Some(result.clone()));
            drop(permit);
            if let Some((reply, response)) = reply {
                let _ = reply.send(result.map(|index| (response, index)));
            }
        });
        Ok(())
    }

    /// Rebuilds the speculative image from the committed one at the start of a term.
    async fn rebase(&mut self, term: u64) -> Result<Speculative, QuorumError> {
        let timeout = Duration::from_millis(REBASE_TIMEOUT_MS);
        // Let proposals of an earlier term settle, so none of them is answered against an
        // image that no longer holds.
        match tokio::time::timeout(
            timeout,
            self.in_flight.acquire_many(MAX_IN_FLIGHT_PROPOSALS),
        )
        .await
        {
            Ok(Ok(all)) => drop(all),
            Ok(Err(_)) => return Err(QuorumError::ShuttingDown),
            Err(_) => return Err(QuorumError::Timeout),
        }
        self.last_proposal = None;
        self.failures_seen = self.failures.load(Ordering::Acquire);
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => return Err(QuorumError::Timeout),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(QuorumError::NotController {
                    leader_id: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                return Err(QuorumError::NotController { leader_id: None })
            }
            Ok(Err(RaftError::Fatal(f))) => return Err(fatal_to_error(&f)),
            Ok(Ok(_)) => {}
        }
        let committed = self.image_rx.borrow().clone();
        tracing::info!(
            term,
            applied_index = committed.last_applied_index,
            "metadata controller active"
        );
        Ok(Speculative {
            image: (*committed).clone(),
            term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_cluster_ids_are_22_url_safe_characters_and_distinct() {
        let a = new_cluster_id();
        let b = new_cluster_id();
        assert_eq!(a.len(), 22, "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }
}
