//! OffsetForLeaderEpoch (23): where a leader epoch ends in the leader's log.
//!
//! Followers ask it before fetching after a leader change, and truncate whatever they
//! hold beyond it (a tail the new leader never had). Consumers ask it too, to detect a
//! log that was truncated under them (KIP-320). Only the leader answers.

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 2, max: 4 };

/// Answers every partition from the leader's epoch cache.
pub fn handle(
    broker: Arc<Broker>,
    ctx: RequestContext,
    req: OffsetForLeaderEpochRequest,
) -> Pending {
    respond(ctx, async move {
        let image = broker.image();
        let topics = req
            .topics
            .into_iter()
            .map(|t| {
                let name = t.topic.0.to_string();
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let out = EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                        let known = image
                            .topic_by_name(&name)
                            .is_some_and(|t| t.partitions.contains_key(&p.partition));
                        if !known {
                            return out
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        }
                        let Some(replica) = broker.replicas.get_by_name(&name, p.partition) else {
                            return out.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        };
                        if let Some(e) =
                            errors::check_leadership(p.current_leader_epoch, replica.role())
                        {
                            return out.with_error_code(e.code());
                        }
                        let (epoch, end) = replica.end_offset_for_epoch(p.leader_epoch);
                        out.with_leader_epoch(epoch).with_end_offset(end)
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions)
            })
            .collect();
        OffsetForLeaderEpochResponse::default().with_topics(topics)
    })
}
