//! Fetch (1): serve record batches straight from segment files.
//!
//! Each partition's read is planned under its lock and executed (pread) outside it;
//! batches go out as stored bytes. Long polling: if fewer than `min_bytes` are ready,
//! the request waits for any of its partitions to change, up to `max_wait_ms`.
//! Sessions (KIP-227) live in `fetch_session`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::image::MetadataImage;

use super::fetch_session::{SessionPartition, SessionUse, TopicKey};
use super::{encode, sb, Pending, Reply};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::segmented::{encode_response_sharing, SHARE_MIN_BYTES};
use crate::protocol::RequestContext;
use crate::replication::Partition;
use keel_storage::ReadPlan;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 4, max: 16 };

/// isolation_level value of read_committed consumers.
const READ_COMMITTED: i8 = 1;

/// One partition to answer for, resolved against the image.
struct Target {
    req: SessionPartition,
    name: String,
    topic_id: uuid::Uuid,
    replica: Result<Arc<Partition>, ResponseError>,
}

/// Starts a fetch.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: FetchRequest) -> Pending {
    let version = ctx.api_version;
    let by_id = version >= 13;
    let key_of = |name: &TopicName, id: uuid::Uuid| {
        if by_id {
            TopicKey::Id(id)
        } else {
            TopicKey::Name(name.0.to_string())
        }
    };
    let requested: Vec<SessionPartition> = req
        .topics
        .iter()
        .flat_map(|t| {
            let key = key_of(&t.topic, t.topic_id);
            t.partitions.iter().map(move |p| SessionPartition {
                topic: key.clone(),
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
                last_high_watermark: -1,
                last_log_start_offset: -1,
            })
        })
        .collect();
    let forgotten: Vec<(TopicKey, i32)> = req
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let key = key_of(&t.topic, t.topic_id);
            t.partitions.iter().map(move |p| (key.clone(), *p))
        })
        .collect();
    let (session_id, incremental, partitions) = if version >= 7 {
        match broker.fetch_sessions.begin(
            req.session_id,
            req.session_epoch,
            requested.clone(),
            &forgotten,
        ) {
            SessionUse::Full { session_id } => (session_id, false, requested),
            SessionUse::Incremental {
                session_id,
                partitions,
            } => (session_id, true, partitions),
            SessionUse::Error(e) => {
                let resp = FetchResponse::default()
                    .with_error_code(e.code())
                    .with_session_id(0);
                let reply = encode(&ctx, &resp);
                return Box::pin(async move { reply });
            }
        }
    } else {
        (0, false, requested)
    };

    let max_wait =
        Duration::from_millis(req.max_wait_ms.max(0) as u64).min(broker.config.request_timeout_max);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if version >= 3 {
        req.max_bytes.max(0) as usize
    } else {
        usize::MAX
    }
    .min(broker.config.fetch_max_bytes);
    let read_committed = req.isolation_level == READ_COMMITTED;

    Box::pin(async move {
        let image = broker.image();
        let targets: Vec<Target> = partitions
            .into_iter()
            .map(|p| resolve(&broker, &image, p))
            .collect();
        let planned = loop {
            // Arm the wake-ups before looking, so a change between the look and the
            // wait is not missed.
            let mut wakeups: Vec<_> = targets
                .iter()
                .filter_map(|t| t.replica.as_ref().ok())
                .map(|r| Box::pin(r.changed()))
                .collect();
            for w in wakeups.iter_mut() {
                w.as_mut().enable();
            }
            let ready = gather(&targets, max_bytes);
            let done = ready.bytes >= min_bytes
                || ready.errors
                || tokio::time::Instant::now() >= deadline
                || wakeups.is_empty();
            if done {
                break ready;
            }
            let _ = tokio::time::timeout_at(deadline, select_all(wakeups)).await;
        };
        // The plans that decided the wait is over are the ones read: planning again
        // would take every partition's lock a second time.
        let gathered = read_planned(&targets, planned);
        let shared: Vec<Bytes> = gathered
            .partitions
            .iter()
            .filter_map(|p| p.records.clone())
            .filter(|r| r.len() >= SHARE_MIN_BYTES)
            .collect();
        let mut topics: Vec<FetchableTopicResponse> = Vec::new();
        let mut sent = Vec::new();
        for (target, out) in targets.iter().zip(gathered.partitions) {
            let changed = out.records.as_ref().is_some_and(|r| !r.is_empty())
                || out.error != 0
                || out.high_watermark != target.req.last_high_watermark
                || out.log_start_offset != target.req.last_log_start_offset;
            if incremental && !changed {
                continue;
            }
            sent.push((
                target.req.topic.clone(),
                target.req.partition,
                out.high_watermark,
                out.log_start_offset,
            ));
            let data = PartitionData::default()
                .with_partition_index(target.req.partition)
                .with_error_code(out.error)
                .with_high_watermark(out.high_watermark)
                .with_last_stable_offset(out.high_watermark)
                .with_log_start_offset(out.log_start_offset)
                .with_aborted_transactions(if read_committed { Some(vec![]) } else { None })
                .with_records(Some(out.records.unwrap_or_default()));
            let same_topic = topics.last().is_some_and(|t: &FetchableTopicResponse| {
                if by_id {
                    t.topic_id == target.topic_id
                } else {
                    t.topic.0.as_str() == target.name
                }
            });
            if !same_topic {
                let mut t = FetchableTopicResponse::default();
                if by_id {
                    t.topic_id = target.topic_id;
                } else {
                    t.topic = TopicName(sb(target.name.clone()));
                }
                topics.push(t);
            }
            if let Some(t) = topics.last_mut() {
                t.partitions.push(data);
            }
        }
        broker.fetch_sessions.record_sent(session_id, &sent);
        let resp = FetchResponse::default()
            .with_session_id(session_id)
            .with_responses(topics);
        if shared.is_empty() {
            return encode(&ctx, &resp);
        }
        // The record batches go out from the buffers they were read into.
        match encode_response_sharing(&ctx, &resp, &shared) {
            Ok(pieces) => Reply::Frames(pieces),
            Err(e) => {
                tracing::error!("cannot encode fetch v{} response: {e}", ctx.api_version);
                Reply::Close
            }
        }
    })
}

fn resolve(broker: &Broker, image: &MetadataImage, req: SessionPartition) -> Target {
    let (name, topic_id, unknown) = match &req.topic {
        TopicKey::Name(n) => (
            n.clone(),
            image.topic_ids_by_name.get(n).copied().unwrap_or_default(),
            ResponseError::UnknownTopicOrPartition,
        ),
        TopicKey::Id(id) => (
            image
                .topics
                .get(id)
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            *id,
            ResponseError::UnknownTopicId,
        ),
    };
    let meta = image
        .topics
        .get(&topic_id)
        .and_then(|t| t.partitions.get(&req.partition));
    let replica = match meta {
        None => Err(unknown),
        Some(meta) if meta.leader != broker.config.node_id => {
            Err(ResponseError::NotLeaderOrFollower)
        }
        Some(meta) => match broker.replicas.get(topic_id, req.partition) {
            None => Err(ResponseError::NotLeaderOrFollower),
            Some(r) => {
                match errors::check_leader_epoch(req.current_leader_epoch, meta.leader_epoch) {
                    Some(e) => Err(e),
                    None => Ok(r),
                }
            }
        },
    };
    Target {
        req,
        name,
        topic_id,
        replica,
    }
}

struct PartitionOut {
    error: i16,
    high_watermark: i64,
    log_start_offset: i64,
    /// What to read, until [`read_planned`] turns it into `records`.
    plan: Option<ReadPlan>,
    records: Option<Bytes>,
}

struct Gathered {
    bytes: usize,
    errors: bool,
    partitions: Vec<PartitionOut>,
}

/// Plans a read of every target within the byte budgets (no data is read yet: see
/// [`read_planned`]). The first batch of the first partition with data is returned
/// even if it exceeds the budgets (KIP-74), so a big batch never blocks a consumer.
fn gather(targets: &[Target], max_bytes: usize) -> Gathered {
    let mut out = Gathered {
        bytes: 0,
        errors: false,
        partitions: Vec::with_capacity(targets.len()),
    };
    for t in targets {
        let replica = match &t.replica {
            Ok(r) => r,
            Err(e) => {
                out.errors = true;
                out.partitions.push(PartitionOut {
                    error: e.code(),
                    high_watermark: -1,
                    log_start_offset: -1,
                    plan: None,
                    records: None,
                });
                continue;
            }
        };
        let budget = (t.req.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(out.bytes));
        let min_one = out.bytes == 0;
        match replica.read(t.req.fetch_offset, budget, min_one) {
            Ok(read) => {
                out.bytes += read.plan.len();
                out.partitions.push(PartitionOut {
                    error: 0,
                    high_watermark: read.high_watermark,
                    log_start_offset: read.log_start_offset,
                    plan: Some(read.plan).filter(|p| !p.is_empty()),
                    records: None,
                });
            }
            Err(e) => {
                out.errors = true;
                out.partitions.push(PartitionOut {
                    error: errors::read_error(&e).code(),
                    high_watermark: replica.high_watermark(),
                    log_start_offset: replica.log_start_offset(),
                    plan: None,
                    records: None,
                });
            }
        }
    }
    out
}

/// Executes the plans of [`gather`] (positioned reads, no lock held). A failed read is
/// answered with KAFKA_STORAGE_ERROR for that partition.
fn read_planned(targets: &[Target], mut gathered: Gathered) -> Gathered {
    for (t, out) in targets.iter().zip(gathered.partitions.iter_mut()) {
        let Some(plan) = out.plan.take() else {
            continue;
        };
        match plan.execute() {
            Ok(bytes) => out.records = Some(bytes),
            Err(e) => {
                tracing::warn!(topic = %t.name, partition = t.req.partition, "fetch read failed: {e}");
                gathered.errors = true;
                out.error = ResponseError::KafkaStorageError.code();
            }
        }
    }
    gathered
}
