//! Registers this broker with the controller at start-up, so partitions can be
//! placed on it and clients learn its address from the image.

use keel_raft::controller::{ControllerRequest, ControllerResponse};
use keel_raft::records::BrokerEndpoint;

use crate::broker::Broker;

/// Listener name clients connect through.
pub const CLIENT_LISTENER_NAME: &str = "PLAINTEXT";

/// Registers with a fresh incarnation id; returns the broker epoch.
///
/// # Errors
/// A text naming why the controller refused or could not be reached.
pub async fn register(broker: &Broker) -> Result<i64, String> {
    let req = ControllerRequest::RegisterBroker {
        broker_id: broker.config.node_id,
        incarnation_id: uuid::Uuid::new_v4(),
        endpoints: vec![BrokerEndpoint {
            listener: CLIENT_LISTENER_NAME.to_string(),
            host: broker.config.advertise_host.clone(),
            port: broker.config.advertise_port,
        }],
        rack: broker.config.rack.clone(),
    };
    match broker.submit(req).await {
        Ok(ControllerResponse::RegisterBroker(Ok(epoch))) => {
            broker.set_broker_epoch(epoch);
            Ok(epoch)
        }
        Ok(ControllerResponse::RegisterBroker(Err(e))) => {
            Err(format!("controller refused registration: {e}"))
        }
        Ok(other) => Err(format!("unexpected controller answer {other:?}")),
        Err(e) => Err(format!("cannot reach the controller: {e}")),
    }
}
