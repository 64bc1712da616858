//! `keel server`: wires the node together and runs it until SIGINT or SIGTERM.
//!
//! Start-up order: lock the data directory and read its identity → open the metadata
//! quorum (RocksDB; the controller RPC listener when the cluster has more than one
//! node) → learn the cluster id and record it → and, on a broker: open the partition
//! logs the image assigns here (recovery) → register with the controller and heartbeat
//! until unfenced → follow the image → accept clients. Shutdown runs the other way: a
//! broker first asks the controller to move its leaderships away (controlled
//! shutdown), then stops accepting, flushes every log and writes recovery points.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_raft::controller::ControllerConfig;
use keel_raft::quorum::{MetadataQuorum, QuorumConfig};
use keel_storage::fs::{Filesystem, StdFs, VolatileFs};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::cluster::{heartbeat, identity, registration};
use crate::config::BrokerConfig;
use crate::protocol::connection;
use crate::replication::{self, ReplicaManager};

/// Directory under the data directory holding the metadata quorum's RocksDB.
pub const METADATA_DIR: &str = "__cluster_metadata";
/// How long start-up waits for the quorum to elect a controller and settle the
/// cluster id (a cluster's voters may start minutes apart).
pub const CLUSTER_FORMATION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long start-up waits for the controller to unfence this broker.
pub const UNFENCE_TIMEOUT: Duration = Duration::from_secs(120);
/// Raft leader heartbeat interval.
pub const RAFT_HEARTBEAT_INTERVAL_MS: u64 = 250;
/// Metadata entries between snapshots.
pub const RAFT_SNAPSHOT_EVERY_ENTRIES: u64 = 5000;

fn quorum_config(config: &BrokerConfig, cluster_id: Option<String>) -> QuorumConfig {
    let single_node = config.voters.len() == 1 && config.controller_listen.is_none();
    QuorumConfig {
        node_id: config.node_id as u64,
        dir: config.data_dir.join(METADATA_DIR),
        voters: config.voters.clone(),
        controller: ControllerConfig {
            default_num_partitions: config.num_partitions,
            default_replication_factor: config.default_replication_factor,
            register_brokers_unfenced: single_node,
            broker_session_timeout_ms: config.broker_session_timeout.as_millis() as u64,
            auto_leader_rebalance_enable: config.auto_leader_rebalance,
            leader_imbalance_check_interval_ms: config.leader_imbalance_check_interval.as_millis()
                as u64,
            ..ControllerConfig::default()
        },
        election_timeout_min_ms: config.election_timeout_ms,
        election_timeout_max_ms: config.election_timeout_ms * 2,
        heartbeat_interval_ms: RAFT_HEARTBEAT_INTERVAL_MS
            .min(config.election_timeout_ms / 4)
            .max(10),
        snapshot_every_entries: RAFT_SNAPSHOT_EVERY_ENTRIES,
        controller_listen: config.controller_listen,
        cluster_id,
    }
}

/// Runs the node until a shutdown signal.
///
/// # Errors
/// Anything that stops start-up: a locked or corrupt data directory, an address in
/// use, a metadata store that cannot open, another cluster's data directory, a
/// partition log corrupt below its recovery point.
pub async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let mut ident = identity::prepare(&config.data_dir, config.node_id)?;
    tracing::info!(
        node_id = ident.node_id,
        broker = config.is_broker,
        controller = config.is_controller,
        data_dir = %config.data_dir.display(),
        "starting keel"
    );
    let listener = if config.is_broker {
        Some(
            TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?,
        )
    } else {
        None
    };

    let metadata_dir = config.data_dir.join(METADATA_DIR);
    let quorum = MetadataQuorum::open(quorum_config(&config, ident.cluster_id.clone()))
        .await
        .with_context(|| {
            format!(
                "cannot open the metadata store in {}",
                metadata_dir.display()
            )
        })?;
    let cluster_id = quorum
        .wait_cluster_id(CLUSTER_FORMATION_TIMEOUT)
        .await
        .context(
            "the metadata quorum did not settle a cluster id (are a majority of the voters up?)",
        )?;
    ident.record_cluster_id(&cluster_id)?;
    tracing::info!(%cluster_id, "joined the cluster");

    let Some(listener) = listener else {
        // A controller-only node: it votes, replicates and runs the controller.
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Err(e) = quorum.shutdown().await {
            tracing::warn!("metadata quorum shutdown: {e}");
        }
        return Ok(());
    };

    let fs: Arc<dyn Filesystem> = if config.test_volatile_writes {
        tracing::warn!("test mode: partition log writes are kept in memory until fsynced");
        Arc::new(VolatileFs::new())
    } else {
        Arc::new(StdFs)
    };
    let replicas = ReplicaManager::new(config.clone(), fs, quorum.image());
    let image = quorum.image().borrow().clone();
    tokio::task::block_in_place(|| replicas.apply(&image))?;
    replicas.remove_orphan_dirs();

    let broker = Broker::new(config.clone(), cluster_id, quorum.clone(), replicas.clone());
    if let Some(proposals) = replicas.take_isr_proposals() {
        tokio::spawn(replication::isr::run(broker.clone(), proposals));
    }
    tokio::spawn(follow_image(broker.clone()));
    tokio::spawn(
        broker
            .groups
            .clone()
            .run(broker.quorum.image(), broker.shutdown_signal()),
    );
    let epoch = register_until_accepted(&broker).await?;
    tracing::info!(broker_epoch = epoch, "registered with the controller");
    if let Err(e) = heartbeat::beat(&broker).await {
        tracing::debug!("first heartbeat: {e}");
    }
    tokio::spawn(heartbeat::run(broker.clone()));
    if !broker.session.wait_unfenced(UNFENCE_TIMEOUT).await {
        tracing::warn!("still fenced after {UNFENCE_TIMEOUT:?}; serving clients anyway (partitions will not be led here)");
    }
    tokio::spawn(replicas.clone().run_housekeeping(broker.shutdown_signal()));

    tracing::info!(listen = %config.listen, advertised = %config.advertised(), "accepting clients");
    let mut shutdown = broker.shutdown_signal();
    let accept = {
        let broker = broker.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => { tokio::spawn(connection::serve(broker.clone(), stream, peer)); }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
        })
    };

    wait_for_signal().await;
    tracing::info!("shutting down");
    heartbeat::controlled_shutdown(&broker).await;
    broker.begin_shutdown();
    let _ = accept.await;
    replicas.shutdown().await;
    if let Err(e) = quorum.shutdown().await {
        tracing::warn!("metadata quorum shutdown: {e}");
    }
    tracing::info!("stopped");
    drop(ident);
    Ok(())
}

/// Registers, retrying while no controller can commit (a cluster still forming).
async fn register_until_accepted(broker: &Broker) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + CLUSTER_FORMATION_TIMEOUT;
    loop {
        match registration::register(broker).await {
            Ok(epoch) => return Ok(epoch),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!("registration not accepted yet: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::msg(e)),
        }
    }
}

/// Applies every new committed image to the replica manager.
async fn follow_image(broker: Arc<Broker>) {
    let mut rx = broker.quorum.image();
    let mut shutdown = broker.shutdown_signal();
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let image = rx.borrow_and_update().clone();
        let replicas = broker.replicas.clone();
        if let Err(e) = tokio::task::block_in_place(|| replicas.apply(&image)) {
            tracing::error!(
                "cannot apply metadata image {}: {e}",
                image.last_applied_index
            );
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
