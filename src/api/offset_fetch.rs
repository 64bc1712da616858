//! OffsetFetch (9): a group's committed offsets (-1 where nothing is committed).
//! v8+ asks for several groups at once; `topics` null asks for every committed one.

use std::sync::Arc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::VersionRange;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::offsets::CommittedOffset;
use crate::group::{GroupCoordinator, GroupError};
use crate::protocol::RequestContext;

/// Versions served (the codec has none below 1).
pub const VERSIONS: VersionRange = VersionRange { min: 1, max: 9 };

/// v2+ has a top-level error code (coordinator errors go there, not per partition).
const FIRST_VERSION_WITH_TOP_LEVEL_ERROR: i16 = 2;
/// v8+ batches groups.
const FIRST_BATCHED_VERSION: i16 = 8;

type Fetched = Result<Vec<(String, i32, Option<CommittedOffset>)>, GroupError>;

async fn fetch(
    groups: &Arc<GroupCoordinator>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Fetched {
    groups.fetch_offsets(group, topics).await
}

/// Partitions grouped by topic, in first-seen order.
fn by_topic(
    rows: Vec<(String, i32, Option<CommittedOffset>)>,
) -> Vec<(String, Vec<(i32, Option<CommittedOffset>)>)> {
    let mut out: Vec<(String, Vec<(i32, Option<CommittedOffset>)>)> = Vec::new();
    for (t, p, c) in rows {
        match out.iter_mut().find(|(name, _)| *name == t) {
            Some((_, parts)) => parts.push((p, c)),
            None => out.push((t, vec![(p, c)])),
        }
    }
    out
}

fn offset_fields(c: &Option<CommittedOffset>) -> (i64, i32, String) {
    match c {
        Some(c) => (
            c.value.offset,
            c.value.leader_epoch,
            c.value.metadata.clone(),
        ),
        None => (-1, -1, String::new()),
    }
}

/// Answers from the coordinator's committed offsets.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: OffsetFetchRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        if version >= FIRST_BATCHED_VERSION {
            let mut groups = Vec::with_capacity(req.groups.len());
            for g in &req.groups {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                groups.push(match fetch(&broker.groups, &g.group_id.0, topics).await {
                    Err(e) => OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(errors::group_error(&e).code()),
                    Ok(rows) => OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_topics(
                            by_topic(rows)
                                .into_iter()
                                .map(|(t, parts)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(sb(t)))
                                        .with_partitions(
                                            parts
                                                .iter()
                                                .map(|(p, c)| {
                                                    let (o, e, m) = offset_fields(c);
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(*p)
                                                        .with_committed_offset(o)
                                                        .with_committed_leader_epoch(e)
                                                        .with_metadata(Some(sb(m)))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                });
            }
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        match fetch(&broker.groups, &req.group_id.0, requested.clone()).await {
            Err(e) if version >= FIRST_VERSION_WITH_TOP_LEVEL_ERROR => {
                OffsetFetchResponse::default().with_error_code(errors::group_error(&e).code())
            }
            Err(e) => {
                // v1: the error goes on every requested partition.
                let code = errors::group_error(&e).code();
                let topics = requested
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_metadata(Some(sb("")))
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponse::default().with_topics(topics)
            }
            Ok(rows) => OffsetFetchResponse::default().with_topics(
                by_topic(rows)
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partitions(
                                parts
                                    .iter()
                                    .map(|(p, c)| {
                                        let (o, e, m) = offset_fields(c);
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(o)
                                            .with_committed_leader_epoch(e)
                                            .with_metadata(Some(sb(m)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        }
    })
}
