//! The metadata image: the state of the cluster as of one point of the metadata log.
//!
//! This module owns [`MetadataImage`] and the rules for replaying a
//! [`MetadataRecord`] into it. The image is pure data: it is built only by replaying
//! records in log order ([`MetadataImage::apply`]), replay is deterministic, and a record
//! that does not fit (unknown topic, stale broker epoch, ...) is ignored with a warning,
//! never a panic, so every node that replays the same log holds the same image (compare
//! [`MetadataImage::digest`]). Consumers share it as `Arc<MetadataImage>`.
//!
//! It must not do I/O, read clocks, or know about Raft or RocksDB; the quorum module
//! decides when and where images are persisted, using `ImageKey` to learn which parts a
//! record changed.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::records::BrokerEndpoint;
use crate::records::ConfigResource;
use crate::records::MetadataBatch;
use crate::records::MetadataRecord;

/// Leader id meaning "this partition has no leader", as in Kafka.
pub const NO_LEADER: i32 = -1;

/// The cluster metadata as of [`MetadataImage::last_applied_index`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerImage>,
    pub topics: BTreeMap<Uuid, TopicImage>,
    /// Index over `topics`; always consistent with it.
    pub topic_ids_by_name: BTreeMap<String, Uuid>,
    /// Config overrides per resource; a resource without overrides has no entry.
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// First producer id of the next block the controller hands out.
    pub next_producer_id: i64,
    /// Lowest broker epoch the controller may hand out next.
    pub next_broker_epoch: i64,
    /// Finalized feature levels.
    pub features: BTreeMap<String, i16>,
    /// Raft log index of the last entry applied to this image (0 = none).
    pub last_applied_index: u64,
    /// The cluster's id, once the first active controller recorded it.
    pub cluster_id: Option<String>,
    /// Partition reassignments in progress, per topic id and partition; a topic without
    /// one has no entry. Read it through [`MetadataImage::reassignment`] and
    /// [`MetadataImage::reassignments`].
    pub reassignments_by_topic: BTreeMap<Uuid, BTreeMap<i32, Reassignment>>,
}

/// A partition reassignment in progress (KIP-455). While it runs the partition's replicas
/// are the original replicas followed by `adding`; it completes when every `target`
/// replica is in the ISR, and the replicas then become `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replica list asked for (first = preferred leader).
    pub target: Vec<i32>,
    /// Target replicas that were not replicas when the reassignment started.
    pub adding: Vec<i32>,
    /// Replicas the reassignment takes away (original replicas not in `target`).
    pub removing: Vec<i32>,
}

/// One registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    pub broker_epoch: i64,
    pub endpoints: Vec<BrokerEndpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// One topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: BTreeMap<i32, PartitionImage>,
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Broker id of the leader, or [`NO_LEADER`].
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// The image fields that are not keyed by broker, topic or config resource.
///
/// The quorum store persists an image as one header plus one value per [`ImageKey`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageHeader {
    pub next_producer_id: i64,
    pub next_broker_epoch: i64,
    pub features: BTreeMap<String, i16>,
    pub last_applied_index: u64,
    pub cluster_id: Option<String>,
}

/// A separately persisted part of an image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ImageKey {
    /// [`ImageHeader`].
    Header,
    /// `brokers[id]`.
    Broker(i32),
    /// `topics[id]` (and its `topic_ids_by_name` entry, which is derived).
    Topic(Uuid),
    /// `configs[resource]`.
    Config(ConfigResource),
    /// `reassignments_by_topic[id]`.
    Reassignments(Uuid),
}

impl MetadataImage {
    /// The image of an empty log.
    pub fn new() -> Self {
        MetadataImage::default()
    }

    /// Replays one record. Never panics; a record that does not fit is ignored with a
    /// warning.
    pub fn apply(&mut self, r: &MetadataRecord) {
        match r {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                broker_epoch,
                endpoints,
                rack,
                fenced,
            } => {
                if let Some(existing) = self.brokers.get(broker_id) {
                    if *broker_epoch < existing.broker_epoch {
                        tracing::warn!(
                            broker_id,
                            broker_epoch,
                            current_epoch = existing.broker_epoch,
                            "ignoring RegisterBroker with an epoch older than the current registration"
                        );
                        return;
                    }
                }
                self.brokers.insert(
                    *broker_id,
                    BrokerImage {
                        broker_id: *broker_id,
                        incarnation_id: *incarnation_id,
                        broker_epoch: *broker_epoch,
                        endpoints: endpoints.clone(),
                        rack: rack.clone(),
                        fenced: *fenced,
                    },
                );
                self.next_broker_epoch = self.next_broker_epoch.max(broker_epoch.saturating_add(1));
            }
            MetadataRecord::UnregisterBroker {
                broker_id,
                broker_epoch,
            } => {
                if self.broker_with_epoch(*broker_id, *broker_epoch, "UnregisterBroker") {
                    self.brokers.remove(broker_id);
                }
            }
            MetadataRecord::FenceBroker {
                broker_id,
                broker_epoch,
            } => {
                if self.broker_with_epoch(*broker_id, *broker_epoch, "FenceBroker") {
                    if let Some(b) = self.brokers.get_mut(broker_id) {
                        b.fenced = true;
                    }
                }
            }
            MetadataRecord::UnfenceBroker {
                broker_id,
                broker_epoch,
            } => {
                if self.broker_with_epoch(*broker_id, *broker_epoch, "UnfenceBroker") {
                    if let Some(b) = self.brokers.get_mut(broker_id) {
                        b.fenced = false;
                    }
                }
            }
            MetadataRecord::Topic { name, topic_id } => {
                if self.topics.contains_key(topic_id) {
                    tracing::warn!(%topic_id, name, "ignoring Topic record for an existing topic id");
                    return;
                }
                if let Some(existing) = self.topic_ids_by_name.get(name) {
                    tracing::warn!(%topic_id, name, existing_id = %existing, "ignoring Topic record for an existing topic name");
                    return;
                }
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        topic_id: *topic_id,
                        partitions: BTreeMap::new(),
                    },
                );
                self.topic_ids_by_name.insert(name.clone(), *topic_id);
            }
            MetadataRecord::RemoveTopic { topic_id } => match self.topics.remove(topic_id) {
                Some(topic) => {
                    self.reassignments_by_topic.remove(topic_id);
                    self.topic_ids_by_name.remove(&topic.name);
                    self.configs.remove(&ConfigResource::Topic(topic.name));
                }
                None => tracing::warn!(%topic_id, "ignoring RemoveTopic for an unknown topic id"),
            },
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
            } => {
                let Some(topic) = self.topics.get_mut(topic_id) else {
                    tracing::warn!(%topic_id, partition, "ignoring Partition record for an unknown topic id");
                    return;
                };
                if *partition < 0 {
                    tracing::warn!(%topic_id, partition, "ignoring Partition record with a negative partition id");
                    return;
                }
                topic.partitions.insert(
                    *partition,
                    PartitionImage {
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        partition_epoch: *partition_epoch,
                    },
                );
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader,
                isr,
                replicas,
            } => {
                let Some(p) = self
                    .topics
                    .get_mut(topic_id)
                    .and_then(|t| t.partitions.get_mut(partition))
                else {
                    tracing::warn!(%topic_id, partition, "ignoring PartitionChange for an unknown partition");
                    return;
                };
                if let Some(replicas) = replicas {
                    p.replicas = replicas.clone();
                }
                if let Some(isr) = isr {
                    p.isr = isr.clone();
                }
                if let Some(leader) = leader {
                    if *leader != p.leader {
                        p.leader = *leader;
                        p.leader_epoch = p.leader_epoch.saturating_add(1);
                    }
                }
                p.partition_epoch = p.partition_epoch.saturating_add(1);
            }
            MetadataRecord::Config {
                resource,
                name,
                value,
            } => {
                if let ConfigResource::Topic(topic) = resource {
                    if !self.topic_ids_by_name.contains_key(topic) {
                        tracing::warn!(topic, name, "ignoring Config record for an unknown topic");
                        return;
                    }
                }
                match value {
                    Some(v) => {
                        self.configs
                            .entry(resource.clone())
                            .or_default()
                            .insert(name.clone(), v.clone());
                    }
                    None => {
                        if let Some(overrides) = self.configs.get_mut(resource) {
                            overrides.remove(name);
                            if overrides.is_empty() {
                                self.configs.remove(resource);
                            }
                        }
                    }
                }
            }
            MetadataRecord::ProducerIds {
                broker_id,
                broker_epoch,
                next_producer_id,
            } => {
                if *next_producer_id <= self.next_producer_id {
                    tracing::warn!(
                        broker_id,
                        broker_epoch,
                        next_producer_id,
                        current = self.next_producer_id,
                        "ignoring ProducerIds record that does not advance the next producer id"
                    );
                    return;
                }
                self.next_producer_id = *next_producer_id;
            }
            MetadataRecord::FeatureLevel { name, level } => {
                if *level == 0 {
                    self.features.remove(name);
                } else {
                    self.features.insert(name.clone(), *level);
                }
            }
            MetadataRecord::ClusterId { cluster_id } => match &self.cluster_id {
                None => self.cluster_id = Some(cluster_id.clone()),
                Some(current) if current == cluster_id => {}
                Some(current) => tracing::warn!(
                    current = %current,
                    ignored = %cluster_id,
                    "ignoring ClusterId record: the cluster id never changes"
                ),
            },
            MetadataRecord::PartitionReassignment {
                topic_id,
                partition,
                target,
            } => self.apply_reassignment(*topic_id, *partition, target.as_deref()),
        }
    }

    fn apply_reassignment(&mut self, topic_id: Uuid, partition: i32, target: Option<&[i32]>) {
        let Some(p) = self
            .topics
            .get(&topic_id)
            .and_then(|t| t.partitions.get(&partition))
        else {
            tracing::warn!(%topic_id, partition, "ignoring PartitionReassignment for an unknown partition");
            return;
        };
        let Some(target) = target else {
            if let Some(by_partition) = self.reassignments_by_topic.get_mut(&topic_id) {
                by_partition.remove(&partition);
                if by_partition.is_empty() {
                    self.reassignments_by_topic.remove(&topic_id);
                }
            }
            return;
        };
        if target.is_empty() {
            tracing::warn!(%topic_id, partition, "ignoring PartitionReassignment with an empty target");
            return;
        }
        let original = self.original_replicas(&topic_id, partition, &p.replicas);
        let reassignment = Reassignment {
            target: target.to_vec(),
            adding: target
                .iter()
                .copied()
                .filter(|r| !original.contains(r))
                .collect(),
            removing: original
                .iter()
                .copied()
                .filter(|r| !target.contains(r))
                .collect(),
        };
        self.reassignments_by_topic
            .entry(topic_id)
            .or_default()
            .insert(partition, reassignment);
    }

    /// The replicas a partition had before its reassignment in progress (`replicas` less
    /// the adding ones), or `replicas` if none is in progress.
    pub fn original_replicas(&self, topic_id: &Uuid, partition: i32, replicas: &[i32]) -> Vec<i32> {
        match self.reassignment(topic_id, partition) {
            Some(r) => replicas
                .iter()
                .copied()
                .filter(|id| !r.adding.contains(id))
                .collect(),
            None => replicas.to_vec(),
        }
    }

    /// The reassignment in progress for one partition, if any.
    pub fn reassignment(&self, topic_id: &Uuid, partition: i32) -> Option<&Reassignment> {
        self.reassignments_by_topic
            .get(topic_id)
            .and_then(|by_partition| by_partition.get(&partition))
    }

    /// Every reassignment in progress, by topic id then partition.
    pub fn reassignments(&self) -> impl Iterator<Item = (Uuid, i32, &Reassignment)> {
        self.reassignments_by_topic
            .iter()
            .flat_map(|(topic_id, by_partition)| {
                by_partition
                    .iter()
                    .map(move |(partition, r)| (*topic_id, *partition, r))
            })
    }

    /// Replays the records of the Raft entry at `log_index`.
    pub fn apply_batch(&mut self, log_index: u64, batch: &MetadataBatch) {
        for r in &batch.records {
            self.apply(r);
        }
        self.mark_applied(log_index);
    }

    /// Notes that the Raft entry at `log_index` (which carried no records: a leader's blank
    /// entry or a membership change) has been applied.
    pub fn mark_applied(&mut self, log_index: u64) {
        if log_index < self.last_applied_index {
            tracing::warn!(
                log_index,
                last_applied_index = self.last_applied_index,
                "applied index moved backwards"
            );
        }
        self.last_applied_index = log_index;
    }

    fn broker_with_epoch(&self, broker_id: i32, broker_epoch: i64, what: &str) -> bool {
        match self.brokers.get(&broker_id) {
            Some(b) if b.broker_epoch == broker_epoch => true,
            Some(b) => {
                tracing::warn!(
                    broker_id,
                    broker_epoch,
                    current_epoch = b.broker_epoch,
                    "ignoring {what} with a stale broker epoch"
                );
                false
            }
            None => {
                tracing::warn!(
                    broker_id,
                    broker_epoch,
                    "ignoring {what} for an unknown broker"
                );
                false
            }
        }
    }

    /// The topic called `name`, if it exists.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids_by_name
            .get(name)
            .and_then(|id| self.topics.get(id))
    }

    /// The config overrides of topic `name` (defaults are not included).
    pub fn topic_configs(&self, name: &str) -> BTreeMap<String, String> {
        self.configs
            .get(&ConfigResource::Topic(name.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Broker ids of the registered, unfenced brokers, ascending.
    pub fn unfenced_broker_ids(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.broker_id)
            .collect()
    }

    /// A stable 64-bit hash of the whole image (FNV-1a over a fixed field order), for
    /// checking that two nodes replayed the same log to the same state. It does not depend
    /// on the serialization format or on the Rust version.
    pub fn digest(&self) -> u64 {
        let mut h = StableHasher::new();
        h.u64(self.brokers.len() as u64);
        for b in self.brokers.values() {
            h.i32(b.broker_id);
            h.bytes(b.incarnation_id.as_bytes());
            h.i64(b.broker_epoch);
            h.u64(b.endpoints.len() as u64);
            for e in &b.endpoints {
                h.str(&e.listener);
                h.str(&e.host);
                h.u64(u64::from(e.port));
            }
            h.opt_str(b.rack.as_deref());
            h.bool(b.fenced);
        }
        h.u64(self.topics.len() as u64);
        for t in self.topics.values() {
            h.bytes(t.topic_id.as_bytes());
            h.str(&t.name);
            h.u64(t.partitions.len() as u64);
            for (id, p) in &t.partitions {
                h.i32(*id);
                h.i32s(&p.replicas);
                h.i32s(&p.isr);
                h.i32(p.leader);
                h.i32(p.leader_epoch);
                h.i32(p.partition_epoch);
            }
        }
        // `topic_ids_by_name` is derived from `topics`, but hashing it catches an index
        // that went out of sync.
        h.u64(self.topic_ids_by_name.len() as u64);
        for (name, id) in &self.topic_ids_by_name {
            h.str(name);
            h.bytes(id.as_bytes());
        }
        h.u64(self.configs.len() as u64);
        for (resource, overrides) in &self.configs {
            match resource {
                ConfigResource::Topic(name) => {
                    h.u8(0);
                    h.str(name);
                }
                ConfigResource::Broker(None) => h.u8(1),
                ConfigResource::Broker(Some(id)) => {
                    h.u8(2);
                    h.i32(*id);
                }
            }
            h.u64(overrides.len() as u64);
            for (k, v) in overrides {
                h.str(k);
                h.str(v);
            }
        }
        h.i64(self.next_producer_id);
        h.i64(self.next_broker_epoch);
        h.u64(self.features.len() as u64);
        for (name, level) in &self.features {
            h.str(name);
            h.i32(i32::from(*level));
        }
        h.u64(self.last_applied_index);
        // Hashed only when present, so images without one keep their digest.
        if let Some(cluster_id) = &self.cluster_id {
            h.u8(1);
            h.str(cluster_id);
        }
        // Likewise: images without reassignments keep their digest.
        if !self.reassignments_by_topic.is_empty() {
            h.u8(2);
            h.u64(self.reassignments_by_topic.len() as u64);
            for (topic_id, by_partition) in &self.reassignments_by_topic {
                h.bytes(topic_id.as_bytes());
                h.u64(by_partition.len() as u64);
                for (partition, r) in by_partition {
                    h.i32(*partition);
                    h.i32s(&r.target);
                    h.i32s(&r.adding);
                    h.i32s(&r.removing);
                }
            }
        }
        h.finish()
    }

    /// The parts of this image that applying `r` to it may change. Call it *before*
    /// applying `r`: a removal needs the current image to know what it removes.
    pub(crate) fn keys_touched_by(&self, r: &MetadataRecord) -> Vec<ImageKey> {
        match r {
            MetadataRecord::RegisterBroker { broker_id, .. } => {
                vec![ImageKey::Broker(*broker_id), ImageKey::Header]
            }
            MetadataRecord::UnregisterBroker { broker_id, .. }
            | MetadataRecord::FenceBroker { broker_id, .. }
            | MetadataRecord::UnfenceBroker { broker_id, .. } => {
                vec![ImageKey::Broker(*broker_id)]
            }
            MetadataRecord::Topic { topic_id, .. }
            | MetadataRecord::Partition { topic_id, .. }
            | MetadataRecord::PartitionChange { topic_id, .. } => vec![ImageKey::Topic(*topic_id)],
            MetadataRecord::RemoveTopic { topic_id } => {
                let mut keys = vec![
                    ImageKey::Topic(*topic_id),
                    ImageKey::Reassignments(*topic_id),
                ];
                if let Some(t) = self.topics.get(topic_id) {
                    keys.push(ImageKey::Config(ConfigResource::Topic(t.name.clone())));
                }
                keys
            }
            MetadataRecord::Config { resource, .. } => vec![ImageKey::Config(resource.clone())],
            MetadataRecord::ProducerIds { .. }
            | MetadataRecord::FeatureLevel { .. }
            | MetadataRecord::ClusterId { .. } => vec![ImageKey::Header],
            MetadataRecord::PartitionReassignment { topic_id, .. } => {
                vec![ImageKey::Reassignments(*topic_id)]
            }
        }
    }

    /// The fields not keyed by broker, topic or config resource.
    pub(crate) fn header(&self) -> ImageHeader {
        ImageHeader {
            next_producer_id: self.next_producer_id,
            next_broker_epoch: self.next_broker_epoch,
            features: self.features.clone(),
            last_applied_index: self.last_applied_index,
            cluster_id: self.cluster_id.clone(),
        }
    }

    /// Reassembles an image from the parts the quorum store persisted (see [`ImageKey`]).
    /// The derived name index is rebuilt here; a duplicate topic name (which replay never
    /// produces) is reported as an error.
    pub(crate) fn from_parts(
        header: ImageHeader,
        brokers: BTreeMap<i32, BrokerImage>,
        topics: BTreeMap<Uuid, TopicImage>,
        configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
        reassignments_by_topic: BTreeMap<Uuid, BTreeMap<i32, Reassignment>>,
    ) -> Result<MetadataImage, String> {
        let mut topic_ids_by_name = BTreeMap::new();
        for (id, t) in &topics {
            if t.topic_id != *id {
                return Err(format!(
                    "topic '{}' is stored under id {id} but carries id {}",
                    t.name, t.topic_id
                ));
            }
            if let Some(other) = topic_ids_by_name.insert(t.name.clone(), *id) {
                return Err(format!(
                    "topic name '{}' is used by two topic ids: {other} and {id}",
                    t.name
                ));
            }
        }
        for (id, b) in &brokers {
            if b.broker_id != *id {
                return Err(format!(
                    "broker stored under id {id} carries id {}",
                    b.broker_id
                ));
            }
        }
        Ok(MetadataImage {
            brokers,
            topics,
            topic_ids_by_name,
            configs,
            next_producer_id: header.next_producer_id,
            next_broker_epoch: header.next_broker_epoch,
            features: header.features,
            last_applied_index: header.last_applied_index,
            cluster_id: header.cluster_id,
            reassignments_by_topic,
        })
    }
}

/// FNV-1a, 64 bit. Chosen because it is fixed forever (unlike `DefaultHasher`) and needs
/// no dependency; the digest compares replicas, it is not a defence against an attacker.
struct StableHasher(u64);

impl StableHasher {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        StableHasher(Self::OFFSET_BASIS)
    }

    fn raw(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn i32(&mut self, v: i32) {
        self.raw(&v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.raw(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }

    /// Length-prefixed, so that ("ab", "c") and ("a", "bc") hash differently.
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.raw(v);
    }

    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    fn i32s(&mut self, v: &[i32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.i32(*x);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
pub(crate) mod tests;
