//! CreateTopics (19), DeleteTopics (20), CreatePartitions (37): forwarded to the
//! controller, answered once the change is committed and this broker's replica
//! manager has applied it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::controller::{
    ControllerRequest, ControllerResponse, NewPartitions, NewTopic, TopicRef,
};

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;
use crate::topic_config;

/// CreateTopics versions served.
pub const CREATE_TOPICS_VERSIONS: VersionRange = VersionRange { min: 2, max: 7 };
/// DeleteTopics versions served.
pub const DELETE_TOPICS_VERSIONS: VersionRange = VersionRange { min: 1, max: 6 };
/// CreatePartitions versions served.
pub const CREATE_PARTITIONS_VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

/// Creates topics.
pub fn create_topics(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: CreateTopicsRequest,
) -> Pending {
    let req_timeout_ms = req.timeout_ms;
    respond(ctx, async move {
        // A config without a value means nothing at creation: INVALID_CONFIG, as Kafka.
        // A name given twice is the controller's to refuse (INVALID_REQUEST for every
        // copy), whatever its configs say.
        let mut copies: HashMap<String, usize> = HashMap::new();
        for t in &req.topics {
            *copies.entry(t.name.0.to_string()).or_default() += 1;
        }
        let (with_null, to_create): (Vec<_>, Vec<_>) = req.topics.into_iter().partition(|t| {
            copies.get(t.name.0.as_str()) == Some(&1) && t.configs.iter().any(|c| c.value.is_none())
        });
        let refused: Vec<CreatableTopicResult> = with_null
            .into_iter()
            .map(|t| {
                let nulls: Vec<String> = t
                    .configs
                    .iter()
                    .filter(|c| c.value.is_none())
                    .map(|c| c.name.to_string())
                    .collect();
                let msg = format!(
                    "Null value not supported for topic configs: {}",
                    nulls.join(",")
                );
                CreatableTopicResult::default()
                    .with_name(t.name)
                    .with_error_code(ResponseError::InvalidConfig.code())
                    .with_error_message(Some(sb(msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            })
            .collect();
        if to_create.is_empty() {
            return CreateTopicsResponse::default().with_topics(refused);
        }
        let names: Vec<String> = to_create.iter().map(|t| t.name.0.to_string()).collect();
        let topics = to_create
            .into_iter()
            .map(|t| NewTopic {
                name: t.name.0.to_string(),
                num_partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                assignments: t
                    .assignments
                    .into_iter()
                    .map(|a| {
                        (
                            a.partition_index,
                            a.broker_ids.into_iter().map(|b| b.0).collect(),
                        )
                    })
                    .collect(),
                configs: t
                    .configs
                    .into_iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.value.map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect();
        let request = ControllerRequest::CreateTopics {
            topics,
            validate_only: req.validate_only,
        };
        let results = match broker
            .submit_within(request, client_timeout(req_timeout_ms))
            .await
        {
            Ok(ControllerResponse::CreateTopics(results)) => results,
            Ok(other) => {
                tracing::error!("controller answered CreateTopics with {other:?}");
                return failed_create(
                    &names,
                    ResponseError::UnknownServerError,
                    "unexpected controller answer",
                    refused,
                );
            }
            Err(e) => {
                let (code, msg) = errors::quorum_error(&e);
                return failed_create(&names, code, &msg, refused);
            }
        };
        let image = broker.image();
        let topics = results
            .into_iter()
            .map(|r| {
                let base = CreatableTopicResult::default().with_name(TopicName(sb(r.name.clone())));
                match r.result {
                    Ok(created) => {
                        let configs = topic_config::resolve_topic(&broker.config, &image, &r.name)
                            .into_iter()
                            .map(|c| {
                                // Validate-only creations are not in the image: report
                                // what the request asked for over the defaults.
                                let (value, source) = match created.configs.get(c.def.name) {
                                    Some(v) => {
                                        (v.clone(), topic_config::ConfigSource::DynamicTopic)
                                    }
                                    None => (c.value, c.source),
                                };
                                CreatableTopicConfigs::default()
                                    .with_name(sb(c.def.name))
                                    .with_value(Some(sb(value)))
                                    .with_config_source(source as i8)
                            })
                            .collect();
                        base.with_topic_id(created.topic_id)
                            .with_num_partitions(created.num_partitions)
                            .with_replication_factor(created.replication_factor)
                            .with_configs(Some(configs))
                    }
                    Err(e) => {
                        let (code, msg) = errors::controller_error(&e);
                        base.with_error_code(code.code())
                            .with_error_message(Some(sb(msg)))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    }
                }
            })
            .chain(refused)
            .collect();
        CreateTopicsResponse::default().with_topics(topics)
    })
}

fn failed_create(
    names: &[String],
    code: ResponseError,
    msg: &str,
    refused: Vec<CreatableTopicResult>,
) -> CreateTopicsResponse {
    let topics = names
        .iter()
        .map(|n| {
            CreatableTopicResult::default()
                .with_name(TopicName(sb(n.clone())))
                .with_error_code(code.code())
                .with_error_message(Some(sb(msg)))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        })
        .chain(refused)
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// Deletes topics by name (v1–v5) or by name or id (v6).
pub fn delete_topics(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: DeleteTopicsRequest,
) -> Pending {
    let req_timeout_ms = req.timeout_ms;
    let version = ctx.api_version;
    respond(ctx, async move {
        // v6 names each topic by name or by id, never both, never neither (Kafka
        // answers those INVALID_REQUEST rather than guess which was meant).
        let mut invalid: Vec<DeletableTopicResult> = Vec::new();
        let refs: Vec<TopicRef> = if version >= 6 {
            req.topics
                .into_iter()
                .filter_map(|t| {
                    let message = match (&t.name, t.topic_id.is_nil()) {
                        (Some(n), true) => return Some(TopicRef::Name(n.0.to_string())),
                        (None, false) => return Some(TopicRef::Id(t.topic_id)),
                        (Some(_), false) => "You may not specify both topic name and topic id.",
                        (None, true) => "Neither topic name nor id were specified.",
                    };
                    invalid.push(
                        DeletableTopicResult::default()
                            .with_name(t.name)
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(sb(message.to_string()))),
                    );
                    None
                })
                .collect()
        } else {
            req.topic_names
                .into_iter()
                .map(|n| TopicRef::Name(n.0.to_string()))
                .collect()
        };
        let fallback: Vec<DeletableTopicResult> = refs
            .iter()
            .map(|r| match r {
                TopicRef::Name(n) => {
                    DeletableTopicResult::default().with_name(Some(TopicName(sb(n.clone()))))
                }
                TopicRef::Id(id) => DeletableTopicResult::default()
                    .with_name(None)
                    .with_topic_id(*id),
            })
            .collect();
        if refs.is_empty() {
            return DeleteTopicsResponse::default().with_responses(invalid);
        }
        let delete = ControllerRequest::DeleteTopics { topics: refs };
        let results = match broker
            .submit_within(delete, client_timeout(req_timeout_ms))
            .await
        {
            Ok(ControllerResponse::DeleteTopics(results)) => results,
            other => {
                let (code, msg) = match other {
                    Err(e) => errors::quorum_error(&e),
                    Ok(_) => (
                        ResponseError::UnknownServerError,
                        "unexpected controller answer".to_string(),
                    ),
                };
                let responses = fallback
                    .into_iter()
                    .map(|r| {
                        r.with_error_code(code.code())
                            .with_error_message(Some(sb(msg.clone())))
                    })
                    .chain(invalid)
                    .collect();
                return DeleteTopicsResponse::default().with_responses(responses);
            }
        };
        let responses = results
            .into_iter()
            .map(|r| {
                let mut out = DeletableTopicResult::default()
                    .with_name(r.name.map(|n| TopicName(sb(n))))
                    .with_topic_id(r.topic_id.unwrap_or_default());
                if let Err(e) = r.result {
                    let (code, msg) = errors::controller_error(&e);
                    out = out
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(msg)));
                }
                if version < 6 && out.name.is_none() {
                    out.name = Some(TopicName(sb("")));
                }
                out
            })
            .chain(invalid)
            .collect();
        DeleteTopicsResponse::default().with_responses(responses)
    })
}

/// Adds partitions to topics.
pub fn create_partitions(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: CreatePartitionsRequest,
) -> Pending {
    let req_timeout_ms = req.timeout_ms;
    respond(ctx, async move {
        let names: Vec<String> = req.topics.iter().map(|t| t.name.0.to_string()).collect();
        let topics = req
            .topics
            .into_iter()
            .map(|t| NewPartitions {
                name: t.name.0.to_string(),
                count: t.count,
                assignments: t.assignments.map(|a| {
                    a.into_iter()
                        .map(|x| x.broker_ids.into_iter().map(|b| b.0).collect())
                        .collect()
                }),
            })
            .collect();
        let request = ControllerRequest::CreatePartitions {
            topics,
            validate_only: req.validate_only,
        };
        let results: Vec<(String, Result<(), (ResponseError, String)>)> = match broker
            .submit_within(request, client_timeout(req_timeout_ms))
            .await
        {
            Ok(ControllerResponse::CreatePartitions(results)) => results
                .into_iter()
                .map(|(n, r)| (n, r.map_err(|e| errors::controller_error(&e))))
                .collect(),
            Ok(_) => names
                .into_iter()
                .map(|n| {
                    (
                        n,
                        Err((
                            ResponseError::UnknownServerError,
                            "unexpected controller answer".into(),
                        )),
                    )
                })
                .collect(),
            Err(e) => {
                let err = errors::quorum_error(&e);
                names.into_iter().map(|n| (n, Err(err.clone()))).collect()
            }
        };
        let results = results
            .into_iter()
            .map(|(name, r)| {
                let out = CreatePartitionsTopicResult::default().with_name(TopicName(sb(name)));
                match r {
                    Ok(()) => out,
                    Err((code, msg)) => out
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(msg))),
                }
            })
            .collect();
        CreatePartitionsResponse::default().with_results(results)
    })
}

/// The time a client allows for an admin request.
fn client_timeout(timeout_ms: i32) -> std::time::Duration {
    std::time::Duration::from_millis(timeout_ms.max(0) as u64)
}
