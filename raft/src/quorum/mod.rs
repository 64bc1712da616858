//! The metadata quorum: openraft + RocksDB around the pure controller.
//!
//! This module owns everything asynchronous and durable in keel-raft: the RocksDB store
//! (`store`: log, vote, committed index; `state_machine`: the applied image and
//! snapshots), the Raft network (`network`), and the active-controller task
//! (`controller_task`). Its public face is [`MetadataQuorum`] and the plain types next to
//! it; openraft and RocksDB types never appear in it. It must not know Kafka's wire
//! protocol or segment files.

mod controller_task;
mod network;
mod state_machine;
mod store;
pub(crate) mod stored;
mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::BasicNode;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::ControllerConfig;
use crate::controller::ControllerRequest;
use crate::controller::ControllerResponse;
use crate::image::MetadataImage;
use controller_task::ControllerTask;
use controller_task::Job;
pub use types::NodeId;
use types::Raft;

/// Raft cluster name (only appears in openraft's logs).
pub const CLUSTER_NAME: &str = "keel-metadata";
/// Build a snapshot after this many log entries since the last one.
pub const DEFAULT_SNAPSHOT_EVERY_ENTRIES: u64 = 5000;
/// Most entries kept in the log behind a snapshot, so a slightly lagging follower can catch
/// up without a snapshot transfer. Never more than `snapshot_every_entries` are kept.
pub const LOG_ENTRIES_KEPT_BEHIND_SNAPSHOT: u64 = 1000;
/// Default lower bound of the randomized election timeout.
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 1000;
/// Default upper bound of the randomized election timeout.
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 2000;
/// Default leader heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 250;
/// How long [`MetadataQuorum::submit`] waits for the answer.
pub const DEFAULT_SUBMIT_TIMEOUT_MS: u64 = 30_000;
/// Requests queued for the controller task; more wait in `submit` (within its timeout).
pub const CONTROLLER_QUEUE_CAPACITY: usize = 1024;
/// How long `shutdown` waits for the controller task to stop.
pub const CONTROLLER_STOP_TIMEOUT_MS: u64 = 5_000;
/// How long `shutdown` waits for RocksDB to be closed after Raft stopped.
pub const DB_CLOSE_TIMEOUT_MS: u64 = 10_000;

/// How to run one quorum node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// This node's id (KRaft `node.id`); stable across restarts.
    pub node_id: NodeId,
    /// The RocksDB directory (one DB per node).
    pub dir: PathBuf,
    /// The controller voters: node id -> controller listener address. A single node may
    /// use `{node_id: ""}`.
    pub voters: BTreeMap<NodeId, String>,
    pub controller: ControllerConfig,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every_entries: u64,
}

impl QuorumConfig {
    /// A single-voter quorum in `dir` with every other setting at its default.
    pub fn single_node(node_id: NodeId, dir: impl Into<PathBuf>) -> Self {
        QuorumConfig {
            node_id,
            dir: dir.into(),
            voters: BTreeMap::from([(node_id, String::new())]),
            controller: ControllerConfig::default(),
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            snapshot_every_entries: DEFAULT_SNAPSHOT_EVERY_ENTRIES,
        }
    }
}

/// Why the quorum could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// This node is not the active controller; `leader_id` is the one it knows of.
    #[error("this node is not the active controller (known leader: {leader_id:?})")]
    NotController { leader_id: Option<NodeId> },
    #[error("timed out waiting for the metadata quorum")]
    Timeout,
    #[error("the metadata quorum is shutting down")]
    ShuttingDown,
    #[error("metadata storage error: {0}")]
    Storage(String),
    /// The RocksDB directory is in use by another process or another open quorum.
    #[error("metadata directory {dir} is locked by another process or quorum instance: {detail}")]
    DirectoryLocked { dir: PathBuf, detail: String },
    /// Stored metadata cannot be read back.
    #[error("metadata store is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid quorum configuration: {0}")]
    InvalidConfig(String),
}

/// The role of a quorum node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumRole {
    Leader,
    Candidate,
    Follower,
    Learner,
    Shutdown,
}

/// A point-in-time view of the quorum node, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: NodeId,
    pub role: QuorumRole,
    pub leader_id: Option<NodeId>,
    pub current_term: u64,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the image (0 = none).
    pub last_applied_index: u64,
    /// Index of the last entry known committed.
    pub committed_index: Option<u64>,
    /// Voter id -> controller address.
    pub voters: BTreeMap<NodeId, String>,
    /// [`MetadataImage::digest`] of the applied image.
    pub image_digest: u64,
}

/// A running quorum node; cheap to clone (all clones share one node).
#[derive(Clone)]
pub struct MetadataQuorum {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetadataQuorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataQuorum")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    node_id: NodeId,
    raft: Raft,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    committed_index: Arc<AtomicU64>,
    jobs: mpsc::Sender<Job>,
    stop_controller: watch::Sender<bool>,
    controller_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Turns `true` once RocksDB is closed.
    db_closed: watch::Receiver<bool>,
}

impl MetadataQuorum {
    /// Opens the RocksDB store in `cfg.dir`, starts Raft, initializes the membership with
    /// `cfg.voters` if this node is a voter and its store has never been initialized, and
    /// starts the controller task.
    ///
    /// # Errors
    /// [`QuorumError::DirectoryLocked`] if the directory is in use,
    /// [`QuorumError::Corrupt`] if stored data cannot be read, [`QuorumError::InvalidConfig`]
    /// for bad timeouts, [`QuorumError::Storage`] otherwise.
    pub async fn open(cfg: QuorumConfig) -> Result<MetadataQuorum, QuorumError> {
        let raft_config = openraft::Config {
            cluster_name: CLUSTER_NAME.to_string(),
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            heartbeat_interval: cfg.heartbeat_interval_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: LOG_ENTRIES_KEPT_BEHIND_SNAPSHOT
                .min(cfg.snapshot_every_entries),
            ..Default::default()
        }
        .validate()
        .map_err(|e| QuorumError::InvalidConfig(e.to_string()))?;
        if cfg.voters.is_empty() {
            return Err(QuorumError::InvalidConfig(
                "the voter set is empty; a single node lists itself".to_string(),
            ));
        }
        if cfg.snapshot_every_entries == 0 {
            return Err(QuorumError::InvalidConfig(
                "snapshot_every_entries must be positive".to_string(),
            ));
        }

        let db = store::open_db(&cfg.dir)?;
        let pristine = store::LogStore::is_pristine(&db)?;
        let committed = store::LogStore::stored_committed(&db)?;
        let committed_index = Arc::new(AtomicU64::new(
            committed.map(|c| c.index).unwrap_or(store::NO_INDEX),
        ));
        let (state_machine, image_rx) = state_machine::StateMachine::load(db.clone())?;
        let log_store = store::LogStore::new(db.clone(), committed_index.clone());
        let db_closed = db.closed();
        drop(db);

        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            network::Network::Unreachable,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| QuorumError::Storage(format!("cannot start Raft: {e}")))?;

        if let Err(e) = Self::initialize_if_new(&raft, &cfg, pristine).await {
            let _ = raft.shutdown().await;
            // Release the directory before reporting, so a retry can open it.
            if let Err(close) = wait_until_closed(db_closed).await {
                tracing::warn!(error = %close, "metadata store not closed after a failed open");
            }
            return Err(e);
        }

        let (jobs_tx, jobs_rx) = mpsc::channel(CONTROLLER_QUEUE_CAPACITY);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = ControllerTask::new(
            cfg.node_id,
            raft.clone(),
            image_rx.clone(),
            cfg.controller.clone(),
        );
        let handle = tokio::spawn(task.run(jobs_rx, stop_rx));

        tracing::info!(node_id = cfg.node_id, dir = %cfg.dir.display(), "metadata quorum open");
        Ok(MetadataQuorum {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                raft,
                image_rx,
                committed_index,
                jobs: jobs_tx,
                stop_controller: stop_tx,
                controller_task: tokio::sync::Mutex::new(Some(handle)),
                shut_down: AtomicBool::new(false),
                db_closed,
            }),
        })
    }

    /// Writes the first membership (the voter set) into a brand-new store. A store that
    /// holds anything (even only a vote granted to a peer) belongs to a node that already
    /// took part in a quorum and must learn the membership from it instead.
    async fn initialize_if_new(
        raft: &Raft,
        cfg: &QuorumConfig,
        pristine: bool,
    ) -> Result<(), QuorumError> {
        if !cfg.voters.contains_key(&cfg.node_id) {
            return Ok(());
        }
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| QuorumError::Storage(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        if !pristine {
            tracing::warn!(
                node_id = cfg.node_id,
                "metadata store has state but no membership; waiting for the quorum instead of initializing"
            );
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = cfg
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(voters = ?cfg.voters.keys().collect::<Vec<_>>(), "initialized metadata quorum membership");
                Ok(())
            }
            // Another path initialized it first: that is the goal anyway.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e @ InitializeError::NotInMembers(_))) => {
                Err(QuorumError::InvalidConfig(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(QuorumError::Storage(e.to_string())),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The committed image; it changes (send_replace) every time entries are applied.
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image_rx.clone()
    }

    /// Runs a request through the active controller and returns its answer once the
    /// request's records are committed and applied (so [`Self::image`] already shows
    /// them). Waits at most [`DEFAULT_SUBMIT_TIMEOUT_MS`].
    ///
    /// # Errors
    /// [`QuorumError::NotController`] on a node that is not the active controller,
    /// [`QuorumError::Timeout`], [`QuorumError::ShuttingDown`], [`QuorumError::Storage`].
    /// After `Timeout` or `NotController` the request may still have been applied.
    pub async fn submit(&self, req: ControllerRequest) -> Result<ControllerResponse, QuorumError> {
        self.submit_with_timeout(req, Duration::from_millis(DEFAULT_SUBMIT_TIMEOUT_MS))
            .await
    }

    /// [`Self::submit`] with an explicit timeout (e.g. a Kafka request's `timeout_ms`).
    ///
    /// # Errors
    /// As [`Self::submit`].
    pub async fn submit_with_timeout(
        &self,
        req: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, QuorumError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(QuorumError::ShuttingDown);
        }
        let leader = self.inner.raft.metrics().borrow().current_leader;
        if leader != Some(self.inner.node_id) {
            return Err(QuorumError::NotController { leader_id: leader });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { req, reply };
        let run = async {
            self.inner
                .jobs
                .send(job)
                .await
                .map_err(|_| QuorumError::ShuttingDown)?;
            answer.await.map_err(|_| QuorumError::ShuttingDown)?
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(QuorumError::Timeout),
        }
    }

    /// Waits until this node knows a leader (itself or another voter).
    ///
    /// # Errors
    /// [`QuorumError::Timeout`] if none is known within `timeout`,
    /// [`QuorumError::ShuttingDown`] if the node stops.
    pub async fn wait_until_leader_known(&self, timeout: Duration) -> Result<(), QuorumError> {
        let mut metrics = self.inner.raft.metrics();
        let known = async {
            metrics
                .wait_for(|m| m.current_leader.is_some())
                .await
                .map(|_| ())
                .map_err(|_| QuorumError::ShuttingDown)
        };
        match tokio::time::timeout(timeout, known).await {
            Ok(result) => result,
            Err(_) => Err(QuorumError::Timeout),
        }
    }

    /// Where this node stands: leader, term, log and apply positions, voters, digest.
    pub fn status(&self) -> QuorumStatus {
        let (role, leader_id, current_term, last_log_index, voters) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            let role = match m.state {
                ServerState::Leader => QuorumRole::Leader,
                ServerState::Candidate => QuorumRole::Candidate,
                ServerState::Follower => QuorumRole::Follower,
                ServerState::Learner => QuorumRole::Learner,
                ServerState::Shutdown => QuorumRole::Shutdown,
            };
            let membership = m.membership_config.membership();
            let voters = membership
                .voter_ids()
                .map(|id| {
                    let addr = membership
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default();
                    (id, addr)
                })
                .collect();
            (
                role,
                m.current_leader,
                m.current_term,
                m.last_log_index,
                voters,
            )
        };
        let image = self.inner.image_rx.borrow().clone();
        let committed = self.inner.committed_index.load(Ordering::Acquire);
        QuorumStatus {
            node_id: self.inner.node_id,
            role,
            leader_id,
            current_term,
            last_log_index,
            last_applied_index: image.last_applied_index,
            committed_index: (committed != store::NO_INDEX).then_some(committed),
            voters,
            image_digest: image.digest(),
        }
    }

    /// Stops the controller task and Raft, and waits until RocksDB is closed (so the
    /// directory can be opened again). Requests still waiting are answered
    /// [`QuorumError::ShuttingDown`]. Calling it again does nothing.
    ///
    /// # Errors
    /// [`QuorumError::Storage`] if RocksDB is still open after [`DB_CLOSE_TIMEOUT_MS`].
    pub async fn shutdown(&self) -> Result<(), QuorumError> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.stop_controller.send_replace(true);
        if let Some(handle) = self.inner.controller_task.lock().await.take() {
            let stop = Duration::from_millis(CONTROLLER_STOP_TIMEOUT_MS);
            if tokio::time::timeout(stop, handle).await.is_err() {
                tracing::warn!("metadata controller task did not stop in time");
            }
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft core ended abnormally");
        }
        // The stores are dropped when Raft's tasks end; wait until RocksDB has closed, so
        // the directory can be opened again as soon as this returns.
        wait_until_closed(self.inner.db_closed.clone()).await?;
        tracing::info!(node_id = self.inner.node_id, "metadata quorum shut down");
        Ok(())
    }
}

/// Waits (at most [`DB_CLOSE_TIMEOUT_MS`]) until RocksDB has closed.
async fn wait_until_closed(mut closed: watch::Receiver<bool>) -> Result<(), QuorumError> {
    let wait = closed.wait_for(|closed| *closed);
    match tokio::time::timeout(Duration::from_millis(DB_CLOSE_TIMEOUT_MS), wait).await {
        // Err: the signal's sender is gone, which only happens once the DB is closed.
        Ok(Ok(_)) | Ok(Err(_)) => Ok(()),
        Err(_) => Err(QuorumError::Storage(format!(
            "RocksDB is still open {DB_CLOSE_TIMEOUT_MS} ms after Raft stopped"
        ))),
    }
}

#[cfg(test)]
mod tests;
