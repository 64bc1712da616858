//! Property test: random appends (several batches each, idempotent producers among
//! them), retries, flushes, rolls, truncations, DeleteRecords, clean restarts and power
//! losses on a FaultyFs. After every recovery with the last checkpointed recovery point:
//! the log is a byte-identical prefix of what was appended, holds at least everything
//! flushed, offsets are dense from the log start, every offset reads as the batch
//! containing it, and producer state matches the surviving batches.
//!
//! Failing cases are shrunk and saved by proptest (`proptest-regressions/`), and replayed
//! first on the next run. `PROPTEST_CASES=n` changes the number of cases; `KEEL_TRACE=1`
//! prints every step and recovery report (useful with a single named regression test).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{faulty_fs, NOW_MS};
use keel_storage::batch::{validate_batches, BatchHeader};
use keel_storage::fs::{FaultyFs, Filesystem};
use keel_storage::testing::BatchBuilder;
use keel_storage::{LeaderAppend, Log, LogConfig};
use proptest::prelude::*;

/// Cases when `PROPTEST_CASES` is not set: keeps the whole crate's tests well under a
/// minute in release and debug builds.
const DEFAULT_CASES: u32 = 1024;
/// Producer ids the test uses.
const PRODUCERS: u8 = 3;
/// Epoch of every test producer.
const EPOCH: i16 = 0;

#[derive(Clone, Debug)]
enum Op {
    /// Plain batches: (records, value bytes) each.
    Append(Vec<(u8, u16)>),
    /// One idempotent batch from producer `pid`.
    Produce {
        pid: u8,
        records: u8,
    },
    /// Resend producer `pid`'s last batch.
    Retry {
        pid: u8,
    },
    Flush,
    /// Advance the clock and let time-based rolls happen.
    Tick(u16),
    /// Power loss with this seed, then reopen at the checkpointed recovery point.
    Crash(u64),
    CloseReopen,
    /// Truncate at the start of a surviving batch chosen by this fraction (per mille).
    Truncate(u16),
    /// DeleteRecords up to a flushed offset chosen by this fraction (per mille).
    DeleteRecords(u16),
    /// Batches with offsets already assigned, as a follower receives them.
    Replicate(Vec<(u8, u16)>),
    /// Size retention keeping about this many bytes, below the flushed offset.
    Retention(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((1u8..6, 0u16..400), 1..4).prop_map(Op::Append),
        3 => (0..PRODUCERS, 1u8..4).prop_map(|(pid, records)| Op::Produce { pid, records }),
        1 => (0..PRODUCERS).prop_map(|pid| Op::Retry { pid }),
        3 => Just(Op::Flush),
        1 => (0u16..3_000).prop_map(Op::Tick),
        2 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::CloseReopen),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        1 => (0u16..=1000).prop_map(Op::DeleteRecords),
        2 => prop::collection::vec((1u8..6, 0u16..400), 1..4).prop_map(Op::Replicate),
        1 => (0u16..3_000).prop_map(Op::Retention),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        400u64..4_000,
        prop_oneof![Just(64u64), Just(512), Just(4096)],
        prop_oneof![Just(96u64), Just(10 << 20)],
    )
        .prop_map(
            |(segment_bytes, index_interval_bytes, segment_index_bytes)| LogConfig {
                segment_bytes,
                index_interval_bytes,
                segment_index_bytes,
                segment_ms: 5_000,
                ..LogConfig::default()
            },
        )
}

/// What the test believes a stored batch is.
#[derive(Clone, Debug)]
struct Stored {
    base: i64,
    last: i64,
    bytes: Vec<u8>,
    /// (pid, first sequence, last sequence, the request that produced it).
    producer: Option<(i64, i32, i32, BatchBuilder)>,
}

/// The test's model of the log and of the broker around it.
struct Harness {
    fs: Arc<FaultyFs>,
    dir: PathBuf,
    config: LogConfig,
    log: Option<Log>,
    batches: Vec<Stored>,
    /// Batches guaranteed durable (a prefix of `batches`).
    durable: usize,
    /// The recovery point the "broker" checkpointed: the last completed flush.
    recovery_point: i64,
    log_start: i64,
    now: i64,
}

type Check = Result<(), TestCaseError>;

impl Harness {
    fn log(&mut self) -> &mut Log {
        match self.log.as_mut() {
            Some(l) => l,
            None => unreachable!("the harness always holds an open log"),
        }
    }

    fn end(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.last + 1)
    }

    fn last_of(&self, pid: i64) -> Option<&Stored> {
        self.batches
            .iter()
            .rev()
            .find(|b| b.producer.as_ref().is_some_and(|p| p.0 == pid))
    }

    fn apply(&mut self, op: &Op) -> Check {
        match op {
            Op::Append(shapes) => {
                let mut request = Vec::new();
                let mut lens = Vec::new();
                for (i, &(records, value_bytes)) in shapes.iter().enumerate() {
                    let b = BatchBuilder::new(records as usize, value_bytes as usize)
                        .timestamp(self.now)
                        .fill(i as u8 ^ self.batches.len() as u8)
                        .build();
                    lens.push(b.len());
                    request.extend(b);
                }
                let now = self.now;
                let info = match self.log().append_as_leader(&mut request, 1, now) {
                    Ok(LeaderAppend::Appended(info)) => info,
                    other => return Err(TestCaseError::fail(format!("append: {other:?}"))),
                };
                prop_assert_eq!(info.base_offset, self.end());
                let mut at = 0;
                for len in lens {
                    let bytes = request[at..at + len].to_vec();
                    let h = parse(&bytes)?;
                    self.batches.push(Stored {
                        base: h.base_offset,
                        last: h.last_offset(),
                        bytes,
                        producer: None,
                    });
                    at += len;
                }
            }
            Op::Produce { pid, records } => {
                let pid = i64::from(*pid);
                let seq = self
                    .last_of(pid)
                    .and_then(|b| b.producer.as_ref())
                    .map_or(0, |p| p.2 + 1);
                let builder = BatchBuilder::new(*records as usize, 30)
                    .producer(pid, EPOCH, seq)
                    .timestamp(self.now);
                let mut bytes = builder.build();
                let now = self.now;
                let info = match self.log().append_as_leader(&mut bytes, 1, now) {
                    Ok(LeaderAppend::Appended(info)) => info,
                    other => return Err(TestCaseError::fail(format!("produce: {other:?}"))),
                };
                prop_assert_eq!(info.base_offset, self.end());
                let last_seq = seq + i32::from(*records) - 1;
                self.batches.push(Stored {
                    base: info.base_offset,
                    last: info.last_offset,
                    bytes,
                    producer: Some((pid, seq, last_seq, builder)),
                });
            }
            Op::Retry { pid } => {
                let Some(original) = self.last_of(i64::from(*pid)).cloned() else {
                    return Ok(());
                };
                let Some((_, _, _, builder)) = original.producer else {
                    return Ok(());
                };
                let mut bytes = builder.build();
                let now = self.now;
                match self.log().append_as_leader(&mut bytes, 1, now) {
                    Ok(LeaderAppend::Duplicate(info)) => {
                        prop_assert_eq!(
                            (info.base_offset, info.last_offset),
                            (original.base, original.last)
                        );
                    }
                    other => return Err(TestCaseError::fail(format!("retry: {other:?}"))),
                }
            }
            Op::Flush => {
                let log = self.log();
                if let Some(plan) = log.flush_plan() {
                    plan.execute()
                        .map_err(|e| TestCaseError::fail(format!("flush: {e}")))?;
                    log.flush_completed(&plan);
                }
                let flushed = self.log().flushed_offset();
                prop_assert_eq!(flushed, self.end());
                self.recovery_point = flushed;
                self.durable = self.batches.len();
            }
            Op::Tick(ms) => {
                self.now += i64::from(*ms);
                let now = self.now;
                self.log()
                    .maybe_roll(now)
                    .map_err(|e| TestCaseError::fail(format!("roll: {e}")))?;
            }
            Op::Crash(seed) => {
                self.log = None;
                self.fs.crash(*seed);
                self.reopen()?;
            }
            Op::CloseReopen => {
                if let Some(log) = self.log.take() {
                    log.close()
                        .map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
                }
                self.recovery_point = self.end();
                self.durable = self.batches.len();
                self.reopen()?;
                prop_assert_eq!(
                    self.log().log_end_offset(),
                    self.end(),
                    "clean restart lost data"
                );
            }
            Op::Truncate(per_mille) => {
                let first = self.first_visible();
                let choices = self.batches.len() - first; // keep at least the first visible batch
                if choices == 0 {
                    return Ok(());
                }
                let k = first + 1 + (choices - 1) * usize::from(*per_mille) / 1000;
                let offset = self.batches.get(k).map_or(self.end(), |b| b.base);
                self.log()
                    .truncate_to(offset)
                    .map_err(|e| TestCaseError::fail(format!("truncate: {e}")))?;
                self.batches.truncate(k);
                self.durable = self.durable.min(k);
                // The broker's checkpoint stays stale on purpose: recovery must cope.
                prop_assert_eq!(self.log().log_end_offset(), self.end());
            }
            Op::Replicate(shapes) => {
                let mut request = Vec::new();
                let mut next = self.end();
                for (i, &(records, value_bytes)) in shapes.iter().enumerate() {
                    let b = BatchBuilder::new(records as usize, value_bytes as usize)
                        .base_offset(next)
                        .leader_epoch(3)
                        .timestamp(self.now)
                        .fill(0x80 ^ i as u8 ^ self.batches.len() as u8)
                        .build();
                    let h = parse(&b)?;
                    next = h.last_offset() + 1;
                    self.batches.push(Stored {
                        base: h.base_offset,
                        last: h.last_offset(),
                        bytes: b.clone(),
                        producer: None,
                    });
                    request.extend(b);
                }
                let now = self.now;
                let info = self
                    .log()
                    .append_as_follower(&request, now)
                    .map_err(|e| TestCaseError::fail(format!("replicate: {e}")))?;
                prop_assert_eq!(info.last_offset + 1, self.end());
            }
            Op::Retention(keep_bytes) => {
                let flushed = self.log().flushed_offset();
                let original = self.config.clone();
                let mut config = original.clone();
                config.retention_bytes = i64::from(*keep_bytes);
                let now = self.now;
                let log = self.log();
                let before = log.log_start_offset();
                log.set_config(config);
                log.enforce_retention_below(now, flushed)
                    .map_err(|e| TestCaseError::fail(format!("retention: {e}")))?;
                log.set_config(original);
                let after = log.log_start_offset();
                prop_assert!(after >= before && after <= flushed.max(before));
                self.log_start = after;
            }
            Op::DeleteRecords(per_mille) => {
                let flushed = self.log().flushed_offset();
                if flushed <= self.log_start {
                    return Ok(());
                }
                let offset =
                    self.log_start + (flushed - self.log_start) * i64::from(*per_mille) / 1000;
                let start = self
                    .log()
                    .delete_records_before(offset)
                    .map_err(|e| TestCaseError::fail(format!("delete records: {e}")))?;
                self.log_start = self.log_start.max(offset);
                prop_assert_eq!(start, self.log_start);
            }
        }
        Ok(())
    }

    /// Index of the batch holding the log start offset.
    fn first_visible(&self) -> usize {
        self.batches.partition_point(|b| b.last < self.log_start)
    }

    fn reopen(&mut self) -> Check {
        let fs: Arc<dyn Filesystem> = self.fs.clone();
        let (log, report) = Log::open(
            fs,
            &self.dir,
            self.config.clone(),
            self.recovery_point,
            self.now,
        )
        .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
        if std::env::var_os("KEEL_TRACE").is_some() {
            eprintln!("recovered: {report:?}");
            if let Ok(entries) = self.fs.read_dir(&self.dir) {
                eprintln!("files: {entries:?}");
            }
        }
        self.log = Some(log);
        let recovered = read_everything(self.log())?;
        let first = self.first_visible();
        prop_assert_eq!(
            self.log().log_start_offset(),
            self.log_start.min(self.log().log_end_offset())
        );
        prop_assert!(
            first + recovered.len() <= self.batches.len(),
            "recovered more batches than appended"
        );
        for (i, (h, bytes)) in recovered.iter().enumerate() {
            let expected = &self.batches[first + i];
            prop_assert_eq!(h.base_offset, expected.base, "offsets not dense");
            prop_assert!(
                bytes == &expected.bytes,
                "batch at {} differs from what was appended",
                h.base_offset
            );
        }
        let kept = first + recovered.len();
        prop_assert!(
            kept >= self.durable,
            "lost flushed data: kept {} of {} durable batches ({:?})",
            kept,
            self.durable,
            report
        );
        self.batches.truncate(kept);
        self.durable = kept;
        prop_assert_eq!(self.log().log_end_offset(), self.end());
        prop_assert_eq!(self.log().flushed_offset(), self.end());
        self.recovery_point = self.end();
        self.check_reads()?;
        self.check_producers()
    }

    fn check_reads(&mut self) -> Check {
        let first = self.first_visible();
        let batches = self.batches[first..].to_vec();
        let log = self.log();
        for b in batches {
            for offset in b.base..=b.last {
                if offset < log.log_start_offset() {
                    continue;
                }
                let plan = log
                    .read(offset, 1, i64::MAX, true)
                    .map_err(|e| TestCaseError::fail(format!("read {offset}: {e}")))?;
                let bytes = plan
                    .execute()
                    .map_err(|e| TestCaseError::fail(format!("read {offset}: {e}")))?;
                prop_assert!(
                    bytes[..] == b.bytes[..],
                    "read at {} did not return its batch",
                    offset
                );
            }
        }
        Ok(())
    }

    fn check_producers(&mut self) -> Check {
        for pid in 0..i64::from(PRODUCERS) {
            let expected = self
                .last_of(pid)
                .and_then(|b| b.producer.as_ref())
                .map(|p| (EPOCH, Some(p.2)));
            prop_assert_eq!(self.log().producer_state(pid), expected, "producer {}", pid);
        }
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Result<BatchHeader, TestCaseError> {
    BatchHeader::parse(bytes).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Every batch from the log start to the end, with its bytes.
fn read_everything(log: &Log) -> Result<Vec<(BatchHeader, Vec<u8>)>, TestCaseError> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let plan = log
            .read(offset, usize::MAX, i64::MAX, true)
            .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
        prop_assert!(
            !plan.is_empty(),
            "empty read at {} below the log end",
            offset
        );
        let bytes = plan
            .execute()
            .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
        let headers = validate_batches(&bytes, usize::MAX)
            .map_err(|e| TestCaseError::fail(format!("partial or corrupt read: {e}")))?;
        let mut at = 0;
        for h in headers {
            out.push((h, bytes[at..at + h.total_bytes()].to_vec()));
            at += h.total_bytes();
        }
        offset = plan.next_offset();
    }
    Ok(out)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `ops` on a fresh log, then a final power loss; every step checks the invariants.
fn run(config: LogConfig, ops: &[Op]) -> Check {
    let (fs, dir) = faulty_fs();
    let fs_dyn: Arc<dyn Filesystem> = fs.clone();
    let (log, _) = Log::open(fs_dyn, Path::new(&dir), config.clone(), 0, NOW_MS)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut h = Harness {
        fs,
        dir,
        config,
        log: Some(log),
        batches: Vec::new(),
        durable: 0,
        recovery_point: 0,
        log_start: 0,
        now: NOW_MS,
    };
    let trace = std::env::var_os("KEEL_TRACE").is_some();
    for op in ops {
        h.apply(op)?;
        if trace {
            let log = h.log();
            eprintln!("{op:?} -> start {} end {} flushed {} segments {} | model {} batches, durable {}, rp {}",
                log.log_start_offset(), log.log_end_offset(), log.flushed_offset(), log.segment_count(),
                h.batches.len(), h.durable, h.recovery_point);
        }
    }
    h.apply(&Op::Crash(ops.len() as u64))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn recovered_log_is_a_durable_prefix_of_what_was_appended(
        config in config(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(config, &ops)?;
    }
}

fn tiny_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        segment_ms: 5_000,
        segment_index_bytes: 96,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

#[test]
fn producer_state_survives_delete_records_then_crash() -> Check {
    use Op::*;
    run(
        tiny_segments(),
        &[
            Append(vec![(1, 0)]),
            Produce { pid: 0, records: 1 },
            Retry { pid: 0 },
            Append(vec![(1, 0)]),
            Crash(17311433228488),
            Produce { pid: 0, records: 2 },
            Produce { pid: 0, records: 1 },
            Produce { pid: 0, records: 1 },
            Crash(1937650542556694729),
            Append(vec![(1, 0), (1, 32)]),
            Truncate(0),
            Append(vec![(3, 0), (2, 55)]),
            Retry { pid: 0 },
            DeleteRecords(500),
            Append(vec![(1, 0)]),
            Crash(5635470192196902534),
            DeleteRecords(143),
        ],
    )
}

#[test]
fn producer_state_survives_retention_after_truncation_and_crash() -> Check {
    use Op::*;
    run(
        LogConfig {
            segment_bytes: 684,
            ..tiny_segments()
        },
        &[
            Produce { pid: 0, records: 1 },
            Flush,
            Replicate(vec![(1, 0), (4, 106)]),
            Append(vec![(1, 0), (1, 0), (1, 0)]),
            Truncate(400),
            Append(vec![(1, 0), (1, 0)]),
            Append(vec![(1, 0)]),
            Crash(13895137262327302235),
            Retention(1),
            Append(vec![(1, 28)]),
            Crash(9123654318246173914),
        ],
    )
}

#[test]
fn producer_state_survives_truncation_after_delete_records() -> Check {
    use Op::*;
    run(
        LogConfig {
            segment_bytes: 2631,
            ..tiny_segments()
        },
        &[
            Append(vec![(1, 0)]),
            Produce { pid: 0, records: 1 },
            Replicate(vec![(5, 209)]),
            Flush,
            DeleteRecords(1000),
            Replicate(vec![(4, 22), (2, 144), (3, 228)]),
            Truncate(0),
            Tick(0),
        ],
    )
}
