//! Produce v0–v2: the same request as v3 without `transactional_id`, and responses
//! that lack fields v3 has. librdkafka decides which features a broker has from the
//! Produce versions it advertises, and turns compression off unless v0 is among them
//! (KAFKA-18659), so keel serves them. Only record batches of magic 2 are accepted;
//! old message sets get UNSUPPORTED_FOR_MESSAGE_FORMAT from the log.
//!
//! `kafka-protocol` encodes and decodes Produce from v3 only, so this module adapts:
//! the request is decoded as v3 after a null `transactional_id`, and the response is
//! written in the v0/v1/v2 layout by hand (v2's layout equals v3's).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ProduceResponse;
use kafka_protocol::protocol::{Encodable, StrBytes};

/// First Produce version `kafka-protocol` can decode.
pub const FIRST_CODEC_VERSION: i16 = 3;

/// A v0–v2 request body (after the header) rewritten as a v3 body.
pub fn as_v3_body(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 2);
    out.put_i16(-1); // transactional_id: null
    out.put_slice(body);
    out.freeze()
}

fn put_string(buf: &mut BytesMut, s: &StrBytes) {
    buf.put_i16(s.len() as i16);
    buf.put_slice(s.as_bytes());
}

/// Encodes a response body for Produce v0–v2.
///
/// # Errors
/// Never for v2 (delegated to the codec); v0 and v1 are written by hand.
pub fn encode_body(resp: &ProduceResponse, version: i16) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    if version >= 2 {
        resp.encode(&mut buf, FIRST_CODEC_VERSION)?;
        return Ok(buf.freeze());
    }
    buf.put_i32(resp.responses.len() as i32);
    for topic in &resp.responses {
        put_string(&mut buf, &topic.name.0);
        buf.put_i32(topic.partition_responses.len() as i32);
        for p in &topic.partition_responses {
            buf.put_i32(p.index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.base_offset);
        }
    }
    if version >= 1 {
        buf.put_i32(resp.throttle_time_ms);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn a_v2_request_body_decodes_as_v3_without_a_transactional_id() {
        // v2 layout: acks, timeout, [topic name, [partition, records]].
        let mut body = BytesMut::new();
        body.put_i16(-1);
        body.put_i32(1500);
        body.put_i32(1);
        put_string(&mut body, &StrBytes::from_static_str("t"));
        body.put_i32(1);
        body.put_i32(2);
        body.put_i32(3);
        body.put_slice(&[1, 2, 3]);
        let req = ProduceRequest::decode(&mut as_v3_body(&body), 3).unwrap();
        assert!(req.transactional_id.is_none());
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 1500);
        assert_eq!(req.topic_data[0].partition_data[0].index, 2);
        assert_eq!(
            req.topic_data[0].partition_data[0].records.as_deref(),
            Some(&[1u8, 2, 3][..])
        );
    }

    #[test]
    fn v0_and_v1_responses_have_their_own_layout() {
        let resp = ProduceResponse::default()
            .with_throttle_time_ms(7)
            .with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("ab")))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(1)
                    .with_error_code(0)
                    .with_base_offset(42)])]);
        let v0 = encode_body(&resp, 0).unwrap();
        // [1 topic]["ab"][1 partition][index 1][error 0][offset 42]
        assert_eq!(v0.len(), 4 + 2 + 2 + 4 + 4 + 2 + 8);
        let v1 = encode_body(&resp, 1).unwrap();
        assert_eq!(&v1[..v0.len()], &v0[..]);
        assert_eq!(&v1[v0.len()..], &7i32.to_be_bytes());
        let v2 = encode_body(&resp, 2).unwrap();
        let mut v3 = BytesMut::new();
        resp.encode(&mut v3, 3).unwrap();
        assert_eq!(&v2[..], &v3[..]);
    }
}
