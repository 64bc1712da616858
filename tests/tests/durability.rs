//! Acknowledged means durable: SIGKILL the broker while a client produces with
//! acks=all, restart it, and every acknowledged record is readable at its
//! acknowledged offset. Topics and configs survive restarts from the metadata store.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::clients::{python, python_script, run};
use keel_tests::node::keel_binary;
use keel_tests::records::{record_lines, TopicDump};
use keel_tests::KeelNode;

const PARTITIONS: usize = 3;
const KILL_ROUNDS: usize = 3;
const ACKS_BETWEEN_KILLS: usize = 2_000;
const WAIT_FOR_ACKS: Duration = Duration::from_secs(120);

fn keel_cli(node: &KeelNode, args: &[&str]) -> String {
    let out = run(
        Command::new(keel_binary())
            .arg("topics")
            .arg("--bootstrap-server")
            .arg(&node.addr)
            .args(args),
        Duration::from_secs(60),
    )
    .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for_acks(path: &std::path::Path, at_least: usize, producer: &mut Child) {
    let deadline = Instant::now() + WAIT_FOR_ACKS;
    while record_lines(path).len() < at_least {
        assert!(
            producer.try_wait().unwrap().is_none(),
            "producer exited early"
        );
        assert!(
            Instant::now() < deadline,
            "only {} acks after {WAIT_FOR_ACKS:?}",
            record_lines(path).len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn acked_writes_survive_kill_9_of_the_broker() {
    let mut node = KeelNode::start(&[]).unwrap();
    let topic = "durable";
    keel_cli(
        &node,
        &[
            "create",
            "--topic",
            topic,
            "--partitions",
            &PARTITIONS.to_string(),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let acks_path = dir.path().join("acks.txt");
    let mut producer = Command::new(python().unwrap())
        .arg(python_script("acked_producer.py"))
        .args([&node.addr, topic, &PARTITIONS.to_string()])
        .stdout(std::fs::File::create(&acks_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    for round in 1..=KILL_ROUNDS {
        wait_for_acks(&acks_path, round * ACKS_BETWEEN_KILLS, &mut producer);
        node.kill9();
        std::thread::sleep(Duration::from_millis(300));
        node.restart().unwrap();
    }
    wait_for_acks(
        &acks_path,
        (KILL_ROUNDS + 1) * ACKS_BETWEEN_KILLS,
        &mut producer,
    );
    let _ = producer.kill();
    let _ = producer.wait();

    let acked = record_lines(&acks_path);
    // Fails if an offset is read twice.
    let stored = TopicDump::read(&node.addr, topic, PARTITIONS).unwrap().at;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(p, o, v)| stored.get(&(*p, *o)) != Some(v))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records are not at their acknowledged offset, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    for p in 0..PARTITIONS as i32 {
        let mut offsets: Vec<i64> = stored
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p} offsets are dense"
        );
    }
    eprintln!(
        "{} acknowledged records, all present after {KILL_ROUNDS} SIGKILLs",
        acked.len()
    );
}

#[test]
fn topics_and_configs_survive_restart_from_the_metadata_store() {
    let mut node = KeelNode::start(&[]).unwrap();
    keel_cli(
        &node,
        &[
            "create",
            "--topic",
            "kept",
            "--partitions",
            "2",
            "--config",
            "retention.ms=123456",
        ],
    );
    keel_cli(
        &node,
        &[
            "alter",
            "--topic",
            "kept",
            "--config",
            "max.message.bytes=54321",
        ],
    );
    keel_cli(&node, &["create", "--topic", "dropped"]);
    keel_cli(&node, &["delete", "--topic", "dropped"]);
    node.stop().unwrap();

    // Remove a partition directory while the node is down: the topic must still be
    // there after restart, because metadata comes from the metadata store, not from
    // the segment directories (and the replica is recreated from the metadata).
    std::fs::remove_dir_all(node.data_dir.join("kept-1")).unwrap();
    node.restart().unwrap();

    let list = keel_cli(&node, &["list"]);
    assert_eq!(list.lines().collect::<Vec<_>>(), vec!["kept"], "{list}");
    let describe = keel_cli(&node, &["describe", "--topic", "kept"]);
    assert!(describe.contains("PartitionCount: 2"), "{describe}");
    assert!(describe.contains("retention.ms=123456"), "{describe}");
    assert!(describe.contains("max.message.bytes=54321"), "{describe}");
    assert!(
        node.data_dir.join("kept-1").is_dir(),
        "replica recreated from metadata"
    );
    assert!(
        !node.data_dir.join("dropped-0").exists(),
        "deleted topic stays deleted"
    );

    // Same after SIGKILL.
    node.kill9();
    node.restart().unwrap();
    let describe = keel_cli(&node, &["describe", "--topic", "kept"]);
    assert!(describe.contains("retention.ms=123456"), "{describe}");
}
