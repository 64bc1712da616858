//! The catalog of Kafka topic configs keel knows, with their defaults and validation.
//!
//! This module owns [`TOPIC_CONFIGS`]: what the controller accepts in CreateTopics and
//! (Incremental)AlterConfigs for a topic, and what a broker lists in DescribeConfigs
//! (name, broker synonym, default, type, doc). Names, defaults and validation follow Apache
//! Kafka 3.9/4.x so that clients and tools see familiar answers. It must not know about
//! the image, Raft or storage.

use crate::controller::ControllerError;

/// The type of a config value, as Kafka's `ConfigDef.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Boolean,
    String,
    Int,
    Short,
    Long,
    Double,
    List,
    Password,
    Class,
}

/// The values a config accepts beyond parsing as its [`ConfigKind`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfigValidator {
    /// Any value of the right type.
    Any,
    /// An integer (Int, Short or Long) of at least this value.
    AtLeast(i64),
    /// An integer in `[min, max]`, or exactly `or`.
    IntRangeOr { min: i64, max: i64, or: i64 },
    /// A double in `[min, max]`.
    DoubleRange { min: f64, max: f64 },
    /// A string that is exactly one of these (case-sensitive, as Kafka).
    OneOf(&'static [&'static str]),
    /// A comma-separated list whose elements are each one of these.
    ListOf(&'static [&'static str]),
    /// `*` or a comma-separated list of `partition:broker` pairs (replication throttling).
    ThrottledReplicas,
}

/// One topic-level config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigDef {
    pub name: &'static str,
    /// The broker config that supplies the default when the topic has no override.
    pub broker_synonym: Option<&'static str>,
    /// Kafka's default, used when neither the topic nor the broker sets the config.
    pub default: &'static str,
    pub kind: ConfigKind,
    pub validator: ConfigValidator,
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";
const CLEANUP_POLICIES: &[&str] = &["compact", "delete"];
const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];
/// `segment.bytes` floor: Kafka's `LegacyRecord.RECORD_OVERHEAD_V0`.
const MIN_SEGMENT_BYTES: i64 = 14;

/// Every topic config keel accepts, sorted by name.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        broker_synonym: Some("log.cleanup.policy"),
        default: "delete",
        kind: ConfigKind::List,
        validator: ConfigValidator::ListOf(CLEANUP_POLICIES),
        doc: "\"delete\" discards old segments by time or size, \"compact\" keeps the latest value per key; both may be combined.",
    },
    ConfigDef {
        name: "compression.gzip.level",
        broker_synonym: Some("compression.gzip.level"),
        default: "-1",
        kind: ConfigKind::Int,
        validator: ConfigValidator::IntRangeOr { min: 1, max: 9, or: -1 },
        doc: "Compression level when compression.type is gzip.",
    },
    ConfigDef {
        name: "compression.lz4.level",
        broker_synonym: Some("compression.lz4.level"),
        default: "9",
        kind: ConfigKind::Int,
        validator: ConfigValidator::IntRangeOr { min: 1, max: 17, or: 9 },
        doc: "Compression level when compression.type is lz4.",
    },
    ConfigDef {
        name: "compression.type",
        broker_synonym: Some("compression.type"),
        default: "producer",
        kind: ConfigKind::String,
        validator: ConfigValidator::OneOf(COMPRESSION_TYPES),
        doc: "Final compression of the topic's data; \"producer\" keeps what the producer sent.",
    },
    ConfigDef {
        name: "compression.zstd.level",
        broker_synonym: Some("compression.zstd.level"),
        default: "3",
        kind: ConfigKind::Int,
        validator: ConfigValidator::IntRangeOr { min: -131072, max: 22, or: 3 },
        doc: "Compression level when compression.type is zstd.",
    },
    ConfigDef {
        name: "delete.retention.ms",
        broker_synonym: Some("log.cleaner.delete.retention.ms"),
        default: "86400000",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "How long delete tombstones are kept in compacted topics.",
    },
    ConfigDef {
        name: "file.delete.delay.ms",
        broker_synonym: Some("log.segment.delete.delay.ms"),
        default: "60000",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "Time to wait before deleting a file from the filesystem.",
    },
    ConfigDef {
        name: "flush.messages",
        broker_synonym: Some("log.flush.interval.messages"),
        default: LONG_MAX,
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(1),
        doc: "Force an fsync after this many messages.",
    },
    ConfigDef {
        name: "flush.ms",
        broker_synonym: Some("log.flush.interval.ms"),
        default: LONG_MAX,
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "Force an fsync after this much time.",
    },
    ConfigDef {
        name: "follower.replication.throttled.replicas",
        broker_synonym: Some("follower.replication.throttled.replicas"),
        default: "",
        kind: ConfigKind::List,
        validator: ConfigValidator::ThrottledReplicas,
        doc: "Replicas whose log replication is throttled on the follower side: \"*\" or partition:broker pairs.",
    },
    ConfigDef {
        name: "index.interval.bytes",
        broker_synonym: Some("log.index.interval.bytes"),
        default: "4096",
        kind: ConfigKind::Int,
        validator: ConfigValidator::AtLeast(0),
        doc: "How often (in bytes) an offset index entry is added.",
    },
    ConfigDef {
        name: "leader.replication.throttled.replicas",
        broker_synonym: Some("leader.replication.throttled.replicas"),
        default: "",
        kind: ConfigKind::List,
        validator: ConfigValidator::ThrottledReplicas,
        doc: "Replicas whose log replication is throttled on the leader side: \"*\" or partition:broker pairs.",
    },
    ConfigDef {
        name: "local.retention.bytes",
        broker_synonym: Some("log.local.retention.bytes"),
        default: "-2",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(-2),
        doc: "Tiered storage only (not supported by keel); -2 means retention.bytes.",
    },
    ConfigDef {
        name: "local.retention.ms",
        broker_synonym: Some("log.local.retention.ms"),
        default: "-2",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(-2),
        doc: "Tiered storage only (not supported by keel); -2 means retention.ms.",
    },
    ConfigDef {
        name: "max.compaction.lag.ms",
        broker_synonym: Some("log.cleaner.max.compaction.lag.ms"),
        default: LONG_MAX,
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(1),
        doc: "Longest time a message stays ineligible for compaction.",
    },
    ConfigDef {
        name: "max.message.bytes",
        broker_synonym: Some("message.max.bytes"),
        default: "1048588",
        kind: ConfigKind::Int,
        validator: ConfigValidator::AtLeast(0),
        doc: "Largest record batch size allowed.",
    },
    ConfigDef {
        name: "message.downconversion.enable",
        broker_synonym: Some("log.message.downconversion.enable"),
        default: "true",
        kind: ConfigKind::Boolean,
        validator: ConfigValidator::Any,
        doc: "Whether old consumers may be served down-converted batches.",
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        broker_synonym: Some("log.message.timestamp.after.max.ms"),
        default: "3600000",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "How far a CreateTime timestamp may be ahead of the broker's clock.",
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        broker_synonym: Some("log.message.timestamp.before.max.ms"),
        default: LONG_MAX,
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "How far a CreateTime timestamp may be behind the broker's clock.",
    },
    ConfigDef {
        name: "message.timestamp.difference.max.ms",
        broker_synonym: Some("log.message.timestamp.difference.max.ms"),
        default: LONG_MAX,
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "Deprecated: largest allowed difference between a CreateTime timestamp and the broker's clock.",
    },
    ConfigDef {
        name: "message.timestamp.type",
        broker_synonym: Some("log.message.timestamp.type"),
        default: "CreateTime",
        kind: ConfigKind::String,
        validator: ConfigValidator::OneOf(TIMESTAMP_TYPES),
        doc: "Whether record timestamps are the producer's (CreateTime) or the broker's (LogAppendTime).",
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        broker_synonym: Some("log.cleaner.min.cleanable.ratio"),
        default: "0.5",
        kind: ConfigKind::Double,
        validator: ConfigValidator::DoubleRange { min: 0.0, max: 1.0 },
        doc: "Dirty fraction of the log that triggers compaction.",
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        broker_synonym: Some("log.cleaner.min.compaction.lag.ms"),
        default: "0",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "Shortest time a message stays uncompacted.",
    },
    ConfigDef {
        name: "min.insync.replicas",
        broker_synonym: Some("min.insync.replicas"),
        default: "1",
        kind: ConfigKind::Int,
        validator: ConfigValidator::AtLeast(1),
        doc: "Fewest in-sync replicas that must acknowledge an acks=all write.",
    },
    ConfigDef {
        name: "preallocate",
        broker_synonym: Some("log.preallocate"),
        default: "false",
        kind: ConfigKind::Boolean,
        validator: ConfigValidator::Any,
        doc: "Whether segment files are preallocated on disk.",
    },
    ConfigDef {
        name: "remote.storage.enable",
        broker_synonym: None,
        default: "false",
        kind: ConfigKind::Boolean,
        validator: ConfigValidator::Any,
        doc: "Tiered storage; keel does not support it, so only false is accepted.",
    },
    ConfigDef {
        name: "retention.bytes",
        broker_synonym: Some("log.retention.bytes"),
        default: "-1",
        kind: ConfigKind::Long,
        validator: ConfigValidator::Any,
        doc: "Largest size a partition may grow to before old segments are deleted; -1 = no limit.",
    },
    ConfigDef {
        name: "retention.ms",
        broker_synonym: Some("log.retention.ms"),
        default: "604800000",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(-1),
        doc: "Longest time a segment is kept before deletion; -1 = no limit.",
    },
    ConfigDef {
        name: "segment.bytes",
        broker_synonym: Some("log.segment.bytes"),
        default: "1073741824",
        kind: ConfigKind::Int,
        validator: ConfigValidator::AtLeast(MIN_SEGMENT_BYTES),
        doc: "Segment file size.",
    },
    ConfigDef {
        name: "segment.index.bytes",
        broker_synonym: Some("log.index.size.max.bytes"),
        default: "10485760",
        kind: ConfigKind::Int,
        validator: ConfigValidator::AtLeast(4),
        doc: "Size of the offset index of a segment.",
    },
    ConfigDef {
        name: "segment.jitter.ms",
        broker_synonym: Some("log.roll.jitter.ms"),
        default: "0",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(0),
        doc: "Largest random jitter subtracted from segment.ms.",
    },
    ConfigDef {
        name: "segment.ms",
        broker_synonym: Some("log.roll.ms"),
        default: "604800000",
        kind: ConfigKind::Long,
        validator: ConfigValidator::AtLeast(1),
        doc: "Time after which a segment is rolled even if not full.",
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        broker_synonym: Some("unclean.leader.election.enable"),
        default: "false",
        kind: ConfigKind::Boolean,
        validator: ConfigValidator::Any,
        doc: "Whether an out-of-sync replica may become leader as a last resort (may lose data).",
    },
];

/// The definition of topic config `name`, if keel knows it.
pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks that `value` is acceptable for topic config `name`.
///
/// # Errors
/// [`ControllerError::InvalidConfig`] naming the config and the problem, for an unknown
/// name or a value that does not parse or is out of range.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ControllerError> {
    let def = topic_config(name).ok_or_else(|| {
        ControllerError::InvalidConfig(format!("Unknown topic config name: {name}"))
    })?;
    validate_value(def, def.name, value)?;
    if def.name == "remote.storage.enable" && parse_bool(value.trim()) == Some(true) {
        return Err(ControllerError::InvalidConfig(
            "Tiered storage is not supported by keel; remote.storage.enable must be false"
                .to_string(),
        ));
    }
    Ok(())
}

/// Checks a dynamic broker config `name`: when it is the broker synonym of a topic
/// config (`log.retention.ms` for `retention.ms`, …) its value must pass that topic
/// config's check, since topics without an override run with it. Other names are
/// not checked here.
///
/// # Errors
/// [`ControllerError::InvalidConfig`] naming the broker config and the rule broken.
pub fn validate_broker_synonym(name: &str, value: &str) -> Result<(), ControllerError> {
    match TOPIC_CONFIGS
        .iter()
        .find(|d| d.broker_synonym == Some(name))
    {
        Some(def) => validate_value(def, name, value),
        None => Ok(()),
    }
}

/// Checks what one topic's configs say together (Kafka's `LogConfig.validateValues`):
/// `min.compaction.lag.ms` may not exceed `max.compaction.lag.ms`. Each value on its own
/// was checked by [`validate_topic_config`]; an unset one counts as its default.
///
/// # Errors
/// [`ControllerError::InvalidConfig`] naming both values.
pub fn validate_topic_configs(
    configs: &std::collections::BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    let millis = |name: &str| -> Option<i64> {
        let value = configs
            .get(name)
            .map(String::as_str)
            .or_else(|| topic_config(name).map(|d| d.default))?;
        value.trim().parse().ok()
    };
    if let (Some(min), Some(max)) = (
        millis("min.compaction.lag.ms"),
        millis("max.compaction.lag.ms"),
    ) {
        if min > max {
            return Err(ControllerError::InvalidConfig(format!(
                "conflict topic config setting min.compaction.lag.ms ({min}) > max.compaction.lag.ms ({max})"
            )));
        }
    }
    Ok(())
}

/// Splits a List config value as Kafka does: trimmed, comma-separated, empty = no items.
pub fn split_list(value: &str) -> Vec<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split(',').map(|s| s.trim().to_string()).collect()
}

fn invalid(name: &str, value: &str, why: impl std::fmt::Display) -> ControllerError {
    ControllerError::InvalidConfig(format!(
        "Invalid value {value} for configuration {name}: {why}"
    ))
}

fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Checks `value` against `def`'s type and validator; errors name the config `name`
/// (the topic config itself, or the broker config that is its synonym).
fn validate_value(def: &ConfigDef, name: &str, value: &str) -> Result<(), ControllerError> {
    let v = value.trim();
    match def.kind {
        ConfigKind::Boolean => {
            parse_bool(v)
                .ok_or_else(|| invalid(name, value, "Expected value to be either true or false"))?;
            Ok(())
        }
        ConfigKind::Short | ConfigKind::Int | ConfigKind::Long => {
            let (type_name, min, max) = match def.kind {
                ConfigKind::Short => ("SHORT", i64::from(i16::MIN), i64::from(i16::MAX)),
                ConfigKind::Int => ("INT", i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => ("LONG", i64::MIN, i64::MAX),
            };
            let n: i64 = v
                .parse()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| invalid(name, value, format!("Not a number of type {type_name}")))?;
            match def.validator {
                ConfigValidator::AtLeast(low) if n < low => Err(invalid(
                    name,
                    value,
                    format!("Value must be at least {low}"),
                )),
                ConfigValidator::IntRangeOr { min, max, or }
                    if n != or && !(min..=max).contains(&n) =>
                {
                    Err(invalid(
                        name,
                        value,
                        format!("Value must be between {min} and {max}, or {or}"),
                    ))
                }
                _ => Ok(()),
            }
        }
        ConfigKind::Double => {
            let n: f64 = v
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| invalid(name, value, "Not a number of type DOUBLE"))?;
            match def.validator {
                ConfigValidator::DoubleRange { min, max } if !(min..=max).contains(&n) => {
                    Err(invalid(
                        name,
                        value,
                        format!("Value must be between {min} and {max}"),
                    ))
                }
                _ => Ok(()),
            }
        }
        ConfigKind::String | ConfigKind::Password | ConfigKind::Class => match def.validator {
            ConfigValidator::OneOf(allowed) if !allowed.contains(&v) => Err(invalid(
                name,
                value,
                format!("String must be one of: {}", allowed.join(", ")),
            )),
            _ => Ok(()),
        },
        ConfigKind::List => {
            let items = split_list(v);
            match def.validator {
                ConfigValidator::ListOf(allowed) => {
                    for item in &items {
                        if !allowed.contains(&item.as_str()) {
                            return Err(invalid(
                                name,
                                value,
                                format!(
                                    "Invalid value {item}; every item must be one of: {}",
                                    allowed.join(", ")
                                ),
                            ));
                        }
                    }
                    Ok(())
                }
                ConfigValidator::ThrottledReplicas => {
                    if items.len() == 1 && items[0] == "*" {
                        return Ok(());
                    }
                    for item in &items {
                        let ok = item.split_once(':').is_some_and(|(p, b)| {
                            p.trim().parse::<i32>().is_ok() && b.trim().parse::<i32>().is_ok()
                        });
                        if !ok {
                            return Err(invalid(
                                name,
                                value,
                                "must be the wildcard (*) or a list of partitionId:brokerId pairs",
                            ));
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_sorted_unique_and_defaults_validate() {
        for pair in TOPIC_CONFIGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
        for def in TOPIC_CONFIGS {
            validate_topic_config(def.name, def.default)
                .unwrap_or_else(|e| panic!("default of {} rejected: {e}", def.name));
        }
    }

    #[test]
    fn kafka_defaults_are_the_documented_ones() {
        let d = |n| topic_config(n).map(|d| d.default);
        assert_eq!(d("max.message.bytes"), Some("1048588"));
        assert_eq!(d("retention.ms"), Some("604800000"));
        assert_eq!(d("retention.bytes"), Some("-1"));
        assert_eq!(d("segment.bytes"), Some("1073741824"));
        assert_eq!(d("segment.ms"), Some("604800000"));
        assert_eq!(d("min.insync.replicas"), Some("1"));
        assert_eq!(
            topic_config("cleanup.policy").and_then(|d| d.broker_synonym),
            Some("log.cleanup.policy")
        );
        assert_eq!(
            topic_config("max.message.bytes").and_then(|d| d.broker_synonym),
            Some("message.max.bytes")
        );
    }

    #[test]
    fn unknown_config_name_is_invalid_config_naming_it() {
        let err = validate_topic_config("retention.msec", "1").unwrap_err();
        assert!(
            matches!(&err, ControllerError::InvalidConfig(m) if m.contains("retention.msec")),
            "{err}"
        );
    }

    #[test]
    fn values_are_parsed_and_range_checked() {
        let ok = [
            ("cleanup.policy", "compact"),
            ("cleanup.policy", "delete, compact"),
            ("cleanup.policy", ""),
            ("compression.type", "zstd"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-5"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("preallocate", "TRUE"),
            ("message.timestamp.type", "LogAppendTime"),
            ("leader.replication.throttled.replicas", "0:1, 1:2"),
            ("leader.replication.throttled.replicas", "*"),
            ("compression.gzip.level", "-1"),
            ("segment.bytes", " 1048576 "),
        ];
        for (n, v) in ok {
            validate_topic_config(n, v).unwrap_or_else(|e| panic!("{n}={v}: {e}"));
        }
        let bad = [
            ("cleanup.policy", "compactt"),
            ("compression.type", "brotli"),
            ("compression.type", "ZSTD"),
            ("retention.ms", "-2"),
            ("retention.ms", "1h"),
            ("segment.bytes", "4294967296"),
            ("segment.bytes", "10"),
            ("min.insync.replicas", "0"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "NaN"),
            ("preallocate", "yes"),
            ("message.timestamp.type", "createtime"),
            ("leader.replication.throttled.replicas", "0-1"),
            ("compression.gzip.level", "10"),
            ("remote.storage.enable", "true"),
        ];
        for (n, v) in bad {
            let err = validate_topic_config(n, v).expect_err(&format!("{n}={v} accepted"));
            assert!(
                matches!(&err, ControllerError::InvalidConfig(m) if m.contains(n) || n == "remote.storage.enable"),
                "{err}"
            );
        }
    }
}
