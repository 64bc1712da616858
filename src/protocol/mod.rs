//! The Kafka wire protocol: framing, the ApiVersions table, request dispatch and the
//! per-connection loop. Message codecs come from the `kafka-protocol` crate; this
//! module only frames, routes and encodes.

pub mod connection;
pub mod dispatch;
pub mod frame;
pub mod guard;
pub mod segmented;
pub mod versions;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion};

/// What every handler knows about the request it serves.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The API being called.
    pub api_key: ApiKey,
    /// The version the client speaks for it.
    pub api_version: i16,
    /// Echoed in the response header.
    pub correlation_id: i32,
    /// The client's self-declared id, for logs.
    pub client_id: String,
    /// The peer's address, for logs.
    pub peer: std::net::SocketAddr,
}

/// Encodes a response frame: size, response header, body.
///
/// # Errors
/// The `kafka-protocol` encoder refuses a field set that the version cannot carry;
/// that is a bug in the handler, reported to the caller who closes the connection.
pub fn encode_response<R: Encodable + HeaderVersion>(
    ctx: &RequestContext,
    body: &R,
) -> anyhow::Result<Bytes> {
    let header_version = R::header_version(ctx.api_version);
    let header = ResponseHeader::default().with_correlation_id(ctx.correlation_id);
    let size = header.compute_size(header_version)? + body.compute_size(ctx.api_version)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, ctx.api_version)?;
    debug_assert_eq!(buf.len(), 4 + size);
    Ok(buf.freeze())
}
