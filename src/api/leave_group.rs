//! LeaveGroup (13): members leave (v3+: several at once, static members by instance
//! id), which starts a rebalance for the others.

use std::sync::Arc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v3+ names members in a list.
const FIRST_BATCHED_VERSION: i16 = 3;

/// Removes the members and answers per member (v3+) or for the one member.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: LeaveGroupRequest) -> Pending {
    let version = ctx.api_version;
    let members: Vec<(String, Option<String>)> = if version >= FIRST_BATCHED_VERSION {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let group_id = req.group_id.0.to_string();
    let left = broker.groups.leave(&group_id, &members);
    respond(ctx, async move {
        match left {
            Err(e) => LeaveGroupResponse::default().with_error_code(errors::group_error(&e).code()),
            Ok(results) if version < FIRST_BATCHED_VERSION => LeaveGroupResponse::default()
                .with_error_code(errors::group_error_code(
                    results.into_iter().next().and_then(|r| r.err()).as_ref(),
                )),
            Ok(results) => LeaveGroupResponse::default().with_members(
                members
                    .into_iter()
                    .zip(results)
                    .map(|((member_id, instance_id), r)| {
                        MemberResponse::default()
                            .with_member_id(sb(member_id))
                            .with_group_instance_id(instance_id.map(sb))
                            .with_error_code(errors::group_error_code(r.err().as_ref()))
                    })
                    .collect(),
            ),
        }
    })
}
