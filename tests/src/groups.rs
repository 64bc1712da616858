//! Consumer-group members as real client processes (`tests/python/group_member.py`
//! with confluent-kafka or kafka-python, `tests/node/group_member.js` with kafkajs),
//! and the checks over what they report: who owned which partition when, what each
//! consumed and committed.
//!
//! The checks are the acceptance rules for groups: at a steady state every partition
//! is assigned to exactly one live member; every acknowledged record is consumed by
//! some member (nothing skipped); a record is consumed twice only if no commit past it
//! had been acknowledged before the second read (duplicates only after the last
//! commit); and within one member a partition's offsets only go forward between
//! assignments.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use kafka_protocol::messages::{FindCoordinatorRequest, GroupId, OffsetFetchRequest};
use kafka_protocol::protocol::StrBytes;
use keel::cli::client::KafkaClient;

use crate::clients::{block_on, node, node_script, python, python_script};

/// Which client library a member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupClient {
    /// confluent-kafka (librdkafka).
    Confluent,
    /// kafka-python.
    KafkaPython,
    /// kafkajs.
    Kafkajs,
}

/// What a member reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its whole assignment after a change.
    Assigned(Vec<i32>),
    /// Partitions taken from it.
    Revoked(Vec<i32>),
    /// A record it processed.
    Record {
        partition: i32,
        offset: i64,
        value: String,
    },
    /// Offsets (next to read) the broker acknowledged.
    Committed(BTreeMap<i32, i64>),
    /// It closed cleanly.
    Closed,
}

fn parse_event(line: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let parts = |v: &serde_json::Value| -> Vec<i32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_i64().map(|x| x as i32))
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(match v.get("e")?.as_str()? {
        "assigned" => Event::Assigned(parts(v.get("parts")?)),
        "revoked" => Event::Revoked(parts(v.get("parts")?)),
        "rec" => Event::Record {
            partition: v.get("p")?.as_i64()? as i32,
            offset: v.get("o")?.as_i64()?,
            value: v.get("v")?.as_str()?.to_string(),
        },
        "committed" => Event::Committed(
            v.get("offsets")?
                .as_object()?
                .iter()
                .filter_map(|(k, o)| Some((k.parse().ok()?, o.as_i64()?)))
                .collect(),
        ),
        "closed" => Event::Closed,
        _ => return None,
    })
}

/// Events with the time the harness read them.
pub type Timeline = Arc<Mutex<Vec<(Instant, Event)>>>;

/// One group member process.
pub struct Member {
    /// A name for messages.
    pub name: String,
    child: Option<Child>,
    events: Timeline,
    stderr: Arc<Mutex<String>>,
}

impl Member {
    /// Starts a member of `group` consuming `topic` through `bootstrap`; `opts` are
    /// the script's `key=value` options (strategy, instance, session_ms).
    ///
    /// # Errors
    /// The interpreter is missing or the process does not start.
    pub fn spawn(
        name: &str,
        client: GroupClient,
        bootstrap: &str,
        group: &str,
        topic: &str,
        opts: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = match client {
            GroupClient::Confluent | GroupClient::KafkaPython => {
                let mut c = Command::new(python()?);
                c.arg(python_script("group_member.py"))
                    .arg(if client == GroupClient::Confluent {
                        "confluent"
                    } else {
                        "kafka-python"
                    });
                c
            }
            GroupClient::Kafkajs => {
                let mut c = Command::new(node()?);
                c.arg(node_script("group_member.js"));
                c
            }
        };
        cmd.args([bootstrap, group, topic]).args(opts);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting member {name}"))?;
        let events: Timeline = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        if let Some(out) = child.stdout.take() {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(e) = parse_event(&line) {
                        events.lock().unwrap().push((Instant::now(), e));
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().unwrap();
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        Ok(Member {
            name: name.to_string(),
            child: Some(child),
            events,
            stderr,
        })
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL (a crash: no leave, no commit).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the member to close cleanly (SIGTERM) and waits for it to exit.
    pub fn close(&mut self, timeout: Duration) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill9();
    }

    /// Everything reported so far.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// What it wrote to stderr (its client's complaints), for failure messages.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its current assignment, as the last assignment events say.
    pub fn assignment(&self) -> BTreeSet<i32> {
        current_assignment(&self.events())
    }

    /// How many assignment changes (assigned or revoked events) it reported.
    pub fn rebalances(&self) -> usize {
        self.events()
            .iter()
            .filter(|(_, e)| matches!(e, Event::Assigned(_) | Event::Revoked(_)))
            .count()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The assignment after replaying a member's events.
pub fn current_assignment(events: &[(Instant, Event)]) -> BTreeSet<i32> {
    let mut owned = BTreeSet::new();
    for (_, e) in events {
        match e {
            Event::Assigned(p) => owned = p.iter().copied().collect(),
            Event::Revoked(p) => {
                for x in p {
                    owned.remove(x);
                }
            }
            Event::Closed => owned.clear(),
            _ => {}
        }
    }
    owned
}

/// Waits until the live `members` hold `partitions` partitions between them, each
/// exactly once, and the assignment has not changed for `quiet`.
///
/// # Errors
/// No such steady state within `timeout` (the message shows the assignments).
pub fn wait_assigned_once(
    members: &mut [&mut Member],
    partitions: i32,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, BTreeSet<i32>>> {
    let deadline = Instant::now() + timeout;
    let mut stable_since: Option<(Instant, BTreeMap<String, BTreeSet<i32>>)> = None;
    loop {
        let snapshot: BTreeMap<String, BTreeSet<i32>> = members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| (m.name.clone(), m.assignment())))
            .collect();
        let mut seen = BTreeSet::new();
        let disjoint = snapshot.values().flatten().all(|p| seen.insert(*p));
        let complete = disjoint && seen.len() == partitions as usize;
        match &stable_since {
            Some((t, s)) if complete && *s == snapshot => {
                if t.elapsed() >= quiet {
                    return Ok(snapshot);
                }
            }
            _ => stable_since = complete.then(|| (Instant::now(), snapshot.clone())),
        }
        if Instant::now() > deadline {
            let stderr: Vec<String> = members
                .iter()
                .map(|m| format!("{}: {}", m.name, m.stderr()))
                .collect();
            anyhow::bail!(
                "no steady assignment of {partitions} partitions within {timeout:?}: {snapshot:?}\n{}",
                stderr.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What every member consumed, by (partition, offset).
pub fn consumed(all: &[&Member]) -> BTreeMap<(i32, i64), Vec<String>> {
    let mut out: BTreeMap<(i32, i64), Vec<String>> = BTreeMap::new();
    for m in all {
        for (_, e) in m.events() {
            if let Event::Record {
                partition,
                offset,
                value,
            } = e
            {
                out.entry((partition, offset)).or_default().push(value);
            }
        }
    }
    out
}

/// Checks the group rules over every member's report against the acknowledged
/// records `acked` ((partition, offset) → value). Returns one message per violation.
pub fn check_group_consumption(
    all: &[&Member],
    acked: &BTreeMap<(i32, i64), String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Every acknowledged record consumed, with its value.
    let seen = consumed(all);
    for (key, value) in acked {
        match seen.get(key) {
            None => problems.push(format!(
                "acknowledged record {key:?} = {value} never consumed (skipped)"
            )),
            Some(vs) if vs.iter().any(|v| v != value) => problems.push(format!(
                "record {key:?}: acknowledged {value}, consumed {vs:?}"
            )),
            _ => {}
        }
    }
    // Duplicates only for records no acknowledged commit covered yet.
    let mut commits: Vec<(Instant, i32, i64)> = Vec::new();
    let mut reads: Vec<(Instant, i32, i64, String)> = Vec::new();
    for m in all {
        for (t, e) in m.events() {
            match e {
                Event::Committed(offsets) => {
                    commits.extend(offsets.into_iter().map(|(p, o)| (t, p, o)));
                }
                Event::Record {
                    partition, offset, ..
                } => reads.push((t, partition, offset, m.name.clone())),
                _ => {}
            }
        }
    }
    reads.sort();
    let mut first_read: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    for (t, p, o, who) in &reads {
        if first_read.insert((*p, *o), who).is_none() {
            continue;
        }
        let covering = commits
            .iter()
            .filter(|(ct, cp, co)| ct < t && cp == p && co > o)
            .map(|(_, _, co)| *co)
            .max();
        if let Some(c) = covering {
            problems.push(format!(
                "record ({p}, {o}) consumed again by {who} although offset {c} was already committed"
            ));
        }
    }
    // Within a member, offsets of a partition go forward between assignment changes.
    for m in all {
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for (_, e) in m.events() {
            match e {
                Event::Assigned(_) | Event::Revoked(_) | Event::Closed => last.clear(),
                Event::Record {
                    partition, offset, ..
                } => {
                    if let Some(prev) = last.insert(partition, offset) {
                        if offset <= prev {
                            problems.push(format!(
                                "{}: partition {partition} went from offset {prev} to {offset} without a rebalance",
                                m.name
                            ));
                        }
                    }
                }
                Event::Committed(_) => {}
            }
        }
    }
    problems.truncate(50);
    problems
}

/// Waits until every acknowledged record has been consumed by some member.
///
/// # Errors
/// Records still missing after `timeout` (a few are named).
pub fn wait_all_consumed(
    all: &[&Member],
    acked: &BTreeMap<(i32, i64), String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = consumed(all);
        let missing: Vec<&(i32, i64)> = acked.keys().filter(|k| !seen.contains_key(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let stderr: Vec<String> = all
                .iter()
                .map(|m| format!("{}: {}", m.name, m.stderr()))
                .collect();
            anyhow::bail!(
                "{} acknowledged records not consumed within {timeout:?}, e.g. {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                stderr.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Connects to the first address of a comma-separated list that answers.
async fn connect_any(bootstrap: &str) -> anyhow::Result<KafkaClient> {
    let mut last = None;
    for addr in bootstrap.split(',') {
        match KafkaClient::connect(addr, "keel-tests").await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no bootstrap address")))
}

/// Waits (up to `timeout`) until FindCoordinator for `group` names a coordinator.
/// Any answer but COORDINATOR_NOT_AVAILABLE, while the broker creates
/// `__consumer_offsets`, fails the test.
///
/// # Panics
/// No coordinator within `timeout`, a failed call, or another error.
pub async fn wait_coordinator(c: &mut KafkaClient, group: &str, timeout: Duration) {
    const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    let deadline = Instant::now() + timeout;
    loop {
        let req =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string()));
        let resp = c.call(&req, 3).await.expect("FindCoordinator");
        if resp.error_code == 0 {
            return;
        }
        assert_eq!(
            resp.error_code, COORDINATOR_NOT_AVAILABLE,
            "FindCoordinator {group}"
        );
        assert!(Instant::now() < deadline, "no coordinator for {group}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The broker id FindCoordinator names for `group`.
///
/// # Errors
/// No broker answers, or the answer is an error (the coordinator is not ready).
pub fn coordinator_of(bootstrap: &str, group: &str) -> anyhow::Result<i32> {
    block_on(async {
        let mut c = connect_any(bootstrap).await?;
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let resp = c.call(&req, 3).await?;
        if resp.error_code != 0 {
            anyhow::bail!("FindCoordinator: error {}", resp.error_code);
        }
        Ok(resp.node_id.0)
    })
}

/// The committed offsets of `group`, asked of its coordinator (retrying while it moves).
///
/// # Errors
/// No coordinator answers within a minute.
pub fn fetch_committed(
    bootstrap: &str,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = (|| -> anyhow::Result<BTreeMap<(String, i32), i64>> {
            let id = coordinator_of(bootstrap, group)?;
            block_on(async {
                let mut any = connect_any(bootstrap).await?;
                let meta = any
                    .call(
                        &kafka_protocol::messages::MetadataRequest::default()
                            .with_topics(Some(vec![])),
                        12,
                    )
                    .await?;
                let b = meta
                    .brokers
                    .iter()
                    .find(|b| b.node_id.0 == id)
                    .ok_or_else(|| anyhow::anyhow!("coordinator {id} not in metadata"))?;
                let mut coord =
                    KafkaClient::connect(&format!("{}:{}", b.host.as_str(), b.port), "keel-tests")
                        .await?;
                let req = OffsetFetchRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
                    .with_topics(None);
                let resp = coord.call(&req, 7).await?;
                if resp.error_code != 0 {
                    anyhow::bail!("OffsetFetch: error {}", resp.error_code);
                }
                let mut out = BTreeMap::new();
                for t in resp.topics {
                    for p in t.partitions {
                        if p.error_code == 0 && p.committed_offset >= 0 {
                            out.insert(
                                (t.name.0.to_string(), p.partition_index),
                                p.committed_offset,
                            );
                        }
                    }
                }
                Ok(out)
            })
        })();
        match attempt {
            Ok(o) => return Ok(o),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_as_the_scripts_print_them() {
        assert_eq!(
            parse_event(r#"{"e": "assigned", "parts": [3, 1]}"#),
            Some(Event::Assigned(vec![3, 1]))
        );
        assert_eq!(
            parse_event(r#"{"e": "rec", "p": 2, "o": 7, "v": "v9"}"#),
            Some(Event::Record {
                partition: 2,
                offset: 7,
                value: "v9".into()
            })
        );
        assert_eq!(
            parse_event(r#"{"e": "committed", "offsets": {"2": 8}}"#),
            Some(Event::Committed(BTreeMap::from([(2, 8)])))
        );
        assert_eq!(parse_event("garbage"), None);
    }

    #[test]
    fn replayed_assignments_follow_cooperative_revocations() {
        let t = Instant::now();
        let events = vec![
            (t, Event::Assigned(vec![0, 1, 2])),
            (t, Event::Revoked(vec![1])),
        ];
        assert_eq!(current_assignment(&events), BTreeSet::from([0, 2]));
    }
}
