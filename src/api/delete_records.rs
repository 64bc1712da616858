//! DeleteRecords (21): move a partition's log start offset forward.

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;
use crate::topic_config;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// Offset meaning "up to the high watermark".
const DELETE_UP_TO_HIGH_WATERMARK: i64 = -1;

/// Deletes records below the requested offsets.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DeleteRecordsRequest) -> Pending {
    respond(ctx, async move {
        let image = broker.image();
        let topics = req
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let out = DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(-1);
                        let meta = image
                            .topic_by_name(&name)
                            .and_then(|t| t.partitions.get(&p.partition_index));
                        if meta.is_none() {
                            return out
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        };
                        // As Kafka: a compacted-only topic keeps every key's latest
                        // value (committed offsets, changelogs); cutting its head would
                        // drop keys, so only topics with the delete policy allow it.
                        let policy =
                            topic_config::log_config(&broker.config, &image, &name).cleanup_policy;
                        if !policy.delete {
                            return out.with_error_code(ResponseError::PolicyViolation.code());
                        }
                        let Some(replica) = broker
                            .replicas
                            .get_by_name(&name, p.partition_index)
                            .filter(|r| r.is_leader())
                        else {
                            return out.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        };
                        let hw = replica.high_watermark();
                        let target = if p.offset == DELETE_UP_TO_HIGH_WATERMARK {
                            hw
                        } else {
                            p.offset
                        };
                        if target < 0 || target > hw {
                            return out
                                .with_low_watermark(replica.log_start_offset())
                                .with_error_code(ResponseError::OffsetOutOfRange.code());
                        }
                        match tokio::task::block_in_place(|| replica.delete_records_before(target))
                        {
                            Ok(start) => out.with_low_watermark(start),
                            Err(e) => out.with_error_code(errors::log_error(&e).code()),
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        DeleteRecordsResponse::default().with_topics(topics)
    })
}
