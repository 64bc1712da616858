//! Fetch (1): serve record batches straight from segment files.
//!
//! Each partition's read is planned under its lock and executed (pread) outside it;
//! batches go out as stored bytes. Long polling: if fewer than `min_bytes` are ready,
//! the request waits for any of its partitions to change, up to `max_wait_ms`.
//! Sessions (KIP-227) live in `fetch_session`.
//!
//! Follower fetches (a replica id ≥ 0) take the same path with three differences: they
//! read up to the log end rather than the high watermark, their fetch offset is
//! recorded as the follower's log end (which moves the high watermark and may grow the
//! ISR), and a follower whose last fetched epoch disagrees with this log is answered
//! with the diverging epoch instead of records, so it truncates first.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::image::MetadataImage;

use super::fetch_session::{Sent, SessionPartition, SessionUse, TopicKey};
use super::{client_endpoint, encode, sb, Pending, Reply};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::segmented::{encode_response_sharing, SHARE_MIN_BYTES};
use crate::protocol::RequestContext;
use crate::replication::manager::now_ms;
use crate::replication::Partition;
use keel_storage::ReadPlan;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 4, max: 16 };
/// First version whose partitions name the current leader after a leadership error.
const FIRST_VERSION_LEADER_HINT: i16 = 12;
/// First version whose responses carry the endpoints of the leaders they name (KIP-951).
const FIRST_VERSION_NODE_ENDPOINTS: i16 = 16;

/// isolation_level value of read_committed consumers.
const READ_COMMITTED: i8 = 1;

/// One partition to answer for, resolved against the image.
struct Target {
    req: SessionPartition,
    name: String,
    topic_id: uuid::Uuid,
    replica: Result<Arc<Partition>, ResponseError>,
    /// For a follower whose log diverges: the epoch and end offset to truncate to.
    diverging: Option<(i32, i64)>,
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
                last_fetched_epoch: p.last_fetched_epoch,
                fetcher_log_start_offset: p.log_start_offset,
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
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let follower = (replica_id >= 0).then_some(replica_id);

    Box::pin(async move {
        let image = broker.image();
        let targets: Vec<Target> = partitions
            .into_iter()
            .map(|p| resolve(&broker, &image, p, follower))
            .collect();
        if let Some(id) = follower {
            record_follower_fetches(&broker, &targets, id);
        }
        let planned = loop {
            // Arm the wake-ups before looking, so a change between the look and the
            // wait is not missed.
            let mut wakeups: Vec<_> = targets
                .iter()
                .filter_map(|t| t.replica.as_ref().ok())
                .flat_map(|r| {
                    // Followers wait for appends too (they read past the high watermark).
                    let appended = follower.is_some().then(|| Box::pin(r.appended()));
                    std::iter::once(Box::pin(r.changed())).chain(appended)
                })
                .collect();
            for w in wakeups.iter_mut() {
                w.as_mut().enable();
            }
            let ready = gather(&targets, max_bytes, follower.is_some());
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
        // Leadership may have moved while the fetch waited: hints come from the
        // newest image, taken only when an answer needs one.
        let mut hints_from: Option<Arc<MetadataImage>> = None;
        let mut endpoints: Vec<NodeEndpoint> = Vec::new();
        for (target, out) in targets.iter().zip(gathered.partitions) {
            let had_records = out.records.as_ref().is_some_and(|r| !r.is_empty());
            let changed = had_records
                || out.error != 0
                || target.diverging.is_some()
                || out.high_watermark != target.req.last_high_watermark
                || out.log_start_offset != target.req.last_log_start_offset;
            if incremental && !changed {
                continue;
            }
            sent.push(Sent {
                topic: target.req.topic.clone(),
                partition: target.req.partition,
                // After an error the partition is sent again once it clears (Kafka's
                // CachedPartition forgets its high watermark the same way).
                high_watermark: if out.error == 0 {
                    out.high_watermark
                } else {
                    -1
                },
                log_start_offset: out.log_start_offset,
                had_records,
            });
            let mut data = PartitionData::default();
            if version >= FIRST_VERSION_LEADER_HINT && is_leadership_error(out.error) {
                let image = hints_from.get_or_insert_with(|| broker.image());
                if let Some(leader) = leader_hint(image, target) {
                    if version >= FIRST_VERSION_NODE_ENDPOINTS
                        && !endpoints.iter().any(|e| e.node_id == leader.leader_id)
                    {
                        endpoints.extend(node_endpoint(image, leader.leader_id.0));
                    }
                    data.current_leader = leader;
                }
            }
            if let Some((epoch, end_offset)) = target.diverging {
                data.diverging_epoch.epoch = epoch;
                data.diverging_epoch.end_offset = end_offset;
            }
            let data = data
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
            .with_responses(topics)
            .with_node_endpoints(endpoints);
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

/// Whether an answer's error says the client should look for another leader.
fn is_leadership_error(error: i16) -> bool {
    error == ResponseError::NotLeaderOrFollower.code()
        || error == ResponseError::FencedLeaderEpoch.code()
}

/// The partition's current leader for a leadership error (KIP-951), so the client goes
/// there without a Metadata round trip.
fn leader_hint(image: &MetadataImage, target: &Target) -> Option<LeaderIdAndEpoch> {
    let meta = image
        .topic_by_name(&target.name)?
        .partitions
        .get(&target.req.partition)?;
    (meta.leader >= 0).then(|| {
        LeaderIdAndEpoch::default()
            .with_leader_id(meta.leader.into())
            .with_leader_epoch(meta.leader_epoch)
    })
}

/// The endpoint entry of broker `id` for a response that names it as a leader.
fn node_endpoint(image: &MetadataImage, id: i32) -> Option<NodeEndpoint> {
    let (host, port, rack) = client_endpoint(image, id)?;
    Some(
        NodeEndpoint::default()
            .with_node_id(id.into())
            .with_host(host)
            .with_port(port)
            .with_rack(rack),
    )
}

/// Records each follower fetch on the leader's partition state (moving the high
/// watermark) and queues the ISR change that may follow.
fn record_follower_fetches(broker: &Broker, targets: &[Target], follower: i32) {
    let now = now_ms();
    for t in targets {
        let Ok(replica) = &t.replica else { continue };
        if t.diverging.is_some() {
            continue;
        }
        if let Some(proposal) = replica.on_follower_fetch(
            follower,
            t.req.fetch_offset,
            t.req.fetcher_log_start_offset,
            now,
        ) {
            broker.replicas.propose_isr(replica.clone(), proposal);
        }
    }
}

fn resolve(
    broker: &Broker,
    image: &MetadataImage,
    req: SessionPartition,
    follower: Option<i32>,
) -> Target {
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
        // A topic known by id whose partition is not: Kafka answers by partition.
        None if image.topics.contains_key(&topic_id) => Err(ResponseError::UnknownTopicOrPartition),
        None => Err(unknown),
        Some(_) => match broker.replicas.get(topic_id, req.partition) {
            Some(r) => match errors::check_leadership(req.current_leader_epoch, r.role()) {
                Some(e) => Err(e),
                None => Ok(r),
            },
            None => Err(ResponseError::NotLeaderOrFollower),
        },
    };
    let diverging = match (&replica, follower) {
        (Ok(r), Some(_)) => r.follower_divergence(req.last_fetched_epoch, req.fetch_offset),
        _ => None,
    };
    Target {
        req,
        name,
        topic_id,
        replica,
        diverging,
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

impl PartitionOut {
    /// The answer for a partition that cannot be read at all.
    fn failed(error: ResponseError) -> Self {
        PartitionOut {
            error: error.code(),
            high_watermark: -1,
            log_start_offset: -1,
            plan: None,
            records: None,
        }
    }
}

struct Gathered {
    bytes: usize,
    errors: bool,
    partitions: Vec<PartitionOut>,
}

/// Plans a read of every target within the byte budgets (no data is read yet: see
/// [`read_planned`]). The first batch of the first partition with data is returned
/// even if it exceeds the budgets (KIP-74), so a big batch never blocks a consumer.
fn gather(targets: &[Target], max_bytes: usize, follower: bool) -> Gathered {
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
                out.partitions.push(PartitionOut::failed(*e));
                continue;
            }
        };
        // Leadership may have moved while the fetch waited: the client must learn it
        // now, not when its wait runs out.
        if let Some(e) = errors::check_leadership(t.req.current_leader_epoch, replica.role()) {
            out.errors = true;
            out.partitions.push(PartitionOut::failed(e));
            continue;
        }
        if t.diverging.is_some() {
            // Nothing to read until the follower truncates: the answer is ready now.
            out.errors = true;
            out.partitions.push(PartitionOut {
                error: 0,
                high_watermark: replica.high_watermark(),
                log_start_offset: replica.log_start_offset(),
                plan: None,
                records: None,
            });
            continue;
        }
        let budget = (t.req.max_bytes.max(0) as usize).min(max_bytes.saturating_sub(out.bytes));
        let min_one = out.bytes == 0;
        let read = if follower {
            replica.read_for_replica(t.req.fetch_offset, budget)
        } else {
            replica.read(t.req.fetch_offset, budget, min_one)
        };
        match read {
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
