//! One partition replica on this broker: its log, high watermark and flusher.
//!
//! The log sits behind a mutex held only for in-memory work and page-cache writes;
//! fsync and fetch reads run outside it through the storage crate's plans. Durability
//! is group commit: appends mark the partition dirty, one flusher task per partition
//! fsyncs everything appended so far in one go, then advances the durable offset
//! (and, under `log.flush.policy=always`, the high watermark) past it.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_storage::{AppendError, LeaderAppend, Log, LogConfig, ReadError, ReadPlan};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::config::FlushPolicy;

/// Exit status when an fsync fails: the log directory can no longer be trusted.
pub const EXIT_STATUS_FSYNC_FAILED: i32 = 74;

/// A partition replica hosted here.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub index: i32,
    log: Mutex<Log>,
    leader_epoch: AtomicI32,
    high_watermark: AtomicI64,
    log_start_offset: AtomicI64,
    log_end_offset: AtomicI64,
    policy: FlushPolicy,
    /// Offset below which every byte is fsynced.
    durable: watch::Sender<i64>,
    /// Woken when the high watermark or log start moves (long-poll fetches wait on it).
    changed: Notify,
    /// Woken by appends; the flusher waits on it.
    dirty: Notify,
    stopped: AtomicBool,
    stop: Notify,
}

/// What a fetch read gets: the data plan and the offsets a response reports.
pub struct PartitionRead {
    /// Bytes to send, read outside the lock.
    pub plan: ReadPlan,
    /// High watermark when the plan was made.
    pub high_watermark: i64,
    /// Log start offset when the plan was made.
    pub log_start_offset: i64,
    /// Log end offset when the plan was made.
    pub log_end_offset: i64,
}

impl Partition {
    /// Wraps an opened log. Under `always`, the high watermark starts at what is known
    /// to be on disk; the flusher is kicked at once to cover any recovered tail.
    pub fn new(
        topic: String,
        topic_id: Uuid,
        index: i32,
        log: Log,
        leader_epoch: i32,
        policy: FlushPolicy,
    ) -> Arc<Self> {
        let flushed = log.flushed_offset();
        let end = log.log_end_offset();
        let hw = match policy {
            FlushPolicy::Always => flushed.min(end),
            FlushPolicy::Interval => end,
        };
        let p = Arc::new(Partition {
            topic,
            topic_id,
            index,
            log_start_offset: AtomicI64::new(log.log_start_offset()),
            log_end_offset: AtomicI64::new(end),
            log: Mutex::new(log),
            leader_epoch: AtomicI32::new(leader_epoch),
            high_watermark: AtomicI64::new(hw),
            policy,
            durable: watch::Sender::new(flushed),
            changed: Notify::new(),
            dirty: Notify::new(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        });
        p.dirty.notify_one();
        p
    }

    /// The log, locked. Hold it only for in-memory work.
    pub fn log(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock means a panic mid-append; the process aborts on panic
        // (panic = "abort" in release), so poisoning only happens in tests.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    /// Sets the leader epoch from the metadata image.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.leader_epoch.store(epoch, Ordering::Release);
    }

    /// Offset below which records are visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.load(Ordering::Acquire)
    }

    /// Offset below which every byte is on disk.
    pub fn durable_offset(&self) -> i64 {
        *self.durable.borrow()
    }

    /// Applies a topic config change.
    pub fn set_config(&self, config: LogConfig) {
        self.log().set_config(config);
    }

    /// Appends a producer's batches as leader, straight from the caller's bytes (not
    /// copied, not modified). Does not wait for fsync.
    ///
    /// # Errors
    /// Invalid batches, producer-state violations and I/O errors from the log.
    pub fn append_as_leader(
        &self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<LeaderAppend, AppendError> {
        let mut log = self.log();
        let result = log.append_as_leader_shared(batches, self.leader_epoch(), now_ms)?;
        let end = log.log_end_offset();
        self.log_end_offset.store(end, Ordering::Release);
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        drop(log);
        if self.policy == FlushPolicy::Interval {
            self.advance_high_watermark(end);
        }
        self.dirty.notify_one();
        Ok(result)
    }

    /// Waits until `offset` (exclusive) is durable and visible, or `deadline` passes.
    /// Returns whether it got there.
    pub async fn wait_acknowledgeable(&self, offset: i64, deadline: tokio::time::Instant) -> bool {
        let mut rx = match self.policy {
            FlushPolicy::Always => self.durable.subscribe(),
            FlushPolicy::Interval => return self.high_watermark() >= offset || self.is_stopped(),
        };
        tokio::time::timeout_at(deadline, rx.wait_for(|d| *d >= offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Plans a fetch read bounded by the high watermark (or the log end for a
    /// replica read).
    ///
    /// # Errors
    /// `ReadError::OffsetOutOfRange` and I/O errors.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<PartitionRead, ReadError> {
        let hw = self.high_watermark();
        let log = self.log();
        let plan = log.read(offset, max_bytes, hw, min_one_batch)?;
        Ok(PartitionRead {
            plan,
            high_watermark: hw,
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
        })
    }

    /// A future that completes on the next high-watermark or log-start change.
    /// Create it before checking for data so that no change is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn advance_high_watermark(&self, to: i64) {
        let prev = self.high_watermark.fetch_max(to, Ordering::AcqRel);
        if to > prev {
            self.changed.notify_waiters();
        }
    }

    /// Moves the log start offset (DeleteRecords), persisted before returning.
    ///
    /// # Errors
    /// Offsets beyond the high watermark, and I/O errors.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, keel_storage::LogError> {
        let mut log = self.log();
        let start = log.delete_records_before(offset)?;
        self.log_start_offset.store(start, Ordering::Release);
        drop(log);
        self.changed.notify_waiters();
        Ok(start)
    }

    /// Runs retention and time-based rolls.
    pub fn housekeeping(&self, now_ms: i64) {
        let mut log = self.log();
        if let Err(e) = log.maybe_roll(now_ms) {
            tracing::warn!(topic = %self.topic, partition = self.index, "roll failed: {e}");
        }
        match log.enforce_retention(now_ms) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                topic = %self.topic,
                partition = self.index,
                "retention deleted {n} segments, log start now {}",
                log.log_start_offset()
            ),
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, "retention failed: {e}")
            }
        }
        self.log_start_offset
            .store(log.log_start_offset(), Ordering::Release);
        let hw = self.high_watermark();
        drop(log);
        // Retention may have moved the log start past a consumer's position.
        if hw < self.log_start_offset() {
            self.advance_high_watermark(self.log_start_offset());
        }
        self.changed.notify_waiters();
        self.dirty.notify_one();
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops the flusher after a last flush, and wakes every waiter.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.dirty.notify_one();
        self.changed.notify_waiters();
    }

    /// Fsyncs everything appended so far. A failed fsync stops the process: the
    /// kernel may have dropped the dirty pages, so a retry could report success for
    /// data that is gone.
    pub async fn flush_now(self: &Arc<Self>) {
        loop {
            let Some(plan) = self.log().flush_plan() else {
                return;
            };
            let result = tokio::task::spawn_blocking(move || plan.execute().map(|()| plan)).await;
            let plan = match result {
                Ok(Ok(plan)) => plan,
                Ok(Err(e)) => fatal_fsync(&self.topic, self.index, &e.to_string()),
                Err(e) => fatal_fsync(&self.topic, self.index, &e.to_string()),
            };
            let flushed = {
                let mut log = self.log();
                log.flush_completed(&plan);
                log.flushed_offset()
            };
            self.durable.send_if_modified(|d| {
                let moved = flushed > *d;
                *d = (*d).max(flushed);
                moved
            });
            if self.policy == FlushPolicy::Always {
                self.advance_high_watermark(flushed);
            }
        }
    }

    /// The flusher: under `always` it runs whenever appends arrive (group commit);
    /// under `interval` every `interval`.
    pub async fn run_flusher(self: Arc<Self>, interval: Duration) {
        loop {
            if self.is_stopped() {
                self.flush_now().await;
                return;
            }
            match self.policy {
                FlushPolicy::Always => self.dirty.notified().await,
                FlushPolicy::Interval => {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = self.stop.notified() => {}
                    }
                }
            }
            self.flush_now().await;
        }
    }
}

fn fatal_fsync(topic: &str, partition: i32, error: &str) -> ! {
    tracing::error!(
        topic,
        partition,
        "fsync failed: {error}; stopping the broker, the log directory cannot be trusted"
    );
    eprintln!("keel: fatal: fsync of {topic}-{partition} failed: {error}");
    std::process::exit(EXIT_STATUS_FSYNC_FAILED);
}
