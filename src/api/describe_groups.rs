//! DescribeGroups (15): state, protocol and members of groups. A group that does not
//! exist is reported `Dead` with no error, as Kafka does; member metadata and
//! assignments are filled in only while the group is stable.

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::group::state::GroupState;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// authorized_operations when the client did not ask for them.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Answers from the coordinator.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DescribeGroupsRequest) -> Pending {
    respond(ctx, async move {
        let groups = req
            .groups
            .iter()
            .map(|id| match broker.groups.describe(&id.0) {
                Err(e) => DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(errors::group_error(&e).code())
                    .with_group_state(sb(GroupState::Dead.name()))
                    .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
                Ok(d) => {
                    let stable = d.state == GroupState::Stable;
                    let members = d
                        .members
                        .iter()
                        .map(|m| {
                            let (metadata, assignment) = if stable {
                                (
                                    m.metadata_for(&d.protocol).cloned().unwrap_or_default(),
                                    m.assignment.clone(),
                                )
                            } else {
                                Default::default()
                            };
                            DescribedGroupMember::default()
                                .with_member_id(sb(m.member_id.clone()))
                                .with_group_instance_id(m.instance_id.clone().map(sb))
                                .with_client_id(sb(m.client_id.clone()))
                                .with_client_host(sb(m.client_host.clone()))
                                .with_member_metadata(metadata)
                                .with_member_assignment(assignment)
                        })
                        .collect();
                    DescribedGroup::default()
                        .with_group_id(id.clone())
                        .with_group_state(sb(d.state.name()))
                        .with_protocol_type(sb(d.protocol_type))
                        .with_protocol_data(sb(d.protocol))
                        .with_members(members)
                        .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    })
}
