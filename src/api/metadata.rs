//! Metadata (3): brokers, controller, topics and partitions, from this broker's image.
//!
//! Auto-creates requested topics that do not exist when the client allows it and
//! `auto.create.topics.enable` is on; the answer already includes them.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::controller::{ControllerRequest, NewTopic};
use keel_raft::image::{MetadataImage, TopicImage};

use super::{find_coordinator, respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::OFFSETS_TOPIC;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 12 };

/// Topics Kafka reports as internal.
pub const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// How long an auto-creation may take before the client is told to retry.
const AUTO_CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers from the image, auto-creating topics first if asked.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: MetadataRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        // v0: an empty list means every topic; v1+: null means every topic.
        let all_topics = req.topics.is_none()
            || (version == 0 && req.topics.as_ref().is_some_and(|t| t.is_empty()));
        let allow_create = version < 4 || req.allow_auto_topic_creation;
        let mut image = broker.image();
        let requested: Vec<(Option<String>, uuid::Uuid)> = req
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect();
        if !all_topics && allow_create && broker.config.auto_create_topics {
            let missing: Vec<String> = requested
                .iter()
                .filter_map(|(n, _)| n.clone())
                .filter(|n| errors::valid_topic_name(n) && image.topic_by_name(n).is_none())
                .collect();
            if !missing.is_empty() {
                auto_create(&broker, missing).await;
                image = broker.image();
            }
        }
        let topics: Vec<MetadataResponseTopic> = if all_topics {
            image
                .topics
                .values()
                .map(|t| describe_topic(&image, t, version))
                .collect()
        } else {
            requested
                .iter()
                .map(|(name, id)| match name {
                    Some(n) => match image.topic_by_name(n) {
                        Some(t) => describe_topic(&image, t, version),
                        None => {
                            let err = if errors::valid_topic_name(n) {
                                ResponseError::UnknownTopicOrPartition
                            } else {
                                ResponseError::InvalidTopicException
                            };
                            MetadataResponseTopic::default()
                                .with_name(Some(TopicName(sb(n.clone()))))
                                .with_error_code(err.code())
                        }
                    },
                    None => match image.topics.get(id) {
                        Some(t) => describe_topic(&image, t, version),
                        None => MetadataResponseTopic::default()
                            .with_name(None)
                            .with_topic_id(*id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                })
                .collect()
        };
        let brokers = image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter_map(|b| {
                let ep = b.endpoints.first()?;
                Some(
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(b.broker_id))
                        .with_host(sb(ep.host.clone()))
                        .with_port(ep.port as i32)
                        .with_rack(b.rack.clone().map(sb)),
                )
            })
            .collect();
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(sb(broker.cluster_id.clone())))
            .with_controller_id(BrokerId(broker.controller_id()))
            .with_topics(topics)
    })
}

async fn auto_create(broker: &Broker, mut names: Vec<String>) {
    if let Some(i) = names.iter().position(|n| n == OFFSETS_TOPIC) {
        // Created as the coordinator creates it: compacted, with its own partition
        // count and replication factor.
        names.remove(i);
        find_coordinator::ensure_offsets_topic(broker).await;
    }
    if names.is_empty() {
        return;
    }
    let topics = names
        .into_iter()
        .map(|name| NewTopic {
            name,
            num_partitions: -1,
            replication_factor: -1,
            assignments: Default::default(),
            configs: Default::default(),
        })
        .collect();
    let req = ControllerRequest::CreateTopics {
        topics,
        validate_only: false,
    };
    match tokio::time::timeout(AUTO_CREATE_TIMEOUT, broker.submit(req)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("auto-creating topics failed: {e}"),
        Err(_) => tracing::warn!("auto-creating topics timed out"),
    }
}

fn describe_topic(image: &MetadataImage, t: &TopicImage, version: i16) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .map(|(index, p)| {
            let offline: Vec<BrokerId> = p
                .replicas
                .iter()
                .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                .map(|r| BrokerId(*r))
                .collect();
            let error = if p.leader < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(*index)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(p.replicas.iter().map(|r| BrokerId(*r)).collect())
                .with_isr_nodes(p.isr.iter().map(|r| BrokerId(*r)).collect())
                .with_offline_replicas(if version >= 5 { offline } else { vec![] })
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(t.name.clone()))))
        .with_topic_id(t.topic_id)
        .with_is_internal(INTERNAL_TOPICS.contains(&t.name.as_str()))
        .with_partitions(partitions)
}
