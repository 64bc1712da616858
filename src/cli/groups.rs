//! `keel groups list|describe|delete|reset-offsets`, over the Kafka protocol, as
//! Kafka's `kafka-consumer-groups.sh` does it: ListGroups to every broker,
//! FindCoordinator then DescribeGroups / OffsetFetch / DeleteGroups / OffsetCommit at
//! the group's coordinator, ListOffsets at partition leaders.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::client::KafkaClient;
use super::topics::{check, metadata, CLI_CLIENT_ID};
use crate::group::consumer_protocol;

/// Versions the CLI sends.
const FIND_COORDINATOR_VERSION: i16 = 3;
const LIST_GROUPS_VERSION: i16 = 4;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const DELETE_GROUPS_VERSION: i16 = 2;
const OFFSET_FETCH_VERSION: i16 = 7;
const OFFSET_COMMIT_VERSION: i16 = 8;
const LIST_OFFSETS_VERSION: i16 = 7;
/// ListOffsets timestamps meaning "latest" and "earliest".
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;
/// How many times FindCoordinator is retried while the coordinator is not ready.
const COORDINATOR_LOOKUP_ATTEMPTS: u32 = 20;
const COORDINATOR_LOOKUP_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// Where `reset-offsets` moves a group's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    /// Relative to the committed offset (or to the log end where nothing is committed).
    ShiftBy(i64),
}

/// One `keel groups` action.
pub enum GroupsCommand {
    /// List every group of the cluster.
    List,
    /// Describe a group: state, members, and per partition its committed offset and lag.
    Describe { group: String },
    /// Delete an empty group and its offsets.
    Delete { group: String },
    /// Move the committed offsets of an inactive group (printed only, unless `execute`).
    ResetOffsets {
        group: String,
        topic: String,
        partitions: Option<Vec<i32>>,
        to: ResetTo,
        execute: bool,
    },
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn broker_addr(meta: &MetadataResponse, id: i32) -> Option<String> {
    meta.brokers
        .iter()
        .find(|b| b.node_id.0 == id)
        .map(|b| format!("{}:{}", b.host.as_str(), b.port))
}

/// Connects to the group's coordinator.
async fn coordinator(bootstrap: &mut KafkaClient, group: &str) -> anyhow::Result<KafkaClient> {
    let req = FindCoordinatorRequest::default()
        .with_key(s(group))
        .with_key_type(0);
    for attempt in 1..=COORDINATOR_LOOKUP_ATTEMPTS {
        let resp = bootstrap.call(&req, FIND_COORDINATOR_VERSION).await?;
        let retriable = [
            ResponseError::CoordinatorNotAvailable.code(),
            ResponseError::CoordinatorLoadInProgress.code(),
        ];
        if retriable.contains(&resp.error_code) && attempt < COORDINATOR_LOOKUP_ATTEMPTS {
            tokio::time::sleep(COORDINATOR_LOOKUP_BACKOFF).await;
            continue;
        }
        check(
            resp.error_code,
            resp.error_message.as_ref(),
            &format!("finding the coordinator of group {group}"),
        )?;
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        return KafkaClient::connect(&addr, CLI_CLIENT_ID)
            .await
            .with_context(|| format!("connecting to coordinator {} at {addr}", resp.node_id.0));
    }
    bail!("no coordinator for group {group}")
}

/// Committed offsets of a group, by (topic, partition).
async fn committed(
    coord: &mut KafkaClient,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(None);
    let resp = coord.call(&req, OFFSET_FETCH_VERSION).await?;
    check(
        resp.error_code,
        None,
        &format!("fetching offsets of group {group}"),
    )?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, None, "fetching an offset")?;
            if p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// The earliest or latest offset of each partition, asked of its leader.
async fn log_offsets(
    meta: &MetadataResponse,
    partitions: &[(String, i32)],
    timestamp: i64,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, p) in partitions {
        let leader = meta
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .and_then(|t| t.partitions.iter().find(|x| x.partition_index == *p))
            .map(|x| x.leader_id.0)
            .unwrap_or(-1);
        by_leader
            .entry(leader)
            .or_default()
            .push((topic.clone(), *p));
    }
    let mut out = BTreeMap::new();
    for (leader, parts) in by_leader {
        let Some(addr) = broker_addr(meta, leader) else {
            continue;
        };
        let mut client = KafkaClient::connect(&addr, CLI_CLIENT_ID).await?;
        let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p) in &parts {
            topics.entry(t.clone()).or_default().push(*p);
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(s(&t)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp = client.call(&req, LIST_OFFSETS_VERSION).await?;
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    out.insert((t.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    Ok(out)
}

/// Runs one command against `bootstrap`, printing results to stdout.
///
/// # Errors
/// Connection failures and any Kafka error the brokers answer, named.
pub async fn run(bootstrap: &str, cmd: GroupsCommand) -> anyhow::Result<()> {
    let mut client = KafkaClient::connect(bootstrap, CLI_CLIENT_ID).await?;
    match cmd {
        GroupsCommand::List => {
            let meta = metadata(&mut client, None).await?;
            let mut groups = Vec::new();
            for b in &meta.brokers {
                let addr = format!("{}:{}", b.host.as_str(), b.port);
                let mut c = KafkaClient::connect(&addr, CLI_CLIENT_ID).await?;
                let resp = c
                    .call(&ListGroupsRequest::default(), LIST_GROUPS_VERSION)
                    .await?;
                check(
                    resp.error_code,
                    None,
                    &format!("listing groups on broker {}", b.node_id.0),
                )?;
                for g in resp.groups {
                    groups.push((
                        g.group_id.0.to_string(),
                        g.group_state.to_string(),
                        g.protocol_type.to_string(),
                    ));
                }
            }
            groups.sort();
            println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
            for (id, state, ptype) in groups {
                println!("{id:<40} {state:<20} {ptype}");
            }
        }
        GroupsCommand::Describe { group } => {
            let mut coord = coordinator(&mut client, &group).await?;
            let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&group))]);
            let resp = coord.call(&req, DESCRIBE_GROUPS_VERSION).await?;
            let Some(d) = resp.groups.into_iter().next() else {
                bail!("no answer for group {group}");
            };
            check(
                d.error_code,
                d.error_message.as_ref(),
                &format!("describing group {group}"),
            )?;
            let committed = committed(&mut coord, &group).await?;
            if d.group_state.as_str() == "Dead" && committed.is_empty() {
                bail!("group {group} does not exist");
            }
            println!(
                "Group {group}: state {}, protocol {} {}, {} members",
                d.group_state.as_str(),
                d.protocol_type.as_str(),
                d.protocol_data.as_str(),
                d.members.len()
            );
            let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
            for m in &d.members {
                let parts = consumer_protocol::assigned_partitions(&m.member_assignment)
                    .unwrap_or_default();
                for (t, ps) in parts {
                    for p in ps {
                        owner.insert(
                            (t.clone(), p),
                            format!(
                                "{} {} {}",
                                m.member_id.as_str(),
                                m.client_id.as_str(),
                                m.client_host.as_str()
                            ),
                        );
                    }
                }
            }
            let mut partitions: Vec<(String, i32)> = committed.keys().cloned().collect();
            for k in owner.keys() {
                if !partitions.contains(k) {
                    partitions.push(k.clone());
                }
            }
            partitions.sort();
            let meta = metadata(&mut client, None).await?;
            let ends = log_offsets(&meta, &partitions, LATEST_TIMESTAMP).await?;
            println!(
                "{:<30} {:>9} {:>14} {:>14} {:>8}  MEMBER CLIENT-ID HOST",
                "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
            );
            for key in partitions {
                let current = committed.get(&key).copied();
                let end = ends.get(&key).copied();
                let lag = match (current, end) {
                    (Some(c), Some(e)) => (e - c).max(0).to_string(),
                    _ => "-".into(),
                };
                println!(
                    "{:<30} {:>9} {:>14} {:>14} {:>8}  {}",
                    key.0,
                    key.1,
                    current.map_or("-".into(), |c| c.to_string()),
                    end.map_or("-".into(), |e| e.to_string()),
                    lag,
                    owner.get(&key).map_or("-", String::as_str)
                );
            }
        }
        GroupsCommand::Delete { group } => {
            let mut coord = coordinator(&mut client, &group).await?;
            let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(&group))]);
            let resp = coord.call(&req, DELETE_GROUPS_VERSION).await?;
            for r in &resp.results {
                check(r.error_code, None, &format!("deleting group {group}"))?;
            }
            println!("Deleted group {group}.");
        }
        GroupsCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to,
            execute,
        } => {
            let meta = metadata(&mut client, Some(&topic)).await?;
            let Some(t) = meta.topics.first() else {
                bail!("no topic {topic}");
            };
            check(t.error_code, None, &format!("describing topic {topic}"))?;
            let all: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            let chosen = match partitions {
                Some(ps) => {
                    if let Some(bad) = ps.iter().find(|p| !all.contains(p)) {
                        bail!("topic {topic} has no partition {bad}");
                    }
                    ps
                }
                None => all,
            };
            let keys: Vec<(String, i32)> = chosen.iter().map(|p| (topic.clone(), *p)).collect();
            let mut coord = coordinator(&mut client, &group).await?;
            let current = committed(&mut coord, &group).await?;
            let earliest = log_offsets(&meta, &keys, EARLIEST_TIMESTAMP).await?;
            let latest = log_offsets(&meta, &keys, LATEST_TIMESTAMP).await?;
            let mut plan = Vec::new();
            for key in &keys {
                let (lo, hi) = (
                    earliest.get(key).copied().unwrap_or(0),
                    latest.get(key).copied().unwrap_or(0),
                );
                let target = match to {
                    ResetTo::Earliest => lo,
                    ResetTo::Latest => hi,
                    ResetTo::Offset(o) => o,
                    ResetTo::ShiftBy(d) => {
                        current.get(key).copied().unwrap_or(hi).saturating_add(d)
                    }
                };
                // Kafka's tool clamps targets into the log.
                plan.push((key.clone(), target.clamp(lo, hi)));
            }
            println!("{:<30} {:>9} {:>14}", "TOPIC", "PARTITION", "NEW-OFFSET");
            for ((t, p), o) in &plan {
                println!("{t:<30} {p:>9} {o:>14}");
            }
            if !execute {
                println!("(dry run: add --execute to commit these offsets)");
                return Ok(());
            }
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(s(""))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(
                        plan.iter()
                            .map(|((_, p), o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(*o)
                                    .with_committed_leader_epoch(-1)
                            })
                            .collect(),
                    )]);
            let resp = coord.call(&req, OFFSET_COMMIT_VERSION).await?;
            for t in &resp.topics {
                for p in &t.partitions {
                    if p.error_code == ResponseError::UnknownMemberId.code() {
                        bail!("group {group} has active members: stop its consumers before resetting offsets");
                    }
                    check(
                        p.error_code,
                        None,
                        &format!("committing {}-{}", t.name.0.as_str(), p.partition_index),
                    )?;
                }
            }
            println!("Committed {} offsets for group {group}.", plan.len());
        }
    }
    Ok(())
}
