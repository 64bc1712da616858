//! DeleteGroups (42): deletes empty groups and their committed offsets
//! (NON_EMPTY_GROUP while members remain, GROUP_ID_NOT_FOUND for unknown groups).

use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::errors;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// Deletes each group in turn and answers per group.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DeleteGroupsRequest) -> Pending {
    let deletions: Vec<_> = req
        .groups_names
        .iter()
        .map(|id| broker.groups.delete_group(&id.0))
        .collect();
    respond(ctx, async move {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for (id, deletion) in req.groups_names.iter().zip(deletions) {
            let outcome = deletion.await;
            if let Err(e) = &outcome {
                tracing::debug!(group = %id.0, "group not deleted: {e}");
            }
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id.clone())
                    .with_error_code(errors::group_error_code(outcome.err().as_ref())),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    })
}
