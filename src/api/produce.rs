//! Produce (0): append record batches to partition logs.
//!
//! The path: decode (batches stay bytes) → per partition, validate and append under
//! the partition lock, in request order (`Partition::append_as_leader` →
//! `keel_storage::Log::append_as_leader_shared`) → for acks=all, wait until the high
//! watermark covers the batch (every in-sync replica has it, durably under the default
//! flush policy) → answer. Records are never decoded individually.
//!
//! acks=all is refused up front with NOT_ENOUGH_REPLICAS while the ISR is smaller than
//! `min.insync.replicas`; a write appended but not replicated in time is answered
//! NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below it meanwhile, else
//! REQUEST_TIMED_OUT; one whose leader lost its leadership meanwhile,
//! NOT_LEADER_OR_FOLLOWER. None of these promises the write is absent: the client
//! retries (an idempotent producer's retry is recognised as a duplicate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_storage::batch::BatchHeader;
use keel_storage::{AppendError, LeaderAppend};

use super::{client_endpoint, encode, produce_legacy, sb, Pending, Reply};
use crate::broker::Broker;
use crate::errors;
use crate::group::OFFSETS_TOPIC;
use crate::protocol::RequestContext;
use crate::replication::manager::now_ms;
use crate::replication::partition::AckOutcome;
use crate::replication::Partition;
use crate::txn::refusals;

/// Versions served. v0–v2 go through `produce_legacy` and take magic-2 batches only.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 11 };

/// The first Produce version that may carry zstd-compressed batches (KIP-110).
const FIRST_ZSTD_VERSION: i16 = 7;
/// First version whose responses carry the endpoints of the leaders named in
/// NOT_LEADER_OR_FOLLOWER answers (KIP-951).
const FIRST_VERSION_NODE_ENDPOINTS: i16 = 10;
/// The zstd codec id in a batch's attributes.
const ZSTD_CODEC: u8 = 4;

/// acks=all: wait for every in-sync replica.
const ACKS_ALL: i16 = -1;
/// acks=0: no response at all.
const ACKS_NONE: i16 = 0;
/// acks=1: the leader's append.
const ACKS_LEADER: i16 = 1;

struct Waiter {
    topic: usize,
    partition: usize,
    replica: Arc<Partition>,
    end_offset: i64,
}

/// Appends in request order now; returns the future that waits for acknowledgement.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: ProduceRequest) -> Pending {
    let acks = req.acks;
    let timeout =
        Duration::from_millis(req.timeout_ms.max(0) as u64).min(broker.config.request_timeout_max);
    let image = broker.image();
    let now = now_ms();
    let mut waiters = Vec::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for (ti, topic) in req.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for (pi, data) in topic.partition_data.into_iter().enumerate() {
            let mut resp = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(-1);
            let fail =
                |resp: PartitionProduceResponse, e: ResponseError| resp.with_error_code(e.code());
            if ![ACKS_ALL, ACKS_NONE, ACKS_LEADER].contains(&acks) {
                partitions.push(fail(resp, ResponseError::InvalidRequiredAcks));
                continue;
            }
            if name == OFFSETS_TOPIC {
                // Only the group coordinator writes the offsets topic (Kafka refuses
                // clients the same way).
                partitions.push(
                    fail(resp, ResponseError::InvalidTopicException)
                        .with_error_message(Some(sb("internal topic"))),
                );
                continue;
            }
            let meta = image
                .topic_by_name(&name)
                .and_then(|t| t.partitions.get(&data.index));
            let Some(meta) = meta else {
                let err = if errors::valid_topic_name(&name) {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::InvalidTopicException
                };
                partitions.push(fail(resp, err));
                continue;
            };
            let hint = leader_hint(meta.leader, meta.leader_epoch);
            // A refusal before the append: the batch's successors may arrive once the
            // condition has cleared (see `txn::refusals`).
            let refused_batches = data.records.clone(); // a reference count, not a copy
            let refuse = |resp: PartitionProduceResponse, e: ResponseError| {
                if let Some(records) = &refused_batches {
                    broker
                        .refusals
                        .note(&name, data.index, records, e, Instant::now());
                }
                fail(resp, e)
            };
            let replica = broker.replicas.get_by_name(&name, data.index);
            let Some(replica) = replica.filter(|r| r.is_leader()) else {
                partitions.push(
                    refuse(resp, ResponseError::NotLeaderOrFollower)
                        .with_current_leader(hint.clone()),
                );
                continue;
            };
            let Some(records) = data.records.filter(|r| !r.is_empty()) else {
                // Kafka: "must have at least one record batch" (InvalidRecordException).
                partitions.push(
                    fail(resp, ResponseError::InvalidRecord)
                        .with_error_message(Some(sb("no record batches"))),
                );
                continue;
            };
            if ctx.api_version < FIRST_ZSTD_VERSION && has_zstd_batch(&records) {
                // KIP-110: clients that may send zstd use v7+; Kafka refuses it below.
                partitions.push(
                    fail(resp, ResponseError::UnsupportedCompressionType)
                        .with_error_message(Some(sb("zstd needs Produce v7 or later"))),
                );
                continue;
            }
            if acks == ACKS_ALL && !replica.has_min_insync() {
                partitions.push(refuse(resp, ResponseError::NotEnoughReplicas));
                continue;
            }
            // Written straight from the request frame: the storage layer writes the
            // patched headers (offsets, leader epoch) next to the rest of each batch,
            // so the bytes are not copied and no record is decoded.
            let Some(appended) = replica.append_as_leader(&records, now) else {
                partitions.push(
                    refuse(resp, ResponseError::NotLeaderOrFollower)
                        .with_current_leader(hint.clone()),
                );
                continue;
            };
            if let Ok(LeaderAppend::Duplicate(info)) = &appended {
                // A retry whose first attempt was written: answered, not rewritten.
                tracing::info!(
                    topic = %name,
                    partition = data.index,
                    base_offset = info.base_offset,
                    "duplicate idempotent batch answered with its original offset"
                );
            }
            match appended {
                Ok(LeaderAppend::Appended(info)) | Ok(LeaderAppend::Duplicate(info)) => {
                    resp = resp
                        .with_base_offset(info.base_offset)
                        .with_log_append_time_ms(info.log_append_time_ms)
                        .with_log_start_offset(info.log_start_offset);
                    if acks == ACKS_ALL {
                        waiters.push(Waiter {
                            topic: ti,
                            partition: pi,
                            replica,
                            end_offset: info.last_offset + 1,
                        });
                    }
                }
                Err(e) => {
                    if let Some((refused, why)) =
                        retriable_gap(&broker, &replica, &name, data.index, &e, now)
                    {
                        // The batch the gap skips is still to come: the client resends
                        // it, then this one (see `txn::refusals`).
                        tracing::info!(
                            topic = %name,
                            partition = data.index,
                            "{e}: {why}, answered {refused:?}"
                        );
                        resp = resp.with_error_code(refused.code());
                        if refused == ResponseError::NotLeaderOrFollower {
                            resp = resp.with_current_leader(hint.clone());
                        }
                        partitions.push(resp);
                        continue;
                    }
                    let (code, message) = errors::append_error(&e);
                    if e.is_producer_state_violation() {
                        // Rare and decisive for idempotent clients (librdkafka bumps its
                        // epoch on an out-of-order answer): always worth a line.
                        tracing::info!(topic = %name, partition = data.index, "produce rejected: {e}");
                    } else {
                        tracing::debug!(topic = %name, partition = data.index, "produce rejected: {e}");
                    }
                    resp = resp
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(message)));
                }
            }
            partitions.push(resp);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    if acks == ACKS_NONE {
        // No response is sent; on an error Kafka closes the connection so the client
        // refreshes its metadata.
        let failed = responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .any(|p| p.error_code != 0);
        return Box::pin(async move {
            if failed {
                Reply::Close
            } else {
                Reply::None
            }
        });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    Box::pin(async move {
        for w in waiters {
            let error = match w.replica.wait_acknowledgeable(w.end_offset, deadline).await {
                AckOutcome::Acked => continue,
                // Appended here, then leadership moved before the batch was
                // acknowledged: it may or may not survive. NOT_LEADER_OR_FOLLOWER
                // would tell librdkafka it was not written (and a client that then
                // gives up reports a written record as failed); a timeout says
                // "unknown", and the leader hint still sends the retry to the new
                // leader, where the idempotent retry is recognised.
                AckOutcome::NotLeader => ResponseError::RequestTimedOut,
                AckOutcome::TimedOut {
                    below_min_isr: true,
                } => ResponseError::NotEnoughReplicasAfterAppend,
                AckOutcome::TimedOut {
                    below_min_isr: false,
                } => ResponseError::RequestTimedOut,
            };
            let topic = &mut responses[w.topic];
            let resp = &mut topic.partition_responses[w.partition];
            tracing::debug!(
                partition = resp.index,
                end_offset = w.end_offset,
                "appended but not acknowledged: {error:?}"
            );
            resp.error_code = error.code();
            if !w.replica.is_leader() {
                let image = broker.image();
                if let Some(meta) = image
                    .topic_by_name(topic.name.0.as_str())
                    .and_then(|t| t.partitions.get(&resp.index))
                {
                    resp.current_leader = leader_hint(meta.leader, meta.leader_epoch);
                }
            }
        }
        let endpoints = if ctx.api_version >= FIRST_VERSION_NODE_ENDPOINTS {
            leader_endpoints(&broker, &responses)
        } else {
            Vec::new()
        };
        reply(
            &ctx,
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(endpoints),
        )
    })
}

/// The current leader an answer names (KIP-951). A partition without a leader gets the
/// default (-1, -1), which is left off the wire, as Kafka does: a hint of leader -1 would
/// only make librdkafka look for a broker that does not exist.
fn leader_hint(leader: i32, leader_epoch: i32) -> LeaderIdAndEpoch {
    if leader < 0 {
        return LeaderIdAndEpoch::default();
    }
    LeaderIdAndEpoch::default()
        .with_leader_id(leader.into())
        .with_leader_epoch(leader_epoch)
}

/// The endpoints of the leaders that the answers' hints name (KIP-951), so the client can
/// send there without a Metadata round trip.
fn leader_endpoints(broker: &Broker, responses: &[TopicProduceResponse]) -> Vec<NodeEndpoint> {
    let image = broker.image();
    let mut leaders: Vec<i32> = responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .filter(|p| p.error_code != 0)
        .map(|p| p.current_leader.leader_id.0)
        .filter(|id| *id >= 0)
        .collect();
    leaders.sort_unstable();
    leaders.dedup();
    leaders
        .into_iter()
        .filter_map(|id| {
            let (host, port, rack) = client_endpoint(&image, id)?;
            Some(
                NodeEndpoint::default()
                    .with_node_id(id.into())
                    .with_host(host)
                    .with_port(port)
                    .with_rack(rack),
            )
        })
        .collect()
}

/// Whether any batch in `records` is zstd-compressed (batches that do not parse are
/// left to the append's validation).
fn has_zstd_batch(records: &[u8]) -> bool {
    let mut position = 0;
    while let Some(h) = records
        .get(position..)
        .and_then(|rest| BatchHeader::parse(rest).ok())
    {
        if h.compression() == ZSTD_CODEC {
            return true;
        }
        position += h.total_bytes();
    }
    false
}

/// The retriable error to answer instead of OUT_OF_ORDER_SEQUENCE_NUMBER, and why,
/// when the batch skipped sequences whose batch may still arrive: this broker refused
/// it moments ago, or it took up the leadership so recently that the batch may still
/// be waiting at the previous leader (`txn::refusals`).
fn retriable_gap(
    broker: &Broker,
    replica: &Partition,
    topic: &str,
    partition: i32,
    e: &AppendError,
    now_ms: i64,
) -> Option<(ResponseError, &'static str)> {
    let AppendError::OutOfOrderSequence {
        producer_id,
        epoch,
        expected,
        received,
    } = *e
    else {
        return None;
    };
    if !refusals::gap_is_ahead(expected, received) {
        return None;
    }
    if let Some(refused) = broker.refusals.explains_gap(
        topic,
        partition,
        producer_id,
        epoch,
        expected,
        Instant::now(),
    ) {
        return Some((refused, "the skipped batch was refused here"));
    }
    let grace_ms = broker.config.producer_sequence_gap_grace.as_millis() as i64;
    replica
        .leading_for_ms(now_ms)
        .filter(|led_ms| *led_ms < grace_ms)
        .map(|_| {
            (
                ResponseError::NotLeaderOrFollower,
                "leader for less than producer.sequence.gap.grace.ms",
            )
        })
}

/// Encodes the response, through `produce_legacy` for v0–v2.
fn reply(ctx: &RequestContext, resp: ProduceResponse) -> Reply {
    if ctx.api_version >= produce_legacy::FIRST_CODEC_VERSION {
        return encode(ctx, &resp);
    }
    match produce_legacy::encode_body(&resp, ctx.api_version) {
        Ok(body) => {
            // Produce v0-v2 responses use response header v0: just the correlation id.
            let mut frame = bytes::BytesMut::with_capacity(8 + body.len());
            bytes::BufMut::put_i32(&mut frame, (4 + body.len()) as i32);
            bytes::BufMut::put_i32(&mut frame, ctx.correlation_id);
            frame.extend_from_slice(&body);
            Reply::Frame(frame.freeze())
        }
        Err(e) => {
            tracing::error!("cannot encode produce v{} response: {e}", ctx.api_version);
            Reply::Close
        }
    }
}
