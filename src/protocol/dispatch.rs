//! Routes one request frame to its handler in `src/api/`.
//!
//! Decoding happens here ([`decode_request`], a pure function of the frame),
//! synchronously and in arrival order; handlers may do their in-order work (a
//! produce's append) before returning the future that finishes the request. Anything
//! malformed is a `DispatchError`, which closes the connection, as Kafka does. Bodies
//! are decoded through `protocol::guard`, so no count in a frame can make the decoder
//! reserve more than the frame could hold.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tracing::Instrument;

use super::{guard, versions, RequestContext};
use crate::api::{self, Pending};
use crate::broker::Broker;

/// Why a request could not be served; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Too few bytes for the fixed part of a request header.
    #[error("request frame of {0} bytes is too short for a header")]
    FrameTooShort(usize),
    /// The API key is not a Kafka API.
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    /// A Kafka API keel does not serve.
    #[error("unsupported API {0:?}")]
    UnsupportedApi(ApiKey),
    /// A version of a served API that keel does not serve.
    #[error("unsupported version {version} of {api:?}")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    /// The header or body does not decode.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Bytes after a decoded request body are ignored, as Apache Kafka does: librdkafka
/// (2.x, Metadata v9+ for all topics) reserves four bytes for a compact array count and
/// leaves three of them as padding after the body when the array is null.
fn ignore_trailing_bytes(rest: &impl Buf) {
    if rest.has_remaining() {
        tracing::debug!("ignoring {} bytes after the request body", rest.remaining());
    }
}

/// A served request's body, decoded.
#[derive(Debug)]
pub enum Body {
    /// ApiVersions (18).
    ApiVersions(m::ApiVersionsRequest),
    /// Metadata (3).
    Metadata(m::MetadataRequest),
    /// Produce (0), v0–v2 included (adapted by `api::produce_legacy`).
    Produce(m::ProduceRequest),
    /// Fetch (1).
    Fetch(m::FetchRequest),
    /// ListOffsets (2).
    ListOffsets(m::ListOffsetsRequest),
    /// CreateTopics (19).
    CreateTopics(m::CreateTopicsRequest),
    /// DeleteTopics (20).
    DeleteTopics(m::DeleteTopicsRequest),
    /// CreatePartitions (37).
    CreatePartitions(m::CreatePartitionsRequest),
    /// DescribeConfigs (32).
    DescribeConfigs(m::DescribeConfigsRequest),
    /// AlterConfigs (33).
    AlterConfigs(m::AlterConfigsRequest),
    /// IncrementalAlterConfigs (44).
    IncrementalAlterConfigs(m::IncrementalAlterConfigsRequest),
    /// DescribeQuorum (55).
    DescribeQuorum(m::DescribeQuorumRequest),
    /// OffsetForLeaderEpoch (23).
    OffsetForLeaderEpoch(m::OffsetForLeaderEpochRequest),
    /// DeleteRecords (21).
    DeleteRecords(m::DeleteRecordsRequest),
    /// DescribeCluster (60).
    DescribeCluster(m::DescribeClusterRequest),
    /// InitProducerId (22).
    InitProducerId(m::InitProducerIdRequest),
    /// ElectLeaders (43).
    ElectLeaders(m::ElectLeadersRequest),
    /// AlterPartitionReassignments (45).
    AlterPartitionReassignments(m::AlterPartitionReassignmentsRequest),
    /// ListPartitionReassignments (46).
    ListPartitionReassignments(m::ListPartitionReassignmentsRequest),
    /// OffsetCommit (8).
    OffsetCommit(m::OffsetCommitRequest),
    /// OffsetFetch (9).
    OffsetFetch(m::OffsetFetchRequest),
    /// FindCoordinator (10).
    FindCoordinator(m::FindCoordinatorRequest),
    /// JoinGroup (11).
    JoinGroup(m::JoinGroupRequest),
    /// Heartbeat (12).
    Heartbeat(m::HeartbeatRequest),
    /// LeaveGroup (13).
    LeaveGroup(m::LeaveGroupRequest),
    /// SyncGroup (14).
    SyncGroup(m::SyncGroupRequest),
    /// DescribeGroups (15).
    DescribeGroups(m::DescribeGroupsRequest),
    /// ListGroups (16).
    ListGroups(m::ListGroupsRequest),
    /// DeleteGroups (42).
    DeleteGroups(m::DeleteGroupsRequest),
    /// OffsetDelete (47).
    OffsetDelete(m::OffsetDeleteRequest),
}

/// What a frame asks for.
#[derive(Debug)]
pub enum Decoded {
    /// ApiVersions at a version newer than keel's: answered in v0 with
    /// UNSUPPORTED_VERSION and the version table, so the client can retry.
    ApiVersionsTooNew {
        /// Echoed in the answer.
        correlation_id: i32,
    },
    /// A served API at a served version.
    Request {
        /// The API.
        api_key: ApiKey,
        /// Its version.
        version: i16,
        /// The request header.
        header: RequestHeader,
        /// The body.
        body: Body,
    },
}

/// Bytes in front of every request header: api key, api version, correlation id.
const FIXED_HEADER_BYTES: usize = 8;

/// Decodes one request frame (without its size prefix). Pure: no broker, no I/O, and
/// no allocation larger than the frame allows (array counts are checked before the
/// codec reserves memory for them, see `protocol::guard`).
///
/// # Errors
/// Unknown API keys, unserved APIs and versions, and headers or bodies that do not
/// decode; each closes the connection.
pub fn decode_request(frame: Bytes) -> Result<Decoded, DispatchError> {
    if frame.len() < FIXED_HEADER_BYTES {
        return Err(DispatchError::FrameTooShort(frame.len()));
    }
    let mut buf = frame;
    let raw_key = (&buf[0..2]).get_i16();
    let version = (&buf[2..4]).get_i16();
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DispatchError::UnknownApiKey(raw_key))?;
    let malformed = |reason: String| DispatchError::Malformed {
        api: api_key,
        version,
        reason,
    };

    if api_key == ApiKey::ApiVersions && !versions::is_supported(api_key, version) {
        // A newer client than us: only the correlation id is needed; the rest of the
        // header may be in a format we cannot parse.
        let correlation_id = (&buf[4..8]).get_i32();
        return Ok(Decoded::ApiVersionsTooNew { correlation_id });
    }
    if versions::supported(api_key).is_none() {
        return Err(DispatchError::UnsupportedApi(api_key));
    }
    if !versions::is_supported(api_key, version) {
        return Err(DispatchError::UnsupportedVersion {
            api: api_key,
            version,
        });
    }
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| malformed(e.to_string()))?;

    macro_rules! decode {
        ($variant:ident) => {{
            let body =
                guard::decode_body(&mut buf, version).map_err(|e| malformed(e.to_string()))?;
            ignore_trailing_bytes(&buf);
            Body::$variant(body)
        }};
    }
    let body = match api_key {
        ApiKey::ApiVersions => decode!(ApiVersions),
        ApiKey::Metadata => decode!(Metadata),
        ApiKey::Produce if version < api::produce_legacy::FIRST_CODEC_VERSION => {
            let mut body = api::produce_legacy::as_v3_body(&buf);
            let req = guard::decode_body(&mut body, api::produce_legacy::FIRST_CODEC_VERSION)
                .map_err(|e| malformed(e.to_string()))?;
            ignore_trailing_bytes(&body);
            Body::Produce(req)
        }
        ApiKey::Produce => decode!(Produce),
        ApiKey::Fetch => decode!(Fetch),
        ApiKey::ListOffsets => decode!(ListOffsets),
        ApiKey::CreateTopics => decode!(CreateTopics),
        ApiKey::DeleteTopics => decode!(DeleteTopics),
        ApiKey::CreatePartitions => decode!(CreatePartitions),
        ApiKey::DescribeConfigs => decode!(DescribeConfigs),
        ApiKey::AlterConfigs => decode!(AlterConfigs),
        ApiKey::IncrementalAlterConfigs => decode!(IncrementalAlterConfigs),
        ApiKey::DeleteRecords => decode!(DeleteRecords),
        ApiKey::DescribeCluster => decode!(DescribeCluster),
        ApiKey::DescribeQuorum => decode!(DescribeQuorum),
        ApiKey::OffsetForLeaderEpoch => decode!(OffsetForLeaderEpoch),
        ApiKey::InitProducerId => decode!(InitProducerId),
        ApiKey::ElectLeaders => decode!(ElectLeaders),
        ApiKey::AlterPartitionReassignments => decode!(AlterPartitionReassignments),
        ApiKey::ListPartitionReassignments => decode!(ListPartitionReassignments),
        ApiKey::OffsetCommit => decode!(OffsetCommit),
        ApiKey::OffsetFetch => decode!(OffsetFetch),
        ApiKey::FindCoordinator => decode!(FindCoordinator),
        ApiKey::JoinGroup => decode!(JoinGroup),
        ApiKey::Heartbeat => decode!(Heartbeat),
        ApiKey::LeaveGroup => decode!(LeaveGroup),
        ApiKey::SyncGroup => decode!(SyncGroup),
        ApiKey::DescribeGroups => decode!(DescribeGroups),
        ApiKey::ListGroups => decode!(ListGroups),
        ApiKey::DeleteGroups => decode!(DeleteGroups),
        ApiKey::OffsetDelete => decode!(OffsetDelete),
        other => return Err(DispatchError::UnsupportedApi(other)),
    };
    Ok(Decoded::Request {
        api_key,
        version,
        header,
        body,
    })
}

/// Decodes `frame` and starts serving it.
///
/// # Errors
/// Unknown API keys, unsupported versions (except ApiVersions, which answers
/// UNSUPPORTED_VERSION as Kafka does) and malformed requests.
pub fn dispatch(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: std::net::SocketAddr,
) -> Result<Pending, DispatchError> {
    let (api_key, version, header, body) = match decode_request(frame)? {
        Decoded::ApiVersionsTooNew { correlation_id } => {
            let ctx = RequestContext {
                api_key: ApiKey::ApiVersions,
                api_version: 0,
                correlation_id,
                client_id: String::new(),
                peer,
            };
            return Ok(api::api_versions::unsupported_version(ctx));
        }
        Decoded::Request {
            api_key,
            version,
            header,
            body,
        } => (api_key, version, header, body),
    };
    let ctx = RequestContext {
        api_key,
        api_version: version,
        correlation_id: header.correlation_id,
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        peer,
    };
    let span = tracing::debug_span!(
        "request",
        api = ?api_key,
        v = version,
        client = %ctx.client_id,
        corr = ctx.correlation_id
    );
    let _entered = span.enter();
    tracing::trace!("received");

    let b = broker.clone();
    let pending: Pending = match body {
        Body::ApiVersions(r) => api::api_versions::handle(ctx, r),
        Body::Metadata(r) => api::metadata::handle(b, ctx, r),
        Body::Produce(r) => api::produce::handle(b, ctx, r),
        Body::Fetch(r) => api::fetch::handle(b, ctx, r),
        Body::ListOffsets(r) => api::list_offsets::handle(b, ctx, r),
        Body::CreateTopics(r) => api::topics::create_topics(b, ctx, r),
        Body::DeleteTopics(r) => api::topics::delete_topics(b, ctx, r),
        Body::CreatePartitions(r) => api::topics::create_partitions(b, ctx, r),
        Body::DescribeConfigs(r) => api::configs::describe_configs(b, ctx, r),
        Body::AlterConfigs(r) => api::configs::alter_configs(b, ctx, r),
        Body::IncrementalAlterConfigs(r) => api::configs::incremental_alter_configs(b, ctx, r),
        Body::DeleteRecords(r) => api::delete_records::handle(b, ctx, r),
        Body::DescribeCluster(r) => api::describe_cluster::handle(b, ctx, r),
        Body::DescribeQuorum(r) => api::describe_quorum::handle(b, ctx, r),
        Body::OffsetForLeaderEpoch(r) => api::offset_for_leader_epoch::handle(b, ctx, r),
        Body::InitProducerId(r) => api::init_producer_id::handle(b, ctx, r),
        Body::ElectLeaders(r) => api::elect_leaders::handle(b, ctx, r),
        Body::AlterPartitionReassignments(r) => api::reassignments::alter(b, ctx, r),
        Body::ListPartitionReassignments(r) => api::reassignments::list(b, ctx, r),
        Body::OffsetCommit(r) => api::offset_commit::handle(b, ctx, r),
        Body::OffsetFetch(r) => api::offset_fetch::handle(b, ctx, r),
        Body::FindCoordinator(r) => api::find_coordinator::handle(b, ctx, r),
        Body::JoinGroup(r) => api::join_group::handle(b, ctx, r),
        Body::Heartbeat(r) => api::heartbeat::handle(b, ctx, r),
        Body::LeaveGroup(r) => api::leave_group::handle(b, ctx, r),
        Body::SyncGroup(r) => api::sync_group::handle(b, ctx, r),
        Body::DescribeGroups(r) => api::describe_groups::handle(b, ctx, r),
        Body::ListGroups(r) => api::list_groups::handle(b, ctx, r),
        Body::DeleteGroups(r) => api::delete_groups::handle(b, ctx, r),
        Body::OffsetDelete(r) => api::offset_delete::handle(b, ctx, r),
    };
    drop(_entered);
    Ok(Box::pin(pending.instrument(span)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
    };
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    /// A request body for every served API, with arrays filled where it has them.
    fn sample_body(key: ApiKey, version: i16) -> BytesMut {
        let mut b = BytesMut::new();
        macro_rules! enc {
            ($req:expr) => {
                $req.encode(&mut b, version).unwrap()
            };
        }
        match key {
            ApiKey::Produce => {
                let req = m::ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(30_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(name("orders"))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(Bytes::from_static(&[9; 80]))),
                            PartitionProduceData::default().with_index(1),
                        ])]);
                if version < api::produce_legacy::FIRST_CODEC_VERSION {
                    // v0-v2: the v3 body without its (null) transactional id.
                    req.encode(&mut b, api::produce_legacy::FIRST_CODEC_VERSION)
                        .unwrap();
                    return b.split_off(2);
                }
                enc!(req);
            }
            ApiKey::Fetch => enc!(m::FetchRequest::default()
                .with_max_wait_ms(500)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(name("orders"))
                    .with_partitions(vec![
                        FetchPartition::default().with_partition(0),
                        FetchPartition::default().with_partition(3)
                    ])])
                .with_forgotten_topics_data(if version >= 7 {
                    vec![ForgottenTopic::default()
                        .with_topic(name("old"))
                        .with_partitions(vec![1, 2])]
                } else {
                    vec![]
                })),
            ApiKey::Metadata => enc!(m::MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name("orders")));
                3
            ]))),
            ApiKey::ListOffsets => enc!(m::ListOffsetsRequest::default().with_topics(vec![
                kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name("orders"))
                    .with_partitions(vec![Default::default(); 2])
            ])),
            ApiKey::CreateTopics => {
                enc!(
                    m::CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                        .with_name(name("new"))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(vec![CreatableReplicaAssignment::default()
                            .with_broker_ids(vec![BrokerId(1), BrokerId(2)])])
                        .with_configs(vec![CreatableTopicConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("1000")))])])
                )
            }
            ApiKey::DeleteTopics => enc!(if version >= 6 {
                m::DeleteTopicsRequest::default().with_topics(vec![Default::default(); 2])
            } else {
                m::DeleteTopicsRequest::default().with_topic_names(vec![name("a"), name("b")])
            }),
            ApiKey::CreatePartitions => {
                enc!(m::CreatePartitionsRequest::default().with_topics(vec![Default::default(); 2]))
            }
            ApiKey::DescribeConfigs => {
                enc!(m::DescribeConfigsRequest::default()
                    .with_resources(vec![Default::default(); 2]))
            }
            ApiKey::AlterConfigs => {
                enc!(m::AlterConfigsRequest::default().with_resources(vec![Default::default(); 2]))
            }
            ApiKey::IncrementalAlterConfigs => enc!(m::IncrementalAlterConfigsRequest::default()
                .with_resources(vec![Default::default(); 2])),
            ApiKey::DeleteRecords => {
                enc!(m::DeleteRecordsRequest::default().with_topics(vec![Default::default(); 2]))
            }
            ApiKey::ApiVersions => enc!(m::ApiVersionsRequest::default()),
            ApiKey::DescribeCluster => enc!(m::DescribeClusterRequest::default()),
            ApiKey::DescribeQuorum => enc!(m::DescribeQuorumRequest::default()),
            ApiKey::OffsetForLeaderEpoch => enc!(m::OffsetForLeaderEpochRequest::default()),
            ApiKey::InitProducerId => enc!(m::InitProducerIdRequest::default()),
            ApiKey::ElectLeaders => enc!(m::ElectLeadersRequest::default()),
            ApiKey::AlterPartitionReassignments => {
                enc!(m::AlterPartitionReassignmentsRequest::default())
            }
            ApiKey::ListPartitionReassignments => {
                enc!(m::ListPartitionReassignmentsRequest::default())
            }
            ApiKey::OffsetCommit => enc!(m::OffsetCommitRequest::default().with_topics(vec![
                kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic::default(
                )
                .with_name(name("orders"))
                .with_partitions(vec![Default::default(); 2])
            ])),
            ApiKey::OffsetFetch => enc!(if version >= 8 {
                m::OffsetFetchRequest::default().with_groups(vec![
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_topics(Some(vec![Default::default(); 2]));
                    2
                ])
            } else {
                m::OffsetFetchRequest::default().with_topics(Some(vec![
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_partition_indexes(vec![0, 1]);
                    2
                ]))
            }),
            ApiKey::FindCoordinator => enc!(if version >= 4 {
                m::FindCoordinatorRequest::default()
                    .with_coordinator_keys(vec![StrBytes::from_static_str("g"); 2])
            } else {
                m::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))
            }),
            ApiKey::JoinGroup => enc!(m::JoinGroupRequest::default()
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![Default::default(); 2])),
            ApiKey::Heartbeat => enc!(m::HeartbeatRequest::default()),
            ApiKey::LeaveGroup => enc!(if version >= 3 {
                m::LeaveGroupRequest::default().with_members(vec![Default::default(); 2])
            } else {
                m::LeaveGroupRequest::default()
            }),
            ApiKey::SyncGroup => {
                enc!(m::SyncGroupRequest::default().with_assignments(vec![Default::default(); 2]))
            }
            ApiKey::DescribeGroups => {
                enc!(m::DescribeGroupsRequest::default().with_groups(vec![Default::default(); 2]))
            }
            ApiKey::ListGroups => enc!(m::ListGroupsRequest::default()),
            ApiKey::DeleteGroups => {
                enc!(m::DeleteGroupsRequest::default()
                    .with_groups_names(vec![Default::default(); 2]))
            }
            ApiKey::OffsetDelete => enc!(m::OffsetDeleteRequest::default().with_topics(vec![
                kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default(
                )
                .with_partitions(vec![Default::default(); 2])
            ])),
            other => panic!("no sample for {other:?}"),
        }
        b
    }

    fn frame(key: ApiKey, version: i16, body: &[u8]) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("prop")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, key.request_header_version(version))
            .unwrap();
        b.put_slice(body);
        b.freeze()
    }

    /// Every served (API, version) with a sample frame for it.
    fn corpus() -> &'static [(ApiKey, i16, Bytes)] {
        static CORPUS: std::sync::OnceLock<Vec<(ApiKey, i16, Bytes)>> = std::sync::OnceLock::new();
        CORPUS.get_or_init(build_corpus)
    }

    fn build_corpus() -> Vec<(ApiKey, i16, Bytes)> {
        let mut out = Vec::new();
        for (key, range) in versions::SUPPORTED_APIS {
            for version in range.min..=range.max {
                out.push((
                    *key,
                    version,
                    frame(*key, version, &sample_body(*key, version)),
                ));
            }
        }
        out
    }

    #[test]
    fn every_served_version_of_every_api_decodes_through_the_guard() {
        for (key, version, f) in corpus() {
            let (key, version) = (*key, *version);
            match decode_request(f.clone()) {
                Ok(Decoded::Request {
                    api_key,
                    version: v,
                    ..
                }) => assert_eq!((api_key, v), (key, version)),
                other => panic!("{key:?} v{version}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_counts_anywhere_in_a_served_request_never_abort_the_decoder() {
        // For each served (API, version): the sample body with every 32-bit word and
        // every varint-sized slot in turn replaced by a count of billions. Whatever
        // the slot was, decoding must end (in an error or not) without aborting on
        // an allocation.
        for (key, version, f) in corpus() {
            let header_len = f.len() - sample_body(*key, *version).len();
            for at in header_len..f.len() {
                let mut m = f.to_vec();
                if at + 4 <= m.len() {
                    m[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
                    let _ = decode_request(Bytes::from(m.clone()));
                }
                let mut m = f.to_vec();
                let end = (at + 5).min(m.len());
                m.splice(at..end, [0xff, 0xff, 0xff, 0xff, 0x0f]);
                let _ = decode_request(Bytes::from(m));
            }
        }
    }

    #[test]
    fn short_frames_unknown_keys_and_unserved_versions_are_errors() {
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 3, 0])),
            Err(DispatchError::FrameTooShort(3))
        ));
        assert!(matches!(
            decode_request(frame_bytes(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff])),
            Err(DispatchError::UnknownApiKey(0x7f00))
        ));
        assert!(matches!(
            decode_request(frame(ApiKey::AddPartitionsToTxn, 0, &[])),
            Err(DispatchError::UnsupportedApi(ApiKey::AddPartitionsToTxn))
        ));
        assert!(matches!(
            decode_request(frame(ApiKey::Metadata, 13, &[])),
            Err(DispatchError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            decode_request(frame_bytes(&[0, 18, 0, 9, 0, 0, 0, 42])),
            Ok(Decoded::ApiVersionsTooNew { correlation_id: 42 })
        ));
    }

    fn frame_bytes(b: &'static [u8]) -> Bytes {
        Bytes::from_static(b)
    }

    /// One way to damage a frame.
    #[derive(Clone, Debug)]
    enum Mutation {
        Flip { at: usize, bit: u8 },
        Truncate { keep: usize },
        Word { at: usize, value: i32 },
        Varint { at: usize, len: usize },
        Insert { at: usize, bytes: Vec<u8> },
        Key(i16),
        Version(i16),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let word = prop_oneof![
            Just(-1i32),
            Just(0),
            Just(1),
            Just(i32::MAX),
            Just(i32::MIN),
            Just(0x00ff_ffff),
            any::<i32>()
        ];
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
            any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
            (any::<usize>(), word).prop_map(|(at, value)| Mutation::Word { at, value }),
            (any::<usize>(), 1usize..=5).prop_map(|(at, len)| Mutation::Varint { at, len }),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..12)
            )
                .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
            (-3i16..80).prop_map(Mutation::Key),
            (-3i16..20).prop_map(Mutation::Version),
        ]
    }

    fn apply(frame: &mut Vec<u8>, m: &Mutation) {
        let len = frame.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = frame.get_mut(at % len) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Truncate { keep } => frame.truncate(keep % len),
            Mutation::Word { at, value } => {
                let at = at % len;
                if at + 4 <= frame.len() {
                    frame[at..at + 4].copy_from_slice(&value.to_be_bytes());
                }
            }
            Mutation::Varint { at, len: n } => {
                let at = at % len;
                for (k, b) in [0xffu8, 0xff, 0xff, 0xff, 0x0f].iter().take(*n).enumerate() {
                    if let Some(slot) = frame.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            Mutation::Insert { at, bytes } => {
                let at = at % (frame.len() + 1);
                frame.splice(at..at, bytes.iter().copied());
            }
            Mutation::Key(k) if frame.len() >= 2 => frame[0..2].copy_from_slice(&k.to_be_bytes()),
            Mutation::Version(v) if frame.len() >= 4 => {
                frame[2..4].copy_from_slice(&v.to_be_bytes())
            }
            Mutation::Key(_) | Mutation::Version(_) => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        #[test]
        fn mutated_valid_frames_never_panic(
            pick in any::<proptest::sample::Index>(),
            mutations in proptest::collection::vec(mutation(), 1..6),
        ) {
            let (_, _, f) = &corpus()[pick.index(corpus().len())];
            let mut f = f.to_vec();
            for m in &mutations {
                apply(&mut f, m);
            }
            let _ = decode_request(Bytes::from(f));
        }
    }
}
