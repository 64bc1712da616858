//! `keel server`: wires the node together and runs it until SIGINT or SIGTERM.
//!
//! Start-up order: lock the data directory and read its identity → open the metadata
//! quorum (RocksDB) → open the partition logs the image assigns here (recovery) →
//! register with the controller → follow the image → accept clients. Shutdown runs
//! the other way and ends with every log flushed and its recovery point written.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_raft::controller::ControllerConfig;
use keel_raft::quorum::{MetadataQuorum, QuorumConfig};
use keel_storage::fs::StdFs;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::cluster::{identity, registration};
use crate::config::BrokerConfig;
use crate::protocol::connection;
use crate::replication::ReplicaManager;

/// Directory under the data directory holding the metadata quorum's RocksDB.
pub const METADATA_DIR: &str = "__cluster_metadata";
/// How long start-up waits for the quorum to elect a controller.
pub const CONTROLLER_ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Raft election timeout range and heartbeat, in milliseconds.
pub const RAFT_ELECTION_TIMEOUT_MIN_MS: u64 = 1000;
/// Upper end of the election timeout range.
pub const RAFT_ELECTION_TIMEOUT_MAX_MS: u64 = 2000;
/// Leader heartbeat interval.
pub const RAFT_HEARTBEAT_INTERVAL_MS: u64 = 250;
/// Metadata entries between snapshots.
pub const RAFT_SNAPSHOT_EVERY_ENTRIES: u64 = 5000;

/// Runs the node until a shutdown signal.
///
/// # Errors
/// Anything that stops start-up: a locked or corrupt data directory, an address in
/// use, a metadata store that cannot open, a partition log corrupt below its
/// recovery point.
pub async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let ident = identity::prepare(&config.data_dir, config.node_id)?;
    tracing::info!(
        node_id = ident.node_id,
        cluster_id = %ident.cluster_id,
        data_dir = %config.data_dir.display(),
        "starting keel"
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;

    let mut voters = std::collections::BTreeMap::new();
    voters.insert(config.node_id as u64, String::new());
    let quorum = MetadataQuorum::open(QuorumConfig {
        node_id: config.node_id as u64,
        dir: config.data_dir.join(METADATA_DIR),
        voters,
        controller: ControllerConfig {
            default_num_partitions: config.num_partitions,
            default_replication_factor: config.default_replication_factor,
            ..ControllerConfig::default()
        },
        election_timeout_min_ms: RAFT_ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max_ms: RAFT_ELECTION_TIMEOUT_MAX_MS,
        heartbeat_interval_ms: RAFT_HEARTBEAT_INTERVAL_MS,
        snapshot_every_entries: RAFT_SNAPSHOT_EVERY_ENTRIES,
    })
    .await
    .with_context(|| {
        format!(
            "cannot open the metadata store in {}",
            config.data_dir.join(METADATA_DIR).display()
        )
    })?;
    quorum
        .wait_until_leader_known(CONTROLLER_ELECTION_TIMEOUT)
        .await
        .context("no metadata controller was elected")?;

    let replicas = ReplicaManager::new(config.clone(), Arc::new(StdFs));
    let image = quorum.image().borrow().clone();
    tokio::task::block_in_place(|| replicas.apply(&image))?;
    replicas.remove_orphan_dirs();

    let broker = Broker::new(
        config.clone(),
        ident.cluster_id.clone(),
        quorum.clone(),
        replicas.clone(),
    );
    tokio::spawn(follow_image(broker.clone()));
    let epoch = registration::register(&broker)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(broker_epoch = epoch, "registered with the controller");

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
