//! One file per Kafka API family. Each declares the versions it serves next to its
//! handler; `crate::protocol::versions` collects them for ApiVersions.

pub mod api_versions;
pub mod configs;
pub mod delete_groups;
pub mod delete_records;
pub mod describe_cluster;
pub mod describe_groups;
pub mod describe_quorum;
pub mod elect_leaders;
pub mod fetch;
pub mod fetch_session;
pub mod find_coordinator;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod produce_legacy;
pub mod reassignments;
pub mod sync_group;
pub mod topics;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use crate::protocol::{encode_response, RequestContext};

/// What the connection's writer does with a finished request.
pub enum Reply {
    /// Send this response frame.
    Frame(Bytes),
    /// Send these pieces, in order, as one response frame (record data shared with
    /// the read that produced it, not copied: see `protocol::segmented`).
    Frames(Vec<Bytes>),
    /// Send nothing (a produce with acks=0).
    None,
    /// Close the connection.
    Close,
}

/// A started request: resolves to its reply.
pub type Pending = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// Wraps a handler's response future: encodes the response for the request's version.
pub fn respond<R, F>(ctx: RequestContext, fut: F) -> Pending
where
    R: Encodable + HeaderVersion + Send + 'static,
    F: Future<Output = R> + Send + 'static,
{
    Box::pin(async move {
        let body = fut.await;
        encode(&ctx, &body)
    })
}

/// Encodes `body` into a reply, closing the connection if it cannot be encoded.
pub fn encode<R: Encodable + HeaderVersion>(ctx: &RequestContext, body: &R) -> Reply {
    match encode_response(ctx, body) {
        Ok(frame) => Reply::Frame(frame),
        Err(e) => {
            tracing::error!(
                api = ?ctx.api_key,
                v = ctx.api_version,
                "cannot encode response, closing connection: {e}"
            );
            Reply::Close
        }
    }
}

/// A `StrBytes` from owned text.
pub fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Where clients reach broker `id`: (host, port, rack), if it is registered and not
/// fenced. Leadership errors carry it for the leader they name (KIP-951).
pub fn client_endpoint(
    image: &keel_raft::image::MetadataImage,
    id: i32,
) -> Option<(StrBytes, i32, Option<StrBytes>)> {
    let b = image.brokers.get(&id).filter(|b| !b.fenced)?;
    let ep = b.endpoints.first()?;
    Some((
        sb(ep.host.clone()),
        i32::from(ep.port),
        b.rack.clone().map(sb),
    ))
}
