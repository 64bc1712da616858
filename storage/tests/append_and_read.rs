//! Appends, reads, rolls, timestamps and truncation through the public API.

mod common;

use common::*;
use keel_storage::batch::TimestampType;
use keel_storage::testing::BatchBuilder;
use keel_storage::{AppendError, AppendOrigin, LeaderAppend, LogConfig, ReadError};

#[test]
fn leader_append_assigns_dense_offsets_and_epoch() {
    let (fs, dir) = faulty_fs();
    let (mut log, report) = open(&fs, &dir, LogConfig::default(), 0);
    assert_eq!((report.log_end_offset, report.segments), (0, 1));
    let a = append(&mut log, batch(3, 10, 100));
    let mut two = batch(2, 10, 200);
    two.extend(batch(5, 10, 300));
    let b = match log.append_as_leader(&mut two, 7, NOW_MS) {
        Ok(LeaderAppend::Appended(info)) => info,
        other => panic!("{other:?}"),
    };
    assert_eq!((a.base_offset, a.last_offset, a.records), (0, 2, 3));
    assert_eq!((b.base_offset, b.last_offset, b.records), (3, 9, 7));
    assert_eq!(b.log_append_time_ms, -1);
    assert_eq!(log.log_end_offset(), 10);
    let headers = read(&log, 0, usize::MAX, i64::MAX, false);
    let bases: Vec<_> = headers
        .iter()
        .map(|h| (h.base_offset, h.partition_leader_epoch))
        .collect();
    assert_eq!(bases, vec![(0, 0), (3, 7), (5, 7)]);
    // The bytes handed back are patched in place too.
    assert_eq!(&two[..8], &3i64.to_be_bytes());
}

#[test]
fn read_from_the_middle_of_a_batch_returns_the_whole_batch() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append(&mut log, batch(10, 10, 0));
    append(&mut log, batch(10, 10, 0));
    let headers = read(&log, 15, usize::MAX, i64::MAX, false);
    assert_eq!(headers.first().map(|h| h.base_offset), Some(10));
    let plan = log.read(15, usize::MAX, i64::MAX, false).expect("plan");
    assert_eq!((plan.first_offset(), plan.next_offset()), (10, 20));
}

#[test]
fn reads_never_include_a_batch_at_or_beyond_the_high_watermark() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    for _ in 0..4 {
        append(&mut log, batch(5, 10, 0)); // 0-4, 5-9, 10-14, 15-19
    }
    let bases = |hw| -> Vec<i64> {
        read(&log, 0, usize::MAX, hw, true)
            .iter()
            .map(|h| h.base_offset)
            .collect()
    };
    assert_eq!(bases(10), vec![0, 5]);
    assert_eq!(bases(12), vec![0, 5]);
    assert_eq!(bases(20), vec![0, 5, 10, 15]);
    assert!(log.read(5, usize::MAX, 7, true).expect("plan").is_empty());
    assert!(log.read(10, usize::MAX, 10, true).expect("plan").is_empty());
    assert!(log.read(12, usize::MAX, 10, true).expect("plan").is_empty());
}

#[test]
fn max_bytes_caps_reads_at_whole_batches_and_min_one_batch_overrides() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(1 << 30), 0);
    let size = batch(4, 100, 0).len();
    for _ in 0..20 {
        append(&mut log, batch(4, 100, 0));
    }
    assert_eq!(read(&log, 0, size * 3 + size / 2, i64::MAX, false).len(), 3);
    assert_eq!(read(&log, 8, size * 5, i64::MAX, false).len(), 5);
    assert!(log
        .read(0, size - 1, i64::MAX, false)
        .expect("plan")
        .is_empty());
    assert_eq!(read(&log, 0, size - 1, i64::MAX, true).len(), 1);
    assert_eq!(read(&log, 0, 0, i64::MAX, true).len(), 1);
    let all = read(&log, 0, usize::MAX, i64::MAX, false);
    assert_eq!(all.len(), 20);
}

#[test]
fn offsets_outside_the_log_are_out_of_range_and_the_end_reads_empty() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append(&mut log, batch(3, 10, 0));
    assert!(matches!(
        log.read(4, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange {
            log_start_offset: 0,
            log_end_offset: 3,
            ..
        })
    ));
    assert!(matches!(
        log.read(-1, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    let at_end = log.read(3, 100, i64::MAX, true).expect("plan");
    assert!(at_end.is_empty());
    assert!(at_end.execute().expect("empty read").is_empty());
    log.delete_records_before(2).expect("delete records");
    assert!(matches!(
        log.read(1, 100, i64::MAX, true),
        Err(ReadError::OffsetOutOfRange {
            log_start_offset: 2,
            ..
        })
    ));
    assert_eq!(read(&log, 2, 100, i64::MAX, true).len(), 1);
}

#[test]
fn segments_roll_by_size_and_reads_continue_in_the_next_segment() {
    let (fs, dir) = faulty_fs();
    let size = batch(2, 100, 0).len() as u64;
    let (mut log, _) = open(&fs, &dir, small_config(size * 3), 0);
    for _ in 0..10 {
        append(&mut log, batch(2, 100, 0));
    }
    assert_eq!(log.segment_count(), 4);
    assert_eq!(log.size_bytes(), size * 10);
    // Offset 6 is the first of the second segment: a read stops at the segment end.
    let headers = read(&log, 6, usize::MAX, i64::MAX, false);
    assert_eq!(
        headers.iter().map(|h| h.base_offset).collect::<Vec<_>>(),
        vec![6, 8, 10]
    );
    for offset in 0..20 {
        let first = read(&log, offset, 1, i64::MAX, true);
        assert_eq!(first.len(), 1);
        assert!(first[0].base_offset <= offset && offset <= first[0].last_offset());
    }
    // A batch bigger than a segment still goes in, alone.
    append(&mut log, batch(40, 100, 0));
    append(&mut log, batch(1, 1, 0));
    assert_eq!(log.segment_count(), 6);
}

#[test]
fn segments_roll_by_time() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        segment_ms: 1_000,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    assert!(
        !log.maybe_roll(NOW_MS + 10_000).expect("roll"),
        "an empty segment never rolls"
    );
    append(&mut log, batch(1, 10, NOW_MS));
    assert!(!log.maybe_roll(NOW_MS + 1_000).expect("roll"));
    assert!(log.maybe_roll(NOW_MS + 1_001).expect("roll"));
    assert_eq!(log.segment_count(), 2);
    // On append, the incoming batch's timestamp is compared with the segment's first.
    append(&mut log, batch(1, 10, NOW_MS + 2_000));
    append(&mut log, batch(1, 10, NOW_MS + 2_500));
    assert_eq!(log.segment_count(), 2);
    append(&mut log, batch(1, 10, NOW_MS + 3_001));
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn index_lookups_find_every_offset_in_a_large_segment() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(
        &fs,
        &dir,
        LogConfig {
            index_interval_bytes: 100,
            ..LogConfig::default()
        },
        0,
    );
    let mut expected_base = Vec::new();
    for i in 0..300 {
        let info = append(&mut log, batch(1 + i % 4, 30, i as i64));
        for o in info.base_offset..=info.last_offset {
            expected_base.push(info.base_offset);
            assert_eq!(o as usize, expected_base.len() - 1);
        }
    }
    for (offset, base) in expected_base.iter().enumerate() {
        let plan = log.read(offset as i64, 1, i64::MAX, true).expect("plan");
        assert_eq!(plan.first_offset(), *base, "offset {offset}");
    }
}

#[test]
fn log_append_time_overwrites_max_timestamp() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    let info = append(&mut log, batch(3, 10, 5));
    assert_eq!(info.log_append_time_ms, NOW_MS);
    let h = read(&log, 0, usize::MAX, i64::MAX, true)[0];
    assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(h.max_timestamp, NOW_MS);
    let (base, _) = log
        .find_batch_by_timestamp(NOW_MS)
        .expect("lookup")
        .expect("found");
    assert_eq!(base, 0);
}

/// Some clients (sarama) leave a batch's maxTimestamp at -1. Like Kafka's validator,
/// the leader stores the records' largest timestamp there (and a CRC to match), for an
/// uncompressed batch and a compressed one alike, so lookups by time find them; a
/// batch whose header is right is stored as it came.
#[test]
fn a_batch_without_its_max_timestamp_is_stored_with_its_records_largest() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    for codec in [0, 1, 3] {
        let mut bytes = BatchBuilder::new(4, 10)
            .timestamp(1_000)
            .compression(codec)
            .build();
        keel_storage::batch::set_max_timestamp(&mut bytes, -1);
        append(&mut log, bytes);
    }
    let right = BatchBuilder::new(4, 10).timestamp(2_000).build();
    append(&mut log, right.clone());
    let stored = read(&log, 0, usize::MAX, i64::MAX, true);
    assert_eq!(stored.len(), 4);
    for h in &stored[..3] {
        assert_eq!(
            h.max_timestamp,
            1_003,
            "records at 1000..=1003, codec {}",
            h.compression()
        );
    }
    assert_eq!(stored[3].max_timestamp, 2_003);
    let find = |ts| {
        log.find_batch_by_timestamp(ts)
            .expect("lookup")
            .map(|(o, _)| o)
    };
    assert_eq!(find(1_002), Some(0));
    assert_eq!(find(2_000), Some(12));
    // Whatever was patched still validates (CRC included).
    let (_, bytes) = log
        .find_batch_by_timestamp(1_000)
        .expect("lookup")
        .expect("found");
    keel_storage::batch::validate_batches(&bytes, usize::MAX).expect("valid CRC");
}

#[test]
fn timestamp_lookups_find_the_first_batch_at_or_after_and_the_maximum() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(600), 0);
    assert!(log
        .find_batch_with_max_timestamp()
        .expect("lookup")
        .is_none());
    let stamps = [100, 300, 200, 500, 400, 500, 50];
    for ts in stamps {
        append(&mut log, batch(2, 100, ts)); // max timestamp of each batch is ts + 1
    }
    assert!(log.segment_count() > 1);
    let find = |ts| {
        log.find_batch_by_timestamp(ts)
            .expect("lookup")
            .map(|(o, _)| o)
    };
    assert_eq!(find(0), Some(0));
    assert_eq!(find(101), Some(0));
    assert_eq!(find(102), Some(2));
    assert_eq!(find(250), Some(2));
    assert_eq!(find(302), Some(6));
    assert_eq!(find(502), None);
    // Going on past a candidate batch (across segments too).
    let find_from = |ts, from| {
        log.find_batch_by_timestamp_from(ts, from)
            .expect("lookup")
            .map(|(o, _)| o)
    };
    assert_eq!(find_from(102, 0), Some(2));
    assert_eq!(
        find_from(102, 3),
        Some(2),
        "offset 3 is inside the batch at 2"
    );
    assert_eq!(find_from(102, 4), Some(4));
    assert_eq!(find_from(102, 6), Some(6));
    assert_eq!(find_from(102, 12), None);
    let (base, bytes) = log
        .find_batch_with_max_timestamp()
        .expect("lookup")
        .expect("some");
    assert_eq!(base, 6);
    assert_eq!(
        keel_storage::batch::validate_batches(&bytes, usize::MAX).expect("valid")[0].max_timestamp,
        501
    );
}

#[test]
fn bad_batches_are_refused_with_the_right_error() {
    let (fs, dir) = faulty_fs();
    let config = LogConfig {
        max_message_bytes: 500,
        ..LogConfig::default()
    };
    let (mut log, _) = open(&fs, &dir, config, 0);
    let mut big = batch(10, 100, 0);
    assert!(matches!(
        log.append_as_leader(&mut big, 0, NOW_MS),
        Err(AppendError::MessageTooLarge { max: 500, .. })
    ));
    let mut corrupt = batch(1, 10, 0);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(
        log.append_as_leader(&mut corrupt, 0, NOW_MS),
        Err(AppendError::Batch(_))
    ));
    let mut torn = batch(1, 10, 0);
    torn.pop();
    assert!(matches!(
        log.append_as_leader(&mut torn, 0, NOW_MS),
        Err(AppendError::Batch(_))
    ));
    assert!(matches!(
        log.append_as_leader(&mut [], 0, NOW_MS),
        Err(AppendError::InvalidRecord(_))
    ));
    let mut control = BatchBuilder::new(1, 10).control().build();
    assert!(matches!(
        log.append_as_leader(&mut control, 0, NOW_MS),
        Err(AppendError::InvalidRecord(_))
    ));
    assert!(log
        .append_as_leader_from(&mut control, 0, NOW_MS, AppendOrigin::Coordinator)
        .is_ok());
    assert_eq!(log.log_end_offset(), 1);
}

#[test]
fn follower_appends_must_not_start_below_the_log_end_but_may_skip_offsets() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    let mut bytes = BatchBuilder::new(3, 10)
        .base_offset(0)
        .leader_epoch(4)
        .build();
    bytes.extend(
        BatchBuilder::new(2, 10)
            .base_offset(3)
            .leader_epoch(4)
            .build(),
    );
    let info = log
        .append_as_follower(&bytes, NOW_MS)
        .expect("follower append");
    assert_eq!(
        (info.base_offset, info.last_offset, info.records),
        (0, 4, 5)
    );
    let overlap = BatchBuilder::new(1, 10).base_offset(4).build();
    assert!(matches!(
        log.append_as_follower(&overlap, NOW_MS),
        Err(AppendError::OffsetsNotMonotonic {
            expected: 5,
            actual: 4
        })
    ));
    // A compacted leader's batches skip the offsets it removed.
    let gap = BatchBuilder::new(1, 10).base_offset(6).build();
    let info = log.append_as_follower(&gap, NOW_MS).expect("a gap is fine");
    assert_eq!((info.base_offset, info.last_offset), (6, 6));
    assert_eq!(log.log_end_offset(), 7);
    // Within one request too, but never going back.
    let mut two = BatchBuilder::new(1, 10).base_offset(9).build();
    two.extend(BatchBuilder::new(1, 10).base_offset(8).build());
    assert!(matches!(
        log.append_as_follower(&two, NOW_MS),
        Err(AppendError::OffsetsNotMonotonic {
            expected: 10,
            actual: 8
        })
    ));
    assert_eq!(read(&log, 0, usize::MAX, i64::MAX, true).len(), 3);
    // A read inside the gap returns the batch after it.
    assert_eq!(read(&log, 5, usize::MAX, i64::MAX, true)[0].base_offset, 6);
}

#[test]
fn truncate_to_drops_the_tail_and_appends_continue_there() {
    let (fs, dir) = faulty_fs();
    let size = batch(2, 100, 0).len() as u64;
    let (mut log, _) = open(&fs, &dir, small_config(size * 2), 0);
    for _ in 0..6 {
        append(&mut log, batch(2, 100, 0));
    }
    flush(&mut log);
    assert_eq!(log.segment_count(), 3);
    log.truncate_to(5).expect("truncate"); // mid-batch: the batch 4-5 goes whole
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.flushed_offset(), 4);
    let info = append(&mut log, batch(1, 100, 0));
    assert_eq!(info.base_offset, 4);
    log.truncate_to(0).expect("truncate to start");
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert_eq!(append(&mut log, batch(1, 1, 0)).base_offset, 0);
}

#[test]
fn a_flush_planned_before_a_truncation_does_not_count() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append(&mut log, batch(5, 10, 0));
    let plan = log.flush_plan().expect("something to flush");
    log.truncate_to(0).expect("truncate");
    append(&mut log, batch(5, 10, 0));
    plan.execute().expect("flush");
    log.flush_completed(&plan);
    assert_eq!(log.flushed_offset(), 0);
    flush(&mut log);
    assert_eq!(log.flushed_offset(), 5);
    assert!(log.flush_plan().is_none());
}

#[test]
fn close_and_reopen_keeps_everything() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, small_config(1_000), 0);
    for i in 0..20 {
        append(&mut log, batch(3, 50, i));
    }
    let before = read_all(&log);
    let segments = log.segment_count();
    log.close().expect("close");
    fs.crash(1);
    let (log, report) = open(&fs, &dir, small_config(1_000), 60);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        report.replayed_batches, 0,
        "the close snapshot is at the log end"
    );
    assert_eq!(report.indexes_rebuilt, 0);
    assert_eq!(log.log_end_offset(), 60);
    assert_eq!(log.segment_count(), segments);
    assert_eq!(read_all(&log), before);
}

#[test]
fn real_files_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("orders-3");
    let fs: std::sync::Arc<dyn keel_storage::fs::Filesystem> =
        std::sync::Arc::new(keel_storage::fs::StdFs);
    let (mut log, _) =
        keel_storage::Log::open(fs.clone(), &dir, small_config(4_096), 0, NOW_MS).expect("open");
    for i in 0..50 {
        append(&mut log, batch(2, 100, i));
    }
    flush(&mut log);
    let rp = log.flushed_offset();
    let before = read_all(&log);
    drop(log);
    let (log, report) =
        keel_storage::Log::open(fs, &dir, small_config(4_096), rp, NOW_MS).expect("reopen");
    assert_eq!(report.log_end_offset, 100);
    assert!(log.segment_count() > 1);
    assert_eq!(read_all(&log), before);
    assert!(std::fs::read_dir(&dir).expect("ls").count() > 3);
}

#[test]
fn log_and_plans_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<keel_storage::Log>();
    send_sync::<keel_storage::ReadPlan>();
    send_sync::<keel_storage::FlushPlan>();
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, LogConfig::default(), 0);
    append(&mut log, batch(2, 10, 0));
    let plan = log.read(0, usize::MAX, i64::MAX, true).expect("plan");
    let flush = log.flush_plan().expect("flush plan");
    let (bytes, flushed) =
        std::thread::spawn(move || (plan.execute(), flush.execute().map(|_| flush)))
            .join()
            .expect("thread");
    assert_eq!(bytes.expect("read").len(), batch(2, 10, 0).len());
    log.flush_completed(&flushed.expect("flush"));
    assert_eq!(log.flushed_offset(), 2);
}

#[test]
fn shared_append_stores_what_in_place_append_stores_and_leaves_its_input_alone() {
    for timestamp_type in [TimestampType::CreateTime, TimestampType::LogAppendTime] {
        let config = LogConfig {
            message_timestamp_type: timestamp_type,
            ..LogConfig::default()
        };
        let mut input = batch(3, 100, 100);
        input.extend(batch(4, 2000, 200));
        let original = input.clone();

        let (fs, dir) = faulty_fs();
        let (mut in_place, _) = open(&fs, &dir, config.clone(), 0);
        append(&mut in_place, batch(2, 10, 50));
        let mut patched = input.clone();
        let a = in_place.append_as_leader(&mut patched, 4, NOW_MS).unwrap();

        let (fs2, dir2) = faulty_fs();
        let (mut shared, _) = open(&fs2, &dir2, config, 0);
        append(&mut shared, batch(2, 10, 50));
        let b = shared.append_as_leader_shared(&input, 4, NOW_MS).unwrap();

        assert_eq!(a, b, "{timestamp_type:?}");
        assert_eq!(
            input, original,
            "{timestamp_type:?}: the input was modified"
        );
        assert_eq!(read_all(&shared), read_all(&in_place), "{timestamp_type:?}");
        assert_eq!(
            &read_all(&shared)[read_all(&shared).len() - patched.len()..],
            &patched[..]
        );
        assert_eq!(shared.log_end_offset(), 9);
    }
}
