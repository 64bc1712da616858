//! Unmodified Kafka clients round-trip records through a single keel node: each
//! creates a topic, produces 10,000 keyed records with headers to 3 partitions with
//! acks=all, and reads them all back by partition, intact, with their offsets, and
//! from an offset in the middle of a batch. Clients: kcat, confluent-kafka (Python),
//! kafka-python, kafkajs. Consumers assign partitions themselves (no consumer group).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_tests::clients::{self, python, python_script, run, ClientScript};
use keel_tests::KeelNode;

const RECORDS: usize = 10_000;
const PARTITIONS: usize = 3;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn confluent_kafka_python_round_trips_10k_keyed_records_with_headers() {
    let node = KeelNode::start(&[]).unwrap();
    let out = run(
        Command::new(python().unwrap())
            .arg(python_script("confluent_roundtrip.py"))
            .args([&node.addr, "confluent-roundtrip", &RECORDS.to_string()]),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["read"], RECORDS, "{summary}");
}

/// kafka-python 3.0.12 with its defaults (idempotent producer, acks=all); reads with
/// `assign` + `seek`.
#[test]
fn kafka_python_round_trips_10k_keyed_records_with_headers() {
    let node = KeelNode::start(&[]).unwrap();
    let summary = ClientScript::KafkaPython
        .run(
            "roundtrip",
            &node.addr,
            "kafka-python-roundtrip",
            RECORDS,
            CLIENT_TIMEOUT,
        )
        .unwrap();
    assert_eq!(summary["read"], RECORDS, "{summary}");
}

/// kafkajs 2.2.4 (not idempotent: its default); reads through the consumer's fetch
/// path with manual assignment, since its consumer needs a group coordinator.
#[test]
fn kafkajs_round_trips_10k_keyed_records_with_headers() {
    let node = KeelNode::start(&[]).unwrap();
    let summary = ClientScript::Kafkajs
        .run(
            "roundtrip",
            &node.addr,
            "kafkajs-roundtrip",
            RECORDS,
            CLIENT_TIMEOUT,
        )
        .unwrap();
    assert_eq!(summary["read"], RECORDS, "{summary}");
}

/// kafkajs with `idempotent: true` (InitProducerId, sequenced batches).
#[test]
fn kafkajs_idempotent_producer_round_trips_10k_keyed_records_with_headers() {
    let node = KeelNode::start(&[]).unwrap();
    let summary = ClientScript::Kafkajs
        .run(
            "idempotent",
            &node.addr,
            "kafkajs-idempotent",
            RECORDS,
            CLIENT_TIMEOUT,
        )
        .unwrap();
    assert_eq!(summary["read"], RECORDS, "{summary}");
    assert_eq!(summary["idempotent"], true, "{summary}");
}

/// kcat produces through topic auto-creation (`num.partitions=3`), one producer per
/// partition since records of one partition keep their order; it reads back with a
/// format string that prints key, value, headers, timestamp and offset.
#[test]
fn kcat_round_trips_10k_keyed_records_with_headers() {
    let kcat = clients::kcat().unwrap();
    let node = KeelNode::start(&["--set", "num.partitions=3"]).unwrap();
    let topic = "kcat-roundtrip";
    let start_ms = now_ms();
    for p in 0..PARTITIONS {
        let mut child = Command::new(&kcat)
            .args([
                "-P",
                "-b",
                &node.addr,
                "-t",
                topic,
                "-p",
                &p.to_string(),
                "-K",
                ":",
            ])
            .args(["-H", "source=kcat", "-H", &format!("partition={p}")])
            .args(["-X", "acks=all", "-X", "linger.ms=5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            let mut buf = String::new();
            for i in (p..RECORDS).step_by(PARTITIONS) {
                buf.push_str(&format!("k{i}:v{i}-{}\n", "x".repeat(i % 40)));
            }
            stdin.write_all(buf.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kcat -P failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let end_ms = now_ms();

    let mut total = 0;
    for p in 0..PARTITIONS {
        let out = run(
            Command::new(&kcat)
                .args([
                    "-C",
                    "-b",
                    &node.addr,
                    "-t",
                    topic,
                    "-p",
                    &p.to_string(),
                    "-o",
                    "beginning",
                    "-e",
                ])
                .args(["-f", "%o|%k|%s|%T|%h\n"]),
            CLIENT_TIMEOUT,
        )
        .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let expected: Vec<usize> = (p..RECORDS).step_by(PARTITIONS).collect();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected.len(), "partition {p} record count");
        for (offset, (line, i)) in lines.iter().zip(&expected).enumerate() {
            let f: Vec<&str> = line.splitn(5, '|').collect();
            assert_eq!(f[0], offset.to_string(), "offsets are dense from 0");
            assert_eq!(f[1], format!("k{i}"));
            assert_eq!(f[2], format!("v{i}-{}", "x".repeat(i % 40)));
            let ts: i64 = f[3].parse().unwrap();
            assert!(
                ts >= start_ms - 1000 && ts <= end_ms + 1000,
                "timestamp {ts} outside the run"
            );
            let headers: BTreeSet<&str> = f[4].split(',').collect();
            assert_eq!(
                headers,
                BTreeSet::from(["source=kcat", &*format!("partition={p}")]),
                "headers"
            );
        }
        total += lines.len();
    }
    assert_eq!(total, RECORDS);

    // Reading from the middle of a batch: the broker returns the whole batch and the
    // client skips to the offset asked for.
    let out = run(
        Command::new(&kcat)
            .args([
                "-C", "-b", &node.addr, "-t", topic, "-p", "1", "-o", "7", "-c", "1", "-e",
            ])
            .args(["-f", "%o|%k\n"]),
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("7|k{}", 1 + 7 * PARTITIONS)
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
