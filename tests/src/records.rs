//! What clients wrote and read, and the checks over it: acknowledgements printed by
//! `acked_producer.py`, what `tail_consumer.py` saw while faults happened, and the
//! final read of a whole topic by `dump_partitions.py`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::clients::{python, python_script, run};

/// How long a full read of a topic may take.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(180);

/// One record as a client reported it: partition, offset, value.
pub type Record = (i32, i64, String);

/// Reads `"<partition> <offset> <value>"` lines (an acked producer's or a tailing
/// consumer's output); a torn last line is ignored.
pub fn record_lines(path: &Path) -> Vec<Record> {
    let Ok(f) = std::fs::File::open(path) else {
        return vec![];
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.to_string(),
            ))
        })
        .collect()
}

/// Every record of a topic, read from the beginning to the end of each partition.
#[derive(Debug, Default)]
pub struct TopicDump {
    /// Value at each (partition, offset).
    pub at: BTreeMap<(i32, i64), String>,
}

impl TopicDump {
    /// Reads the whole topic with confluent-kafka through `bootstrap`.
    ///
    /// # Errors
    /// The client failed, or an offset was read twice.
    pub fn read(bootstrap: &str, topic: &str, partitions: usize) -> anyhow::Result<Self> {
        let out = run(
            Command::new(python()?)
                .arg(python_script("dump_partitions.py"))
                .args([bootstrap, topic, &partitions.to_string()]),
            DUMP_TIMEOUT,
        )?;
        let mut dump = TopicDump::default();
        for line in String::from_utf8(out.stdout)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line).context("dump line")?;
            let at = (
                v["p"].as_i64().context("partition")? as i32,
                v["o"].as_i64().context("offset")?,
            );
            let value = v["v"].as_str().context("value")?.to_string();
            if dump.at.insert(at, value).is_some() {
                bail!("offset {at:?} read twice");
            }
        }
        Ok(dump)
    }

    /// Checks that every acknowledged record is at its acknowledged offset, that no
    /// value is stored twice, and that each partition's offsets are dense from its
    /// first one. Returns a description of every violation found.
    pub fn check_acked_exactly_once(&self, acked: &[Record]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut where_is: HashMap<&str, (i32, i64)> = HashMap::new();
        for (at, value) in &self.at {
            if let Some(first) = where_is.insert(value, *at) {
                problems.push(format!("{value} is stored twice: at {first:?} and {at:?}"));
            }
        }
        let misplaced: Vec<_> = acked
            .iter()
            .filter(|(p, o, v)| self.at.get(&(*p, *o)) != Some(v))
            .collect();
        if !misplaced.is_empty() {
            problems.push(format!(
                "{} of {} acknowledged records are not at their acknowledged offset, e.g. {:?} (found {:?})",
                misplaced.len(),
                acked.len(),
                misplaced[0],
                self.at.get(&(misplaced[0].0, misplaced[0].1))
            ));
        }
        let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (p, o) in self.at.keys() {
            by_partition.entry(*p).or_default().push(*o);
        }
        for (p, offsets) in by_partition {
            let first = offsets[0];
            if let Some(gap) = offsets
                .iter()
                .zip(first..)
                .find(|(o, expected)| **o != *expected)
            {
                problems.push(format!(
                    "partition {p}: offsets not dense, {} where {} was expected",
                    gap.0, gap.1
                ));
            }
        }
        problems
    }

    /// Checks what a consumer saw during the run against the final contents: offsets
    /// only go forward within a partition, and each offset held the value it holds now.
    pub fn check_consumer_history(&self, seen: &[Record]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut last: HashMap<i32, i64> = HashMap::new();
        for (p, o, v) in seen {
            if let Some(prev) = last.insert(*p, *o) {
                if *o <= prev {
                    problems.push(format!(
                        "partition {p}: the consumer went from offset {prev} back to {o}"
                    ));
                }
            }
            match self.at.get(&(*p, *o)) {
                Some(now) if now == v => {}
                other => problems.push(format!(
                    "partition {p} offset {o}: the consumer saw {v}, the final read has {other:?}"
                )),
            }
        }
        problems.truncate(20);
        problems
    }
}

/// Bytes of the segment files (`*.log`) in a partition directory; 0 if it is missing.
pub fn segment_bytes(partition_dir: &Path) -> u64 {
    std::fs::read_dir(partition_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
