//! DeleteRecords (21): move a partition's log start offset forward.
//!
//! The leader deletes at once, then waits (up to the request's timeout) until its low
//! watermark — the smallest log start offset over itself and the in-sync followers,
//! reported in their fetches — covers the offset, as Kafka's `DelayedDeleteRecords`:
//! an answer of success means no replica that can become leader still serves the
//! deleted records. Past the timeout the partition answers REQUEST_TIMED_OUT; the
//! deletion stands and the followers catch up on their next fetches.

use std::sync::Arc;
use std::time::Duration;

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
use crate::replication::partition::Partition;
use crate::topic_config;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// Offset meaning "up to the high watermark".
const DELETE_UP_TO_HIGH_WATERMARK: i64 = -1;

/// How often a waiting DeleteRecords looks at the low watermark even without a
/// wake-up (an ISR shrink that drops a lagging follower does not signal one).
const LOW_WATERMARK_RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// One partition's outcome: answered, or deleted on the leader and waiting for the
/// low watermark to reach `target`.
enum Step {
    Done(DeleteRecordsPartitionResult),
    Waiting {
        out: DeleteRecordsPartitionResult,
        replica: Arc<Partition>,
        target: i64,
    },
}

/// Waits until `replica`'s low watermark covers `target`; returns it.
async fn wait_for_low_watermark(
    replica: &Partition,
    target: i64,
    deadline: tokio::time::Instant,
) -> Result<i64, ResponseError> {
    loop {
        let changed = replica.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match replica.low_watermark() {
            None => return Err(ResponseError::NotLeaderOrFollower),
            Some(low) if low >= target => return Ok(low),
            Some(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ResponseError::RequestTimedOut);
        }
        let recheck = deadline.min(now + LOW_WATERMARK_RECHECK_INTERVAL);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(recheck) => {}
        }
    }
}

/// Deletes records below the requested offsets.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DeleteRecordsRequest) -> Pending {
    respond(ctx, async move {
        let wait = Duration::from_millis(req.timeout_ms.max(0) as u64)
            .min(broker.config.request_timeout_max);
        let deadline = tokio::time::Instant::now() + wait;
        let image = broker.image();
        let steps: Vec<(_, Vec<Step>)> = req
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
                            return Step::Done(
                                out.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                            );
                        };
                        // As Kafka: a compacted-only topic keeps every key's latest
                        // value (committed offsets, changelogs); cutting its head would
                        // drop keys, so only topics with the delete policy allow it.
                        let policy =
                            topic_config::log_config(&broker.config, &image, &name).cleanup_policy;
                        if !policy.delete {
                            return Step::Done(
                                out.with_error_code(ResponseError::PolicyViolation.code()),
                            );
                        }
                        let Some(replica) = broker
                            .replicas
                            .get_by_name(&name, p.partition_index)
                            .filter(|r| r.is_leader())
                        else {
                            return Step::Done(
                                out.with_error_code(ResponseError::NotLeaderOrFollower.code()),
                            );
                        };
                        let hw = replica.high_watermark();
                        let target = if p.offset == DELETE_UP_TO_HIGH_WATERMARK {
                            hw
                        } else {
                            p.offset
                        };
                        if target < 0 || target > hw {
                            return Step::Done(
                                out.with_low_watermark(replica.log_start_offset())
                                    .with_error_code(ResponseError::OffsetOutOfRange.code()),
                            );
                        }
                        match tokio::task::block_in_place(|| replica.delete_records_before(target))
                        {
                            Ok(_) => Step::Waiting {
                                out,
                                replica,
                                target,
                            },
                            Err(e) => Step::Done(out.with_error_code(errors::log_error(&e).code())),
                        }
                    })
                    .collect();
                (topic.name, partitions)
            })
            .collect();
        let mut topics = Vec::with_capacity(steps.len());
        for (name, partitions) in steps {
            let mut results = Vec::with_capacity(partitions.len());
            for step in partitions {
                results.push(match step {
                    Step::Done(out) => out,
                    Step::Waiting {
                        out,
                        replica,
                        target,
                    } => match wait_for_low_watermark(&replica, target, deadline).await {
                        Ok(low) => out.with_low_watermark(low),
                        Err(e) => out.with_error_code(e.code()),
                    },
                });
            }
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(name)
                    .with_partitions(results),
            );
        }
        DeleteRecordsResponse::default().with_topics(topics)
    })
}
