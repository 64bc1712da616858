//! A minimal Kafka client for the CLI (and tests): one connection, one request at a
//! time, codecs from `kafka-protocol`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the CLI waits to connect or for an answer; longer than the broker's own
/// admin timeout, so the broker's REQUEST_TIMED_OUT arrives before the CLI gives up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest response the CLI accepts.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// One connection to a broker.
pub struct KafkaClient {
    stream: TcpStream,
    correlation_id: i32,
    client_id: String,
}

impl KafkaClient {
    /// Connects to `addr` (`host:port`).
    ///
    /// # Errors
    /// Unreachable or refused addresses, named in the message.
    pub async fn connect(addr: &str, client_id: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to {addr}"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(KafkaClient {
            stream,
            correlation_id: 0,
            client_id: client_id.to_string(),
        })
    }

    /// Connects to `addr` from `local_ip` (so inter-broker traffic leaves from this
    /// node's own address, which lets tests partition nodes with iptables).
    ///
    /// # Errors
    /// Unreachable or refused addresses, named in the message.
    pub async fn connect_from(
        addr: &str,
        local_ip: std::net::IpAddr,
        client_id: &str,
    ) -> anyhow::Result<Self> {
        let target = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket
            .bind(std::net::SocketAddr::new(local_ip, 0))
            .with_context(|| format!("cannot bind {local_ip}"))?;
        let stream = tokio::time::timeout(CLIENT_TIMEOUT, socket.connect(target))
            .await
            .map_err(|_| anyhow!("timed out connecting to {addr}"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(KafkaClient {
            stream,
            correlation_id: 0,
            client_id: client_id.to_string(),
        })
    }

    /// Sends raw bytes as one frame and returns the raw response frame (for tests
    /// that craft requests by hand).
    ///
    /// # Errors
    /// I/O errors and timeouts.
    pub async fn send_raw(&mut self, frame_body: &[u8]) -> anyhow::Result<Bytes> {
        let mut buf = BytesMut::with_capacity(4 + frame_body.len());
        buf.put_i32(frame_body.len() as i32);
        buf.put_slice(frame_body);
        self.stream.write_all(&buf).await?;
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> anyhow::Result<Bytes> {
        let read = async {
            let size = self
                .stream
                .read_i32()
                .await
                .context("connection closed by the broker")?;
            if size < 0 || size as usize > MAX_RESPONSE_BYTES {
                bail!("invalid response size {size}");
            }
            let mut body = BytesMut::zeroed(size as usize);
            self.stream.read_exact(&mut body).await?;
            Ok(body.freeze())
        };
        tokio::time::timeout(CLIENT_TIMEOUT, read)
            .await
            .map_err(|_| anyhow!("timed out waiting for the broker"))?
    }

    /// Sends `req` at `version` and decodes the response.
    ///
    /// # Errors
    /// I/O errors, timeouts, and responses that do not decode.
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<R::Response> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = self.send_raw(&body).await?;
        let resp_header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
        if resp_header.correlation_id != self.correlation_id {
            bail!(
                "response correlation id {} for request {}",
                resp_header.correlation_id,
                self.correlation_id
            );
        }
        let resp = R::Response::decode(&mut frame, version)?;
        if frame.has_remaining() {
            bail!("{} unread bytes after the response", frame.remaining());
        }
        Ok(resp)
    }
}
