//! Reading the opaque bytes of the "consumer" protocol type: a member's subscription
//! (JoinGroup metadata) and the leader's assignment (SyncGroup). The broker never needs
//! them to run a group; OffsetDelete (is a topic subscribed?), DescribeGroups tooling
//! and the CLI do. Both start with a 16-bit version; the counts in them are checked
//! against the bytes left before anything is reserved (`protocol::guard`).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};

use crate::protocol::guard;

/// Newest version of either structure that the codec reads.
const MAX_CONSUMER_PROTOCOL_VERSION: i16 = 3;

fn version_and_body(bytes: &Bytes) -> Option<(i16, Bytes)> {
    if bytes.len() < 2 {
        return None;
    }
    let mut b = bytes.clone();
    let version = b.get_i16();
    // Newer versions only add fields at the end: read them as the newest known one.
    Some((version.clamp(0, MAX_CONSUMER_PROTOCOL_VERSION), b))
}

/// The topics a consumer subscription names, or `None` if it does not parse.
pub fn subscribed_topics(metadata: &Bytes) -> Option<Vec<String>> {
    let (version, mut body) = version_and_body(metadata)?;
    let sub: ConsumerProtocolSubscription = guard::decode_body(&mut body, version).ok()?;
    Some(sub.topics.iter().map(|t| t.to_string()).collect())
}

/// The partitions a consumer assignment gives, as (topic, partitions), or `None` if it
/// does not parse (an empty assignment is `Some(vec![])`).
pub fn assigned_partitions(assignment: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let (version, mut body) = version_and_body(assignment)?;
    let a: ConsumerProtocolAssignment = guard::decode_body(&mut body, version).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic.0.to_string(), tp.partitions))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn subscriptions_and_assignments_as_clients_write_them_parse() {
        for version in 0..=3i16 {
            let sub = ConsumerProtocolSubscription::default().with_topics(vec![
                StrBytes::from_static_str("a"),
                StrBytes::from_static_str("b"),
            ]);
            let mut b = BytesMut::new();
            b.put_i16(version);
            sub.encode(&mut b, version).unwrap();
            assert_eq!(
                subscribed_topics(&b.freeze()),
                Some(vec!["a".to_string(), "b".to_string()])
            );
            let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_static_str("a")))
                    .with_partitions(vec![0, 2]),
            ]);
            let mut b = BytesMut::new();
            b.put_i16(version);
            a.encode(&mut b, version).unwrap();
            assert_eq!(
                assigned_partitions(&b.freeze()),
                Some(vec![("a".to_string(), vec![0, 2])])
            );
        }
    }

    #[test]
    fn garbage_and_huge_counts_do_not_parse() {
        assert_eq!(subscribed_topics(&Bytes::from_static(&[0])), None);
        assert_eq!(
            subscribed_topics(&Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])),
            None
        );
        assert_eq!(
            assigned_partitions(&Bytes::from_static(&[0, 1, 0x7f, 0xff, 0xff, 0xff, 1])),
            None
        );
    }
}
