//! A group's committed offsets, as replayed from (and written to) `__consumer_offsets`.
//!
//! Each entry remembers the offset of the record that holds it in the offsets topic,
//! so acknowledgements that arrive out of order, or a replay, never let an older
//! commit replace a newer one.

use std::collections::BTreeMap;

use super::log_format::OffsetValue;

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub value: OffsetValue,
    /// Offset of its record in the group's `__consumer_offsets` partition.
    pub record_offset: i64,
}

/// A group's committed offsets by (topic, partition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetStore {
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

impl OffsetStore {
    /// Applies a stored commit (`Some`) or tombstone (`None`) found at `record_offset`;
    /// ignored if a later record for the partition was applied already.
    pub fn apply(
        &mut self,
        topic: &str,
        partition: i32,
        value: Option<OffsetValue>,
        record_offset: i64,
    ) {
        let key = (topic.to_string(), partition);
        if self
            .offsets
            .get(&key)
            .is_some_and(|c| c.record_offset > record_offset)
        {
            return;
        }
        match value {
            Some(value) => {
                self.offsets.insert(
                    key,
                    CommittedOffset {
                        value,
                        record_offset,
                    },
                );
            }
            None => {
                self.offsets.remove(&key);
            }
        }
    }

    /// The committed offset of a partition.
    pub fn get(&self, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets.get(&(topic.to_string(), partition))
    }

    /// Every committed offset, by topic then partition.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, i32), &CommittedOffset)> {
        self.offsets.iter()
    }

    /// Whether nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Number of committed partitions.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Partitions of `topic` with a committed offset.
    pub fn partitions_of(&self, topic: &str) -> Vec<i32> {
        self.offsets
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }

    /// Partitions whose offsets have expired at `now_ms`: every one committed before
    /// `now_ms - retention_ms` (or past its explicit expiry, from version 1 values),
    /// or, when `all_since` is given (an empty group using group management), all
    /// of them once the group has been empty since before `now_ms - retention_ms`
    /// (KIP-211).
    pub fn expired(
        &self,
        now_ms: i64,
        retention_ms: i64,
        all_since: Option<i64>,
    ) -> Vec<(String, i32)> {
        let horizon = now_ms.saturating_sub(retention_ms);
        if let Some(since) = all_since {
            return if since < horizon {
                self.offsets.keys().cloned().collect()
            } else {
                Vec::new()
            };
        }
        self.offsets
            .iter()
            .filter(|(_, c)| {
                let explicit = c.value.expire_timestamp_ms;
                if explicit >= 0 {
                    explicit <= now_ms
                } else {
                    c.value.commit_timestamp_ms < horizon
                }
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(offset: i64, at: i64) -> OffsetValue {
        OffsetValue {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: at,
            expire_timestamp_ms: -1,
        }
    }

    #[test]
    fn a_later_record_wins_whatever_order_they_are_applied_in() {
        let mut s = OffsetStore::default();
        s.apply("t", 0, Some(v(20, 0)), 11);
        s.apply("t", 0, Some(v(10, 0)), 10);
        assert_eq!(s.get("t", 0).unwrap().value.offset, 20);
        s.apply("t", 0, None, 9);
        assert!(
            s.get("t", 0).is_some(),
            "an older tombstone must not delete"
        );
        s.apply("t", 0, None, 12);
        assert!(s.get("t", 0).is_none());
    }

    #[test]
    fn offsets_expire_by_commit_time_or_all_at_once_for_an_empty_group() {
        let mut s = OffsetStore::default();
        s.apply("t", 0, Some(v(1, 100)), 0);
        s.apply("t", 1, Some(v(1, 900)), 1);
        assert_eq!(s.expired(1_000, 500, None), vec![("t".to_string(), 0)]);
        assert_eq!(s.expired(1_000, 500, Some(600)).len(), 0);
        assert_eq!(s.expired(1_000, 500, Some(400)).len(), 2);
    }
}
