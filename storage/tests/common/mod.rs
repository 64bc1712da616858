//! Helpers shared by the integration tests: a durable data directory on a FaultyFs,
//! batch builders, and append/flush/read shortcuts that fail the test on error.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_storage::batch::{validate_batches, BatchHeader};
use keel_storage::fs::{FaultyFs, Filesystem};
use keel_storage::testing::BatchBuilder;
use keel_storage::{AppendInfo, LeaderAppend, Log, LogConfig, RecoveryReport};

/// Wall clock used by tests that do not care about time.
pub const NOW_MS: i64 = 1_700_000_000_000;

/// A FaultyFs with a durable `/data` directory, and the partition dir inside it.
pub fn faulty_fs() -> (Arc<FaultyFs>, PathBuf) {
    let fs = Arc::new(FaultyFs::new());
    fs.create_dir_all(Path::new("/data")).expect("mkdir /data");
    fs.sync_dir(Path::new("/")).expect("sync /");
    (fs, PathBuf::from("/data/topic-0"))
}

/// Opens a log, failing the test on error.
pub fn open(
    fs: &Arc<FaultyFs>,
    dir: &Path,
    config: LogConfig,
    recovery_point: i64,
) -> (Log, RecoveryReport) {
    let fs: Arc<dyn Filesystem> = fs.clone();
    match Log::open(fs, dir, config, recovery_point, NOW_MS) {
        Ok(r) => r,
        Err(e) => panic!("open failed: {e}"),
    }
}

/// A batch of `records` records with values of `value_bytes`, timestamps from `ts`.
pub fn batch(records: usize, value_bytes: usize, ts: i64) -> Vec<u8> {
    BatchBuilder::new(records, value_bytes)
        .timestamp(ts)
        .build()
}

/// Appends as leader (epoch 0) and expects the batches to be written.
pub fn append(log: &mut Log, mut bytes: Vec<u8>) -> AppendInfo {
    match log.append_as_leader(&mut bytes, 0, NOW_MS) {
        Ok(LeaderAppend::Appended(info)) => info,
        other => panic!("append failed: {other:?}"),
    }
}

/// Plans, executes and completes a flush.
pub fn flush(log: &mut Log) {
    if let Some(plan) = log.flush_plan() {
        plan.execute().expect("flush");
        log.flush_completed(&plan);
    }
    assert_eq!(log.flushed_offset(), log.log_end_offset());
}

/// Reads and parses what a read plan returns.
pub fn read(log: &Log, offset: i64, max_bytes: usize, hw: i64, min_one: bool) -> Vec<BatchHeader> {
    let plan = log.read(offset, max_bytes, hw, min_one).expect("plan read");
    let bytes = plan.execute().expect("execute read");
    assert_eq!(bytes.len(), plan.len());
    validate_batches(&bytes, usize::MAX).expect("read returned whole valid batches")
}

/// The raw bytes a read plan returns.
pub fn read_bytes(log: &Log, offset: i64, max_bytes: usize) -> Vec<u8> {
    let plan = log
        .read(offset, max_bytes, i64::MAX, true)
        .expect("plan read");
    plan.execute().expect("execute read").to_vec()
}

/// A config with small segments and a small index interval.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Every byte from the log start to the log end, read plan by plan.
pub fn read_all(log: &Log) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let plan = log
            .read(offset, usize::MAX, i64::MAX, true)
            .expect("plan read");
        assert!(!plan.is_empty(), "empty read at {offset} below the log end");
        out.extend_from_slice(&plan.execute().expect("execute read"));
        offset = plan.next_offset();
    }
    out
}
