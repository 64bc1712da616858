//! The Raft state machine: the metadata image, applied into RocksDB.
//!
//! This module owns the `sm` and `snapshot` column families. Applying a batch of committed
//! entries replays their records into the in-memory [`MetadataImage`] and writes, in ONE
//! RocksDB `WriteBatch`, the parts of the image those records touched (see
//! [`ImageKey`]), the last applied log id and the last membership. A restart therefore
//! loads the image as of the last apply instead of replaying the log from zero. After every
//! apply the new image is published on a `watch` channel.
//!
//! `sm` layout (values encoded by [`crate::codec`]):
//!
//! | key | value |
//! |---|---|
//! | `applied` | [`StoredLogId`] |
//! | `membership` | [`StoredMembership`] |
//! | `image/h` | [`ImageHeader`] |
//! | `image/b/<broker id, 4 bytes>` | [`crate::BrokerImage`] |
//! | `image/t/<topic id, 16 bytes>` | [`crate::TopicImage`] |
//! | `image/c/<resource>` | [`codec::ConfigOverrides`] |
//! | `image/r/<topic id, 16 bytes>` | [`codec::TopicReassignments`] |
//!
//! Snapshots are the encoded [`SnapshotPayload`] (image + applied id + membership), kept
//! under `snapshot/data` with their meta under `snapshot/meta`.

// openraft's error types are large by design; they are its API, not ours to box.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::storage::RaftStateMachine;
use openraft::AnyError;
use openraft::BasicNode;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::SnapshotMeta;
use openraft::StoredMembership as RaftStoredMembership;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::WriteBatch;
use rocksdb::DB;
use tokio::sync::watch;

use super::store::cf;
use super::store::encode;
use super::store::get_decoded;
use super::store::write_batch;
use super::store::Db;
use super::store::CF_SM;
use super::store::CF_SNAPSHOT;
use super::stored::SnapshotPayload;
use super::stored::StoredLogId;
use super::stored::StoredMembership;
use super::stored::StoredSnapshotMeta;
use super::types::Entry;
use super::types::LogId;
use super::types::NodeId;
use super::types::StorageError;
use super::types::StorageIOError;
use super::types::TypeConfig;
use super::QuorumError;
use crate::codec;
use crate::image::ImageHeader;
use crate::image::ImageKey;
use crate::image::MetadataImage;
use crate::records::ConfigResource;

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_IMAGE_HEADER: &[u8] = b"image/h";
const PREFIX_IMAGE: &[u8] = b"image/";
/// The first key after every `image/...` key ('0' follows '/').
const PREFIX_IMAGE_END: &[u8] = b"image0";
const PREFIX_BROKER: &[u8] = b"image/b/";
const PREFIX_TOPIC: &[u8] = b"image/t/";
const PREFIX_CONFIG: &[u8] = b"image/c/";
const PREFIX_REASSIGNMENTS: &[u8] = b"image/r/";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

type Membership = RaftStoredMembership<NodeId, BasicNode>;

fn image_key(key: &ImageKey) -> Vec<u8> {
    match key {
        ImageKey::Header => KEY_IMAGE_HEADER.to_vec(),
        ImageKey::Broker(id) => {
            let mut k = PREFIX_BROKER.to_vec();
            // Flip the sign bit so keys sort like the ids.
            k.extend_from_slice(&((*id as u32) ^ 0x8000_0000).to_be_bytes());
            k
        }
        ImageKey::Topic(id) => {
            let mut k = PREFIX_TOPIC.to_vec();
            k.extend_from_slice(id.as_bytes());
            k
        }
        ImageKey::Config(resource) => {
            let mut k = PREFIX_CONFIG.to_vec();
            match resource {
                ConfigResource::Topic(name) => {
                    k.push(b't');
                    k.extend_from_slice(name.as_bytes());
                }
                ConfigResource::Broker(None) => k.push(b'd'),
                ConfigResource::Broker(Some(id)) => {
                    k.push(b'b');
                    k.extend_from_slice(&id.to_be_bytes());
                }
            }
            k
        }
        ImageKey::Reassignments(id) => {
            let mut k = PREFIX_REASSIGNMENTS.to_vec();
            k.extend_from_slice(id.as_bytes());
            k
        }
    }
}

/// Adds to `batch` the current value of `key` in `image`, or its deletion.
fn put_image_part(
    db: &DB,
    batch: &mut WriteBatch,
    image: &MetadataImage,
    key: &ImageKey,
) -> Result<(), AnyError> {
    let sm = cf(db, CF_SM)?;
    let k = image_key(key);
    let value = match key {
        ImageKey::Header => Some(encode(&image.header())?),
        ImageKey::Broker(id) => image.brokers.get(id).map(encode).transpose()?,
        ImageKey::Topic(id) => image.topics.get(id).map(encode).transpose()?,
        ImageKey::Config(resource) => image
            .configs
            .get(resource)
            .map(|overrides| encode(&(resource.clone(), overrides.clone())))
            .transpose()?,
        ImageKey::Reassignments(id) => image
            .reassignments_by_topic
            .get(id)
            .map(|by_partition| encode(&(*id, by_partition.clone())))
            .transpose()?,
    };
    match value {
        Some(v) => batch.put_cf(sm, k, v),
        None => batch.delete_cf(sm, k),
    }
    Ok(())
}

/// Adds every part of `image` to `batch`, replacing whatever image was stored.
fn put_whole_image(db: &DB, batch: &mut WriteBatch, image: &MetadataImage) -> Result<(), AnyError> {
    let sm = cf(db, CF_SM)?;
    batch.delete_range_cf(sm, PREFIX_IMAGE, PREFIX_IMAGE_END);
    put_image_part(db, batch, image, &ImageKey::Header)?;
    for id in image.brokers.keys() {
        put_image_part(db, batch, image, &ImageKey::Broker(*id))?;
    }
    for id in image.topics.keys() {
        put_image_part(db, batch, image, &ImageKey::Topic(*id))?;
    }
    for resource in image.configs.keys() {
        put_image_part(db, batch, image, &ImageKey::Config(resource.clone()))?;
    }
    for id in image.reassignments_by_topic.keys() {
        put_image_part(db, batch, image, &ImageKey::Reassignments(*id))?;
    }
    Ok(())
}

/// Loads the image stored in `sm` (an empty image if none is).
fn load_image(db: &DB) -> Result<MetadataImage, String> {
    let sm = cf(db, CF_SM).map_err(|e| e.to_string())?;
    let mut header: Option<ImageHeader> = None;
    let mut brokers = BTreeMap::new();
    let mut topics = BTreeMap::new();
    let mut configs = BTreeMap::new();
    let mut reassignments = BTreeMap::new();
    for item in db.iterator_cf(sm, IteratorMode::From(PREFIX_IMAGE, Direction::Forward)) {
        let (key, value) = item.map_err(|e| format!("RocksDB read failed: {e}"))?;
        if !key.starts_with(PREFIX_IMAGE) {
            break;
        }
        let describe = |e: codec::CodecError| format!("{}: {e}", String::from_utf8_lossy(&key));
        if &*key == KEY_IMAGE_HEADER {
            header = Some(codec::decode(&value).map_err(describe)?);
        } else if key.starts_with(PREFIX_BROKER) {
            let b: crate::image::BrokerImage = codec::decode(&value).map_err(describe)?;
            brokers.insert(b.broker_id, b);
        } else if key.starts_with(PREFIX_TOPIC) {
            let t: crate::image::TopicImage = codec::decode(&value).map_err(describe)?;
            topics.insert(t.topic_id, t);
        } else if key.starts_with(PREFIX_CONFIG) {
            let (resource, overrides): codec::ConfigOverrides =
                codec::decode(&value).map_err(describe)?;
            configs.insert(resource, overrides);
        } else if key.starts_with(PREFIX_REASSIGNMENTS) {
            let (topic_id, by_partition): codec::TopicReassignments =
                codec::decode(&value).map_err(describe)?;
            reassignments.insert(topic_id, by_partition);
        } else {
            return Err(format!("unexpected key {}", String::from_utf8_lossy(&key)));
        }
    }
    match header {
        None if brokers.is_empty()
            && topics.is_empty()
            && configs.is_empty()
            && reassignments.is_empty() =>
        {
            Ok(MetadataImage::new())
        }
        None => Err("image parts are stored but the image header is missing".to_string()),
        Some(header) => MetadataImage::from_parts(header, brokers, topics, configs, reassignments),
    }
}

/// Distinguishes snapshots built by this process at the same log id.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

fn new_snapshot_id(applied: Option<&LogId>) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
    match applied {
        Some(id) => format!("{}-{}-{millis}-{seq}", id.leader_id.term, id.index),
        None => format!("none-{millis}-{seq}"),
    }
}

/// The state machine (openraft's `RaftStateMachine`).
pub(crate) struct StateMachine {
    db: Arc<Db>,
    image: Arc<MetadataImage>,
    applied: Option<LogId>,
    membership: Membership,
    image_tx: watch::Sender<Arc<MetadataImage>>,
    /// Serializes writes of the stored snapshot, so an older one never replaces a newer.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    /// Loads the state machine persisted in `db`.
    ///
    /// # Errors
    /// [`QuorumError::Corrupt`] if a stored value cannot be decoded.
    pub(crate) fn load(
        db: Arc<Db>,
    ) -> Result<(StateMachine, watch::Receiver<Arc<MetadataImage>>), QuorumError> {
        let corrupt =
            |what: &str, e: String| QuorumError::Corrupt(format!("state machine {what}: {e}"));
        let applied: Option<StoredLogId> = get_decoded(&db, CF_SM, KEY_APPLIED)
            .map_err(|e| corrupt("applied log id", e.to_string()))?;
        let membership: Option<StoredMembership> = get_decoded(&db, CF_SM, KEY_MEMBERSHIP)
            .map_err(|e| corrupt("membership", e.to_string()))?;
        let image = load_image(&db).map_err(|e| corrupt("image", e))?;
        let applied = applied.map(StoredLogId::to_raft);
        let applied_index = applied.map(|a| a.index).unwrap_or(0);
        if image.last_applied_index != applied_index {
            return Err(corrupt(
                "image",
                format!(
                    "image is at log index {} but the applied log id is at {applied_index}",
                    image.last_applied_index
                ),
            ));
        }
        let image = Arc::new(image);
        let (image_tx, image_rx) = watch::channel(image.clone());
        let sm = StateMachine {
            db,
            image,
            applied,
            membership: membership.map(|m| m.to_raft()).unwrap_or_default(),
            image_tx,
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        Ok((sm, image_rx))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut image = (*self.image).clone();
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        let mut touched = BTreeSet::from([ImageKey::Header]);
        let mut replies = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => image.mark_applied(entry.log_id.index),
                EntryPayload::Normal(batch) => {
                    for r in &batch.records {
                        touched.extend(image.keys_touched_by(r));
                        image.apply(r);
                    }
                    image.mark_applied(entry.log_id.index);
                }
                EntryPayload::Membership(m) => {
                    membership = Membership::new(Some(entry.log_id), m.clone());
                    image.mark_applied(entry.log_id.index);
                }
            }
            applied = Some(entry.log_id);
            replies.push(());
        }
        let Some(last) = applied else {
            return Ok(replies);
        };

        let write_err = |e: AnyError| StorageError::from(StorageIOError::apply(last, e));
        let mut batch = WriteBatch::default();
        for key in &touched {
            put_image_part(&self.db, &mut batch, &image, key).map_err(write_err)?;
        }
        let sm = cf(&self.db, CF_SM).map_err(write_err)?;
        batch.put_cf(
            sm,
            KEY_APPLIED,
            encode(&StoredLogId::from_raft(&last)).map_err(write_err)?,
        );
        batch.put_cf(
            sm,
            KEY_MEMBERSHIP,
            encode(&StoredMembership::from_raft(&membership)).map_err(write_err)?,
        );
        write_batch(&self.db, batch, false)
            .await
            .map_err(write_err)?;

        self.image = Arc::new(image);
        self.applied = applied;
        self.membership = membership;
        self.image_tx.send_replace(self.image.clone());
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            image: self.image.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            snapshot_lock: self.snapshot_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let read_err =
            |e: AnyError| StorageError::from(StorageIOError::read_snapshot(signature.clone(), e));
        let data = snapshot.into_inner();
        let payload: SnapshotPayload =
            codec::decode(&data).map_err(|e| read_err(AnyError::new(&e)))?;
        let meta_applied = meta.last_log_id.as_ref().map(StoredLogId::from_raft);
        let image_index = meta_applied.map(|a| a.index).unwrap_or(0);
        if payload.last_applied != meta_applied || payload.image.last_applied_index != image_index {
            return Err(read_err(AnyError::error(format!(
                "snapshot data is at {:?} (image at index {}) but its meta says {:?}",
                payload.last_applied, payload.image.last_applied_index, meta_applied
            ))));
        }

        let write_err =
            |e: AnyError| StorageError::from(StorageIOError::write_snapshot(signature.clone(), e));
        let membership = meta.last_membership.clone();
        let mut batch = WriteBatch::default();
        put_whole_image(&self.db, &mut batch, &payload.image).map_err(write_err)?;
        let sm = cf(&self.db, CF_SM).map_err(write_err)?;
        match &meta.last_log_id {
            Some(id) => batch.put_cf(
                sm,
                KEY_APPLIED,
                encode(&StoredLogId::from_raft(id)).map_err(write_err)?,
            ),
            None => batch.delete_cf(sm, KEY_APPLIED),
        }
        batch.put_cf(
            sm,
            KEY_MEMBERSHIP,
            encode(&StoredMembership::from_raft(&membership)).map_err(write_err)?,
        );
        let snap = cf(&self.db, CF_SNAPSHOT).map_err(write_err)?;
        batch.put_cf(
            snap,
            KEY_SNAPSHOT_META,
            encode(&StoredSnapshotMeta::from_raft(meta)).map_err(write_err)?,
        );
        batch.put_cf(snap, KEY_SNAPSHOT_DATA, &data);
        {
            let _guard = self.snapshot_lock.lock().await;
            write_batch(&self.db, batch, false)
                .await
                .map_err(write_err)?;
        }

        self.image = Arc::new(payload.image);
        self.applied = meta.last_log_id;
        self.membership = membership;
        self.image_tx.send_replace(self.image.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        read_stored_snapshot(&self.db)
    }
}

fn read_stored_snapshot(db: &DB) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let read_err = |e: AnyError| StorageError::from(StorageIOError::read_snapshot(None, e));
    let meta: Option<StoredSnapshotMeta> =
        get_decoded(db, CF_SNAPSHOT, KEY_SNAPSHOT_META).map_err(read_err)?;
    let Some(meta) = meta else {
        return Ok(None);
    };
    let snap = cf(db, CF_SNAPSHOT).map_err(read_err)?;
    let data = db
        .get_cf(snap, KEY_SNAPSHOT_DATA)
        .map_err(|e| read_err(AnyError::error(format!("RocksDB read failed: {e}"))))?
        .ok_or_else(|| {
            read_err(AnyError::error(
                "snapshot meta is stored but its data is missing",
            ))
        })?;
    Ok(Some(Snapshot {
        meta: meta.to_raft(),
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// Builds a snapshot of the state machine as it was when the builder was made.
pub(crate) struct SnapshotBuilder {
    db: Arc<Db>,
    image: Arc<MetadataImage>,
    applied: Option<LogId>,
    membership: Membership,
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: new_snapshot_id(self.applied.as_ref()),
        };
        let write_err = |e: AnyError| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), e))
        };
        let payload = SnapshotPayload {
            last_applied: self.applied.as_ref().map(StoredLogId::from_raft),
            membership: StoredMembership::from_raft(&self.membership),
            image: (*self.image).clone(),
        };
        let data = encode(&payload).map_err(write_err)?;

        {
            let _guard = self.snapshot_lock.lock().await;
            let stored: Option<StoredSnapshotMeta> =
                get_decoded(&self.db, CF_SNAPSHOT, KEY_SNAPSHOT_META).map_err(write_err)?;
            let stored_index = stored
                .as_ref()
                .and_then(|m| m.last_log_id)
                .map(|id| id.index);
            let newer = match (stored_index, self.applied.map(|a| a.index)) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(s), Some(a)) => a >= s,
            };
            if newer {
                let snap = cf(&self.db, CF_SNAPSHOT).map_err(write_err)?;
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    snap,
                    KEY_SNAPSHOT_META,
                    encode(&StoredSnapshotMeta::from_raft(&meta)).map_err(write_err)?,
                );
                batch.put_cf(snap, KEY_SNAPSHOT_DATA, &data);
                write_batch(&self.db, batch, false)
                    .await
                    .map_err(write_err)?;
            }
        }
        tracing::info!(snapshot = %meta, bytes = data.len(), "built metadata snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
