//! The RocksDB database of one quorum node, and the Raft log in it.
//!
//! This module owns the database layout: one DB per node directory with four column
//! families,
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `log` | entry index, 8 bytes big-endian | [`StoredEntry`] |
//! | `meta` | `vote`, `last_purged`, `committed` | [`StoredVote`], [`StoredLogId`] |
//! | `sm` | `applied`, `membership`, `image/...` | see [`super::state_machine`] |
//! | `snapshot` | `meta`, `data` | the last built or installed snapshot |
//!
//! and the [`LogStore`] (openraft's `RaftLogStorage`). Durability: appending entries,
//! saving the vote, truncating and purging are written with `sync = true` and count (the
//! `LogFlushed` callback fires, the call returns) only after the synced write returned.
//! Other writes (state machine, committed index, snapshots) are not synced themselves;
//! RocksDB's single write-ahead log orders them, so after a crash the DB holds a prefix of
//! the writes and the next synced write makes all earlier ones durable. A failed write is
//! returned to openraft as a storage error, which stops the Raft node (never retried).

// openraft's error types are large by design; they are its API, not ours to box.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use openraft::AnyError;
use openraft::LogState;
use openraft::RaftLogReader;

use openraft::Vote;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DBCompressionType;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::stored::StoredEntry;
use super::stored::StoredLogId;
use super::stored::StoredVote;
use super::types::Entry;
use super::types::LogId;
use super::types::NodeId;
use super::types::StorageError;
use super::types::StorageIOError;
use super::types::TypeConfig;
use super::QuorumError;
use crate::codec;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";
const COLUMN_FAMILIES: [&str; 4] = [CF_LOG, CF_META, CF_SM, CF_SNAPSHOT];

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// RocksDB background threads (flush + compaction) per quorum DB; the metadata DB is small.
const ROCKSDB_BACKGROUND_JOBS: i32 = 2;

/// `committed_index` value meaning "nothing committed yet".
pub(crate) const NO_INDEX: u64 = u64::MAX;

/// The open RocksDB of a quorum node. Dropping the last handle closes it; whoever holds a
/// receiver from [`Db::closed`] learns when the close has finished (not merely begun), so
/// the directory can be opened again.
pub(crate) struct Db {
    // Field order matters: `db` is dropped (RocksDB closed) before `closed` signals.
    db: DB,
    closed: ClosedSignal,
}

struct ClosedSignal(tokio::sync::watch::Sender<bool>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        &self.db
    }
}

impl Db {
    /// Becomes `true` once the DB is closed.
    pub(crate) fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.0.subscribe()
    }
}

/// Opens (creating if needed) the quorum DB in `dir`.
///
/// # Errors
/// [`QuorumError::DirectoryLocked`] if another process (or another open handle in this
/// process) holds the DB, [`QuorumError::Corrupt`] if RocksDB reports corruption, and
/// [`QuorumError::Storage`] for anything else.
pub(crate) fn open_db(dir: &Path) -> Result<Arc<Db>, QuorumError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        QuorumError::Storage(format!(
            "cannot create quorum directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // keel builds RocksDB without compression libraries.
    opts.set_compression_type(DBCompressionType::None);
    opts.set_max_background_jobs(ROCKSDB_BACKGROUND_JOBS);
    let cfs = COLUMN_FAMILIES.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(DBCompressionType::None);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    match DB::open_cf_descriptors(&opts, dir, cfs) {
        Ok(db) => Ok(Arc::new(Db {
            db,
            closed: ClosedSignal(tokio::sync::watch::channel(false).0),
        })),
        Err(e) => Err(classify_open_error(dir, e)),
    }
}

fn classify_open_error(dir: &Path, e: rocksdb::Error) -> QuorumError {
    let detail = e.to_string();
    if detail.contains("/LOCK") || detail.contains("lock hold by current process") {
        QuorumError::DirectoryLocked {
            dir: dir.to_path_buf(),
            detail,
        }
    } else if e.kind() == rocksdb::ErrorKind::Corruption {
        QuorumError::Corrupt(format!("RocksDB in {}: {detail}", dir.display()))
    } else {
        QuorumError::Storage(format!(
            "cannot open RocksDB in {}: {detail}",
            dir.display()
        ))
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, AnyError> {
    db.cf_handle(name)
        .ok_or_else(|| AnyError::error(format!("column family '{name}' is missing")))
}

/// Writes `batch` on a blocking thread (a synced write waits for the disk), optionally
/// fsynced before it returns.
pub(crate) async fn write_batch(
    db: &Arc<Db>,
    batch: WriteBatch,
    sync: bool,
) -> Result<(), AnyError> {
    let db = db.clone();
    let res = tokio::task::spawn_blocking(move || {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        db.write_opt(batch, &opts)
    })
    .await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AnyError::error(format!("RocksDB write failed: {e}"))),
        Err(e) => Err(AnyError::error(format!("RocksDB write task failed: {e}"))),
    }
}

pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of_key(key: &[u8]) -> Result<u64, AnyError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| AnyError::error(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads and decodes one versioned value.
pub(crate) fn get_decoded<T: codec::Versioned>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
) -> Result<Option<T>, AnyError> {
    let cf = cf(db, cf_name)?;
    let Some(bytes) = db
        .get_pinned_cf(cf, key)
        .map_err(|e| AnyError::error(format!("RocksDB read failed: {e}")))?
    else {
        return Ok(None);
    };
    codec::decode::<T>(&bytes)
        .map(Some)
        .map_err(|e| AnyError::new(&e))
}

pub(crate) fn encode<T: codec::Versioned>(value: &T) -> Result<Vec<u8>, AnyError> {
    codec::encode(value).map_err(|e| AnyError::new(&e))
}

/// The Raft log and vote (openraft's `RaftLogStorage`); also its own log reader.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Db>,
    /// Last committed log index openraft told us about ([`NO_INDEX`] = none), for status.
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>, committed_index: Arc<AtomicU64>) -> Self {
        LogStore {
            db,
            committed_index,
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        let v: Option<StoredLogId> =
            get_decoded(&self.db, CF_META, KEY_LAST_PURGED).map_err(StorageIOError::read_logs)?;
        Ok(v.map(StoredLogId::to_raft))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = cf(&self.db, CF_LOG).map_err(StorageIOError::read_logs)?;
        let mut it = self.db.iterator_cf(cf, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(AnyError::error(format!(
                "RocksDB read failed: {e}"
            )))
            .into()),
            Some(Ok((key, value))) => {
                let entry = decode_entry(&key, &value)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    /// The committed log id persisted by `save_committed`, for `open` to report status.
    pub(crate) fn stored_committed(db: &DB) -> Result<Option<LogId>, QuorumError> {
        let v: Option<StoredLogId> = get_decoded(db, CF_META, KEY_COMMITTED)
            .map_err(|e| QuorumError::Corrupt(format!("committed log id: {e}")))?;
        Ok(v.map(StoredLogId::to_raft))
    }

    /// Whether the log and vote hold nothing: a brand-new node.
    pub(crate) fn is_pristine(db: &DB) -> Result<bool, QuorumError> {
        let read = |name: &str| -> Result<bool, QuorumError> {
            let cf = cf(db, name).map_err(|e| QuorumError::Storage(e.to_string()))?;
            let mut it = db.iterator_cf(cf, IteratorMode::Start);
            match it.next() {
                None => Ok(true),
                Some(Ok(_)) => Ok(false),
                Some(Err(e)) => Err(QuorumError::Storage(format!("RocksDB read failed: {e}"))),
            }
        };
        Ok(read(CF_LOG)? && read(CF_META)? && read(CF_SM)?)
    }
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
    let index = index_of_key(key).map_err(StorageIOError::read_logs)?;
    let stored: StoredEntry = codec::decode(value)
        .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
    if stored.log_id.index != index {
        return Err(StorageIOError::read_log_at_index(
            index,
            AnyError::error(format!(
                "entry stored under index {index} carries index {}",
                stored.log_id.index
            )),
        )
        .into());
    }
    Ok(stored.into_raft())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        // Exclusive end; None = to the end of the log.
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let cf = cf(&self.db, CF_LOG).map_err(StorageIOError::read_logs)?;
        let mut entries = Vec::new();
        let from = log_key(start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| {
                StorageIOError::read_logs(AnyError::error(format!("RocksDB read failed: {e}")))
            })?;
            let index = index_of_key(&key).map_err(StorageIOError::read_logs)?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            entries.push(decode_entry(&key, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.last_entry_id()? {
            Some(id) => Some(id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_META).map_err(StorageIOError::write_vote)?;
        let bytes = encode(&StoredVote::from_raft(vote)).map_err(StorageIOError::write_vote)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, KEY_VOTE, bytes);
        write_batch(&self.db, batch, true)
            .await
            .map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let v: Option<StoredVote> =
            get_decoded(&self.db, CF_META, KEY_VOTE).map_err(StorageIOError::read_vote)?;
        Ok(v.map(StoredVote::to_raft))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_META).map_err(StorageIOError::write)?;
        let mut batch = WriteBatch::default();
        match &committed {
            Some(id) => batch.put_cf(
                cf,
                KEY_COMMITTED,
                encode(&StoredLogId::from_raft(id)).map_err(StorageIOError::write)?,
            ),
            None => batch.delete_cf(cf, KEY_COMMITTED),
        }
        // Not synced: the committed index is a hint that lets a restart re-apply committed
        // entries early; losing it only delays that until the leader says so again.
        write_batch(&self.db, batch, false)
            .await
            .map_err(StorageIOError::write)?;
        self.committed_index.store(
            committed.map(|c| c.index).unwrap_or(NO_INDEX),
            Ordering::Release,
        );
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let v: Option<StoredLogId> =
            get_decoded(&self.db, CF_META, KEY_COMMITTED).map_err(StorageIOError::read)?;
        Ok(v.map(StoredLogId::to_raft))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = cf(&self.db, CF_LOG).map_err(StorageIOError::write_logs)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode(&StoredEntry::from_raft(&entry))
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, e))?;
            batch.put_cf(cf, log_key(entry.log_id.index), bytes);
        }
        // The entries count only once they are on disk: the callback fires after the synced
        // write returned.
        match write_batch(&self.db, batch, true).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_LOG).map_err(StorageIOError::write_logs)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, log_key(log_id.index), log_key(u64::MAX));
        batch.delete_cf(cf, log_key(u64::MAX));
        write_batch(&self.db, batch, true)
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log_cf = cf(&self.db, CF_LOG).map_err(StorageIOError::write_logs)?;
        let meta_cf = cf(&self.db, CF_META).map_err(StorageIOError::write_logs)?;
        let mut batch = WriteBatch::default();
        // The purge mark and the deletion go in one batch, so the log never has a hole
        // that the mark does not explain.
        batch.put_cf(
            meta_cf,
            KEY_LAST_PURGED,
            encode(&StoredLogId::from_raft(&log_id)).map_err(StorageIOError::write_logs)?,
        );
        batch.delete_range_cf(log_cf, log_key(0), log_key(log_id.index));
        batch.delete_cf(log_cf, log_key(log_id.index));
        write_batch(&self.db, batch, true)
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}
