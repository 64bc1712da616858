//! OffsetDelete (47): removes a group's committed offsets for topics it no longer
//! consumes (GROUP_SUBSCRIBED_TO_TOPIC for those it does).

use std::sync::Arc;

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

/// Tombstones the offsets and answers per partition.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: OffsetDeleteRequest) -> Pending {
    let image = broker.image();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let meta = image.topic_by_name(&t.name.0);
        for p in &t.partitions {
            if meta.is_some_and(|m| m.partitions.contains_key(&p.partition_index)) {
                wanted.push((t.name.0.to_string(), p.partition_index));
            }
        }
    }
    let deleting = broker.groups.delete_offsets(&req.group_id.0, wanted);
    respond(ctx, async move {
        let outcome = deleting.await;
        let results = match outcome {
            Err(e) => {
                return OffsetDeleteResponse::default()
                    .with_error_code(errors::group_error(&e).code())
            }
            Ok(r) => r,
        };
        let topics = req
            .topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let key = (t.name.0.to_string(), p.partition_index);
                        let code = match results.iter().find(|(k, _)| *k == key) {
                            Some((_, Ok(()))) => 0,
                            Some((_, Err(e))) => errors::group_error(e).code(),
                            None => ResponseError::UnknownTopicOrPartition.code(),
                        };
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect();
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(parts)
            })
            .collect();
        OffsetDeleteResponse::default().with_topics(topics)
    })
}
