//! ListGroups (16): the groups this broker coordinates (clients ask every broker).
//! v4 filters by state, v5 by group type (every keel group is "classic").

use std::sync::Arc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// The type of every group keel runs.
const GROUP_TYPE_CLASSIC: &str = "classic";

/// Answers from the loaded shards.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: ListGroupsRequest) -> Pending {
    respond(ctx, async move {
        let types_ok = req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(GROUP_TYPE_CLASSIC));
        let error = if broker.groups.is_loading() {
            ResponseError::CoordinatorLoadInProgress.code()
        } else {
            0
        };
        let groups = broker
            .groups
            .list_groups()
            .into_iter()
            .filter(|_| types_ok)
            .filter(|g| {
                req.states_filter.is_empty()
                    || req
                        .states_filter
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(sb(g.group_id)))
                    .with_protocol_type(sb(g.protocol_type))
                    .with_group_state(sb(g.state.name()))
                    .with_group_type(sb(GROUP_TYPE_CLASSIC))
            })
            .collect();
        ListGroupsResponse::default()
            .with_error_code(error)
            .with_groups(groups)
    })
}
