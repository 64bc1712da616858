//! OffsetCommit (8): a group's consumers store how far they have read. A commit is
//! acknowledged only once its record in `__consumer_offsets` is replicated like an
//! acks=all write; OffsetFetch sees it from then on.

use std::sync::Arc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::log_format::OffsetValue;
use crate::group::{CommitEntry, GroupError};
use crate::protocol::RequestContext;
use crate::replication::manager::now_ms;

/// Versions served (the codec has none below 2; v9 is v8 for classic groups).
pub const VERSIONS: VersionRange = VersionRange { min: 2, max: 9 };

/// v6+ carries the leader epoch of the committed offset.
const FIRST_VERSION_WITH_LEADER_EPOCH: i16 = 6;

/// Validates each partition, commits the valid ones, answers per partition.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: OffsetCommitRequest) -> Pending {
    let version = ctx.api_version;
    {
        let image = broker.image();
        let max_metadata = broker.config.groups.offset_metadata_max_bytes;
        let now = now_ms();
        // (topic index, partition index, error) for every partition; valid ones are
        // committed together.
        let mut results: Vec<Vec<(i32, Option<GroupError>)>> = Vec::new();
        let mut entries = Vec::new();
        let mut slots = Vec::new();
        for (ti, topic) in req.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let meta = image.topic_by_name(&name);
            let mut parts = Vec::new();
            for p in &topic.partitions {
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let error = if meta.is_none_or(|t| !t.partitions.contains_key(&p.partition_index)) {
                    Some(GroupError::UnknownTopicOrPartition)
                } else if metadata.len() > max_metadata {
                    Some(GroupError::OffsetMetadataTooLarge {
                        got: metadata.len(),
                        max: max_metadata,
                    })
                } else {
                    None
                };
                if error.is_none() {
                    slots.push((ti, parts.len()));
                    entries.push(CommitEntry {
                        topic: name.clone(),
                        partition: p.partition_index,
                        value: OffsetValue {
                            offset: p.committed_offset,
                            leader_epoch: if version >= FIRST_VERSION_WITH_LEADER_EPOCH {
                                p.committed_leader_epoch
                            } else {
                                -1
                            },
                            metadata,
                            commit_timestamp_ms: now,
                            expire_timestamp_ms: -1,
                        },
                    });
                }
                parts.push((p.partition_index, error));
            }
            results.push(parts);
        }
        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
        // Validated and appended now, in request order (an OffsetFetch after it on the
        // same connection waits for it); the answer waits for replication.
        let committed = broker.groups.commit_offsets(
            &req.group_id.0,
            &req.member_id,
            instance.as_deref(),
            req.generation_id_or_member_epoch,
            entries,
        );
        respond(ctx, async move {
            let outcome = committed.await;
            if let Err(e) = &outcome {
                tracing::debug!(group = %req.group_id.0, "offset commit refused: {e}");
                for (ti, pi) in slots {
                    results[ti][pi].1 = Some(e.clone());
                }
            }
            let topics = req
                .topics
                .iter()
                .zip(results)
                .map(|(t, parts)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(index, e)| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(
                                            e.map_or(0, |e| errors::group_error(&e).code()),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetCommitResponse::default().with_topics(topics)
        })
    }
}
