//! Partition replication across real `keel` processes with real librdkafka clients
//! (confluent-kafka): leader failover under an idempotent acks=all producer, a leader
//! cut off by iptables, min.insync.replicas with replicas down, a whole-cluster
//! SIGKILL, and a follower whose segment tail was damaged on disk. Each test uses its
//! own 127.0.<block>.x addresses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel::cli::client::KafkaClient;
use keel_storage::testing::BatchBuilder;
use keel_tests::background::Background;
use keel_tests::clients::{block_on, python, python_script};
use keel_tests::cluster::{Cluster, Partition, Role};
use keel_tests::records::{record_lines, TopicDump};

/// Broker settings of every cluster here: fast fencing and ISR shrinking so faults
/// resolve within seconds, and Kafka's usual durability settings for RF=3.
const SERVER_ARGS: &[&str] = &[
    "--set",
    "broker.session.timeout.ms=3000",
    "--set",
    "broker.heartbeat.interval.ms=500",
    "--set",
    "replica.lag.time.max.ms=4000",
    "--set",
    "min.insync.replicas=2",
    // Recovery points stay at 0 for the whole test: every restart re-validates the
    // whole log (the damaged-tail test relies on it).
    "--set",
    "log.flush.offset.checkpoint.interval.ms=3600000",
];
/// How long a leader change, an ISR change or a catch-up may take here.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn combined(n: usize) -> Vec<Role> {
    vec![Role::Combined; n]
}

/// A partition's committed state as `keel topics describe` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartitionState {
    leader: i64,
    epoch: i32,
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

/// The state of `topic`'s partition `p` as node `via` sees it.
fn partition_state(c: &Cluster, via: u64, topic: &str, p: i32) -> Option<PartitionState> {
    let text = c.describe(via, topic).ok()?;
    let line = text
        .lines()
        .find(|l| field(l, "Partition") == Some(&p.to_string()))?;
    Some(PartitionState {
        leader: field(line, "Leader")?.parse().ok()?,
        epoch: field(line, "LeaderEpoch")?.parse().ok()?,
        replicas: ids(field(line, "Replicas")?),
        isr: ids(field(line, "Isr")?),
    })
}

/// Polls `check` until it returns `Some`, failing with `what` and the logs after
/// `SETTLE_TIMEOUT`.
fn settle<T>(c: &Cluster, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_TIMEOUT:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every partition of `topic` has its full replica set in sync, as `via`
/// sees it.
fn wait_full_isr(c: &Cluster, via: u64, topic: &str, partitions: i32) {
    settle(
        c,
        &format!("{topic}: every replica back in the ISR"),
        || {
            (0..partitions)
                .all(|p| {
                    partition_state(c, via, topic, p)
                        .is_some_and(|s| s.leader >= 0 && s.isr.len() == s.replicas.len())
                })
                .then_some(())
        },
    );
}

fn bootstrap(c: &Cluster) -> String {
    c.broker_ids()
        .iter()
        .map(|id| c.client(*id))
        .collect::<Vec<_>>()
        .join(",")
}

fn assert_no_problems(what: &str, problems: Vec<String>, c: &Cluster) {
    assert!(
        problems.is_empty(),
        "{what}:\n{}\n{}",
        problems.join("\n"),
        c.logs()
    );
}

/// 3 brokers, RF=3, min.insync.replicas=2, an idempotent acks=all producer writing
/// unique values and a consumer tailing every partition: the leader of partition 0 is
/// SIGKILLed and restarted 10 times. Every acknowledged value ends up exactly once at
/// its acknowledged offset, and the consumer never saw an offset go backwards or a
/// value the final read does not have there.
#[test]
fn leader_kill_9_rounds_lose_and_duplicate_nothing() {
    const PARTITIONS: i32 = 3;
    const ROUNDS: usize = 10;
    const ACKS_PER_ROUND: usize = 1_500;
    let topic = "failover";
    let mut c = Cluster::start(41, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, PARTITIONS, 3).unwrap();
    wait_full_isr(&c, 1, topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let servers = bootstrap(&c);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, "idempotent"],
    );
    let mut consumer = Background::start(
        work.path(),
        "consumer",
        "tail_consumer.py",
        &[&servers, topic, &parts],
    );
    let mut via = 1;
    for round in 0..ROUNDS {
        let acked = record_lines(&producer.out).len();
        producer.wait_records(acked + ACKS_PER_ROUND);
        let before = settle(&c, "partition 0 has a leader", || {
            partition_state(&c, via, topic, 0).filter(|s| s.leader > 0)
        });
        let victim = before.leader as u64;
        c.kill9(victim);
        via = c.broker_ids().into_iter().find(|id| *id != victim).unwrap();
        let after = settle(&c, "a new leader for partition 0", || {
            partition_state(&c, via, topic, 0).filter(|s| s.leader > 0 && s.leader as u64 != victim)
        });
        assert!(
            after.epoch > before.epoch,
            "round {round}: {before:?} -> {after:?}"
        );
        c.restart(victim).unwrap();
        c.node(victim).wait_ready().unwrap();
        wait_full_isr(&c, via, topic, PARTITIONS);
        eprintln!(
            "round {round}: leader {victim} killed; epoch {} -> {} on node {}",
            before.epoch, after.epoch, after.leader
        );
    }
    let acked = record_lines(&producer.out).len();
    producer.wait_records(acked + ACKS_PER_ROUND);
    producer.stop();
    let acked = record_lines(&producer.out);
    let dump = TopicDump::read(&servers, topic, PARTITIONS as usize).unwrap();
    consumer.wait_records(dump.at.len().min(acked.len()));
    consumer.stop();
    let seen = record_lines(&consumer.out);
    eprintln!(
        "{} acknowledged, {} stored, {} seen by the tailing consumer",
        acked.len(),
        dump.at.len(),
        seen.len()
    );
    assert!(
        !producer.stderr().contains("failed "),
        "the idempotent producer failed deliveries:\n{}",
        producer.stderr()
    );
    assert_no_problems("final contents", dump.check_acked_exactly_once(&acked), &c);
    assert_no_problems("tailing consumer", dump.check_consumer_history(&seen), &c);
}

/// Produce one batch of `n` records to `topic`-0 on `addr` with `acks`; returns the
/// error code (0 = acknowledged).
async fn produce_raw(addr: &str, topic: &str, acks: i16, n: usize, timeout_ms: i32) -> i16 {
    let Ok(mut client) = KafkaClient::connect(addr, "replication-test").await else {
        return -1;
    };
    let batch = BatchBuilder::new(n, 20).fill(b'x').build();
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])]);
    match client.call(&req, 9).await {
        Ok(resp) => resp.responses[0].partition_responses[0].error_code,
        Err(_) => -1,
    }
}

/// Produces `values` with kcat-like acks=all through confluent-kafka; every one must
/// be acknowledged.
fn produce_values(c: &Cluster, dir: &Path, bootstrap: &str, topic: &str, values: &[String]) {
    let input = dir.join("values.txt");
    let mut f = std::fs::File::create(&input).unwrap();
    for v in values {
        writeln!(f, "{v}").unwrap();
    }
    drop(f);
    let out = Command::new(python().unwrap())
        .arg(python_script("produce_lines.py"))
        .args([bootstrap, topic])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "producing {} values failed:\n{}\n{}",
        values.len(),
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
}

fn segment_bytes(c: &Cluster, node: u64, topic: &str, p: i32) -> Vec<u8> {
    let dir = c.nodes[&node].data_dir.join(format!("{topic}-{p}"));
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Waits until every replica of `topic`-0 holds byte-identical segments.
fn wait_identical_replicas(c: &Cluster, topic: &str, replicas: &[u64]) {
    settle(c, "replicas byte-identical", || {
        let first = segment_bytes(c, replicas[0], topic, 0);
        replicas[1..]
            .iter()
            .all(|r| segment_bytes(c, *r, topic, 0) == first)
            .then_some(())
    });
}

/// A leader cut off from the other replicas and the controller by iptables cannot
/// acknowledge acks=all writes; the majority elects a new leader that takes writes;
/// after healing, the old leader truncates what it appended alone, catches up and
/// rejoins the ISR, its log byte-identical to the others. A write it appended and was
/// still waiting to acknowledge when it learned of the new leader is answered
/// REQUEST_TIMED_OUT (outcome unknown), not NOT_LEADER_OR_FOLLOWER, which librdkafka
/// takes to mean "not written".
#[test]
fn isolated_leader_cannot_acknowledge_and_truncates_after_healing() {
    /// Longer than the election and the heal below take: the write is answered because
    /// leadership moved, not because its time ran out.
    const WAITING_PRODUCE_TIMEOUT_MS: i32 = 120_000;
    let topic = "isolated";
    let c = Cluster::start(42, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let work = tempfile::tempdir().unwrap();
    let servers = bootstrap(&c);
    let before: Vec<String> = (0..500).map(|i| format!("before-{i}")).collect();
    produce_values(&c, work.path(), &servers, topic, &before);

    let old = partition_state(&c, 1, topic, 0).unwrap();
    let leader = old.leader as u64;
    let others: Vec<u64> = c
        .broker_ids()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    let other_ips: Vec<String> = others.iter().map(|i| c.ip(*i)).collect();
    let mut cut = Partition::default();
    cut.isolate(&c.ip(leader), &other_ips).unwrap();

    // The client still reaches the old leader, which still believes it leads.
    let waiting = {
        let addr = c.client(leader);
        std::thread::spawn(move || {
            let started = Instant::now();
            let code = block_on(produce_raw(
                &addr,
                topic,
                -1,
                10,
                WAITING_PRODUCE_TIMEOUT_MS,
            ));
            (code, started.elapsed())
        })
    };
    let mut refused = Vec::new();
    for _ in 0..3 {
        let code = block_on(produce_raw(&c.client(leader), topic, -1, 10, 3_000));
        refused.push(code);
    }
    let allowed = [
        ResponseError::RequestTimedOut.code(),
        ResponseError::NotEnoughReplicas.code(),
        ResponseError::NotEnoughReplicasAfterAppend.code(),
        ResponseError::NotLeaderOrFollower.code(),
        -1,
    ];
    assert!(
        refused.iter().all(|code| allowed.contains(code)),
        "the isolated leader answered acks=all writes with {refused:?}\n{}",
        c.logs()
    );

    let new = settle(&c, "the majority elects a new leader", || {
        partition_state(&c, others[0], topic, 0)
            .filter(|s| s.leader > 0 && s.leader as u64 != leader)
    });
    assert!(new.epoch > old.epoch);
    let majority: String = others
        .iter()
        .map(|i| c.client(*i))
        .collect::<Vec<_>>()
        .join(",");
    let after: Vec<String> = (0..500).map(|i| format!("after-{i}")).collect();
    produce_values(&c, work.path(), &majority, topic, &after);

    cut.heal();
    let (code, waited) = waiting.join().unwrap();
    assert_eq!(
        (
            code,
            waited < Duration::from_millis(WAITING_PRODUCE_TIMEOUT_MS as u64 / 2)
        ),
        (ResponseError::RequestTimedOut.code(), true),
        "answer to the write the old leader appended, after {waited:?}\n{}",
        c.logs()
    );
    wait_full_isr(&c, others[0], topic, 1);
    let dump = TopicDump::read(&servers, topic, 1).unwrap();
    let mut values: Vec<&str> = dump.at.values().map(String::as_str).collect();
    let expected: Vec<&str> = before.iter().chain(&after).map(String::as_str).collect();
    values.sort_unstable();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort_unstable();
    assert_eq!(
        values, sorted_expected,
        "the log holds exactly the acknowledged values (nothing the isolated leader appended alone)"
    );
    wait_identical_replicas(&c, topic, &c.broker_ids());
    assert!(
        std::fs::read_to_string(c.nodes[&leader].data_dir.parent().unwrap().join("keel.log"))
            .unwrap_or_default()
            .contains("truncating divergent tail"),
        "the old leader did not truncate:\n{}",
        c.logs()
    );
}

/// 5 brokers (the metadata quorum keeps a majority), a topic with RF=3 and
/// min.insync.replicas=2: with both followers of the partition down, acks=all gets
/// NOT_ENOUGH_REPLICAS and nothing is acknowledged, acks=1 still works; once the
/// followers return, acks=all works again and every record is readable.
#[test]
fn acks_all_is_refused_below_min_insync_replicas_and_acks_1_still_works() {
    let topic = "min-isr";
    let mut c = Cluster::start(43, &combined(5), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let state = partition_state(&c, 1, topic, 0).unwrap();
    let leader = state.leader as u64;
    let followers: Vec<u64> = state
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != leader)
        .collect();
    assert_eq!(
        block_on(produce_raw(&c.client(leader), topic, -1, 5, 10_000)),
        0
    );
    for f in &followers {
        c.kill9(*f);
    }
    settle(&c, "the ISR shrinks to the leader", || {
        partition_state(&c, leader, topic, 0).filter(|s| s.isr == vec![leader])
    });
    for _ in 0..3 {
        assert_eq!(
            block_on(produce_raw(&c.client(leader), topic, -1, 5, 5_000)),
            ResponseError::NotEnoughReplicas.code(),
            "acks=all below min.insync.replicas"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            block_on(produce_raw(&c.client(leader), topic, 1, 5, 5_000)),
            0,
            "acks=1 below min.insync.replicas"
        );
    }
    for f in &followers {
        c.restart(*f).unwrap();
    }
    wait_full_isr(&c, leader, topic, 1);
    assert_eq!(
        block_on(produce_raw(&c.client(leader), topic, -1, 5, 10_000)),
        0,
        "acks=all with the ISR restored"
    );
    let dump = TopicDump::read(&c.client(leader), topic, 1).unwrap();
    assert_eq!(
        dump.at.len(),
        5 + 3 * 5 + 5,
        "the acks=all batch before, the acks=1 batches and the acks=all batch after; \
         no refused acks=all batch"
    );
}

/// Every node is SIGKILLed at once while an acks=all producer runs; after a restart
/// every acknowledged record is at its acknowledged offset.
#[test]
fn whole_cluster_kill_9_under_acks_all_loses_nothing_acknowledged() {
    const PARTITIONS: i32 = 3;
    let topic = "blackout";
    let mut c = Cluster::start(44, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, PARTITIONS, 3).unwrap();
    wait_full_isr(&c, 1, topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let servers = bootstrap(&c);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, "idempotent"],
    );
    for round in 0..2 {
        let acked = record_lines(&producer.out).len();
        producer.wait_records(acked + 3_000);
        for id in c.broker_ids() {
            c.kill9(id);
        }
        eprintln!("round {round}: every node killed");
        std::thread::sleep(Duration::from_millis(500));
        for id in c.broker_ids() {
            c.restart(id).unwrap();
        }
        c.wait_brokers_ready().unwrap();
    }
    let acked = record_lines(&producer.out).len();
    producer.wait_records(acked + 1_000);
    producer.stop();
    let acked = record_lines(&producer.out);
    let dump = TopicDump::read(&servers, topic, PARTITIONS as usize).unwrap();
    eprintln!("{} acknowledged, {} stored", acked.len(), dump.at.len());
    assert_no_problems(
        "after whole-cluster kills",
        dump.check_acked_exactly_once(&acked),
        &c,
    );
}

/// A follower's last segment is damaged on disk while it is down: recovery cuts the
/// torn tail, and the follower catches up from the leader until its log is
/// byte-identical to the leader's.
#[test]
fn follower_with_a_damaged_segment_tail_recovers_and_catches_up() {
    let topic = "damaged";
    let mut c = Cluster::start(45, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let work = tempfile::tempdir().unwrap();
    let servers = bootstrap(&c);
    let values: Vec<String> = (0..2_000).map(|i| format!("value-{i}")).collect();
    produce_values(&c, work.path(), &servers, topic, &values);
    let state = partition_state(&c, 1, topic, 0).unwrap();
    let follower = state
        .replicas
        .iter()
        .copied()
        .find(|r| *r as i64 != state.leader)
        .unwrap();
    wait_identical_replicas(&c, topic, &state.replicas);
    c.kill9(follower);
    // Scribble over the last kilobyte of the follower's segment.
    let dir = c.nodes[&follower].data_dir.join(format!("{topic}-0"));
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len();
    assert!(len > 4096, "segment too small to damage: {len}");
    for b in &mut bytes[len - 1024..] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).unwrap();
    c.restart(follower).unwrap();
    c.node(follower).wait_ready().unwrap();
    let more: Vec<String> = (0..500).map(|i| format!("more-{i}")).collect();
    produce_values(&c, work.path(), &servers, topic, &more);
    wait_full_isr(&c, follower, topic, 1);
    wait_identical_replicas(&c, topic, &state.replicas);
    let log = std::fs::read_to_string(
        c.nodes[&follower]
            .data_dir
            .parent()
            .unwrap()
            .join("keel.log"),
    )
    .unwrap_or_default();
    assert!(
        log.contains("recovery truncated"),
        "the follower's recovery did not cut the damaged tail:\n{}",
        c.logs()
    );
    let dump = TopicDump::read(&servers, topic, 1).unwrap();
    assert_eq!(dump.at.len(), values.len() + more.len());
}

/// A partition on brokers {1,2,3} is reassigned to {2,3,4} while an idempotent
/// acks=all producer writes to it: the reassignment completes (broker 4 catches up and
/// joins, broker 1 leaves and deletes its copy), and nothing acknowledged is lost or
/// duplicated.
#[test]
fn reassignment_from_1_2_3_to_2_3_4_under_load_loses_nothing() {
    let topic = "moving";
    let roles = [Role::Combined, Role::Combined, Role::Combined, Role::Broker];
    let mut c = Cluster::start(46, &roles, SERVER_ARGS).unwrap();
    // Broker 4 is down while the topic is created, so its replicas land on 1, 2, 3.
    c.kill9(4);
    settle(&c, "broker 4 fenced", || {
        c.cli(&[
            "cluster",
            "--controller",
            &c.controller(1),
            "status",
            "--bootstrap-server",
            &c.client(1),
        ])
        .ok()
        .filter(|s| {
            s.lines()
                .any(|l| l.starts_with("Broker: 4\t") && l.ends_with("State: fenced"))
        })
    });
    c.create_topic(1, topic, 1, 3).unwrap();
    let before = partition_state(&c, 1, topic, 0).unwrap();
    let mut sorted = before.replicas.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2, 3], "{before:?}");
    c.restart(4).unwrap();
    c.node(4).wait_ready().unwrap();
    wait_full_isr(&c, 1, topic, 1);

    let work = tempfile::tempdir().unwrap();
    let servers = bootstrap(&c);
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, "1", "idempotent"],
    );
    producer.wait_records(3_000);
    let out = c
        .cli(&[
            "partitions",
            "--bootstrap-server",
            &c.client(2),
            "reassign",
            "--topic",
            topic,
            "--partition",
            "0",
            "--replicas",
            "2,3,4",
        ])
        .unwrap();
    assert!(out.contains("started"), "{out}");
    let after = settle(&c, "the reassignment completes", || {
        let listed = c
            .cli(&[
                "partitions",
                "--bootstrap-server",
                &c.client(2),
                "list-reassignments",
            ])
            .ok()?;
        let s = partition_state(&c, 2, topic, 0)?;
        let mut replicas = s.replicas.clone();
        replicas.sort_unstable();
        let mut isr = s.isr.clone();
        isr.sort_unstable();
        (listed.trim().is_empty()
            && replicas == vec![2, 3, 4]
            && isr == vec![2, 3, 4]
            && s.leader != 1)
            .then_some(s)
    });
    eprintln!("reassigned: {before:?} -> {after:?}");
    let acked = record_lines(&producer.out).len();
    producer.wait_records(acked + 3_000);
    producer.stop();
    settle(&c, "broker 1 deletes its copy", || {
        (!c.nodes[&1].data_dir.join(format!("{topic}-0")).exists()).then_some(())
    });
    let acked = record_lines(&producer.out);
    let dump = TopicDump::read(&servers, topic, 1).unwrap();
    eprintln!("{} acknowledged, {} stored", acked.len(), dump.at.len());
    assert!(
        !producer.stderr().contains("failed "),
        "the producer failed deliveries:\n{}",
        producer.stderr()
    );
    assert_no_problems(
        "after the reassignment",
        dump.check_acked_exactly_once(&acked),
        &c,
    );
    wait_identical_replicas(&c, topic, &[2, 3, 4]);
}

/// Leadership moves back to the preferred replica: by `keel partitions elect-leaders`
/// with the automatic rebalance off, and by the active controller on its own with it on.
#[test]
fn leadership_returns_to_the_preferred_replica() {
    let topic = "preferred";
    let mut args: Vec<&str> = SERVER_ARGS.to_vec();
    args.extend(["--set", "leader.imbalance.check.interval.seconds=1"]);
    let mut c = Cluster::start(47, &combined(3), &args).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let first = partition_state(&c, 1, topic, 0).unwrap();
    let preferred = first.replicas[0];
    assert_eq!(
        first.leader as u64, preferred,
        "a new partition starts on its preferred replica"
    );
    let via = c
        .broker_ids()
        .into_iter()
        .find(|id| *id != preferred)
        .unwrap();
    c.kill9(preferred);
    settle(&c, "leadership leaves the killed preferred replica", || {
        partition_state(&c, via, topic, 0).filter(|s| s.leader > 0 && s.leader as u64 != preferred)
    });
    c.restart(preferred).unwrap();
    c.node(preferred).wait_ready().unwrap();
    let back = settle(&c, "the automatic rebalance gives leadership back", || {
        partition_state(&c, via, topic, 0)
            .filter(|s| s.leader as u64 == preferred && s.isr.len() == 3)
    });
    assert!(back.epoch > first.epoch + 1, "{first:?} -> {back:?}");
    // An explicit election when the preferred replica already leads is not needed.
    let out = c
        .cli(&[
            "partitions",
            "--bootstrap-server",
            &c.client(via),
            "elect-leaders",
            "--topic",
            topic,
        ])
        .unwrap();
    assert!(out.contains("ElectionNotNeeded"), "{out}");
}

/// A long-poll Fetch waiting at a leader learns at once that leadership moved (as
/// Kafka's DelayedFetch completes when its partition changes hands), instead of
/// sleeping out its `max_wait_ms` and being answered as if nothing happened. The
/// answer names the new leader, and from Fetch v16 and Produce v10 gives its address
/// (KIP-951), so a client needs no Metadata request to follow it.
#[test]
fn a_waiting_fetch_is_answered_when_leadership_moves() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;
    /// Longer than any leader move here takes; the answer must come well before it.
    const FETCH_MAX_WAIT_MS: i32 = 30_000;
    /// Fetch version that names topics.
    const FETCH_BY_NAME: i16 = 12;

    let topic = "moving";
    let mut c = Cluster::start(48, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let preferred = partition_state(&c, 1, topic, 0).unwrap().replicas[0];
    c.kill9(preferred);
    let via = c
        .broker_ids()
        .into_iter()
        .find(|id| *id != preferred)
        .unwrap();
    let moved = settle(&c, "a new leader", || {
        partition_state(&c, via, topic, 0).filter(|s| s.leader > 0 && s.leader as u64 != preferred)
    });
    c.restart(preferred).unwrap();
    c.node(preferred).wait_ready().unwrap();
    wait_full_isr(&c, via, topic, 1);
    let leader = moved.leader as u64;
    let addr = c.client(leader);
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_current_leader_epoch(moved.epoch)
                .with_partition_max_bytes(1024 * 1024)])]);
    let waiting = std::thread::spawn(move || {
        block_on(async {
            let mut client = KafkaClient::connect(&addr, "waiting-fetch").await.unwrap();
            let started = Instant::now();
            let resp = client.call(&request, FETCH_BY_NAME).await.unwrap();
            let p = &resp.responses[0].partitions[0];
            (started.elapsed(), p.error_code, p.current_leader.clone())
        })
    });
    // Let the fetch park at the leader, then give leadership back to the preferred
    // replica.
    std::thread::sleep(Duration::from_secs(2));
    let out = c
        .cli(&[
            "partitions",
            "--bootstrap-server",
            &c.client(via),
            "elect-leaders",
            "--topic",
            topic,
        ])
        .unwrap();
    assert!(!out.contains("ElectionNotNeeded"), "{out}");
    let (waited, error, hint) = waiting.join().unwrap();
    let answers = [
        ResponseError::NotLeaderOrFollower.code(),
        ResponseError::FencedLeaderEpoch.code(),
    ];
    assert!(
        answers.contains(&error),
        "the parked fetch was answered with error {error} after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(FETCH_MAX_WAIT_MS as u64 / 2),
        "the parked fetch waited {waited:?}"
    );
    let now = partition_state(&c, via, topic, 0).unwrap();
    assert_eq!(now.leader as u64, preferred, "{now:?}");
    // The answer names the new leader (KIP-951), and from v16 says where it is.
    assert_eq!(
        (hint.leader_id.0 as u64, hint.leader_epoch),
        (preferred, now.epoch),
        "leader hint of the parked fetch's answer"
    );
    let old_leader = c.client(leader);
    let new_leader = c.client(preferred);
    let (error, hint, endpoints) = block_on(async {
        let mut client = KafkaClient::connect(&old_leader, "hinted-fetch")
            .await
            .unwrap();
        let meta = client
            .call(
                &kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(topic)))),
                ])),
                12,
            )
            .await
            .unwrap();
        let request = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1024 * 1024)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(meta.topics[0].topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(moved.epoch)
                    .with_partition_max_bytes(1024 * 1024)])]);
        let resp = client.call(&request, 16).await.unwrap();
        let p = &resp.responses[0].partitions[0];
        (p.error_code, p.current_leader.clone(), resp.node_endpoints)
    });
    assert!(
        answers.contains(&error),
        "v16 fetch at the old leader: {error}"
    );
    assert_eq!(hint.leader_id.0 as u64, preferred);
    assert_eq!(
        endpoints
            .iter()
            .map(|e| (e.node_id.0 as u64, format!("{}:{}", e.host, e.port)))
            .collect::<Vec<_>>(),
        vec![(preferred, new_leader.clone())]
    );
    // A produce there is told the same (Produce v10+).
    let (error, hint, endpoints) = block_on(async {
        let mut client = KafkaClient::connect(&old_leader, "hinted-produce")
            .await
            .unwrap();
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(BatchBuilder::new(1, 8).build())))])]);
        let resp = client.call(&req, 11).await.unwrap();
        let p = &resp.responses[0].partition_responses[0];
        (p.error_code, p.current_leader.clone(), resp.node_endpoints)
    });
    assert_eq!(error, ResponseError::NotLeaderOrFollower.code());
    assert_eq!(hint.leader_id.0 as u64, preferred);
    assert_eq!(
        endpoints
            .iter()
            .map(|e| (e.node_id.0 as u64, format!("{}:{}", e.host, e.port)))
            .collect::<Vec<_>>(),
        vec![(preferred, new_leader)]
    );
    // An election over every partition reports only those it had to elect: none now.
    let all = block_on(async {
        let mut client = KafkaClient::connect(&c.client(via), "elect-all")
            .await
            .unwrap();
        let req = kafka_protocol::messages::ElectLeadersRequest::default()
            .with_timeout_ms(30_000)
            .with_topic_partitions(None);
        client.call(&req, 2).await.unwrap()
    });
    assert!(
        all.replica_election_results.is_empty(),
        "{:?}",
        all.replica_election_results
    );
}

/// DeleteRecords answers success only once every in-sync replica has moved its log
/// start past the offset (Kafka's low watermark), so a leader elected afterwards does
/// not serve the deleted records again. With an in-sync follower SIGSTOPped the
/// request times out (the leader's deletion stands); once the follower has left the
/// ISR it succeeds; after the follower is back and in sync and the leader is
/// SIGKILLed, the new leader's log starts at the offset. ListOffsets EARLIEST names
/// the epoch that offset was written in, not the new leader's epoch.
#[test]
fn delete_records_waits_until_the_in_sync_replicas_have_deleted() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{DeleteRecordsRequest, ListOffsetsRequest};
    const RECORDS: usize = 50;
    const DELETE_BELOW: i64 = 30;
    /// Shorter than `replica.lag.time.max.ms` (4 s): the paused follower is still
    /// in sync when this runs out.
    const SHORT_TIMEOUT_MS: i32 = 1_000;
    const LONG_TIMEOUT_MS: i32 = 30_000;
    const EARLIEST_TIMESTAMP: i64 = -2;

    async fn delete_records(addr: &str, topic: &str, timeout_ms: i32) -> (i16, i64) {
        let mut client = KafkaClient::connect(addr, "delete-records").await.unwrap();
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(DELETE_BELOW)])]);
        let resp = client.call(&req, 2).await.unwrap();
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    }
    async fn earliest(addr: &str, topic: &str) -> (i16, i64, i32) {
        let mut client = KafkaClient::connect(addr, "delete-records").await.unwrap();
        let req = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(EARLIEST_TIMESTAMP)])]);
        let resp = client.call(&req, 7).await.unwrap();
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.offset, p.leader_epoch)
    }

    let topic = "trimmed";
    let mut c = Cluster::start(49, &combined(3), SERVER_ARGS).unwrap();
    c.create_topic(1, topic, 1, 3).unwrap();
    wait_full_isr(&c, 1, topic, 1);
    let state = partition_state(&c, 1, topic, 0).unwrap();
    let leader = state.leader as u64;
    let addr = c.client(leader);
    assert_eq!(
        block_on(produce_raw(&addr, topic, -1, RECORDS, 30_000)),
        0,
        "acks=all produce"
    );
    let follower = state
        .replicas
        .iter()
        .copied()
        .find(|r| *r != leader)
        .unwrap();
    c.node(follower).pause();
    let started = Instant::now();
    let (code, _) = block_on(delete_records(&addr, topic, SHORT_TIMEOUT_MS));
    assert_eq!(
        code,
        ResponseError::RequestTimedOut.code(),
        "answered after {:?} with a follower in sync and paused",
        started.elapsed()
    );
    assert_eq!(
        block_on(earliest(&addr, topic)),
        (0, DELETE_BELOW, state.epoch),
        "the leader's deletion stands"
    );
    // Once the paused follower has left the ISR the low watermark covers the offset.
    assert_eq!(
        block_on(delete_records(&addr, topic, LONG_TIMEOUT_MS)),
        (0, DELETE_BELOW)
    );
    c.node(follower).resume();
    wait_full_isr(&c, 1, topic, 1);
    // Answered once every in-sync replica, the resumed one too, has deleted.
    assert_eq!(
        block_on(delete_records(&addr, topic, LONG_TIMEOUT_MS)),
        (0, DELETE_BELOW)
    );
    c.kill9(leader);
    let via = follower;
    let moved = settle(&c, "a new leader", || {
        partition_state(&c, via, topic, 0).filter(|s| s.leader > 0 && s.leader as u64 != leader)
    });
    let new_addr = c.client(moved.leader as u64);
    let (start, epoch) = settle(&c, "the new leader answers ListOffsets", || {
        let (code, offset, epoch) = block_on(earliest(&new_addr, topic));
        (code == 0).then_some((offset, epoch))
    });
    assert_eq!(
        start, DELETE_BELOW,
        "the new leader {} serves deleted records",
        moved.leader
    );
    assert!(moved.epoch > state.epoch, "{moved:?} {state:?}");
    assert_eq!(
        epoch, state.epoch,
        "the epoch of the earliest offset, written before the leader moved"
    );
}
