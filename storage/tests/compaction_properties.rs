//! Property test: random keyed appends (tombstones and every codec among them), flushes,
//! rolls, compactions — completed, cut short by a power loss after the commit, or
//! aborted by a truncation — truncations at or above the high watermark, clean restarts
//! and power losses on a FaultyFs. After every step:
//!
//! - every offset in the log holds the record appended there (no offset holds two
//!   values) and offsets strictly increase;
//! - for every key, its latest durable record is readable at its offset, or a later
//!   record of the key is, or it is a tombstone at least `delete.retention.ms` old;
//! - a tombstone that is its key's latest and younger than `delete.retention.ms` is
//!   still there;
//! - a read at any offset returns the first record at or after it.
//!
//! `PROPTEST_CASES=n` changes the number of cases; failing cases are saved by proptest.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::{faulty_fs, NOW_MS};
use keel_storage::batch::BatchIter;
use keel_storage::fs::{FaultyFs, Filesystem};
use keel_storage::record::{inflate_records, parse_records};
use keel_storage::testing::{BatchBuilder, TestRecord};
use keel_storage::{CleanerLimits, CleanupPolicy, LeaderAppend, Log, LogConfig};
use proptest::prelude::*;

const DEFAULT_CASES: u32 = 256;
const KEYS: u8 = 8;
const RETENTION_MS: i64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    /// One batch: (key, tombstone, value bytes) per record, and a codec.
    Append(Vec<(u8, bool, u8)>, u8),
    Flush,
    /// Advance the clock; time-based rolls happen.
    Tick(u16),
    /// Plan, execute and install a compaction, with a dedupe buffer of this many keys.
    Compact(u8),
    /// Execute a compaction, append meanwhile, then install it.
    CompactAroundAppend(u8),
    /// Execute a compaction (committed), then lose power before installing it.
    CompactThenCrash(u64),
    /// Execute a compaction, then truncate (per mille of the range above the high
    /// watermark) before installing it.
    CompactThenTruncate(u16),
    /// Truncate at a point (per mille) between the high watermark and the log end.
    Truncate(u16),
    Crash(u64),
    CloseReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec((0..KEYS, prop::bool::weighted(0.15), 0u8..60), 1..6), 0u8..5)
            .prop_map(|(r, c)| Op::Append(r, c)),
        3 => Just(Op::Flush),
        2 => (0u16..4_000).prop_map(Op::Tick),
        3 => (1u8..12).prop_map(Op::Compact),
        1 => (1u8..12).prop_map(Op::CompactAroundAppend),
        1 => any::<u64>().prop_map(Op::CompactThenCrash),
        1 => (0u16..=1000).prop_map(Op::CompactThenTruncate),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::CloseReopen),
    ]
}

fn config(segment_bytes: u64, ratio: f64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 64,
        segment_ms: 3_000,
        cleanup_policy: CleanupPolicy::COMPACT,
        min_cleanable_dirty_ratio: ratio,
        delete_retention_ms: RETENTION_MS,
        ..LogConfig::default()
    }
}

/// A record as appended.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    at_ms: i64,
}

struct Harness {
    fs: Arc<FaultyFs>,
    dir: PathBuf,
    config: LogConfig,
    log: Option<Log>,
    /// Every record appended that the log's offsets still cover, by offset.
    history: BTreeMap<i64, Written>,
    /// The last completed flush: the recovery point, and what a crash keeps.
    flushed: i64,
    /// The highest bound a compaction ran with: nothing truncates below it.
    high_watermark: i64,
    now: i64,
    seq: u32,
}

type Check = Result<(), TestCaseError>;

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'0' + k]
}

impl Harness {
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("log open")
    }

    fn reopen(&mut self) {
        let fs: Arc<dyn Filesystem> = self.fs.clone();
        let (log, _) = Log::open(fs, &self.dir, self.config.clone(), self.flushed, self.now)
            .unwrap_or_else(|e| panic!("reopen: {e}"));
        self.log = Some(log);
        let end = self.log().log_end_offset();
        assert!(
            end >= self.flushed,
            "log end {end} below the flushed offset {}",
            self.flushed
        );
        self.history.retain(|&o, _| o < end);
        // Recovery fsyncs what it kept.
        self.flushed = self.log().flushed_offset();
    }

    fn crash(&mut self, seed: u64) {
        self.log = None;
        self.fs.crash(seed);
        self.reopen();
    }

    fn append(&mut self, records: &[(u8, bool, u8)], codec: u8) {
        let recs: Vec<TestRecord> = records
            .iter()
            .map(|&(k, tombstone, len)| {
                self.seq += 1;
                if tombstone {
                    TestRecord::tombstone(&key(k))
                } else {
                    let mut v = format!("{}:", self.seq).into_bytes();
                    v.resize(v.len() + len as usize, b'.');
                    TestRecord::value(&key(k), &v)
                }
            })
            .collect();
        let now = self.now;
        let mut bytes = BatchBuilder::keyed(recs.clone())
            .timestamp(now)
            .compression(codec)
            .build();
        let info = match self.log().append_as_leader(&mut bytes, 0, now) {
            Ok(LeaderAppend::Appended(info)) => info,
            other => panic!("append: {other:?}"),
        };
        for (i, r) in recs.into_iter().enumerate() {
            self.history.insert(
                info.base_offset + i as i64,
                Written {
                    key: r.key.unwrap(),
                    value: r.value,
                    at_ms: now,
                },
            );
        }
    }

    fn flush(&mut self) {
        let log = self.log();
        if let Some(plan) = log.flush_plan() {
            plan.execute().expect("flush");
            log.flush_completed(&plan);
        }
        self.flushed = self.log().flushed_offset();
    }

    fn limits(keys: u8) -> CleanerLimits {
        CleanerLimits {
            dedupe_buffer_bytes: usize::from(keys) * 66,
        }
    }

    /// Plans and executes a compaction bounded by the log end (the log caps it at the
    /// flushed offset itself); `None` if none was due.
    fn execute(&mut self, keys: u8) -> Option<keel_storage::CompactionResult> {
        let now = self.now;
        let flushed = self.log().flushed_offset();
        let plan = self
            .log()
            .compaction_plan(now, i64::MAX, &Self::limits(keys))
            .expect("plan")?;
        // The log caps compaction at its flushed offset: that is the high watermark here
        // (a broker passes the real one), and nothing truncates below it.
        self.high_watermark = self.high_watermark.max(plan.end_offset().min(flushed));
        Some(plan.execute())
    }

    fn complete(&mut self, result: keel_storage::CompactionResult) {
        self.log().compaction_completed(result).expect("install");
    }

    fn truncate(&mut self, per_mille: u16) {
        let hw = self.high_watermark;
        let log = self.log();
        let (low, high) = (log.log_start_offset().max(hw), log.log_end_offset());
        if high <= low {
            return;
        }
        let at = low + (high - low) * i64::from(per_mille) / 1000;
        self.log().truncate_to(at).expect("truncate");
        let end = self.log().log_end_offset();
        assert!(end <= at.max(low));
        self.history.retain(|&o, _| o < end);
        self.flushed = self.flushed.min(end);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Append(records, codec) => self.append(records, *codec),
            Op::Flush => self.flush(),
            Op::Tick(ms) => {
                self.now += i64::from(*ms);
                let now = self.now;
                self.log().maybe_roll(now).expect("roll");
            }
            Op::Compact(keys) => {
                if let Some(r) = self.execute(*keys) {
                    self.complete(r);
                }
            }
            Op::CompactAroundAppend(keys) => {
                if let Some(r) = self.execute(*keys) {
                    self.append(&[(0, false, 3), (1, true, 0)], 0);
                    self.flush();
                    self.complete(r);
                }
            }
            Op::CompactThenCrash(seed) => {
                if let Some(r) = self.execute(4) {
                    drop(r);
                    self.crash(*seed);
                }
            }
            Op::CompactThenTruncate(per_mille) => {
                if let Some(r) = self.execute(6) {
                    self.truncate(*per_mille);
                    self.complete(r);
                }
            }
            Op::Truncate(per_mille) => self.truncate(*per_mille),
            Op::Crash(seed) => self.crash(*seed),
            Op::CloseReopen => {
                if let Some(log) = self.log.take() {
                    self.flushed = log.log_end_offset();
                    log.close().expect("close");
                }
                self.reopen();
            }
        }
    }

    /// Every (offset, key, value) the log returns, reading from the start.
    fn contents(&mut self) -> Vec<(i64, Written)> {
        let log = self.log();
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let plan = log.read(offset, 700, i64::MAX, true).expect("plan read");
            if plan.is_empty() {
                break;
            }
            let bytes = plan.execute().expect("read");
            for item in BatchIter::new(&bytes) {
                let (h, batch) = item.expect("whole batches");
                let section = inflate_records(&h, batch, usize::MAX).expect("inflate");
                for r in parse_records(&section, h.records_count).expect("records") {
                    out.push((
                        h.base_offset + i64::from(r.offset_delta),
                        Written {
                            key: r.key.expect("keyed").to_vec(),
                            value: r.value.map(<[u8]>::to_vec),
                            at_ms: 0,
                        },
                    ));
                }
            }
            offset = plan.next_offset();
        }
        out
    }

    fn check(&mut self) -> Check {
        let contents = self.contents();
        for w in contents.windows(2) {
            prop_assert!(w[0].0 < w[1].0, "offsets {} then {}", w[0].0, w[1].0);
        }
        let present: BTreeMap<i64, Written> = contents.iter().cloned().collect();
        for (offset, r) in &present {
            let h = self.history.get(offset);
            prop_assert!(
                h.is_some_and(|h| h.key == r.key && h.value == r.value),
                "offset {} holds {:?}, appended {:?}",
                offset,
                r,
                h
            );
        }
        // Latest durable record of each key, and latest record of each key overall.
        let mut latest_durable: BTreeMap<&[u8], (i64, &Written)> = BTreeMap::new();
        let mut latest: BTreeMap<&[u8], (i64, &Written)> = BTreeMap::new();
        for (&o, w) in &self.history {
            latest.insert(&w.key, (o, w));
            if o < self.flushed {
                latest_durable.insert(&w.key, (o, w));
            }
        }
        for (k, (o, w)) in &latest_durable {
            let here_or_later = present.range(o..).any(|(_, r)| r.key.as_slice() == *k);
            let expired_tombstone = w.value.is_none() && self.now >= w.at_ms + RETENTION_MS;
            prop_assert!(
                here_or_later || expired_tombstone,
                "key {:?}: its latest durable record at {} is gone",
                String::from_utf8_lossy(k),
                o
            );
        }
        for (k, (o, w)) in &latest {
            if w.value.is_none() && self.now < w.at_ms + RETENTION_MS && *o < self.flushed {
                prop_assert!(
                    present.contains_key(o),
                    "tombstone of {:?} at {} went before delete.retention.ms",
                    String::from_utf8_lossy(k),
                    o
                );
            }
        }
        // Reads inside gaps find the next record: the first batch returned ends at or
        // after the offset (it may be a batch whose records there were removed, as in
        // Kafka), and reading on from it reaches the first record at or after it.
        let log = self.log();
        let end = log.log_end_offset();
        let start = log.log_start_offset();
        for offset in (start..end).step_by(3) {
            let want = present.range(offset..).next().map(|(&o, _)| o);
            let mut at = offset;
            let mut found = None;
            while found.is_none() && at < end {
                let plan = log.read(at, 1, i64::MAX, true).expect("plan");
                if plan.is_empty() {
                    break;
                }
                let bytes = plan.execute().expect("read");
                let (h, batch) = BatchIter::new(&bytes)
                    .next()
                    .expect("a batch")
                    .expect("valid");
                prop_assert!(
                    h.last_offset() >= at,
                    "read at {} gave {}..={}",
                    at,
                    h.base_offset,
                    h.last_offset()
                );
                let section = inflate_records(&h, batch, usize::MAX).expect("inflate");
                found = parse_records(&section, h.records_count)
                    .expect("records")
                    .iter()
                    .map(|r| h.base_offset + i64::from(r.offset_delta))
                    .find(|&o| o >= offset);
                at = h.next_offset();
            }
            prop_assert_eq!(found, want, "reading from {}", offset);
        }
        Ok(())
    }
}

fn run(segment_bytes: u64, ratio: f64, ops: &[Op]) -> Check {
    let (fs, dir) = faulty_fs();
    let config = config(segment_bytes, ratio);
    let mut h = Harness {
        fs,
        dir,
        config,
        log: None,
        history: BTreeMap::new(),
        flushed: 0,
        high_watermark: 0,
        now: NOW_MS,
        seq: 0,
    };
    h.reopen();
    for (i, op) in ops.iter().enumerate() {
        if std::env::var_os("KEEL_TRACE").is_some() {
            eprintln!("step {i}: {op:?}");
        }
        h.step(op);
        h.check()
            .map_err(|e| TestCaseError::fail(format!("after step {i} ({op:?}): {e}")))?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn compaction_with_crashes_keeps_every_keys_latest_value(
        segment_bytes in 300u64..2_000,
        ratio in prop_oneof![Just(0.0), Just(0.2), Just(0.5)],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(segment_bytes, ratio, &ops)?;
    }
}
