//! InitProducerId (22): hand an idempotent producer its id and epoch.
//!
//! Ids come from blocks the controller allocates (`txn::producer_ids`). Transactional
//! producers need a transaction coordinator, which keel does not have yet: they get
//! COORDINATOR_NOT_AVAILABLE with a message saying so.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, Pending};
use crate::broker::Broker;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

/// Allocates a fresh producer id with epoch 0.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: InitProducerIdRequest) -> Pending {
    respond(ctx, async move {
        let fail = |e: ResponseError| {
            InitProducerIdResponse::default()
                .with_error_code(e.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        };
        if req.transactional_id.is_some() {
            tracing::info!("transactional producers are not supported yet");
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        match broker.producer_ids.next(&broker).await {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => fail(e),
        }
    })
}
