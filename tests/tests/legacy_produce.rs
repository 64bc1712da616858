//! Produce v0–v2 (which librdkafka needs advertised, KAFKA-18659) is served for
//! record batches of magic 2, answered in each version's own response layout, and
//! message sets of the old formats are refused with UNSUPPORTED_FOR_MESSAGE_FORMAT.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use keel::cli::client::KafkaClient;
use keel_tests::clients::block_on;
use keel_tests::KeelNode;

const PRODUCE_KEY: i16 = 0;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;

fn batch(count: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A Produce request frame body (header v1 + v0–v2 body) for one partition.
fn legacy_produce(version: i16, correlation_id: i32, topic: &str, records: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(PRODUCE_KEY);
    b.put_i16(version);
    b.put_i32(correlation_id);
    b.put_i16(4);
    b.put_slice(b"test");
    b.put_i16(1); // acks
    b.put_i32(10_000);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(1);
    b.put_i32(0); // partition
    b.put_i32(records.len() as i32);
    b.put_slice(records);
    b.to_vec()
}

/// Parses a v0–v2 produce response with one topic and one partition:
/// (error code, base offset, bytes left after the partition's base offset).
fn parse(mut resp: Bytes, correlation_id: i32) -> (i16, i64, usize) {
    assert_eq!(resp.get_i32(), correlation_id);
    assert_eq!(resp.get_i32(), 1, "one topic");
    let len = resp.get_i16() as usize;
    resp.advance(len);
    assert_eq!(resp.get_i32(), 1, "one partition");
    assert_eq!(resp.get_i32(), 0, "partition 0");
    let error = resp.get_i16();
    let offset = resp.get_i64();
    (error, offset, resp.remaining())
}

/// Auto-creates `topic` with a Metadata request (answered once it exists).
async fn create_by_metadata(addr: &str, topic: &str) {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    let mut meta = KafkaClient::connect(addr, "legacy-meta").await.unwrap();
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(topic.to_string().into())))
        ]))
        .with_allow_auto_topic_creation(true);
    let resp = meta.call(&req, 4).await.unwrap();
    assert_eq!(resp.topics[0].error_code, 0, "auto-created {topic}");
}

#[test]
fn produce_v0_to_v2_append_magic_2_batches_and_answer_in_their_layout() {
    let node = KeelNode::start(&[]).unwrap();
    block_on(async {
        create_by_metadata(&node.addr, "legacy").await;
        let mut c = KafkaClient::connect(&node.addr, "legacy").await.unwrap();
        let mut expected_offset = 0;
        for version in 0..=2 {
            let resp = c
                .send_raw(&legacy_produce(
                    version,
                    100 + version as i32,
                    "legacy",
                    &batch(3),
                ))
                .await
                .unwrap();
            let (error, offset, rest) = parse(resp, 100 + version as i32);
            assert_eq!(error, 0, "v{version} produce error");
            assert_eq!(offset, expected_offset, "v{version} base offset");
            // v0: nothing after the offset; v1: throttle time; v2: log append time + throttle time.
            assert_eq!(
                rest,
                [0, 4, 12][version as usize],
                "v{version} response layout"
            );
            expected_offset += 3;
        }
    });
}

#[test]
fn old_message_formats_are_refused_with_unsupported_for_message_format() {
    let node = KeelNode::start(&[]).unwrap();
    block_on(async {
        create_by_metadata(&node.addr, "old").await;
        // A magic-1 message set: offset, size, crc, magic 1, attributes, timestamp, key, value.
        let mut msg = BytesMut::new();
        msg.put_u32(0); // crc (not checked before the magic)
        msg.put_i8(1);
        msg.put_i8(0);
        msg.put_i64(1_700_000_000_000);
        msg.put_i32(-1);
        msg.put_i32(1);
        msg.put_u8(b'x');
        let mut set = BytesMut::new();
        set.put_i64(0);
        set.put_i32(msg.len() as i32);
        set.put_slice(&msg);
        // Pad to a v2 header's size so framing checks reach the magic byte.
        set.put_slice(&[0u8; 64]);
        let mut c = KafkaClient::connect(&node.addr, "legacy").await.unwrap();
        let resp = c
            .send_raw(&legacy_produce(2, 7, "old", &set))
            .await
            .unwrap();
        let (error, _, _) = parse(resp, 7);
        assert_eq!(error, UNSUPPORTED_FOR_MESSAGE_FORMAT);
    });
}
