//! Bad group requests against a real keel node, by hand over the wire: each gets the
//! Kafka error code for it, and none disturbs the offsets a group has committed —
//! which also survive a SIGKILL of the node.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel::cli::client::KafkaClient;
use keel_storage::testing::BatchBuilder;
use keel_tests::clients::block_on;
use keel_tests::groups::wait_coordinator;
use keel_tests::KeelNode;

/// How long a fresh node may take to create `__consumer_offsets` and load a group.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(60);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

const JOIN_VERSION: i16 = 5;
const TOPIC: &str = "orders";

async fn connect(node: &KeelNode) -> KafkaClient {
    KafkaClient::connect(&node.addr, "bad-input").await.unwrap()
}

fn join(group: &str, member: &str, session_ms: i32, protocol_type: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_protocol_type(s(protocol_type))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"not a consumer subscription"))])
}

/// Joins retrying while the coordinator loads.
async fn join_ok(c: &mut KafkaClient, req: &JoinGroupRequest) -> JoinGroupResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = c.call(req, JOIN_VERSION).await.unwrap();
        if resp.error_code != code(ResponseError::CoordinatorLoadInProgress) {
            return resp;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn commit(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(s(metadata)))])])
}

async fn commit_code(c: &mut KafkaClient, req: &OffsetCommitRequest) -> i16 {
    let resp = c.call(req, 8).await.unwrap();
    resp.topics[0].partitions[0].error_code
}

async fn fetch_offset(
    c: &mut KafkaClient,
    group: &str,
    topic: &str,
    partition: i32,
) -> (i16, i64, String) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(vec![partition]),
        ]));
    let resp = c.call(&req, 7).await.unwrap();
    if resp.error_code != 0 {
        return (resp.error_code, -1, String::new());
    }
    let p = &resp.topics[0].partitions[0];
    (
        p.error_code,
        p.committed_offset,
        p.metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn bad_group_requests_get_their_kafka_errors_and_committed_offsets_survive_them_and_a_kill_9() {
    let mut node = KeelNode::start(&[
        "--set",
        "num.partitions=3",
        "--set",
        "group.initial.rebalance.delay.ms=0",
    ])
    .unwrap();
    block_on(async {
        let mut c = connect(&node).await;
        // A topic to commit for (auto-created by Metadata).
        c.call(
            &kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(s(TOPIC)))),
            ])),
            12,
        )
        .await
        .unwrap();
        let group = "bad-input-group";
        wait_coordinator(&mut c, group, COORDINATOR_TIMEOUT).await;

        // Unknown coordinator key type.
        let resp = c
            .call(
                &FindCoordinatorRequest::default()
                    .with_key(s(group))
                    .with_key_type(7),
                3,
            )
            .await
            .unwrap();
        assert_eq!(resp.error_code, code(ResponseError::InvalidRequest));

        // Absurd session timeouts, an empty group id, a missing protocol type.
        for session in [0, 1, i32::MAX, -5] {
            let r = join_ok(&mut c, &join(group, "", session, "consumer")).await;
            assert_eq!(
                r.error_code,
                code(ResponseError::InvalidSessionTimeout),
                "session {session}"
            );
        }
        let r = c
            .call(&join("", "", 10_000, "consumer"), JOIN_VERSION)
            .await
            .unwrap();
        assert_eq!(r.error_code, code(ResponseError::InvalidGroupId));
        let r = join_ok(&mut c, &join(group, "", 10_000, "")).await;
        assert_eq!(r.error_code, code(ResponseError::InconsistentGroupProtocol));
        // A member id the group never gave.
        let r = join_ok(&mut c, &join(group, "made-up", 10_000, "consumer")).await;
        assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
        // LeaveGroup of a group that does not exist: UNKNOWN_MEMBER_ID for the member
        // (v0-v2), and in v3+ per member with the request itself answered NONE, as
        // Kafka does (AdminClient's removeMembersFromConsumerGroup tells them apart).
        let never = "never-existed";
        let r = c
            .call(
                &LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(never)))
                    .with_member_id(s("m-1")),
                1,
            )
            .await
            .unwrap();
        assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
        let r = c
            .call(
                &LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(never)))
                    .with_members(vec![
                        kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                            .with_member_id(s("m-1")),
                    ]),
                3,
            )
            .await
            .unwrap();
        assert_eq!(r.error_code, 0);
        assert_eq!(r.members.len(), 1);
        assert_eq!(
            r.members[0].error_code,
            code(ResponseError::UnknownMemberId)
        );

        // A standalone commit (generation -1) before anyone joins: allowed.
        assert_eq!(
            commit_code(&mut c, &commit(group, -1, "", TOPIC, 0, 42, "first")).await,
            0
        );
        assert_eq!(
            fetch_offset(&mut c, group, TOPIC, 0).await,
            (0, 42, "first".to_string())
        );

        // Join properly: MEMBER_ID_REQUIRED, then in.
        let r = join_ok(&mut c, &join(group, "", 10_000, "consumer")).await;
        assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
        let member = r.member_id.to_string();
        let r = join_ok(&mut c, &join(group, &member, 10_000, "consumer")).await;
        assert_eq!(r.error_code, 0, "{r:?}");
        let generation = r.generation_id;
        assert_eq!(r.leader.as_str(), member);
        // Another protocol type while it has members.
        let r = join_ok(&mut c, &join(group, "", 10_000, "connect")).await;
        assert_eq!(r.error_code, code(ResponseError::InconsistentGroupProtocol));

        // SyncGroup with a stale generation, then the real one.
        let sync = |generation: i32, member: &str| {
            SyncGroupRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id(generation)
                .with_member_id(s(member))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(s(member))
                    .with_assignment(Bytes::from_static(b"whatever the leader says"))])
        };
        let r = c.call(&sync(generation + 5, &member), 3).await.unwrap();
        assert_eq!(r.error_code, code(ResponseError::IllegalGeneration));
        let r = c.call(&sync(generation, "stranger"), 3).await.unwrap();
        assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
        let r = c.call(&sync(generation, &member), 3).await.unwrap();
        assert_eq!(r.error_code, 0);
        assert_eq!(
            r.assignment,
            Bytes::from_static(b"whatever the leader says")
        );

        // Heartbeats: wrong generation, unknown member, unknown group.
        let hb = |group: &str, generation: i32, member: &str| {
            HeartbeatRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id(generation)
                .with_member_id(s(member))
        };
        assert_eq!(
            c.call(&hb(group, generation, &member), 3)
                .await
                .unwrap()
                .error_code,
            0
        );
        assert_eq!(
            c.call(&hb(group, generation - 1, &member), 3)
                .await
                .unwrap()
                .error_code,
            code(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.call(&hb(group, generation, "stranger"), 3)
                .await
                .unwrap()
                .error_code,
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            c.call(&hb("no-such-group", 1, &member), 3)
                .await
                .unwrap()
                .error_code,
            code(ResponseError::UnknownMemberId)
        );

        // Commits: the member's own, then stale generations, strangers, standalone
        // commits into a group with members, unknown topics and partitions, metadata
        // over offset.metadata.max.bytes.
        assert_eq!(
            commit_code(
                &mut c,
                &commit(group, generation, &member, TOPIC, 1, 7, "m")
            )
            .await,
            0
        );
        let bad = [
            (
                commit(group, generation - 1, &member, TOPIC, 1, 1, ""),
                ResponseError::IllegalGeneration,
            ),
            (
                commit(group, generation, "stranger", TOPIC, 1, 1, ""),
                ResponseError::UnknownMemberId,
            ),
            (
                commit(group, -1, "", TOPIC, 1, 1, ""),
                ResponseError::UnknownMemberId,
            ),
            (
                commit(group, generation, &member, "no-such-topic", 0, 1, ""),
                ResponseError::UnknownTopicOrPartition,
            ),
            (
                commit(group, generation, &member, TOPIC, 99, 1, ""),
                ResponseError::UnknownTopicOrPartition,
            ),
            (
                commit(group, generation, &member, TOPIC, 1, 1, &"x".repeat(5000)),
                ResponseError::OffsetMetadataTooLarge,
            ),
            (
                commit("other-group", 3, "m", TOPIC, 0, 1, ""),
                ResponseError::IllegalGeneration,
            ),
        ];
        for (req, expected) in &bad {
            assert_eq!(commit_code(&mut c, req).await, code(*expected), "{req:?}");
        }

        // Deleting a group with members, and one that does not exist; OffsetDelete of a
        // topic a non-consumer group with members... (its metadata is not a consumer
        // subscription, so the topic counts as subscribed).
        let r = c
            .call(
                &DeleteGroupsRequest::default()
                    .with_groups_names(vec![GroupId(s(group)), GroupId(s("nope"))]),
                2,
            )
            .await
            .unwrap();
        assert_eq!(r.results[0].error_code, code(ResponseError::NonEmptyGroup));
        assert_eq!(
            r.results[1].error_code,
            code(ResponseError::GroupIdNotFound)
        );
        let r = c
            .call(
                &OffsetDeleteRequest::default()
                    .with_group_id(GroupId(s("nope")))
                    .with_topics(vec![kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s(TOPIC)))
                        .with_partitions(vec![Default::default()])]),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.error_code, code(ResponseError::GroupIdNotFound));

        // DescribeGroups of an unknown group: Dead, no error (as Kafka).
        let r = c
            .call(
                &DescribeGroupsRequest::default()
                    .with_groups(vec![GroupId(s("nope")), GroupId(s(group))]),
                5,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.groups[0].error_code, r.groups[0].group_state.as_str()),
            (0, "Dead")
        );
        assert_eq!(r.groups[1].group_state.as_str(), "Stable");
        assert_eq!(r.groups[1].members.len(), 1);

        // Clients may not write the offsets topic.
        let batch = Bytes::from(BatchBuilder::new(1, 10).build());
        let r = c
            .call(
                &ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(s("__consumer_offsets")))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch))])]),
                9,
            )
            .await
            .unwrap();
        assert_eq!(
            r.responses[0].partition_responses[0].error_code,
            code(ResponseError::InvalidTopicException)
        );

        // Leave, then the group is empty and deletable.
        let r = c
            .call(
                &LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(group)))
                    .with_member_id(s(&member)),
                1,
            )
            .await
            .unwrap();
        assert_eq!(r.error_code, 0);
        // None of that disturbed what was committed.
        assert_eq!(
            fetch_offset(&mut c, group, TOPIC, 0).await,
            (0, 42, "first".to_string())
        );
        assert_eq!(
            fetch_offset(&mut c, group, TOPIC, 1).await,
            (0, 7, "m".to_string())
        );
        assert_eq!(fetch_offset(&mut c, group, TOPIC, 2).await.1, -1);
        assert_eq!(
            fetch_offset(&mut c, "never-used", TOPIC, 0).await,
            (0, -1, String::new())
        );
    });

    // The committed offsets survive a SIGKILL of the node.
    node.kill9();
    node.restart().unwrap();
    block_on(async {
        let mut c = connect(&node).await;
        let group = "bad-input-group";
        wait_coordinator(&mut c, group, COORDINATOR_TIMEOUT).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = fetch_offset(&mut c, group, TOPIC, 0).await;
            if got.0 == code(ResponseError::CoordinatorLoadInProgress) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(got, (0, 42, "first".to_string()));
            break;
        }
        assert_eq!(
            fetch_offset(&mut c, group, TOPIC, 1).await,
            (0, 7, "m".to_string())
        );
        // The group, now empty, can be deleted; its offsets go with it.
        let r = c
            .call(
                &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
                2,
            )
            .await
            .unwrap();
        assert_eq!(r.results[0].error_code, 0);
        assert_eq!(fetch_offset(&mut c, group, TOPIC, 0).await.1, -1);
    });
}

/// A static member that stops heartbeating is gone exactly one session timeout later:
/// DeleteGroups sent just after the session lapsed finds the group empty (librdkafka's
/// 0081 DescribeConsumerGroups relies on it). The coordinator's periodic timer alone
/// would notice up to its tick later.
/// The FindCoordinator that creates `__consumer_offsets` on a fresh node answers once
/// the group's partition is loaded there, so the first JoinGroup does not meet
/// COORDINATOR_LOAD_IN_PROGRESS (sarama 1.22.1 gives up on that answer).
#[test]
fn the_first_join_on_a_fresh_node_finds_its_coordinator_loaded() {
    let node = KeelNode::start(&[]).unwrap();
    block_on(async {
        let mut c = connect(&node).await;
        let found = c
            .call(&FindCoordinatorRequest::default().with_key(s("fresh")), 3)
            .await
            .unwrap();
        assert_eq!(
            found.error_code, 0,
            "the creating lookup names a coordinator"
        );
        let resp = c
            .call(&join("fresh", "", 10_000, "consumer"), JOIN_VERSION)
            .await
            .unwrap();
        assert_eq!(
            resp.error_code,
            code(ResponseError::MemberIdRequired),
            "the first join is served, not COORDINATOR_LOAD_IN_PROGRESS"
        );
    });
}

#[test]
fn a_lapsed_static_member_is_gone_for_the_next_request() {
    const SESSION_MS: i32 = 1000;
    let node = KeelNode::start(&[
        "--set",
        "group.min.session.timeout.ms=500",
        "--set",
        "group.initial.rebalance.delay.ms=0",
    ])
    .unwrap();
    block_on(async {
        let mut c = connect(&node).await;
        let group = "lapsing";
        wait_coordinator(&mut c, group, COORDINATOR_TIMEOUT).await;
        for round in 0..3 {
            let req =
                join(group, "", SESSION_MS, "consumer").with_group_instance_id(Some(s("static-1")));
            let joined = join_ok(&mut c, &req).await;
            assert_eq!(joined.error_code, 0, "round {round}: {joined:?}");
            let sync = SyncGroupRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id(joined.generation_id)
                .with_member_id(joined.member_id.clone())
                .with_group_instance_id(Some(s("static-1")))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(joined.member_id.clone())
                    .with_assignment(Bytes::from_static(b"all of it"))]);
            let synced = c.call(&sync, 3).await.unwrap();
            assert_eq!(synced.error_code, 0, "round {round}: {synced:?}");
            let beat = HeartbeatRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id(joined.generation_id)
                .with_member_id(joined.member_id.clone())
                .with_group_instance_id(Some(s("static-1")));
            let r = c.call(&beat, 3).await.unwrap();
            assert_eq!(r.error_code, 0, "round {round}: {r:?}");
            // The session started when the broker answered; 20 ms past it is still
            // well inside the periodic timer's 100 ms tick.
            let last_heartbeat = Instant::now();
            tokio::time::sleep_until(
                (last_heartbeat + Duration::from_millis(SESSION_MS as u64 + 20)).into(),
            )
            .await;
            let deleted = c
                .call(
                    &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
                    1,
                )
                .await
                .unwrap();
            assert_eq!(
                deleted.results[0].error_code, 0,
                "round {round}: the member outlived its session: {deleted:?}"
            );
        }
    });
}

/// The first commit of a group without members (consumers that assign partitions
/// themselves) is read back at once, for hundreds of new groups: the coordinator must
/// not forget such a group while its first commit is still being made durable.
#[test]
fn first_commits_of_new_memberless_groups_are_all_read_back() {
    const GROUPS: usize = 300;
    let node = KeelNode::start(&["--set", "num.partitions=1"]).unwrap();
    block_on(async {
        let mut c = connect(&node).await;
        c.call(
            &kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(s(TOPIC)))),
            ])),
            4,
        )
        .await
        .unwrap();
        wait_coordinator(&mut c, "g-0", COORDINATOR_TIMEOUT).await;
        let mut lost = Vec::new();
        for i in 0..GROUPS {
            let group = format!("g-{i}");
            let offset = 1000 + i as i64;
            let req = commit(&group, -1, "", TOPIC, 0, offset, "");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                // The group's offsets partition may still be loading.
                let code = commit_code(&mut c, &req).await;
                if code == 0 {
                    break;
                }
                assert_eq!(
                    code,
                    ResponseError::CoordinatorLoadInProgress.code(),
                    "{group}"
                );
                assert!(Instant::now() < deadline, "{group}: still loading");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (error, got, _) = fetch_offset(&mut c, &group, TOPIC, 0).await;
            assert_eq!(error, 0, "{group}");
            if got != offset {
                lost.push((group, got));
            }
        }
        assert!(
            lost.is_empty(),
            "acknowledged first commits not read back: {lost:?}"
        );
    });
}
