//! Recovery after simulated power loss: torn tails, corruption, lost indexes and
//! snapshots, and truncations the caller's recovery point has not caught up with.

mod common;

use std::path::Path;

use common::*;
use keel_storage::fs::Filesystem;
use keel_storage::testing::BatchBuilder;
use keel_storage::{LeaderAppend, Log, LogConfig, LogError};

/// Appends `n` distinct batches and returns the bytes as stored (offsets assigned).
fn append_batches(log: &mut Log, n: usize, fill: u8) -> Vec<u8> {
    let mut stored = Vec::new();
    for i in 0..n {
        let mut bytes = BatchBuilder::new(1 + i % 3, 40 + i * 7)
            .fill(fill)
            .timestamp(i as i64)
            .build();
        match log.append_as_leader(&mut bytes, 2, NOW_MS) {
            Ok(LeaderAppend::Appended(_)) => stored.extend_from_slice(&bytes),
            other => panic!("append: {other:?}"),
        }
    }
    stored
}

fn corrupt_byte(fs: &dyn Filesystem, path: &Path, at: u64) {
    let f = fs.open(path, false).expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ 0x5a], at).expect("write byte");
    f.sync_data().expect("sync");
}

fn segment_path(dir: &Path, base: i64, ext: &str) -> std::path::PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

#[test]
fn unsynced_tail_is_truncated_cleanly_after_crash() {
    let mut saw_torn = false;
    let mut saw_everything_kept = false;
    for seed in 0..64 {
        let (fs, dir) = faulty_fs();
        let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
        let mut stored = append_batches(&mut log, 12, 1);
        flush(&mut log);
        let rp = log.flushed_offset();
        let flushed_bytes = stored.len();
        stored.extend(append_batches(&mut log, 12, 2));
        let appended_end = log.log_end_offset();
        drop(log);
        fs.crash(seed);

        let (mut log, report) = open(&fs, &dir, LogConfig::default(), rp);
        let leo = log.log_end_offset();
        assert!(leo >= rp && leo <= appended_end, "seed {seed}: leo {leo}");
        let recovered = read_all(&log);
        assert!(
            recovered.len() >= flushed_bytes,
            "seed {seed}: flushed data lost"
        );
        assert_eq!(
            &recovered[..],
            &stored[..recovered.len()],
            "seed {seed}: not a prefix"
        );
        saw_torn |= report.truncated_bytes > 0;
        saw_everything_kept |= leo == appended_end;
        // Every offset reads as the batch containing it, never a partial batch.
        for offset in log.log_start_offset()..leo {
            let h = read(&log, offset, 1, i64::MAX, true);
            assert!(h[0].base_offset <= offset && offset <= h[0].last_offset());
        }
        let next = append(&mut log, batch(2, 10, 0));
        assert_eq!(next.base_offset, leo, "seed {seed}");
        flush(&mut log);
        assert_eq!(read(&log, leo, usize::MAX, i64::MAX, true).len(), 1);
    }
    assert!(saw_torn, "no seed tore the tail");
    assert!(saw_everything_kept, "no seed kept the whole tail");
}

#[test]
fn corruption_below_the_recovery_point_is_an_error() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let stored = append_batches(&mut log, 5, 1);
    flush(&mut log);
    let rp = log.flushed_offset();
    append_batches(&mut log, 5, 2);
    flush(&mut log);
    drop(log);
    // A byte inside the records of a batch below the recovery point.
    corrupt_byte(&*fs, &segment_path(&dir, 0, "log"), stored.len() as u64 - 3);
    fs.crash(0);
    let err =
        Log::open(fs.clone(), &dir, LogConfig::default(), rp, NOW_MS).expect_err("must refuse");
    match err {
        LogError::CorruptBelowRecoveryPoint {
            offset,
            recovery_point,
            ..
        } => {
            assert!(offset < recovery_point);
            assert_eq!(recovery_point, rp);
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn corruption_at_the_end_of_an_older_segment_is_an_error() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(1_000), 0);
    append_batches(&mut log, 20, 1);
    flush(&mut log);
    let rp = log.flushed_offset();
    assert!(log.segment_count() > 2);
    drop(log);
    // An older segment lost its last byte: its last batch is torn.
    let first = fs.open(&segment_path(&dir, 0, "log"), false).expect("open");
    let len = first.len().expect("len");
    first.set_len(len - 1).expect("truncate");
    first.sync_data().expect("sync");
    assert!(matches!(
        Log::open(fs.clone(), &dir, small_config(1_000), rp, NOW_MS),
        Err(LogError::CorruptBelowRecoveryPoint { .. })
    ));
}

#[test]
fn a_corrupt_batch_above_the_recovery_point_cuts_the_log_there() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let first = append_batches(&mut log, 4, 1);
    flush(&mut log);
    let rp = log.flushed_offset();
    let second = append_batches(&mut log, 4, 2);
    flush(&mut log); // durable, but the caller never checkpointed past `rp`
    drop(log);
    let bad_batch_start = (first.len() + second.len() / 2) as u64;
    corrupt_byte(&*fs, &segment_path(&dir, 0, "log"), bad_batch_start + 30);
    let (log, report) = open(&fs, &dir, LogConfig::default(), rp);
    assert!(report.truncated_at.is_some_and(|o| o >= rp));
    assert!(report.truncated_bytes > 0);
    assert!(log.log_end_offset() >= rp);
    let all = read_all(&log);
    assert!(all.len() >= first.len() && all.len() < first.len() + second.len());
}

#[test]
fn missing_or_wrong_index_files_are_rebuilt() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        index_interval_bytes: 64,
        ..small_config(1_500)
    };
    let (mut log, _) = open(&fs, &dir, config.clone(), 0);
    let stored = append_batches(&mut log, 30, 1);
    log.close().expect("close");
    fs.remove_file(&segment_path(&dir, 0, "index"))
        .expect("rm index");
    // A plausible but wrong time index entry: timestamp 5 at relative offset 0.
    let ti = fs
        .open(&segment_path(&dir, 0, "timeindex"), false)
        .expect("timeindex");
    let mut wrong = 5i64.to_be_bytes().to_vec();
    wrong.extend_from_slice(&0u32.to_be_bytes());
    ti.set_len(0).expect("truncate");
    ti.write_all_at(&wrong, 0).expect("write");
    let (log, report) = open(&fs, &dir, config, i64::MAX);
    assert!(report.indexes_rebuilt >= 1, "{report:?}");
    assert_eq!(read_all(&log), stored);
    let (base, _) = log
        .find_batch_by_timestamp(1)
        .expect("lookup")
        .expect("found");
    assert_eq!(base, 1);
}

#[test]
fn a_truncation_newer_than_the_callers_recovery_point_does_not_look_like_corruption() {
    for seed in 0..16 {
        let (fs, dir) = faulty_fs();
        let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
        append_batches(&mut log, 10, 1);
        flush(&mut log);
        let stale_rp = log.flushed_offset(); // what the caller checkpointed
        log.truncate_to(6).expect("truncate");
        append_batches(&mut log, 10, 2); // unsynced, reusing offsets below stale_rp
        drop(log);
        fs.crash(seed);
        let (mut log, report) = open(&fs, &dir, LogConfig::default(), stale_rp);
        assert!(report.recovered_from <= 6, "seed {seed}: {report:?}");
        assert!(log.log_end_offset() >= 5, "seed {seed}");
        // Once flushed past the old recovery point, the cap is dropped.
        append_batches(&mut log, 10, 3);
        flush(&mut log);
        assert!(!fs.exists(&dir.join("recovery-point-cap")), "seed {seed}");
    }
}

#[test]
fn a_damaged_snapshot_is_ignored_and_state_is_replayed() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let mut bytes = BatchBuilder::new(2, 10)
        .producer(7, 0, 0)
        .timestamp(NOW_MS)
        .build();
    log.append_as_leader(&mut bytes, 0, NOW_MS).expect("append");
    log.close().expect("close");
    let snap = dir.join(format!("{:020}.snapshot", 2));
    corrupt_byte(&*fs, &snap, 8);
    let (mut log, report) = open(&fs, &dir, LogConfig::default(), 2);
    assert_eq!(report.producer_snapshot, None);
    assert_eq!(report.replayed_batches, 1);
    let mut retry = BatchBuilder::new(2, 10)
        .producer(7, 0, 0)
        .timestamp(NOW_MS)
        .build();
    assert!(matches!(
        log.append_as_leader(&mut retry, 0, NOW_MS),
        Ok(LeaderAppend::Duplicate(_))
    ));
    assert!(!fs.exists(&snap));
}

#[test]
fn a_failed_fsync_does_not_advance_the_flushed_offset() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append_batches(&mut log, 3, 1);
    let plan = log.flush_plan().expect("plan");
    fs.fail_next_fsync();
    assert!(plan.execute().is_err());
    assert_eq!(log.flushed_offset(), 0);
}

#[test]
fn a_failed_write_leaves_the_log_unchanged() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append_batches(&mut log, 3, 1);
    fs.fail_next_write();
    let mut bytes = batch(1, 10, 0);
    assert!(log.append_as_leader(&mut bytes, 0, NOW_MS).is_err());
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(append(&mut log, batch(1, 10, 0)).base_offset, 6);
    assert_eq!(read(&log, 0, usize::MAX, i64::MAX, true).len(), 4);
}

#[test]
fn a_fresh_log_in_a_missing_directory_survives_a_crash_once_flushed() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let stored = append_batches(&mut log, 3, 1);
    flush(&mut log);
    let rp = log.flushed_offset();
    drop(log);
    fs.crash(4);
    let (log, _) = open(&fs, &dir, LogConfig::default(), rp);
    assert_eq!(read_all(&log), stored);
    log.delete().expect("delete");
    fs.crash(5);
    assert!(!fs.exists(&dir));
}
