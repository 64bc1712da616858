//! Broker registration and producer-id blocks.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::partitions;
use super::partitions::Leave;
use super::BrokerSessions;
use super::ControllerConfig;
use super::ControllerError;
use super::ProducerIdBlock;
use crate::image::MetadataImage;
use crate::records::BrokerEndpoint;
use crate::records::MetadataRecord;

/// A RegisterBroker request.
pub(super) struct Registration {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    pub endpoints: Vec<BrokerEndpoint>,
    pub rack: Option<String>,
}

/// Registers a broker (again). A retry of the current registration (same incarnation,
/// endpoints and rack) gets the epoch it already has; anything else is a new registration
/// with a new, higher epoch. In a cluster with heartbeats the new registration is fenced:
/// if the old one was unfenced, its leaderships move and it leaves the ISRs it can leave,
/// in the same log entry.
pub(super) fn register(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &mut BrokerSessions,
    now_ms: i64,
    reg: Registration,
) -> (Vec<MetadataRecord>, Result<i64, ControllerError>) {
    let Registration {
        broker_id,
        incarnation_id,
        endpoints,
        rack,
    } = reg;
    if broker_id < 0 {
        return (
            Vec::new(),
            Err(ControllerError::InvalidRequest(format!(
                "Broker id {broker_id} is negative; broker ids must be >= 0"
            ))),
        );
    }
    let mut listeners = BTreeSet::new();
    for e in &endpoints {
        if !listeners.insert(e.listener.as_str()) {
            return (
                Vec::new(),
                Err(ControllerError::InvalidRequest(format!(
                    "Broker {broker_id} registered listener {} more than once",
                    e.listener
                ))),
            );
        }
    }
    let fenced = !config.register_brokers_unfenced;
    let mut records = Vec::new();
    if let Some(existing) = image.brokers.get(&broker_id) {
        // A retry of a registration that already went through: same incarnation, same
        // details. Answer with the epoch it got instead of minting a new one (whether or
        // not it has been unfenced or fenced since: heartbeats take care of that).
        if existing.incarnation_id == incarnation_id
            && existing.endpoints == endpoints
            && existing.rack == rack
        {
            return (Vec::new(), Ok(existing.broker_epoch));
        }
        if fenced && !existing.fenced {
            records = partitions::leave_partitions(image, sessions, broker_id, Leave::Fenced);
        }
    }
    let floor = image
        .brokers
        .get(&broker_id)
        .map(|b| b.broker_epoch.saturating_add(1))
        .unwrap_or(0);
    let broker_epoch = image.next_broker_epoch.max(floor);
    records.push(MetadataRecord::RegisterBroker {
        broker_id,
        incarnation_id,
        broker_epoch,
        endpoints,
        rack,
        fenced,
    });
    sessions.registered(broker_id, broker_epoch, now_ms);
    (records, Ok(broker_epoch))
}

pub(super) fn allocate_producer_ids(
    image: &MetadataImage,
    config: &ControllerConfig,
    broker_id: i32,
    broker_epoch: i64,
) -> (
    Vec<MetadataRecord>,
    Result<ProducerIdBlock, ControllerError>,
) {
    match image.brokers.get(&broker_id) {
        None => {
            return (
                Vec::new(),
                Err(ControllerError::StaleBrokerEpoch(format!(
                    "No broker registration found for broker {broker_id}"
                ))),
            )
        }
        Some(b) if b.broker_epoch != broker_epoch => {
            return (
                Vec::new(),
                Err(ControllerError::StaleBrokerEpoch(format!(
                    "Expected broker epoch {}, but got {broker_epoch} for broker {broker_id}",
                    b.broker_epoch
                ))),
            )
        }
        Some(_) => {}
    }
    let size = config.producer_id_block_size;
    if size <= 0 {
        return (
            Vec::new(),
            Err(ControllerError::Internal(format!(
                "producer id block size is {size}; it must be positive"
            ))),
        );
    }
    let first = image.next_producer_id.max(0);
    let Some(next) = first.checked_add(size) else {
        return (
            Vec::new(),
            Err(ControllerError::ProducerIdsExhausted(format!(
                "Exhausted all producerIds as the next block's end producerId would exceed {}",
                i64::MAX
            ))),
        );
    };
    let record = MetadataRecord::ProducerIds {
        broker_id,
        broker_epoch,
        next_producer_id: next,
    };
    (
        vec![record],
        Ok(ProducerIdBlock {
            first_producer_id: first,
            size,
        }),
    )
}
