//! DescribeConfigs (32), AlterConfigs (33), IncrementalAlterConfigs (44) for topics
//! and brokers. Describes resolve from the image and this broker's config; alters are
//! forwarded to the controller, which validates them and records ConfigRecords.

use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use keel_raft::controller::{
    AlterConfigOp, AlterConfigsResource, AlterOp, ControllerRequest, ControllerResponse,
};
use keel_raft::records::ConfigResource;
use keel_raft::topic_config::{ConfigKind, TOPIC_CONFIGS};

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::config::BROKER_KEYS;
use crate::errors;
use crate::protocol::RequestContext;
use crate::topic_config::{self, ConfigSource};

/// DescribeConfigs versions served.
pub const DESCRIBE_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 1, max: 4 };
/// AlterConfigs versions served.
pub const ALTER_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };
/// IncrementalAlterConfigs versions served.
pub const INCREMENTAL_ALTER_CONFIGS_VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

/// Kafka's resource type for topics.
pub const RESOURCE_TOPIC: i8 = 2;
/// Kafka's resource type for brokers.
pub const RESOURCE_BROKER: i8 = 4;

fn config_type(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Boolean => 1,
        ConfigKind::String => 2,
        ConfigKind::Int => 3,
        ConfigKind::Short => 4,
        ConfigKind::Long => 5,
        ConfigKind::Double => 6,
        ConfigKind::List => 7,
        ConfigKind::Class => 8,
        ConfigKind::Password => 9,
    }
}

/// Describes topic and broker configs.
pub fn describe_configs(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: DescribeConfigsRequest,
) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        let image = broker.image();
        let results = req
            .resources
            .into_iter()
            .map(|res| {
                let name = res.resource_name.to_string();
                // Null or empty means every config, as in Kafka.
                let wanted = |key: &str| {
                    res.configuration_keys.as_ref().is_none_or(|keys| {
                        keys.is_empty() || keys.iter().any(|k| k.as_str() == key)
                    })
                };
                let base = DescribeConfigsResult::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone());
                let synonyms =
                    |chain: &[(String, String, ConfigSource)]| -> Vec<DescribeConfigsSynonym> {
                        if !req.include_synonyms {
                            return vec![];
                        }
                        chain
                            .iter()
                            .map(|(n, v, s)| {
                                DescribeConfigsSynonym::default()
                                    .with_name(sb(n.clone()))
                                    .with_value(Some(sb(v.clone())))
                                    .with_source(*s as i8)
                            })
                            .collect()
                    };
                match res.resource_type {
                    RESOURCE_TOPIC => {
                        if !errors::valid_topic_name(&name) {
                            return base
                                .with_error_code(ResponseError::InvalidTopicException.code())
                                .with_error_message(Some(sb(format!(
                                    "invalid topic name `{name}`"
                                ))));
                        }
                        if image.topic_by_name(&name).is_none() {
                            return base
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                                .with_error_message(Some(sb(format!(
                                    "topic `{name}` does not exist"
                                ))));
                        }
                        let configs = topic_config::resolve_topic(&broker.config, &image, &name)
                            .into_iter()
                            .filter(|r| wanted(r.def.name))
                            .map(|r| {
                                let mut c = DescribeConfigsResourceResult::default()
                                    .with_name(sb(r.def.name))
                                    .with_value(Some(sb(r.value)))
                                    .with_read_only(false)
                                    .with_config_source(r.source as i8)
                                    .with_is_sensitive(false)
                                    .with_synonyms(synonyms(&r.synonyms));
                                if version >= 3 {
                                    c = c.with_config_type(config_type(r.def.kind));
                                    if req.include_documentation {
                                        c = c.with_documentation(Some(sb(r.def.doc)));
                                    }
                                }
                                c
                            })
                            .collect();
                        base.with_configs(configs)
                    }
                    RESOURCE_BROKER => {
                        if !name.is_empty() && name != broker.config.node_id.to_string() {
                            return base
                                .with_error_code(ResponseError::InvalidRequest.code())
                                .with_error_message(Some(sb(format!(
                                    "this is broker {}; ask broker {name} for its configs",
                                    broker.config.node_id
                                ))));
                        }
                        let configs = BROKER_KEYS
                            .iter()
                            .filter(|k| wanted(k.name))
                            .map(|k| {
                                let mut chain =
                                    topic_config::broker_chain(&broker.config, &image, k.name);
                                if chain.is_empty() {
                                    chain.push((
                                        k.name.to_string(),
                                        k.default.to_string(),
                                        ConfigSource::Default,
                                    ));
                                }
                                let (_, value, source) = chain[0].clone();
                                let mut c = DescribeConfigsResourceResult::default()
                                    .with_name(sb(k.name))
                                    .with_value(Some(sb(value)))
                                    .with_read_only(is_static_only(k.name))
                                    .with_config_source(source as i8)
                                    .with_synonyms(synonyms(&chain));
                                if version >= 3 && req.include_documentation {
                                    c = c.with_documentation(Some(sb(k.doc)));
                                }
                                c
                            })
                            .collect();
                        base.with_configs(configs)
                    }
                    other => base
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(sb(format!(
                            "resource type {other} is not supported"
                        )))),
                }
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    })
}

/// Maps a request's resource to the controller's, or an error for the response.
fn resource(resource_type: i8, name: &StrBytes) -> Result<ConfigResource, (ResponseError, String)> {
    match resource_type {
        RESOURCE_TOPIC => Ok(ConfigResource::Topic(name.to_string())),
        RESOURCE_BROKER if name.is_empty() => Ok(ConfigResource::Broker(None)),
        RESOURCE_BROKER => name
            .as_str()
            .parse::<i32>()
            .map(|id| ConfigResource::Broker(Some(id)))
            .map_err(|_| {
                (
                    ResponseError::InvalidRequest,
                    format!("`{name}` is not a broker id"),
                )
            }),
        other => Err((
            ResponseError::InvalidRequest,
            format!("resource type {other} is not supported"),
        )),
    }
}

/// What the receiving broker checks in a broker-config change before the controller
/// sees it (Kafka's `ConfigAdminManager.preprocess`): a per-broker resource names this
/// broker, and the keys set are not static-only ones (keel applies a broker config at
/// run time only through the topic configs it is a synonym of; names keel does not
/// know are kept for plugins, as Kafka does). Both are INVALID_REQUEST, as in Kafka;
/// the controller checks the values.
fn check_broker_change(
    node_id: i32,
    resource: &ConfigResource,
    ops: &[AlterConfigOp],
) -> Result<(), (ResponseError, String)> {
    let ConfigResource::Broker(target) = resource else {
        return Ok(());
    };
    if let Some(id) = target {
        if *id != node_id {
            return Err((
                ResponseError::InvalidRequest,
                format!("Unexpected broker id, expected {node_id}, but received {id}"),
            ));
        }
    }
    let static_only: Vec<&str> = ops
        .iter()
        .filter(|o| o.op != AlterOp::Delete && is_static_only(&o.name))
        .map(|o| o.name.as_str())
        .collect();
    if !static_only.is_empty() {
        return Err((
            ResponseError::InvalidRequest,
            format!(
                "Cannot update these configs dynamically: {}",
                static_only.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A key of keel's static broker config that no topic config takes as its synonym:
/// it is read once at start-up, so a dynamic value would be reported but never used.
fn is_static_only(name: &str) -> bool {
    BROKER_KEYS.iter().any(|k| k.name == name)
        && !TOPIC_CONFIGS.iter().any(|d| d.broker_synonym == Some(name))
}

/// Runs an alter through the controller; one result per resource, in request order.
async fn alter(
    broker: &Broker,
    resources: Vec<Result<AlterConfigsResource, (ResponseError, String)>>,
    validate_only: bool,
    legacy: bool,
) -> Vec<Option<(ResponseError, String)>> {
    let valid: Vec<AlterConfigsResource> = resources
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let outcome = if valid.is_empty() {
        Ok(vec![])
    } else {
        let req = if legacy {
            ControllerRequest::AlterConfigs {
                resources: valid
                    .into_iter()
                    .map(|r| {
                        (
                            r.resource,
                            r.ops
                                .into_iter()
                                .map(|o| (o.name, o.value.unwrap_or_default()))
                                .collect(),
                        )
                    })
                    .collect(),
                validate_only,
            }
        } else {
            ControllerRequest::IncrementalAlterConfigs {
                resources: valid,
                validate_only,
            }
        };
        match broker.submit(req).await {
            Ok(ControllerResponse::AlterConfigs(results)) => Ok(results),
            Ok(_) => Err((
                ResponseError::UnknownServerError,
                "unexpected controller answer".to_string(),
            )),
            Err(e) => Err(errors::quorum_error(&e)),
        }
    };
    let mut answered = match &outcome {
        Ok(results) => results.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    resources
        .into_iter()
        .map(|r| match r {
            Err(e) => Some(e),
            Ok(_) => match &outcome {
                Err(e) => Some(e.clone()),
                Ok(_) => match answered.next() {
                    Some((_, Ok(()))) => None,
                    Some((_, Err(e))) => Some(errors::controller_error(&e)),
                    None => Some((
                        ResponseError::UnknownServerError,
                        "missing controller answer".to_string(),
                    )),
                },
            },
        })
        .collect()
}

/// Applies set/delete/append/subtract operations.
pub fn incremental_alter_configs(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: IncrementalAlterConfigsRequest,
) -> Pending {
    respond(ctx, async move {
        let headers: Vec<(i8, StrBytes)> = req
            .resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.clone()))
            .collect();
        let resources = req
            .resources
            .into_iter()
            .map(|r| {
                let resource = resource(r.resource_type, &r.resource_name)?;
                let ops = r
                    .configs
                    .into_iter()
                    .map(|c| {
                        let op = match c.config_operation {
                            0 => AlterOp::Set,
                            1 => AlterOp::Delete,
                            2 => AlterOp::Append,
                            3 => AlterOp::Subtract,
                            other => {
                                return Err((
                                    ResponseError::InvalidRequest,
                                    format!("unknown config operation {other}"),
                                ))
                            }
                        };
                        Ok(AlterConfigOp {
                            name: c.name.to_string(),
                            op,
                            value: c.value.map(|v| v.to_string()),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                check_broker_change(broker.config.node_id, &resource, &ops)?;
                Ok(AlterConfigsResource { resource, ops })
            })
            .collect();
        let outcomes = alter(&broker, resources, req.validate_only, false).await;
        let responses = headers
            .into_iter()
            .zip(outcomes)
            .map(|((t, n), o)| {
                let r = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(t)
                    .with_resource_name(n);
                match o {
                    None => r,
                    Some((code, msg)) => r
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(msg))),
                }
            })
            .collect();
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    })
}

/// Replaces a resource's whole set of overrides (the legacy API).
pub fn alter_configs(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: AlterConfigsRequest,
) -> Pending {
    respond(ctx, async move {
        let headers: Vec<(i8, StrBytes)> = req
            .resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.clone()))
            .collect();
        let resources = req
            .resources
            .into_iter()
            .map(|r| {
                let resource = resource(r.resource_type, &r.resource_name)?;
                let nulls: Vec<&str> = r
                    .configs
                    .iter()
                    .filter(|c| c.value.is_none())
                    .map(|c| c.name.as_str())
                    .collect();
                if !nulls.is_empty() {
                    return Err((
                        ResponseError::InvalidRequest,
                        format!("Null value not supported for : {}", nulls.join(", ")),
                    ));
                }
                let ops: Vec<AlterConfigOp> = r
                    .configs
                    .into_iter()
                    .map(|c| AlterConfigOp {
                        name: c.name.to_string(),
                        op: AlterOp::Set,
                        value: c.value.map(|v| v.to_string()),
                    })
                    .collect();
                check_broker_change(broker.config.node_id, &resource, &ops)?;
                Ok(AlterConfigsResource { resource, ops })
            })
            .collect();
        let outcomes = alter(&broker, resources, req.validate_only, true).await;
        let responses = headers
            .into_iter()
            .zip(outcomes)
            .map(|((t, n), o)| {
                let r = alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(t)
                    .with_resource_name(n);
                match o {
                    None => r,
                    Some((code, msg)) => r
                        .with_error_code(code.code())
                        .with_error_message(Some(sb(msg))),
                }
            })
            .collect();
        AlterConfigsResponse::default().with_responses(responses)
    })
}
