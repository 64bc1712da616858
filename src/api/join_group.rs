//! JoinGroup (11): a member joins (or rejoins) a group and, once the join phase ends,
//! learns the generation, the selected protocol and the leader; the leader also gets
//! every member's metadata to compute the assignment from. The request is parked in
//! the coordinator until then (up to the rebalance timeout).

use std::sync::Arc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::member::{JoinRequest, JoinResult};
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 9 };

/// v4+: a first join must come back with the member id the coordinator gives it.
const FIRST_VERSION_REQUIRING_MEMBER_ID: i16 = 4;
/// v1+ carries a rebalance timeout; v0 uses the session timeout.
const FIRST_VERSION_WITH_REBALANCE_TIMEOUT: i16 = 1;
/// v7+ has nullable protocol names (older ones carry "" instead of null).
const FIRST_VERSION_NULLABLE_PROTOCOL: i16 = 7;
/// v9+ can tell a rejoining static leader to skip the assignment.
const FIRST_VERSION_SKIP_ASSIGNMENT: i16 = 9;

/// Parks the join in the coordinator and answers when the join phase ends.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: JoinGroupRequest) -> Pending {
    let version = ctx.api_version;
    let client_id = ctx.client_id.clone();
    let client_host = format!("/{}", ctx.peer.ip());
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= FIRST_VERSION_WITH_REBALANCE_TIMEOUT {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        client_id,
        client_host,
        require_known_member_id: version >= FIRST_VERSION_REQUIRING_MEMBER_ID,
        supports_skip_assignment: version >= FIRST_VERSION_SKIP_ASSIGNMENT,
    };
    let group_id = req.group_id.0.to_string();
    // The membership change happens now, in request order; the answer may wait.
    let joined = broker.groups.join(&group_id, join);
    respond(ctx, async move {
        let result = joined.await;
        if let Some(e) = &result.error {
            tracing::debug!(group = %group_id, member = %result.member_id, "join refused: {e}");
        }
        response(result, version)
    })
}

fn response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let protocol_name = match r.protocol_name {
        None if version < FIRST_VERSION_NULLABLE_PROTOCOL => Some(sb("")),
        other => other.map(sb),
    };
    JoinGroupResponse::default()
        .with_error_code(errors::group_error_code(r.error.as_ref()))
        .with_generation_id(r.generation)
        .with_protocol_type(r.protocol_type.map(sb))
        .with_protocol_name(protocol_name)
        .with_leader(sb(r.leader))
        .with_skip_assignment(r.skip_assignment && version >= FIRST_VERSION_SKIP_ASSIGNMENT)
        .with_member_id(sb(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(sb(m.member_id))
                        .with_group_instance_id(m.instance_id.map(sb))
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}
