//! The metadata quorum across real `keel` processes on loopback: controller failover,
//! majority loss and recovery, an isolated controller, fencing of a frozen broker,
//! full-cluster restarts and voter changes under load. Each test uses its own
//! 127.0.<block>.x addresses so they can run in parallel.

use std::time::{Duration, Instant};

use keel_tests::cluster::{Cluster, Partition, Role};

/// controller.quorum.election.timeout.ms used by these clusters (the default).
const ELECTION_TIMEOUT_MS: u64 = 1000;
/// The randomized election timeout's upper bound is twice the lower.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MS);
const SESSION_TIMEOUT_MS: u64 = 3000;

fn voters(n: usize) -> Vec<Role> {
    vec![Role::Combined; n]
}

/// Retries topic creation through `via` until it succeeds; returns how long it took.
fn create_eventually(c: &Cluster, via: u64, topic: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match c.create_topic(via, topic, 1, 1) {
            Ok(()) => return start.elapsed(),
            // An earlier attempt timed out after its record reached the log; it was
            // committed once a majority was back (an indefinite outcome, as in Raft).
            Err(e) if e.to_string().contains("TopicAlreadyExists") => return start.elapsed(),
            Err(e) => {
                assert!(
                    start.elapsed() < timeout,
                    "creating {topic} via {via} kept failing: {e}\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn three_voters_elect_a_controller_and_replace_it_within_two_election_timeouts_after_kill_9() {
    let mut c = Cluster::start(31, &voters(3), &[]).unwrap();
    c.create_topic(1, "before", 3, 3).unwrap();
    let leader = c.wait_leader(1, None, Duration::from_secs(10)).unwrap();
    let other = if leader == 1 { 2 } else { 1 };
    c.kill9(leader);
    let took = create_eventually(&c, other, "after", Duration::from_secs(30));
    eprintln!("topic creation worked again {took:?} after SIGKILL of controller {leader}");
    assert!(
        took <= 2 * ELECTION_TIMEOUT_MAX,
        "took {took:?}, more than two election timeouts"
    );
    let new_leader = c
        .wait_leader(other, Some(leader), Duration::from_secs(5))
        .unwrap();
    assert_ne!(new_leader, leader);
    assert!(c
        .describe(other, "before")
        .unwrap()
        .contains("PartitionCount: 3"));
}

#[test]
fn five_voters_work_with_two_down_stop_committing_with_three_down_and_resume() {
    let mut c = Cluster::start(32, &voters(5), &[]).unwrap();
    c.create_topic(1, "t0", 1, 1).unwrap();
    c.kill9(4);
    c.kill9(5);
    create_eventually(&c, 1, "t1", Duration::from_secs(30));
    c.kill9(3);
    // No majority: the admin request fails with a clear error, and nothing crashes.
    let err = c.create_topic(1, "t2", 1, 1).unwrap_err().to_string();
    assert!(
        err.contains("NotController") || err.contains("RequestTimedOut"),
        "expected a retriable controller error, got: {err}"
    );
    assert!(
        c.node(1).is_running() && c.node(2).is_running(),
        "survivors keep running\n{}",
        c.logs()
    );
    for id in [3, 4, 5] {
        c.restart(id).unwrap();
    }
    create_eventually(&c, 2, "t2", Duration::from_secs(60));
    let list = c
        .cli(&["topics", "--bootstrap-server", &c.client(5), "list"])
        .unwrap();
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        vec!["t0", "t1", "t2"],
        "{list}"
    );
}

#[test]
fn an_isolated_controller_cannot_commit_and_every_image_is_identical_after_healing() {
    let c = Cluster::start(33, &voters(3), &[]).unwrap();
    let old = c.wait_leader(1, None, Duration::from_secs(10)).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    let mut cut = Partition::default();
    let other_ips: Vec<String> = others.iter().map(|i| c.ip(*i)).collect();
    cut.isolate(&c.ip(old), &other_ips).unwrap();

    let new = c
        .wait_leader(others[0], Some(old), Duration::from_secs(15))
        .unwrap();
    assert_ne!(new, old);
    create_eventually(&c, others[0], "majority-side", Duration::from_secs(30));
    // The isolated node still serves clients, but cannot get a change committed.
    assert!(
        c.create_topic(old, "minority-side", 1, 1).is_err(),
        "isolated controller committed a change"
    );

    cut.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.status(others[1]).unwrap();
        if status.contains("Images: identical") && !status.contains("unreachable") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "images differ after healing:\n{status}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = c
        .cli(&["topics", "--bootstrap-server", &c.client(old), "list"])
        .unwrap();
    assert_eq!(
        list.trim(),
        "majority-side",
        "the isolated node's view after healing"
    );
}

#[test]
fn a_paused_broker_is_fenced_its_partitions_move_and_it_rejoins_after_sigcont() {
    let timeout = format!("broker.session.timeout.ms={SESSION_TIMEOUT_MS}");
    let heartbeat = "broker.heartbeat.interval.ms=500";
    let mut c = Cluster::start(34, &voters(3), &["--set", &timeout, "--set", heartbeat]).unwrap();
    c.create_topic(1, "spread", 6, 3).unwrap();
    let leader = c.wait_leader(1, None, Duration::from_secs(10)).unwrap();
    let victim = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let observer = [1, 2, 3]
        .into_iter()
        .find(|i| *i != leader && *i != victim)
        .unwrap();
    let led_by = |d: &str, b: u64| {
        d.lines()
            .filter(|l| l.contains(&format!("Leader: {b}\t")))
            .count()
    };
    assert!(
        led_by(&c.describe(observer, "spread").unwrap(), victim) > 0,
        "victim leads something"
    );

    c.node(victim).pause();
    let deadline =
        Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(10);
    loop {
        let d = c.describe(observer, "spread").unwrap();
        let isr_without_victim = d.lines().filter(|l| l.contains("Isr: ")).all(|l| {
            !l.rsplit("Isr: ")
                .next()
                .unwrap_or("")
                .split(',')
                .any(|b| b.trim() == victim.to_string())
        });
        if led_by(&d, victim) == 0 && isr_without_victim {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim {victim} still leads or is in an ISR:\n{d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = c.status(observer).unwrap();
    assert!(
        status.contains(&format!("Broker: {victim}\t")) && status.contains("fenced"),
        "{status}"
    );

    c.node(victim).resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.status(observer).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("Broker: {victim}\t")))
            .unwrap_or("")
            .to_string();
        if line.ends_with("State: unfenced") && status.contains("Images: identical") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim not unfenced after SIGCONT:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn full_cluster_kill_9_and_restart_keeps_every_committed_metadata_record() {
    let mut c = Cluster::start(35, &voters(3), &[]).unwrap();
    for i in 0..10 {
        c.create_topic(1 + (i % 3), &format!("kept-{i}"), 2, 3)
            .unwrap();
    }
    c.cli(&[
        "topics",
        "--bootstrap-server",
        &c.client(2),
        "alter",
        "--topic",
        "kept-3",
        "--config",
        "retention.ms=4242",
    ])
    .unwrap();
    c.cli(&[
        "topics",
        "--bootstrap-server",
        &c.client(2),
        "delete",
        "--topic",
        "kept-9",
    ])
    .unwrap();
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.restart(id).unwrap();
    }
    c.wait_brokers_ready().unwrap();
    for id in 1..=3u64 {
        let list = c
            .cli(&["topics", "--bootstrap-server", &c.client(id), "list"])
            .unwrap();
        let expected: Vec<String> = (0..9).map(|i| format!("kept-{i}")).collect();
        assert_eq!(
            list.lines().map(str::to_string).collect::<Vec<_>>(),
            expected,
            "node {id}"
        );
    }
    assert!(c
        .describe(3, "kept-3")
        .unwrap()
        .contains("retention.ms=4242"));
    create_eventually(&c, 3, "new-after-restart", Duration::from_secs(30));
}

#[test]
fn a_voter_is_added_and_another_removed_while_topics_are_created() {
    let mut roles = voters(3);
    roles.push(Role::SpareController);
    let c = Cluster::start(36, &roles, &[]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = std::thread::scope(|s| {
        let creator = s.spawn(|| {
            let mut created = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let name = format!("during-{i}");
                create_eventually(&c, 2, &name, Duration::from_secs(30));
                created.push(name);
                i += 1;
            }
            created
        });
        std::thread::sleep(Duration::from_millis(500));
        c.cli(&[
            "cluster",
            "--controller",
            &c.controller(3),
            "add-voter",
            "--node-id",
            "4",
            "--node-address",
            &c.controller(4),
        ])
        .unwrap();
        c.cli(&[
            "cluster",
            "--controller",
            &c.controller(4),
            "remove-voter",
            "--node-id",
            "1",
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Release);
        creator.join().unwrap()
    });
    assert!(
        created.len() >= 2,
        "topics were created during the changes: {created:?}"
    );
    let status = c.status(4).unwrap();
    let voters: Vec<&str> = status
        .lines()
        .filter(|l| l.contains("Role: voter"))
        .collect();
    assert_eq!(voters.len(), 3, "{status}");
    assert!(
        !voters.iter().any(|l| l.starts_with("Node: 1\t")),
        "node 1 removed: {status}"
    );
    assert!(
        voters.iter().any(|l| l.starts_with("Node: 4\t")),
        "node 4 added: {status}"
    );
    let list = c
        .cli(&["topics", "--bootstrap-server", &c.client(4), "list"])
        .unwrap();
    for name in &created {
        assert!(
            list.lines().any(|l| l == name),
            "{name} missing from {list}"
        );
    }
}

#[test]
fn a_cluster_of_controller_only_and_broker_only_nodes_serves_clients() {
    let roles = [
        Role::Controller,
        Role::Controller,
        Role::Controller,
        Role::Broker,
        Role::Broker,
    ];
    let c = Cluster::start(37, &roles, &[]).unwrap();
    c.create_topic(4, "split", 4, 2).unwrap();
    let d = c.describe(5, "split").unwrap();
    for line in d.lines().filter(|l| l.contains("Replicas: ")) {
        let replicas = line
            .split("Replicas: ")
            .nth(1)
            .unwrap()
            .split('\t')
            .next()
            .unwrap();
        assert!(
            replicas.split(',').all(|r| r == "4" || r == "5"),
            "replicas only on brokers: {line}"
        );
    }
    let status = c.status(1).unwrap();
    assert!(status.contains("Images: identical"), "{status}");
}

#[test]
fn describe_quorum_reports_the_leader_and_every_voter_through_any_broker() {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    use kafka_protocol::messages::{DescribeQuorumRequest, TopicName};
    let mut roles = voters(3);
    roles.push(Role::Broker);
    let c = Cluster::start(38, &roles, &[]).unwrap();
    let leader = c.wait_leader(1, None, Duration::from_secs(10)).unwrap();
    let req = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName("__cluster_metadata".into()))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    for via in [1u64, 4] {
        let resp = keel_tests::clients::block_on(async {
            let mut client = keel::cli::client::KafkaClient::connect(&c.client(via), "quorum-test")
                .await
                .unwrap();
            client.call(&req, 2).await.unwrap()
        });
        assert_eq!(resp.error_code, 0);
        let p = &resp.topics[0].partitions[0];
        assert_eq!(
            p.leader_id.0 as u64, leader,
            "leader as seen through node {via}"
        );
        assert!(p.high_watermark > 0);
        let mut ids: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(
            p.observers
                .iter()
                .map(|o| o.replica_id.0)
                .collect::<Vec<_>>(),
            vec![4]
        );
        assert!(
            p.current_voters.iter().all(|v| v.log_end_offset > 0),
            "{:?}",
            p.current_voters
        );
        assert_eq!(resp.nodes.len(), 3, "controller endpoints of the voters");
    }
}
