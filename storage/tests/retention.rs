//! Retention by time and size, DeleteRecords, and what survives a reopen.

mod common;

use common::*;
use keel_storage::{LogConfig, LogError};

/// Appends `n` batches of 2 records with the given timestamp.
fn fill(log: &mut keel_storage::Log, n: usize, ts: i64) {
    for _ in 0..n {
        append(log, batch(2, 100, ts));
    }
}

fn segment_config(batches_per_segment: u64) -> LogConfig {
    small_config(batch(2, 100, 0).len() as u64 * batches_per_segment)
}

#[test]
fn retention_by_time_deletes_expired_segments_oldest_first() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        retention_ms: 10_000,
        ..segment_config(2)
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    fill(&mut log, 2, 1_000); // segment 0
    fill(&mut log, 2, 5_000); // segment 4
    fill(&mut log, 2, 20_000); // segment 8
    fill(&mut log, 1, 30_000); // active segment 12
    assert_eq!(log.segment_count(), 4);
    assert_eq!(log.enforce_retention(11_000).expect("retention"), 0);
    assert_eq!(log.enforce_retention(11_002).expect("retention"), 1);
    assert_eq!(log.log_start_offset(), 4);
    assert_eq!(log.enforce_retention(31_000).expect("retention"), 2);
    assert_eq!((log.log_start_offset(), log.segment_count()), (12, 1));
    // The active segment, once expired and non-empty, is rolled and deleted.
    assert_eq!(log.enforce_retention(50_000).expect("retention"), 1);
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.segment_count()
        ),
        (14, 14, 1)
    );
    assert_eq!(append(&mut log, batch(1, 1, 60_000)).base_offset, 14);
}

#[test]
fn retention_never_deletes_above_the_high_watermark() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        retention_ms: 0,
        ..segment_config(2)
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    fill(&mut log, 6, 0);
    assert_eq!(
        log.enforce_retention_below(NOW_MS, 5).expect("retention"),
        1
    );
    assert_eq!(log.log_start_offset(), 4);
}

#[test]
fn retention_by_size_keeps_the_newest_segments_within_the_limit() {
    let (fs, dir) = faulty_fs();
    let batch_bytes = batch(2, 100, 0).len() as i64;
    let config = LogConfig {
        retention_bytes: batch_bytes * 5,
        ..segment_config(2)
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    fill(&mut log, 9, NOW_MS); // five segments: 2+2+2+2+1 batches
    assert_eq!(log.segment_count(), 5);
    assert_eq!(log.enforce_retention(NOW_MS).expect("retention"), 2);
    assert_eq!(log.size_bytes() as i64, batch_bytes * 5);
    assert_eq!(log.log_start_offset(), 8);
    assert_eq!(log.enforce_retention(NOW_MS).expect("retention"), 0);
}

#[test]
fn delete_records_moves_the_start_and_survives_reopen() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, segment_config(2), 0);
    fill(&mut log, 6, 0); // segments at 0, 4, 8
    assert!(matches!(
        log.delete_records_before(13),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.delete_records_before(5).expect("delete"), 5);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.delete_records_before(3).expect("no-op"), 5);
    flush(&mut log);
    let rp = log.flushed_offset();
    drop(log);
    fs.crash(11);
    let (log, report) = open(&fs, &dir, segment_config(2), rp);
    assert_eq!(report.log_start_offset, 5);
    assert_eq!(log.log_start_offset(), 5);
    let first = read(&log, 5, 1, i64::MAX, true);
    assert_eq!(
        first[0].base_offset, 4,
        "the batch holding offset 5 starts at 4"
    );
    assert!(log.read(4, 1, i64::MAX, true).is_err());
}

#[test]
fn delete_records_to_the_end_keeps_an_active_segment() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, segment_config(2), 0);
    fill(&mut log, 3, 0);
    assert_eq!(log.delete_records_before(6).expect("delete"), 6);
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.segment_count()
        ),
        (6, 6, 1)
    );
    log.close().expect("close");
    let (mut log, _) = open(&fs, &dir, segment_config(2), 6);
    assert_eq!(log.log_start_offset(), 6);
    assert_eq!(append(&mut log, batch(1, 1, 0)).base_offset, 6);
}

#[test]
fn a_crash_between_persisting_the_start_and_deleting_segments_finishes_the_job() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, segment_config(2), 0);
    fill(&mut log, 6, 0);
    flush(&mut log);
    // Simulate the checkpoint landing without the deletions.
    keel_storage::checkpoint::write_atomic(&*fs, &dir.join("log-start-offset"), b"0\n9\n")
        .expect("write");
    drop(log);
    fs.crash(2);
    let (log, report) = open(&fs, &dir, segment_config(2), 12);
    assert_eq!(report.segments_deleted, 2);
    assert_eq!((log.log_start_offset(), log.segment_count()), (9, 1));
}
