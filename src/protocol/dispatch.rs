//! Routes one request frame to its handler in `src/api/`.
//!
//! Decoding happens here, synchronously and in arrival order; handlers may do their
//! in-order work (a produce's append) before returning the future that finishes the
//! request. Anything malformed is a `DispatchError`, which closes the connection, as
//! Kafka does.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tracing::Instrument;

use super::{versions, RequestContext};
use crate::api::{self, Pending};
use crate::broker::Broker;

/// Why a request could not be served; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
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
        // A newer client than us: answer in v0 so it can retry with a version we know.
        // Only the correlation id is needed; the rest of the header may be a format we
        // cannot parse.
        let correlation_id = (&buf[4..8]).get_i32();
        let ctx = RequestContext {
            api_key,
            api_version: 0,
            correlation_id,
            client_id: String::new(),
            peer,
        };
        return Ok(api::api_versions::unsupported_version(ctx));
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

    macro_rules! decode {
        ($ty:ty) => {{
            let body = <$ty>::decode(&mut buf, version).map_err(|e| malformed(e.to_string()))?;
            if buf.has_remaining() {
                return Err(malformed(format!("{} trailing bytes", buf.remaining())));
            }
            body
        }};
    }
    use kafka_protocol::messages as m;
    let b = broker.clone();
    let pending: Pending = match api_key {
        ApiKey::ApiVersions => api::api_versions::handle(ctx, decode!(m::ApiVersionsRequest)),
        ApiKey::Metadata => api::metadata::handle(b, ctx, decode!(m::MetadataRequest)),
        ApiKey::Produce if version < api::produce_legacy::FIRST_CODEC_VERSION => {
            let mut body = api::produce_legacy::as_v3_body(&buf);
            let req =
                m::ProduceRequest::decode(&mut body, api::produce_legacy::FIRST_CODEC_VERSION)
                    .map_err(|e| malformed(e.to_string()))?;
            if body.has_remaining() {
                return Err(malformed(format!("{} trailing bytes", body.remaining())));
            }
            api::produce::handle(b, ctx, req)
        }
        ApiKey::Produce => api::produce::handle(b, ctx, decode!(m::ProduceRequest)),
        ApiKey::Fetch => api::fetch::handle(b, ctx, decode!(m::FetchRequest)),
        ApiKey::ListOffsets => api::list_offsets::handle(b, ctx, decode!(m::ListOffsetsRequest)),
        ApiKey::CreateTopics => api::topics::create_topics(b, ctx, decode!(m::CreateTopicsRequest)),
        ApiKey::DeleteTopics => api::topics::delete_topics(b, ctx, decode!(m::DeleteTopicsRequest)),
        ApiKey::CreatePartitions => {
            api::topics::create_partitions(b, ctx, decode!(m::CreatePartitionsRequest))
        }
        ApiKey::DescribeConfigs => {
            api::configs::describe_configs(b, ctx, decode!(m::DescribeConfigsRequest))
        }
        ApiKey::AlterConfigs => {
            api::configs::alter_configs(b, ctx, decode!(m::AlterConfigsRequest))
        }
        ApiKey::IncrementalAlterConfigs => api::configs::incremental_alter_configs(
            b,
            ctx,
            decode!(m::IncrementalAlterConfigsRequest),
        ),
        ApiKey::DeleteRecords => {
            api::delete_records::handle(b, ctx, decode!(m::DeleteRecordsRequest))
        }
        ApiKey::DescribeCluster => {
            api::describe_cluster::handle(b, ctx, decode!(m::DescribeClusterRequest))
        }
        ApiKey::InitProducerId => {
            api::init_producer_id::handle(b, ctx, decode!(m::InitProducerIdRequest))
        }
        other => return Err(DispatchError::UnsupportedApi(other)),
    };
    drop(_entered);
    Ok(Box::pin(pending.instrument(span)))
}
