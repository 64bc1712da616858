//! The replica manager: makes the set of hosted partitions follow the metadata image.
//!
//! It is the only place partition logs are created or deleted, and it does so only in
//! response to an image: a partition whose replicas include this node gets a log; a
//! log whose topic id is no longer in the image is deleted. Handlers that just changed
//! the metadata wait for `wait_applied` so their clients never race the change.
//!
//! Roles come from the image too: a partition whose committed leader is this node
//! becomes leader in the committed leader epoch (with the committed ISR); any other
//! hosted partition becomes a follower of the committed leader and is handed to the
//! fetcher for that leader, which truncates it before fetching. ISR changes the leaders
//! want are queued here and sent to the controller by `isr::run`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_raft::image::{MetadataImage, PartitionImage};
use keel_storage::fs::Filesystem;
use keel_storage::{checkpoint, Log, LogError};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::cleaner;
use super::fetcher::FetcherManager;
use super::log_dir::{self, RECOVERY_POINT_CHECKPOINT_FILE, REPLICATION_OFFSET_CHECKPOINT_FILE};
use super::partition::{IsrProposal, Partition, ReplicaSettings};
use crate::config::BrokerConfig;
use crate::topic_config;

/// Leaders look for followers that fell out of sync this often per
/// `replica.lag.time.max.ms` (Kafka checks at half of it).
const ISR_CHECKS_PER_LAG_TIME: u32 = 2;
/// Floor of the ISR check interval, whatever the lag time.
const MIN_ISR_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Errors opening the log directory at startup.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A partition log could not be opened (corrupt below its recovery point, I/O).
    #[error("cannot open partition log {dir}: {source}")]
    Log { dir: PathBuf, source: LogError },
    /// The log directory could not be listed or the checkpoint read.
    #[error("cannot read log directory {dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
}

#[derive(Default)]
struct Hosted {
    by_id: HashMap<(Uuid, i32), Arc<Partition>>,
    ids_by_name: HashMap<String, Uuid>,
}

/// Hosts this broker's partition replicas.
pub struct ReplicaManager {
    config: BrokerConfig,
    fs: Arc<dyn Filesystem>,
    hosted: RwLock<Hosted>,
    applied: watch::Sender<u64>,
    /// The image last applied, to detect config changes cheaply.
    last_image: std::sync::Mutex<Option<Arc<MetadataImage>>>,
    fetchers: FetcherManager,
    /// ISR changes leaders want, for `isr::run` to send to the controller.
    isr_tx: mpsc::UnboundedSender<(Arc<Partition>, IsrProposal)>,
    isr_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(Arc<Partition>, IsrProposal)>>>,
}

impl ReplicaManager {
    /// Creates an empty manager; `apply` opens the logs the image assigns here.
    pub fn new(
        config: BrokerConfig,
        fs: Arc<dyn Filesystem>,
        image: watch::Receiver<Arc<MetadataImage>>,
    ) -> Arc<Self> {
        let (isr_tx, isr_rx) = mpsc::unbounded_channel();
        Arc::new(ReplicaManager {
            fetchers: FetcherManager::new(&config, image),
            config,
            fs,
            hosted: RwLock::new(Hosted::default()),
            applied: watch::Sender::new(0),
            last_image: std::sync::Mutex::new(None),
            isr_tx,
            isr_rx: std::sync::Mutex::new(Some(isr_rx)),
        })
    }

    /// Queues an ISR change a leader wants (see `isr::run`).
    pub fn propose_isr(&self, partition: Arc<Partition>, proposal: IsrProposal) {
        if self
            .isr_tx
            .send((partition.clone(), proposal.clone()))
            .is_err()
        {
            partition.isr_change_failed(&proposal, now_ms());
        }
    }

    /// The queue of ISR changes; the first caller gets it.
    pub fn take_isr_proposals(
        &self,
    ) -> Option<mpsc::UnboundedReceiver<(Arc<Partition>, IsrProposal)>> {
        self.isr_rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// This broker's id.
    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A hosted partition by topic id.
    pub fn get(&self, topic_id: Uuid, partition: i32) -> Option<Arc<Partition>> {
        self.read_hosted()
            .by_id
            .get(&(topic_id, partition))
            .cloned()
    }

    /// A hosted partition by topic name.
    pub fn get_by_name(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let hosted = self.read_hosted();
        let id = hosted.ids_by_name.get(topic)?;
        hosted.by_id.get(&(*id, partition)).cloned()
    }

    /// Every hosted partition.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.read_hosted().by_id.values().cloned().collect()
    }

    fn read_hosted(&self) -> std::sync::RwLockReadGuard<'_, Hosted> {
        self.hosted.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until an image at least as new as `index` has been applied.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Makes the hosted set match `image`: opens or creates logs for partitions whose
    /// replicas include this node, deletes logs of topics that are gone, and applies
    /// config and leader-epoch changes.
    ///
    /// # Errors
    /// A log that cannot be opened (at startup this stops the broker with the message).
    pub fn apply(&self, image: &Arc<MetadataImage>) -> Result<(), StartupError> {
        let node = self.config.node_id;
        let recovery_points = self.read_offsets_checkpoint(RECOVERY_POINT_CHECKPOINT_FILE);
        let high_watermarks = self.read_offsets_checkpoint(REPLICATION_OFFSET_CHECKPOINT_FILE);
        let now = now_ms();
        let mut roles = Vec::new();
        let configs_changed = {
            let last = self.last_image.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref().is_none_or(|l| l.configs != image.configs)
        };
        let mut to_stop = Vec::new();
        {
            let mut hosted = self.hosted.write().unwrap_or_else(|e| e.into_inner());
            // Partitions that are no longer ours, or whose topic is gone.
            let wanted = |id: &Uuid, p: i32| {
                image
                    .topics
                    .get(id)
                    .and_then(|t| t.partitions.get(&p))
                    .is_some_and(|pi| pi.replicas.contains(&node))
            };
            let gone: Vec<(Uuid, i32)> = hosted
                .by_id
                .keys()
                .filter(|(id, p)| !wanted(id, *p))
                .cloned()
                .collect();
            for key in gone {
                if let Some(p) = hosted.by_id.remove(&key) {
                    to_stop.push(p);
                }
            }
            hosted
                .ids_by_name
                .retain(|_, id| image.topics.contains_key(id));
            for (topic_id, topic) in &image.topics {
                for (index, pi) in &topic.partitions {
                    if !pi.replicas.contains(&node) {
                        continue;
                    }
                    if let Some(existing) = hosted.by_id.get(&(*topic_id, *index)) {
                        if configs_changed {
                            existing.set_config(topic_config::log_config(
                                &self.config,
                                image,
                                &topic.name,
                            ));
                            existing.set_min_insync_replicas(self.min_insync(image, &topic.name));
                        }
                        roles.push((existing.clone(), pi.clone(), false));
                        continue;
                    }
                    let log_config = topic_config::log_config(&self.config, image, &topic.name);
                    let dir = log_dir::partition_dir(self.data_dir(), &topic.name, *index);
                    let recovery_point = recovery_points
                        .get(&(topic.name.clone(), *index))
                        .copied()
                        .unwrap_or(0);
                    let log = self.open_log(&dir, *topic_id, log_config, recovery_point)?;
                    let high_watermark = high_watermarks
                        .get(&(topic.name.clone(), *index))
                        .copied()
                        .unwrap_or(0);
                    let settings = ReplicaSettings {
                        node_id: node,
                        policy: self.config.flush_policy,
                        lag_time_max_ms: self.config.replica_lag_time_max.as_millis() as i64,
                        min_insync_replicas: self.min_insync(image, &topic.name),
                    };
                    let partition = Partition::new(
                        topic.name.clone(),
                        *topic_id,
                        *index,
                        log,
                        high_watermark,
                        settings,
                    );
                    tokio::spawn(partition.clone().run_flusher(self.config.flush_interval));
                    hosted.by_id.insert((*topic_id, *index), partition.clone());
                    hosted.ids_by_name.insert(topic.name.clone(), *topic_id);
                    roles.push((partition, pi.clone(), true));
                }
            }
        }
        for p in to_stop {
            self.fetchers.remove(p.topic_id, p.index);
            self.delete_partition(p);
        }
        for (p, pi, new) in roles {
            self.apply_role(&p, &pi, new, now);
        }
        *self.last_image.lock().unwrap_or_else(|e| e.into_inner()) = Some(image.clone());
        self.applied.send_replace(image.last_applied_index);
        Ok(())
    }

    fn min_insync(&self, image: &MetadataImage, topic: &str) -> usize {
        topic_config::min_insync_replicas(&self.config, image, topic).max(1) as usize
    }

    /// Makes `p`'s role what the committed partition state says.
    fn apply_role(&self, p: &Arc<Partition>, pi: &PartitionImage, new: bool, now: i64) {
        let node = self.config.node_id;
        if pi.leader == node {
            self.fetchers.remove(p.topic_id, p.index);
            p.become_leader(
                pi.leader_epoch,
                pi.partition_epoch,
                pi.replicas.clone(),
                pi.isr.clone(),
                now,
            );
            return;
        }
        let changed = p.become_follower(pi.leader, pi.leader_epoch);
        if pi.leader < 0 {
            self.fetchers.remove(p.topic_id, p.index);
        } else if changed || new {
            self.fetchers.assign(p.clone(), pi.leader, pi.leader_epoch);
        }
    }

    /// Opens (recovering) or creates a partition log; a directory left by another
    /// topic of the same name is deleted first.
    fn open_log(
        &self,
        dir: &Path,
        topic_id: Uuid,
        config: keel_storage::LogConfig,
        recovery_point: i64,
    ) -> Result<Log, StartupError> {
        let fs = self.fs.as_ref();
        if fs.exists(dir) && log_dir::read_partition_metadata(fs, dir) != Some(topic_id) {
            tracing::info!(dir = %dir.display(), "removing directory of an older topic with the same name");
            fs.remove_dir_all(dir).map_err(|e| StartupError::Dir {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        if !fs.exists(dir) {
            fs.create_dir_all(dir)
                .and_then(|_| log_dir::write_partition_metadata(fs, dir, topic_id))
                .and_then(|_| fs.sync_dir(self.data_dir()))
                .map_err(|e| StartupError::Dir {
                    dir: dir.to_path_buf(),
                    reason: e.to_string(),
                })?;
        }
        let now = now_ms();
        let (log, report) =
            Log::open(self.fs.clone(), dir, config, recovery_point, now).map_err(|source| {
                StartupError::Log {
                    dir: dir.to_path_buf(),
                    source,
                }
            })?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                "recovery truncated {} bytes of torn or corrupt tail; log end now {}",
                report.truncated_bytes,
                report.log_end_offset
            );
        }
        Ok(log)
    }

    fn delete_partition(&self, p: Arc<Partition>) {
        p.stop();
        let dir = p.log().dir().to_path_buf();
        tracing::info!(topic = %p.topic, partition = p.index, "deleting partition log");
        if let Err(e) = self.fs.remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot delete partition directory: {e}");
        }
    }

    /// Deletes partition directories that no hosted partition owns (left by topics
    /// deleted while this broker was down, or by an interrupted deletion).
    pub fn remove_orphan_dirs(&self) {
        let hosted: Vec<PathBuf> = self
            .all()
            .iter()
            .map(|p| p.log().dir().to_path_buf())
            .collect();
        let Ok(entries) = self.fs.read_dir(self.data_dir()) else {
            return;
        };
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if log_dir::parse_partition_dir_name(name).is_none() || hosted.contains(&path) {
                continue;
            }
            tracing::info!(dir = %path.display(), "removing partition directory no topic owns");
            if let Err(e) = self.fs.remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), "cannot remove: {e}");
            }
        }
    }

    /// Reads an offsets checkpoint of the log directory; unreadable counts as empty
    /// (every log then recovers from its start, every high watermark starts at 0).
    fn read_offsets_checkpoint(&self, file: &str) -> HashMap<(String, i32), i64> {
        let path = self.data_dir().join(file);
        match checkpoint::read_offsets(self.fs.as_ref(), &path) {
            Ok(entries) => entries.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
            Err(e) => {
                tracing::warn!(
                    "{file} unreadable ({e}); starting from offset 0 for every partition"
                );
                HashMap::new()
            }
        }
    }

    /// Writes every hosted partition's recovery point (its durable offset) and high
    /// watermark.
    pub fn checkpoint_recovery_points(&self) {
        let all = self.all();
        let recovery: Vec<(String, i32, i64)> = all
            .iter()
            .map(|p| (p.topic.clone(), p.index, p.durable_offset()))
            .collect();
        let path = self.data_dir().join(RECOVERY_POINT_CHECKPOINT_FILE);
        if let Err(e) = checkpoint::write_offsets(self.fs.as_ref(), &path, &recovery) {
            tracing::warn!("cannot write recovery point checkpoint: {e}");
        }
        let high_watermarks: Vec<(String, i32, i64)> = all
            .iter()
            .map(|p| (p.topic.clone(), p.index, p.high_watermark()))
            .collect();
        let path = self.data_dir().join(REPLICATION_OFFSET_CHECKPOINT_FILE);
        if let Err(e) = checkpoint::write_offsets(self.fs.as_ref(), &path, &high_watermarks) {
            tracing::warn!("cannot write high watermark checkpoint: {e}");
        }
    }

    /// Periodic work: retention, time-based rolls, recovery point checkpoints; and, if
    /// `log.cleaner.enable`, the log cleaner task alongside.
    pub async fn run_housekeeping(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.config.cleaner_enable {
            let settings = cleaner::CleanerSettings::from_config(&self.config);
            tokio::spawn(cleaner::run(self.clone(), settings, shutdown.clone()));
        }
        let mut retention = tokio::time::interval(self.config.retention_check_interval);
        let mut checkpoint = tokio::time::interval(self.config.recovery_point_checkpoint_interval);
        let mut isr_check = tokio::time::interval(
            (self.config.replica_lag_time_max / ISR_CHECKS_PER_LAG_TIME)
                .max(MIN_ISR_CHECK_INTERVAL),
        );
        loop {
            tokio::select! {
                _ = isr_check.tick() => {
                    let now = now_ms();
                    for p in self.all() {
                        if let Some(proposal) = p.maybe_shrink_isr(now) {
                            self.propose_isr(p, proposal);
                        }
                    }
                }
                _ = retention.tick() => {
                    let now = now_ms();
                    for p in self.all() {
                        tokio::task::block_in_place(|| p.housekeeping(now));
                    }
                }
                _ = checkpoint.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.checkpoint_recovery_points()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Flushes every partition, stops the flushers and writes recovery points.
    pub async fn shutdown(&self) {
        self.fetchers.shutdown();
        let partitions = self.all();
        for p in &partitions {
            p.flush_now().await;
            p.stop();
        }
        self.checkpoint_recovery_points();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
