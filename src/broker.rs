//! The broker's shared state: what every request handler can reach.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_raft::controller::{ControllerRequest, ControllerResponse};
use keel_raft::image::MetadataImage;
use keel_raft::quorum::{MetadataQuorum, QuorumError};
use tokio::sync::watch;

use crate::api::fetch_session::FetchSessionCache;
use crate::cluster::heartbeat::Session;
use crate::config::BrokerConfig;
use crate::group::offsets_topic::OffsetsTopicSpec;
use crate::group::state::GroupLimits;
use crate::group::{CoordinatorConfig, GroupCoordinator};
use crate::replication::ReplicaManager;
use crate::txn::producer_ids::ProducerIdAllocator;
use crate::txn::refusals::RecentRefusals;

/// How long a controller request waits when the client gave no timeout.
pub const DEFAULT_CONTROLLER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest wait for a controller request, whatever the client's timeout says.
pub const MIN_CONTROLLER_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a handler waits for its own metadata change to reach the replica manager.
pub const METADATA_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request handler needs.
pub struct Broker {
    /// Effective configuration.
    pub config: BrokerConfig,
    /// Cluster id from `meta.properties`.
    pub cluster_id: String,
    /// The metadata quorum.
    pub quorum: MetadataQuorum,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// Hosted partitions.
    pub replicas: Arc<ReplicaManager>,
    /// Incremental fetch sessions.
    pub fetch_sessions: FetchSessionCache,
    /// Producer ids for InitProducerId.
    pub producer_ids: ProducerIdAllocator,
    /// Idempotent batches refused before their append, for the gaps they leave.
    pub refusals: RecentRefusals,
    /// This broker's session with the controller.
    pub session: Session,
    /// The consumer group coordinator.
    pub groups: Arc<GroupCoordinator>,
    broker_epoch: AtomicI64,
    shutdown: watch::Sender<bool>,
}

impl Broker {
    /// Assembles the broker state.
    pub fn new(
        config: BrokerConfig,
        cluster_id: String,
        quorum: MetadataQuorum,
        replicas: Arc<ReplicaManager>,
    ) -> Arc<Self> {
        let image = quorum.image();
        let slots = config.fetch_session_cache_slots;
        let groups = GroupCoordinator::new(coordinator_config(&config), replicas.clone());
        Arc::new(Broker {
            config,
            cluster_id,
            quorum,
            image,
            replicas,
            fetch_sessions: FetchSessionCache::new(slots),
            producer_ids: ProducerIdAllocator::default(),
            refusals: RecentRefusals::default(),
            session: Session::default(),
            groups,
            broker_epoch: AtomicI64::new(-1),
            shutdown: watch::Sender::new(false),
        })
    }

    /// How `__consumer_offsets` is created.
    pub fn offsets_topic_spec(&self) -> OffsetsTopicSpec {
        let g = &self.config.groups;
        OffsetsTopicSpec {
            partitions: g.offsets_topic_num_partitions,
            replication_factor: g.offsets_topic_replication_factor,
            segment_bytes: g.offsets_topic_segment_bytes,
        }
    }

    /// The latest committed metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The "controller" clients are told about: the active controller when it is also a
    /// broker they can reach, else this broker, which forwards admin requests (as
    /// Kafka in KRaft mode answers with a broker, never a controller-only node).
    pub fn controller_id(&self) -> i32 {
        let leader = self.quorum.leader_id().map(|id| id as i32);
        let image = self.image();
        match leader {
            Some(id) if image.brokers.get(&id).is_some_and(|b| !b.fenced) => id,
            _ => self.config.node_id,
        }
    }

    /// This broker's epoch from its registration.
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// Records the epoch the controller gave this broker's registration.
    pub fn set_broker_epoch(&self, epoch: i64) {
        self.broker_epoch.store(epoch, Ordering::Release);
    }

    /// Runs a request through the controller and waits until this broker's replica
    /// manager has applied the result, so the client's next request sees it.
    ///
    /// # Errors
    /// The quorum could not commit (no controller, timeout, shutting down).
    pub async fn submit(&self, req: ControllerRequest) -> Result<ControllerResponse, QuorumError> {
        self.submit_within(req, DEFAULT_CONTROLLER_REQUEST_TIMEOUT)
            .await
    }

    /// [`Broker::submit`] bounded by a client's request timeout (at least
    /// `MIN_CONTROLLER_REQUEST_TIMEOUT`, at most `request.timeout.max.ms`).
    ///
    /// # Errors
    /// As [`Broker::submit`]; `QuorumError::Timeout` when the time runs out.
    pub async fn submit_within(
        &self,
        req: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, QuorumError> {
        let timeout = timeout.clamp(
            MIN_CONTROLLER_REQUEST_TIMEOUT,
            self.config.request_timeout_max,
        );
        let resp = self.quorum.submit_with_timeout(req, timeout).await?;
        let index = self.image().last_applied_index;
        if !self
            .replicas
            .wait_applied(index, METADATA_PROPAGATION_TIMEOUT)
            .await
        {
            tracing::warn!(index, "replica manager did not apply metadata in time");
        }
        Ok(resp)
    }

    /// A receiver that changes to `true` when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells every connection and task to stop.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

fn coordinator_config(config: &BrokerConfig) -> CoordinatorConfig {
    let g = &config.groups;
    CoordinatorConfig {
        node_id: config.node_id,
        limits: GroupLimits {
            min_session_timeout_ms: g.min_session_timeout_ms,
            max_session_timeout_ms: g.max_session_timeout_ms,
            initial_rebalance_delay_ms: g.initial_rebalance_delay_ms,
            max_size: g.max_size,
        },
        offsets_partitions: g.offsets_topic_num_partitions,
        commit_timeout: g.offsets_commit_timeout,
        retention_ms: g.offsets_retention_ms,
        retention_check_interval: g.offsets_retention_check_interval,
        load_buffer_bytes: g.offsets_load_buffer_bytes,
    }
}
