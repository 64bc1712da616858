//! Idempotent batches this broker refused before appending, remembered briefly so
//! that a pipelined successor is not answered OUT_OF_ORDER_SEQUENCE_NUMBER.
//!
//! A producer pipelines requests R1 and R2 for one partition on one connection. If R1
//! is refused with a retriable error before it is appended — NOT_LEADER_OR_FOLLOWER in
//! the moment before this broker applies its new leadership, NOT_ENOUGH_REPLICAS while
//! the ISR is below `min.insync.replicas` — and the condition has cleared by the time R2
//! arrives, R2's first sequence skips R1's, and the leader's sequence rule answers
//! OUT_OF_ORDER_SEQUENCE_NUMBER. The Java client retries that answer. librdkafka 2.x
//! instead bumps the producer's epoch (for every partition, its issue #4953) and
//! renumbers every message it still holds, including ones whose earlier attempts were
//! written but never acknowledged: those are then written twice. So when the sequence a
//! gap skips is exactly that of a batch this broker refused moments ago, R2 gets the
//! retriable error R1 got, and the client retries both in order.
//!
//! The same gap appears, without any refusal here, when R1 went to the previous leader
//! and is still waiting there (an isolated leader keeps an acks=all request until it
//! times out) while R2, sent after the client learnt of the new leader, reaches this
//! one. So for `producer.sequence.gap.grace.ms` after taking up a leadership, a leader
//! answers a gap NOT_LEADER_OR_FOLLOWER, which librdkafka retries only once every
//! earlier request of the partition has been answered (`gap_is_ahead` and
//! `api::produce`). A gap nothing here explains is still OUT_OF_ORDER_SEQUENCE_NUMBER,
//! as in Kafka.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use keel_storage::batch::BatchHeader;

/// How long a refusal explains a gap: longer than a client takes to send the requests
/// it had pipelined behind the refused one (they are already on the wire).
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(30);
/// Most refusals remembered at once; beyond it expired ones are dropped and, if none
/// has expired, new ones are not remembered (the gap then gets Kafka's answer).
pub const MAX_REMEMBERED_REFUSALS: usize = 10_000;

/// Sequences wrap from `i32::MAX` to 0; a first sequence this far ahead of the expected
/// one (or further) is taken as behind it, a retry of something old.
const SEQUENCE_HALF_RANGE: i64 = 1 << 30;

/// Whether a batch starting at sequence `received` skips sequences after `expected`
/// (rather than repeating ones before it), sequences wrapping at `i32::MAX`.
pub fn gap_is_ahead(expected: i32, received: i32) -> bool {
    let span = i64::from(i32::MAX) + 1;
    let distance = (i64::from(received) - i64::from(expected)).rem_euclid(span);
    distance > 0 && distance < SEQUENCE_HALF_RANGE
}

/// One refused batch: what the producer will resend first.
#[derive(Clone, Copy, Debug)]
struct Refusal {
    producer_epoch: i16,
    first_sequence: i32,
    error: ResponseError,
    at: Instant,
}

/// Key: topic, partition, producer id.
type Key = (String, i32, i64);

/// Recently refused idempotent batches, per partition and producer.
#[derive(Debug, Default)]
pub struct RecentRefusals {
    refusals: Mutex<HashMap<Key, Refusal>>,
}

impl RecentRefusals {
    /// Notes that the batches in `records` (the first one speaks for the request) were
    /// refused with the retriable `error` before being appended. Batches without a
    /// producer id, or that do not parse, are not noted.
    pub fn note(
        &self,
        topic: &str,
        partition: i32,
        records: &[u8],
        error: ResponseError,
        now: Instant,
    ) {
        let Ok(h) = BatchHeader::parse(records) else {
            return;
        };
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let refusal = Refusal {
            producer_epoch: h.producer_epoch,
            first_sequence: h.base_sequence,
            error,
            at: now,
        };
        let mut map = self.lock();
        let key = (topic.to_string(), partition, h.producer_id);
        if map.len() >= MAX_REMEMBERED_REFUSALS && !map.contains_key(&key) {
            map.retain(|_, r| now.duration_since(r.at) < REFUSAL_MEMORY);
            if map.len() >= MAX_REMEMBERED_REFUSALS {
                return;
            }
        }
        // A later refusal of the same producer replaces an earlier one only if it is
        // of an earlier (or the same) sequence: the client resends the lowest first.
        match map.get(&key) {
            Some(old)
                if old.producer_epoch == refusal.producer_epoch
                    && now.duration_since(old.at) < REFUSAL_MEMORY
                    && old.first_sequence < refusal.first_sequence => {}
            _ => {
                map.insert(key, refusal);
            }
        }
    }

    /// The error to answer instead of OUT_OF_ORDER_SEQUENCE_NUMBER for a batch of
    /// `producer_id` in `producer_epoch` whose sequence skipped `expected`, if this
    /// broker refused the batch starting at `expected` within [`REFUSAL_MEMORY`].
    pub fn explains_gap(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        expected: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        let map = self.lock();
        let r = map.get(&(topic.to_string(), partition, producer_id))?;
        let explained = r.producer_epoch == producer_epoch
            && r.first_sequence == expected
            && now.duration_since(r.at) < REFUSAL_MEMORY;
        explained.then_some(r.error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Refusal>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::testing::BatchBuilder;

    const PID: i64 = 7;

    fn batch(epoch: i16, first_seq: i32) -> Vec<u8> {
        BatchBuilder::new(5, 8)
            .producer(PID, epoch, first_seq)
            .build()
    }

    #[test]
    fn a_gap_over_a_refused_batch_gets_the_refusals_error() {
        let r = RecentRefusals::default();
        let t0 = Instant::now();
        r.note(
            "t",
            0,
            &batch(0, 10),
            ResponseError::NotLeaderOrFollower,
            t0,
        );
        assert_eq!(
            r.explains_gap("t", 0, PID, 0, 10, t0),
            Some(ResponseError::NotLeaderOrFollower)
        );
        // Another partition, producer, epoch or sequence is not explained.
        assert_eq!(r.explains_gap("t", 1, PID, 0, 10, t0), None);
        assert_eq!(r.explains_gap("u", 0, PID, 0, 10, t0), None);
        assert_eq!(r.explains_gap("t", 0, PID + 1, 0, 10, t0), None);
        assert_eq!(r.explains_gap("t", 0, PID, 1, 10, t0), None);
        assert_eq!(r.explains_gap("t", 0, PID, 0, 15, t0), None);
    }

    #[test]
    fn a_refusal_is_forgotten_after_the_memory_window() {
        let r = RecentRefusals::default();
        let t0 = Instant::now();
        r.note("t", 0, &batch(0, 10), ResponseError::NotEnoughReplicas, t0);
        let later = t0 + REFUSAL_MEMORY;
        assert_eq!(r.explains_gap("t", 0, PID, 0, 10, later), None);
    }

    #[test]
    fn the_lowest_refused_sequence_is_kept() {
        let r = RecentRefusals::default();
        let t0 = Instant::now();
        r.note(
            "t",
            0,
            &batch(0, 10),
            ResponseError::NotLeaderOrFollower,
            t0,
        );
        r.note(
            "t",
            0,
            &batch(0, 15),
            ResponseError::NotLeaderOrFollower,
            t0,
        );
        assert!(r.explains_gap("t", 0, PID, 0, 10, t0).is_some());
        // A new epoch starts over.
        r.note("t", 0, &batch(1, 0), ResponseError::NotLeaderOrFollower, t0);
        assert!(r.explains_gap("t", 0, PID, 1, 0, t0).is_some());
        assert_eq!(r.explains_gap("t", 0, PID, 0, 10, t0), None);
    }

    #[test]
    fn a_gap_is_ahead_only_when_sequences_were_skipped() {
        assert!(gap_is_ahead(5, 10));
        assert!(gap_is_ahead(0, 7));
        assert!(!gap_is_ahead(10, 10));
        assert!(!gap_is_ahead(10, 5), "a rewind is not a gap");
        assert!(gap_is_ahead(i32::MAX - 1, 3), "across the wrap");
        assert!(!gap_is_ahead(3, i32::MAX - 1), "behind, across the wrap");
    }

    #[test]
    fn batches_without_a_producer_are_not_noted() {
        let r = RecentRefusals::default();
        let t0 = Instant::now();
        r.note(
            "t",
            0,
            &BatchBuilder::new(5, 8).build(),
            ResponseError::NotLeaderOrFollower,
            t0,
        );
        r.note("t", 0, b"garbage", ResponseError::NotLeaderOrFollower, t0);
        assert!(r.lock().is_empty());
    }
}
