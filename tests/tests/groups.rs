//! Consumer groups against a 3-node keel cluster with real clients (confluent-kafka,
//! kafka-python and kafkajs members as separate processes): a 12-partition topic shared
//! by three members, a clean leave and a SIGKILL taken over from the committed
//! offsets; cooperative-sticky and static members that keep their partitions; and the
//! coordinator's broker SIGKILLed under a running group. Each test has its own
//! 127.0.<block>.x addresses (blocks 50–55).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keel_tests::background::Background;
use keel_tests::cluster::{Cluster, Role};
use keel_tests::groups::{
    check_group_consumption, wait_all_consumed, wait_assigned_once, Event, GroupClient, Member,
};
use keel_tests::records::record_lines;

const PARTITIONS: i32 = 12;
/// Fast fencing so a killed broker's leaderships move within seconds, and Kafka's
/// usual durability for RF=3.
const SERVER_ARGS: &[&str] = &[
    "--set",
    "broker.session.timeout.ms=3000",
    "--set",
    "broker.heartbeat.interval.ms=500",
    "--set",
    "replica.lag.time.max.ms=4000",
    "--set",
    "min.insync.replicas=2",
];
/// How long a rebalance may take here: a dead member is noticed after its session
/// timeout (6 s in the member scripts), then every member rejoins.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an assignment must stay unchanged to count as steady.
const STEADY: Duration = Duration::from_secs(3);
/// Records per second the background producer writes.
const PRODUCE_RATE: &str = "rate=200";

fn bootstrap(c: &Cluster) -> String {
    c.broker_ids()
        .iter()
        .map(|id| c.client(*id))
        .collect::<Vec<_>>()
        .join(",")
}

fn acked(producer: &Background) -> BTreeMap<(i32, i64), String> {
    record_lines(&producer.out)
        .into_iter()
        .map(|(p, o, v)| ((p, o), v))
        .collect()
}

fn setup(block: u8, topic: &str) -> (Cluster, tempfile::TempDir, String) {
    let c = Cluster::start(block, &vec![Role::Combined; 3], SERVER_ARGS).unwrap();
    c.create_topic(1, topic, PARTITIONS, 3).unwrap();
    let servers = bootstrap(&c);
    (c, tempfile::tempdir().unwrap(), servers)
}

fn steady(members: &mut [&mut Member], what: &str, c: &Cluster) -> BTreeMap<String, BTreeSet<i32>> {
    match wait_assigned_once(members, PARTITIONS, STEADY, REBALANCE_TIMEOUT) {
        Ok(a) => {
            eprintln!("{what}: {a:?}");
            a
        }
        Err(e) => panic!("{what}: {e:#}\n{}", c.logs()),
    }
}

/// Waits until `m` has reported at least `n` more commits than it had.
fn wait_commits(m: &Member, n: usize) {
    let count = |m: &Member| {
        m.events()
            .iter()
            .filter(|(_, e)| matches!(e, Event::Committed(_)))
            .count()
    };
    let target = count(m) + n;
    let deadline = Instant::now() + REBALANCE_TIMEOUT;
    while count(m) < target {
        assert!(
            Instant::now() < deadline,
            "{} made no commits: {}",
            m.name,
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three members share the topic; one leaves cleanly, one is SIGKILLed, a new one
/// joins; every acknowledged record is consumed, nothing skipped, duplicates only
/// after the last acknowledged commit.
fn three_members_survive_a_leave_and_a_kill(block: u8, client: GroupClient, opts: &[&str]) {
    let topic = "orders";
    let (c, work, servers) = setup(block, topic);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, PRODUCE_RATE],
    );
    producer.wait_records(200);
    let group = format!("{client:?}-group");
    let spawn = |name: &str| Member::spawn(name, client, &servers, &group, topic, opts).unwrap();
    let (mut a, mut b, mut d) = (spawn("a"), spawn("b"), spawn("c"));
    let first = steady(&mut [&mut a, &mut b, &mut d], "three members", &c);
    assert_eq!(first.len(), 3);
    assert!(
        first.values().all(|p| !p.is_empty()),
        "every member gets partitions: {first:?}"
    );
    wait_commits(&a, 3);
    wait_commits(&d, 3);

    d.close(Duration::from_secs(30));
    steady(&mut [&mut a, &mut b], "after c left", &c);
    wait_commits(&b, 3);

    b.kill9();
    steady(&mut [&mut a], "after b was killed", &c);
    let mut e = spawn("e");
    steady(&mut [&mut a, &mut e], "after e joined", &c);

    let have = record_lines(&producer.out).len();
    producer.wait_records(have + 300);
    producer.stop();
    let acked = acked(&producer);
    let all = [&a, &b, &d, &e];
    if let Err(err) = wait_all_consumed(&all, &acked, REBALANCE_TIMEOUT) {
        panic!("{err:#}\n{}", c.logs());
    }
    let problems = check_group_consumption(&all, &acked);
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), c.logs());
    eprintln!(
        "{client:?}: {} acknowledged records, all consumed; rebalances seen by a: {}",
        acked.len(),
        a.rebalances()
    );
}

#[test]
fn confluent_group_of_three_takes_over_partitions_after_a_leave_and_a_kill() {
    three_members_survive_a_leave_and_a_kill(50, GroupClient::Confluent, &["strategy=range"]);
}

#[test]
fn kafka_python_group_of_three_takes_over_partitions_after_a_leave_and_a_kill() {
    three_members_survive_a_leave_and_a_kill(
        51,
        GroupClient::KafkaPython,
        &["strategy=roundrobin"],
    );
}

#[test]
fn kafkajs_group_of_three_takes_over_partitions_after_a_leave_and_a_kill() {
    three_members_survive_a_leave_and_a_kill(52, GroupClient::Kafkajs, &[]);
}

/// Partitions a member held at `since` and had revoked after it.
fn revoked_after(m: &Member, since: Instant) -> BTreeSet<i32> {
    m.events()
        .iter()
        .filter(|(t, _)| *t > since)
        .filter_map(|(_, e)| match e {
            Event::Revoked(p) => Some(p.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// With cooperative-sticky (librdkafka), a member joining or dying moves only the
/// partitions that change owner: the others are never revoked.
#[test]
fn cooperative_sticky_members_keep_their_partitions_when_the_group_changes() {
    let topic = "coop";
    let (c, work, servers) = setup(53, topic);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, PRODUCE_RATE],
    );
    producer.wait_records(100);
    let opts = ["strategy=cooperative-sticky"];
    let spawn = |name: &str| {
        Member::spawn(
            name,
            GroupClient::Confluent,
            &servers,
            "coop-group",
            topic,
            &opts,
        )
        .unwrap()
    };
    let (mut a, mut b, mut d) = (spawn("a"), spawn("b"), spawn("c"));
    let before = steady(
        &mut [&mut a, &mut b, &mut d],
        "three cooperative members",
        &c,
    );
    let t0 = Instant::now();
    let mut e = spawn("e");
    let after = steady(&mut [&mut a, &mut b, &mut d, &mut e], "after e joined", &c);
    assert!(
        !after["e"].is_empty(),
        "the new member got partitions: {after:?}"
    );
    for m in [&a, &b, &d] {
        let revoked = revoked_after(m, t0);
        let moved: BTreeSet<i32> = before[&m.name]
            .difference(&after[&m.name])
            .copied()
            .collect();
        assert!(
            revoked.is_subset(&moved),
            "{} had {revoked:?} revoked but only {moved:?} moved away (a full rebalance)",
            m.name
        );
        assert!(
            after[&m.name].is_subset(&before[&m.name]),
            "{} gained partitions when a member joined: {:?} -> {:?}",
            m.name,
            before[&m.name],
            after[&m.name]
        );
    }
    let t1 = Instant::now();
    d.kill9();
    let last = steady(&mut [&mut a, &mut b, &mut e], "after c was killed", &c);
    for m in [&a, &b, &e] {
        assert!(
            revoked_after(m, t1).is_empty(),
            "{} lost partitions when another member died",
            m.name
        );
        assert!(after[&m.name].is_subset(&last[&m.name]));
    }
    producer.stop();
    let acked = acked(&producer);
    let all = [&a, &b, &d, &e];
    wait_all_consumed(&all, &acked, REBALANCE_TIMEOUT).unwrap();
    let problems = check_group_consumption(&all, &acked);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A static member (group.instance.id) SIGKILLed and restarted within its session
/// timeout gets its partitions back, and the other members see no rebalance at all.
#[test]
fn static_member_restarted_within_its_session_timeout_causes_no_rebalance() {
    let topic = "static";
    let (c, work, servers) = setup(54, topic);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, PRODUCE_RATE],
    );
    producer.wait_records(100);
    let spawn = |name: &str| {
        let instance = format!("instance={name}");
        Member::spawn(
            name,
            GroupClient::Confluent,
            &servers,
            "static-group",
            topic,
            &["strategy=range", &instance, "session_ms=30000"],
        )
        .unwrap()
    };
    let (mut a, mut b, mut d) = (spawn("a"), spawn("b"), spawn("c"));
    let before = steady(&mut [&mut a, &mut b, &mut d], "three static members", &c);
    wait_commits(&b, 2);
    let t0 = Instant::now();
    b.kill9();
    let mut b2 = spawn("b");
    let after = steady(&mut [&mut a, &mut b2, &mut d], "after b restarted", &c);
    assert_eq!(
        after["b"], before["b"],
        "the restarted static member got its partitions back"
    );
    for m in [&a, &d] {
        let changes = m
            .events()
            .iter()
            .filter(|(t, e)| *t > t0 && matches!(e, Event::Assigned(_) | Event::Revoked(_)))
            .count();
        assert_eq!(
            changes, 0,
            "{} saw a rebalance when static member b restarted",
            m.name
        );
    }
    let have = record_lines(&producer.out).len();
    producer.wait_records(have + 200);
    producer.stop();
    let acked = acked(&producer);
    let all = [&a, &b, &b2, &d];
    wait_all_consumed(&all, &acked, REBALANCE_TIMEOUT).unwrap();
    let problems = check_group_consumption(&all, &acked);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The broker coordinating a running group is SIGKILLed: the group finds the new
/// leader of its offsets partition, every committed offset is still there (none moves
/// back), and the members go on consuming with nothing skipped.
#[test]
fn coordinator_kill_9_moves_the_group_and_keeps_every_committed_offset() {
    let topic = "coord";
    let (mut c, work, servers) = setup(55, topic);
    let parts = PARTITIONS.to_string();
    let mut producer = Background::start(
        work.path(),
        "producer",
        "acked_producer.py",
        &[&servers, topic, &parts, PRODUCE_RATE],
    );
    producer.wait_records(100);
    let group = "coord-group";
    let spawn = |name: &str| {
        Member::spawn(
            name,
            GroupClient::Confluent,
            &servers,
            group,
            topic,
            &["strategy=roundrobin"],
        )
        .unwrap()
    };
    let (mut a, mut b, mut d) = (spawn("a"), spawn("b"), spawn("c"));
    steady(&mut [&mut a, &mut b, &mut d], "three members", &c);
    wait_commits(&a, 5);
    let coordinator = c.cli(&[
        "groups",
        "--bootstrap-server",
        &c.client(1),
        "describe",
        "--group",
        group,
    ]);
    let coordinator = coordinator.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    eprintln!("{coordinator}");
    let deadline = Instant::now() + REBALANCE_TIMEOUT;
    let before = loop {
        let committed = keel_tests::groups::fetch_committed(&servers, group).unwrap();
        if committed.len() == PARTITIONS as usize {
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "not every partition committed: {committed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let victim = keel_tests::groups::coordinator_of(&servers, group).unwrap();
    eprintln!("coordinator is node {victim}; killing it");
    c.kill9(victim as u64);
    let others: Vec<String> = c
        .broker_ids()
        .into_iter()
        .filter(|id| *id != victim as u64)
        .map(|id| c.client(id))
        .collect();
    let survivors = others.join(",");
    let deadline = Instant::now() + REBALANCE_TIMEOUT;
    let moved_to = loop {
        if let Ok(id) = keel_tests::groups::coordinator_of(&survivors, group) {
            if id != victim {
                break id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group found no new coordinator\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let after = keel_tests::groups::fetch_committed(&survivors, group).unwrap();
    assert_eq!(
        after.len(),
        before.len(),
        "committed partitions after the kill: {after:?}"
    );
    for (key, offset) in &before {
        let now = after.get(key).copied();
        assert!(
            now.is_some_and(|n| n >= *offset),
            "{key:?}: committed {offset} before the kill, {now:?} after it (coordinator {victim} -> {moved_to})"
        );
    }
    let have = record_lines(&producer.out).len();
    producer.wait_records(have + 300);
    c.restart(victim as u64).unwrap();
    c.node(victim as u64).wait_ready().unwrap();
    producer.stop();
    let acked = acked(&producer);
    let all = [&a, &b, &d];
    if let Err(e) = wait_all_consumed(&all, &acked, REBALANCE_TIMEOUT) {
        panic!("{e:#}\n{}", c.logs());
    }
    let problems = check_group_consumption(&all, &acked);
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), c.logs());
    eprintln!(
        "coordinator {victim} -> {moved_to}; {} committed partitions kept; {} records consumed",
        after.len(),
        acked.len()
    );
}
