//! Log compaction: the latest value of every key survives at its offset, superseded
//! records and expired tombstones go, offsets never move, and everything that reads or
//! writes the log works across the gaps compaction leaves — reads, recovery, follower
//! appends, truncation, producer state.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{faulty_fs, flush, open, NOW_MS};
use keel_storage::batch::{validate_batches, BatchHeader};
use keel_storage::fs::{FaultyFs, Filesystem};
use keel_storage::record::{inflate_records, parse_records};
use keel_storage::testing::{BatchBuilder, TestRecord};
use keel_storage::{
    AppendError, CleanerLimits, CleanupPolicy, CompactionStats, LeaderAppend, Log, LogConfig,
};

/// One record as a reader sees it: offset, key, value (`None`: tombstone).
type Seen = (i64, Vec<u8>, Option<Vec<u8>>);

const RETENTION_MS: i64 = 60_000;

fn compacted_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::COMPACT,
        min_cleanable_dirty_ratio: 0.01,
        delete_retention_ms: RETENTION_MS,
        ..LogConfig::default()
    }
}

fn key(k: u32) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

fn value(k: u32, version: u32) -> Vec<u8> {
    format!("value-{k}-v{version}-{}", "x".repeat((k % 7) as usize * 10)).into_bytes()
}

/// Appends one batch as leader at `now`, returning its base offset.
fn append_at(log: &mut Log, records: Vec<TestRecord>, codec: u8, now: i64) -> i64 {
    let mut bytes = BatchBuilder::keyed(records)
        .timestamp(now)
        .compression(codec)
        .build();
    match log.append_as_leader(&mut bytes, 0, now) {
        Ok(LeaderAppend::Appended(info)) => info.base_offset,
        other => panic!("append failed: {other:?}"),
    }
}

/// Rolls the active segment (its records' timestamps are around `NOW_MS`), so every
/// record is in a segment compaction may touch.
fn roll(log: &mut Log) {
    let rolled = log
        .maybe_roll(NOW_MS + 2 * LogConfig::default().segment_ms)
        .expect("roll");
    assert!(rolled);
}

/// Plans, executes and completes a compaction bounded by the log end.
fn compact(log: &mut Log, now: i64) -> Option<CompactionStats> {
    compact_below(log, now, i64::MAX, CleanerLimits::default())
}

fn compact_below(
    log: &mut Log,
    now: i64,
    bound: i64,
    limits: CleanerLimits,
) -> Option<CompactionStats> {
    let plan = log.compaction_plan(now, bound, &limits).expect("plan")?;
    let result = plan.execute();
    log.compaction_completed(result).expect("complete")
}

/// Every record from the log start, decoded, read plan by plan from offset to offset.
fn records(log: &Log) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let plan = log
            .read(offset, 1 << 20, i64::MAX, true)
            .expect("plan read");
        if plan.is_empty() {
            break;
        }
        let bytes = plan.execute().expect("read");
        for h in validate_batches(&bytes, usize::MAX).expect("whole valid batches") {
            assert!(h.base_offset >= offset || h.last_offset() >= offset);
        }
        out.extend(decode(&bytes));
        offset = plan.next_offset();
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let h = BatchHeader::parse(&bytes[at..]).unwrap();
        let batch = &bytes[at..at + h.total_bytes()];
        let section = inflate_records(&h, batch, usize::MAX).unwrap();
        for r in parse_records(&section, h.records_count).unwrap() {
            out.push((
                h.base_offset + i64::from(r.offset_delta),
                r.key.unwrap_or_default().to_vec(),
                r.value.map(<[u8]>::to_vec),
            ));
        }
        at += h.total_bytes();
    }
    out
}

/// The latest record of each key among `written`, by key.
fn latest(written: &[Seen]) -> BTreeMap<Vec<u8>, Seen> {
    let mut m = BTreeMap::new();
    for r in written {
        m.insert(r.1.clone(), r.clone());
    }
    m
}

/// Writes `rounds` values of each of `keys` keys, a few records per batch, returning
/// what was written.
fn write_versions(log: &mut Log, keys: u32, rounds: u32, codec: u8, now: i64) -> Vec<Seen> {
    let mut written = Vec::new();
    for round in 0..rounds {
        for chunk in (0..keys).collect::<Vec<_>>().chunks(4) {
            let recs: Vec<TestRecord> = chunk
                .iter()
                .map(|&k| TestRecord::value(&key(k), &value(k, round)))
                .collect();
            let base = append_at(log, recs, codec, now);
            for (i, &k) in chunk.iter().enumerate() {
                written.push((base + i as i64, key(k), Some(value(k, round))));
            }
        }
    }
    written
}

fn assert_offsets_increase(seen: &[Seen]) {
    for w in seen.windows(2) {
        assert!(w[0].0 < w[1].0, "offsets {} then {}", w[0].0, w[1].0);
    }
}

#[test]
fn compaction_keeps_the_latest_value_of_every_key_at_its_offset() {
    for codec in 0..=4u8 {
        let (fs, dir) = faulty_fs();
        let (mut log, _) = open(&fs, &dir, compacted_config(2_000), 0);
        let written = write_versions(&mut log, 40, 10, codec, NOW_MS);
        roll(&mut log);
        flush(&mut log);
        let before = log.size_bytes();
        let end = log.log_end_offset();
        let stats = compact(&mut log, NOW_MS).expect("a compaction was due");
        let seen = records(&log);
        let want: Vec<Seen> = latest(&written).into_values().collect();
        let mut got = seen.clone();
        got.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got, want_sorted, "codec {codec}");
        assert_offsets_increase(&seen);
        assert_eq!(log.log_end_offset(), end, "offsets never move");
        assert!(
            log.size_bytes() * 4 < before,
            "codec {codec}: {} bytes of {before} left",
            log.size_bytes()
        );
        assert_eq!(stats.records_removed, 40 * 9);
        assert_eq!(stats.bytes_before, before);
        assert_eq!(stats.bytes_after, log.size_bytes());
        assert!(stats.segments_written < stats.segments_read, "{stats:?}");
        // Nothing more to do until something new is written.
        assert!(compact(&mut log, NOW_MS).is_none());
        // The same after a restart, from the persisted clean point.
        flush(&mut log);
        let recovery_point = log.flushed_offset();
        log.close().expect("close");
        let (mut log, report) = open(&fs, &dir, compacted_config(2_000), recovery_point);
        assert_eq!(report.log_end_offset, end);
        assert_eq!(records(&log), seen);
        assert_eq!(log.first_dirty_offset(), stats.next_dirty_offset);
        assert!(compact(&mut log, NOW_MS).is_none());
    }
}

#[test]
fn compaction_stays_below_the_bound_and_off_the_active_segment() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(1_000), 0);
    let written = write_versions(&mut log, 8, 20, 0, NOW_MS);
    flush(&mut log);
    let bound = written[written.len() / 2].0;
    compact_below(&mut log, NOW_MS, bound, CleanerLimits::default()).expect("compacted");
    let seen = records(&log);
    // Everything at or past the bound is still there, superseded or not.
    let tail: Vec<&Seen> = written.iter().filter(|r| r.0 >= bound).collect();
    for r in &tail {
        assert!(seen.contains(r), "{r:?} is at or past the bound {bound}");
    }
    // Below it, superseded records went.
    assert!(seen.len() < written.len());
    // A record superseded only past the bound stays.
    let latest_below: BTreeMap<_, _> = latest(
        &written
            .iter()
            .filter(|r| r.0 < bound)
            .cloned()
            .collect::<Vec<_>>(),
    );
    for r in latest_below.values() {
        assert!(seen.contains(r), "{r:?}");
    }
    assert_offsets_increase(&seen);
}

#[test]
fn a_read_inside_a_gap_returns_the_next_batch() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(600), 0);
    let written = write_versions(&mut log, 4, 12, 0, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    compact(&mut log, NOW_MS).expect("compacted");
    let seen = records(&log);
    let present: Vec<i64> = seen.iter().map(|r| r.0).collect();
    for offset in 0..log.log_end_offset() {
        let plan = log.read(offset, 1, i64::MAX, true).unwrap();
        let next = present.iter().copied().find(|&o| o >= offset);
        match next {
            Some(next) => {
                let got = decode(&plan.execute().unwrap());
                assert!(
                    got.iter().any(|r| r.0 == next),
                    "read at {offset} should reach {next}: {got:?}"
                );
                assert!(got
                    .iter()
                    .all(|r| r.0 >= offset || plan.first_offset() < offset));
            }
            None => assert!(plan.is_empty(), "nothing after {offset}"),
        }
    }
    assert_eq!(seen.len(), 4);
    assert!(written.len() > seen.len());
}

#[test]
fn tombstones_stay_until_delete_retention_ms_after_their_first_compaction() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(1_000), 0);
    let mut written = write_versions(&mut log, 10, 3, 0, NOW_MS);
    let doomed = [2u32, 5, 7];
    let tombstones: Vec<TestRecord> = doomed
        .iter()
        .map(|&k| TestRecord::tombstone(&key(k)))
        .collect();
    let base = append_at(&mut log, tombstones, 0, NOW_MS);
    for (i, &k) in doomed.iter().enumerate() {
        written.push((base + i as i64, key(k), None));
    }
    written.extend(write_versions(&mut log, 1, 1, 0, NOW_MS));
    roll(&mut log);
    flush(&mut log);
    let first = NOW_MS + 1_000;
    compact(&mut log, first).expect("compacted");
    let seen = records(&log);
    for &k in &doomed {
        let of_key: Vec<&Seen> = seen.iter().filter(|r| r.1 == key(k)).collect();
        assert_eq!(of_key.len(), 1, "only the tombstone of {k} is left");
        assert_eq!(of_key[0].2, None);
    }
    // Before the horizon a compaction changes nothing.
    assert!(compact(&mut log, first + RETENTION_MS - 1).is_none());
    assert_eq!(records(&log), seen);
    // Once it has passed, the next compaction removes them (no new writes needed).
    let stats = compact(&mut log, first + RETENTION_MS).expect("due at the horizon");
    assert_eq!(stats.tombstones_removed, doomed.len() as u64);
    let after = records(&log);
    let mut want: Vec<Seen> = latest(&written)
        .into_values()
        .filter(|r| r.2.is_some())
        .collect();
    want.sort();
    let mut got = after.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(compact(&mut log, first + 10 * RETENTION_MS).is_none());
}

#[test]
fn a_small_dedupe_buffer_compacts_in_several_passes_and_never_drops_an_unseen_latest() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(1_500), 0);
    let written = write_versions(&mut log, 30, 8, 0, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    // Room for about 10 keys per pass.
    let limits = CleanerLimits {
        dedupe_buffer_bytes: 10 * 72,
    };
    let want: BTreeMap<Vec<u8>, Seen> = latest(&written);
    let mut passes = 0;
    while let Some(stats) = compact_below(&mut log, NOW_MS, i64::MAX, limits) {
        passes += 1;
        assert!(stats.keys_mapped <= 14, "{stats:?}");
        let seen = records(&log);
        // Every key's latest value is still there after every pass.
        for r in want.values() {
            assert!(seen.contains(r), "pass {passes} lost {r:?}");
        }
        assert_offsets_increase(&seen);
        if !stats.map_full {
            break;
        }
        assert!(passes < 100);
    }
    assert!(passes > 1, "the buffer should not hold every key at once");
    let mut got = records(&log);
    got.sort();
    let mut all: Vec<Seen> = want.into_values().collect();
    all.sort();
    assert_eq!(got, all);
}

#[test]
fn a_producers_last_batch_keeps_its_header_so_its_sequence_survives_a_restart() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(800), 0);
    // Producer 9 writes key A three times; then plain writes supersede key A.
    for seq in 0..3 {
        let mut b =
            BatchBuilder::keyed(vec![TestRecord::value(b"A", format!("p{seq}").as_bytes())])
                .producer(9, 0, seq)
                .timestamp(NOW_MS)
                .build();
        assert!(matches!(
            log.append_as_leader(&mut b, 0, NOW_MS),
            Ok(LeaderAppend::Appended(_))
        ));
    }
    append_at(&mut log, vec![TestRecord::value(b"A", b"plain")], 0, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    compact(&mut log, NOW_MS).expect("compacted");
    let seen = records(&log);
    assert_eq!(seen, vec![(3, b"A".to_vec(), Some(b"plain".to_vec()))]);
    // Restart without snapshots: producer state comes from the batch headers alone.
    let rp = log.flushed_offset();
    drop(log);
    for path in fs.read_dir(&dir).unwrap() {
        if path.extension().is_some_and(|e| e == "snapshot") {
            fs.remove_file(&path).unwrap();
        }
    }
    fs.sync_dir(&dir).unwrap();
    let (mut log, _) = open(&fs, &dir, compacted_config(800), rp);
    assert_eq!(log.producer_state(9), Some((0, Some(2))));
    // The producer continues at sequence 3; a retry of sequence 2 is a duplicate.
    let mut retry = BatchBuilder::keyed(vec![TestRecord::value(b"A", b"p2")])
        .producer(9, 0, 2)
        .build();
    assert!(matches!(
        log.append_as_leader(&mut retry, 0, NOW_MS),
        Ok(LeaderAppend::Duplicate(info)) if info.base_offset == 2
    ));
    let mut next = BatchBuilder::keyed(vec![TestRecord::value(b"A", b"p3")])
        .producer(9, 0, 3)
        .build();
    assert!(matches!(
        log.append_as_leader(&mut next, 0, NOW_MS),
        Ok(LeaderAppend::Appended(_))
    ));
}

#[test]
fn a_compacted_log_refuses_records_without_a_key_compressed_or_not() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(1 << 20), 0);
    for codec in 0..=4 {
        let mut b = BatchBuilder::keyed(vec![
            TestRecord::value(b"k", b"v"),
            TestRecord::unkeyed(b"no key"),
        ])
        .compression(codec)
        .build();
        let err = log.append_as_leader(&mut b, 0, NOW_MS).unwrap_err();
        assert!(
            matches!(&err, AppendError::InvalidRecord(m) if m.contains("without a key")),
            "codec {codec}: {err}"
        );
    }
    assert_eq!(log.log_end_offset(), 0);
    // A topic that is not compacted takes them.
    let (fs2, dir2) = faulty_fs();
    let (mut plain, _) = open(&fs2, &dir2, LogConfig::default(), 0);
    let mut b = BatchBuilder::keyed(vec![TestRecord::unkeyed(b"no key")]).build();
    assert!(plain.append_as_leader(&mut b, 0, NOW_MS).is_ok());
}

#[test]
fn a_follower_takes_a_compacted_leaders_gaps_and_reads_across_them() {
    let (fs, dir) = faulty_fs();
    let (mut leader, _) = open(&fs, &dir, compacted_config(700), 0);
    let written = write_versions(&mut leader, 6, 10, 0, NOW_MS);
    roll(&mut leader);
    flush(&mut leader);
    compact(&mut leader, NOW_MS).expect("compacted");
    let (ffs, fdir) = faulty_fs();
    let (mut follower, _) = open(&ffs, &fdir, compacted_config(700), 0);
    // Fetch as a follower does: from its log end, whatever the leader has from there.
    while follower.log_end_offset() < leader.log_end_offset() {
        let plan = leader
            .read(follower.log_end_offset(), 500, i64::MAX, true)
            .unwrap();
        let bytes = plan.execute().unwrap();
        follower
            .append_as_follower(&bytes, NOW_MS)
            .expect("gaps are fine");
    }
    assert_eq!(records(&follower), records(&leader));
    // A batch below the log end is still refused.
    let stale = BatchBuilder::new(1, 1).base_offset(0).build();
    assert!(matches!(
        follower.append_as_follower(&stale, NOW_MS),
        Err(AppendError::OffsetsNotMonotonic { .. })
    ));
    // And the follower's copy recovers with its gaps.
    flush(&mut follower);
    let end = follower.log_end_offset();
    drop(follower);
    ffs.crash(7);
    let (follower, report) = open(&ffs, &fdir, compacted_config(700), 0);
    assert_eq!(report.log_end_offset, end);
    assert_eq!(records(&follower).len(), latest(&written).len());
}

#[test]
fn truncation_inside_a_gap_ends_the_log_there_and_aborts_compaction_in_flight() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(700), 0);
    write_versions(&mut log, 4, 10, 0, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    compact(&mut log, NOW_MS).expect("compacted");
    let present: Vec<i64> = records(&log).iter().map(|r| r.0).collect();
    // An offset in a gap: not present, with a record after it.
    let gap = (1..present[present.len() - 1])
        .find(|o| !present.contains(o))
        .expect("a gap");
    write_versions(&mut log, 4, 1, 0, NOW_MS);
    log.maybe_roll(NOW_MS + 4 * LogConfig::default().segment_ms)
        .unwrap();
    flush(&mut log);
    let plan = log
        .compaction_plan(NOW_MS, i64::MAX, &CleanerLimits::default())
        .unwrap()
        .expect("due");
    let result = plan.execute();
    log.truncate_to(gap).unwrap();
    assert!(log.log_end_offset() <= gap);
    assert!(
        log.compaction_completed(result).unwrap().is_none(),
        "aborted"
    );
    assert!(records(&log).iter().all(|r| r.0 < gap));
    // No swap files were left behind for recovery to install.
    let leftovers: Vec<_> = fs
        .read_dir(&dir)
        .unwrap()
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().ends_with(".swap") || p.to_string_lossy().ends_with(".cleaned")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // New appends continue at the log end.
    let end = log.log_end_offset();
    let base = append_at(&mut log, vec![TestRecord::value(b"n", b"1")], 0, NOW_MS);
    assert_eq!(base, end);
}

#[test]
fn a_committed_compaction_cut_short_by_a_crash_is_finished_by_recovery() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(900), 0);
    let written = write_versions(&mut log, 12, 6, 2, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    let rp = log.flushed_offset();
    let plan = log
        .compaction_plan(NOW_MS, i64::MAX, &CleanerLimits::default())
        .unwrap()
        .expect("due");
    let result = plan.execute();
    assert!(result.stats().is_some());
    // The power goes before the log installs the cleaned segments.
    drop(log);
    fs.crash(11);
    let (log, _) = open(&fs, &dir, compacted_config(900), rp);
    let mut got = records(&log);
    assert_offsets_increase(&got);
    got.sort();
    let mut want: Vec<Seen> = latest(&written).into_values().collect();
    want.sort();
    assert_eq!(got, want);
    assert_no_files_with(&fs, &dir, ".swap");
}

#[test]
fn uncommitted_compaction_files_are_discarded_on_open() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(900), 0);
    write_versions(&mut log, 12, 6, 0, NOW_MS);
    flush(&mut log);
    let before = records(&log);
    let rp = log.flushed_offset();
    drop(log);
    for name in [
        "00000000000000000000.log.cleaned",
        "00000000000000000000.index.cleaned",
        // An index swap without the data file's swap: the commit never happened.
        "00000000000000000000.00000000000000000024.index.swap",
    ] {
        let f = fs.open(&dir.join(name), true).unwrap();
        f.write_all_at(b"half-written compaction output", 0)
            .unwrap();
        f.sync_data().unwrap();
    }
    fs.sync_dir(&dir).unwrap();
    fs.crash(3);
    let (log, _) = open(&fs, &dir, compacted_config(900), rp);
    assert_eq!(records(&log), before);
    assert_no_files_with(&fs, &dir, ".cleaned");
    assert_no_files_with(&fs, &dir, ".swap");
}

#[test]
fn retention_by_time_applies_only_with_the_delete_policy() {
    for (policy, expect_deleted) in [
        (CleanupPolicy::COMPACT, false),
        (
            CleanupPolicy {
                delete: true,
                compact: true,
            },
            true,
        ),
    ] {
        let (fs, dir) = faulty_fs();
        let config = LogConfig {
            retention_ms: 1_000,
            cleanup_policy: policy,
            ..compacted_config(500)
        };
        let (mut log, _) = open(&fs, &dir, config, 0);
        write_versions(&mut log, 4, 6, 0, NOW_MS);
        flush(&mut log);
        let segments = log.segment_count();
        let deleted = log
            .enforce_retention_below(NOW_MS + 10_000, i64::MAX)
            .unwrap();
        assert_eq!(
            deleted > 0,
            expect_deleted,
            "{policy:?}: {deleted} of {segments}"
        );
    }
}

fn assert_no_files_with(fs: &Arc<FaultyFs>, dir: &Path, suffix: &str) {
    let found: Vec<_> = fs
        .read_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_failed_compaction_leaves_the_log_and_the_directory_as_they_were() {
    let (fs, dir) = faulty_fs();
    let (mut log, _) = open(&fs, &dir, compacted_config(900), 0);
    write_versions(&mut log, 12, 6, 0, NOW_MS);
    roll(&mut log);
    flush(&mut log);
    let before = records(&log);
    let plan = log
        .compaction_plan(NOW_MS, i64::MAX, &CleanerLimits::default())
        .unwrap()
        .expect("due");
    fs.fail_next_fsync();
    let result = plan.execute();
    assert!(log.compaction_completed(result).is_err());
    assert_eq!(records(&log), before);
    assert_no_files_with(&fs, &dir, ".cleaned");
    assert_no_files_with(&fs, &dir, ".swap");
    // The next attempt works.
    assert!(compact(&mut log, NOW_MS).is_some());
}
