//! Heartbeat (12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to
//! rejoin.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

/// Answers from the coordinator's state.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: HeartbeatRequest) -> Pending {
    let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
    let result = broker.groups.heartbeat(
        &req.group_id.0,
        &req.member_id,
        instance.as_deref(),
        req.generation_id,
    );
    respond(ctx, async move {
        HeartbeatResponse::default()
            .with_error_code(errors::group_error_code(result.err().as_ref()))
    })
}
