//! IncrementalAlterConfigs and the legacy AlterConfigs.
//!
//! Topic configs are checked against [`crate::topic_config::TOPIC_CONFIGS`]. A broker
//! config (one broker, or the cluster-wide default) that is a topic config's broker
//! synonym gets that config's value check (refused as INVALID_REQUEST, as Kafka does);
//! other broker configs are stored as given
//! (Kafka keeps unknown broker configs for plugins). The receiving broker refuses its
//! static-only keys before a request gets here.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::AlterConfigsResource;
use super::AlterOp;
use super::ControllerError;
use crate::image::MetadataImage;
use crate::records::ConfigResource;
use crate::records::MetadataRecord;
use crate::topic_config::split_list;
use crate::topic_config::topic_config;
use crate::topic_config::validate_broker_synonym;
use crate::topic_config::validate_topic_config;
use crate::topic_config::validate_topic_configs;
use crate::topic_config::ConfigKind;

type AlterResults = Vec<(ConfigResource, Result<(), ControllerError>)>;

fn duplicate_resources<'a>(
    resources: impl Iterator<Item = &'a ConfigResource>,
) -> BTreeSet<ConfigResource> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for r in resources {
        if !seen.insert(r) {
            dups.insert(r.clone());
        }
    }
    dups
}

fn duplicate_resource_error(resource: &ConfigResource) -> ControllerError {
    ControllerError::InvalidRequest(format!(
        "{resource} is named more than once in the request."
    ))
}

fn check_resource(image: &MetadataImage, resource: &ConfigResource) -> Result<(), ControllerError> {
    match resource {
        ConfigResource::Topic(name) => {
            if image.topic_ids_by_name.contains_key(name) {
                Ok(())
            } else {
                Err(ControllerError::UnknownTopicOrPartition(format!(
                    "Topic '{name}' does not exist."
                )))
            }
        }
        ConfigResource::Broker(Some(id)) if *id < 0 => Err(ControllerError::InvalidRequest(
            format!("Broker id {id} is negative; broker ids must be >= 0"),
        )),
        ConfigResource::Broker(_) => Ok(()),
    }
}

fn check_name(resource: &ConfigResource, name: &str) -> Result<(), ControllerError> {
    match resource {
        ConfigResource::Topic(_) => {
            if topic_config(name).is_none() {
                return Err(ControllerError::InvalidConfig(format!(
                    "Unknown topic config name: {name}"
                )));
            }
        }
        ConfigResource::Broker(_) => {
            if name.trim().is_empty() {
                return Err(ControllerError::InvalidConfig(format!(
                    "Empty config name for {resource}"
                )));
            }
        }
    }
    Ok(())
}

fn check_value(resource: &ConfigResource, name: &str, value: &str) -> Result<(), ControllerError> {
    match resource {
        ConfigResource::Topic(_) => validate_topic_config(name, value),
        // Kafka refuses a bad dynamic broker value with INVALID_REQUEST (KAFKA-13609).
        ConfigResource::Broker(_) => validate_broker_synonym(name, value).map_err(|e| match e {
            ControllerError::InvalidConfig(m) => ControllerError::InvalidRequest(m),
            other => other,
        }),
    }
}

/// Records that turn `current` into `next`, in config-name order.
fn diff(
    resource: &ConfigResource,
    current: &BTreeMap<String, String>,
    next: &BTreeMap<String, String>,
) -> Vec<MetadataRecord> {
    let names: BTreeSet<&String> = current.keys().chain(next.keys()).collect();
    names
        .into_iter()
        .filter(|n| current.get(*n) != next.get(*n))
        .map(|n| MetadataRecord::Config {
            resource: resource.clone(),
            name: n.clone(),
            value: next.get(n).cloned(),
        })
        .collect()
}

pub(super) fn incremental_alter(
    image: &MetadataImage,
    resources: Vec<AlterConfigsResource>,
) -> (Vec<MetadataRecord>, AlterResults) {
    let dups = duplicate_resources(resources.iter().map(|r| &r.resource));
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(resources.len());
    for r in resources {
        let result = if dups.contains(&r.resource) {
            Err(duplicate_resource_error(&r.resource))
        } else {
            incremental_alter_one(image, &r).map(|recs| records.extend(recs))
        };
        results.push((r.resource, result));
    }
    (records, results)
}

fn incremental_alter_one(
    image: &MetadataImage,
    r: &AlterConfigsResource,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    check_resource(image, &r.resource)?;
    let mut seen = BTreeSet::new();
    for op in &r.ops {
        if !seen.insert(op.name.as_str()) {
            return Err(ControllerError::InvalidRequest(format!(
                "Config '{}' appears more than once for {}.",
                op.name, r.resource
            )));
        }
    }
    let current = image.configs.get(&r.resource).cloned().unwrap_or_default();
    let mut next = current.clone();
    for op in &r.ops {
        // Deleting a topic config that is not set changes nothing, whatever its name
        // (Kafka validates the resulting configs, not the names deleted).
        let removes_nothing = op.op == AlterOp::Delete
            && matches!(r.resource, ConfigResource::Topic(_))
            && !next.contains_key(&op.name);
        if removes_nothing {
            continue;
        }
        check_name(&r.resource, &op.name)?;
        let value = || {
            op.value.clone().ok_or_else(|| {
                ControllerError::InvalidRequest(format!(
                    "{:?} of config '{}' needs a value.",
                    op.op, op.name
                ))
            })
        };
        match op.op {
            AlterOp::Set => {
                next.insert(op.name.clone(), value()?);
            }
            AlterOp::Delete => {
                next.remove(&op.name);
            }
            AlterOp::Append | AlterOp::Subtract => {
                let verb = if op.op == AlterOp::Append {
                    "append"
                } else {
                    "subtract"
                };
                let default = match &r.resource {
                    ConfigResource::Topic(_) => {
                        let def = topic_config(&op.name).ok_or_else(|| {
                            ControllerError::InvalidConfig(format!(
                                "Unknown topic config name: {}",
                                op.name
                            ))
                        })?;
                        if def.kind != ConfigKind::List {
                            return Err(ControllerError::InvalidConfig(format!(
                                "Config value {verb} is not allowed for config key: {}",
                                op.name
                            )));
                        }
                        def.default
                    }
                    ConfigResource::Broker(_) => "",
                };
                let operand = split_list(&value()?);
                let mut items =
                    split_list(next.get(&op.name).map(String::as_str).unwrap_or(default));
                if op.op == AlterOp::Append {
                    for item in operand {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                } else {
                    items.retain(|i| !operand.contains(i));
                }
                next.insert(op.name.clone(), items.join(","));
            }
        }
    }
    for (name, value) in &next {
        if current.get(name) != Some(value) {
            check_value(&r.resource, name, value)?;
        }
    }
    if matches!(r.resource, ConfigResource::Topic(_)) {
        validate_topic_configs(&next)?;
    }
    Ok(diff(&r.resource, &current, &next))
}

pub(super) fn legacy_alter(
    image: &MetadataImage,
    resources: Vec<(ConfigResource, Vec<(String, String)>)>,
) -> (Vec<MetadataRecord>, AlterResults) {
    let dups = duplicate_resources(resources.iter().map(|(r, _)| r));
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(resources.len());
    for (resource, entries) in resources {
        let result = if dups.contains(&resource) {
            Err(duplicate_resource_error(&resource))
        } else {
            legacy_alter_one(image, &resource, &entries).map(|recs| records.extend(recs))
        };
        results.push((resource, result));
    }
    (records, results)
}

fn legacy_alter_one(
    image: &MetadataImage,
    resource: &ConfigResource,
    entries: &[(String, String)],
) -> Result<Vec<MetadataRecord>, ControllerError> {
    check_resource(image, resource)?;
    let mut next = BTreeMap::new();
    for (name, value) in entries {
        check_name(resource, name)?;
        check_value(resource, name, value)?;
        if next.insert(name.clone(), value.clone()).is_some() {
            return Err(ControllerError::InvalidRequest(format!(
                "Config '{name}' appears more than once for {resource}."
            )));
        }
    }
    if matches!(resource, ConfigResource::Topic(_)) {
        validate_topic_configs(&next)?;
    }
    let current = image.configs.get(resource).cloned().unwrap_or_default();
    Ok(diff(resource, &current, &next))
}
