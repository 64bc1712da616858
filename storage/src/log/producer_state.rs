//! Idempotent-producer state of one partition: per producer id its epoch and its last
//! five batches (sequence range and offsets), the sequence rules a leader enforces, and
//! the snapshot file format (`{offset}.snapshot`) that lets recovery skip replaying the
//! whole log.
//!
//! The state is a pure function of the batch headers in the log: recovery rebuilds it from
//! the newest snapshot plus the headers after it.

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{increment_sequence, BatchHeader};

use super::error::AppendError;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `NUM_BATCHES_TO_RETAIN`; clients keep at most 5 requests in flight).
pub(crate) const PRODUCER_BATCHES_RETAINED: usize = 5;
/// Extension of producer snapshot files.
pub(crate) const SNAPSHOT_FILE_SUFFIX: &str = "snapshot";
/// Format version written first in a snapshot file.
const SNAPSHOT_VERSION: u16 = 1;
/// Bytes of the snapshot header: version u16, crc u32, producer count u32.
const SNAPSHOT_HEADER_BYTES: usize = 10;

/// Where one of a producer's recent batches landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    /// First sequence in the batch.
    pub first_seq: i32,
    /// Last sequence in the batch.
    pub last_seq: i32,
    /// Offset the batch was written at.
    pub base_offset: i64,
    /// Last offset of the batch.
    pub last_offset: i64,
    /// `maxTimestamp` of the batch as written.
    pub timestamp: i64,
}

/// What the log knows about one producer id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// Most recent batches, oldest first, at most [`PRODUCER_BATCHES_RETAINED`].
    pub batches: VecDeque<BatchMetadata>,
    /// Timestamp of the last write, for expiration.
    pub last_timestamp: i64,
}

impl ProducerEntry {
    fn push(&mut self, batch: BatchMetadata) {
        if self.batches.len() == PRODUCER_BATCHES_RETAINED {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
        self.last_timestamp = batch.timestamp;
    }

    fn duplicate_of(&self, h: &BatchHeader) -> Option<BatchMetadata> {
        if h.producer_epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence())
            .copied()
    }
}

/// Outcome of checking one leader batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// New data: write it.
    Append,
    /// A retry of a batch already in the log at these offsets.
    Duplicate(BatchMetadata),
}

/// Idempotent-producer state of a partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProducerStateManager {
    producers: BTreeMap<i64, ProducerEntry>,
}

/// Changes staged while checking the batches of one append, applied only once it is written.
#[derive(Debug)]
pub(crate) struct PendingProducers<'a> {
    base: &'a ProducerStateManager,
    staged: BTreeMap<i64, ProducerEntry>,
}

impl PendingProducers<'_> {
    /// Applies the leader's rules to a batch that will be written at `base_offset` with
    /// `timestamp` as its max timestamp, and stages the result.
    ///
    /// # Errors
    /// `InvalidProducerEpoch` for a fenced epoch, `OutOfOrderSequence` for a gap or a
    /// known producer's new epoch not starting at sequence 0.
    pub(crate) fn check_leader(
        &mut self,
        h: &BatchHeader,
        base_offset: i64,
        timestamp: i64,
    ) -> Result<Verdict, AppendError> {
        let pid = h.producer_id;
        let current = self
            .staged
            .get(&pid)
            .or_else(|| self.base.producers.get(&pid));
        if let Some(dup) = current.and_then(|e| e.duplicate_of(h)) {
            return Ok(Verdict::Duplicate(dup));
        }
        if let Some(e) = current {
            if h.producer_epoch < e.epoch {
                return Err(AppendError::InvalidProducerEpoch {
                    producer_id: pid,
                    epoch: h.producer_epoch,
                    current_epoch: e.epoch,
                });
            }
        }
        let mut entry = current.cloned().unwrap_or(ProducerEntry {
            epoch: h.producer_epoch,
            ..ProducerEntry::default()
        });
        let new_epoch = current.is_none_or(|e| e.epoch != h.producer_epoch);
        // A producer the partition does not know (new, or forgotten after
        // producer.id.expiration.ms, or all its batches deleted) may start at any
        // sequence, as in Kafka since KIP-360: a producer whose state expired while it
        // was idle continues where it was instead of failing with OUT_OF_ORDER_SEQUENCE.
        if !h.is_control() && current.is_some() {
            let expected = match (new_epoch, entry.batches.back()) {
                (false, Some(last)) => increment_sequence(last.last_seq, 1),
                _ => 0,
            };
            if h.base_sequence != expected {
                return Err(AppendError::OutOfOrderSequence {
                    producer_id: pid,
                    epoch: h.producer_epoch,
                    expected,
                    received: h.base_sequence,
                });
            }
        }
        if new_epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if h.is_control() {
            entry.last_timestamp = timestamp;
        } else {
            entry.push(BatchMetadata {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                base_offset,
                last_offset: base_offset + i64::from(h.last_offset_delta),
                timestamp,
            });
        }
        self.staged.insert(pid, entry);
        Ok(Verdict::Append)
    }

    /// The staged changes, for [`ProducerStateManager::commit`].
    pub(crate) fn into_staged(self) -> BTreeMap<i64, ProducerEntry> {
        self.staged
    }
}

/// Reads big-endian fields from a snapshot, failing on a short buffer.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.buf.len() < N {
            return Err("snapshot truncated".to_string());
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[..N]);
        self.buf = &self.buf[N..];
        Ok(out)
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.take().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take().map(i64::from_be_bytes)
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.take::<1>().map(|b| b[0])
    }
}

impl ProducerStateManager {
    /// Starts checking the batches of one leader append.
    pub(crate) fn begin(&self) -> PendingProducers<'_> {
        PendingProducers {
            base: self,
            staged: BTreeMap::new(),
        }
    }

    /// Applies changes staged by [`PendingProducers`] once their batches are written.
    pub(crate) fn commit(&mut self, staged: BTreeMap<i64, ProducerEntry>) {
        self.producers.extend(staged);
    }

    /// Applies a batch already in the log (follower append, recovery replay) without
    /// checking sequences: the leader did.
    pub(crate) fn apply_replicated(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                ..ProducerEntry::default()
            });
        if h.producer_epoch < entry.epoch {
            return;
        }
        if h.producer_epoch > entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if h.is_control() {
            entry.last_timestamp = h.max_timestamp;
        } else {
            entry.push(BatchMetadata {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
                timestamp: h.max_timestamp,
            });
        }
    }

    /// Forgets producers idle for at least `expiration_ms` (negative: never).
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        if expiration_ms < 0 {
            return 0;
        }
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    /// Number of producers known.
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// `(producer id, last offset)` of each known producer's last data batch:
    /// compaction keeps those batches (at least their headers).
    pub(crate) fn last_batches(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.producers
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, b.last_offset)))
    }

    /// What the log knows about `producer_id`.
    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Encodes the state as a snapshot file body (version, CRC-32C, entries).
    pub(crate) fn encode_snapshot(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (pid, e) in &self.producers {
            body.extend_from_slice(&pid.to_be_bytes());
            body.extend_from_slice(&e.epoch.to_be_bytes());
            body.extend_from_slice(&e.last_timestamp.to_be_bytes());
            body.push(e.batches.len() as u8);
            for b in &e.batches {
                body.extend_from_slice(&b.first_seq.to_be_bytes());
                body.extend_from_slice(&b.last_seq.to_be_bytes());
                body.extend_from_slice(&b.base_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
                body.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 6);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a snapshot file; any damage (torn write, bad CRC) is an error.
    ///
    /// # Errors
    /// A description of what is wrong.
    pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES {
            return Err(format!("snapshot of {} bytes is too short", bytes.len()));
        }
        let version = u16::from_be_bytes([bytes[0], bytes[1]]);
        if version != SNAPSHOT_VERSION {
            return Err(format!("unsupported snapshot version {version}"));
        }
        let stored = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let body = &bytes[6..];
        let actual = crc32c::crc32c(body);
        if stored != actual {
            return Err(format!(
                "snapshot CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ));
        }
        let mut r = Reader { buf: body };
        let count = r.i32()? as u32;
        let mut producers = BTreeMap::new();
        for _ in 0..count {
            let pid = r.i64()?;
            let epoch = r.i16()?;
            let last_timestamp = r.i64()?;
            let n = r.u8()? as usize;
            if n > PRODUCER_BATCHES_RETAINED {
                return Err(format!("producer {pid} has {n} batches"));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset: r.i64()?,
                    timestamp: r.i64()?,
                });
            }
            producers.insert(
                pid,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        if !r.buf.is_empty() {
            return Err(format!("{} trailing bytes in snapshot", r.buf.len()));
        }
        Ok(Self { producers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchHeader;
    use crate::testing::BatchBuilder;

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let bytes = BatchBuilder::new(records, 1)
            .producer(pid, epoch, seq)
            .build();
        match BatchHeader::parse(&bytes) {
            Ok(h) => h,
            Err(e) => panic!("test batch does not parse: {e}"),
        }
    }

    fn append(
        state: &mut ProducerStateManager,
        h: &BatchHeader,
        offset: i64,
    ) -> Result<Verdict, AppendError> {
        let mut pending = state.begin();
        let v = pending.check_leader(h, offset, 0)?;
        let staged = pending.into_staged();
        state.commit(staged);
        Ok(v)
    }

    #[test]
    fn sequences_must_follow_and_retries_are_duplicates() -> Result<(), AppendError> {
        let mut s = ProducerStateManager::default();
        assert_eq!(append(&mut s, &header(1, 0, 0, 2), 0)?, Verdict::Append);
        assert!(matches!(
            append(&mut s, &header(1, 0, 3, 1), 2),
            Err(AppendError::OutOfOrderSequence { expected: 2, .. })
        ));
        assert_eq!(append(&mut s, &header(1, 0, 2, 3), 2)?, Verdict::Append);
        match append(&mut s, &header(1, 0, 0, 2), 5)? {
            Verdict::Duplicate(b) => assert_eq!((b.base_offset, b.last_offset), (0, 1)),
            v => panic!("expected duplicate, got {v:?}"),
        }
        assert!(matches!(
            append(&mut s, &header(1, 0, 6, 1), 5),
            Err(AppendError::OutOfOrderSequence { expected: 5, .. })
        ));
        Ok(())
    }

    #[test]
    fn unknown_producer_may_start_at_any_sequence_then_must_follow() -> Result<(), AppendError> {
        let mut s = ProducerStateManager::default();
        // Expired while idle: its next batch continues the old sequence (Kafka, KIP-360).
        assert_eq!(append(&mut s, &header(4, 2, 40, 5), 0)?, Verdict::Append);
        assert!(matches!(
            append(&mut s, &header(4, 2, 46, 1), 5),
            Err(AppendError::OutOfOrderSequence { expected: 45, .. })
        ));
        assert_eq!(append(&mut s, &header(4, 2, 45, 1), 5)?, Verdict::Append);
        // A known producer's new epoch still starts at 0.
        assert!(matches!(
            append(&mut s, &header(4, 3, 46, 1), 6),
            Err(AppendError::OutOfOrderSequence { expected: 0, .. })
        ));
        Ok(())
    }

    #[test]
    fn epochs_fence_and_reset_sequences() -> Result<(), AppendError> {
        let mut s = ProducerStateManager::default();
        append(&mut s, &header(9, 3, 0, 1), 0)?;
        assert!(matches!(
            append(&mut s, &header(9, 2, 1, 1), 1),
            Err(AppendError::InvalidProducerEpoch {
                current_epoch: 3,
                ..
            })
        ));
        assert!(matches!(
            append(&mut s, &header(9, 4, 1, 1), 1),
            Err(AppendError::OutOfOrderSequence { .. })
        ));
        assert_eq!(append(&mut s, &header(9, 4, 0, 1), 1)?, Verdict::Append);
        Ok(())
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() -> Result<(), AppendError> {
        let mut s = ProducerStateManager::default();
        for i in 0..7 {
            append(&mut s, &header(1, 0, i, 1), i64::from(i))?;
        }
        assert_eq!(s.get(1).map(|e| e.batches.len()), Some(5));
        assert!(matches!(
            append(&mut s, &header(1, 0, 1, 1), 7),
            Err(AppendError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            append(&mut s, &header(1, 0, 2, 1), 7)?,
            Verdict::Duplicate(_)
        ));
        Ok(())
    }

    #[test]
    fn snapshot_round_trips_and_detects_damage() -> Result<(), String> {
        let mut s = ProducerStateManager::default();
        for pid in 0..3 {
            for seq in 0..(pid as i32 + 2) {
                let mut h = header(pid, 1, seq, 1);
                h.base_offset = i64::from(seq) * 10 + pid;
                s.apply_replicated(&h);
            }
        }
        let bytes = s.encode_snapshot();
        assert_eq!(ProducerStateManager::decode_snapshot(&bytes)?, s);
        for cut in [0, 5, bytes.len() - 1] {
            assert!(ProducerStateManager::decode_snapshot(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(ProducerStateManager::decode_snapshot(&flipped).is_err());
        Ok(())
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = ProducerStateManager::default();
        let mut h = header(5, 0, 0, 1);
        h.max_timestamp = 1_000;
        s.apply_replicated(&h);
        assert_eq!(s.expire(1_500, 1_000), 0);
        assert_eq!(s.expire(2_000, 1_000), 1);
        assert_eq!(s.len(), 0);
    }
}
