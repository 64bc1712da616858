//! Idempotent producers: duplicates, sequence gaps, fencing, and state that survives
//! close, crash and truncation.

mod common;

use common::*;
use keel_storage::testing::BatchBuilder;
use keel_storage::{AppendError, LeaderAppend, Log, LogConfig};

const PID: i64 = 4242;

fn produce(
    log: &mut Log,
    epoch: i16,
    seq: i32,
    records: usize,
) -> Result<LeaderAppend, AppendError> {
    let mut bytes = BatchBuilder::new(records, 20)
        .producer(PID, epoch, seq)
        .timestamp(NOW_MS)
        .build();
    log.append_as_leader(&mut bytes, 1, NOW_MS)
}

fn appended(r: Result<LeaderAppend, AppendError>) -> (i64, i64) {
    match r {
        Ok(LeaderAppend::Appended(i)) => (i.base_offset, i.last_offset),
        other => panic!("expected an append, got {other:?}"),
    }
}

fn duplicate(r: Result<LeaderAppend, AppendError>) -> (i64, i64) {
    match r {
        Ok(LeaderAppend::Duplicate(i)) => (i.base_offset, i.last_offset),
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

#[test]
fn a_retried_batch_is_answered_with_its_original_offsets() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append(&mut log, batch(3, 10, 0)); // someone else's records first
    assert_eq!(appended(produce(&mut log, 0, 0, 2)), (3, 4));
    assert_eq!(appended(produce(&mut log, 0, 2, 3)), (5, 7));
    assert_eq!(duplicate(produce(&mut log, 0, 0, 2)), (3, 4));
    assert_eq!(duplicate(produce(&mut log, 0, 2, 3)), (5, 7));
    assert_eq!(log.log_end_offset(), 8, "nothing written for duplicates");
}

#[test]
fn a_sequence_gap_is_out_of_order() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    appended(produce(&mut log, 0, 0, 2));
    assert!(matches!(
        produce(&mut log, 0, 3, 1),
        Err(AppendError::OutOfOrderSequence {
            expected: 2,
            received: 3,
            ..
        })
    ));
    assert!(matches!(
        produce(&mut log, 0, 1, 1),
        Err(AppendError::OutOfOrderSequence { .. })
    ));
    appended(produce(&mut log, 0, 2, 1));
    assert_eq!(log.log_end_offset(), 3);
}

/// Kafka (KIP-360) lets a producer the partition does not know start at any sequence:
/// its state may have expired while it was idle, and it continues where it was.
#[test]
fn an_unknown_producer_may_continue_its_sequence() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    assert_eq!(appended(produce(&mut log, 0, 5, 1)), (0, 0));
    assert!(matches!(
        produce(&mut log, 0, 7, 1),
        Err(AppendError::OutOfOrderSequence {
            expected: 6,
            received: 7,
            ..
        })
    ));
    assert_eq!(appended(produce(&mut log, 0, 6, 1)), (1, 1));
}

#[test]
fn an_older_epoch_is_fenced_and_a_new_epoch_restarts_at_zero() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    appended(produce(&mut log, 3, 0, 1));
    assert!(matches!(
        produce(&mut log, 2, 1, 1),
        Err(AppendError::InvalidProducerEpoch {
            epoch: 2,
            current_epoch: 3,
            ..
        })
    ));
    assert!(matches!(
        produce(&mut log, 4, 1, 1),
        Err(AppendError::OutOfOrderSequence { expected: 0, .. })
    ));
    appended(produce(&mut log, 4, 0, 1));
    assert!(matches!(
        produce(&mut log, 3, 1, 1),
        Err(AppendError::InvalidProducerEpoch { .. })
    ));
}

#[test]
fn sequences_wrap_at_i32_max() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let mut follower = BatchBuilder::new(1, 20)
        .producer(PID, 0, i32::MAX - 1)
        .build();
    log.append_as_follower(&follower, NOW_MS)
        .expect("seed the sequence");
    follower.clear();
    appended(produce(&mut log, 0, i32::MAX, 2)); // covers MAX and 0
    appended(produce(&mut log, 0, 1, 1));
}

#[test]
fn producer_state_survives_close_and_reopen() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(500), 0);
    for seq in 0..10 {
        appended(produce(&mut log, 0, seq * 2, 2));
    }
    log.close().expect("close");
    let (mut log, report) = open(&fs, &dir, small_config(500), 20);
    assert_eq!(report.producer_snapshot, Some(20));
    assert_eq!(duplicate(produce(&mut log, 0, 18, 2)), (18, 19));
    assert!(matches!(
        produce(&mut log, 0, 21, 1),
        Err(AppendError::OutOfOrderSequence { expected: 20, .. })
    ));
    assert_eq!(appended(produce(&mut log, 0, 20, 1)), (20, 20));
}

#[test]
fn producer_state_survives_a_crash_by_replaying_batches() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(500), 0);
    for seq in 0..10 {
        appended(produce(&mut log, 0, seq * 2, 2));
    }
    flush(&mut log);
    let rp = log.flushed_offset();
    drop(log); // no close: no snapshot at the end
    fs.crash(99);
    let (mut log, report) = open(&fs, &dir, small_config(500), rp);
    assert_eq!(report.log_end_offset, 20);
    assert!(report.replayed_batches > 0);
    assert_eq!(duplicate(produce(&mut log, 0, 16, 2)), (16, 17));
    assert_eq!(appended(produce(&mut log, 0, 20, 2)), (20, 21));
}

#[test]
fn producer_state_without_any_snapshot_is_rebuilt_from_the_whole_log() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    appended(produce(&mut log, 0, 0, 2));
    flush(&mut log);
    drop(log);
    fs.crash(5);
    let (mut log, report) = open(&fs, &dir, LogConfig::default(), 2);
    assert_eq!(
        (report.producer_snapshot, report.replayed_batches),
        (None, 1)
    );
    assert_eq!(duplicate(produce(&mut log, 0, 0, 2)), (0, 1));
}

#[test]
fn truncation_rebuilds_producer_state_so_the_removed_batch_can_be_retried() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(300), 0);
    for seq in 0..4 {
        appended(produce(&mut log, 0, seq, 1));
    }
    log.truncate_to(2).expect("truncate");
    assert_eq!(log.producer_state(PID), Some((0, Some(1))));
    assert_eq!(appended(produce(&mut log, 0, 2, 1)), (2, 2));
    assert_eq!(duplicate(produce(&mut log, 0, 1, 1)), (1, 1));
}

#[test]
fn idle_producers_expire_during_retention() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        producer_id_expiration_ms: 1_000,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    appended(produce(&mut log, 0, 0, 1));
    log.enforce_retention(NOW_MS + 999).expect("retention");
    assert_eq!(log.producer_count(), 1);
    log.enforce_retention(NOW_MS + 1_000).expect("retention");
    assert_eq!(log.producer_count(), 0);
}
