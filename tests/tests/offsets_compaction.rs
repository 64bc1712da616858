//! `__consumer_offsets` is a compacted topic like any other: a node whose groups commit
//! the same offsets over and over ends up with a log that the cleaner has shrunk to
//! about one record per key, and after a SIGKILL the coordinator reloads every latest
//! commit (and no offset of a deleted group) from that compacted log.

use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    DeleteGroupsRequest, GroupId, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use keel::cli::client::KafkaClient;
use keel_tests::clients::block_on;
use keel_tests::groups::wait_coordinator;
use keel_tests::records::segment_bytes;
use keel_tests::KeelNode;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
/// Commits of every partition by the group that is kept.
const ROUNDS: i64 = 400;
/// Small segments, so the commits fill many of them and the cleaner has work.
const OFFSETS_SEGMENT_BYTES: &str = "offsets.topic.segment.bytes=8192";
const COMPACTION_LAG: &str = "log.cleaner.min.compaction.lag.ms=5000";
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(90);
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(60);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn commit(group: &str, offset: i64, metadata: &str) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(s(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(
                (0..PARTITIONS)
                    .map(|p| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset + i64::from(p))
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(Some(s(metadata)))
                    })
                    .collect(),
            )])
}

/// (error, offset, metadata) per partition, retrying while the coordinator loads.
async fn fetch(c: &mut KafkaClient, group: &str) -> Vec<(i16, i64, String)> {
    let deadline = Instant::now() + COORDINATOR_TIMEOUT;
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partition_indexes((0..PARTITIONS).collect())]));
    loop {
        let resp = c.call(&req, 7).await.unwrap();
        if resp.error_code == 0 {
            return resp.topics[0]
                .partitions
                .iter()
                .map(|p| {
                    let meta = p
                        .metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    (p.error_code, p.committed_offset, meta)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "OffsetFetch error {}",
            resp.error_code
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn compacted_offsets_topic_keeps_the_latest_commits_across_a_kill_9() {
    let mut node = KeelNode::start(&[
        "--set",
        "num.partitions=4",
        "--set",
        "offsets.topic.num.partitions=1",
        "--set",
        OFFSETS_SEGMENT_BYTES,
        "--set",
        "log.cleaner.backoff.ms=200",
        // Nothing is compacted while the commits are written, so that the log's size
        // afterwards is what compaction starts from.
        "--set",
        COMPACTION_LAG,
    ])
    .unwrap();
    let (kept, deleted) = ("kept-group", "deleted-group");
    let peak = block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "offsets-compaction")
            .await
            .unwrap();
        c.call(
            &MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(s(TOPIC)))),
            ])),
            4,
        )
        .await
        .unwrap();
        wait_coordinator(&mut c, kept, COORDINATOR_TIMEOUT).await;
        for round in 0..ROUNDS {
            for group in [kept, deleted] {
                let resp = c
                    .call(&commit(group, round, &format!("r{round}")), 8)
                    .await
                    .unwrap();
                for p in &resp.topics[0].partitions {
                    assert_eq!(p.error_code, 0, "round {round} {group}: {p:?}");
                }
            }
        }
        let resp = c
            .call(
                &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(deleted))]),
                2,
            )
            .await
            .unwrap();
        assert_eq!(resp.results[0].error_code, 0, "{resp:?}");
        segment_bytes(&node.data_dir.join("__consumer_offsets-0"))
    });
    // 2 groups × 4 partitions × 400 rounds of ~100-byte records: many segments.
    assert!(peak > 8 * 8192, "only {peak} bytes in the offsets log");

    // The cleaner compacts every rolled segment down to the latest record per key;
    // the active segment stays as it is, so a bound above one segment is the goal.
    let deadline = Instant::now() + COMPACTION_TIMEOUT;
    let compacted = loop {
        let now = segment_bytes(&node.data_dir.join("__consumer_offsets-0"));
        if now < peak / 4 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "offsets log still {now} of {peak} bytes after {COMPACTION_TIMEOUT:?}\n{}",
            node.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("offsets log: {peak} bytes -> {compacted} bytes after compaction");

    node.kill9();
    node.restart().unwrap();
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "offsets-compaction")
            .await
            .unwrap();
        wait_coordinator(&mut c, kept, COORDINATOR_TIMEOUT).await;
        let last = ROUNDS - 1;
        let offsets = fetch(&mut c, kept).await;
        for (p, got) in offsets.iter().enumerate() {
            assert_eq!(
                got,
                &(0, last + p as i64, format!("r{last}")),
                "partition {p} of {kept} after compaction and kill -9\n{}",
                node.log_tail()
            );
        }
        for (p, got) in fetch(&mut c, deleted).await.iter().enumerate() {
            assert_eq!(
                got.1, -1,
                "deleted group's partition {p} came back: {got:?}"
            );
        }
    });
}
