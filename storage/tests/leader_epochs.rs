//! The leader-epoch cache as the log keeps it: filled by leader and follower appends,
//! cut by truncation and retention, persisted in `leader-epoch-checkpoint`, rebuilt from
//! the batches when the checkpoint is lost, and consistent with the log after a crash.

mod common;

use common::*;
use keel_storage::fs::Filesystem;
use keel_storage::testing::BatchBuilder;
use keel_storage::{
    EpochEntry, LeaderAppend, Log, LogConfig, LEADER_EPOCH_CHECKPOINT_FILE, UNDEFINED_EPOCH,
    UNDEFINED_EPOCH_OFFSET,
};

fn entries(log: &Log) -> Vec<(i32, i64)> {
    log.epoch_entries()
        .iter()
        .map(
            |EpochEntry {
                 epoch,
                 start_offset,
             }| (*epoch, *start_offset),
        )
        .collect()
}

/// Appends `n` batches of 2 records as leader in `epoch`.
fn lead(log: &mut Log, epoch: i32, n: usize) {
    for _ in 0..n {
        let mut bytes = batch(2, 50, NOW_MS);
        match log.append_as_leader(&mut bytes, epoch, NOW_MS) {
            Ok(LeaderAppend::Appended(_)) => {}
            other => panic!("append failed: {other:?}"),
        }
    }
}

#[test]
fn leader_and_follower_appends_fill_the_cache_and_answer_end_offsets() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(1 << 20), 0);
    assert_eq!(log.latest_epoch(), None);
    assert_eq!(
        log.end_offset_for_epoch(0),
        (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
    );
    lead(&mut log, 0, 3); // offsets 0..6
                          // A new leader in epoch 2 records its start before appending anything.
    log.assign_epoch_start(2, log.log_end_offset())
        .expect("assign");
    assert_eq!(entries(&log), vec![(0, 0), (2, 6)]);
    lead(&mut log, 2, 2); // 6..10
                          // Replicated batches carry their epoch; a follower learns epoch 5 from them.
    let replicated = BatchBuilder::new(3, 10)
        .base_offset(10)
        .leader_epoch(5)
        .build();
    log.append_as_follower(&replicated, NOW_MS)
        .expect("follower append");
    assert_eq!(entries(&log), vec![(0, 0), (2, 6), (5, 10)]);
    assert_eq!(log.latest_epoch(), Some(5));
    assert_eq!(log.end_offset_for_epoch(0), (0, 6));
    assert_eq!(log.end_offset_for_epoch(1), (0, 6));
    assert_eq!(log.end_offset_for_epoch(2), (2, 10));
    assert_eq!(log.end_offset_for_epoch(5), (5, 13));
    assert_eq!(
        log.end_offset_for_epoch(6),
        (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)
    );

    // A follower cut back to the end of epoch 2 forgets epoch 5.
    log.truncate_to(10).expect("truncate");
    assert_eq!(entries(&log), vec![(0, 0), (2, 6)]);
    assert_eq!(log.end_offset_for_epoch(2), (2, 10));

    // The checkpoint survives a reopen.
    flush(&mut log);
    drop(log);
    let (log, _) = open(&fs, &dir, small_config(1 << 20), 10);
    assert_eq!(entries(&log), vec![(0, 0), (2, 6)]);
}

#[test]
fn truncating_at_the_log_end_forgets_an_epoch_that_starts_there() {
    // A broker led epoch 1 for a moment, recording its start at its log end, and
    // appended nothing before another leader (epoch 2) took over. Told to truncate
    // to where epoch 0 ends (its log end), it must forget epoch 1, or its fetches
    // keep naming epoch 1 and the leader keeps answering "diverging".
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(1 << 20), 0);
    lead(&mut log, 0, 3); // offsets 0..6
    log.assign_epoch_start(1, log.log_end_offset())
        .expect("assign");
    assert_eq!(log.latest_epoch(), Some(1));
    log.truncate_to(6).expect("truncate at the end");
    assert_eq!(entries(&log), vec![(0, 0)]);
    assert_eq!(log.latest_epoch(), Some(0));
    assert_eq!(log.log_end_offset(), 6);
    // Durably: the checkpoint was rewritten.
    flush(&mut log);
    drop(log);
    let (log, _) = open(&fs, &dir, small_config(1 << 20), 6);
    assert_eq!(entries(&log), vec![(0, 0)]);
}

#[test]
fn a_lost_or_damaged_checkpoint_is_rebuilt_from_the_batches() {
    let (fs, dir) = faulty_fs();
    let config = small_config(batch(2, 50, 0).len() as u64 * 2);
    let (mut log, _) = open(&fs, &dir, config.clone(), 0);
    lead(&mut log, 1, 3);
    log.assign_epoch_start(4, log.log_end_offset())
        .expect("assign");
    lead(&mut log, 4, 3);
    flush(&mut log);
    let expected = entries(&log);
    assert_eq!(expected, vec![(1, 0), (4, 6)]);
    let end = log.log_end_offset();
    drop(log);

    let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
    fs.remove_file(&path).expect("remove checkpoint");
    let (log, _) = open(&fs, &dir, config.clone(), end);
    assert_eq!(entries(&log), expected, "rebuilt after the file was lost");
    drop(log);

    let f = fs.open(&path, true).expect("open checkpoint");
    f.write_all_at(b"0\n2\n9 0\n", 0).expect("scribble");
    f.sync_data().expect("sync");
    let (log, _) = open(&fs, &dir, config, end);
    assert_eq!(
        entries(&log),
        expected,
        "rebuilt after the file was damaged"
    );
}

#[test]
fn retention_moves_the_first_epoch_start_up() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        retention_ms: 0,
        ..small_config(batch(2, 50, 0).len() as u64 * 2)
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    lead(&mut log, 1, 3); // 0..6, segments at 0 and 4
    log.assign_epoch_start(3, log.log_end_offset())
        .expect("assign");
    lead(&mut log, 3, 3); // 6..12
    assert_eq!(log.delete_records_before(5).expect("delete records"), 5);
    assert_eq!(entries(&log), vec![(1, 5), (3, 6)]);
    assert_eq!(log.delete_records_before(8).expect("delete records"), 8);
    assert_eq!(entries(&log), vec![(3, 8)]);
    assert_eq!(log.end_offset_for_epoch(1), (1, 8));
}

#[test]
fn after_a_crash_the_cache_never_names_offsets_beyond_the_log() {
    for seed in 0..64u64 {
        let (fs, dir) = faulty_fs();
        let config = small_config(batch(2, 50, 0).len() as u64 * 3);
        let (mut log, _) = open(&fs, &dir, config.clone(), 0);
        let mut epoch = 0;
        for round in 0..6 {
            lead(&mut log, epoch, 2);
            if round % 2 == (seed % 2) as usize {
                flush(&mut log);
            }
            epoch += 1 + (seed % 3) as i32;
            log.assign_epoch_start(epoch, log.log_end_offset())
                .expect("assign");
        }
        let flushed = log.flushed_offset();
        drop(log);
        fs.crash(seed);
        let (log, _) = open(&fs, &dir, config, flushed);
        let end = log.log_end_offset();
        assert!(end >= flushed, "seed {seed}: lost synced data");
        let cache = entries(&log);
        assert!(
            cache.iter().all(|(_, start)| *start < end),
            "seed {seed}: cache {cache:?} beyond log end {end}"
        );
        assert!(
            cache.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "seed {seed}: cache {cache:?} out of order"
        );
        // Every batch's epoch is the cache's epoch for its offset.
        let mut offset = log.log_start_offset();
        while offset < end {
            for h in read(&log, offset, 1 << 30, i64::MAX, true) {
                let covering = cache
                    .iter()
                    .rev()
                    .find(|(_, start)| *start <= h.base_offset)
                    .map(|(e, _)| *e);
                assert_eq!(covering, Some(h.partition_leader_epoch), "seed {seed}");
                offset = h.next_offset();
            }
        }
        assert_eq!(offset, end);
    }
}
