//! Log compaction against real `keel` processes with a real client (confluent-kafka,
//! librdkafka): a compacted topic read from the beginning holds the latest value of
//! every key at the offset it was acknowledged at, keeps tombstones until
//! `delete.retention.ms` after compaction first kept them and then drops them; keyless
//! records are refused; and with three replicas a follower that was down while the
//! leader compacted catches up across the leader's gaps, and after the leader is
//! killed a consumer still reads the latest value of every key.
//!
//! Addresses: the single-node test binds 127.0.0.1 on a free port; the cluster uses
//! block 110 (127.0.110.x).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::clients::{python, python_script, run};
use keel_tests::cluster::{Cluster, Role};
use keel_tests::node::{keel_binary, KeelNode};
use keel_tests::records::segment_bytes;
use serde_json::Value;

/// Broker settings: the cleaner looks every 200 ms, and time-based rolls (the
/// housekeeping pass) run often enough for `segment.ms` below to matter.
const CLEANER_ARGS: &[&str] = &[
    "--set",
    "log.cleaner.backoff.ms=200",
    "--set",
    "log.retention.check.interval.ms=250",
];
/// `delete.retention.ms` of the test topics.
const DELETE_RETENTION: Duration = Duration::from_secs(10);
/// How long compaction may take to show after it becomes due.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys and rounds of values per key.
const KEYS: usize = 200;
const ROUNDS: usize = 15;
/// Keys (numbers) that get a tombstone after the last round.
const TOMBSTONED: &[usize] = &[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 199];

fn compacted_topic_configs() -> Vec<String> {
    [
        "cleanup.policy=compact".to_string(),
        "segment.bytes=16384".to_string(),
        "segment.ms=500".to_string(),
        "min.cleanable.dirty.ratio=0.01".to_string(),
        format!("delete.retention.ms={}", DELETE_RETENTION.as_millis()),
    ]
    .to_vec()
}

fn keel(args: &[&str]) -> String {
    let out = run(
        Command::new(keel_binary()).args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("keel {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One record as the consumer read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Read {
    offset: i64,
    key: String,
    value: Option<String>,
}

/// The last acknowledged record of every key.
type Latest = BTreeMap<String, (i64, Option<String>)>;

fn python_json(args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let out = run(
        Command::new(python()?)
            .arg(python_script("compacted_topic.py"))
            .args(args),
        timeout,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Produces `rounds` values of every key, then tombstones; returns the producer's
/// acknowledgement count and the last acknowledged record of each key.
fn produce(
    bootstrap: &str,
    topic: &str,
    rounds: usize,
    codec: &str,
    tombstones: &[usize],
) -> (u64, Latest) {
    let t: Vec<String> = tombstones.iter().map(usize::to_string).collect();
    let out = python_json(
        &[
            "produce",
            bootstrap,
            topic,
            &KEYS.to_string(),
            &rounds.to_string(),
            codec,
            &t.join(","),
        ],
        Duration::from_secs(180),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let latest = v["latest"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| {
            (
                k.clone(),
                (
                    r["o"].as_i64().unwrap(),
                    r["v"].as_str().map(str::to_string),
                ),
            )
        })
        .collect();
    (v["acked"].as_u64().unwrap(), latest)
}

/// Reads the topic's partition 0 from the beginning to its end.
fn dump(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Read>> {
    let out = python_json(&["dump", bootstrap, topic, "1"], Duration::from_secs(180))?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Read {
                offset: v["o"].as_i64().unwrap(),
                key: v["k"].as_str().unwrap().to_string(),
                value: v["v"].as_str().map(str::to_string),
            }
        })
        .collect())
}

/// Whether `reads` is exactly the latest acknowledged record of every key, at its
/// acknowledged offset (`with_tombstones`: tombstones included; else gone).
fn is_compacted(reads: &[Read], latest: &Latest, with_tombstones: bool) -> Result<(), String> {
    let want: Vec<Read> = latest
        .iter()
        .filter(|(_, (_, v))| with_tombstones || v.is_some())
        .map(|(k, (o, v))| Read {
            offset: *o,
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    let mut got = reads.to_vec();
    got.sort_by(|a, b| a.key.cmp(&b.key));
    if got == want {
        return Ok(());
    }
    let extra = got.iter().filter(|r| !want.contains(r)).count();
    let missing = want.iter().filter(|r| !got.contains(r)).count();
    Err(format!(
        "{} records read, {} wanted: {extra} unexpected, {missing} missing",
        got.len(),
        want.len()
    ))
}

/// Every record read is one the producer wrote at that offset: offsets increase, and
/// a key's value read at an offset is never newer than its latest.
fn assert_consistent(reads: &[Read], latest: &Latest) {
    for w in reads.windows(2) {
        assert!(
            w[0].offset < w[1].offset,
            "offsets {} then {}",
            w[0].offset,
            w[1].offset
        );
    }
    for r in reads {
        let (o, _) = latest
            .get(&r.key)
            .unwrap_or_else(|| panic!("a key nobody wrote: {r:?}"));
        assert!(r.offset <= *o, "{r:?} is past the key's last write at {o}");
        if r.offset == *o {
            assert_eq!(Some(&r.value), latest.get(&r.key).map(|l| &l.1), "{r:?}");
        } else {
            let v = r.value.as_deref().unwrap_or_default();
            assert!(v.starts_with(&format!("{}:", r.key)), "{r:?}");
        }
    }
}

/// Polls `check` every 300 ms until it passes or `timeout` runs out.
fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{what}: not within {timeout:?}; last: {last}")
}

/// One broker. The topic starts with `cleanup.policy=delete` (so the bytes written can
/// be measured) and is switched to `compact`: within seconds a read from the beginning
/// gives exactly the latest value of each of 200 keys (15 rounds of values, lz4) at
/// the offset its write was acknowledged at, with the 13 tombstones still there; a
/// record without a key is refused; `delete.retention.ms` later the tombstones are
/// gone too, and none went earlier. The compacted log survives a SIGKILL, and writing
/// again compacts again.
#[test]
fn a_compacted_topic_read_from_the_beginning_has_the_latest_value_of_every_key() {
    let mut node = KeelNode::start(CLEANER_ARGS).unwrap();
    let addr = node.addr.clone();
    let topic = "compacted";
    keel(&[
        "topics",
        "--bootstrap-server",
        &addr,
        "create",
        "--topic",
        topic,
        "--partitions",
        "1",
        "--config",
        "cleanup.policy=delete",
        "--config",
        "segment.bytes=16384",
        "--config",
        "segment.ms=500",
    ]);
    let (acked, latest) = produce(&addr, topic, ROUNDS, "lz4", TOMBSTONED);
    assert_eq!(acked as usize, KEYS * ROUNDS + TOMBSTONED.len());
    let partition_dir = node.data_dir.join(format!("{topic}-0"));
    let before = dump(&addr, topic).unwrap();
    assert_eq!(
        before.len() as u64,
        acked,
        "nothing is compacted under delete"
    );
    let bytes_before = segment_bytes(&partition_dir);

    let mut alter = vec![
        "topics",
        "--bootstrap-server",
        &addr,
        "alter",
        "--topic",
        topic,
    ];
    let configs = compacted_topic_configs();
    for c in &configs {
        alter.extend(["--config", c.as_str()]);
    }
    keel(&alter);
    let compaction_enabled = Instant::now();
    let compacted = wait_until(
        "the latest value of every key alone",
        COMPACTION_TIMEOUT,
        || {
            let reads = dump(&addr, topic).map_err(|e| e.to_string())?;
            is_compacted(&reads, &latest, true).map(|()| reads)
        },
    );
    let compacted_after = compaction_enabled.elapsed();
    assert!(
        compacted_after < DELETE_RETENTION,
        "compaction took {compacted_after:?}: too slow to see tombstones kept"
    );
    assert_consistent(&compacted, &latest);
    let tombstones = compacted.iter().filter(|r| r.value.is_none()).count();
    assert_eq!(tombstones, TOMBSTONED.len());
    let bytes_compacted = segment_bytes(&partition_dir);
    eprintln!(
        "{} records of {KEYS} keys, {bytes_before} bytes -> {} records ({tombstones} tombstones), \
         {bytes_compacted} bytes after {compacted_after:?}",
        before.len(),
        compacted.len()
    );
    assert!(
        bytes_compacted * 4 < bytes_before,
        "{bytes_compacted} of {bytes_before} bytes left"
    );

    // A compacted topic refuses records without a key.
    let out = python_json(&["keyless", &addr, topic], Duration::from_secs(60)).unwrap();
    assert!(out.contains("INVALID_RECORD"), "{out}");

    // Tombstones stay until delete.retention.ms after compaction first kept them.
    let gone = wait_until(
        "tombstones removed after delete.retention.ms",
        DELETE_RETENTION + COMPACTION_TIMEOUT,
        || {
            let reads = dump(&addr, topic).map_err(|e| e.to_string())?;
            let left = reads.iter().filter(|r| r.value.is_none()).count();
            let elapsed = compaction_enabled.elapsed();
            assert!(
                left == TOMBSTONED.len() || elapsed >= DELETE_RETENTION,
                "{} tombstones went after {elapsed:?}, before delete.retention.ms",
                TOMBSTONED.len() - left
            );
            if left > 0 {
                return Err(format!("{left} tombstones left"));
            }
            Ok(reads)
        },
    );
    let gone_after = compaction_enabled.elapsed();
    assert!(
        gone_after >= DELETE_RETENTION,
        "tombstones went after {gone_after:?}, before delete.retention.ms"
    );
    is_compacted(&gone, &latest, false).unwrap();
    eprintln!(
        "tombstones gone after {gone_after:?}: {} records, {} bytes",
        gone.len(),
        segment_bytes(&partition_dir)
    );

    // The compacted log, gaps and all, survives a SIGKILL.
    node.kill9();
    node.restart().unwrap();
    let after_restart = dump(&addr, topic).unwrap();
    assert_eq!(after_restart, gone);

    // Writing again: compaction picks up where it left off.
    let (_, newer) = produce(&addr, topic, 2, "zstd", &[]);
    let mut latest_now = latest.clone();
    latest_now.extend(newer);
    let again = wait_until(
        "compacted again after new writes",
        COMPACTION_TIMEOUT,
        || {
            let reads = dump(&addr, topic).map_err(|e| e.to_string())?;
            is_compacted(&reads, &latest_now, false).map(|()| reads)
        },
    );
    assert_consistent(&again, &latest_now);
}

/// Broker settings of the cluster: fast fencing and ISR changes, RF=3 durability.
const CLUSTER_ARGS: &[&str] = &[
    "--set",
    "broker.session.timeout.ms=3000",
    "--set",
    "broker.heartbeat.interval.ms=500",
    "--set",
    "replica.lag.time.max.ms=4000",
    "--set",
    "min.insync.replicas=2",
    "--set",
    "log.cleaner.backoff.ms=200",
    "--set",
    "log.retention.check.interval.ms=250",
];

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    leader: i64,
    replicas: Vec<u64>,
    isr: Vec<u64>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split('\t')
        .find_map(|f| f.trim().strip_prefix(name)?.strip_prefix(": "))
}

fn ids(list: &str) -> Vec<u64> {
    list.split(',').filter_map(|s| s.parse().ok()).collect()
}

fn state(c: &Cluster, via: u64, topic: &str) -> Result<State, String> {
    let text = c.describe(via, topic).map_err(|e| e.to_string())?;
    let line = text
        .lines()
        .find(|l| field(l, "Partition") == Some("0"))
        .ok_or("no partition 0")?;
    let get = |name| field(line, name).ok_or(format!("no {name} in {line}"));
    Ok(State {
        leader: get("Leader")?.parse().map_err(|_| "leader")?,
        replicas: ids(get("Replicas")?),
        isr: ids(get("Isr")?),
    })
}

/// Three brokers, RF=3, min.insync.replicas=2. The preferred replica is SIGKILLed; the
/// new leader takes 200 keys × 20 rounds from an idempotent acks=all producer and
/// compacts them. The killed replica comes back and catches up by fetching across the
/// compacted leader's gaps; the compacting leader is then SIGKILLed and leadership goes
/// back to the replica that caught up. A consumer reading from the beginning sees the
/// latest value of every key at its acknowledged offset, and every replica's log ends
/// up compacted on its own.
#[test]
fn a_follower_catches_up_across_a_compacted_leaders_gaps_and_serves_the_latest_values() {
    let topic = "compacted-rf3";
    let mut c = Cluster::start(110, &[Role::Combined; 3], CLUSTER_ARGS).unwrap();
    let mut create = vec![
        "topics".to_string(),
        "--bootstrap-server".to_string(),
        c.client(1),
        "create".to_string(),
        "--topic".to_string(),
        topic.to_string(),
        "--partitions".to_string(),
        "1".to_string(),
        "--replication-factor".to_string(),
        "3".to_string(),
    ];
    for cfg in compacted_topic_configs() {
        create.extend(["--config".to_string(), cfg]);
    }
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    c.cli(&create).unwrap();
    let first = wait_until("full ISR", COMPACTION_TIMEOUT, || {
        state(&c, 1, topic).and_then(|s| {
            (s.leader > 0 && s.isr.len() == 3)
                .then_some(s.clone())
                .ok_or(format!("{s:?}"))
        })
    });
    let preferred = first.replicas[0];
    let others: Vec<u64> = first.replicas[1..].to_vec();
    c.kill9(preferred);
    let via = others[0];
    let leader = wait_until(
        "a leader other than the killed replica",
        COMPACTION_TIMEOUT,
        || {
            state(&c, via, topic).and_then(|s| {
                (s.leader > 0 && s.leader as u64 != preferred)
                    .then_some(s.leader as u64)
                    .ok_or(format!("{s:?}"))
            })
        },
    );
    let alive: String = others
        .iter()
        .map(|id| c.client(*id))
        .collect::<Vec<_>>()
        .join(",");
    let (acked, latest) = produce(&alive, topic, 20, "zstd", &[]);
    let written = acked as usize;
    // The leader compacts what the ISR holds.
    wait_until("the leader compacted", COMPACTION_TIMEOUT, || {
        let reads = dump(&alive, topic).map_err(|e| e.to_string())?;
        is_compacted(&reads, &latest, true)
    });
    let leader_dir = c.nodes[&leader].data_dir.join(format!("{topic}-0"));
    eprintln!(
        "leader {leader}: {written} records compacted to {} keys, {} bytes",
        latest.len(),
        segment_bytes(&leader_dir)
    );

    // The killed replica returns and catches up from the compacted leader.
    c.restart(preferred).unwrap();
    c.node(preferred).wait_ready().unwrap();
    wait_until(
        "the returning replica back in the ISR",
        COMPACTION_TIMEOUT,
        || {
            state(&c, via, topic)
                .and_then(|s| (s.isr.len() == 3).then_some(()).ok_or(format!("{s:?}")))
        },
    );
    let caught_up_dir = c.nodes[&preferred].data_dir.join(format!("{topic}-0"));
    let caught_up_bytes = segment_bytes(&caught_up_dir);
    eprintln!("replica {preferred} caught up with {caught_up_bytes} bytes");

    // The compacting leader dies; leadership goes back to the replica that caught up.
    c.kill9(leader);
    let survivor = *others.iter().find(|id| **id != leader).unwrap();
    wait_until("a new leader", COMPACTION_TIMEOUT, || {
        state(&c, survivor, topic).and_then(|s| {
            (s.leader > 0 && s.leader as u64 != leader)
                .then_some(())
                .ok_or(format!("{s:?}"))
        })
    });
    wait_until("the preferred replica leads", COMPACTION_TIMEOUT, || {
        let _ = c.cli(&[
            "partitions",
            "--bootstrap-server",
            &c.client(survivor),
            "elect-leaders",
            "--topic",
            topic,
        ]);
        state(&c, survivor, topic).and_then(|s| {
            (s.leader as u64 == preferred)
                .then_some(())
                .ok_or(format!("{s:?}"))
        })
    });
    let bootstrap = format!("{},{}", c.client(preferred), c.client(survivor));
    let reads = dump(&bootstrap, topic).unwrap();
    assert_consistent(&reads, &latest);
    // What the returning replica fetched had gaps: its first record is far past offset 0.
    assert!(
        reads.first().is_some_and(|r| r.offset > 0) && reads.len() < written / 2,
        "{} records, first at {:?}",
        reads.len(),
        reads.first()
    );
    for (k, (o, v)) in &latest {
        assert!(
            reads
                .iter()
                .any(|r| &r.key == k && r.offset == *o && &r.value == v),
            "the latest value of {k} (offset {o}) is missing after the leader kill\n{}",
            c.logs()
        );
    }
    eprintln!(
        "after the leader kill: {} records read from replica {preferred}",
        reads.len()
    );
    // Each surviving replica compacts its own log.
    for id in [preferred, survivor] {
        let dir = c.nodes[&id].data_dir.join(format!("{topic}-0"));
        wait_until(
            &format!("replica {id} compacted"),
            COMPACTION_TIMEOUT,
            || {
                let bytes = segment_bytes(&dir);
                let leader_bytes = segment_bytes(&leader_dir);
                (bytes <= leader_bytes * 2 + 16_384)
                    .then_some(())
                    .ok_or(format!(
                        "{bytes} bytes on replica {id}, {leader_bytes} on the old leader"
                    ))
            },
        );
    }
    let reads = dump(&bootstrap, topic).unwrap();
    is_compacted(&reads, &latest, true).unwrap();
}
