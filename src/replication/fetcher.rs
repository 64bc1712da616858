//! Follower fetchers: one task per leader broker, fetching every partition this broker
//! follows from that leader in one Fetch request (with this broker's replica id).
//!
//! Before a partition is fetched after a leader change it is truncated to where its
//! log and the leader's agree (OffsetForLeaderEpoch, repeated until the local latest
//! epoch matches the leader's answer). Fetched batches are appended as they are, and
//! under `log.flush.policy=always` fsynced before the next fetch, whose offsets tell
//! the leader how far this replica holds the log durably; the leader's high watermark
//! therefore only covers bytes on disk on every in-sync replica.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, OffsetForLeaderEpochRequest, TopicName};
use kafka_protocol::ResponseError;
use keel_raft::image::MetadataImage;
use keel_storage::AppendError;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use super::manager::now_ms;
use super::partition::Partition;
use crate::api::sb;
use crate::cli::client::KafkaClient;
use crate::config::{BrokerConfig, FlushPolicy};

/// Fetch version followers send (replica id field, topic names, last fetched epoch).
pub const REPLICA_FETCH_VERSION: i16 = 12;
/// OffsetForLeaderEpoch version followers send.
pub const REPLICA_EPOCH_VERSION: i16 = 4;
/// How long an idle fetcher sleeps before looking for work again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How long a leader may take to answer one request beyond the fetch's own wait; a
/// fetcher that hears nothing for that long drops the connection and starts over, so
/// a lost or stuck answer cannot keep a replica out of the ISR. A request sent into a
/// cut network is retransmitted on an exponential backoff, and so is the leader's
/// answer: at 15 s the long fault runs saw followers stay stuck 7–11 s after every cut
/// of 5–8 s had healed. A healthy leader answers from memory and the page cache, far
/// within this.
const REPLICA_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt to the leader may take before the fetcher starts a
/// fresh one: a connect begun during a cut retransmits its SYN at 1, 3, 7 and 15 s, so
/// waiting it out would also outlast a short cut by seconds.
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A leader that did not answer within [`REPLICA_RPC_TIMEOUT`] (logged louder than the
/// usual failures of a leader that went away).
#[derive(Debug, thiserror::Error)]
#[error("no {0} answer from the leader within {1:?}")]
struct Unanswered(&'static str, Duration);

type Key = (Uuid, i32);

struct Target {
    partition: Arc<Partition>,
    epoch: i32,
    needs_truncation: bool,
    backoff_until: Option<Instant>,
}

struct Shared {
    targets: Mutex<BTreeMap<Key, Target>>,
    wake: Notify,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every fetcher needs to know about this broker.
#[derive(Clone)]
struct Context {
    node_id: i32,
    local_ip: IpAddr,
    policy: FlushPolicy,
    max_wait_ms: i32,
    partition_max_bytes: i32,
    response_max_bytes: i32,
    backoff: Duration,
    image: watch::Receiver<Arc<MetadataImage>>,
}

/// The fetcher tasks of this broker, by leader.
pub struct FetcherManager {
    ctx: Context,
    fetchers: Mutex<HashMap<i32, Arc<Shared>>>,
}

impl FetcherManager {
    /// A manager with no fetchers; `assign` starts them.
    pub fn new(config: &BrokerConfig, image: watch::Receiver<Arc<MetadataImage>>) -> Self {
        FetcherManager {
            ctx: Context {
                node_id: config.node_id,
                local_ip: config.listen.ip(),
                policy: config.flush_policy,
                max_wait_ms: config.replica_fetch_wait_max.as_millis() as i32,
                partition_max_bytes: config.replica_fetch_max_bytes,
                response_max_bytes: config.replica_fetch_response_max_bytes,
                backoff: config.replica_fetch_backoff,
                image,
            },
            fetchers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Shared>>> {
        self.fetchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches `partition` from `leader` in `epoch` from now on (truncating first),
    /// instead of from wherever it was fetched before.
    pub fn assign(&self, partition: Arc<Partition>, leader: i32, epoch: i32) {
        let key = (partition.topic_id, partition.index);
        let mut fetchers = self.lock();
        for (id, shared) in fetchers.iter() {
            if *id != leader {
                shared.lock().remove(&key);
            }
        }
        let shared = fetchers.entry(leader).or_insert_with(|| {
            let shared = Arc::new(Shared {
                targets: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                stop: AtomicBool::new(false),
            });
            tokio::spawn(run(shared.clone(), leader, self.ctx.clone()));
            shared
        });
        shared.lock().insert(
            key,
            Target {
                partition,
                epoch,
                needs_truncation: true,
                backoff_until: None,
            },
        );
        shared.wake.notify_one();
    }

    /// Stops fetching `partition` (it became leader, lost its leader, or was removed).
    pub fn remove(&self, topic_id: Uuid, partition: i32) {
        for shared in self.lock().values() {
            shared.lock().remove(&(topic_id, partition));
        }
    }

    /// Stops every fetcher.
    pub fn shutdown(&self) {
        for shared in self.lock().drain().map(|(_, s)| s) {
            shared.stop.store(true, Ordering::Release);
            shared.wake.notify_one();
        }
    }
}

fn leader_address(image: &MetadataImage, leader: i32) -> Option<String> {
    let broker = image.brokers.get(&leader)?;
    let ep = broker.endpoints.first()?;
    Some(format!("{}:{}", ep.host, ep.port))
}

/// One leader's fetcher loop.
async fn run(shared: Arc<Shared>, leader: i32, ctx: Context) {
    let client_id = format!("keel-replica-fetcher-{}-from-{leader}", ctx.node_id);
    let mut client: Option<KafkaClient> = None;
    let mut warned = false;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let ready: Vec<(Key, Arc<Partition>, i32, bool)> = shared
            .lock()
            .iter()
            .filter(|(_, t)| t.backoff_until.is_none_or(|b| b <= now))
            .map(|(k, t)| (*k, t.partition.clone(), t.epoch, t.needs_truncation))
            .collect();
        if ready.is_empty() {
            let _ =
                tokio::time::timeout(IDLE_WAIT.min(ctx.backoff * 2), shared.wake.notified()).await;
            continue;
        }
        if client.is_none() {
            let image = ctx.image.borrow().clone();
            let Some(addr) = leader_address(&image, leader) else {
                tokio::time::sleep(ctx.backoff).await;
                continue;
            };
            let connect = KafkaClient::connect_from(&addr, ctx.local_ip, &client_id);
            let connected = tokio::time::timeout(REPLICA_CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "no connection to {addr} within {REPLICA_CONNECT_TIMEOUT:?}"
                    ))
                });
            match connected {
                Ok(c) => {
                    client = Some(c);
                    if warned {
                        tracing::info!(leader, "replica fetcher connected again");
                    }
                    warned = false;
                    // Connecting may have taken seconds, across a leadership change:
                    // look at the work again rather than fetch for a stale list.
                    continue;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(leader, "replica fetcher cannot connect: {e:#}");
                    }
                    warned = true;
                    tokio::time::sleep(ctx.backoff).await;
                    continue;
                }
            }
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let to_truncate: Vec<_> = ready.iter().filter(|r| r.3).cloned().collect();
        if !to_truncate.is_empty() {
            if let Err(e) = truncate(conn, &shared, &ctx, &to_truncate).await {
                if e.is::<Unanswered>() {
                    tracing::warn!(leader, "truncation round failed: {e:#}");
                } else {
                    tracing::debug!(leader, "truncation round failed: {e:#}");
                }
                client = None;
                tokio::time::sleep(ctx.backoff).await;
            }
            continue;
        }
        if let Err(e) = fetch_once(conn, &shared, &ctx, &ready).await {
            if e.is::<Unanswered>() {
                tracing::warn!(leader, "replica fetch failed: {e:#}");
            } else {
                tracing::debug!(leader, "replica fetch failed: {e:#}");
            }
            client = None;
            tokio::time::sleep(ctx.backoff).await;
        }
    }
}

fn set_target(shared: &Shared, key: &Key, epoch: i32, f: impl FnOnce(&mut Target)) {
    if let Some(t) = shared.lock().get_mut(key).filter(|t| t.epoch == epoch) {
        f(t);
    }
}

/// One round of OffsetForLeaderEpoch for the partitions that need it.
async fn truncate(
    conn: &mut KafkaClient,
    shared: &Shared,
    ctx: &Context,
    targets: &[(Key, Arc<Partition>, i32, bool)],
) -> anyhow::Result<()> {
    let mut by_topic: BTreeMap<String, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    let mut asked = Vec::new();
    for (key, p, epoch, _) in targets {
        let latest = p.log().latest_epoch();
        let Some(latest) = latest else {
            // No batch carries an epoch: nothing can diverge.
            set_target(shared, key, *epoch, |t| t.needs_truncation = false);
            continue;
        };
        by_topic.entry(p.topic.clone()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(p.index)
                .with_current_leader_epoch(*epoch)
                .with_leader_epoch(latest),
        );
        asked.push((key, p, *epoch));
    }
    if by_topic.is_empty() {
        return Ok(());
    }
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(ctx.node_id))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(TopicName(sb(t)))
                        .with_partitions(parts)
                })
                .collect(),
        );
    let resp = tokio::time::timeout(REPLICA_RPC_TIMEOUT, conn.call(&req, REPLICA_EPOCH_VERSION))
        .await
        .map_err(|_| Unanswered("OffsetForLeaderEpoch", REPLICA_RPC_TIMEOUT))??;
    for (key, p, epoch) in asked {
        let answer = resp
            .topics
            .iter()
            .filter(|t| t.topic.0.as_str() == p.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|e| e.partition == p.index);
        let Some(answer) = answer else { continue };
        if answer.error_code != 0 {
            tracing::debug!(topic = %p.topic, partition = p.index, code = answer.error_code, "epoch lookup refused");
            set_target(shared, key, epoch, |t| {
                t.backoff_until = Some(Instant::now() + ctx.backoff)
            });
            continue;
        }
        let local_end = p.log_end_offset();
        // Another round is needed when this log has no entries of the leader's epoch:
        // its own older epochs may then end later than the leader's do.
        let (target, done) = if answer.end_offset < 0 {
            // The leader knows no such epoch: keep only what is known committed.
            (p.high_watermark(), true)
        } else {
            let (f_epoch, f_end) = p.end_offset_for_epoch(answer.leader_epoch);
            let f_end = if f_end < 0 { local_end } else { f_end };
            (
                answer.end_offset.min(f_end).min(local_end),
                f_epoch == answer.leader_epoch,
            )
        };
        // Also when nothing is to be cut: an epoch this broker assigned at its log
        // end as a short-lived leader must go (found by keel-faults: a replica
        // out of the ISR for good after kill -9).
        // Blocking file work (truncation fsyncs the log, the directory and the epoch
        // checkpoint): off the async workers, so a slow disk cannot stall the node
        // (found by keel-faults: a broker silent for 12 s, its Raft heartbeats included,
        // inside one truncation).
        if let Err(e) = tokio::task::block_in_place(|| p.truncate_to(epoch, target)) {
            tracing::error!(topic = %p.topic, partition = p.index, "truncation failed: {e}");
            set_target(shared, key, epoch, |t| {
                t.backoff_until = Some(Instant::now() + ctx.backoff)
            });
            continue;
        }
        set_target(shared, key, epoch, |t| t.needs_truncation = !done);
    }
    Ok(())
}

/// One Fetch from the leader for every ready partition; appends, fsyncs, and moves
/// the followers' high watermarks.
async fn fetch_once(
    conn: &mut KafkaClient,
    shared: &Shared,
    ctx: &Context,
    targets: &[(Key, Arc<Partition>, i32, bool)],
) -> anyhow::Result<()> {
    let mut by_topic: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
    for (_, p, epoch, _) in targets {
        let last_epoch = p.log().latest_epoch().unwrap_or(-1);
        by_topic.entry(p.topic.clone()).or_default().push(
            FetchPartition::default()
                .with_partition(p.index)
                .with_current_leader_epoch(*epoch)
                .with_fetch_offset(p.log_end_offset())
                .with_last_fetched_epoch(last_epoch)
                .with_log_start_offset(p.log_start_offset())
                .with_partition_max_bytes(ctx.partition_max_bytes),
        );
    }
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(ctx.node_id))
        .with_max_wait_ms(ctx.max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(ctx.response_max_bytes)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    FetchTopic::default()
                        .with_topic(TopicName(sb(t)))
                        .with_partitions(parts)
                })
                .collect(),
        );
    let wait = REPLICA_RPC_TIMEOUT + Duration::from_millis(ctx.max_wait_ms.max(0) as u64);
    let resp = tokio::time::timeout(wait, conn.call(&req, REPLICA_FETCH_VERSION))
        .await
        .map_err(|_| Unanswered("Fetch", wait))??;
    if resp.error_code != 0 {
        anyhow::bail!("fetch refused with error code {}", resp.error_code);
    }
    let now = now_ms();
    let mut appended = Vec::new();
    for (key, p, epoch, _) in targets {
        let data = resp
            .responses
            .iter()
            .filter(|t| t.topic.0.as_str() == p.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|d| d.partition_index == p.index);
        let Some(data) = data else { continue };
        let backoff = || {
            set_target(shared, key, *epoch, |t| {
                t.backoff_until = Some(Instant::now() + ctx.backoff)
            })
        };
        match ResponseError::try_from_code(data.error_code) {
            None => {}
            Some(ResponseError::OffsetOutOfRange) => {
                if data.log_start_offset > p.log_end_offset() {
                    tracing::info!(topic = %p.topic, partition = p.index, start = data.log_start_offset, "leader's log starts past ours; starting over there");
                    if let Err(e) = tokio::task::block_in_place(|| {
                        p.truncate_fully_and_start_at(*epoch, data.log_start_offset)
                    }) {
                        tracing::error!(topic = %p.topic, partition = p.index, "cannot restart the log: {e}");
                        backoff();
                    }
                } else {
                    set_target(shared, key, *epoch, |t| t.needs_truncation = true);
                }
                continue;
            }
            Some(e) => {
                tracing::debug!(topic = %p.topic, partition = p.index, "replica fetch error {e:?}");
                backoff();
                continue;
            }
        }
        if data.diverging_epoch.epoch >= 0 {
            set_target(shared, key, *epoch, |t| t.needs_truncation = true);
            continue;
        }
        let records = data.records.as_ref().filter(|r| !r.is_empty());
        if let Some(records) = records {
            match p.append_as_follower(*epoch, records, now) {
                None => continue,
                Some(Ok(_)) => {}
                Some(Err(AppendError::OffsetsNotMonotonic { expected, actual })) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, expected, actual, "fetched batches do not continue the log; truncating");
                    set_target(shared, key, *epoch, |t| t.needs_truncation = true);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::error!(topic = %p.topic, partition = p.index, "cannot append fetched batches: {e}");
                    backoff();
                    continue;
                }
            }
        }
        if data.log_start_offset > p.log_start_offset()
            && data.log_start_offset <= p.log_end_offset()
        {
            if let Err(e) =
                tokio::task::block_in_place(|| p.delete_records_before(data.log_start_offset))
            {
                tracing::warn!(topic = %p.topic, partition = p.index, "cannot follow the leader's log start: {e}");
            }
        }
        appended.push((p.clone(), *epoch, data.high_watermark));
    }
    if ctx.policy == FlushPolicy::Always {
        // Durable before the next fetch reports the new offsets to the leader.
        futures::future::join_all(appended.iter().map(|(p, _, _)| p.flush_now())).await;
    }
    for (p, epoch, hw) in appended {
        p.update_follower_high_watermark(epoch, hw);
    }
    Ok(())
}
