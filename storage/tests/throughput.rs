//! Append and read throughput on real files (ignored by default; run with
//! `cargo test --release -p keel-storage --test throughput -- --ignored --nocapture`).

use std::sync::Arc;
use std::time::Instant;

use keel_storage::fs::{Filesystem, StdFs};
use keel_storage::testing::BatchBuilder;
use keel_storage::{Log, LogConfig};

/// Records per batch: ~1 MB batches of 100-byte records, like the broker's target load.
const RECORDS_PER_BATCH: usize = 9_500;
const VALUE_BYTES: usize = 100;
const APPENDS: usize = 600;
/// Appends between group-commit flushes.
const APPENDS_PER_FLUSH: usize = 10;

#[test]
#[ignore]
fn append_and_read_throughput() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn Filesystem> = Arc::new(StdFs);
    let config = LogConfig {
        segment_bytes: 256 << 20,
        max_message_bytes: 2 << 20,
        ..LogConfig::default()
    };
    let (mut log, _) = Log::open(fs, &tmp.path().join("bench-0"), config, 0, 0).expect("open");
    let mut batch = BatchBuilder::new(RECORDS_PER_BATCH, VALUE_BYTES).build();
    println!(
        "batch: {} bytes, {} records",
        batch.len(),
        RECORDS_PER_BATCH
    );

    let start = Instant::now();
    let mut append_time = std::time::Duration::ZERO;
    for i in 0..APPENDS {
        let t = Instant::now();
        log.append_as_leader(&mut batch, 0, i as i64)
            .expect("append");
        append_time += t.elapsed();
        if i % APPENDS_PER_FLUSH == APPENDS_PER_FLUSH - 1 {
            let plan = log.flush_plan().expect("plan");
            plan.execute().expect("fsync");
            log.flush_completed(&plan);
        }
    }
    let total = start.elapsed();
    let bytes = (batch.len() * APPENDS) as f64;
    let records = (RECORDS_PER_BATCH * APPENDS) as f64;
    println!(
        "append only: {:.0} MB/s, {:.2} M records/s ({:.0} µs per 1 MB append)",
        bytes / append_time.as_secs_f64() / 1e6,
        records / append_time.as_secs_f64() / 1e6,
        append_time.as_micros() as f64 / APPENDS as f64
    );
    println!(
        "with fsync every {APPENDS_PER_FLUSH} appends: {:.0} MB/s, {:.2} M records/s",
        bytes / total.as_secs_f64() / 1e6,
        records / total.as_secs_f64() / 1e6
    );

    let start = Instant::now();
    let mut plan_time = std::time::Duration::ZERO;
    let mut offset = 0;
    let mut read = 0usize;
    while offset < log.log_end_offset() {
        let t = Instant::now();
        let plan = log.read(offset, 1 << 20, i64::MAX, true).expect("plan");
        plan_time += t.elapsed();
        read += plan.execute().expect("read").len();
        offset = plan.next_offset();
    }
    let total = start.elapsed();
    println!(
        "read: {:.0} MB/s, planning {:.1} µs per read under the lock",
        read as f64 / total.as_secs_f64() / 1e6,
        plan_time.as_micros() as f64 / APPENDS as f64
    );
}
