//! The one place that turns values into bytes and back.
//!
//! Every value keel-raft persists (log entries, vote, state machine, snapshots) or sends
//! to a peer is encoded here: a 2-byte big-endian format version followed by the bincode 2
//! (serde API, standard config) encoding of the value. The version lets the encoding change
//! later: a new build writes the new version and still reads the old ones through
//! [`Versioned::decode_older`]. Nothing else in the crate may call bincode; bincode is
//! unmaintained upstream and pinned, so keeping it behind this module keeps a replacement
//! small.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::image::BrokerImage;
use crate::image::ImageHeader;
use crate::image::MetadataImage;
use crate::image::TopicImage;
use crate::quorum::stored::SnapshotPayload;
use crate::records::ConfigResource;
use crate::records::MetadataBatch;

/// Length of the format-version prefix of every encoded value.
pub const VERSION_PREFIX_BYTES: usize = 2;

/// Upper bound on what one decode may read or allocate, so a corrupt length prefix cannot
/// make a node allocate without bound.
pub const MAX_DECODED_VALUE_BYTES: usize = 256 * 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("{what} is {len} bytes, too short to hold its format version")]
    Truncated { what: &'static str, len: usize },
    #[error("{what} has format version {version}, which this build cannot read (it writes version {current})")]
    UnsupportedVersion {
        what: &'static str,
        version: u16,
        current: u16,
    },
    #[error("cannot decode {what} (format version {version}): {reason}")]
    Decode {
        what: &'static str,
        version: u16,
        reason: String,
    },
    #[error("{what} (format version {version}) has {extra} unexpected trailing bytes")]
    TrailingBytes {
        what: &'static str,
        version: u16,
        extra: usize,
    },
}

/// A value with a versioned byte encoding.
pub trait Versioned: Serialize + DeserializeOwned {
    /// What the value is, for error messages.
    const WHAT: &'static str;
    /// The format version this build writes (and reads as `Self`).
    const VERSION: u16;

    /// Decodes a payload written with an older format `version`. No older formats exist
    /// yet; a type whose encoding changes overrides this to upgrade its old payloads.
    ///
    /// # Errors
    /// [`CodecError::UnsupportedVersion`] for a version this build does not know.
    fn decode_older(version: u16, _payload: &[u8]) -> Result<Self, CodecError> {
        Err(CodecError::UnsupportedVersion {
            what: Self::WHAT,
            version,
            current: Self::VERSION,
        })
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODED_VALUE_BYTES>()
}

/// Encodes `value` with its current format version.
///
/// # Errors
/// [`CodecError::Encode`] if serde refuses the value (never for this crate's types).
pub fn encode<T: Versioned>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&T::VERSION.to_be_bytes());
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| {
        CodecError::Encode {
            what: T::WHAT,
            reason: e.to_string(),
        }
    })?;
    Ok(out)
}

/// Decodes bytes written by [`encode`] (by this or an older build).
///
/// # Errors
/// A [`CodecError`] if the bytes are truncated, corrupt, of an unknown version, or carry
/// trailing garbage. Never panics on arbitrary input.
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let Some((prefix, payload)) = bytes.split_first_chunk::<VERSION_PREFIX_BYTES>() else {
        return Err(CodecError::Truncated {
            what: T::WHAT,
            len: bytes.len(),
        });
    };
    let version = u16::from_be_bytes(*prefix);
    if version != T::VERSION {
        return T::decode_older(version, payload);
    }
    decode_payload::<T>(T::WHAT, version, payload)
}

/// Decodes a bincode payload (without version prefix) as `T`; for
/// [`Versioned::decode_older`] implementations that read an old layout.
///
/// # Errors
/// [`CodecError::Decode`] or [`CodecError::TrailingBytes`].
pub fn decode_payload<T: DeserializeOwned>(
    what: &'static str,
    version: u16,
    payload: &[u8],
) -> Result<T, CodecError> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(payload, config()).map_err(|e| {
            CodecError::Decode {
                what,
                version,
                reason: e.to_string(),
            }
        })?;
    if read != payload.len() {
        return Err(CodecError::TrailingBytes {
            what,
            version,
            extra: payload.len().saturating_sub(read),
        });
    }
    Ok(value)
}

impl Versioned for MetadataBatch {
    const WHAT: &'static str = "metadata batch";
    const VERSION: u16 = 1;
}

/// Version 1 of [`ImageHeader`]: before the cluster id.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct ImageHeaderV1 {
    next_producer_id: i64,
    next_broker_epoch: i64,
    features: BTreeMap<String, i16>,
    last_applied_index: u64,
}

impl From<ImageHeaderV1> for ImageHeader {
    fn from(v1: ImageHeaderV1) -> Self {
        ImageHeader {
            next_producer_id: v1.next_producer_id,
            next_broker_epoch: v1.next_broker_epoch,
            features: v1.features,
            last_applied_index: v1.last_applied_index,
            cluster_id: None,
        }
    }
}

impl Versioned for ImageHeader {
    const WHAT: &'static str = "metadata image header";
    /// 2: adds `cluster_id`.
    const VERSION: u16 = 2;

    fn decode_older(version: u16, payload: &[u8]) -> Result<Self, CodecError> {
        match version {
            1 => decode_payload::<ImageHeaderV1>(Self::WHAT, version, payload).map(Into::into),
            _ => Err(CodecError::UnsupportedVersion {
                what: Self::WHAT,
                version,
                current: Self::VERSION,
            }),
        }
    }
}

impl Versioned for BrokerImage {
    const WHAT: &'static str = "broker image";
    const VERSION: u16 = 1;
}

impl Versioned for TopicImage {
    const WHAT: &'static str = "topic image";
    const VERSION: u16 = 1;
}

/// The persisted form of one config resource's overrides: the resource travels with its
/// overrides so the storage key need not be parsed back.
pub type ConfigOverrides = (ConfigResource, BTreeMap<String, String>);

impl Versioned for ConfigOverrides {
    const WHAT: &'static str = "config overrides";
    const VERSION: u16 = 1;
}

/// The persisted form of one topic's reassignments in progress: the topic id travels with
/// them so the storage key need not be parsed back.
pub type TopicReassignments = (uuid::Uuid, BTreeMap<i32, crate::image::Reassignment>);

impl Versioned for TopicReassignments {
    const WHAT: &'static str = "partition reassignments";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::stored::StoredLogId {
    const WHAT: &'static str = "log id";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::stored::StoredVote {
    const WHAT: &'static str = "vote";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::stored::StoredMembership {
    const WHAT: &'static str = "membership";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::stored::StoredEntry {
    const WHAT: &'static str = "raft log entry";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::stored::StoredSnapshotMeta {
    const WHAT: &'static str = "snapshot meta";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::rpc::RpcRequest {
    const WHAT: &'static str = "controller RPC request";
    const VERSION: u16 = 1;
}

impl Versioned for crate::quorum::rpc::RpcResponse {
    const WHAT: &'static str = "controller RPC response";
    const VERSION: u16 = 1;
}

/// Version 1 of [`MetadataImage`] inside a snapshot: before the cluster id.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct MetadataImageV1 {
    brokers: BTreeMap<i32, BrokerImage>,
    topics: BTreeMap<uuid::Uuid, TopicImage>,
    topic_ids_by_name: BTreeMap<String, uuid::Uuid>,
    configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    next_producer_id: i64,
    next_broker_epoch: i64,
    features: BTreeMap<String, i16>,
    last_applied_index: u64,
}

/// Version 1 of [`SnapshotPayload`].
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct SnapshotPayloadV1 {
    last_applied: Option<crate::quorum::stored::StoredLogId>,
    membership: crate::quorum::stored::StoredMembership,
    image: MetadataImageV1,
}

impl From<SnapshotPayloadV1> for SnapshotPayload {
    fn from(v1: SnapshotPayloadV1) -> Self {
        let i = v1.image;
        SnapshotPayload {
            last_applied: v1.last_applied,
            membership: v1.membership,
            image: MetadataImage {
                brokers: i.brokers,
                topics: i.topics,
                topic_ids_by_name: i.topic_ids_by_name,
                configs: i.configs,
                next_producer_id: i.next_producer_id,
                next_broker_epoch: i.next_broker_epoch,
                features: i.features,
                last_applied_index: i.last_applied_index,
                cluster_id: None,
                reassignments_by_topic: BTreeMap::new(),
            },
        }
    }
}

/// Version 2 of [`MetadataImage`] inside a snapshot: before partition reassignments.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct MetadataImageV2 {
    brokers: BTreeMap<i32, BrokerImage>,
    topics: BTreeMap<uuid::Uuid, TopicImage>,
    topic_ids_by_name: BTreeMap<String, uuid::Uuid>,
    configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    next_producer_id: i64,
    next_broker_epoch: i64,
    features: BTreeMap<String, i16>,
    last_applied_index: u64,
    cluster_id: Option<String>,
}

/// Version 2 of [`SnapshotPayload`].
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct SnapshotPayloadV2 {
    last_applied: Option<crate::quorum::stored::StoredLogId>,
    membership: crate::quorum::stored::StoredMembership,
    image: MetadataImageV2,
}

impl From<SnapshotPayloadV2> for SnapshotPayload {
    fn from(v2: SnapshotPayloadV2) -> Self {
        let i = v2.image;
        SnapshotPayload {
            last_applied: v2.last_applied,
            membership: v2.membership,
            image: MetadataImage {
                brokers: i.brokers,
                topics: i.topics,
                topic_ids_by_name: i.topic_ids_by_name,
                configs: i.configs,
                next_producer_id: i.next_producer_id,
                next_broker_epoch: i.next_broker_epoch,
                features: i.features,
                last_applied_index: i.last_applied_index,
                cluster_id: i.cluster_id,
                reassignments_by_topic: BTreeMap::new(),
            },
        }
    }
}

impl Versioned for SnapshotPayload {
    const WHAT: &'static str = "snapshot";
    /// 2: the image carries `cluster_id`. 3: the image carries partition reassignments.
    const VERSION: u16 = 3;

    fn decode_older(version: u16, payload: &[u8]) -> Result<Self, CodecError> {
        match version {
            1 => decode_payload::<SnapshotPayloadV1>(Self::WHAT, version, payload).map(Into::into),
            2 => decode_payload::<SnapshotPayloadV2>(Self::WHAT, version, payload).map(Into::into),
            _ => Err(CodecError::UnsupportedVersion {
                what: Self::WHAT,
                version,
                current: Self::VERSION,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::MetadataRecord;

    fn sample_batch() -> MetadataBatch {
        MetadataBatch::new(vec![
            MetadataRecord::Topic {
                name: "orders".to_string(),
                topic_id: uuid::Uuid::from_u128(7),
            },
            MetadataRecord::Config {
                resource: ConfigResource::Topic("orders".to_string()),
                name: "retention.ms".to_string(),
                value: Some("1000".to_string()),
            },
        ])
    }

    #[test]
    fn batch_round_trips_with_version_prefix() {
        let batch = sample_batch();
        let bytes = encode(&batch).unwrap();
        assert_eq!(&bytes[..2], &1u16.to_be_bytes());
        assert_eq!(decode::<MetadataBatch>(&bytes).unwrap(), batch);
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let mut bytes = encode(&sample_batch()).unwrap();
        bytes[0] = 0x7f;
        let err = decode::<MetadataBatch>(&bytes).unwrap_err();
        assert!(
            matches!(err, CodecError::UnsupportedVersion { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors_not_panics() {
        let bytes = encode(&sample_batch()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<MetadataBatch>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<MetadataBatch>(&longer),
            Err(CodecError::TrailingBytes { .. })
        ));
    }

    fn encode_v1<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = 1u16.to_be_bytes().to_vec();
        out.extend(bincode::serde::encode_to_vec(value, config()).unwrap());
        out
    }

    #[test]
    fn version_1_image_header_and_snapshot_decode_without_a_cluster_id() {
        let header = ImageHeaderV1 {
            next_producer_id: 7,
            next_broker_epoch: 3,
            features: BTreeMap::from([("x".to_string(), 1)]),
            last_applied_index: 42,
        };
        let decoded: ImageHeader = decode(&encode_v1(&header)).unwrap();
        assert_eq!(decoded.cluster_id, None);
        assert_eq!(
            (
                decoded.next_producer_id,
                decoded.next_broker_epoch,
                decoded.last_applied_index
            ),
            (7, 3, 42)
        );

        let snapshot = SnapshotPayloadV1 {
            last_applied: None,
            membership: crate::quorum::stored::StoredMembership {
                log_id: None,
                configs: vec![],
                nodes: BTreeMap::new(),
            },
            image: MetadataImageV1 {
                brokers: BTreeMap::new(),
                topics: BTreeMap::new(),
                topic_ids_by_name: BTreeMap::new(),
                configs: BTreeMap::new(),
                next_producer_id: 5,
                next_broker_epoch: 9,
                features: BTreeMap::new(),
                last_applied_index: 0,
            },
        };
        let decoded: SnapshotPayload = decode(&encode_v1(&snapshot)).unwrap();
        assert_eq!(decoded.image.cluster_id, None);
        assert_eq!(decoded.image.next_broker_epoch, 9);
        // And the current version carries the cluster id.
        let mut current = decoded.clone();
        current.image.cluster_id = Some("c1".to_string());
        assert_eq!(
            decode::<SnapshotPayload>(&encode(&current).unwrap()).unwrap(),
            current
        );
    }

    #[test]
    fn version_2_snapshot_decodes_without_reassignments() {
        let snapshot = SnapshotPayloadV2 {
            last_applied: None,
            membership: crate::quorum::stored::StoredMembership {
                log_id: None,
                configs: vec![],
                nodes: BTreeMap::new(),
            },
            image: MetadataImageV2 {
                brokers: BTreeMap::new(),
                topics: BTreeMap::new(),
                topic_ids_by_name: BTreeMap::new(),
                configs: BTreeMap::new(),
                next_producer_id: 5,
                next_broker_epoch: 9,
                features: BTreeMap::new(),
                last_applied_index: 3,
                cluster_id: Some("c1".to_string()),
            },
        };
        let mut bytes = 2u16.to_be_bytes().to_vec();
        bytes.extend(bincode::serde::encode_to_vec(&snapshot, config()).unwrap());
        let decoded: SnapshotPayload = decode(&bytes).unwrap();
        assert_eq!(decoded.image.cluster_id.as_deref(), Some("c1"));
        assert_eq!(decoded.image.last_applied_index, 3);
        assert!(decoded.image.reassignments_by_topic.is_empty());
        // The current version carries reassignments.
        let mut current = decoded.clone();
        current.image.reassignments_by_topic.insert(
            uuid::Uuid::from_u128(1),
            BTreeMap::from([(
                0,
                crate::image::Reassignment {
                    target: vec![1, 2],
                    adding: vec![2],
                    removing: vec![0],
                },
            )]),
        );
        let encoded = encode(&current).unwrap();
        assert_eq!(&encoded[..2], &3u16.to_be_bytes());
        assert_eq!(decode::<SnapshotPayload>(&encoded).unwrap(), current);
    }

    #[test]
    fn huge_length_prefix_does_not_allocate_unbounded() {
        // version 1, then a varint (marker 253 = u64 follows) claiming u64::MAX records.
        let bytes = [0u8, 1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<MetadataBatch>(&bytes).is_err());
    }
}
