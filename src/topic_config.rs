//! Effective topic configs: what a topic's log runs with and what DescribeConfigs
//! reports, resolved from (highest first) the topic's overrides in the metadata image,
//! dynamic broker configs in the image, this broker's static config, and defaults.

use std::collections::BTreeMap;

use keel_raft::image::MetadataImage;
use keel_raft::records::ConfigResource;
use keel_raft::topic_config::{ConfigDef, TOPIC_CONFIGS};
use keel_storage::{CleanupPolicy, LogConfig, TimestampType};

use crate::config::BrokerConfig;

/// Where a config value comes from (Kafka's `ConfigSource` ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigSource {
    /// A topic override.
    DynamicTopic = 1,
    /// A dynamic config of this broker.
    DynamicBroker = 2,
    /// A dynamic cluster-wide broker default.
    DynamicDefaultBroker = 3,
    /// Set in this broker's config file or `--set`.
    StaticBroker = 4,
    /// Built-in default.
    Default = 5,
}

/// One resolved config with the chain of values it overrode.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The catalog entry.
    pub def: &'static ConfigDef,
    /// Effective value.
    pub value: String,
    /// Where `value` came from.
    pub source: ConfigSource,
    /// Every layer that has a value, highest first: (name, value, source).
    pub synonyms: Vec<(String, String, ConfigSource)>,
}

/// Resolves every topic config of `topic`.
pub fn resolve_topic(config: &BrokerConfig, image: &MetadataImage, topic: &str) -> Vec<Resolved> {
    let overrides = image.configs.get(&ConfigResource::Topic(topic.to_string()));
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let mut chain = Vec::new();
            if let Some(v) = overrides.and_then(|o| o.get(def.name)) {
                chain.push((def.name.to_string(), v.clone(), ConfigSource::DynamicTopic));
            }
            if let Some(syn) = def.broker_synonym {
                chain.extend(broker_chain(config, image, syn));
            }
            chain.push((
                def.name.to_string(),
                def.default.to_string(),
                ConfigSource::Default,
            ));
            let (_, value, source) = chain[0].clone();
            Resolved {
                def,
                value,
                source,
                synonyms: chain,
            }
        })
        .collect()
}

/// The layers that set broker key `name`, highest first, without the built-in default.
pub fn broker_chain(
    config: &BrokerConfig,
    image: &MetadataImage,
    name: &str,
) -> Vec<(String, String, ConfigSource)> {
    let mut chain = Vec::new();
    if let Some(v) = image
        .configs
        .get(&ConfigResource::Broker(Some(config.node_id)))
        .and_then(|c| c.get(name))
    {
        chain.push((name.to_string(), v.clone(), ConfigSource::DynamicBroker));
    }
    if let Some(v) = image
        .configs
        .get(&ConfigResource::Broker(None))
        .and_then(|c| c.get(name))
    {
        chain.push((
            name.to_string(),
            v.clone(),
            ConfigSource::DynamicDefaultBroker,
        ));
    }
    if let Some(v) = config.explicit.get(name) {
        chain.push((name.to_string(), v.clone(), ConfigSource::StaticBroker));
    } else if let Some(v) = config.raw.get(name) {
        chain.push((name.to_string(), v.clone(), ConfigSource::Default));
    }
    chain
}

/// Effective config values of `topic` by name.
pub fn topic_values(
    config: &BrokerConfig,
    image: &MetadataImage,
    topic: &str,
) -> BTreeMap<String, String> {
    resolve_topic(config, image, topic)
        .into_iter()
        .map(|r| (r.def.name.to_string(), r.value))
        .collect()
}

/// The `LogConfig` a topic's partitions run with. Values were validated when they
/// were set; anything unparsable falls back to the broker default.
pub fn log_config(config: &BrokerConfig, image: &MetadataImage, topic: &str) -> LogConfig {
    let values = topic_values(config, image, topic);
    let d = &config.log_defaults;
    let int = |k: &str, fallback: i64| {
        values
            .get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(fallback)
    };
    LogConfig {
        segment_bytes: int("segment.bytes", d.segment_bytes as i64).max(1) as u64,
        segment_ms: int("segment.ms", d.segment_ms).max(1),
        segment_index_bytes: int("segment.index.bytes", d.segment_index_bytes as i64).max(1) as u64,
        index_interval_bytes: int("index.interval.bytes", d.index_interval_bytes as i64).max(0)
            as u64,
        retention_ms: int("retention.ms", d.retention_ms),
        retention_bytes: int("retention.bytes", d.retention_bytes),
        max_message_bytes: int("max.message.bytes", d.max_message_bytes as i64)
            .clamp(0, i32::MAX as i64) as u32,
        message_timestamp_type: match values.get("message.timestamp.type").map(String::as_str) {
            Some("LogAppendTime") => TimestampType::LogAppendTime,
            Some("CreateTime") => TimestampType::CreateTime,
            _ => d.message_timestamp_type,
        },
        cleanup_policy: values
            .get("cleanup.policy")
            .and_then(|v| CleanupPolicy::parse(v))
            .unwrap_or(d.cleanup_policy),
        delete_retention_ms: int("delete.retention.ms", d.delete_retention_ms).max(0),
        min_cleanable_dirty_ratio: values
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(d.min_cleanable_dirty_ratio),
        min_compaction_lag_ms: int("min.compaction.lag.ms", d.min_compaction_lag_ms).max(0),
        max_compaction_lag_ms: int("max.compaction.lag.ms", d.max_compaction_lag_ms).max(1),
        ..d.clone()
    }
}

/// min.insync.replicas of a topic.
pub fn min_insync_replicas(config: &BrokerConfig, image: &MetadataImage, topic: &str) -> i32 {
    topic_values(config, image, topic)
        .get("min.insync.replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.min_insync_replicas)
}
