//! `keel topics create|list|describe|delete|alter`, over the Kafka protocol.

use anyhow::{bail, Context};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::client::KafkaClient;
use crate::api::configs::RESOURCE_TOPIC;
use crate::config::ConfigError;

/// Client id the CLI sends.
pub const CLI_CLIENT_ID: &str = "keel-cli";
/// How long the broker may take for an admin request.
pub const ADMIN_TIMEOUT_MS: i32 = 30_000;

/// One `keel topics` action.
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        topic: String,
        partitions: Option<i32>,
        replication_factor: Option<i16>,
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Describe one topic or all.
    Describe { topic: Option<String> },
    /// Delete a topic.
    Delete { topic: String },
    /// Add partitions or change configs.
    Alter {
        topic: String,
        partitions: Option<i32>,
        configs: Vec<String>,
        delete_configs: Vec<String>,
    },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub(crate) fn check(code: i16, message: Option<&StrBytes>, what: &str) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    let detail = message
        .map(|m| format!(": {}", m.as_str()))
        .unwrap_or_default();
    bail!("{what} failed with {name} (error code {code}){detail}")
}

fn parse_pairs(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ConfigError::MalformedSet(p.clone()).into())
        })
        .collect()
}

/// Runs one command against `bootstrap`, printing results to stdout.
///
/// # Errors
/// Connection failures and any Kafka error the broker answers, named.
pub async fn run(bootstrap: &str, cmd: TopicsCommand) -> anyhow::Result<()> {
    let mut client = KafkaClient::connect(bootstrap, CLI_CLIENT_ID).await?;
    match cmd {
        TopicsCommand::Create {
            topic,
            partitions,
            replication_factor,
            configs,
        } => {
            let configs = parse_pairs(&configs)?
                .into_iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(s(&k))
                        .with_value(Some(s(&v)))
                })
                .collect();
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(ADMIN_TIMEOUT_MS)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_num_partitions(partitions.unwrap_or(-1))
                    .with_replication_factor(replication_factor.unwrap_or(-1))
                    .with_configs(configs)]);
            let resp = client.call(&req, 7).await?;
            for t in &resp.topics {
                check(
                    t.error_code,
                    t.error_message.as_ref(),
                    &format!("creating topic {topic}"),
                )?;
                println!(
                    "Created topic {} with {} partitions (id {}).",
                    topic, t.num_partitions, t.topic_id
                );
            }
        }
        TopicsCommand::List => {
            let resp = metadata(&mut client, None).await?;
            let mut names: Vec<String> = resp
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        TopicsCommand::Describe { topic } => {
            let resp = metadata(&mut client, topic.as_deref()).await?;
            let mut topics = resp.topics;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                check(t.error_code, None, &format!("describing topic {name}"))?;
                let configs = topic_overrides(&mut client, &name).await?;
                let rf = t
                    .partitions
                    .first()
                    .map(|p| p.replica_nodes.len())
                    .unwrap_or(0);
                println!(
                    "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {rf}\tConfigs: {}",
                    t.topic_id,
                    t.partitions.len(),
                    configs.join(",")
                );
                let mut parts = t.partitions;
                parts.sort_by_key(|p| p.partition_index);
                for p in parts {
                    let ids = |v: &[kafka_protocol::messages::BrokerId]| {
                        v.iter()
                            .map(|b| b.0.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    println!(
                        "\tTopic: {name}\tPartition: {}\tLeader: {}\tLeaderEpoch: {}\tReplicas: {}\tIsr: {}",
                        p.partition_index,
                        p.leader_id.0,
                        p.leader_epoch,
                        ids(&p.replica_nodes),
                        ids(&p.isr_nodes)
                    );
                }
            }
        }
        TopicsCommand::Delete { topic } => {
            let req = DeleteTopicsRequest::default()
                .with_timeout_ms(ADMIN_TIMEOUT_MS)
                .with_topics(vec![
                    DeleteTopicState::default().with_name(Some(TopicName(s(&topic))))
                ]);
            let resp = client.call(&req, 6).await?;
            for r in &resp.responses {
                check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("deleting topic {topic}"),
                )?;
            }
            println!("Deleted topic {topic}.");
        }
        TopicsCommand::Alter {
            topic,
            partitions,
            configs,
            delete_configs,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                bail!("nothing to alter: give --partitions, --config or --delete-config");
            }
            if let Some(count) = partitions {
                let req = CreatePartitionsRequest::default()
                    .with_timeout_ms(ADMIN_TIMEOUT_MS)
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(TopicName(s(&topic)))
                        .with_count(count)]);
                let resp = client.call(&req, 3).await?;
                for r in &resp.results {
                    check(
                        r.error_code,
                        r.error_message.as_ref(),
                        &format!("adding partitions to {topic}"),
                    )?;
                }
                println!("Topic {topic} now has {count} partitions.");
            }
            if !configs.is_empty() || !delete_configs.is_empty() {
                let mut ops: Vec<AlterableConfig> = parse_pairs(&configs)?
                    .into_iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(s(&k))
                            .with_config_operation(0)
                            .with_value(Some(s(&v)))
                    })
                    .collect();
                ops.extend(delete_configs.iter().map(|k| {
                    AlterableConfig::default()
                        .with_name(s(k))
                        .with_config_operation(1)
                }));
                let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(s(&topic))
                        .with_configs(ops),
                ]);
                let resp = client.call(&req, 1).await?;
                for r in &resp.responses {
                    check(
                        r.error_code,
                        r.error_message.as_ref(),
                        &format!("altering configs of {topic}"),
                    )?;
                }
                println!("Updated configs of topic {topic}.");
            }
        }
    }
    Ok(())
}

/// The partition indexes of `topic`.
///
/// # Errors
/// The topic does not exist, or the request failed.
pub(crate) async fn partition_ids(
    client: &mut KafkaClient,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let resp = metadata(client, Some(topic)).await?;
    let Some(t) = resp.topics.first() else {
        bail!("no topic {topic} in the metadata response");
    };
    check(t.error_code, None, &format!("describing {topic}"))?;
    Ok(t.partitions.iter().map(|p| p.partition_index).collect())
}

pub(crate) async fn metadata(
    client: &mut KafkaClient,
    topic: Option<&str>,
) -> anyhow::Result<MetadataResponse> {
    let topics =
        topic.map(|t| vec![MetadataRequestTopic::default().with_name(Some(TopicName(s(t))))]);
    let req = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    client
        .call(&req, 12)
        .await
        .context("metadata request failed")
}

async fn topic_overrides(client: &mut KafkaClient, topic: &str) -> anyhow::Result<Vec<String>> {
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(s(topic))]);
    let resp = client.call(&req, 4).await?;
    let mut out = Vec::new();
    for r in resp.results {
        check(
            r.error_code,
            r.error_message.as_ref(),
            &format!("describing configs of {topic}"),
        )?;
        for c in r.configs {
            if c.config_source == crate::topic_config::ConfigSource::DynamicTopic as i8 {
                out.push(format!(
                    "{}={}",
                    c.name.as_str(),
                    c.value.map(|v| v.to_string()).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}
