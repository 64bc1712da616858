//! Builders for valid RecordBatch v2 bytes, for tests in this crate and its users.
//!
//! The records are real Kafka records (varint framing, no headers), so a Kafka client
//! could decode them: by default with null keys and synthetic values, or with the keys
//! and values given ([`BatchBuilder::keyed`]), optionally compressed.

use crate::batch::{compute_crc, LOG_OVERHEAD_BYTES, NO_PRODUCER_ID, NO_SEQUENCE};
use crate::codec;

/// One record of a [`BatchBuilder::keyed`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRecord {
    /// The key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

impl TestRecord {
    /// A record with a key and a value.
    pub fn value(key: &[u8], value: &[u8]) -> Self {
        Self {
            key: Some(key.to_vec()),
            value: Some(value.to_vec()),
        }
    }

    /// A tombstone: a key with a null value.
    pub fn tombstone(key: &[u8]) -> Self {
        Self {
            key: Some(key.to_vec()),
            value: None,
        }
    }

    /// A record without a key.
    pub fn unkeyed(value: &[u8]) -> Self {
        Self {
            key: None,
            value: Some(value.to_vec()),
        }
    }
}

/// Builds one uncompressed RecordBatch v2 with `records` records of `value_bytes` each.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    records: usize,
    value_bytes: usize,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    base_timestamp: i64,
    transactional: bool,
    control: bool,
    fill: u8,
    keyed: Option<Vec<TestRecord>>,
    compression: u8,
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a nullable byte string: its length (-1 for null) and bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

impl BatchBuilder {
    /// A batch of `records` records (at least one is written) of `value_bytes` each.
    pub fn new(records: usize, value_bytes: usize) -> Self {
        Self {
            records: records.max(1),
            value_bytes,
            base_offset: 0,
            partition_leader_epoch: -1,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: -1,
            base_sequence: NO_SEQUENCE,
            base_timestamp: 0,
            transactional: false,
            control: false,
            fill: 0,
            keyed: None,
            compression: 0,
        }
    }

    /// A batch of exactly these records (at least one).
    ///
    /// # Panics
    /// If `records` is empty.
    pub fn keyed(records: Vec<TestRecord>) -> Self {
        assert!(!records.is_empty(), "a batch needs a record");
        let mut b = Self::new(records.len(), 0);
        b.keyed = Some(records);
        b
    }

    /// Compresses the records with this codec (1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(mut self, codec: u8) -> Self {
        self.compression = codec;
        self
    }

    /// Sets `baseOffset` (the leader overwrites it on append).
    pub fn base_offset(mut self, offset: i64) -> Self {
        self.base_offset = offset;
        self
    }

    /// Sets `partitionLeaderEpoch`.
    pub fn leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Makes the batch idempotent: producer id, epoch and first sequence.
    pub fn producer(mut self, producer_id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// First record's timestamp; record `i` gets `timestamp_ms + i`.
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.base_timestamp = timestamp_ms;
        self
    }

    /// Marks the batch transactional.
    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// Marks the batch as a control batch.
    pub fn control(mut self) -> Self {
        self.control = true;
        self
    }

    /// Byte mixed into every value, so batches with equal shapes differ.
    pub fn fill(mut self, fill: u8) -> Self {
        self.fill = fill;
        self
    }

    /// The batch bytes, CRC included.
    pub fn build(&self) -> Vec<u8> {
        let mut records = Vec::new();
        let mut body = Vec::new();
        for i in 0..self.records {
            body.clear();
            body.push(0); // record attributes
            put_varint(&mut body, i as i64); // timestamp delta
            put_varint(&mut body, i as i64); // offset delta
            match self.keyed.as_ref().map(|r| &r[i]) {
                Some(record) => {
                    put_bytes(&mut body, record.key.as_deref());
                    put_bytes(&mut body, record.value.as_deref());
                }
                None => {
                    put_varint(&mut body, -1); // null key
                    put_varint(&mut body, self.value_bytes as i64);
                    body.extend((0..self.value_bytes).map(|j| (i + j) as u8 ^ self.fill));
                }
            }
            put_varint(&mut body, 0); // no headers
            put_varint(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let last_delta = (self.records - 1) as i32;
        if self.compression != 0 {
            records =
                codec::compress(self.compression, &records, &[]).expect("test records compress");
        }
        let mut attributes: i16 = i16::from(self.compression);
        if self.transactional {
            attributes |= 0x10;
        }
        if self.control {
            attributes |= 0x20;
        }
        let mut out = Vec::with_capacity(61 + records.len());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes()); // batch length, patched below
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(2); // magic
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&(self.base_timestamp + i64::from(last_delta)).to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records as i32).to_be_bytes());
        out.extend_from_slice(&records);
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = compute_crc(&out);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}
