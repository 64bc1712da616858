//! FindCoordinator (10): which broker coordinates a group.
//!
//! The coordinator of a group is the leader of its partition of `__consumer_offsets`.
//! The first lookup creates the topic (compacted, `offsets.topic.num.partitions`
//! partitions, replicated to min(`offsets.topic.replication.factor`, brokers)); until
//! its partition has a leader the answer is COORDINATOR_NOT_AVAILABLE, which clients
//! retry. v4+ batches keys. Transaction coordinators do not exist yet: those keys get
//! COORDINATOR_NOT_AVAILABLE too.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::controller::ControllerRequest;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::offsets_topic::partition_for;
use crate::group::OFFSETS_TOPIC;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// Key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;
/// Key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// First version that batches keys.
const FIRST_BATCHED_VERSION: i16 = 4;
/// How long the first lookup waits for the new offsets topic's partitions to get
/// leaders before answering COORDINATOR_NOT_AVAILABLE.
const OFFSETS_TOPIC_CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the first lookup checks whether a new offsets partition has loaded here.
const LOAD_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Answers from the image, creating the offsets topic on first use.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: FindCoordinatorRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        let keys: Vec<String> = if version >= FIRST_BATCHED_VERSION {
            req.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![req.key.to_string()]
        };
        if req.key_type == KEY_TYPE_GROUP && ensure_offsets_topic(&broker).await {
            // The groups' partitions were created just now: where this broker leads one,
            // its first JoinGroup should not meet COORDINATOR_LOAD_IN_PROGRESS (some
            // clients, e.g. sarama 1.22, give up on it), so wait for the load too.
            wait_loaded_here(&broker, &keys).await;
        }
        let answers: Vec<Coordinator> = keys
            .into_iter()
            .map(|key| locate(&broker, req.key_type, key))
            .collect();
        if version >= FIRST_BATCHED_VERSION {
            return FindCoordinatorResponse::default().with_coordinators(answers);
        }
        let a = answers.into_iter().next().unwrap_or_default();
        FindCoordinatorResponse::default()
            .with_error_code(a.error_code)
            .with_error_message(a.error_message)
            .with_node_id(a.node_id)
            .with_host(a.host)
            .with_port(a.port)
    })
}

fn locate(broker: &Broker, key_type: i8, key: String) -> Coordinator {
    let fail = |key: String, e: ResponseError, msg: &str| {
        Coordinator::default()
            .with_key(sb(key))
            .with_node_id(BrokerId(-1))
            .with_host(sb(""))
            .with_port(-1)
            .with_error_code(e.code())
            .with_error_message(Some(sb(msg)))
    };
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return fail(
                key,
                ResponseError::CoordinatorNotAvailable,
                "transactions are not supported yet",
            )
        }
        _ => {
            return fail(
                key,
                ResponseError::InvalidRequest,
                "unknown coordinator key type",
            )
        }
    }
    let image = broker.image();
    let Some(topic) = image.topic_by_name(OFFSETS_TOPIC) else {
        return fail(
            key,
            ResponseError::CoordinatorNotAvailable,
            "the offsets topic is being created",
        );
    };
    let index = partition_for(&key, topic.partitions.len() as i32);
    let leader = topic.partitions.get(&index).map_or(-1, |p| p.leader);
    let endpoint = image
        .brokers
        .get(&leader)
        .filter(|b| !b.fenced)
        .and_then(|b| b.endpoints.first());
    match endpoint {
        Some(ep) => Coordinator::default()
            .with_key(sb(key))
            .with_node_id(BrokerId(leader))
            .with_host(sb(ep.host.clone()))
            .with_port(ep.port as i32),
        None => fail(
            key,
            ResponseError::CoordinatorNotAvailable,
            "the group's offsets partition has no leader",
        ),
    }
}

/// Waits (bounded) until this broker has loaded the offsets partition of each of
/// `groups` that it leads.
async fn wait_loaded_here(broker: &Broker, groups: &[String]) {
    let deadline = tokio::time::Instant::now() + OFFSETS_TOPIC_CREATE_TIMEOUT;
    let here = broker.config.node_id;
    let led_here = |group: &String| {
        let image = broker.image();
        image.topic_by_name(OFFSETS_TOPIC).is_some_and(|t| {
            let index = partition_for(group, t.partitions.len() as i32);
            t.partitions.get(&index).is_some_and(|p| p.leader == here)
        })
    };
    while groups
        .iter()
        .any(|g| led_here(g) && !broker.groups.is_ready_for(g))
    {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(LOAD_POLL_INTERVAL).await;
    }
}

/// Creates `__consumer_offsets` if it does not exist, and then waits (bounded) until
/// every partition of the new topic has a leader. Returns whether it had to create it.
pub async fn ensure_offsets_topic(broker: &Broker) -> bool {
    let image = broker.image();
    if image.topic_by_name(OFFSETS_TOPIC).is_some() {
        return false;
    }
    let live = image.brokers.values().filter(|b| !b.fenced).count();
    let req = ControllerRequest::CreateTopics {
        topics: vec![broker.offsets_topic_spec().new_topic(live)],
        validate_only: false,
    };
    if let Err(e) = broker
        .submit_within(req, OFFSETS_TOPIC_CREATE_TIMEOUT)
        .await
    {
        let (code, msg) = errors::quorum_error(&e);
        tracing::warn!("cannot create {OFFSETS_TOPIC}: {code:?} {msg}");
        return false;
    }
    tracing::info!("{OFFSETS_TOPIC} created (or created concurrently)");
    let deadline = tokio::time::Instant::now() + OFFSETS_TOPIC_CREATE_TIMEOUT;
    let mut rx = broker.quorum.image();
    loop {
        let ready = rx
            .borrow_and_update()
            .topic_by_name(OFFSETS_TOPIC)
            .is_some_and(|t| t.partitions.values().all(|p| p.leader >= 0));
        if ready {
            return true;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return true;
        }
    }
}
