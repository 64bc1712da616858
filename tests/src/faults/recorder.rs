//! The history writer: every worker and the nemesis append events here, stamped with
//! one monotonic clock under one lock, so the file lists events in the order they
//! happened (the format is in `checker::history`).
//!
//! It also keeps the little the runner needs while the run goes on: when each
//! partition last acknowledged a send (to wait for recovery after a heal) and
//! counters for the progress line.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::checker::history::{Event, EventType, Op};
use crate::checker::queue::TopicPartition;

/// Running totals for the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sends invoked.
    pub sends: u64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Sends that definitely failed.
    pub failed: u64,
    /// Sends with an unknown outcome.
    pub unknown: u64,
    /// Records returned by polls.
    pub read: u64,
}

struct Inner {
    out: BufWriter<File>,
    /// Latest `ok` completion time per partition.
    last_ack_ns: HashMap<TopicPartition, u64>,
    counters: Counters,
    write_error: Option<String>,
}

/// Appends events to a JSON-lines history file.
pub struct Recorder {
    start: Instant,
    start_wall: std::time::SystemTime,
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// Creates (truncates) the history file at `path`; its clock starts now.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Recorder {
            start: Instant::now(),
            start_wall: std::time::SystemTime::now(),
            inner: Mutex::new(Inner {
                out: BufWriter::new(file),
                last_ack_ns: HashMap::new(),
                counters: Counters::default(),
                write_error: None,
            }),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant the run's clock started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The wall-clock time of the history's time 0, as the nodes' logs print times
    /// (`2026-12-03T07:03:10.123Z`), to line the history up with them.
    pub fn started_utc(&self) -> String {
        utc(self.start_wall)
    }

    /// Stamps the event built by `make` (given the time) and appends it.
    pub fn record(&self, make: impl FnOnce(u64) -> Event) {
        let mut inner = lock(&self.inner);
        let event = make(self.now_ns());
        match (&event.op, event.event_type) {
            (Op::Send(s), EventType::Ok) => {
                inner.counters.acked += 1;
                inner
                    .last_ack_ns
                    .insert((s.topic.clone(), s.partition), event.time_ns);
            }
            (Op::Send(_), EventType::Invoke) => inner.counters.sends += 1,
            (Op::Send(_), EventType::Fail) => inner.counters.failed += 1,
            (Op::Send(_), EventType::Info) => inner.counters.unknown += 1,
            (Op::Poll { records, .. }, EventType::Ok) => {
                inner.counters.read += records.len() as u64
            }
            _ => {}
        }
        let line = event.to_json().to_string();
        if let Err(e) = writeln!(inner.out, "{line}") {
            if inner.write_error.is_none() {
                inner.write_error = Some(e.to_string());
            }
        }
    }

    /// Whether every partition in `partitions` acknowledged a send at or after `since_ns`.
    pub fn all_acked_since(&self, partitions: &[TopicPartition], since_ns: u64) -> bool {
        let inner = lock(&self.inner);
        partitions
            .iter()
            .all(|tp| inner.last_ack_ns.get(tp).is_some_and(|t| *t >= since_ns))
    }

    /// The partitions of `partitions` without an acknowledgement since `since_ns`.
    pub fn unacked_since(
        &self,
        partitions: &[TopicPartition],
        since_ns: u64,
    ) -> Vec<TopicPartition> {
        let inner = lock(&self.inner);
        partitions
            .iter()
            .filter(|tp| !inner.last_ack_ns.get(*tp).is_some_and(|t| *t >= since_ns))
            .cloned()
            .collect()
    }

    /// The totals so far.
    pub fn counters(&self) -> Counters {
        lock(&self.inner).counters
    }

    /// Writes buffered events to the file.
    ///
    /// # Errors
    /// The first write or flush error of the run.
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        if let Err(e) = inner.out.flush() {
            inner.write_error.get_or_insert(e.to_string());
        }
        match &inner.write_error {
            Some(e) => anyhow::bail!("writing the history: {e}"),
            None => Ok(()),
        }
    }

    /// Waits until `partitions` all acknowledged a send at or after `since_ns`, or
    /// `timeout` passes; returns whether they did.
    pub fn wait_acked_since(
        &self,
        partitions: &[TopicPartition],
        since_ns: u64,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_acked_since(partitions, since_ns) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `t` as an ISO 8601 UTC timestamp with milliseconds.
pub fn utc(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_match_known_dates() {
        let at = |s: u64, ms: u64| {
            std::time::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms)
        };
        assert_eq!(utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc(at(1_796_281_390, 123)), "2026-12-03T07:03:10.123Z");
    }
}
