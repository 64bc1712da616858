//! AlterPartitionReassignments (45) and ListPartitionReassignments (46): moving a
//! partition's replicas between brokers without stopping traffic (KIP-455).
//!
//! A reassignment is a controller decision: the partition's replicas become the old
//! set plus the target, the new replicas fetch from the leader until the leader adds
//! them to the ISR, and once every target replica is in sync the controller drops the
//! replicas that are not in the target (moving leadership if the leader is one of
//! them). Listing answers from this broker's image.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::controller::{ControllerRequest, ControllerResponse};

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// AlterPartitionReassignments versions served.
pub const ALTER_VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };
/// ListPartitionReassignments versions served.
pub const LIST_VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

fn ids(list: &[i32]) -> Vec<BrokerId> {
    list.iter().map(|b| BrokerId(*b)).collect()
}

/// Starts or cancels (null replicas) a reassignment per partition.
pub fn alter(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: AlterPartitionReassignmentsRequest,
) -> Pending {
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    respond(ctx, async move {
        let mut responses = Vec::with_capacity(req.topics.len());
        for topic in req.topics {
            let name = topic.name.0.to_string();
            let topic_id = broker.image().topic_by_name(&name).map(|t| t.topic_id);
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for p in topic.partitions {
                let out = ReassignablePartitionResponse::default()
                    .with_partition_index(p.partition_index);
                let Some(topic_id) = topic_id else {
                    partitions.push(
                        out.with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(sb(format!("no topic {name}")))),
                    );
                    continue;
                };
                let target = p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
                let request = ControllerRequest::AlterPartitionReassignments {
                    topic_id,
                    partition: p.partition_index,
                    target,
                };
                let result = match broker.submit_within(request, timeout).await {
                    Ok(ControllerResponse::AlterPartitionReassignments(r)) => {
                        r.map_err(|e| errors::controller_error(&e))
                    }
                    Ok(other) => Err((
                        ResponseError::UnknownServerError,
                        format!("unexpected controller answer {other:?}"),
                    )),
                    Err(e) => Err(errors::quorum_error(&e)),
                };
                partitions.push(match result {
                    Ok(()) => out,
                    Err((code, message)) => out
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(message))),
                });
            }
            responses.push(
                ReassignableTopicResponse::default()
                    .with_name(TopicName(sb(name)))
                    .with_partitions(partitions),
            );
        }
        AlterPartitionReassignmentsResponse::default().with_responses(responses)
    })
}

/// Lists the reassignments in progress (all, or those of the named partitions).
pub fn list(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: ListPartitionReassignmentsRequest,
) -> Pending {
    respond(ctx, async move {
        let image = broker.image();
        let wanted: Option<Vec<(String, i32)>> = req.topics.map(|topics| {
            topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.name.0.to_string();
                    t.partition_indexes
                        .into_iter()
                        .map(move |p| (name.clone(), p))
                })
                .collect()
        });
        let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
        for (topic_id, partition, r) in image.reassignments() {
            let Some(topic) = image.topics.get(&topic_id) else {
                continue;
            };
            let listed = wanted
                .as_ref()
                .is_none_or(|w| w.iter().any(|(n, p)| *n == topic.name && *p == partition));
            if !listed {
                continue;
            }
            let replicas = topic
                .partitions
                .get(&partition)
                .map(|pi| pi.replicas.clone())
                .unwrap_or_default();
            let entry = OngoingPartitionReassignment::default()
                .with_partition_index(partition)
                .with_replicas(ids(&replicas))
                .with_adding_replicas(ids(&r.adding))
                .with_removing_replicas(ids(&r.removing));
            match topics.last_mut() {
                Some(t) if t.name.0.as_str() == topic.name => t.partitions.push(entry),
                _ => topics.push(
                    OngoingTopicReassignment::default()
                        .with_name(TopicName(sb(topic.name.clone())))
                        .with_partitions(vec![entry]),
                ),
            }
        }
        ListPartitionReassignmentsResponse::default().with_topics(topics)
    })
}
