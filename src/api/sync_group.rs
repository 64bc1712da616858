//! SyncGroup (14): the leader hands in the assignment of every member, and every
//! member gets its own once the assignment is stored in `__consumer_offsets`.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// Parks the sync in the coordinator and answers with the member's assignment.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: SyncGroupRequest) -> Pending {
    let group_id = req.group_id.0.to_string();
    let member_id = req.member_id.to_string();
    let instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
    let protocol_type = req.protocol_type.as_ref().map(|s| s.to_string());
    let protocol_name = req.protocol_name.as_ref().map(|s| s.to_string());
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let synced = broker.groups.sync(
        &group_id,
        &member_id,
        instance_id.as_deref(),
        req.generation_id,
        protocol_type.as_deref(),
        protocol_name.as_deref(),
        assignments,
    );
    respond(ctx, async move {
        let result = synced.await;
        if let Some(e) = &result.error {
            tracing::debug!(group = %group_id, member = %member_id, "sync refused: {e}");
        }
        SyncGroupResponse::default()
            .with_error_code(errors::group_error_code(result.error.as_ref()))
            .with_protocol_type(result.protocol_type.map(sb))
            .with_protocol_name(result.protocol_name.map(sb))
            .with_assignment(result.assignment)
    })
}
