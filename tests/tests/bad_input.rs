//! Bad input never hurts the broker (DESIGN.md §5 rule 5). Every test drives a real
//! `keel server` over real sockets with something a correct client would never send
//! — malformed frames, oversized requests, unknown APIs and versions, corrupt or lying
//! record batches, invalid topic names, out-of-range fields, array counts that claim
//! billions of elements, generated garbage and mutated valid requests — and checks
//! three things: the answer is the Kafka error code for it (or a closed connection,
//! where Kafka closes it), the broker still serves a normal client afterwards, and
//! the log stays valid: batches produced before and after read back intact at dense
//! offsets, also after a restart.
//!
//! The randomized test prints its seed; `KEEL_FUZZ_SEED=<seed>` replays a run and
//! `KEEL_FUZZ_SECS=<n>` runs it longer than the default.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, DeleteTopicsRequest,
    FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use keel::cli::client::KafkaClient;
use keel_storage::batch::{compute_crc, BatchIter};
use keel_storage::testing::BatchBuilder;
use keel_tests::clients::block_on;
use keel_tests::KeelNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Kafka error codes the tests expect.
const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
const INVALID_RECORD: i16 = 87;

/// How long a test waits for the broker to answer or close a connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Produce versions the tests use: the first the codec writes, and the newest served.
const PRODUCE_V3: i16 = 3;
const PRODUCE_V11: i16 = 11;
/// Fetch version that names topics (v13+ use topic ids).
const FETCH_BY_NAME: i16 = 12;
/// Growth of the broker's resident set that a test tolerates after hostile input.
const RSS_GROWTH_LIMIT_KIB: u64 = 256 * 1024;

// ---------------------------------------------------------------------------------
// A normal client: typed requests through `KafkaClient::call`.
// ---------------------------------------------------------------------------------

async fn connect(addr: &str) -> KafkaClient {
    KafkaClient::connect(addr, "bad-input-test").await.unwrap()
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn create_topic(addr: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        );
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(30_000);
    let resp = connect(addr).await.call(&req, 7).await.unwrap();
    resp.topics[0].error_code
}

fn produce_request(
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    acks: i16,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(records)])])
}

/// Produces `records` to one partition with acks=all and returns its partition answer.
async fn produce(
    c: &mut KafkaClient,
    topic: &str,
    partition: i32,
    records: &[u8],
) -> PartitionProduceResponse {
    produce_acks(
        c,
        topic,
        partition,
        Some(Bytes::copy_from_slice(records)),
        -1,
    )
    .await
}

async fn produce_acks(
    c: &mut KafkaClient,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    acks: i16,
) -> PartitionProduceResponse {
    let resp = c
        .call(
            &produce_request(topic, partition, records, acks),
            PRODUCE_V11,
        )
        .await
        .unwrap();
    resp.responses[0].partition_responses[0].clone()
}

fn fetch_request(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(16 * 1024 * 1024)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(16 * 1024 * 1024)])])
}

/// (error code, high watermark, record bytes) of one partition's fetch.
async fn fetch(c: &mut KafkaClient, topic: &str, partition: i32, offset: i64) -> (i16, i64, Bytes) {
    let resp = c
        .call(&fetch_request(topic, partition, offset), FETCH_BY_NAME)
        .await
        .unwrap();
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.clone().unwrap_or_default(),
    )
}

async fn list_offset(
    c: &mut KafkaClient,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> (i16, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_current_leader_epoch(-1)
                .with_timestamp(timestamp)])]);
    let resp = c.call(&req, 7).await.unwrap();
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// A well-formed batch of `records` records whose values carry `fill`, stamped now
/// (an old timestamp would let retention delete it under the test's feet).
fn good_batch(records: usize, fill: u8) -> Vec<u8> {
    BatchBuilder::new(records, 16)
        .fill(fill)
        .timestamp(now_ms())
        .build()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Recomputes a batch's CRC after a test changed fields it covers.
fn reseal(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// What one partition should hold: the batches acknowledged so far, in order.
struct Ledger {
    topic: String,
    partition: i32,
    batches: Vec<Vec<u8>>,
    next_fill: u8,
}

impl Ledger {
    fn new(topic: &str, partition: i32) -> Self {
        Ledger {
            topic: topic.to_string(),
            partition,
            batches: Vec::new(),
            next_fill: 1,
        }
    }

    /// Produces a fresh good batch and remembers it; asserts it landed at the log end.
    async fn produce_good(&mut self, addr: &str) {
        let batch = good_batch(3, self.next_fill);
        self.next_fill = self.next_fill.wrapping_add(1);
        let mut c = connect(addr).await;
        let resp = produce(&mut c, &self.topic, self.partition, &batch).await;
        assert_eq!(
            resp.error_code, NONE,
            "good produce to {}: {resp:?}",
            self.topic
        );
        assert_eq!(
            resp.base_offset,
            self.next_offset(),
            "good produce lands at the log end"
        );
        self.batches.push(batch);
    }

    fn next_offset(&self) -> i64 {
        self.batches.iter().map(|b| records_in(b)).sum()
    }

    /// Reads the whole partition back: the same batches, bytes intact, offsets dense
    /// from 0, and nothing else.
    async fn verify(&self, addr: &str) {
        let mut c = connect(addr).await;
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut offset = 0;
        loop {
            let (error, hw, records) = fetch(&mut c, &self.topic, self.partition, offset).await;
            assert_eq!(error, NONE, "fetch {} at {offset}", self.topic);
            assert_eq!(hw, self.next_offset(), "high watermark of {}", self.topic);
            if records.is_empty() {
                break;
            }
            for item in BatchIter::new(&records) {
                let (header, bytes) = item.unwrap();
                if header.base_offset < offset {
                    continue; // a batch before the fetch offset, sent whole
                }
                assert_eq!(
                    header.base_offset, offset,
                    "offsets of {} are dense",
                    self.topic
                );
                offset = header.next_offset();
                stored.push(bytes.to_vec());
            }
        }
        assert_eq!(
            stored.len(),
            self.batches.len(),
            "batches in {}",
            self.topic
        );
        for (i, (got, want)) in stored.iter().zip(&self.batches).enumerate() {
            // The leader rewrites base offset and leader epoch; everything from the
            // magic byte on (CRC, attributes, records) must be as produced.
            assert_eq!(
                &got[16..],
                &want[16..],
                "batch {i} of {} intact",
                self.topic
            );
        }
    }
}

fn records_in(batch: &[u8]) -> i64 {
    i64::from(i32::from_be_bytes([
        batch[57], batch[58], batch[59], batch[60],
    ]))
}

/// The broker answers ApiVersions and Metadata on a fresh connection.
async fn assert_serves(addr: &str) {
    let mut c = connect(addr).await;
    let versions = c.call(&ApiVersionsRequest::default(), 3).await.unwrap();
    assert_eq!(versions.error_code, NONE);
    let meta = c
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    assert!(!meta.brokers.is_empty(), "metadata lists the broker");
}

fn rss_kib(node: &KeelNode) -> u64 {
    let pid = node.pid().expect("broker running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

// ---------------------------------------------------------------------------------
// Raw frames.
// ---------------------------------------------------------------------------------

/// What the broker did with a hand-made frame.
#[derive(Debug)]
enum Outcome {
    /// It closed the connection.
    Closed,
    /// It answered with this frame (size prefix stripped).
    Answered(Bytes),
}

/// A request header (v1, or v2 for flexible versions) for `key`/`version`.
fn header(key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut b = BytesMut::new();
    let header_version = ApiKey::try_from(key)
        .map(|k| k.request_header_version(version))
        .unwrap_or(1);
    b.put_i16(key);
    b.put_i16(version);
    b.put_i32(correlation_id);
    b.put_i16(4);
    b.put_slice(b"evil");
    if header_version >= 2 {
        b.put_u8(0); // no tagged fields
    }
    b
}

/// A frame: size prefix, then `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A typed request encoded as a frame body (header + body), without sending it.
fn encode_request<R: Request>(req: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("evil")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, R::header_version(version))
        .unwrap();
    req.encode(&mut body, version).unwrap();
    body.to_vec()
}

/// Reads one response frame, or notices the connection closing.
async fn read_outcome(stream: &mut TcpStream) -> Outcome {
    let read = async {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).await.is_err() {
            return Outcome::Closed;
        }
        let size = i32::from_be_bytes(size);
        assert!(size >= 4, "response size {size}");
        let mut body = vec![0u8; size as usize];
        if stream.read_exact(&mut body).await.is_err() {
            return Outcome::Closed;
        }
        Outcome::Answered(Bytes::from(body))
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .expect("the broker neither answered nor closed the connection")
}

/// Sends `bytes` as they are on a new connection and reports what the broker did.
async fn exchange(addr: &str, bytes: &[u8]) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The broker may close before it has read everything; that is an answer too.
    let _ = stream.write_all(bytes).await;
    read_outcome(&mut stream).await
}

async fn assert_closed(addr: &str, what: &str, bytes: &[u8]) {
    match exchange(addr, bytes).await {
        Outcome::Closed => {}
        Outcome::Answered(frame) => panic!("{what}: expected a closed connection, got {frame:?}"),
    }
}

/// A frame the broker answers; returns the body after the correlation id.
async fn assert_answered(addr: &str, what: &str, bytes: &[u8], correlation_id: i32) -> Bytes {
    match exchange(addr, bytes).await {
        Outcome::Answered(mut frame) => {
            assert_eq!(frame.get_i32(), correlation_id, "{what}: correlation id");
            frame
        }
        Outcome::Closed => panic!("{what}: expected an answer, the connection was closed"),
    }
}

/// Varint as the compact (flexible) encodings write it.
fn put_uvarint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

// ---------------------------------------------------------------------------------
// Frame-level garbage.
// ---------------------------------------------------------------------------------

#[test]
fn malformed_frames_close_the_connection_and_the_broker_serves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    let addr = node.addr.clone();
    let mut ledger = Ledger::new("frames", 0);
    block_on(async {
        assert_eq!(create_topic(&addr, "frames", 1, &[]).await, NONE);
        ledger.produce_good(&addr).await;

        // Connections that end inside the size prefix or inside a frame.
        for partial in [&[0u8][..], &[0, 0], &[0, 0, 0, 20, 0, 3, 0, 1]] {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(partial).await.unwrap();
            drop(s);
        }

        // Sizes that are negative, too small for a header, or absurd.
        for size in [-1i32, i32::MIN, 0, 1, 9, i32::MAX, 1 << 30] {
            let mut bytes = size.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 16]);
            assert_closed(&addr, &format!("frame size {size}"), &bytes).await;
        }

        // A header cut short: the client id claims more bytes than the frame has.
        let mut h = BytesMut::new();
        h.put_i16(3);
        h.put_i16(1);
        h.put_i32(1);
        h.put_i16(200);
        h.put_slice(b"short");
        assert_closed(&addr, "client id past the frame", &framed(&h)).await;
        // A client id of negative length other than -1 (null).
        let mut h = BytesMut::new();
        h.put_i16(3);
        h.put_i16(1);
        h.put_i32(1);
        h.put_i16(-7);
        assert_closed(&addr, "negative client id length", &framed(&h)).await;
        // A flexible header whose tagged fields run past the frame.
        let mut h = header(3, 12, 1);
        h.truncate(h.len() - 1);
        h.put_u8(3); // three tagged fields follow…
        h.put_u8(0); // …tag 0…
        h.put_u8(100); // …of 100 bytes that are not there
        assert_closed(&addr, "tagged fields past the frame", &framed(&h)).await;

        // Bodies of garbage, and bodies cut short, for every API the broker serves.
        let mut rng = Rng::new(7);
        for (key, version) in served_api_versions() {
            let mut body = header(key, version, 9);
            body.put_i32(0x3fff_fff0); // an array or string far past the frame
            body.extend((0..32).map(|_| rng.next() as u8 | 0x80));
            assert_closed(
                &addr,
                &format!("garbage body for {key} v{version}"),
                &framed(&body),
            )
            .await;
        }
        let valid = encode_request(
            &produce_request("frames", 0, Some(Bytes::from(good_batch(2, 9))), -1),
            PRODUCE_V11,
            5,
        );
        for cut in [valid.len() - 1, valid.len() - 30, 30, 12] {
            assert_closed(
                &addr,
                &format!("produce cut at {cut}"),
                &framed(&valid[..cut]),
            )
            .await;
        }
        let valid_v3 = encode_request(
            &produce_request("frames", 0, Some(Bytes::from(good_batch(2, 9))), -1),
            PRODUCE_V3,
            5,
        );
        for cut in [valid_v3.len() - 1, 40] {
            assert_closed(
                &addr,
                &format!("produce v3 cut at {cut}"),
                &framed(&valid_v3[..cut]),
            )
            .await;
        }
        // A records field whose length claims more than the frame holds.
        let mut lying = valid_v3.clone();
        let batch_len = good_batch(2, 9).len() as i32;
        let at = lying.len() - batch_len as usize - 4;
        assert_eq!(&lying[at..at + 4], &batch_len.to_be_bytes());
        lying[at..at + 4].copy_from_slice(&(batch_len + 1000).to_be_bytes());
        assert_closed(&addr, "records length past the frame", &framed(&lying)).await;

        // Unknown API keys, known APIs the broker does not serve, versions it does not serve.
        for key in [-1i16, 99, 1000, i16::MAX, i16::MIN] {
            assert_closed(
                &addr,
                &format!("API key {key}"),
                &framed(&header(key, 0, 1)),
            )
            .await;
        }
        for key in [
            ApiKey::JoinGroup,
            ApiKey::SaslHandshake,
            ApiKey::EndTxn,
            ApiKey::ConsumerGroupHeartbeat,
        ] {
            let body = header(key as i16, 0, 1);
            assert_closed(&addr, &format!("unserved {key:?}"), &framed(&body)).await;
        }
        for (key, version) in [
            (0i16, 12i16),
            (0, -1),
            (1, 3),
            (1, 99),
            (3, 13),
            (3, -5),
            (19, 0),
            (60, 7),
        ] {
            let mut body = header(key, version, 1);
            body.put_slice(&[0u8; 8]);
            assert_closed(&addr, &format!("API {key} v{version}"), &framed(&body)).await;
        }

        // A valid request followed by garbage on the same connection: the first is
        // answered, then the connection closes.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let meta = encode_request(&MetadataRequest::default().with_topics(None), 12, 77);
        let mut both = framed(&meta);
        both.extend_from_slice(&framed(&header(-1, 0, 78)));
        s.write_all(&both).await.unwrap();
        match read_outcome(&mut s).await {
            Outcome::Answered(mut f) => assert_eq!(f.get_i32(), 77),
            Outcome::Closed => panic!("the valid request before the garbage is answered"),
        }
        assert!(matches!(read_outcome(&mut s).await, Outcome::Closed));

        // Bytes after a body that decodes are ignored, as Kafka ignores them.
        let mut padded = encode_request(&MetadataRequest::default().with_topics(None), 12, 8);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut rest = assert_answered(&addr, "trailing bytes", &framed(&padded), 8).await;
        rest.advance(1); // response header v1: no tagged fields
        kafka_protocol::messages::MetadataResponse::decode(&mut rest, 12).unwrap();

        ledger.produce_good(&addr).await;
        assert_serves(&addr).await;
        ledger.verify(&addr).await;
    });
    node.restart().unwrap();
    block_on(async {
        assert_serves(&node.addr).await;
        ledger.verify(&node.addr).await;
    });
}

/// Every (API key, version) the broker serves, newest and oldest of each.
fn served_api_versions() -> Vec<(i16, i16)> {
    vec![
        (0, 3),
        (0, 11),
        (1, 4),
        (1, 16),
        (2, 1),
        (2, 8),
        (3, 0),
        (3, 12),
        (19, 2),
        (19, 7),
        (20, 1),
        (20, 6),
        (21, 0),
        (21, 2),
        (32, 1),
        (32, 4),
        (33, 0),
        (33, 2),
        (37, 0),
        (37, 3),
        (44, 0),
        (44, 1),
    ]
}

#[test]
fn frames_over_socket_request_max_bytes_close_the_connection() {
    const MAX_FRAME: usize = 4096;
    let node =
        KeelNode::start(&["--set", &format!("socket.request.max.bytes={MAX_FRAME}")]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "limit", 1, &[]).await, NONE);
        let mut ledger = Ledger::new("limit", 0);
        ledger.produce_good(&addr).await;

        // A produce whose frame is just over the limit: closed before it is read.
        let big = BatchBuilder::new(4, 1100).build();
        let frame = encode_request(
            &produce_request("limit", 0, Some(Bytes::from(big)), -1),
            PRODUCE_V11,
            3,
        );
        assert!(frame.len() > MAX_FRAME);
        assert_closed(
            &addr,
            "produce over socket.request.max.bytes",
            &framed(&frame),
        )
        .await;
        // Only the size prefix is needed for the decision.
        assert_closed(
            &addr,
            "size prefix over the limit",
            &((MAX_FRAME + 1) as i32).to_be_bytes(),
        )
        .await;

        // A frame of exactly the limit is read and served.
        let mut req = encode_request(&MetadataRequest::default().with_topics(None), 12, 4);
        req.resize(MAX_FRAME, 0); // padding after the body is ignored
        assert_answered(&addr, "frame of exactly the limit", &framed(&req), 4).await;

        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
    });
}

#[test]
fn api_versions_too_new_gets_unsupported_version_and_the_table_in_v0() {
    let node = KeelNode::start(&[]).unwrap();
    block_on(async {
        for version in [4i16, 99, i16::MAX] {
            let mut body = header(18, version, 41);
            // A body in some future format the broker cannot parse.
            body.put_slice(&[0xff; 11]);
            let mut rest =
                assert_answered(&node.addr, "ApiVersions too new", &framed(&body), 41).await;
            let resp = ApiVersionsResponse::decode(&mut rest, 0).unwrap();
            assert_eq!(
                resp.error_code, UNSUPPORTED_VERSION,
                "ApiVersions v{version}"
            );
            assert!(
                resp.api_keys
                    .iter()
                    .any(|k| k.api_key == 18 && k.max_version == 3),
                "the table lists ApiVersions v0-v3: {:?}",
                resp.api_keys
            );
            assert!(resp.api_keys.iter().any(|k| k.api_key == 0), "and Produce");
        }
        // The connection is still usable for a retry at a version both know.
        let mut c = connect(&node.addr).await;
        assert_eq!(
            c.call(&ApiVersionsRequest::default(), 3)
                .await
                .unwrap()
                .error_code,
            NONE
        );
        // A malformed ApiVersions body at a supported version closes the connection.
        let mut body = header(18, 3, 42);
        body.put_u8(0x7f); // client software name: 126 bytes that are not there
        assert_closed(
            &node.addr,
            "ApiVersions v3 with a short body",
            &framed(&body),
        )
        .await;
        assert_serves(&node.addr).await;
    });
}

// ---------------------------------------------------------------------------------
// Record batches.
// ---------------------------------------------------------------------------------

/// A batch with no records: header only, `recordsCount` 0 and `lastOffsetDelta` as given.
fn empty_batch(last_offset_delta: i32) -> Vec<u8> {
    let mut b = good_batch(1, 0);
    b.truncate(61);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    b[57..61].copy_from_slice(&0i32.to_be_bytes());
    reseal(&mut b);
    b
}

/// A magic 0 or 1 message set of one message.
fn legacy_message_set(magic: i8) -> Vec<u8> {
    let mut msg = BytesMut::new();
    msg.put_u32(0);
    msg.put_i8(magic);
    msg.put_i8(0);
    if magic == 1 {
        msg.put_i64(1_700_000_000_000);
    }
    msg.put_i32(-1);
    msg.put_i32(1);
    msg.put_u8(b'x');
    let crc = crc32fast(&msg[4..]);
    msg[0..4].copy_from_slice(&crc.to_be_bytes());
    let mut set = BytesMut::new();
    set.put_i64(0);
    set.put_i32(msg.len() as i32);
    set.put_slice(&msg);
    // Pad past a v2 header so framing checks reach the magic byte.
    set.put_slice(&[0u8; 64]);
    set.to_vec()
}

/// CRC-32 (IEEE) as message sets v0/v1 carry it.
fn crc32fast(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn corrupt_and_lying_batches_get_their_kafka_error_and_the_log_stays_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    let addr = node.addr.clone();
    let mut ledger = Ledger::new("batches", 0);
    block_on(async {
        assert_eq!(create_topic(&addr, "batches", 1, &[]).await, NONE);
        ledger.produce_good(&addr).await;
        let mut c = connect(&addr).await;

        let mut cases: Vec<(&str, Vec<u8>, i16)> = Vec::new();
        let mut bad_crc = good_batch(3, 50);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0x01;
        cases.push(("bad CRC in a record", bad_crc, CORRUPT_MESSAGE));
        let mut bad_crc_field = good_batch(3, 51);
        bad_crc_field[18] ^= 0xff;
        cases.push(("bad CRC field", bad_crc_field, CORRUPT_MESSAGE));
        let mut flipped_header = good_batch(3, 52);
        flipped_header[30] ^= 0x10; // base timestamp, under the CRC
        cases.push(("bit flip under the CRC", flipped_header, CORRUPT_MESSAGE));
        cases.push((
            "magic 0",
            legacy_message_set(0),
            UNSUPPORTED_FOR_MESSAGE_FORMAT,
        ));
        cases.push((
            "magic 1",
            legacy_message_set(1),
            UNSUPPORTED_FOR_MESSAGE_FORMAT,
        ));
        let mut magic_3 = good_batch(1, 53);
        magic_3[16] = 3;
        cases.push(("magic 3", magic_3, CORRUPT_MESSAGE));
        let mut magic_neg = good_batch(1, 53);
        magic_neg[16] = 0xff;
        cases.push(("magic -1", magic_neg, CORRUPT_MESSAGE));
        cases.push(("zero records, delta 0", empty_batch(0), INVALID_RECORD));
        cases.push(("zero records, delta -1", empty_batch(-1), INVALID_RECORD));
        let mut negative_count = good_batch(1, 54);
        negative_count[57..61].copy_from_slice(&(-5i32).to_be_bytes());
        reseal(&mut negative_count);
        cases.push(("negative record count", negative_count, INVALID_RECORD));
        let mut count_mismatch = good_batch(3, 55);
        count_mismatch[57..61].copy_from_slice(&2i32.to_be_bytes());
        reseal(&mut count_mismatch);
        cases.push((
            "count disagrees with offset delta",
            count_mismatch,
            INVALID_RECORD,
        ));
        let mut bad_codec = good_batch(2, 56);
        bad_codec[22] |= 0x07; // compression codec 7
        reseal(&mut bad_codec);
        cases.push(("unknown compression codec", bad_codec, INVALID_RECORD));
        let control = BatchBuilder::new(1, 4).control().build();
        cases.push(("control batch from a client", control, INVALID_RECORD));
        let negative_seq = BatchBuilder::new(1, 4).producer(1000, 0, -5).build();
        cases.push((
            "idempotent batch with a negative sequence",
            negative_seq,
            INVALID_RECORD,
        ));

        // Batches whose length field lies.
        let good = good_batch(2, 57);
        for (what, len) in [
            ("length past the buffer", good.len() as i32 + 100),
            ("length i32::MAX", i32::MAX),
            (
                "length shorter than the records",
                good.len() as i32 - 12 - 5,
            ),
            ("length shorter than a header", 20),
            ("length zero", 0),
            ("negative length", -1000),
        ] {
            let mut b = good.clone();
            b[8..12].copy_from_slice(&len.to_be_bytes());
            cases.push((what, b, CORRUPT_MESSAGE));
        }
        let mut truncated = good_batch(3, 58);
        truncated.truncate(truncated.len() - 7);
        cases.push(("batch cut short", truncated, CORRUPT_MESSAGE));
        cases.push((
            "fewer bytes than a header",
            good_batch(1, 59)[..40].to_vec(),
            CORRUPT_MESSAGE,
        ));
        let mut trailing = good_batch(1, 60);
        trailing.extend_from_slice(&[0u8; 20]);
        cases.push(("a good batch then garbage", trailing, CORRUPT_MESSAGE));
        let mut good_then_bad = good_batch(2, 61);
        let mut second = good_batch(2, 62);
        let last = second.len() - 1;
        second[last] ^= 0x80;
        good_then_bad.extend_from_slice(&second);
        cases.push((
            "a good batch then a corrupt one",
            good_then_bad,
            CORRUPT_MESSAGE,
        ));
        cases.push(("no bytes at all", Vec::new(), INVALID_RECORD));

        for (what, records, want) in &cases {
            let resp = produce(&mut c, "batches", 0, records).await;
            assert_eq!(resp.error_code, *want, "{what}: {resp:?}");
            assert_eq!(resp.base_offset, -1, "{what}: nothing appended");
            // A good batch right after each bad one lands at the next dense offset.
            ledger.produce_good(&addr).await;
        }
        // Null records.
        let resp = produce_acks(&mut c, "batches", 0, None, -1).await;
        assert_eq!(resp.error_code, INVALID_RECORD, "null records: {resp:?}");
        // The same garbage through produce v3 (the oldest codec version) and acks=1.
        for (what, records, want) in &cases {
            let req = produce_request("batches", 0, Some(Bytes::from(records.clone())), 1);
            let resp = c.call(&req, PRODUCE_V3).await.unwrap();
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(p.error_code, *want, "v3 {what}: {p:?}");
        }
        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
    });
    // A SIGKILL right after: recovery must find nothing to truncate but the log as acked.
    node.kill9();
    node.restart().unwrap();
    block_on(async {
        ledger.verify(&node.addr).await;
        ledger.produce_good(&node.addr).await;
        ledger.verify(&node.addr).await;
    });
}

/// A batch of one record with `value` as its value, compressed with `compression`.
fn encoded_batch(compression: Compression, timestamp: i64, value: Bytes) -> Vec<u8> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: None,
        value: Some(value),
        headers: IndexMap::new(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// Peak resident set of the broker so far (VmHWM).
fn peak_rss_kib(node: &KeelNode) -> u64 {
    let pid = node.pid().expect("broker running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[test]
fn batches_whose_records_lie_are_refused_or_read_safely() {
    let node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "lies", 1, &[]).await, NONE);
        let mut ledger = Ledger::new("lies", 0);
        ledger.produce_good(&addr).await;
        let mut c = connect(&addr).await;
        let t0 = now_ms();
        // One real record, a header claiming two billion of them (offset delta to
        // match, CRC recomputed).
        let mut liar = BatchBuilder::new(1, 8).timestamp(t0).build();
        liar[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        liar[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        reseal(&mut liar);
        let resp = produce(&mut c, "lies", 0, &liar).await;
        assert_eq!(resp.error_code, INVALID_RECORD, "{resp:?}");
        // One real record whose header count claims a billion headers.
        let mut headers = BatchBuilder::new(1, 8).timestamp(t0).build();
        let at = headers.len() - 1;
        assert_eq!(headers[at], 0, "the record's header count");
        headers[at] = 0x80; // varint continues…
        headers.extend_from_slice(&[0x80, 0x80, 0x80, 0x08]); // …to 2^31 (zigzag: 2^30)
        headers[61] += 8; // the record's length varint (zigzag) grows by 4 bytes
        let len = (headers.len() - 12) as i32;
        headers[8..12].copy_from_slice(&len.to_be_bytes());
        reseal(&mut headers);
        let resp = produce(&mut c, "lies", 0, &headers).await;
        assert_eq!(resp.error_code, INVALID_RECORD, "{resp:?}");
        // Two records in a batch whose header counts one, and one whose header counts three.
        for count in [1, 3] {
            let mut b = BatchBuilder::new(2, 8).build();
            b[57..61].copy_from_slice(&(count as i32).to_be_bytes());
            b[23..27].copy_from_slice(&(count as i32 - 1).to_be_bytes());
            reseal(&mut b);
            let resp = produce(&mut c, "lies", 0, &b).await;
            assert_eq!(
                resp.error_code, INVALID_RECORD,
                "2 records counted as {count}: {resp:?}"
            );
        }

        // Compressed batches are stored without being inflated, so one whose header
        // lies about its records may be accepted; reading it must stay safe.
        let mut zliar = encoded_batch(Compression::Zstd, t0 + 1_000, Bytes::from_static(b"z"));
        zliar[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        zliar[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        reseal(&mut zliar);
        let resp = produce(&mut c, "lies", 0, &zliar).await;
        match resp.error_code {
            NONE => ledger.batches.push(zliar),
            INVALID_RECORD => {}
            other => panic!("compressed liar: {other}"),
        }
        // A decompression bomb: 256 MiB of zeros in a few kilobytes of zstd, stored as
        // a valid batch of one record.
        let bomb = encoded_batch(
            Compression::Zstd,
            t0 + 2_000,
            Bytes::from(vec![0u8; 256 << 20]),
        );
        assert!(bomb.len() < 64 * 1024, "bomb of {} bytes", bomb.len());
        let resp = produce(&mut c, "lies", 0, &bomb).await;
        assert_eq!(resp.error_code, NONE, "{resp:?}");
        ledger.batches.push(bomb);
        ledger.produce_good(&addr).await;

        // Timestamp lookups over all of it: answers, no crash, no blow-up.
        let peak = peak_rss_kib(&node);
        for ts in [0, t0 - 1_000, t0 + 1_000, t0 + 2_000, -3, -1, -2] {
            let (error, _) = list_offset(&mut c, "lies", 0, ts).await;
            assert_eq!(error, NONE, "ListOffsets at {ts}");
        }
        let grown = peak_rss_kib(&node).saturating_sub(peak);
        assert!(
            grown < 160 * 1024,
            "timestamp lookups raised the peak resident set by {grown} KiB"
        );
        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
        assert_serves(&addr).await;
    });
}

#[test]
fn batches_over_max_message_bytes_get_message_too_large() {
    const BROKER_MAX: usize = 2_000;
    let node = KeelNode::start(&["--set", &format!("message.max.bytes={BROKER_MAX}")]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "defaulted", 1, &[]).await, NONE);
        assert_eq!(
            create_topic(&addr, "small", 1, &[("max.message.bytes", "500")]).await,
            NONE
        );
        assert_eq!(
            create_topic(&addr, "large", 1, &[("max.message.bytes", "100000")]).await,
            NONE
        );
        let mut c = connect(&addr).await;
        let mut ledgers = [
            Ledger::new("defaulted", 0),
            Ledger::new("small", 0),
            Ledger::new("large", 0),
        ];
        for l in ledgers.iter_mut() {
            l.produce_good(&addr).await;
        }
        let just_over_broker = BatchBuilder::new(10, 200).build();
        assert!(just_over_broker.len() > BROKER_MAX && just_over_broker.len() < 3 * BROKER_MAX);
        let resp = produce(&mut c, "defaulted", 0, &just_over_broker).await;
        assert_eq!(
            resp.error_code, MESSAGE_TOO_LARGE,
            "over message.max.bytes: {resp:?}"
        );
        let over_topic = BatchBuilder::new(4, 150).build();
        assert!(over_topic.len() > 500 && over_topic.len() < BROKER_MAX);
        let resp = produce(&mut c, "small", 0, &over_topic).await;
        assert_eq!(
            resp.error_code, MESSAGE_TOO_LARGE,
            "over the topic's max.message.bytes: {resp:?}"
        );
        // The same batch fits the broker default, and the larger topic override.
        let resp = produce(&mut c, "defaulted", 0, &over_topic).await;
        assert_eq!(resp.error_code, NONE, "under message.max.bytes: {resp:?}");
        ledgers[0].batches.push(over_topic.clone());
        let resp = produce(&mut c, "large", 0, &just_over_broker).await;
        assert_eq!(resp.error_code, NONE, "under the topic override: {resp:?}");
        ledgers[2].batches.push(just_over_broker.clone());
        // A batch far over every limit is refused, and so is one cut off after its header.
        let mut huge = BatchBuilder::new(1, 200_000).build();
        let resp = produce(&mut c, "large", 0, &huge).await;
        assert_eq!(resp.error_code, MESSAGE_TOO_LARGE, "{resp:?}");
        huge.truncate(1_000);
        let resp = produce(&mut c, "large", 0, &huge).await;
        assert_eq!(
            resp.error_code, CORRUPT_MESSAGE,
            "a cut-off huge batch: {resp:?}"
        );
        for l in ledgers.iter_mut() {
            l.produce_good(&addr).await;
            l.verify(&addr).await;
        }
    });
}

// ---------------------------------------------------------------------------------
// Topics and fields.
// ---------------------------------------------------------------------------------

#[test]
fn invalid_topic_names_get_invalid_topic_exception() {
    let node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    let long = "x".repeat(250);
    let names = [
        "",
        ".",
        "..",
        "has space",
        "slash/y",
        "ünicode",
        "tab\t",
        "nul\0",
        long.as_str(),
    ];
    block_on(async {
        let mut c = connect(&addr).await;
        for name in names {
            let resp = c
                .call(
                    &MetadataRequest::default()
                        .with_topics(Some(vec![
                            MetadataRequestTopic::default().with_name(Some(topic_name(name)))
                        ]))
                        .with_allow_auto_topic_creation(true),
                    12,
                )
                .await
                .unwrap();
            assert_eq!(
                resp.topics[0].error_code, INVALID_TOPIC_EXCEPTION,
                "Metadata {name:?}"
            );
            let p = produce(&mut c, name, 0, &good_batch(1, 1)).await;
            assert_eq!(p.error_code, INVALID_TOPIC_EXCEPTION, "Produce {name:?}");
            assert_eq!(
                create_topic(&addr, name, 1, &[]).await,
                INVALID_TOPIC_EXCEPTION,
                "CreateTopics {name:?}"
            );
        }
        // None of them exists now.
        let all = c
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        assert!(
            all.topics.is_empty(),
            "no topic was created: {:?}",
            all.topics
        );
        // Names that are not UTF-8 cannot be decoded: the connection closes.
        let mut body = header(3, 4, 1);
        body.put_i32(1);
        body.put_i16(2);
        body.put_slice(&[0xff, 0xfe]);
        body.put_u8(1);
        assert_closed(&addr, "non-UTF-8 topic name", &framed(&body)).await;
        assert_serves(&addr).await;
    });
}

#[test]
fn produce_to_a_deleted_topic_gets_unknown_topic_or_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    let addr = node.addr.clone();
    let mut survivor = Ledger::new("survivor", 0);
    block_on(async {
        assert_eq!(create_topic(&addr, "doomed", 2, &[]).await, NONE);
        assert_eq!(create_topic(&addr, "survivor", 1, &[]).await, NONE);
        survivor.produce_good(&addr).await;
        let mut c = connect(&addr).await;
        assert_eq!(
            produce(&mut c, "doomed", 1, &good_batch(2, 1))
                .await
                .error_code,
            NONE
        );
        let del = DeleteTopicsRequest::default()
            .with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name("doomed")))
            ])
            .with_timeout_ms(30_000);
        let resp = c.call(&del, 6).await.unwrap();
        assert_eq!(resp.responses[0].error_code, NONE);
        for partition in [0, 1] {
            let p = produce(&mut c, "doomed", partition, &good_batch(2, 2)).await;
            assert_eq!(
                p.error_code, UNKNOWN_TOPIC_OR_PARTITION,
                "partition {partition}: {p:?}"
            );
            let p = produce_acks(
                &mut c,
                "doomed",
                partition,
                Some(Bytes::from(good_batch(1, 3))),
                1,
            )
            .await;
            assert_eq!(p.error_code, UNKNOWN_TOPIC_OR_PARTITION);
        }
        let (error, _, _) = fetch(&mut c, "doomed", 0, 0).await;
        assert_eq!(error, UNKNOWN_TOPIC_OR_PARTITION);
        // acks=0: no answer, and Kafka closes the connection so the client refreshes.
        let frame = encode_request(
            &produce_request("doomed", 0, Some(Bytes::from(good_batch(1, 4))), 0),
            PRODUCE_V11,
            9,
        );
        assert_closed(&addr, "acks=0 produce to a deleted topic", &framed(&frame)).await;
        survivor.produce_good(&addr).await;
    });
    node.restart().unwrap();
    block_on(async {
        let mut c = connect(&node.addr).await;
        let p = produce(&mut c, "doomed", 0, &good_batch(2, 5)).await;
        assert_eq!(
            p.error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "after a restart too"
        );
        survivor.verify(&node.addr).await;
    });
}

/// Admin requests Kafka refuses get Kafka's answer, and refusing them changes nothing:
/// a CreateTopics config without a value (INVALID_CONFIG, its sibling topic is
/// created), a DeleteTopics v6 entry naming a topic by both name and id or by neither
/// (INVALID_REQUEST, the topic lives on), DeleteRecords on a compact-only topic
/// (POLICY_VIOLATION, its records stay), and deleting a topic config that was never set
/// (a no-op success).
#[test]
fn admin_requests_kafka_refuses_change_nothing() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{DeleteRecordsRequest, IncrementalAlterConfigsRequest};
    const INVALID_REQUEST: i16 = 42;
    const POLICY_VIOLATION: i16 = 44;
    const RESOURCE_TOPIC: i8 = 2;
    const OP_DELETE: i8 = 1;

    let tmp = tempfile::tempdir().unwrap();
    let node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        let mut c = connect(&addr).await;
        let with_null = CreatableTopic::default()
            .with_name(topic_name("null-config"))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(None)]);
        let sibling = CreatableTopic::default()
            .with_name(topic_name("sibling"))
            .with_num_partitions(1)
            .with_replication_factor(1);
        let req = CreateTopicsRequest::default()
            .with_topics(vec![with_null, sibling])
            .with_timeout_ms(30_000);
        let resp = c.call(&req, 7).await.unwrap();
        let code_of = |name: &str| {
            resp.topics
                .iter()
                .find(|t| t.name.0.as_str() == name)
                .map(|t| t.error_code)
        };
        assert_eq!(code_of("null-config"), Some(INVALID_CONFIG), "{resp:?}");
        assert_eq!(code_of("sibling"), Some(NONE), "{resp:?}");
        let (error, _, _) = fetch(&mut c, "null-config", 0, 0).await;
        assert_eq!(
            error, UNKNOWN_TOPIC_OR_PARTITION,
            "the refused topic was created"
        );
        // A name given twice is refused in both copies, a null config or not.
        let twice = |configs| {
            CreatableTopic::default()
                .with_name(topic_name("twice"))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(configs)
        };
        let req = CreateTopicsRequest::default()
            .with_topics(vec![
                twice(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(None)]),
                twice(vec![]),
            ])
            .with_timeout_ms(30_000);
        let resp = c.call(&req, 7).await.unwrap();
        assert!(
            resp.topics.iter().all(|t| t.error_code == INVALID_REQUEST),
            "{resp:?}"
        );
        let (error, _, _) = fetch(&mut c, "twice", 0, 0).await;
        assert_eq!(
            error, UNKNOWN_TOPIC_OR_PARTITION,
            "a duplicated topic was created"
        );

        // Delete by name and id at once, and by neither.
        let meta = c
            .call(
                &MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default(
                )
                .with_name(Some(topic_name("sibling")))])),
                12,
            )
            .await
            .unwrap();
        let id = meta.topics[0].topic_id;
        assert!(!id.is_nil());
        let del = DeleteTopicsRequest::default()
            .with_topics(vec![
                DeleteTopicState::default()
                    .with_name(Some(topic_name("sibling")))
                    .with_topic_id(id),
                DeleteTopicState::default(),
            ])
            .with_timeout_ms(30_000);
        let resp = c.call(&del, 6).await.unwrap();
        assert_eq!(resp.responses.len(), 2, "{resp:?}");
        assert!(
            resp.responses
                .iter()
                .all(|r| r.error_code == INVALID_REQUEST),
            "{resp:?}"
        );
        assert_eq!(
            produce(&mut c, "sibling", 0, &good_batch(1, 1))
                .await
                .error_code,
            NONE,
            "the topic named twice is still there"
        );

        // DeleteRecords on a compacted topic.
        assert_eq!(
            create_topic(&addr, "compacted", 1, &[("cleanup.policy", "compact")]).await,
            NONE
        );
        let keyed = BatchBuilder::keyed(
            (0..3u8)
                .map(|i| keel_storage::testing::TestRecord::value(&[b'k', i], &[i]))
                .collect(),
        );
        let produced = produce(&mut c, "compacted", 0, &keyed.build()).await;
        assert_eq!(produced.error_code, NONE, "{produced:?}");
        let req = DeleteRecordsRequest::default()
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name("compacted"))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(2)])])
            .with_timeout_ms(30_000);
        let resp = c.call(&req, 2).await.unwrap();
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, POLICY_VIOLATION, "{resp:?}");
        let (error, _, records) = fetch(&mut c, "compacted", 0, 0).await;
        assert_eq!(error, NONE);
        assert_eq!(
            records_in(&records),
            3,
            "records of the compacted topic stayed"
        );

        // Deleting a config that is not set.
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_static_str("sibling"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("no.such.config"))
                    .with_config_operation(OP_DELETE)]),
        ]);
        let resp = c.call(&req, 1).await.unwrap();
        assert_eq!(resp.responses[0].error_code, NONE, "{resp:?}");
    });
}

/// zstd arrived with Produce v7 (KIP-110): like Kafka, an older Produce carrying a zstd
/// batch gets UNSUPPORTED_COMPRESSION_TYPE and nothing is written; v7 and later store it.
#[test]
fn zstd_batches_in_produce_below_v7_get_unsupported_compression_type() {
    const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    const ZSTD: u8 = 4;
    let node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "zstd", 1, &[]).await, NONE);
        let mut c = connect(&addr).await;
        let zstd = BatchBuilder::new(3, 20)
            .timestamp(now_ms())
            .compression(ZSTD)
            .build();
        for version in [3, 6] {
            let resp = c
                .call(
                    &produce_request("zstd", 0, Some(Bytes::from(zstd.clone())), -1),
                    version,
                )
                .await
                .unwrap();
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!(
                p.error_code, UNSUPPORTED_COMPRESSION_TYPE,
                "Produce v{version}"
            );
        }
        let p = produce(&mut c, "zstd", 0, &zstd).await;
        assert_eq!(
            (p.error_code, p.base_offset),
            (NONE, 0),
            "Produce v11 stores it"
        );
        assert_eq!(
            list_offset(&mut c, "zstd", 0, -1).await,
            (NONE, 3),
            "only the v11 batch"
        );
    });
}

#[test]
fn out_of_range_fields_get_their_kafka_error() {
    let node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "fields", 2, &[]).await, NONE);
        let mut ledger = Ledger::new("fields", 1);
        ledger.produce_good(&addr).await;
        let mut c = connect(&addr).await;

        for partition in [-1, -2_000_000_000, 2, i32::MAX] {
            let p = produce(&mut c, "fields", partition, &good_batch(1, 1)).await;
            assert_eq!(
                p.error_code, UNKNOWN_TOPIC_OR_PARTITION,
                "produce to partition {partition}"
            );
            let (error, _, _) = fetch(&mut c, "fields", partition, 0).await;
            assert_eq!(
                error, UNKNOWN_TOPIC_OR_PARTITION,
                "fetch from partition {partition}"
            );
            let (error, _) = list_offset(&mut c, "fields", partition, -1).await;
            assert_eq!(
                error, UNKNOWN_TOPIC_OR_PARTITION,
                "list offsets of partition {partition}"
            );
        }
        for acks in [5i16, 2, -2, i16::MIN, i16::MAX] {
            let p = produce_acks(
                &mut c,
                "fields",
                1,
                Some(Bytes::from(good_batch(1, 2))),
                acks,
            )
            .await;
            assert_eq!(p.error_code, INVALID_REQUIRED_ACKS, "acks={acks}");
        }
        for offset in [-1i64, -100, i64::MIN, 4, i64::MAX] {
            let (error, hw, records) = fetch(&mut c, "fields", 1, offset).await;
            assert_eq!(error, OFFSET_OUT_OF_RANGE, "fetch at {offset}");
            assert_eq!(hw, 3);
            assert!(records.is_empty());
        }
        // Negative waits, byte limits and timeouts are treated as zero: prompt answers.
        let started = Instant::now();
        let mut req = fetch_request("fields", 1, 0)
            .with_max_wait_ms(-1_000)
            .with_min_bytes(-5)
            .with_max_bytes(-1);
        req.topics[0].partitions[0].partition_max_bytes = -7;
        let resp = c.call(&req, FETCH_BY_NAME).await.unwrap();
        assert_eq!(resp.responses[0].partitions[0].error_code, NONE);
        let resp = c
            .call(
                &fetch_request("fields", 1, 3)
                    .with_max_wait_ms(i32::MIN)
                    .with_min_bytes(i32::MAX),
                FETCH_BY_NAME,
            )
            .await
            .unwrap();
        assert_eq!(resp.responses[0].partitions[0].error_code, NONE);
        let timed_out = good_batch(1, 3);
        let p = c
            .call(
                &produce_request("fields", 1, Some(Bytes::from(timed_out.clone())), -1)
                    .with_timeout_ms(-50),
                PRODUCE_V11,
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no request waited"
        );
        // A negative produce timeout: the append happens, the wait for durability may time out.
        let code = p.responses[0].partition_responses[0].error_code;
        assert!(
            code == NONE || code == 7,
            "produce with timeout -50: {code}"
        );
        ledger.batches.push(timed_out);

        // An unknown session and an out-of-order session epoch.
        let resp = c
            .call(
                &fetch_request("fields", 1, 0)
                    .with_session_id(123_456)
                    .with_session_epoch(7),
                FETCH_BY_NAME,
            )
            .await
            .unwrap();
        assert_eq!(resp.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
        // Fetch by an unknown topic id.
        let mut by_id = fetch_request("", 0, 0);
        by_id.topics[0].topic_id = uuid_from(0xdead_beef);
        let resp = c.call(&by_id, 13).await.unwrap();
        assert_eq!(
            resp.responses[0].partitions[0].error_code, 100,
            "UNKNOWN_TOPIC_ID"
        );

        // CreateTopics with counts no broker can honour.
        for (partitions, rf, want) in [
            (0, 1, INVALID_PARTITIONS),
            (-5, 1, INVALID_PARTITIONS),
            (i32::MAX, 1, INVALID_PARTITIONS),
            (1, 0, INVALID_REPLICATION_FACTOR),
            (1, -7, INVALID_REPLICATION_FACTOR),
            (1, i16::MAX, INVALID_REPLICATION_FACTOR),
        ] {
            let topic = CreatableTopic::default()
                .with_name(topic_name("never"))
                .with_num_partitions(partitions)
                .with_replication_factor(rf);
            let resp = c
                .call(
                    &CreateTopicsRequest::default()
                        .with_topics(vec![topic])
                        .with_timeout_ms(10_000),
                    7,
                )
                .await
                .unwrap();
            let code = resp.topics[0].error_code;
            // Kafka answers a partition count over its per-request limit with POLICY_VIOLATION.
            assert!(
                code == want || (partitions == i32::MAX && code == 44),
                "{partitions}x{rf}: {code}"
            );
        }
        for (key, value) in [
            ("retention.ms", "soon"),
            ("no.such.config", "1"),
            ("max.message.bytes", "-5"),
        ] {
            assert_eq!(
                create_topic(&addr, "never", 1, &[(key, value)]).await,
                INVALID_CONFIG,
                "{key}={value}"
            );
        }

        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
        assert_serves(&addr).await;
    });
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

// ---------------------------------------------------------------------------------
// Allocation: array counts that claim far more elements than the frame holds.
// ---------------------------------------------------------------------------------

/// Request bodies, for every served API that has arrays, in which the first array
/// claims `count` elements and the frame ends right after the count.
fn huge_count_bodies(count: u32) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &str, key: i16, version: i16, prefix: &dyn Fn(&mut BytesMut)| {
        let mut b = header(key, version, 1);
        prefix(&mut b);
        let flexible = ApiKey::try_from(key)
            .unwrap()
            .request_header_version(version)
            >= 2;
        if flexible {
            put_uvarint(&mut b, u64::from(count) + 1);
        } else {
            b.put_u32(count);
        }
        out.push((format!("{name} v{version}"), b.to_vec()));
    };
    for v in [0, 4, 8] {
        add("Metadata", 3, v, &|_| {});
    }
    for v in [9, 12] {
        add("Metadata", 3, v, &|_| {});
    }
    for v in [3, 8, 9, 11] {
        add("Produce", 0, v, &|b| {
            if v >= 9 {
                b.put_u8(0); // null transactional id (compact)
            } else {
                b.put_i16(-1);
            }
            b.put_i16(1);
            b.put_i32(1000);
        });
    }
    for v in [0, 2] {
        add("Produce", 0, v, &|b| {
            b.put_i16(1);
            b.put_i32(1000);
        });
    }
    // Produce v3 with one topic whose partition list is the huge array.
    add("Produce partitions", 0, 3, &|b| {
        b.put_i16(-1);
        b.put_i16(1);
        b.put_i32(1000);
        b.put_i32(1);
        b.put_i16(1);
        b.put_u8(b't');
    });
    for v in [4, 11, 12, 16] {
        add("Fetch", 1, v, &|b| {
            if v <= 14 {
                b.put_i32(-1);
            }
            b.put_i32(0);
            b.put_i32(0);
            b.put_i32(1000);
            b.put_i8(0);
            if v >= 7 {
                b.put_i32(0);
                b.put_i32(-1);
            }
        });
    }
    for v in [1, 5, 6, 8] {
        add("ListOffsets", 2, v, &|b| {
            b.put_i32(-1);
            if v >= 2 {
                b.put_i8(0);
            }
        });
    }
    for v in [2, 4, 5, 7] {
        add("CreateTopics", 19, v, &|_| {});
    }
    for v in [1, 3, 4, 6] {
        add("DeleteTopics", 20, v, &|_| {});
    }
    for v in [0, 2] {
        add("DeleteRecords", 21, v, &|_| {});
    }
    for v in [1, 4] {
        add("DescribeConfigs", 32, v, &|_| {});
    }
    for v in [0, 2] {
        add("AlterConfigs", 33, v, &|_| {});
    }
    for v in [0, 3] {
        add("CreatePartitions", 37, v, &|_| {});
    }
    for v in [0, 1] {
        add("IncrementalAlterConfigs", 44, v, &|_| {});
    }
    out
}

#[test]
fn huge_array_counts_in_small_frames_close_the_connection_without_allocating() {
    let node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    block_on(async {
        assert_eq!(create_topic(&addr, "counts", 1, &[]).await, NONE);
        let mut ledger = Ledger::new("counts", 0);
        ledger.produce_good(&addr).await;
        let baseline = rss_kib(&node);
        for count in [u32::MAX - 1, i32::MAX as u32, 0x3fff_ffff, 50_000_000] {
            for (what, body) in huge_count_bodies(count) {
                assert_closed(
                    &addr,
                    &format!("{what} claiming {count} elements"),
                    &framed(&body),
                )
                .await;
                let rss = rss_kib(&node);
                assert!(
                    rss < baseline + RSS_GROWTH_LIMIT_KIB,
                    "{what} claiming {count} elements: resident set grew from {baseline} KiB to {rss} KiB"
                );
            }
        }
        // Counts nested inside a valid outer element, and in a string/bytes length.
        let mut b = header(0, 9, 1);
        b.put_u8(0);
        b.put_i16(1);
        b.put_i32(1000);
        put_uvarint(&mut b, 2); // one topic
        put_uvarint(&mut b, 2);
        b.put_u8(b't');
        put_uvarint(&mut b, u64::from(u32::MAX)); // partitions
        assert_closed(&addr, "Produce v9 nested partition count", &framed(&b)).await;
        let mut b = header(0, 9, 1);
        b.put_u8(0);
        b.put_i16(1);
        b.put_i32(1000);
        put_uvarint(&mut b, 2);
        put_uvarint(&mut b, 2);
        b.put_u8(b't');
        put_uvarint(&mut b, 2); // one partition
        b.put_i32(0);
        put_uvarint(&mut b, u64::from(u32::MAX)); // records length
        assert_closed(&addr, "Produce v9 records length", &framed(&b)).await;
        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
        assert_serves(&addr).await;
    });
}

// ---------------------------------------------------------------------------------
// Randomized: generated garbage and mutated valid requests.
// ---------------------------------------------------------------------------------

/// SplitMix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Default run time of the randomized test; `KEEL_FUZZ_SECS` overrides it.
const FUZZ_DEFAULT_SECS: u64 = 40;
/// Connections the randomized test spreads its frames over.
const FUZZ_CONNECTIONS: usize = 4;
/// Largest generated frame.
const FUZZ_MAX_FRAME_BYTES: usize = 8 * 1024;

/// Valid requests the mutator starts from, for the topic `fuzz`.
fn fuzz_corpus() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::{
        AlterConfigsRequest, CreatePartitionsRequest, DeleteRecordsRequest, DescribeClusterRequest,
        DescribeConfigsRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest,
    };
    let mut c: Vec<Vec<u8>> = Vec::new();
    let batch = Bytes::from(good_batch(2, 0xee));
    for v in [3, 7, 9, 11] {
        c.push(encode_request(
            &produce_request("fuzz", 0, Some(batch.clone()), 1),
            v,
            1,
        ));
    }
    for v in [4, 11, 12] {
        c.push(encode_request(&fetch_request("fuzz", 0, 0), v, 2));
    }
    for v in [1, 9, 12] {
        c.push(encode_request(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name("fuzz")))
            ])),
            v,
            3,
        ));
    }
    for v in [0, 3] {
        c.push(encode_request(&ApiVersionsRequest::default(), v, 4));
    }
    // Timestamp lookups read inside stored batches: the first one at or after a
    // time, and (v7+) the one with the largest timestamp.
    for (v, timestamp) in [(1, 0), (7, 0), (7, -3), (7, now_ms())] {
        let req = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("fuzz"))
                .with_partitions(vec![
                    ListOffsetsPartition::default().with_timestamp(timestamp)
                ])]);
        c.push(encode_request(&req, v, 5));
    }
    // Validate-only creations, so mutations do not fill the broker with topics.
    for v in [2, 7] {
        let req = CreateTopicsRequest::default()
            .with_validate_only(true)
            .with_timeout_ms(1000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name("fuzz-new"))
                .with_num_partitions(1)
                .with_replication_factor(1)]);
        c.push(encode_request(&req, v, 6));
    }
    for v in [1, 4] {
        c.push(encode_request(
            &DescribeConfigsRequest::default().with_resources(vec![
                kafka_protocol::messages::describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("fuzz"))
                    .with_configuration_keys(None),
            ]),
            v,
            7,
        ));
    }
    c.push(encode_request(
        &AlterConfigsRequest::default()
            .with_validate_only(true)
            .with_resources(vec![
                kafka_protocol::messages::alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("fuzz")),
            ]),
        2,
        8,
    ));
    c.push(encode_request(
        &IncrementalAlterConfigsRequest::default().with_validate_only(true).with_resources(vec![
            kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("fuzz")),
        ]),
        1,
        9,
    ));
    // A broker resource: the receiving broker's own checks (node id, static keys)
    // before the controller's. The config is one keel does not know, so no mutation
    // of it is likely to land on a setting that changes how logs are kept.
    c.push(encode_request(
        &IncrementalAlterConfigsRequest::default().with_validate_only(true).with_resources(vec![
            kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_static_str(""))
                .with_configs(vec![
                    kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("sasl.kerberos.min.time.before.relogin"))
                        .with_value(Some(StrBytes::from_static_str("58000"))),
                ]),
        ]),
        1,
        14,
    ));
    c.push(encode_request(
        &CreatePartitionsRequest::default()
            .with_validate_only(true)
            .with_timeout_ms(1000),
        3,
        10,
    ));
    c.push(encode_request(
        &DeleteRecordsRequest::default().with_timeout_ms(1000),
        2,
        11,
    ));
    c.push(encode_request(&DescribeClusterRequest::default(), 1, 12));
    c.push(encode_request(
        &InitProducerIdRequest::default().with_transaction_timeout_ms(1000),
        4,
        13,
    ));
    c
}

/// One generated frame (size prefix included; sometimes a lying one).
/// A well-framed Produce of one batch whose bytes were damaged and then resealed
/// (CRC recomputed, sometimes the length fixed up), so the damage gets past the CRC
/// check to the header and record checks, and into the log when nothing catches it.
fn resealed_produce(rng: &mut Rng) -> Vec<u8> {
    let mut batch = BatchBuilder::new(1 + rng.below(5), rng.below(40))
        .timestamp(now_ms())
        .fill(rng.next() as u8)
        .build();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            // Header fields under the CRC: attributes, deltas, timestamps, producer, count.
            0 | 1 => {
                let i = 21 + rng.below(40);
                batch[i] ^= 1 << rng.below(8);
            }
            // Record bytes.
            2 | 3 if batch.len() > 61 => {
                let i = 61 + rng.below(batch.len() - 61);
                batch[i] = if rng.chance(50) {
                    rng.next() as u8
                } else {
                    batch[i] ^ 0x80
                };
            }
            // Records cut short or extended.
            _ => {
                if rng.chance(50) {
                    let keep = 61 + rng.below(batch.len() - 60);
                    batch.truncate(keep);
                } else {
                    batch.extend((0..1 + rng.below(8)).map(|_| rng.next() as u8));
                }
            }
        }
    }
    if rng.chance(70) {
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
    }
    reseal(&mut batch);
    let version = [3, 9, 11][rng.below(3)];
    let acks = [1, -1][rng.below(2)];
    encode_request(
        &produce_request("fuzz", 0, Some(Bytes::from(batch)), acks),
        version,
        20,
    )
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(10) {
        let body = resealed_produce(rng);
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        return out;
    }
    let mut body: Vec<u8> = if rng.chance(15) {
        // Pure garbage, sometimes behind a plausible header.
        let len = rng.below(256);
        let mut g: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(50) && g.len() >= 4 {
            let key = [0i16, 1, 2, 3, 18, 19, 20, 21, 32, 33, 37, 44, 60, 22][rng.below(14)];
            g[0..2].copy_from_slice(&key.to_be_bytes());
            g[2..4].copy_from_slice(&(rng.below(20) as i16).to_be_bytes());
        }
        g
    } else {
        corpus[rng.below(corpus.len())].clone()
    };
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if body.is_empty() {
            break;
        }
        match rng.below(9) {
            // Bit flips.
            0 | 1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(body.len());
                    body[i] ^= 1 << rng.below(8);
                }
            }
            // Truncation.
            2 => {
                let keep = rng.below(body.len());
                body.truncate(keep);
            }
            // An i32 somewhere (a count or a length) set to a boundary value.
            3 | 4 => {
                if body.len() >= 4 {
                    let at = rng.below(body.len() - 3);
                    let v: i32 = [
                        -1,
                        -2,
                        0,
                        1,
                        0x7fff_ffff,
                        i32::MIN,
                        0x00ff_ffff,
                        255,
                        65_536,
                    ][rng.below(9)];
                    body[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
            // A varint-looking run (compact counts and lengths).
            5 => {
                let at = rng.below(body.len());
                for (k, b) in [0xffu8, 0xff, 0xff, 0xff, 0x0f]
                    .iter()
                    .enumerate()
                    .take(1 + rng.below(5))
                {
                    if at + k < body.len() {
                        body[at + k] = *b;
                    }
                }
            }
            // Random API key or version over a valid body.
            6 => {
                if body.len() >= 4 {
                    if rng.chance(50) {
                        body[0..2].copy_from_slice(&(rng.below(70) as i16 - 2).to_be_bytes());
                    } else {
                        body[2..4].copy_from_slice(&(rng.below(22) as i16 - 2).to_be_bytes());
                    }
                }
            }
            // Inserted or repeated bytes.
            7 => {
                let at = rng.below(body.len());
                let n = rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                body.splice(at..at, junk);
            }
            // Bytes deleted from the middle.
            _ => {
                let at = rng.below(body.len());
                let n = rng.below(16).min(body.len() - at);
                body.drain(at..at + n);
            }
        }
    }
    body.truncate(FUZZ_MAX_FRAME_BYTES);
    let mut size = body.len() as i32;
    if rng.chance(3) {
        // A size prefix that lies: larger (the broker waits for bytes that never come
        // on this connection, so it is dropped after) or smaller.
        size = [size + 1 + rng.below(100) as i32, size / 2, -1, 0][rng.below(4)];
    }
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[test]
fn random_garbage_and_mutated_requests_never_hurt_the_broker() {
    let seed = std::env::var("KEEL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let secs = std::env::var("KEEL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FUZZ_DEFAULT_SECS);
    eprintln!("bad_input fuzz: seed {seed} for {secs} s (replay with KEEL_FUZZ_SEED={seed})");

    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("keel.log");
    let mut node = KeelNode::start_in(tmp.path(), &[]).unwrap();
    let addr = node.addr.clone();
    let mut ledger = Ledger::new("ledger", 0);
    let (frames, max_rss, baseline) = block_on(async {
        assert_eq!(create_topic(&addr, "fuzz", 1, &[]).await, NONE);
        assert_eq!(create_topic(&addr, "ledger", 1, &[]).await, NONE);
        ledger.produce_good(&addr).await;
        ledger.produce_good(&addr).await;
        let baseline = rss_kib(&node);
        let corpus = fuzz_corpus();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for worker in 0..FUZZ_CONNECTIONS {
            let addr = addr.clone();
            let corpus = corpus.clone();
            let log_path = log_path.clone();
            let mut rng = Rng::new(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let mut s = match TcpStream::connect(&addr).await {
                        Ok(s) => s,
                        Err(e) => panic!(
                            "seed {seed}: cannot connect ({e}); {}",
                            why_the_broker_stopped(&log_path)
                        ),
                    };
                    // A few frames per connection, until the broker closes it.
                    for _ in 0..1 + rng.below(6) {
                        let frame = mutate(&mut rng, &corpus);
                        sent += 1;
                        if s.write_all(&frame).await.is_err() {
                            break;
                        }
                        // Either an answer, a close, or (for a lying size prefix, or an
                        // acks=0 produce) silence: wait briefly, then move on.
                        let mut buf = [0u8; 4096];
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) => break,
                        }
                    }
                }
                sent
            }));
        }
        // Watch the broker's memory while the workers run.
        let mut max_rss = baseline;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(
                node.is_running(),
                "seed {seed}: {}",
                why_the_broker_stopped(&log_path)
            );
            max_rss = max_rss.max(rss_kib(&node));
            assert!(
                max_rss < baseline + RSS_GROWTH_LIMIT_KIB,
                "seed {seed}: resident set grew from {baseline} KiB to {max_rss} KiB"
            );
        }
        let mut frames = 0;
        for t in tasks {
            frames += t.await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        (frames, max_rss, baseline)
    });
    eprintln!("bad_input fuzz: {frames} frames, resident set {baseline} KiB → max {max_rss} KiB");
    assert!(
        node.is_running(),
        "seed {seed}: {}",
        why_the_broker_stopped(&log_path)
    );
    // Bad input is the client's fault: the broker may warn, but an error in its log
    // (a response it could not encode, a request task that failed) is a broker bug.
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "seed {seed}: the broker logged errors:\n{}",
        errors.join("\n")
    );
    let fuzz_end = block_on(async {
        assert_serves(&addr).await;
        ledger.verify(&addr).await;
        ledger.produce_good(&addr).await;
        ledger.verify(&addr).await;
        // Whatever the mutations got into the fuzz topic reads back as whole,
        // CRC-valid batches at dense offsets.
        let end = read_all_dense(&addr, "fuzz", 0).await;
        eprintln!("bad_input fuzz: the fuzz topic ends at offset {end}");
        end
    });
    node.restart().unwrap();
    block_on(async {
        assert_serves(&node.addr).await;
        ledger.verify(&node.addr).await;
        assert_eq!(
            read_all_dense(&node.addr, "fuzz", 0).await,
            fuzz_end,
            "seed {seed}"
        );
    });
}

/// What the broker's log says about why it is gone: a clean shutdown means it was
/// sent SIGTERM or SIGINT, which this test never does while fuzzing (on a shared
/// machine, something that signals a stale process id can hit it).
fn why_the_broker_stopped(log_path: &std::path::Path) -> String {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    if log.contains("shutting down") {
        return "the broker shut down on a signal from outside this test".to_string();
    }
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("the broker died; its log ends:\n{}", tail.join("\n"))
}

/// Reads a partition from offset 0 to its high watermark, checking every batch's
/// framing and CRC and that each starts where the previous ended; returns the end.
async fn read_all_dense(addr: &str, topic: &str, partition: i32) -> i64 {
    let mut c = connect(addr).await;
    let mut offset = 0;
    loop {
        let (error, hw, records) = fetch(&mut c, topic, partition, offset).await;
        assert_eq!(error, NONE, "fetch {topic} at {offset}");
        if records.is_empty() {
            assert_eq!(offset, hw, "{topic} read to its high watermark");
            return offset;
        }
        for item in BatchIter::new(&records) {
            let (header, bytes) = item.unwrap_or_else(|e| panic!("{topic} at {offset}: {e}"));
            if header.next_offset() <= offset {
                continue;
            }
            assert_eq!(header.base_offset, offset, "offsets of {topic} are dense");
            assert_eq!(compute_crc(bytes), header.crc, "CRC of {topic} at {offset}");
            offset = header.next_offset();
        }
    }
}
