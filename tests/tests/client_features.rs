//! Client × feature checks behind docs/COMPATIBILITY.md: each unmodified client
//! produces with acks=0, 1 and all; creates, describes, alters and deletes topics; and
//! looks offsets up by timestamp (ListOffsets). The round trips are in
//! client_roundtrip.rs, idempotence under broker kills in idempotence.rs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::Decodable;
use keel::cli::client::KafkaClient;
use keel_tests::clients::{self, block_on, run, ClientScript};
use keel_tests::KeelNode;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Records per acks setting, and records produced for the timestamp lookups.
const FEATURE_RECORDS: usize = 1_000;

/// Runs `mode` of `client` against a fresh node.
fn feature(client: ClientScript, mode: &str) -> serde_json::Value {
    let node = KeelNode::start(&[]).unwrap();
    let topic = format!("{mode}-topic");
    client
        .run(mode, &node.addr, &topic, FEATURE_RECORDS, CLIENT_TIMEOUT)
        .unwrap()
}

fn assert_acks(summary: serde_json::Value) {
    assert_eq!(summary["read"], 3 * FEATURE_RECORDS, "{summary}");
}

fn assert_admin(summary: serde_json::Value) {
    for step in ["described", "altered", "deleted"] {
        assert_eq!(summary[step], true, "{step}: {summary}");
    }
}

fn assert_by_time(summary: serde_json::Value) {
    assert!(summary["lookups"].as_u64().unwrap_or(0) >= 4, "{summary}");
}

#[test]
fn kafka_python_produces_with_acks_0_1_and_all() {
    assert_acks(feature(ClientScript::KafkaPython, "acks"));
}

#[test]
fn kafkajs_produces_with_acks_0_1_and_all() {
    assert_acks(feature(ClientScript::Kafkajs, "acks"));
}

#[test]
fn confluent_kafka_produces_with_acks_0_1_and_all() {
    assert_acks(feature(ClientScript::ConfluentFeatures, "acks"));
}

#[test]
fn kafka_python_creates_describes_alters_and_deletes_a_topic() {
    assert_admin(feature(ClientScript::KafkaPython, "admin"));
}

/// kafkajs alters with AlterConfigs (not incremental), which replaces every override.
#[test]
fn kafkajs_creates_describes_alters_and_deletes_a_topic() {
    assert_admin(feature(ClientScript::Kafkajs, "admin"));
}

/// Also lists all topics, which librdkafka asks for with a padded Metadata request.
#[test]
fn confluent_kafka_creates_describes_alters_and_deletes_a_topic() {
    assert_admin(feature(ClientScript::ConfluentFeatures, "admin"));
}

#[test]
fn kafka_python_looks_up_offsets_by_timestamp() {
    assert_by_time(feature(ClientScript::KafkaPython, "by-time"));
}

#[test]
fn kafkajs_looks_up_offsets_by_timestamp() {
    assert_by_time(feature(ClientScript::Kafkajs, "by-time"));
}

#[test]
fn confluent_kafka_looks_up_offsets_by_timestamp() {
    assert_by_time(feature(ClientScript::ConfluentFeatures, "by-time"));
}

/// Pipes `lines` into `kcat -P` for partition 0 of `topic` with extra `-X` settings.
fn kcat_produce(addr: &str, topic: &str, lines: &[String], settings: &[&str]) {
    let mut cmd = Command::new(clients::kcat().unwrap());
    cmd.args(["-P", "-b", addr, "-t", topic, "-p", "0"]);
    for s in settings {
        cmd.args(["-X", s]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all((lines.join("\n") + "\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "kcat -P {settings:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kcat -C` of partition 0 from `start` (a kcat `-o` value) to the end, as
/// `offset|value|timestamp` lines.
fn kcat_consume(addr: &str, topic: &str, start: &str) -> Vec<String> {
    let out = run(
        Command::new(clients::kcat().unwrap())
            .args(["-C", "-b", addr, "-t", topic, "-p", "0", "-o", start, "-e"])
            .args(["-f", "%o|%s|%T\n"]),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// acks=all also with `enable.idempotence=true` (librdkafka 2.0.2's idempotent producer).
#[test]
fn kcat_produces_with_acks_0_1_and_all() {
    let node = KeelNode::start(&["--set", "num.partitions=1"]).unwrap();
    let topic = "kcat-acks";
    let mut expected = Vec::new();
    for (acks, extra) in [
        ("0", None),
        ("1", None),
        ("all", None),
        ("all", Some("enable.idempotence=true")),
    ] {
        let lines: Vec<String> = (0..FEATURE_RECORDS)
            .map(|i| format!("acks={acks}-{}-{i}", extra.is_some()))
            .collect();
        let acks_setting = format!("acks={acks}");
        let mut settings = vec![acks_setting.as_str()];
        settings.extend(extra);
        kcat_produce(&node.addr, topic, &lines, &settings);
        expected.extend(lines);
    }
    let read: Vec<(i64, String)> = kcat_consume(&node.addr, topic, "beginning")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, '|').collect();
            (f[0].parse().unwrap(), f[1].to_string())
        })
        .collect();
    assert_eq!(read.len(), expected.len(), "record count");
    for (i, ((offset, value), want)) in read.iter().zip(&expected).enumerate() {
        assert_eq!(*offset, i as i64, "offsets are dense");
        assert_eq!(value, want, "record {i}");
    }
}

/// `kcat -o s@<ms>` starts at the first record with a timestamp at or after `ms`
/// (ListOffsets by timestamp).
#[test]
fn kcat_starts_consuming_at_a_timestamp() {
    const HALF: usize = 100;
    let node = KeelNode::start(&["--set", "num.partitions=1"]).unwrap();
    let topic = "kcat-by-time";
    let before: Vec<String> = (0..HALF).map(|i| format!("before-{i}")).collect();
    let after: Vec<String> = (0..HALF).map(|i| format!("after-{i}")).collect();
    kcat_produce(&node.addr, topic, &before, &["acks=all"]);
    std::thread::sleep(Duration::from_millis(20));
    let split_ms = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    kcat_produce(&node.addr, topic, &after, &["acks=all"]);

    let read = kcat_consume(&node.addr, topic, &format!("s@{split_ms}"));
    assert_eq!(read.len(), HALF, "records from the timestamp on: {read:?}");
    let first: Vec<&str> = read[0].splitn(3, '|').collect();
    assert_eq!(first[0], HALF.to_string(), "first offset at the timestamp");
    assert_eq!(first[1], "after-0");
    assert!(first[2].parse::<i64>().unwrap() >= split_ms);
}

/// librdkafka 2.x asks for the metadata of all topics (Metadata v9+, null topic
/// array) with four bytes reserved for the array count, three of them left as padding
/// after the body. Apache Kafka ignores bytes after a request body; so does keel.
#[test]
fn metadata_request_with_trailing_padding_is_answered() {
    const METADATA_KEY: i16 = 3;
    const METADATA_VERSION: i16 = 12;
    const CORRELATION_ID: i32 = 7;
    let node = KeelNode::start(&[]).unwrap();
    block_on(async {
        let mut c = KafkaClient::connect(&node.addr, "padded").await.unwrap();
        let create = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName("listed".to_string().into()))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(30_000);
        assert_eq!(c.call(&create, 5).await.unwrap().topics[0].error_code, 0);

        let mut frame = BytesMut::new();
        frame.put_i16(METADATA_KEY);
        frame.put_i16(METADATA_VERSION);
        frame.put_i32(CORRELATION_ID);
        frame.put_i16(6);
        frame.put_slice(b"padded");
        frame.put_u8(0); // no tagged fields in the header
                         // The body librdkafka 2.16 sends: a four-byte slot for the topic array count
                         // holding varint 0 (null) and three zero bytes, then
                         // allow_auto_topic_creation = 1, include_topic_authorized_operations = 0 and
                         // no tagged fields. A Kafka parser reads the null array, two false booleans and
                         // no tagged fields from the first four bytes and ignores the other three.
        frame.put_slice(&[0, 0, 0, 0, 1, 0, 0]);
        let mut resp = c.send_raw(&frame).await.unwrap();
        let header = ResponseHeader::decode(&mut resp, 1).unwrap();
        assert_eq!(header.correlation_id, CORRELATION_ID);
        let metadata = MetadataResponse::decode(&mut resp, METADATA_VERSION).unwrap();
        let names: Vec<String> = metadata
            .topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect();
        assert_eq!(names, vec!["listed".to_string()], "all topics listed");
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
