//! The active controller: the one task that owns the pure controller on the leader.
//!
//! Requests are handled one at a time, in arrival order, against a *speculative* image: the
//! committed image plus the records of every request this controller already proposed in
//! its current term (so two CreateTopics for one name cannot both succeed, even while the
//! first is not yet committed). A request's records are proposed as ONE log entry without
//! waiting for earlier proposals to commit (pipelining); its caller is answered once that
//! entry is committed and applied. A request that produces no records (an error, a
//! validate-only request) is answered once every earlier proposal has committed, because
//! its answer may depend on them.
//!
//! The speculative image is rebuilt from the committed image whenever this node starts a
//! new term as leader or a proposal fails (which means leadership was lost): first the
//! proposals of the old term are waited out, then a linearizable read makes sure the
//! committed image holds everything committed before this term.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

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
use crate::controller::ControllerConfig;
use crate::controller::ControllerContext;
use crate::controller::ControllerRequest;
use crate::controller::ControllerResponse;
use crate::image::MetadataImage;
use crate::records::MetadataBatch;

/// Most proposals the controller may have in the log, not yet committed.
pub(crate) const MAX_IN_FLIGHT_PROPOSALS: u32 = 1024;
/// Longest the controller waits, when it starts a term, for the old term's proposals to
/// settle and for a linearizable read of the committed image.
pub(crate) const REBASE_TIMEOUT_MS: u64 = 10_000;

pub(crate) type Reply = oneshot::Sender<Result<ControllerResponse, QuorumError>>;

/// One request waiting for the controller.
pub(crate) struct Job {
    pub req: ControllerRequest,
    pub reply: Reply,
}

/// Whether a proposal committed: `None` while pending.
type Outcome = watch::Receiver<Option<Result<(), QuorumError>>>;

struct Speculative {
    image: MetadataImage,
    term: u64,
}

pub(crate) struct ControllerTask {
    node_id: NodeId,
    raft: Raft,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    config: ControllerConfig,
    spec: Option<Speculative>,
    in_flight: Arc<Semaphore>,
    /// The outcome of the latest proposal, for answers that depend on it.
    last_proposal: Option<Outcome>,
    /// Bumped by a waiter whose proposal failed; the speculative image is then stale.
    failures: Arc<AtomicU64>,
    failures_seen: u64,
}

fn fatal_to_error(f: &Fatal<NodeId>) -> QuorumError {
    match f {
        Fatal::StorageError(e) => QuorumError::Storage(e.to_string()),
        Fatal::Panicked => QuorumError::Storage("the Raft core panicked".to_string()),
        Fatal::Stopped => QuorumError::ShuttingDown,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ControllerTask {
    pub(crate) fn new(
        node_id: NodeId,
        raft: Raft,
        image_rx: watch::Receiver<Arc<MetadataImage>>,
        config: ControllerConfig,
    ) -> Self {
        ControllerTask {
            node_id,
            raft,
            image_rx,
            config,
            spec: None,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PROPOSALS as usize)),
            last_proposal: None,
            failures: Arc::new(AtomicU64::new(0)),
            failures_seen: 0,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let job = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            self.handle(job).await;
        }
        // Refuse whatever is still queued.
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            let _ = job.reply.send(Err(QuorumError::ShuttingDown));
        }
        tracing::info!("metadata controller task stopped");
    }

    async fn handle(&mut self, job: Job) {
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
            self.spec = None;
            let _ = job
                .reply
                .send(Err(QuorumError::NotController { leader_id: leader }));
            return;
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
            match self.rebase(term).await {
                Ok(spec) => self.spec = Some(spec),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    return;
                }
            }
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
            controller::handle(&spec.image, &self.config, &mut ctx, job.req)
        };

        if records.is_empty() {
            match self.last_proposal.clone() {
                None => {
                    let _ = job.reply.send(Ok(response));
                }
                Some(mut outcome) => {
                    tokio::spawn(async move {
                        let settled = outcome.wait_for(|o| o.is_some()).await.map(|o| o.clone());
                        let answer = match settled {
                            Ok(Some(Ok(()))) => Ok(response),
                            Ok(Some(Err(e))) => Err(e),
                            Ok(None) | Err(_) => Err(QuorumError::ShuttingDown),
                        };
                        let _ = job.reply.send(answer);
                    });
                }
            }
            return;
        }

        // Bound the proposals in flight before the speculative image takes the records.
        let permit = match self.in_flight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => {
                let _ = job.reply.send(Err(QuorumError::ShuttingDown));
                return;
            }
        };
        for r in &records {
            spec.image.apply(r);
        }
        let record_count = records.len();
        match self.raft.client_write_ff(MetadataBatch::new(records)).await {
            Err(fatal) => {
                self.spec = None;
                let _ = job.reply.send(Err(fatal_to_error(&fatal)));
            }
            Ok(committed) => {
                tracing::debug!(
                    request = req_name,
                    records = record_count,
                    "proposed metadata entry"
                );
                let (outcome_tx, outcome_rx) = watch::channel(None);
                self.last_proposal = Some(outcome_rx);
                let failures = self.failures.clone();
                tokio::spawn(async move {
                    let result = match committed.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                            Err(QuorumError::NotController {
                                leader_id: f.leader_id,
                            })
                        }
                        Ok(Err(e)) => Err(QuorumError::Storage(e.to_string())),
                        Err(_) => Err(QuorumError::ShuttingDown),
                    };
                    if result.is_err() {
                        failures.fetch_add(1, Ordering::AcqRel);
                    }
                    outcome_tx.send_replace(Some(result.clone()));
                    drop(permit);
                    let _ = job.reply.send(result.map(|()| response));
                });
            }
        }
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
