//! Producer-id allocation: this broker hands out ids from a block the controller
//! reserved for it in the metadata log, and asks for a new block when it runs out, so
//! two brokers (or one broker before and after a restart) never hand out the same id.

use kafka_protocol::ResponseError;
use keel_raft::controller::{ControllerRequest, ControllerResponse};
use tokio::sync::Mutex;

use crate::broker::Broker;
use crate::errors;

/// Ids left in the current block: `[next, end)`.
#[derive(Default)]
struct Block {
    next: i64,
    end: i64,
}

/// Hands out producer ids.
#[derive(Default)]
pub struct ProducerIdAllocator {
    block: Mutex<Block>,
}

impl ProducerIdAllocator {
    /// The next unused producer id.
    ///
    /// # Errors
    /// The controller could not allocate a block (retriable for the client).
    pub async fn next(&self, broker: &Broker) -> Result<i64, ResponseError> {
        let mut block = self.block.lock().await;
        if block.next >= block.end {
            let req = ControllerRequest::AllocateProducerIds {
                broker_id: broker.config.node_id,
                broker_epoch: broker.broker_epoch(),
            };
            match broker.submit(req).await {
                Ok(ControllerResponse::AllocateProducerIds(Ok(b))) => {
                    block.next = b.first_producer_id;
                    block.end = b.first_producer_id + b.size;
                }
                Ok(ControllerResponse::AllocateProducerIds(Err(e))) => {
                    tracing::warn!("producer id block refused: {e}");
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
                Ok(_) => return Err(ResponseError::CoordinatorNotAvailable),
                Err(e) => {
                    tracing::warn!("producer id block allocation failed: {e}");
                    let (code, _) = errors::quorum_error(&e);
                    return Err(if code.is_retriable() {
                        code
                    } else {
                        ResponseError::CoordinatorNotAvailable
                    });
                }
            }
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}
