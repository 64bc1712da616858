//! The records of `__consumer_offsets`, in Apache Kafka's own encoding, so Kafka's
//! tools (and a Kafka broker reading a copied log) understand them.
//!
//! Keys start with a 16-bit schema version: 0 and 1 are an offset commit (group,
//! topic, partition), 2 is a group's metadata (group). A null value is a tombstone.
//! keel writes offset commit values in version 3 (offset, leader epoch, metadata,
//! commit time) and group metadata in version 3 (members with instance ids); it reads
//! versions 0–3 of both. Everything read is bounds-checked: a damaged record is an
//! error, never a panic.

use bytes::{BufMut, Bytes, BytesMut};

/// Key schema version of an offset commit written by keel.
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Key schema version of group metadata.
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value schema version of offset commits written by keel.
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Value schema version of group metadata written by keel.
pub const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1: unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Only in value version 1; -1 otherwise.
    pub expire_timestamp_ms: i64,
}

/// One member in a stored group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's state as stored after each generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

/// One decoded record of the offsets topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// An offset commit; `None` is a tombstone (the offset was deleted or expired).
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
    /// A group's metadata; `None` is a tombstone (the group was deleted).
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

/// A record that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("record has no key")]
    MissingKey,
    #[error("unknown key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown {kind} value version {version}")]
    UnknownValueVersion { kind: &'static str, version: i16 },
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("invalid length {0}")]
    InvalidLength(i64),
    #[error("string is not UTF-8")]
    NotUtf8,
}

/// Encodes an offset commit key.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + 4 + group.len() + topic.len() + 4);
    b.put_i16(OFFSET_COMMIT_KEY_VERSION);
    put_string(&mut b, group);
    put_string(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

/// Encodes a group metadata key.
pub fn group_key(group: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + group.len());
    b.put_i16(GROUP_METADATA_KEY_VERSION);
    put_string(&mut b, group);
    b.freeze()
}

/// Encodes an offset commit value (version 3).
pub fn offset_value(v: &OffsetValue) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + 8 + 4 + 2 + v.metadata.len() + 8);
    b.put_i16(OFFSET_COMMIT_VALUE_VERSION);
    b.put_i64(v.offset);
    b.put_i32(v.leader_epoch);
    put_string(&mut b, &v.metadata);
    b.put_i64(v.commit_timestamp_ms);
    b.freeze()
}

/// Encodes a group metadata value (version 3).
pub fn group_value(v: &GroupValue) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(GROUP_METADATA_VALUE_VERSION);
    put_string(&mut b, &v.protocol_type);
    b.put_i32(v.generation);
    put_nullable_string(&mut b, v.protocol.as_deref());
    put_nullable_string(&mut b, v.leader.as_deref());
    b.put_i64(v.state_timestamp_ms);
    b.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_string(&mut b, &m.member_id);
        put_nullable_string(&mut b, m.instance_id.as_deref());
        put_string(&mut b, &m.client_id);
        put_string(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// Decodes one record of the offsets topic.
///
/// # Errors
/// Missing keys, unknown schema versions and truncated or malformed fields.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OffsetsRecord, FormatError> {
    let mut k = Reader::new(key.ok_or(FormatError::MissingKey)?);
    let version = k.i16("key version")?;
    match version {
        0 | 1 => {
            let group = k.string("group")?;
            let topic = k.string("topic")?;
            let partition = k.i32("partition")?;
            let value = value.map(decode_offset_value).transpose()?;
            Ok(OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = k.string("group")?;
            let value = value.map(decode_group_value).transpose()?;
            Ok(OffsetsRecord::Group { group, value })
        }
        other => Err(FormatError::UnknownKeyVersion(other)),
    }
}

fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, FormatError> {
    let mut r = Reader::new(bytes);
    let version = r.i16("offset value version")?;
    if !(0..=3).contains(&version) {
        return Err(FormatError::UnknownValueVersion {
            kind: "offset commit",
            version,
        });
    }
    let offset = r.i64("offset")?;
    let leader_epoch = if version >= 3 {
        r.i32("leader epoch")?
    } else {
        -1
    };
    let metadata = r.string("metadata")?;
    let commit_timestamp_ms = r.i64("commit timestamp")?;
    let expire_timestamp_ms = if version == 1 {
        r.i64("expire timestamp")?
    } else {
        -1
    };
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, FormatError> {
    let mut r = Reader::new(bytes);
    let version = r.i16("group value version")?;
    if !(0..=3).contains(&version) {
        return Err(FormatError::UnknownValueVersion {
            kind: "group metadata",
            version,
        });
    }
    let protocol_type = r.string("protocol type")?;
    let generation = r.i32("generation")?;
    let protocol = r.nullable_string("protocol")?;
    let leader = r.nullable_string("leader")?;
    let state_timestamp_ms = if version >= 2 {
        r.i64("state timestamp")?
    } else {
        -1
    };
    let count = r.i32("member count")?;
    // Each member takes at least 24 bytes: a count beyond that is damage.
    if count < 0 || count as usize > r.remaining() / 24 + 1 {
        return Err(FormatError::InvalidLength(count.into()));
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let member_id = r.string("member id")?;
        let instance_id = if version >= 3 {
            r.nullable_string("instance id")?
        } else {
            None
        };
        let client_id = r.string("client id")?;
        let client_host = r.string("client host")?;
        let session_first = version == 0;
        let (rebalance_timeout_ms, session_timeout_ms) = if session_first {
            let s = r.i32("session timeout")?;
            (s, s)
        } else {
            let rt = r.i32("rebalance timeout")?;
            (rt, r.i32("session timeout")?)
        };
        let subscription = r.bytes("subscription")?;
        let assignment = r.bytes("assignment")?;
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

fn put_string(b: &mut BytesMut, s: &str) {
    // Kafka strings are at most i16::MAX bytes; longer ones are cut at a char boundary
    // (only client-supplied metadata can be that long, and it is bounded earlier).
    let mut end = s.len().min(i16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_i16(end as i16);
    b.put_slice(&s.as_bytes()[..end]);
}

fn put_nullable_string(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        if self.buf.len() < n {
            return Err(FormatError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, FormatError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, FormatError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, FormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn nullable_string(&mut self, what: &'static str) -> Result<Option<String>, FormatError> {
        let len = self.i16(what)?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(FormatError::InvalidLength(len.into()));
        }
        let b = self.take(len as usize, what)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| FormatError::NotUtf8)
    }

    fn string(&mut self, what: &'static str) -> Result<String, FormatError> {
        self.nullable_string(what)?
            .ok_or(FormatError::InvalidLength(-1))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, FormatError> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(Bytes::new());
        }
        if len < 0 {
            return Err(FormatError::InvalidLength(len.into()));
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize, what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_group() -> GroupValue {
        GroupValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("c-1".into()),
            state_timestamp_ms: 1_700_000_000_000,
            members: vec![
                StoredMember {
                    member_id: "c-1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"assign"),
                },
                StoredMember {
                    member_id: "s-2".into(),
                    instance_id: Some("s".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.2".into(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn offset_commits_round_trip() {
        let v = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp_ms: 99,
            expire_timestamp_ms: -1,
        };
        let rec = decode(Some(&offset_key("g", "orders", 5)), Some(&offset_value(&v))).unwrap();
        assert_eq!(
            rec,
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 5,
                value: Some(v)
            }
        );
    }

    #[test]
    fn group_metadata_round_trips_and_tombstones_decode() {
        let g = sample_group();
        let rec = decode(Some(&group_key("g")), Some(&group_value(&g))).unwrap();
        assert_eq!(
            rec,
            OffsetsRecord::Group {
                group: "g".into(),
                value: Some(g)
            }
        );
        assert_eq!(
            decode(Some(&group_key("g")), None).unwrap(),
            OffsetsRecord::Group {
                group: "g".into(),
                value: None
            }
        );
    }

    #[test]
    fn kafka_offset_value_v1_with_expiry_decodes() {
        // Version 1 as Kafka 0.10 wrote it: offset, metadata, commit and expire times.
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i64(10);
        put_string(&mut b, "");
        b.put_i64(5);
        b.put_i64(6);
        let rec = decode(Some(&offset_key("g", "t", 0)), Some(&b)).unwrap();
        let OffsetsRecord::Offset { value: Some(v), .. } = rec else {
            panic!("{rec:?}")
        };
        assert_eq!(
            (v.offset, v.leader_epoch, v.expire_timestamp_ms),
            (10, -1, 6)
        );
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let key = group_key("group");
        let value = group_value(&sample_group());
        for cut in 0..value.len() {
            assert!(
                decode(Some(&key), Some(&value[..cut])).is_err(),
                "cut {cut}"
            );
        }
        for cut in 0..key.len() {
            assert!(decode(Some(&key[..cut]), None).is_err());
        }
        assert_eq!(decode(None, None), Err(FormatError::MissingKey));
        let mut bad = BytesMut::new();
        bad.put_i16(9);
        assert_eq!(
            decode(Some(&bad), None),
            Err(FormatError::UnknownKeyVersion(9))
        );
    }

    #[test]
    fn absurd_member_counts_are_refused() {
        let mut v = group_value(&sample_group()).to_vec();
        // The member count follows the header fields; overwrite it with a huge one.
        let header = 2 + 2 + 8 + 4 + 2 + 5 + 2 + 3 + 8;
        v[header..header + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode(Some(&group_key("g")), Some(&v)),
            Err(FormatError::InvalidLength(_))
        ));
    }
}
