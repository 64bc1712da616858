//! DescribeQuorum (55): the metadata quorum's leader, epoch, high watermark and each
//! voter's and observer's replication progress (KIP-595/KIP-836), as the active
//! controller sees it.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use keel_raft::quorum::{MemberRole, MemberStatus, MetadataQuorum, QuorumStatus};

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::protocol::RequestContext;
use crate::replication::manager::now_ms;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// The metadata log's name in Kafka's protocol.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// How long to wait for the active controller's own view.
const LEADER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Listener name of controller endpoints.
const CONTROLLER_LISTENER: &str = "CONTROLLER";

/// Answers for partition 0 of `__cluster_metadata`; anything else is unknown.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DescribeQuorumRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        let asks_metadata_log = req.topics.iter().any(|t| {
            t.topic_name.0.as_str() == METADATA_TOPIC
                && t.partitions.iter().any(|p| p.partition_index == 0)
        });
        if !asks_metadata_log {
            return DescribeQuorumResponse::default()
                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
        }
        let local = broker.quorum.status();
        let status = leader_view(local).await;
        let Some(status) = status else {
            return DescribeQuorumResponse::default()
                .with_error_code(ResponseError::NotLeaderOrFollower.code());
        };
        let now = now_ms();
        let replica = |m: &MemberStatus| {
            let contact = m.last_contact_ms.map(|ms| now - ms as i64).unwrap_or(-1);
            ReplicaState::default()
                .with_replica_id(BrokerId(m.node_id as i32))
                .with_log_end_offset(m.matched_index.map(|i| i as i64).unwrap_or(-1))
                .with_last_fetch_timestamp(contact)
                .with_last_caught_up_timestamp(if m.lag == Some(0) { contact } else { -1 })
        };
        let voters = status
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .map(replica)
            .collect();
        let observers = status
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Observer)
            .map(replica)
            .collect();
        let partition = PartitionData::default()
            .with_partition_index(0)
            .with_leader_id(BrokerId(status.leader_id.map(|l| l as i32).unwrap_or(-1)))
            .with_leader_epoch(status.current_term as i32)
            .with_high_watermark(status.committed_index.map(|i| i as i64).unwrap_or(-1))
            .with_current_voters(voters)
            .with_observers(observers);
        let mut resp = DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(sb(METADATA_TOPIC)))
            .with_partitions(vec![partition])]);
        if version >= 2 {
            resp.nodes = status
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Voter)
                .filter_map(|m| {
                    let (host, port) = m.addr.rsplit_once(':')?;
                    Some(
                        Node::default()
                            .with_node_id(BrokerId(m.node_id as i32))
                            .with_listeners(vec![Listener::default()
                                .with_name(sb(CONTROLLER_LISTENER))
                                .with_host(sb(host))
                                .with_port(port.parse().ok()?)]),
                    )
                })
                .collect();
        }
        resp
    })
}

/// The quorum as the active controller reports it (it alone knows each member's
/// progress); this node's own view if it is the controller or the leader is unreachable.
async fn leader_view(local: QuorumStatus) -> Option<QuorumStatus> {
    let leader = local.leader_id?;
    if leader == local.node_id {
        return Some(local);
    }
    let addr = local.voters.get(&leader).cloned()?;
    Some(
        MetadataQuorum::remote_status(&addr, LEADER_STATUS_TIMEOUT)
            .await
            .unwrap_or(local),
    )
}
