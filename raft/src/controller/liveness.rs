//! Broker liveness: heartbeats, fencing silent brokers, unfencing caught-up ones, controlled
//! shutdown and operator removal.
//!
//! The decisions (which broker is fenced, who leads next) are made here from the image and
//! the [`BrokerSessions`]; they reach the log as FenceBroker / UnfenceBroker /
//! UnregisterBroker and PartitionChange records, so every node's replay is deterministic.

use super::partitions;
use super::partitions::Leave;
use super::BrokerSessions;
use super::ControllerConfig;
use super::ControllerError;
use super::HeartbeatReply;
use crate::image::MetadataImage;
use crate::records::MetadataRecord;

/// A broker heartbeat (see [`super::ControllerRequest::BrokerHeartbeat`]).
pub(super) struct Heartbeat {
    pub broker_id: i32,
    pub broker_epoch: i64,
    pub current_metadata_offset: u64,
    pub want_fence: bool,
    pub want_shutdown: bool,
}

fn stale_epoch(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
) -> Option<ControllerError> {
    match image.brokers.get(&broker_id) {
        None => Some(ControllerError::StaleBrokerEpoch(format!(
            "No broker registration found for broker {broker_id}"
        ))),
        Some(b) if b.broker_epoch != broker_epoch => {
            Some(ControllerError::StaleBrokerEpoch(format!(
                "Expected broker epoch {}, but got {broker_epoch} for broker {broker_id}",
                b.broker_epoch
            )))
        }
        Some(_) => None,
    }
}

/// Applies `records` to a copy of `image`, for decisions that depend on their outcome.
fn after(image: &MetadataImage, records: &[MetadataRecord]) -> MetadataImage {
    let mut next = image.clone();
    for r in records {
        next.apply(r);
    }
    next
}

/// The records that fence `broker_id` (registered with `broker_epoch`) in `image`: the
/// FenceBroker record, then the partition changes that take it out of ISRs and
/// leaderships.
pub(super) fn fence(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    broker_id: i32,
    broker_epoch: i64,
) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::FenceBroker {
        broker_id,
        broker_epoch,
    }];
    let fenced = after(image, &records);
    records.extend(partitions::leave_partitions(
        &fenced,
        sessions,
        broker_id,
        Leave::Fenced,
    ));
    records
}

/// Handles one heartbeat: renews the session, then fences (on request), unfences (once
/// caught up) or moves leaderships away (controlled shutdown).
pub(super) fn heartbeat(
    image: &MetadataImage,
    sessions: &mut BrokerSessions,
    now_ms: i64,
    hb: Heartbeat,
) -> (Vec<MetadataRecord>, Result<HeartbeatReply, ControllerError>) {
    if let Some(e) = stale_epoch(image, hb.broker_id, hb.broker_epoch) {
        return (Vec::new(), Err(e));
    }
    let fenced = image.brokers.get(&hb.broker_id).is_some_and(|b| b.fenced);
    let session = sessions.session_mut(hb.broker_id, hb.broker_epoch, now_ms);
    session.last_contact_ms = session.last_contact_ms.max(now_ms);
    let caught_up = session
        .registered_at_index
        .is_some_and(|index| hb.current_metadata_offset >= index);
    if hb.want_shutdown {
        session.shutting_down = true;
    }
    let shutting_down = session.shutting_down;

    let mut records = Vec::new();
    if hb.want_shutdown {
        if !fenced {
            records = partitions::leave_partitions(image, sessions, hb.broker_id, Leave::Shutdown);
        }
    } else if hb.want_fence {
        if !fenced {
            records = fence(image, sessions, hb.broker_id, hb.broker_epoch);
        }
    } else if fenced && caught_up && !shutting_down {
        records.push(MetadataRecord::UnfenceBroker {
            broker_id: hb.broker_id,
            broker_epoch: hb.broker_epoch,
        });
        let unfenced = after(image, &records);
        records.extend(partitions::lead_leaderless(&unfenced, hb.broker_id));
    }

    let next = after(image, &records);
    let is_fenced = next.brokers.get(&hb.broker_id).is_some_and(|b| b.fenced);
    let should_shut_down = hb.want_shutdown && leads_nothing_movable(&next, sessions, hb.broker_id);
    let reply = HeartbeatReply {
        is_caught_up: caught_up,
        is_fenced,
        should_shut_down,
    };
    (records, Ok(reply))
}

/// Whether every partition `broker_id` leads has no other eligible ISR member.
fn leads_nothing_movable(image: &MetadataImage, sessions: &BrokerSessions, broker_id: i32) -> bool {
    image.topics.values().all(|t| {
        t.partitions.values().all(|p| {
            p.leader != broker_id
                || !p
                    .isr
                    .iter()
                    .any(|r| *r != broker_id && partitions::is_eligible(image, sessions, *r))
        })
    })
}

/// Removes a broker for good: its leaderships move, it leaves every ISR it can leave, and
/// its registration is deleted.
///
/// # Errors
/// [`ControllerError::BrokerIdNotRegistered`] if no broker `broker_id` is registered.
pub(super) fn unregister(
    image: &MetadataImage,
    sessions: &mut BrokerSessions,
    broker_id: i32,
) -> (Vec<MetadataRecord>, Result<(), ControllerError>) {
    let Some(broker) = image.brokers.get(&broker_id) else {
        return (
            Vec::new(),
            Err(ControllerError::BrokerIdNotRegistered(format!(
                "Broker ID not registered: {broker_id}"
            ))),
        );
    };
    let broker_epoch = broker.broker_epoch;
    let mut records = if broker.fenced {
        partitions::leave_partitions(image, sessions, broker_id, Leave::Fenced)
    } else {
        fence(image, sessions, broker_id, broker_epoch)
    };
    records.push(MetadataRecord::UnregisterBroker {
        broker_id,
        broker_epoch,
    });
    sessions.remove(broker_id);
    (records, Ok(()))
}

/// Fences every unfenced broker whose session has been silent for longer than
/// `config.broker_session_timeout_ms` at `now_ms`, moving its leaderships to other ISR
/// members. Call it periodically on the active controller; the records go into the log as
/// one entry. Returns nothing when brokers run without heartbeats
/// (`config.register_brokers_unfenced`).
pub fn fence_expired_brokers(
    image: &MetadataImage,
    config: &ControllerConfig,
    sessions: &mut BrokerSessions,
    now_ms: i64,
) -> Vec<MetadataRecord> {
    sessions.retain_registered(image);
    if config.register_brokers_unfenced {
        return Vec::new();
    }
    let timeout_ms = i64::try_from(config.broker_session_timeout_ms).unwrap_or(i64::MAX);
    let mut scratch: Option<MetadataImage> = None;
    let mut records = Vec::new();
    let unfenced: Vec<(i32, i64)> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| (b.broker_id, b.broker_epoch))
        .collect();
    for (broker_id, broker_epoch) in unfenced {
        let session = sessions.session_mut(broker_id, broker_epoch, now_ms);
        if now_ms.saturating_sub(session.last_contact_ms) <= timeout_ms {
            continue;
        }
        tracing::info!(
            broker_id,
            broker_epoch,
            silent_ms = now_ms.saturating_sub(session.last_contact_ms),
            "fencing broker: its session expired"
        );
        // Later fences must see the earlier ones (who is still eligible to lead).
        let current = scratch.get_or_insert_with(|| image.clone());
        let fenced = fence(current, sessions, broker_id, broker_epoch);
        for r in &fenced {
            current.apply(r);
        }
        records.extend(fenced);
    }
    records
}

/// Whether some partition has no leader although an eligible broker is in its ISR (a
/// state the controller never leaves behind, except for brokers in controlled shutdown).
#[cfg(test)]
pub(super) fn leaderless_with_eligible_isr(
    image: &MetadataImage,
    sessions: &BrokerSessions,
) -> Option<String> {
    for t in image.topics.values() {
        for (id, p) in &t.partitions {
            if p.leader == crate::image::NO_LEADER
                && p.isr
                    .iter()
                    .any(|r| partitions::is_eligible(image, sessions, *r))
            {
                return Some(format!("{}-{id}: {p:?}", t.name));
            }
        }
    }
    None
}
