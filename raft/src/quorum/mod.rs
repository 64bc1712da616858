//! The metadata quorum: openraft + RocksDB around the pure controller.
//!
//! This module owns everything asynchronous and durable in keel-raft: the RocksDB store
//! (`store`: log, vote, committed index; `state_machine`: the applied image and
//! snapshots), the controller RPC (`rpc`: messages, `transport`: framed TCP with pooled
//! connections, `network`: openraft's side of it), and the active-controller task
//! (`controller_task`). Its public face is [`MetadataQuorum`] and the plain types next to
//! it; openraft and RocksDB types never appear in it. It must not know Kafka's wire
//! protocol or segment files.
//!
//! Roles: a node whose id is in [`QuorumConfig::voters`] is a voter (a controller); any
//! other node is an observer, which follows the log as an openraft learner: at open it asks
//! the voters to add it (retrying until it is added), the leader then replicates the log
//! and snapshots to it, and its state machine applies them into its own image exactly as a
//! voter's does. A voter set changes at run time only through [`MetadataQuorum::add_voter`]
//! and [`MetadataQuorum::remove_voter`] (joint consensus).

mod controller_task;
mod network;
pub(crate) mod rpc;
mod state_machine;
mod store;
pub(crate) mod stored;
mod transport;
mod types;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::error::ChangeMembershipError;
use openraft::error::ClientWriteError;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
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
pub use controller_task::CONTROLLER_TICK_INTERVAL_MS;
pub use network::UNREACHABLE_RETRY_MS;
use rpc::RequestBody;
use rpc::ResponseBody;
use rpc::RpcError;
use rpc::RpcRequest;
use rpc::RpcResponse;
use rpc::WireAppendResponse;
use rpc::WireSnapshotResponse;
use rpc::WireVoteResponse;
use transport::CallError;
use transport::RpcClient;
pub use transport::MAX_RPC_FRAME_BYTES;
pub use transport::RPC_CONNECT_TIMEOUT_MS;
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
/// How long [`MetadataQuorum::add_voter`] and [`MetadataQuorum::remove_voter`] may take.
pub const DEFAULT_MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = 60_000;
/// Requests queued for the controller task; more wait in `submit` (within its timeout).
pub const CONTROLLER_QUEUE_CAPACITY: usize = 1024;
/// How long `shutdown` waits for the controller task to stop.
pub const CONTROLLER_STOP_TIMEOUT_MS: u64 = 5_000;
/// How long `shutdown` waits for RocksDB to be closed after Raft stopped.
pub const DB_CLOSE_TIMEOUT_MS: u64 = 10_000;
/// Bytes of a snapshot sent per InstallSnapshot RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Longest one InstallSnapshot RPC (one chunk, and installing the last) may take.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// First pause before a request for the leader is retried (no leader known or reachable);
/// it doubles up to [`LEADER_RETRY_MAX_MS`].
pub const LEADER_RETRY_MIN_MS: u64 = 50;
/// Longest pause between retries of a request for the leader.
pub const LEADER_RETRY_MAX_MS: u64 = 500;
/// How many "ask that node, it leads" answers are followed at once before pausing.
pub const MAX_LEADER_HINTS_FOLLOWED: u32 = 3;
/// A forwarded submit asks the leader to answer this much before the caller gives up, so
/// the answer (even a timeout) arrives in time.
pub const SUBMIT_FORWARD_MARGIN_MS: u64 = 100;
/// Longest one attempt of an observer to be added as a learner.
pub const JOIN_ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// Pause between attempts of an observer to be added as a learner.
pub const JOIN_RETRY_INTERVAL_MS: u64 = 500;
/// How often a node checks that it is still in the membership it knows.
pub const MEMBERSHIP_CHECK_INTERVAL_MS: u64 = 1_000;
/// Pause before a node the leader refused to add asks again.
pub const MEMBERSHIP_REFUSED_RETRY_MS: u64 = 10_000;
/// How often a voter checks whether it still hears from a leader.
pub const LEADER_FAILURE_CHECK_INTERVAL_MS: u64 = 50;
/// Pause before a membership change that met another one in progress is tried again.
pub const MEMBERSHIP_IN_PROGRESS_RETRY_MS: u64 = 50;
/// How long `shutdown` waits for the RPC listener and the join task to stop.
pub const BACKGROUND_STOP_TIMEOUT_MS: u64 = 2_000;

/// How to run one quorum node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// This node's id (KRaft `node.id`); stable across restarts.
    pub node_id: NodeId,
    /// The RocksDB directory (one DB per node).
    pub dir: PathBuf,
    /// The initial controller voters: node id -> controller address ("ip:port"). Every
    /// voter of a new cluster must be given the same set; it becomes the first membership.
    /// A node not in it is an observer. A single node without a listener may use
    /// `{node_id: ""}`. A voter added later with [`MetadataQuorum::add_voter`] starts as
    /// an observer (its id not in this set).
    pub voters: BTreeMap<NodeId, String>,
    pub controller: ControllerConfig,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every_entries: u64,
    /// Where the controller RPC listens; its IP is also the source address of every
    /// outgoing controller connection. `None`: no transport (a single voter).
    pub controller_listen: Option<SocketAddr>,
    /// The cluster id this node's `meta.properties` holds (`None` on first start).
    pub cluster_id: Option<String>,
}

impl QuorumConfig {
    /// A single-voter quorum in `dir`, without a controller listener, with every other
    /// setting at its default.
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
            controller_listen: None,
            cluster_id: None,
        }
    }
}

/// Why the quorum could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QuorumError {
    /// No active controller could be reached (or this node has no transport and is not
    /// it); `leader_id` is the one this node knows of.
    #[error(
        "this node is not the active controller and cannot reach it (known leader: {leader_id:?})"
    )]
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
    /// This node and the other side belong to different clusters; the message names both.
    #[error("cluster id mismatch: {0}")]
    ClusterIdMismatch(String),
    /// A controller address could not be reached (the request was not carried out).
    #[error("cannot reach the controller at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
}

/// The Raft state of a quorum node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumRole {
    Leader,
    Candidate,
    Follower,
    Learner,
    Shutdown,
}

/// Whether a node is a controller voter or an observer (a learner that only follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Voter,
    Observer,
}

/// One member of the quorum as the reporting node sees it. The replication fields are
/// known only on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    /// Controller address.
    pub addr: String,
    pub role: MemberRole,
    /// Last log index known to be on the member (leader only).
    pub matched_index: Option<u64>,
    /// Leader's last log index minus `matched_index` (leader only).
    pub lag: Option<u64>,
    /// Milliseconds since the member last answered the leader (leader only).
    pub last_contact_ms: Option<u64>,
}

/// A point-in-time view of the quorum node, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    pub node_id: NodeId,
    /// This node's Raft state.
    pub role: QuorumRole,
    /// Whether this node is a voter or an observer in the membership it knows.
    pub member_role: MemberRole,
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
    /// Observer (learner) id -> controller address.
    pub observers: BTreeMap<NodeId, String>,
    /// Every member, voters first then observers, each by id.
    pub members: Vec<MemberStatus>,
    /// Whether the membership is in a joint configuration (a voter change in progress).
    pub membership_changing: bool,
    /// [`MetadataImage::digest`] of the applied image.
    pub image_digest: u64,
    /// The cluster id in the applied image.
    pub cluster_id: Option<String>,
    /// This node's controller address, if it has a listener.
    pub controller_addr: Option<String>,
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
    /// Turns `true` to stop the controller task, the RPC listener and the join task.
    stop: watch::Sender<bool>,
    controller_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    background: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Turns `true` once RocksDB is closed.
    db_closed: watch::Receiver<bool>,
    /// Outgoing controller RPC; `None` without a listener.
    client: Option<Arc<RpcClient>>,
    /// The voters of the configuration (seeds for finding the leader).
    config_voters: BTreeMap<NodeId, String>,
    /// This node's controller address, as peers reach it.
    advertised_addr: Option<String>,
    identity: Arc<NodeIdentity>,
    /// An error that stops this node from ever joining (e.g. another cluster's id).
    fatal: watch::Sender<Option<QuorumError>>,
    /// When this node last accepted an AppendEntries from a leader (for the failure
    /// detector).
    last_leader_contact: std::sync::Mutex<Instant>,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    heartbeat_interval_ms: u64,
}

/// Who this node is on the wire.
struct NodeIdentity {
    node_id: NodeId,
    configured_cluster_id: Option<String>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
}

impl transport::Identity for NodeIdentity {
    fn node_id(&self) -> Option<NodeId> {
        Some(self.node_id)
    }

    fn cluster_id(&self) -> Option<String> {
        self.image_rx
            .borrow()
            .cluster_id
            .clone()
            .or_else(|| self.configured_cluster_id.clone())
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl MetadataQuorum {
    /// Opens the RocksDB store in `cfg.dir`, starts Raft and the controller RPC listener
    /// (if `cfg.controller_listen` is set), initializes the membership with `cfg.voters` if
    /// this node is a voter and its store is brand new, starts the controller task, and, on
    /// an observer, starts asking the voters to add it as a learner (in the background,
    /// retrying until it is added).
    ///
    /// # Errors
    /// [`QuorumError::DirectoryLocked`] if the directory is in use,
    /// [`QuorumError::Corrupt`] if stored data cannot be read, [`QuorumError::InvalidConfig`]
    /// for bad timeouts, voters or listener, [`QuorumError::ClusterIdMismatch`] if
    /// `cfg.cluster_id` is not the cluster id stored in the image,
    /// [`QuorumError::Storage`] otherwise.
    pub async fn open(cfg: QuorumConfig) -> Result<MetadataQuorum, QuorumError> {
        let raft_config = openraft::Config {
            cluster_name: CLUSTER_NAME.to_string(),
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            heartbeat_interval: cfg.heartbeat_interval_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: LOG_ENTRIES_KEPT_BEHIND_SNAPSHOT
                .min(cfg.snapshot_every_entries),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            ..Default::default()
        }
        .validate()
        .map_err(|e| QuorumError::InvalidConfig(e.to_string()))?;
        Self::check_config(&cfg)?;

        let listener = match cfg.controller_listen {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                QuorumError::InvalidConfig(format!(
                    "cannot listen for controller RPC on {addr}: {e}"
                ))
            })?),
        };
        let advertised_addr = match &listener {
            None => None,
            Some(l) => Some(match cfg.voters.get(&cfg.node_id) {
                Some(addr) if !addr.is_empty() => addr.clone(),
                _ => l
                    .local_addr()
                    .map_err(|e| QuorumError::InvalidConfig(e.to_string()))?
                    .to_string(),
            }),
        };

        let db = store::open_db(&cfg.dir)?;
        let pristine = store::LogStore::is_pristine(&db)?;
        let committed = store::LogStore::stored_committed(&db)?;
        let committed_index = Arc::new(AtomicU64::new(
            committed.map(|c| c.index).unwrap_or(store::NO_INDEX),
        ));
        let (state_machine, image_rx) = state_machine::StateMachine::load(db.clone())?;
        if let (Some(configured), Some(stored)) = (&cfg.cluster_id, &image_rx.borrow().cluster_id) {
            if configured != stored {
                return Err(QuorumError::ClusterIdMismatch(format!(
                    "node {} is configured for cluster {configured}, but its metadata in {} belongs to cluster {stored}",
                    cfg.node_id,
                    cfg.dir.display()
                )));
            }
        }
        let log_store = store::LogStore::new(db.clone(), committed_index.clone());
        let db_closed = db.closed();
        drop(db);

        let identity = Arc::new(NodeIdentity {
            node_id: cfg.node_id,
            configured_cluster_id: cfg.cluster_id.clone(),
            image_rx: image_rx.clone(),
        });
        let client = listener.as_ref().map(|_| {
            let source_ip = cfg.controller_listen.map(|a| a.ip());
            Arc::new(RpcClient::new(source_ip, identity.clone()))
        });
        let network = match &client {
            Some(c) => network::Network::Rpc(c.clone()),
            None => network::Network::Unreachable,
        };
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            network,
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
            cfg.cluster_id.clone(),
        );
        let handle = tokio::spawn(task.run(jobs_rx, stop_rx.clone()));

        let inner = Arc::new(Inner {
            node_id: cfg.node_id,
            raft,
            image_rx,
            committed_index,
            jobs: jobs_tx,
            stop: stop_tx,
            controller_task: tokio::sync::Mutex::new(Some(handle)),
            background: tokio::sync::Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
            db_closed,
            client,
            config_voters: cfg.voters.clone(),
            advertised_addr: advertised_addr.clone(),
            identity,
            fatal: watch::channel(None).0,
            last_leader_contact: std::sync::Mutex::new(Instant::now()),
            election_timeout_min_ms: cfg.election_timeout_min_ms,
            election_timeout_max_ms: cfg.election_timeout_max_ms,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        });
        let mut background = Vec::new();
        if let Some(listener) = listener {
            background.push(tokio::spawn(transport::serve(
                listener,
                inner.clone(),
                stop_rx.clone(),
            )));
        }
        if inner.client.is_some() {
            background.push(tokio::spawn(detect_leader_failure(
                inner.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(addr) = advertised_addr {
            let configured_voter = cfg.voters.contains_key(&cfg.node_id);
            background.push(tokio::spawn(keep_membership(
                inner.clone(),
                addr,
                configured_voter,
                stop_rx,
            )));
        }
        *inner.background.lock().await = background;

        tracing::info!(
            node_id = cfg.node_id,
            dir = %cfg.dir.display(),
            controller_addr = ?inner.advertised_addr,
            voter = cfg.voters.contains_key(&cfg.node_id),
            "metadata quorum open"
        );
        Ok(MetadataQuorum { inner })
    }

    fn check_config(cfg: &QuorumConfig) -> Result<(), QuorumError> {
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
        let is_voter = cfg.voters.contains_key(&cfg.node_id);
        if cfg.controller_listen.is_none() && !is_voter {
            return Err(QuorumError::InvalidConfig(format!(
                "node {} is not a voter, so it must follow the voters over the controller RPC, but it has no controller listener",
                cfg.node_id
            )));
        }
        if cfg.controller_listen.is_some() {
            if let Some((id, _)) = cfg.voters.iter().find(|(_, addr)| addr.is_empty()) {
                return Err(QuorumError::InvalidConfig(format!(
                    "voter {id} has no controller address"
                )));
            }
        }
        if let Some(id) = &cfg.cluster_id {
            if id.is_empty() {
                return Err(QuorumError::InvalidConfig(
                    "the configured cluster id is empty".to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Writes the first membership (the voter set) into a brand-new store. Every voter of
    /// a new cluster does this with the same set, which openraft allows: the entries are
    /// identical, and elections then pick one leader. A store that holds anything (even
    /// only a vote granted to a peer) belongs to a node that already took part in a quorum
    /// and must learn the membership from it instead.
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
                tracing::info!(voters = ?cfg.voters, "initialized metadata quorum membership");
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

    /// The cluster id recorded in the applied image (`None` until this node applied it).
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.image_rx.borrow().cluster_id.clone()
    }

    /// Waits until the applied image holds the cluster id, and returns it.
    ///
    /// # Errors
    /// [`QuorumError::Timeout`], [`QuorumError::ShuttingDown`], or the error that stopped
    /// this node from joining (e.g. [`QuorumError::ClusterIdMismatch`]).
    pub async fn wait_cluster_id(&self, timeout: Duration) -> Result<String, QuorumError> {
        let mut image = self.inner.image_rx.clone();
        let known = async {
            image
                .wait_for(|i| i.cluster_id.is_some())
                .await
                .map(|i| i.cluster_id.clone().unwrap_or_default())
                .map_err(|_| QuorumError::ShuttingDown)
        };
        self.inner.wait_or_fatal(known, timeout).await
    }

    /// Runs a request through the active controller and returns its answer once the
    /// request's records are committed and applied, on the active controller and on this
    /// node: [`Self::image`] already shows them when this returns (read your writes).
    /// Works on any node: a node that is not the active controller forwards the request
    /// to the leader it knows (following leadership as it moves). Waits at most
    /// [`DEFAULT_SUBMIT_TIMEOUT_MS`]; if the answer arrives but this node has not applied
    /// it by then, the answer is returned anyway.
    ///
    /// # Errors
    /// [`QuorumError::NotController`] if no active controller could be reached,
    /// [`QuorumError::Timeout`], [`QuorumError::ShuttingDown`], [`QuorumError::Storage`],
    /// [`QuorumError::ClusterIdMismatch`]. After `Timeout` the request may still have been
    /// applied; after `NotController` it was not sent to a leader.
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
        let deadline = Instant::now() + timeout;
        let body = RequestBody::Submit {
            request: req,
            timeout_ms: 0,
        };
        let (response, applied_index) =
            match self.inner.run_on_leader(body, deadline, false).await? {
                ResponseBody::Submit {
                    response,
                    applied_index,
                } => (response, applied_index),
                other => return Err(unexpected_answer("Submit", &other)),
            };
        // Read your writes: wait until this node has applied the entry too. The answer is
        // known either way, so it is returned even if the wait runs out.
        let mut image = self.inner.image_rx.clone();
        let applied = image.wait_for(|i| i.last_applied_index >= applied_index);
        if tokio::time::timeout(remaining(deadline), applied)
            .await
            .is_err()
        {
            tracing::warn!(
                applied_index,
                local = self.inner.image_rx.borrow().last_applied_index,
                "answer from the active controller arrived before this node applied it"
            );
        }
        Ok(response)
    }

    /// Makes node `node_id`, reachable at `controller_addr`, a voter: the leader adds it as
    /// a learner (if it is not one yet), waits until it has caught up with the log, then
    /// changes the voter set through joint consensus. Works from any node (forwarded to
    /// the leader). Does nothing if the node already is a voter. Waits at most
    /// [`DEFAULT_MEMBERSHIP_CHANGE_TIMEOUT_MS`].
    ///
    /// # Errors
    /// [`QuorumError::Membership`] if the change is refused (another change in progress, a
    /// node id used by another address), [`QuorumError::Timeout`],
    /// [`QuorumError::NotController`] if no leader is reachable.
    pub async fn add_voter(
        &self,
        node_id: NodeId,
        controller_addr: &str,
    ) -> Result<(), QuorumError> {
        let timeout = Duration::from_millis(DEFAULT_MEMBERSHIP_CHANGE_TIMEOUT_MS);
        let body = RequestBody::AddVoter {
            node_id,
            addr: controller_addr.to_string(),
            timeout_ms: 0,
        };
        self.membership_change(body, timeout).await
    }

    /// Takes node `node_id` out of the voters through joint consensus; it stays in the
    /// membership as a learner (an observer that keeps following the log). Works from any
    /// node. Does nothing if it is not a voter. Waits at most
    /// [`DEFAULT_MEMBERSHIP_CHANGE_TIMEOUT_MS`].
    ///
    /// # Errors
    /// [`QuorumError::Membership`] (e.g. removing the last voter), [`QuorumError::Timeout`],
    /// [`QuorumError::NotController`] if no leader is reachable.
    pub async fn remove_voter(&self, node_id: NodeId) -> Result<(), QuorumError> {
        let timeout = Duration::from_millis(DEFAULT_MEMBERSHIP_CHANGE_TIMEOUT_MS);
        let body = RequestBody::RemoveVoter {
            node_id,
            timeout_ms: 0,
        };
        self.membership_change(body, timeout).await
    }

    async fn membership_change(
        &self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<(), QuorumError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(QuorumError::ShuttingDown);
        }
        let deadline = Instant::now() + timeout;
        match self.inner.run_on_leader(body, deadline, true).await? {
            ResponseBody::MembershipChanged => Ok(()),
            other => Err(unexpected_answer("a membership change", &other)),
        }
    }

    /// Waits until this node knows a leader (itself or another voter).
    ///
    /// # Errors
    /// [`QuorumError::Timeout`] if none is known within `timeout`,
    /// [`QuorumError::ShuttingDown`] if the node stops, or the error that stopped this
    /// node from joining (e.g. [`QuorumError::ClusterIdMismatch`]).
    pub async fn wait_until_leader_known(&self, timeout: Duration) -> Result<(), QuorumError> {
        let mut metrics = self.inner.raft.metrics();
        let known = async {
            metrics
                .wait_for(|m| m.current_leader.is_some())
                .await
                .map(|_| ())
                .map_err(|_| QuorumError::ShuttingDown)
        };
        self.inner.wait_or_fatal(known, timeout).await
    }

    /// Where this node stands: role, leader, term, log and apply positions, members (with
    /// replication progress when this node leads), digest and cluster id.
    pub fn status(&self) -> QuorumStatus {
        self.inner.status()
    }

    /// The active controller this node knows of; cheap (no image digest), for hot paths
    /// such as Metadata responses.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// The status of the node whose controller listener is at `controller_addr`, over the
    /// controller RPC (what `keel cluster status` shows for each node).
    ///
    /// # Errors
    /// [`QuorumError::Unreachable`] if no connection could be made,
    /// [`QuorumError::Timeout`] if it did not answer within `timeout`.
    pub async fn remote_status(
        controller_addr: &str,
        timeout: Duration,
    ) -> Result<QuorumStatus, QuorumError> {
        let client = RpcClient::new(None, Arc::new(transport::Anonymous));
        let deadline = Instant::now() + timeout;
        match client
            .call(controller_addr, RequestBody::Status, deadline)
            .await
            .map_err(CallError::into_quorum_error)?
        {
            ResponseBody::Status(status) => Ok(*status),
            other => Err(unexpected_answer("Status", &other)),
        }
    }

    /// [`Self::add_voter`] asked of the cluster through the node at `controller_addr` (which
    /// forwards it to the leader), for tools.
    ///
    /// # Errors
    /// As [`Self::add_voter`], and [`QuorumError::Unreachable`].
    pub async fn remote_add_voter(
        controller_addr: &str,
        node_id: NodeId,
        voter_addr: &str,
        timeout: Duration,
    ) -> Result<(), QuorumError> {
        let body = RequestBody::AddVoter {
            node_id,
            addr: voter_addr.to_string(),
            timeout_ms: 0,
        };
        remote_membership_change(controller_addr, body, timeout).await
    }

    /// [`Self::remove_voter`] asked of the cluster through the node at `controller_addr`.
    ///
    /// # Errors
    /// As [`Self::remove_voter`], and [`QuorumError::Unreachable`].
    pub async fn remote_remove_voter(
        controller_addr: &str,
        node_id: NodeId,
        timeout: Duration,
    ) -> Result<(), QuorumError> {
        let body = RequestBody::RemoveVoter {
            node_id,
            timeout_ms: 0,
        };
        remote_membership_change(controller_addr, body, timeout).await
    }

    /// Stops the controller task, the RPC listener and Raft, and waits until RocksDB is
    /// closed (so the directory can be opened again). Requests still waiting are answered
    /// [`QuorumError::ShuttingDown`]. Calling it again does nothing.
    ///
    /// # Errors
    /// [`QuorumError::Storage`] if RocksDB is still open after [`DB_CLOSE_TIMEOUT_MS`].
    pub async fn shutdown(&self) -> Result<(), QuorumError> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.stop.send_replace(true);
        if let Some(handle) = self.inner.controller_task.lock().await.take() {
            let stop = Duration::from_millis(CONTROLLER_STOP_TIMEOUT_MS);
            if tokio::time::timeout(stop, handle).await.is_err() {
                tracing::warn!("metadata controller task did not stop in time");
            }
        }
        for handle in self.inner.background.lock().await.drain(..) {
            let abort = handle.abort_handle();
            let stop = Duration::from_millis(BACKGROUND_STOP_TIMEOUT_MS);
            if tokio::time::timeout(stop, handle).await.is_err() {
                abort.abort();
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

fn unexpected_answer(what: &str, got: &ResponseBody) -> QuorumError {
    let got: String = format!("{got:?}").chars().take(200).collect();
    QuorumError::Storage(format!("unexpected answer to {what}: {got}"))
}

async fn remote_membership_change(
    controller_addr: &str,
    body: RequestBody,
    timeout: Duration,
) -> Result<(), QuorumError> {
    let client = RpcClient::new(None, Arc::new(transport::Anonymous));
    let deadline = Instant::now() + timeout;
    let seeds = [controller_addr.to_string()];
    match call_leader(Some(&client), None, &seeds, body, deadline, true).await? {
        ResponseBody::MembershipChanged => Ok(()),
        other => Err(unexpected_answer("a membership change", &other)),
    }
}

/// Sets a request's own timeout to what is left of the caller's, minus a margin so the
/// answer arrives in time.
fn with_timeout(body: RequestBody, deadline: Instant) -> RequestBody {
    let left = remaining(deadline).saturating_sub(Duration::from_millis(SUBMIT_FORWARD_MARGIN_MS));
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    match body {
        RequestBody::Submit { request, .. } => RequestBody::Submit {
            request,
            timeout_ms: ms,
        },
        RequestBody::AddVoter { node_id, addr, .. } => RequestBody::AddVoter {
            node_id,
            addr,
            timeout_ms: ms,
        },
        RequestBody::RemoveVoter { node_id, .. } => RequestBody::RemoveVoter {
            node_id,
            timeout_ms: ms,
        },
        other => other,
    }
}

/// Runs `body` on the leader: locally if `local` is the leader, otherwise at the leader it
/// knows, following "not the leader, ask X" answers, trying the seed addresses (and the
/// voters `local` knows) when no leader is known, and retrying until `deadline`. A failure
/// after the request may have been carried out (timeout, broken connection) is retried
/// only if `retry_ambiguous`.
async fn call_leader(
    client: Option<&RpcClient>,
    local: Option<&Inner>,
    seeds: &[String],
    body: RequestBody,
    deadline: Instant,
    retry_ambiguous: bool,
) -> Result<ResponseBody, QuorumError> {
    let mut last_err = QuorumError::NotController {
        leader_id: local.and_then(|l| l.raft.metrics().borrow().current_leader),
    };
    let mut hint: Option<String> = None;
    let mut hints_followed = 0u32;
    let mut rotation = 0usize;
    // The address that just failed to connect: tried again only when nothing else is left.
    let mut unreachable: Option<String> = None;
    let mut pause_ms = LEADER_RETRY_MIN_MS;
    loop {
        if local.is_some_and(|l| l.shut_down.load(Ordering::Acquire)) {
            return Err(QuorumError::ShuttingDown);
        }
        if Instant::now() >= deadline {
            return Err(last_err);
        }
        let mut follow_at_once = false;
        if let Some(inner) = local.filter(|l| l.is_leader()) {
            match inner.dispatch(with_timeout(body.clone(), deadline)).await {
                Ok(answer) => return Ok(answer),
                Err(RpcError::NotLeader {
                    leader_id,
                    leader_addr,
                }) => {
                    last_err = QuorumError::NotController { leader_id };
                    hint = leader_addr;
                }
                Err(RpcError::Quorum(QuorumError::NotController { leader_id })) => {
                    last_err = QuorumError::NotController { leader_id };
                }
                Err(e) => return Err(CallError::Remote(e).into_quorum_error()),
            }
        } else {
            let mut candidates: Vec<String> = Vec::new();
            if let Some(h) = hint.take() {
                candidates.push(h);
            }
            if let Some(inner) = local {
                candidates.extend(inner.known_leader_addr());
            }
            let mut others: Vec<String> = seeds.to_vec();
            if let Some(inner) = local {
                others.extend(inner.voter_addrs());
            }
            others.sort();
            others.dedup();
            if !others.is_empty() {
                candidates.push(others[rotation % others.len()].clone());
            }
            let own = local.and_then(|l| l.advertised_addr.clone());
            candidates.retain(|a| Some(a) != own.as_ref());
            let target = candidates
                .iter()
                .find(|a| Some(*a) != unreachable.as_ref())
                .or(candidates.first())
                .cloned();
            let Some(client) = client else {
                // No transport: the leader (if any) cannot be reached from here.
                return Err(last_err);
            };
            if let Some(addr) = target {
                match client
                    .call(&addr, with_timeout(body.clone(), deadline), deadline)
                    .await
                {
                    Ok(answer) => return Ok(answer),
                    Err(CallError::Remote(RpcError::NotLeader {
                        leader_id,
                        leader_addr,
                    })) => {
                        last_err = QuorumError::NotController { leader_id };
                        match leader_addr.filter(|a| *a != addr) {
                            Some(next) => {
                                hint = Some(next);
                                hints_followed += 1;
                                follow_at_once = hints_followed <= MAX_LEADER_HINTS_FOLLOWED;
                            }
                            None => rotation += 1,
                        }
                    }
                    Err(CallError::Remote(RpcError::Quorum(QuorumError::NotController {
                        leader_id,
                    }))) => {
                        // The leader lost leadership while handling it.
                        last_err = QuorumError::NotController { leader_id };
                    }
                    Err(e @ CallError::Unreachable { .. }) => {
                        // A node reports that no leader is reachable (NotController); a
                        // tool, which address it could not reach.
                        if local.is_none() {
                            last_err = e.into_quorum_error();
                        }
                        unreachable = Some(addr.clone());
                        rotation += 1;
                    }
                    Err(e @ (CallError::Network { .. } | CallError::Timeout { .. })) => {
                        if !retry_ambiguous {
                            return Err(match e {
                                CallError::Network { addr, detail } => QuorumError::Unreachable {
                                    addr,
                                    detail: format!(
                                        "{detail} (the request may have been carried out)"
                                    ),
                                },
                                _ => QuorumError::Timeout,
                            });
                        }
                        last_err = e.into_quorum_error();
                        rotation += 1;
                    }
                    Err(e @ (CallError::Remote(_) | CallError::TooLarge { .. })) => {
                        return Err(e.into_quorum_error())
                    }
                }
            }
        }
        if follow_at_once {
            continue;
        }
        hints_followed = 0;
        let pause = Duration::from_millis(pause_ms).min(remaining(deadline));
        match local {
            Some(inner) => {
                // Wake early when this node learns of a (new) leader.
                let mut metrics = inner.raft.metrics();
                let before = metrics.borrow().current_leader;
                let _ =
                    tokio::time::timeout(pause, metrics.wait_for(|m| m.current_leader != before))
                        .await;
            }
            None => tokio::time::sleep(pause).await,
        }
        pause_ms = (pause_ms * 2).min(LEADER_RETRY_MAX_MS);
    }
}

/// Keeps this node in the membership: an observer asks the leader to add it as a learner
/// at `addr` until it is in; any node that finds itself outside a membership it knows
/// (a voter that was removed while it led) asks to be added back as a learner, so it keeps
/// following the log. Ends when the node stops or belongs to another cluster.
async fn keep_membership(
    inner: Arc<Inner>,
    addr: String,
    configured_voter: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempts = 0u64;
    let mut was_member = false;
    loop {
        let (member, initialized) = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership
                    .get_node(&inner.node_id)
                    .is_some_and(|n| n.addr == addr),
                membership.voter_ids().next().is_some(),
            )
        };
        // A configured voter that has no membership yet waits for the leader to reach it;
        // a leader that removed itself waits until it has stepped down.
        let wants_join = !member && (!configured_voter || initialized) && !inner.is_leader();
        if member && !was_member {
            tracing::info!(node_id = inner.node_id, %addr, "this node is in the metadata quorum membership");
        }
        was_member = member;
        let pause = if !wants_join {
            Duration::from_millis(MEMBERSHIP_CHECK_INTERVAL_MS)
        } else {
            attempts += 1;
            match join_once(&inner, &addr).await {
                Ok(()) => {
                    tracing::info!(node_id = inner.node_id, %addr, "added to the metadata quorum as an observer");
                    Duration::from_millis(MEMBERSHIP_CHECK_INTERVAL_MS)
                }
                Err(e @ QuorumError::ClusterIdMismatch(_)) => {
                    tracing::error!(node_id = inner.node_id, error = %e, "cannot join the metadata quorum");
                    inner.fatal.send_replace(Some(e));
                    return;
                }
                Err(e @ QuorumError::Membership(_)) => {
                    // A configuration error (e.g. this id belongs to another address): say so
                    // loudly, and keep trying in case the operator fixes the membership.
                    tracing::error!(node_id = inner.node_id, error = %e, "the metadata quorum refuses this node; retrying");
                    Duration::from_millis(MEMBERSHIP_REFUSED_RETRY_MS)
                }
                Err(QuorumError::ShuttingDown) => return,
                Err(e) => {
                    if attempts == 1 || attempts.is_multiple_of(20) {
                        tracing::warn!(node_id = inner.node_id, attempts, error = %e, "not yet added to the metadata quorum; retrying");
                    }
                    Duration::from_millis(JOIN_RETRY_INTERVAL_MS)
                }
            }
        };
        let mut metrics = inner.raft.metrics();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
            // React at once when the membership this node knows changes.
            _ = metrics.wait_for(|m| {
                m.membership_config
                    .membership()
                    .get_node(&inner.node_id)
                    .is_some_and(|n| n.addr == addr)
                    != member
            }) => {}
        }
    }
}

/// Starts an election on a voter that has not heard from a leader (nor granted a vote)
/// for longer than the maximum election timeout plus one heartbeat interval plus a random
/// part of the timeout range.
///
/// openraft 0.9 lets a follower campaign only after the leader lease (the maximum election
/// timeout) AND a randomized election timeout have both passed since the last heartbeat,
/// so a leader crash costs up to twice the maximum election timeout. Its voters already
/// grant votes once their lease has passed, so this detector campaigns then: one heartbeat
/// interval later, so the other voters' leases (which may have started a heartbeat later)
/// have passed too, and spread by the random part to avoid split votes. A new leader is
/// then elected within about 1.6 maximum election timeouts (unless two voters campaign at
/// the same moment); openraft's own timer remains the fallback.
async fn detect_leader_failure(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let check = Duration::from_millis(LEADER_FAILURE_CHECK_INTERVAL_MS);
    let random_part = |inner: &Inner| {
        let spread = inner
            .election_timeout_max_ms
            .saturating_sub(inner.election_timeout_min_ms)
            .max(1);
        let random = (uuid::Uuid::new_v4().as_u128() % u128::from(spread)) as u64;
        Duration::from_millis(inner.election_timeout_max_ms + inner.heartbeat_interval_ms + random)
    };
    let mut silence_allowed = random_part(&inner);
    loop {
        if tokio::time::timeout(check, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
        let follower_voter = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow();
            m.state == ServerState::Follower
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == inner.node_id)
        };
        if !follower_voter {
            continue;
        }
        let silent = inner
            .last_leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if silent > silence_allowed {
            tracing::info!(
                node_id = inner.node_id,
                silent_ms = silent.as_millis() as u64,
                "no leader heard from; starting an election"
            );
            if inner.raft.trigger().elect().await.is_err() {
                return;
            }
            inner.heard_from_leader();
            silence_allowed = random_part(&inner);
        }
    }
}

/// One attempt to be added as a learner.
async fn join_once(inner: &Inner, addr: &str) -> Result<(), QuorumError> {
    let Some(client) = inner.client.as_ref() else {
        return Err(QuorumError::InvalidConfig(
            "an observer needs a controller listener".to_string(),
        ));
    };
    let body = RequestBody::AddLearner {
        node_id: inner.node_id,
        addr: addr.to_string(),
    };
    let deadline = Instant::now() + Duration::from_millis(JOIN_ATTEMPT_TIMEOUT_MS);
    let seeds: Vec<String> = inner.voter_addrs();
    call_leader(Some(client), Some(inner), &seeds, body, deadline, true)
        .await
        .map(|_| ())
}

impl Inner {
    /// Restarts the failure detector's clock (see [`detect_leader_failure`]).
    fn heard_from_leader(&self) {
        *self
            .last_leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The leader this node knows of, with its address (not if it is this node).
    fn leader_hint(&self) -> RpcError {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader_id = m.current_leader;
        let leader_addr = leader_id
            .filter(|id| *id != self.node_id)
            .and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .filter(|a| !a.is_empty());
        RpcError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    fn known_leader_addr(&self) -> Option<String> {
        match self.leader_hint() {
            RpcError::NotLeader { leader_addr, .. } => leader_addr,
            _ => None,
        }
    }

    /// Controller addresses of the voters this node knows (membership and configuration).
    fn voter_addrs(&self) -> Vec<String> {
        let mut addrs: BTreeSet<String> = self
            .config_voters
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(_, a)| a.clone())
            .collect();
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        for id in membership.voter_ids() {
            if id != self.node_id {
                if let Some(n) = membership.get_node(&id) {
                    addrs.insert(n.addr.clone());
                }
            }
        }
        addrs.into_iter().filter(|a| !a.is_empty()).collect()
    }

    /// Waits for `fut` (at most `timeout`), or fails early with the fatal error.
    async fn wait_or_fatal<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, QuorumError>>,
        timeout: Duration,
    ) -> Result<T, QuorumError> {
        let mut fatal = self.fatal.subscribe();
        let failed = async {
            match fatal.wait_for(|f| f.is_some()).await {
                Ok(f) => f.clone().unwrap_or(QuorumError::ShuttingDown),
                Err(_) => QuorumError::ShuttingDown,
            }
        };
        let run = async {
            tokio::select! {
                r = fut => r,
                e = failed => Err(e),
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(QuorumError::Timeout),
        }
    }

    async fn run_on_leader(
        &self,
        body: RequestBody,
        deadline: Instant,
        retry_ambiguous: bool,
    ) -> Result<ResponseBody, QuorumError> {
        if let Some(e) = self.fatal.borrow().clone() {
            return Err(e);
        }
        // Without a transport (`client` is None) only the local controller can answer.
        call_leader(
            self.client.as_deref(),
            Some(self),
            &[],
            body,
            deadline,
            retry_ambiguous,
        )
        .await
    }

    /// Handles a leader-only request here: NotLeader if this node is not the leader.
    async fn dispatch(&self, body: RequestBody) -> Result<ResponseBody, RpcError> {
        match body {
            RequestBody::Status => Ok(ResponseBody::Status(Box::new(self.status()))),
            RequestBody::Submit {
                request,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(timeout_ms);
                match self.submit_local(request, timeout).await {
                    Ok((response, applied_index)) => Ok(ResponseBody::Submit {
                        response,
                        applied_index,
                    }),
                    Err(QuorumError::NotController { .. }) => Err(self.leader_hint()),
                    Err(e) => Err(RpcError::Quorum(e)),
                }
            }
            RequestBody::AddLearner { node_id, addr } => {
                let deadline = Instant::now() + Duration::from_millis(JOIN_ATTEMPT_TIMEOUT_MS);
                self.leader_add_learner(node_id, &addr, deadline).await?;
                Ok(ResponseBody::MembershipChanged)
            }
            RequestBody::AddVoter {
                node_id,
                addr,
                timeout_ms,
            } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                self.leader_add_voter(node_id, &addr, deadline).await?;
                Ok(ResponseBody::MembershipChanged)
            }
            RequestBody::RemoveVoter {
                node_id,
                timeout_ms,
            } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                self.leader_remove_voter(node_id, deadline).await?;
                Ok(ResponseBody::MembershipChanged)
            }
            RequestBody::Vote(_)
            | RequestBody::AppendEntries(_)
            | RequestBody::InstallSnapshot(_) => Err(RpcError::Quorum(QuorumError::InvalidConfig(
                "Raft messages are not leader requests".to_string(),
            ))),
        }
    }

    /// Hands a request to this node's controller task and waits for its answer.
    async fn submit_local(
        &self,
        req: ControllerRequest,
        timeout: Duration,
    ) -> Result<controller_task::Answer, QuorumError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(QuorumError::ShuttingDown);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { req, reply };
        let run = async {
            self.jobs
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

    fn membership_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> RpcError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RpcError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                RpcError::Quorum(QuorumError::Membership(match c {
                    ChangeMembershipError::InProgress(p) => {
                        format!("another membership change is in progress ({p})")
                    }
                    other => other.to_string(),
                }))
            }
            RaftError::Fatal(f) => RpcError::Quorum(QuorumError::Storage(f.to_string())),
        }
    }

    /// The current membership: voter ids and every node's address.
    fn membership(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        )
    }

    async fn with_deadline<T>(
        deadline: Instant,
        fut: impl std::future::Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Quorum(QuorumError::Timeout)),
        }
    }

    /// Changes the membership, waiting out (until `deadline`) another change in progress.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        retain: bool,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        loop {
            let attempt = tokio::time::timeout_at(
                deadline.into(),
                self.raft.change_membership(change.clone(), retain),
            )
            .await;
            match attempt {
                Err(_) => return Err(RpcError::Quorum(QuorumError::Timeout)),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                )))) => {
                    let pause = Duration::from_millis(MEMBERSHIP_IN_PROGRESS_RETRY_MS);
                    if Instant::now() + pause >= deadline {
                        return Err(RpcError::Quorum(QuorumError::Membership(format!(
                            "another membership change is still in progress ({p})"
                        ))));
                    }
                    tokio::time::sleep(pause).await;
                    if !self.is_leader() {
                        return Err(self.leader_hint());
                    }
                }
                Ok(Err(e)) => return Err(self.membership_error(e)),
            }
        }
    }

    async fn leader_add_learner(
        &self,
        node_id: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        if !self.is_leader() {
            return Err(self.leader_hint());
        }
        if node_id == self.node_id {
            // A leader that removed itself asks its successor to take it back; adding
            // itself would keep it leading (openraft lets a learner lead).
            return Err(RpcError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        let (voters, nodes) = self.membership();
        match nodes.get(&node_id) {
            Some(current) if current == addr => return Ok(()),
            Some(current) if voters.contains(&node_id) => {
                return Err(RpcError::Quorum(QuorumError::Membership(format!(
                    "node {node_id} is a voter at {current}; a node at {addr} cannot use its id"
                ))))
            }
            _ => {}
        }
        let change = if nodes.contains_key(&node_id) {
            // A learner that moved: update its address (learners do not vote, so this is
            // safe).
            ChangeMembers::SetNodes(BTreeMap::from([(node_id, BasicNode::new(addr))]))
        } else {
            ChangeMembers::AddNodes(BTreeMap::from([(node_id, BasicNode::new(addr))]))
        };
        self.change_membership(change, true, deadline).await?;
        tracing::info!(node_id, addr, "added observer to the metadata quorum");
        Ok(())
    }

    async fn leader_add_voter(
        &self,
        node_id: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        if !self.is_leader() {
            return Err(self.leader_hint());
        }
        let (voters, nodes) = self.membership();
        if voters.contains(&node_id) {
            return match nodes.get(&node_id) {
                Some(current) if current != addr => Err(RpcError::Quorum(QuorumError::Membership(
                    format!("node {node_id} already is a voter, at {current} (not {addr})"),
                ))),
                _ => Ok(()),
            };
        }
        self.leader_add_learner(node_id, addr, deadline).await?;
        // Wait until the learner has caught up with the log as it is now, so the new voter
        // set can commit without waiting for it.
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let mut metrics = self.raft.metrics();
        Self::with_deadline(deadline, async {
            metrics
                .wait_for(|m| {
                    m.state != ServerState::Leader
                        || m.replication
                            .as_ref()
                            .and_then(|r| r.get(&node_id).cloned().flatten())
                            .is_some_and(|matched| matched.index >= target)
                })
                .await
                .map_err(|_| RpcError::Quorum(QuorumError::ShuttingDown))?;
            Ok(())
        })
        .await?;
        if !self.is_leader() {
            return Err(self.leader_hint());
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        self.change_membership(change, true, deadline).await?;
        tracing::info!(node_id, addr, "added voter to the metadata quorum");
        Ok(())
    }

    async fn leader_remove_voter(
        &self,
        node_id: NodeId,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        if !self.is_leader() {
            return Err(self.leader_hint());
        }
        let (voters, _) = self.membership();
        if !voters.contains(&node_id) {
            return Ok(());
        }
        if voters.len() == 1 {
            return Err(RpcError::Quorum(QuorumError::Membership(format!(
                "node {node_id} is the only voter; a quorum needs at least one"
            ))));
        }
        // A removed voter stays a learner (it keeps following the log), except the leader
        // itself: openraft lets a learner keep leading, so the leader leaves the
        // membership entirely, steps down once that is committed, and then asks the new
        // leader to take it back as a learner (see `keep_membership`).
        let retain = node_id != self.node_id;
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
        self.change_membership(change, retain, deadline).await?;
        tracing::info!(
            node_id,
            "removed voter from the metadata quorum (it stays an observer)"
        );
        Ok(())
    }

    fn status(&self) -> QuorumStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => QuorumRole::Leader,
            ServerState::Candidate => QuorumRole::Candidate,
            ServerState::Follower => QuorumRole::Follower,
            ServerState::Learner => QuorumRole::Learner,
            ServerState::Shutdown => QuorumRole::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let addr_of = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        let voters: BTreeMap<NodeId, String> =
            voter_ids.iter().map(|id| (*id, addr_of(id))).collect();
        let observers: BTreeMap<NodeId, String> = membership
            .learner_ids()
            .map(|id| (id, addr_of(&id)))
            .collect();
        let leading = m.state == ServerState::Leader;
        let last = m.last_log_index;
        let member = |id: NodeId, role: MemberRole| {
            let matched = if !leading {
                None
            } else if id == self.node_id {
                last
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
            };
            let last_contact_ms = if !leading {
                None
            } else if id == self.node_id {
                Some(0)
            } else {
                self.client
                    .as_ref()
                    .and_then(|c| c.last_contact(id))
                    .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
            };
            MemberStatus {
                node_id: id,
                addr: addr_of(&id),
                role,
                matched_index: matched,
                lag: if leading {
                    Some(last.unwrap_or(0).saturating_sub(matched.unwrap_or(0)))
                } else {
                    None
                },
                last_contact_ms,
            }
        };
        let mut members: Vec<MemberStatus> = voters
            .keys()
            .map(|id| member(*id, MemberRole::Voter))
            .collect();
        members.extend(observers.keys().map(|id| member(*id, MemberRole::Observer)));
        let image = self.image_rx.borrow().clone();
        let committed = self.committed_index.load(Ordering::Acquire);
        QuorumStatus {
            node_id: self.node_id,
            role,
            member_role: if voter_ids.contains(&self.node_id) {
                MemberRole::Voter
            } else {
                MemberRole::Observer
            },
            leader_id: m.current_leader,
            current_term: m.current_term,
            last_log_index: last,
            last_applied_index: image.last_applied_index,
            committed_index: (committed != store::NO_INDEX).then_some(committed),
            voters,
            observers,
            members,
            membership_changing: membership.get_joint_config().len() > 1,
            image_digest: image.digest(),
            cluster_id: image.cluster_id.clone(),
            controller_addr: self.advertised_addr.clone(),
        }
    }

    /// Refuses a request from a node of another cluster.
    fn check_cluster(&self, request: &RpcRequest) -> Result<(), RpcError> {
        use transport::Identity;
        if let (Some(theirs), Some(ours)) = (&request.cluster_id, self.identity.cluster_id()) {
            if *theirs != ours {
                return Err(RpcError::Quorum(transport::cluster_mismatch(
                    &match request.from {
                        Some(id) => format!("node {id}"),
                        None => "the caller".to_string(),
                    },
                    theirs,
                    &format!("node {}", self.node_id),
                    &ours,
                )));
            }
        }
        Ok(())
    }

    async fn answer(&self, request: RpcRequest) -> Result<ResponseBody, RpcError> {
        self.check_cluster(&request)?;
        let fatal = |e: RaftError<NodeId>| match e {
            RaftError::Fatal(f) => RpcError::Quorum(QuorumError::Storage(f.to_string())),
            RaftError::APIError(never) => match never {},
        };
        match request.body {
            RequestBody::Vote(v) => {
                let r = self.raft.vote(v.into_raft()).await.map_err(fatal)?;
                if r.vote_granted {
                    // As in Raft, granting a vote restarts the election timer: the
                    // candidate is about to lead.
                    self.heard_from_leader();
                }
                Ok(ResponseBody::Vote(WireVoteResponse::from_raft(&r)))
            }
            RequestBody::AppendEntries(a) => {
                let r = self
                    .raft
                    .append_entries(a.into_raft())
                    .await
                    .map_err(fatal)?;
                if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                    // Accepted the sender as the leader.
                    self.heard_from_leader();
                }
                Ok(ResponseBody::AppendEntries(WireAppendResponse::from_raft(
                    &r,
                )))
            }
            RequestBody::InstallSnapshot(s) => {
                match self.raft.install_snapshot(s.into_raft()).await {
                    Ok(r) => Ok(ResponseBody::InstallSnapshot(
                        WireSnapshotResponse::from_raft(&r),
                    )),
                    Err(RaftError::APIError(e)) => Err(RpcError::from_install_snapshot(&e)),
                    Err(RaftError::Fatal(f)) => {
                        Err(RpcError::Quorum(QuorumError::Storage(f.to_string())))
                    }
                }
            }
            other => self.dispatch(other).await,
        }
    }
}

impl transport::Handler for Inner {
    async fn handle(&self, request: RpcRequest) -> RpcResponse {
        use transport::Identity;
        let what = request.body.name();
        let from = request.from;
        let body = self.answer(request).await;
        if let Err(e) = &body {
            tracing::debug!(request = what, ?from, error = %e, "controller RPC refused");
        }
        RpcResponse {
            cluster_id: self.identity.cluster_id(),
            node_id: self.node_id,
            body,
        }
    }

    fn undecodable(&self, error: String) -> RpcResponse {
        use transport::Identity;
        RpcResponse {
            cluster_id: self.identity.cluster_id(),
            node_id: self.node_id,
            body: Err(RpcError::Quorum(QuorumError::InvalidConfig(format!(
                "undecodable controller RPC request (a different keel version?): {error}"
            )))),
        }
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

#[cfg(test)]
mod cluster_tests;
