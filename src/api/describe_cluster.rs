//! DescribeCluster (60): cluster id, controller and brokers.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

use super::{respond, sb, Pending};
use crate::broker::Broker;
use crate::protocol::RequestContext;

/// Versions served.
pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// Endpoint type "brokers" (v1); "controllers" is not served to clients.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

/// Answers from the image.
pub fn handle(broker: Arc<Broker>, ctx: RequestContext, req: DescribeClusterRequest) -> Pending {
    let version = ctx.api_version;
    respond(ctx, async move {
        if version >= 1 && req.endpoint_type != ENDPOINT_TYPE_BROKERS {
            return DescribeClusterResponse::default()
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(sb("only broker endpoints are served")))
                .with_endpoint_type(req.endpoint_type)
                .with_cluster_id(sb(broker.cluster_id.clone()));
        }
        let image = broker.image();
        // v2 can ask for fenced brokers too, each marked as such.
        let include_fenced = version >= 2 && req.include_fenced_brokers;
        let brokers = image
            .brokers
            .values()
            .filter(|b| include_fenced || !b.fenced)
            .filter_map(|b| {
                let ep = b.endpoints.first()?;
                Some(
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.broker_id))
                        .with_host(sb(ep.host.clone()))
                        .with_port(ep.port as i32)
                        .with_rack(b.rack.clone().map(sb))
                        .with_is_fenced(b.fenced),
                )
            })
            .collect();
        let mut resp = DescribeClusterResponse::default()
            .with_cluster_id(sb(broker.cluster_id.clone()))
            .with_controller_id(BrokerId(broker.controller_id()))
            .with_brokers(brokers);
        if version >= 1 {
            resp = resp.with_endpoint_type(ENDPOINT_TYPE_BROKERS);
        }
        resp
    })
}
