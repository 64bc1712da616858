//! ListOffsets (2): earliest, latest, max-timestamp, and offset-for-timestamp.
//!
//! Lookups by timestamp find the first batch whose max timestamp reaches the target
//! through the time index, then decode that one batch to find the exact record: the
//! only place outside tests where keel looks inside a batch.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;
use crate::replication::Partition;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 1, max: 8 };

/// Special timestamp: the next offset (high watermark / last stable offset).
pub const LATEST_TIMESTAMP: i64 = -1;
/// Special timestamp: the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// Special timestamp: the record with the largest timestamp (v7+).
pub const MAX_TIMESTAMP: i64 = -3;
/// Special timestamp: the earliest offset on local storage (v8+); no tiering here.
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// Answers every partition.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: ListOffsetsRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        let image = broker.image();
        let node = broker.config.node_id;
        let topics = req
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let resp = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1);
                        let meta = image
                            .topic_by_name(&name)
                            .and_then(|t| t.partitions.get(&p.partition_index));
                        let Some(meta) = meta else {
                            return resp
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        };
                        let replica = broker.replicas.get_by_name(&name, p.partition_index);
                        let Some(replica) = replica.filter(|_| meta.leader == node) else {
                            return resp.with_error_code(ResponseError::NotLeaderOrFollower.code());
                        };
                        if let Some(e) =
                            errors::check_leader_epoch(p.current_leader_epoch, meta.leader_epoch)
                        {
                            return resp.with_error_code(e.code());
                        }
                        match lookup(&replica, p.timestamp) {
                            Ok(Some((offset, timestamp))) => {
                                let resp = resp.with_offset(offset).with_timestamp(timestamp);
                                // The leader epoch field exists from v4.
                                if version >= 4 {
                                    resp.with_leader_epoch(meta.leader_epoch)
                                } else {
                                    resp
                                }
                            }
                            Ok(None) => resp,
                            Err(e) => resp.with_error_code(e.code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    })
}

/// (offset, timestamp) for a ListOffsets timestamp, `None` when no record qualifies.
fn lookup(replica: &Partition, timestamp: i64) -> Result<Option<(i64, i64)>, ResponseError> {
    let hw = replica.high_watermark();
    match timestamp {
        LATEST_TIMESTAMP => Ok(Some((hw, -1))),
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => Ok(Some((replica.log_start_offset(), -1))),
        MAX_TIMESTAMP => {
            let found = replica
                .log()
                .find_batch_with_max_timestamp()
                .map_err(|e| errors::log_error(&e))?;
            Ok(found
                .and_then(|(_, batch)| max_timestamp_record(batch))
                .filter(|(o, _)| *o < hw))
        }
        t if t < 0 => Err(ResponseError::InvalidRequest),
        t => {
            let found = replica
                .log()
                .find_batch_by_timestamp(t)
                .map_err(|e| errors::log_error(&e))?;
            Ok(found
                .and_then(|(_, batch)| first_record_at_or_after(batch, t))
                .filter(|(o, _)| *o < hw))
        }
    }
}

fn decode(batch: Bytes) -> Option<Vec<(i64, i64)>> {
    let mut buf = batch;
    match RecordBatchDecoder::decode(&mut buf) {
        Ok(set) => Some(
            set.records
                .iter()
                .map(|r| (r.offset, r.timestamp))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!("cannot decode batch for a timestamp lookup: {e}");
            None
        }
    }
}

fn first_record_at_or_after(batch: Bytes, ts: i64) -> Option<(i64, i64)> {
    decode(batch)?.into_iter().find(|(_, t)| *t >= ts)
}

fn max_timestamp_record(batch: Bytes) -> Option<(i64, i64)> {
    // The first record holding the largest timestamp, as Kafka answers.
    decode(batch)?
        .into_iter()
        .fold(None, |best, (o, t)| match best {
            Some((_, bt)) if bt >= t => best,
            _ => Some((o, t)),
        })
}
