//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use uuid::Uuid;

use super::placement;
use super::BrokerSessions;
use super::ControllerConfig;
use super::ControllerContext;
use super::ControllerError;
use super::CreateTopicResult;
use super::CreatedTopic;
use super::DeleteTopicResult;
use super::NewPartitions;
use super::NewTopic;
use super::TopicRef;
use super::MAX_TOPIC_ID_ATTEMPTS;
use super::MAX_TOPIC_NAME_CHARS;
use crate::image::MetadataImage;
use crate::records::ConfigResource;
use crate::records::MetadataRecord;
use crate::topic_config::validate_topic_config;
use crate::topic_config::validate_topic_configs;

/// Name of Kafka's metadata log, which no client may create as a topic.
pub const CLUSTER_METADATA_TOPIC: &str = "__cluster_metadata";

/// The replicas of one new partition and the in-sync replicas it starts with.
type Placement = (Vec<i32>, Vec<i32>);

/// Per-topic outcome of CreatePartitions, in request order.
type CreatePartitionsResults = Vec<(String, Result<(), ControllerError>)>;

/// Kafka's reserved id of the metadata topic; never handed to a user topic.
const METADATA_TOPIC_ID: Uuid = Uuid::from_u128(1);

/// Checks a topic name as Kafka's `Topic.validate` does.
///
/// # Errors
/// [`ControllerError::InvalidTopic`] naming the rule the name breaks.
pub fn validate_topic_name(name: &str) -> Result<(), ControllerError> {
    if name.is_empty() {
        return Err(ControllerError::InvalidTopic(
            "Topic name is illegal, it can't be empty".to_string(),
        ));
    }
    if name == "." || name == ".." {
        return Err(ControllerError::InvalidTopic(
            "Topic name cannot be \".\" or \"..\"".to_string(),
        ));
    }
    if name.chars().count() > MAX_TOPIC_NAME_CHARS {
        return Err(ControllerError::InvalidTopic(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_CHARS} characters, topic name: {name}"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(ControllerError::InvalidTopic(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Kafka treats '.' and '_' as the same character when checking for colliding names,
/// because metric names cannot tell them apart.
fn unify_collision_chars(name: &str) -> String {
    name.replace('.', "_")
}

/// Names seen so far: the image's topics plus those created earlier in the request.
struct TopicNames<'a> {
    image: &'a MetadataImage,
    created: BTreeSet<String>,
    /// unified name -> an actual name, for the ones created in this request
    created_unified: BTreeMap<String, String>,
    /// unified name -> an actual name, for the image's topics with '.' or '_': built on
    /// the first check that needs it, so a request of many names costs one pass over
    /// the image rather than one per name.
    image_unified: Option<BTreeMap<String, Vec<String>>>,
    used_ids: BTreeSet<Uuid>,
}

impl TopicNames<'_> {
    fn exists(&self, name: &str) -> bool {
        self.image.topic_ids_by_name.contains_key(name) || self.created.contains(name)
    }

    fn collision(&mut self, name: &str) -> Option<String> {
        let unified = unify_collision_chars(name);
        if unified == name && !name.contains('_') {
            return None;
        }
        if let Some(other) = self.created_unified.get(&unified) {
            if other != name {
                return Some(other.clone());
            }
        }
        let image = self.image;
        let index = self.image_unified.get_or_insert_with(|| {
            let mut index: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for other in image.topic_ids_by_name.keys() {
                if other.contains(['.', '_']) {
                    index
                        .entry(unify_collision_chars(other))
                        .or_default()
                        .push(other.clone());
                }
            }
            index
        });
        index
            .get(&unified)?
            .iter()
            .find(|other| other.as_str() != name)
            .cloned()
    }

    fn add(&mut self, name: &str, id: Uuid) {
        self.created.insert(name.to_string());
        self.created_unified
            .insert(unify_collision_chars(name), name.to_string());
        self.used_ids.insert(id);
    }

    fn new_topic_id(&self, ctx: &mut ControllerContext<'_>) -> Result<Uuid, ControllerError> {
        for _ in 0..MAX_TOPIC_ID_ATTEMPTS {
            let id = (ctx.new_uuid)();
            // Kafka never hands out the zero or metadata-topic id, nor ids whose base64 form
            // starts with '-' (command-line tools would take them for flags).
            let dash_first = id.as_bytes()[0] >> 2 == 62;
            if id.is_nil()
                || id == METADATA_TOPIC_ID
                || dash_first
                || self.image.topics.contains_key(&id)
                || self.used_ids.contains(&id)
            {
                continue;
            }
            return Ok(id);
        }
        Err(ControllerError::Internal(format!(
            "could not find an unused topic id in {MAX_TOPIC_ID_ATTEMPTS} attempts"
        )))
    }
}

fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            dups.insert(n);
        }
    }
    dups
}

fn excessive_partitions() -> ControllerError {
    ControllerError::PolicyViolation(
        "Excessively large number of partitions per request.".to_string(),
    )
}

pub(super) fn create_topics(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    topics: Vec<NewTopic>,
) -> (Vec<MetadataRecord>, Vec<CreateTopicResult>) {
    let dups: BTreeSet<String> = duplicates(topics.iter().map(|t| t.name.as_str()))
        .into_iter()
        .map(str::to_string)
        .collect();
    let total_partitions: i64 = topics
        .iter()
        .map(|t| {
            if !t.assignments.is_empty() {
                t.assignments.len() as i64
            } else if t.num_partitions == -1 {
                i64::from(config.default_num_partitions)
            } else {
                i64::from(t.num_partitions.max(0))
            }
        })
        .sum();
    let over_limit = total_partitions > i64::from(config.max_partitions_per_request);

    let mut names = TopicNames {
        image,
        created: BTreeSet::new(),
        created_unified: BTreeMap::new(),
        image_unified: None,
        used_ids: BTreeSet::new(),
    };
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    for topic in topics {
        let result = if dups.contains(&topic.name) {
            Err(ControllerError::InvalidRequest(format!(
                "Duplicate topic name '{}' in the request.",
                topic.name
            )))
        } else if over_limit {
            Err(excessive_partitions())
        } else {
            create_one(image, config, sessions, ctx, &mut names, &topic).map(|(recs, created)| {
                records.extend(recs);
                created
            })
        };
        results.push(CreateTopicResult {
            name: topic.name,
            result,
        });
    }
    (records, results)
}

fn create_one(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    names: &mut TopicNames<'_>,
    topic: &NewTopic,
) -> Result<(Vec<MetadataRecord>, CreatedTopic), ControllerError> {
    let name = topic.name.as_str();
    validate_topic_name(name)?;
    if name == CLUSTER_METADATA_TOPIC {
        // The metadata log is the quorum's, not a partition log (as Kafka refuses it).
        return Err(ControllerError::InvalidRequest(format!(
            "Creation of internal topic {CLUSTER_METADATA_TOPIC} is prohibited."
        )));
    }
    if names.exists(name) {
        return Err(ControllerError::TopicAlreadyExists(format!(
            "Topic '{name}' already exists."
        )));
    }
    if let Some(other) = names.collision(name) {
        return Err(ControllerError::InvalidTopic(format!(
            "Topic '{name}' collides with existing topic: {other}"
        )));
    }

    // (replicas, isr) per partition, in partition order.
    let (placements, replication_factor): (Vec<Placement>, i16) = if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 {
            return Err(ControllerError::InvalidRequest(
                "A manual partition assignment was specified, but numPartitions was not set to -1."
                    .to_string(),
            ));
        }
        if topic.replication_factor != -1 {
            return Err(ControllerError::InvalidRequest(
                    "A manual partition assignment was specified, but replicationFactor was not set to -1."
                        .to_string(),
                ));
        }
        manual_placement(image, &topic.assignments)?
    } else {
        let num_partitions = if topic.num_partitions == -1 {
            config.default_num_partitions
        } else {
            topic.num_partitions
        };
        if num_partitions < 1 {
            return Err(ControllerError::InvalidPartitions(
                "Number of partitions was set to an invalid non-positive value.".to_string(),
            ));
        }
        let rf = if topic.replication_factor == -1 {
            config.default_replication_factor
        } else {
            topic.replication_factor
        };
        if rf < 1 {
            return Err(ControllerError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value."
                    .to_string(),
            ));
        }
        let placed = placement::place(image, sessions, ctx, num_partitions, rf)?;
        (placed.into_iter().map(|r| (r.clone(), r)).collect(), rf)
    };

    for (k, v) in &topic.configs {
        validate_topic_config(k, v)?;
    }
    validate_topic_configs(&topic.configs)?;

    let topic_id = names.new_topic_id(ctx)?;
    names.add(name, topic_id);

    let mut records = Vec::with_capacity(1 + topic.configs.len() + placements.len());
    records.push(MetadataRecord::Topic {
        name: name.to_string(),
        topic_id,
    });
    for (k, v) in &topic.configs {
        records.push(MetadataRecord::Config {
            resource: ConfigResource::Topic(name.to_string()),
            name: k.clone(),
            value: Some(v.clone()),
        });
    }
    let num_partitions = placements.len();
    for (partition, (replicas, isr)) in placements.into_iter().enumerate() {
        records.push(partition_record(topic_id, partition as i32, replicas, isr));
    }
    let created = CreatedTopic {
        topic_id,
        num_partitions: i32::try_from(num_partitions).unwrap_or(i32::MAX),
        replication_factor,
        configs: topic.configs.clone(),
    };
    Ok((records, created))
}

/// A new partition: leader = first in-sync replica, epochs 0.
fn partition_record(
    topic_id: Uuid,
    partition: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
) -> MetadataRecord {
    let leader = isr.first().copied().unwrap_or(crate::image::NO_LEADER);
    MetadataRecord::Partition {
        topic_id,
        partition,
        replicas,
        isr,
        leader,
        leader_epoch: 0,
        partition_epoch: 0,
    }
}

fn inconsistent_rf(len: usize, rf: usize) -> ControllerError {
    ControllerError::InvalidReplicaAssignment(format!(
        "The manual partition assignment includes a partition with {len} replica(s), but this is not consistent with previous partitions, which have {rf} replica(s)."
    ))
}

fn manual_placement(
    image: &MetadataImage,
    assignments: &BTreeMap<i32, Vec<i32>>,
) -> Result<(Vec<Placement>, i16), ControllerError> {
    let mut rf = None;
    let mut out = Vec::with_capacity(assignments.len());
    for (expected, (partition, replicas)) in assignments.iter().enumerate() {
        if i64::from(*partition) != expected as i64 {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "Partitions in the manual assignment must be numbered 0 to {} without gaps, but partition {partition} was given where {expected} was expected.",
                assignments.len() - 1
            )));
        }
        let len = replicas.len();
        match rf {
            None => rf = Some(len),
            Some(rf) if rf != len => return Err(inconsistent_rf(len, rf)),
            Some(_) => {}
        }
        let isr = placement::check_manual_replicas(image, *partition, replicas)?;
        out.push((replicas.clone(), isr));
    }
    let rf = rf.unwrap_or(0);
    let rf = i16::try_from(rf).map_err(|_| {
        ControllerError::InvalidReplicaAssignment(format!(
            "The manual partition assignment has {rf} replicas per partition; at most {} are possible.",
            i16::MAX
        ))
    })?;
    Ok((out, rf))
}

pub(super) fn delete_topics(
    image: &MetadataImage,
    refs: Vec<TopicRef>,
) -> (Vec<MetadataRecord>, Vec<DeleteTopicResult>) {
    // What each reference resolves to, to spot two references to one topic.
    let resolved: Vec<Option<Uuid>> = refs
        .iter()
        .map(|r| match r {
            TopicRef::Name(n) => image.topic_ids_by_name.get(n).copied(),
            TopicRef::Id(id) => image.topics.contains_key(id).then_some(*id),
        })
        .collect();
    let mut times_named: BTreeMap<String, usize> = BTreeMap::new();
    let mut times_resolved: BTreeMap<Uuid, usize> = BTreeMap::new();
    for (r, id) in refs.iter().zip(&resolved) {
        let key = match r {
            TopicRef::Name(n) => format!("name:{n}"),
            TopicRef::Id(id) => format!("id:{id}"),
        };
        *times_named.entry(key).or_default() += 1;
        if let Some(id) = id {
            *times_resolved.entry(*id).or_default() += 1;
        }
    }

    let mut records = Vec::new();
    let mut results = Vec::with_capacity(refs.len());
    for (r, id) in refs.into_iter().zip(resolved) {
        let key = match &r {
            TopicRef::Name(n) => format!("name:{n}"),
            TopicRef::Id(id) => format!("id:{id}"),
        };
        let duplicate = times_named.get(&key).copied().unwrap_or(0) > 1
            || id.is_some_and(|id| times_resolved.get(&id).copied().unwrap_or(0) > 1);
        let (name, topic_id) = match (&r, id) {
            (_, Some(id)) => (image.topics.get(&id).map(|t| t.name.clone()), Some(id)),
            (TopicRef::Name(n), None) => (Some(n.clone()), None),
            (TopicRef::Id(id), None) => (None, Some(*id)),
        };
        let result = if duplicate {
            Err(ControllerError::InvalidRequest(match &r {
                TopicRef::Name(n) => format!("Topic '{n}' is named more than once in the request."),
                TopicRef::Id(id) => {
                    format!("Topic id {id} is named more than once in the request.")
                }
            }))
        } else {
            match (&r, id) {
                (_, Some(id)) => {
                    records.push(MetadataRecord::RemoveTopic { topic_id: id });
                    Ok(())
                }
                (TopicRef::Name(n), None) => Err(ControllerError::UnknownTopicOrPartition(
                    format!("Topic '{n}' does not exist."),
                )),
                (TopicRef::Id(id), None) => Err(ControllerError::UnknownTopicId(*id)),
            }
        };
        results.push(DeleteTopicResult {
            name,
            topic_id,
            result,
        });
    }
    (records, results)
}

pub(super) fn create_partitions(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    topics: Vec<NewPartitions>,
) -> (Vec<MetadataRecord>, CreatePartitionsResults) {
    let dups: BTreeSet<String> = duplicates(topics.iter().map(|t| t.name.as_str()))
        .into_iter()
        .map(str::to_string)
        .collect();
    let additional: i64 = topics
        .iter()
        .filter_map(|t| {
            let current = image.topic_by_name(&t.name)?.partitions.len() as i64;
            Some((i64::from(t.count) - current).max(0))
        })
        .sum();
    let over_limit = additional > i64::from(config.max_partitions_per_request);

    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    for t in topics {
        let result = if dups.contains(&t.name) {
            Err(ControllerError::InvalidRequest(format!(
                "Duplicate topic name '{}' in the request.",
                t.name
            )))
        } else if over_limit {
            Err(excessive_partitions())
        } else {
            add_partitions(image, sessions, ctx, &t).map(|recs| records.extend(recs))
        };
        results.push((t.name, result));
    }
    (records, results)
}

fn add_partitions(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    t: &NewPartitions,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let topic = image.topic_by_name(&t.name).ok_or_else(|| {
        ControllerError::UnknownTopicOrPartition(format!("Topic '{}' does not exist.", t.name))
    })?;
    let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if t.count < current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic currently has {current} partitions, which is higher than the requested {}.",
            t.count
        )));
    }
    if t.count == current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic currently has {current} partitions, which is equal to the requested {}.",
            t.count
        )));
    }
    let additional = t.count - current;
    let rf = topic
        .partitions
        .values()
        .next()
        .map(|p| p.replicas.len())
        .unwrap_or(0);

    let placements: Vec<Placement> = match &t.assignments {
        Some(assignments) => {
            if i64::from(additional) != assignments.len() as i64 {
                return Err(ControllerError::InvalidReplicaAssignment(format!(
                    "Attempted to add {additional} additional partition(s), but {} assignment(s) were specified.",
                    assignments.len()
                )));
            }
            let mut out = Vec::with_capacity(assignments.len());
            for (i, replicas) in assignments.iter().enumerate() {
                if rf != 0 && replicas.len() != rf {
                    return Err(inconsistent_rf(replicas.len(), rf));
                }
                let partition = current.saturating_add(i as i32);
                let isr = placement::check_manual_replicas(image, partition, replicas)?;
                out.push((replicas.clone(), isr));
            }
            out
        }
        None => {
            let rf = i16::try_from(rf).unwrap_or(i16::MAX);
            placement::place(image, sessions, ctx, additional, rf)?
                .into_iter()
                .map(|r| (r.clone(), r))
                .collect()
        }
    };
    Ok(placements
        .into_iter()
        .enumerate()
        .map(|(i, (replicas, isr))| {
            partition_record(
                topic.topic_id,
                current.saturating_add(i as i32),
                replicas,
                isr,
            )
        })
        .collect())
}
