//! The `__consumer_offsets` topic: its name, which partition holds a group, and how it
//! is created.

use std::collections::BTreeMap;

use keel_raft::controller::NewTopic;

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The partition of the offsets topic that holds `group`, as Apache Kafka computes it
/// (`abs(groupId.hashCode()) % partitions`, with Java's string hash over UTF-16 code
/// units), so the same group lands on the same partition index as in Kafka.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    // Kafka's Utils.abs: abs, with MIN_VALUE mapped to 0.
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// How the offsets topic is created.
#[derive(Clone, Debug)]
pub struct OffsetsTopicSpec {
    /// offsets.topic.num.partitions
    pub partitions: i32,
    /// offsets.topic.replication.factor (capped at the brokers there are)
    pub replication_factor: i16,
    /// offsets.topic.segment.bytes
    pub segment_bytes: i64,
}

impl OffsetsTopicSpec {
    /// The CreateTopics entry for the topic, with `live_brokers` unfenced brokers:
    /// compacted, replicated to min(replication factor, brokers).
    pub fn new_topic(&self, live_brokers: usize) -> NewTopic {
        let rf = (self.replication_factor as usize).min(live_brokers.max(1)) as i16;
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), self.segment_bytes.to_string()),
            ("compression.type".to_string(), "producer".to_string()),
        ]);
        NewTopic {
            name: OFFSETS_TOPIC.to_string(),
            num_partitions: self.partitions,
            replication_factor: rf,
            assignments: BTreeMap::new(),
            configs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Java: "group".hashCode() == 98629247 -> 98629247 % 50 == 47.
        assert_eq!(partition_for("group", 50), 47);
        // "".hashCode() == 0.
        assert_eq!(partition_for("", 50), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE, which Kafka maps to 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        // A negative hash: "console-consumer-1".hashCode() is negative in Java.
        let p = partition_for("console-consumer-1", 50);
        assert!((0..50).contains(&p));
        // Characters outside the BMP hash as two UTF-16 units.
        assert_eq!(partition_for("\u{1F600}", 1_000_000), {
            let h = 0xD83Di32.wrapping_mul(31).wrapping_add(0xDE00);
            h.abs() % 1_000_000
        });
    }

    #[test]
    fn replication_is_capped_at_the_brokers_there_are() {
        let spec = OffsetsTopicSpec {
            partitions: 50,
            replication_factor: 3,
            segment_bytes: 104_857_600,
        };
        assert_eq!(spec.new_topic(1).replication_factor, 1);
        assert_eq!(spec.new_topic(5).replication_factor, 3);
        assert_eq!(spec.new_topic(1).configs["cleanup.policy"], "compact");
    }
}
