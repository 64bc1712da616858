//! ApiVersions (18): which APIs and versions keel serves.
//!
//! Trap: librdkafka 2.0.x (Debian's kcat) mis-skips optional tagged fields in a v3
//! response, so the feature fields stay unset (the codec then omits them).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{encode, Pending, Reply};
use crate::protocol::versions::SUPPORTED_APIS;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

fn table() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(key, range)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect()
}

/// Answers with the table.
pub fn handle(ctx: RequestContext, req: ApiVersionsRequest) -> Pending {
    tracing::debug!(
        software = %req.client_software_name.as_str(),
        software_version = %req.client_software_version.as_str(),
        "api versions"
    );
    let resp = ApiVersionsResponse::default().with_api_keys(table());
    let reply = encode(&ctx, &resp);
    Box::pin(async move { reply })
}

/// Answers a version newer than keel's in v0 with UNSUPPORTED_VERSION and the table,
/// so the client can retry with a version both sides know.
pub fn unsupported_version(ctx: RequestContext) -> Pending {
    let resp = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(table());
    let reply: Reply = encode(&ctx, &resp);
    Box::pin(async move { reply })
}
