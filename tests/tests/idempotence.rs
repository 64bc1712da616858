//! Idempotent producers never create duplicates: a retried batch is answered with the
//! offset it was first written at, not written again — also after the broker was
//! killed with SIGKILL and restarted, when the retry comes on a new connection and the
//! broker has rebuilt its producer state from the log.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, InitProducerIdRequest, ListOffsetsRequest, ProduceRequest, ProducerId,
    TopicName,
};
use keel::cli::client::KafkaClient;
use keel_storage::testing::BatchBuilder;
use keel_tests::clients::{block_on, python, python_script};
use keel_tests::records::{record_lines, TopicDump};
use keel_tests::KeelNode;

const PARTITIONS: usize = 3;
const KILL_ROUNDS: usize = 3;
/// A kill lands between a batch's append and its acknowledgement only by chance (the
/// window is one fsync wide); keep killing, up to this many rounds, until one has.
const MAX_KILL_ROUNDS: usize = 12;
const ACKS_BETWEEN_KILLS: usize = 2_000;
const WAIT_FOR_ACKS: Duration = Duration::from_secs(120);
/// How long the producer streams before each SIGKILL.
const STREAMING_BEFORE_KILL: Duration = Duration::from_millis(300);
/// ListOffsets timestamp meaning "the log end offset".
const LATEST_TIMESTAMP: i64 = -1;
const PRODUCE_VERSION: i16 = 9;
const ACKS_ALL: i16 = -1;
const PRODUCE_TIMEOUT_MS: i32 = 10_000;
const RECORDS_PER_BATCH: usize = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const NOT_ENOUGH_REPLICAS: i16 = 19;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// What the broker logs when it answers a retried batch with its original offset.
const DUPLICATE_LOG_LINE: &str = "duplicate idempotent batch answered with its original offset";

fn wait_for_acks(path: &Path, at_least: usize, producer: &mut Child, stderr: &Path) {
    let deadline = Instant::now() + WAIT_FOR_ACKS;
    while record_lines(path).len() < at_least {
        assert!(
            producer.try_wait().unwrap().is_none(),
            "producer exited early: {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "only {} acks after {WAIT_FOR_ACKS:?}; producer stderr:\n{}",
            record_lines(path).len(),
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// confluent-kafka with `enable.idempotence=true` produces unique values with acks=all
/// while the broker is SIGKILLed and restarted under it; its in-flight batches are
/// retried on new connections. Afterwards each value is in the log exactly once and
/// every acknowledged value is at its acknowledged offset.
#[test]
fn idempotent_producer_writes_each_record_once_across_broker_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = KeelNode::start_in(dir.path(), &[]).unwrap();
    let topic = "idempotent";
    block_on(create_topic(&node.addr, topic, PARTITIONS as i32));

    let acks_path = dir.path().join("acks.txt");
    let stderr_path = dir.path().join("producer.err");
    let mut producer = Command::new(python().unwrap())
        .arg(python_script("acked_producer.py"))
        .args([&node.addr, topic, &PARTITIONS.to_string(), "idempotent"])
        .stdout(std::fs::File::create(&acks_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();

    let log_path = dir.path().join("keel.log");
    let retried_batches = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(DUPLICATE_LOG_LINE)
            .count()
    };
    let mut kills = 0;
    while kills < KILL_ROUNDS || (kills < MAX_KILL_ROUNDS && retried_batches() == 0) {
        // After a restart the producer first flushes what it queued while the broker
        // was down; kill only once it streams again, so requests are in flight.
        let acked = record_lines(&acks_path).len();
        wait_for_acks(
            &acks_path,
            acked + ACKS_BETWEEN_KILLS,
            &mut producer,
            &stderr_path,
        );
        std::thread::sleep(STREAMING_BEFORE_KILL);
        node.kill9();
        std::thread::sleep(Duration::from_millis(300));
        node.restart().unwrap();
        kills += 1;
    }
    let acked = record_lines(&acks_path).len();
    wait_for_acks(
        &acks_path,
        acked + ACKS_BETWEEN_KILLS,
        &mut producer,
        &stderr_path,
    );
    let _ = producer.kill();
    let _ = producer.wait();

    let acked = record_lines(&acks_path);
    // Fails if an offset is read twice.
    let dump = TopicDump::read(&node.addr, topic, PARTITIONS).unwrap();
    let problems = dump.check_acked_exactly_once(&acked);
    assert!(
        problems.is_empty(),
        "acknowledged records not each once at their offsets: {problems:#?}"
    );
    let stored = dump.at;
    let failures = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        !failures.contains("failed "),
        "the idempotent producer failed deliveries:\n{failures}"
    );
    // Evidence that the kills cut the producer mid-stream: batches written before a
    // kill were retried after the restart and recognised as duplicates.
    let duplicates = retried_batches();
    eprintln!(
        "{} acknowledged records ({} in the log), each once, after {kills} SIGKILLs; \
         {duplicates} retried batches answered as duplicates",
        acked.len(),
        stored.len()
    );
    assert!(
        duplicates > 0,
        "no kill caught a written batch before its acknowledgement: nothing was retried"
    );
}

/// A retry of one of a producer's recent batches — same producer id, epoch and
/// sequences — is answered with success and the offset of the original, and nothing
/// is appended: on the same connection, after a SIGKILL and restart (state rebuilt
/// from the log), and after a clean restart (state from the snapshot).
#[test]
fn retried_idempotent_batch_is_answered_with_its_original_offset() {
    let mut node = KeelNode::start(&[]).unwrap();
    let topic = "dedup";
    let batch = new_producer(&node.addr, topic);

    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "dedup").await.unwrap();
        assert_eq!(produce(&mut c, topic, &batch(0)).await, (0, offset_of(0)));
        assert_eq!(produce(&mut c, topic, &batch(1)).await, (0, offset_of(1)));
        assert_eq!(
            produce(&mut c, topic, &batch(0)).await,
            (0, offset_of(0)),
            "retry of an older batch"
        );
        assert_eq!(
            produce(&mut c, topic, &batch(1)).await,
            (0, offset_of(1)),
            "retry of the last batch"
        );
        assert_eq!(
            end_offset(&mut c, topic).await,
            offset_of(2),
            "nothing appended"
        );
    });

    node.kill9();
    node.restart().unwrap();
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "dedup").await.unwrap();
        assert_eq!(
            produce(&mut c, topic, &batch(1)).await,
            (0, offset_of(1)),
            "retry after SIGKILL and restart"
        );
        assert_eq!(produce(&mut c, topic, &batch(0)).await, (0, offset_of(0)));
        assert_eq!(
            end_offset(&mut c, topic).await,
            offset_of(2),
            "nothing appended"
        );
        assert_eq!(
            produce(&mut c, topic, &batch(2)).await,
            (0, offset_of(2)),
            "the next sequence continues after the restart"
        );
    });

    node.restart().unwrap(); // SIGTERM: the producer state comes from the snapshot
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "dedup").await.unwrap();
        assert_eq!(
            produce(&mut c, topic, &batch(2)).await,
            (0, offset_of(2)),
            "retry after a clean restart"
        );
        assert_eq!(
            end_offset(&mut c, topic).await,
            offset_of(3),
            "nothing appended"
        );
    });
}

/// Like Kafka, keel forgets a producer whose last batch is older than
/// producer.id.expiration.ms (here: its timestamps are from 2023, and a restart
/// expires it). Its next batch continues its sequence; Kafka accepts any sequence
/// from a producer it does not know (KIP-360) instead of failing the producer with
/// OUT_OF_ORDER_SEQUENCE_NUMBER.
#[test]
fn producer_forgotten_by_expiration_continues_its_sequence() {
    const OLD_TIMESTAMP_MS: i64 = 1_700_000_000_000;
    let mut node = KeelNode::start(&[]).unwrap();
    let topic = "expired";
    let (pid, epoch) = block_on(async {
        create_topic(&node.addr, topic, 1).await;
        let mut c = KafkaClient::connect(&node.addr, "expired").await.unwrap();
        init_producer_id(&mut c).await
    });
    let batch = |n: usize| {
        BatchBuilder::new(RECORDS_PER_BATCH, 16)
            .producer(pid, epoch, (n * RECORDS_PER_BATCH) as i32)
            .timestamp(OLD_TIMESTAMP_MS)
            .fill(n as u8)
            .build()
    };
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "expired").await.unwrap();
        assert_eq!(produce(&mut c, topic, &batch(0)).await, (0, 0));
    });
    node.restart().unwrap();
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "expired").await.unwrap();
        assert_eq!(
            produce(&mut c, topic, &batch(1)).await,
            (0, RECORDS_PER_BATCH as i64),
            "the expired producer's next batch is accepted"
        );
    });
}

/// A batch refused before its append (here NOT_ENOUGH_REPLICAS while the ISR is below
/// `min.insync.replicas`) leaves a gap its pipelined successor arrives over once the
/// condition has cleared. That successor gets the refusal's retriable error, not
/// OUT_OF_ORDER_SEQUENCE_NUMBER (which makes librdkafka bump its epoch and resend
/// written messages as new ones); the client's in-order retry then writes both. A gap
/// no refusal explains is still out of order.
#[test]
fn gap_over_a_refused_batch_is_retriable_not_out_of_order() {
    // Without the new leader's grace, so that only the refusal explains a gap.
    let node = KeelNode::start(&["--set", "producer.sequence.gap.grace.ms=0"]).unwrap();
    let topic = "gap";
    let batch = new_producer(&node.addr, topic);
    let set_min_insync = |n: &str| {
        let out = Command::new(keel_tests::node::keel_binary())
            .args([
                "topics",
                "--bootstrap-server",
                &node.addr,
                "alter",
                "--topic",
                topic,
            ])
            .args(["--config", &format!("min.insync.replicas={n}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "alter: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Waits until an acks=all write without a producer id gets `code` (the config
    // change has reached the partition); such writes leave no producer state.
    let wait_for_acks_all = |code: i16| {
        block_on(async {
            let mut c = KafkaClient::connect(&node.addr, "gap-probe").await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let probe = BatchBuilder::new(1, 4).timestamp(now_ms()).build();
                let (got, _) = produce(&mut c, topic, &probe).await;
                if got == code {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "acks=all probe never got {code}, last {got}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // One runtime for the producer's connection, which lives across the steps.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt
        .block_on(KafkaClient::connect(&node.addr, "gap"))
        .unwrap();
    assert_eq!(rt.block_on(produce(&mut c, topic, &batch(0))), (0, 0));
    set_min_insync("2");
    wait_for_acks_all(NOT_ENOUGH_REPLICAS);
    let (code, _) = rt.block_on(produce(&mut c, topic, &batch(1)));
    assert_eq!(
        code, NOT_ENOUGH_REPLICAS,
        "batch 1 refused below min.insync.replicas"
    );
    set_min_insync("1");
    wait_for_acks_all(0);
    let (code, _) = rt.block_on(produce(&mut c, topic, &batch(2)));
    assert_eq!(
        code, NOT_ENOUGH_REPLICAS,
        "batch 2 skips the refused batch 1: retriable, not out of order"
    );
    // The client's retry, in order. The probes took one offset each.
    let (code, at1) = rt.block_on(produce(&mut c, topic, &batch(1)));
    assert_eq!(code, 0, "batch 1 retried");
    let (code, at2) = rt.block_on(produce(&mut c, topic, &batch(2)));
    assert_eq!(
        (code, at2),
        (0, at1 + offset_of(1)),
        "batch 2 retried after it"
    );
    let (code, _) = rt.block_on(produce(&mut c, topic, &batch(4)));
    assert_eq!(
        code, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap no refusal explains (batch 3 was never sent)"
    );
    assert_eq!(
        rt.block_on(produce(&mut c, topic, &batch(2))),
        (0, at2),
        "the last batch is still a duplicate"
    );
}

/// A leader that took up its leadership moments ago answers a sequence gap
/// NOT_LEADER_OR_FOLLOWER: the skipped batch may still be waiting at the previous
/// leader (an isolated one holds an acks=all request until it times out), and the
/// client resends it, then the gap's batch, in order. Here the leadership is new
/// because the node restarted. Once the leadership is older than
/// `producer.sequence.gap.grace.ms`, a gap is out of order, as in Kafka.
#[test]
fn gap_just_after_a_leadership_change_is_retriable_not_out_of_order() {
    const GRACE_MS: u64 = 10_000;
    let grace = format!("producer.sequence.gap.grace.ms={GRACE_MS}");
    let mut node = KeelNode::start(&["--set", &grace]).unwrap();
    let topic = "new-leader";
    let batch = new_producer(&node.addr, topic);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let produce_on_new = |node: &KeelNode, n: usize| {
        rt.block_on(async {
            let mut c = KafkaClient::connect(&node.addr, topic).await.unwrap();
            produce(&mut c, topic, &batch(n)).await
        })
    };
    assert_eq!(produce_on_new(&node, 0), (0, offset_of(0)));
    node.kill9();
    node.restart().unwrap();
    let led_from = Instant::now();
    let (code, _) = produce_on_new(&node, 2);
    assert!(
        led_from.elapsed() < Duration::from_millis(GRACE_MS),
        "the gap must reach the leader within the grace"
    );
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "batch 2 skips batch 1, which may still be on its way"
    );
    assert_eq!(
        produce_on_new(&node, 1),
        (0, offset_of(1)),
        "batch 1 resent"
    );
    assert_eq!(produce_on_new(&node, 2), (0, offset_of(2)), "then batch 2");
    std::thread::sleep(Duration::from_millis(GRACE_MS).saturating_sub(led_from.elapsed()));
    let (code, _) = produce_on_new(&node, 4);
    assert_eq!(
        code, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap after the grace (batch 3 was never sent)"
    );
}

/// Creates `topic` (one partition) and a producer id; returns its batch `n`: sequences
/// 5n..5n+4, distinct contents. Timestamps are current: like Kafka, keel forgets
/// producers whose last batch is older than producer.id.expiration.ms, and a forgotten
/// producer's retry is not a duplicate.
fn new_producer(addr: &str, topic: &str) -> impl Fn(usize) -> Vec<u8> {
    let (pid, epoch) = block_on(async {
        create_topic(addr, topic, 1).await;
        let mut c = KafkaClient::connect(addr, topic).await.unwrap();
        init_producer_id(&mut c).await
    });
    let created_ms = now_ms();
    move |n| {
        BatchBuilder::new(RECORDS_PER_BATCH, 16)
            .producer(pid, epoch, (n * RECORDS_PER_BATCH) as i32)
            .timestamp(created_ms)
            .fill(n as u8)
            .build()
    }
}

/// The offset batch `n` of a producer takes when its batches are the only ones.
fn offset_of(n: usize) -> i64 {
    (n * RECORDS_PER_BATCH) as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn create_topic(addr: &str, topic: &str, partitions: i32) {
    let mut c = KafkaClient::connect(addr, "idempotence-admin")
        .await
        .unwrap();
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(topic.to_string().into()))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(30_000);
    let resp = c.call(&req, 5).await.unwrap();
    assert_eq!(resp.topics[0].error_code, 0, "create {topic}");
}

async fn init_producer_id(c: &mut KafkaClient) -> (i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp = c.call(&req, 4).await.unwrap();
    assert_eq!(resp.error_code, 0, "InitProducerId");
    (resp.producer_id.0, resp.producer_epoch)
}

/// Produces one batch to partition 0 with acks=all: (error code, base offset).
async fn produce(c: &mut KafkaClient, topic: &str, batch: &[u8]) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(ACKS_ALL)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(topic.to_string().into()))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.to_vec().into()))])]);
    let resp = c.call(&req, PRODUCE_VERSION).await.unwrap();
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn end_offset(c: &mut KafkaClient, topic: &str) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(topic.to_string().into()))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(LATEST_TIMESTAMP)])]);
    let resp = c.call(&req, 7).await.unwrap();
    let p = &resp.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets");
    p.offset
}
