//! ElectLeaders (43): move leadership back to the preferred replica, or elect an
//! out-of-sync replica of a leaderless partition (unclean: may lose acknowledged
//! records). Forwarded to the controller partition by partition.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::controller::{ControllerRequest, ControllerResponse};

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// election_type of an unclean election (0 is preferred).
const ELECTION_TYPE_UNCLEAN: i8 = 1;

/// Runs the election for every named partition (every partition when none is named).
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: ElectLeadersRequest) -> Pending {
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let unclean = ctx.api_version >= 1 && req.election_type == ELECTION_TYPE_UNCLEAN;
    respond(ctx, async move {
        let image = broker.image();
        let wanted: Vec<(String, i32)> = match req.topic_partitions {
            Some(topics) => topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.topic.0.to_string();
                    t.partitions.into_iter().map(move |p| (name.clone(), p))
                })
                .collect(),
            // Every partition: as Kafka, only those whose election is needed are
            // tried and reported (a preferred election where the preferred replica
            // leads, or an unclean one where a leader exists, is left out).
            None => image
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .filter(|(_, p)| {
                            if unclean {
                                p.leader < 0
                            } else {
                                p.replicas.first().is_some_and(|r| *r != p.leader)
                            }
                        })
                        .map(|(i, _)| (t.name.clone(), *i))
                })
                .collect(),
        };
        let mut results: Vec<ReplicaElectionResult> = Vec::new();
        for (name, partition) in wanted {
            let out = PartitionResult::default().with_partition_id(partition);
            let topic_id = image
                .topic_by_name(&name)
                .filter(|t| t.partitions.contains_key(&partition))
                .map(|t| t.topic_id);
            let result = match topic_id {
                None => Err((
                    ResponseError::UnknownTopicOrPartition,
                    format!("no partition {name}-{partition}"),
                )),
                Some(topic_id) => {
                    let request = ControllerRequest::ElectLeaders {
                        topic_id,
                        partition,
                        unclean,
                    };
                    match broker.submit_within(request, timeout).await {
                        Ok(ControllerResponse::ElectLeaders(r)) => {
                            r.map(|_| ()).map_err(|e| errors::controller_error(&e))
                        }
                        Ok(other) => Err((
                            ResponseError::UnknownServerError,
                            format!("unexpected controller answer {other:?}"),
                        )),
                        Err(e) => Err(errors::quorum_error(&e)),
                    }
                }
            };
            let out = match result {
                Ok(()) => out,
                Err((code, message)) => out
                    .with_error_code(code.code())
                    .with_error_message(Some(sb(message))),
            };
            match results.last_mut() {
                Some(r) if r.topic.0.as_str() == name => r.partition_result.push(out),
                _ => results.push(
                    ReplicaElectionResult::default()
                        .with_topic(TopicName(sb(name)))
                        .with_partition_result(vec![out]),
                ),
            }
        }
        ElectLeadersResponse::default().with_replica_election_results(results)
    })
}
