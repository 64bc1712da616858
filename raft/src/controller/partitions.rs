//! Partition leadership and ISR changes: leader election when brokers come and go, and
//! AlterPartition (the ISR compare-and-set a partition leader asks for).
//!
//! Rules (Kafka's, with unclean election off): a leader is always an unfenced member of the
//! ISR, or there is none (`NO_LEADER`); the ISR is a subset of the replicas and never
//! becomes empty (when its last member goes, the ISR keeps it and the partition has no
//! leader until that broker is back); a new leader is the first replica, in replica order,
//! that is in the ISR, unfenced and not shutting down. Every change is a
//! [`MetadataRecord::PartitionChange`], whose replay bumps the partition epoch, and the
//! leader epoch when the leader changes.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::BrokerSessions;
use super::ControllerError;
use crate::image::MetadataImage;
use crate::image::PartitionImage;
use crate::image::NO_LEADER;
use crate::records::MetadataRecord;

/// Whether `broker_id` may become a leader or join an ISR: registered, unfenced and not in
/// controlled shutdown.
pub(super) fn is_eligible(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    broker_id: i32,
) -> bool {
    image.brokers.get(&broker_id).is_some_and(|b| !b.fenced)
        && !sessions.is_shutting_down(broker_id)
}

/// The first replica (in replica order) in `isr` that is eligible and not `excluded`.
fn elect(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    p: &PartitionImage,
    isr: &[i32],
    excluded: i32,
) -> i32 {
    p.replicas
        .iter()
        .copied()
        .find(|r| *r != excluded && isr.contains(r) && is_eligible(image, sessions, *r))
        .unwrap_or(NO_LEADER)
}

/// How a broker leaves its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leave {
    /// Fenced or removed: it leads nothing; where it is the last ISR member, the ISR keeps
    /// it and the partition has no leader.
    Fenced,
    /// Controlled shutdown: its leaderships move to other eligible ISR members; where
    /// none exists it keeps leading (the partition would be offline otherwise).
    Shutdown,
}

/// Partition changes that take `broker_id` out of every ISR it can leave (those with
/// another member) and move every leadership it holds; `broker_id` is never elected.
pub(super) fn leave_partitions(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    broker_id: i32,
    how: Leave,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic_id, topic) in &image.topics {
        for (partition, p) in &topic.partitions {
            let in_isr = p.isr.contains(&broker_id);
            if !in_isr && p.leader != broker_id {
                continue;
            }
            let mut isr: Vec<i32> = p.isr.iter().copied().filter(|r| *r != broker_id).collect();
            if isr.is_empty() {
                // Never shrink the ISR to nothing: the last member keeps the data.
                isr = p.isr.clone();
            }
            let leader = if p.leader == broker_id || p.leader == NO_LEADER {
                match elect(image, sessions, p, &isr, broker_id) {
                    NO_LEADER if how == Leave::Shutdown && p.leader == broker_id => {
                        // Nowhere to move: keep leading, and stay in the ISR.
                        isr = p.isr.clone();
                        broker_id
                    }
                    elected => elected,
                }
            } else {
                p.leader
            };
            if let Some(change) = change_record(*topic_id, *partition, p, leader, isr) {
                records.push(change);
            }
        }
    }
    records
}

/// Partition changes that make `broker_id` (just unfenced) the leader of every leaderless
/// partition whose ISR holds it.
pub(super) fn lead_leaderless(image: &MetadataImage, broker_id: i32) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic_id, topic) in &image.topics {
        for (partition, p) in &topic.partitions {
            if p.leader == NO_LEADER && p.isr.contains(&broker_id) {
                records.push(MetadataRecord::PartitionChange {
                    topic_id: *topic_id,
                    partition: *partition,
                    leader: Some(broker_id),
                    isr: None,
                    replicas: None,
                });
            }
        }
    }
    records
}

/// A PartitionChange from `p` to (`leader`, `isr`), or `None` if nothing changes.
fn change_record(
    topic_id: Uuid,
    partition: i32,
    p: &PartitionImage,
    leader: i32,
    isr: Vec<i32>,
) -> Option<MetadataRecord> {
    let leader = (leader != p.leader).then_some(leader);
    let isr = (isr != p.isr).then_some(isr);
    if leader.is_none() && isr.is_none() {
        return None;
    }
    Some(MetadataRecord::PartitionChange {
        topic_id,
        partition,
        leader,
        isr,
        replicas: None,
    })
}

/// An AlterPartition request (see [`super::ControllerRequest::AlterPartition`]).
pub(super) struct AlterPartition {
    pub broker_id: i32,
    pub broker_epoch: i64,
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

/// Checks an ISR change against the partition's current state and returns the record
/// that makes it and the state after it.
///
/// # Errors
/// StaleBrokerEpoch, UnknownTopicId, UnknownTopicOrPartition, FencedLeaderEpoch,
/// NotLeaderOrFollower, InvalidUpdateVersion, InvalidRequest (an ISR that is empty, has
/// duplicates, is not a subset of the replicas or lacks the leader), IneligibleReplica
/// (a new member that is fenced, unregistered or shutting down).
pub(super) fn alter_partition(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    req: AlterPartition,
) -> (Vec<MetadataRecord>, Result<PartitionImage, ControllerError>) {
    match check_alter_partition(image, sessions, &req) {
        Err(e) => (Vec::new(), Err(e)),
        Ok(p) if p.isr == req.new_isr => (Vec::new(), Ok(p.clone())),
        Ok(_) => {
            let mut records = vec![MetadataRecord::PartitionChange {
                topic_id: req.topic_id,
                partition: req.partition,
                leader: None,
                isr: Some(req.new_isr.clone()),
                replicas: None,
            }];
            let mut next = image.clone();
            next.apply(&records[0]);
            // An ISR that now holds every target replica finishes a reassignment.
            let finish = super::reassignments::complete_if_done(
                &next,
                sessions,
                req.topic_id,
                req.partition,
            );
            for r in &finish {
                next.apply(r);
            }
            records.extend(finish);
            match next
                .topics
                .get(&req.topic_id)
                .and_then(|t| t.partitions.get(&req.partition))
            {
                Some(after) => (records, Ok(after.clone())),
                None => (
                    Vec::new(),
                    Err(ControllerError::Internal(format!(
                        "partition {}-{} vanished while its ISR changed",
                        req.topic_id, req.partition
                    ))),
                ),
            }
        }
    }
}

fn check_alter_partition<'a>(
    image: &'a MetadataImage,
    sessions: &BrokerSessions,
    req: &AlterPartition,
) -> Result<&'a PartitionImage, ControllerError> {
    let broker_id = req.broker_id;
    match image.brokers.get(&broker_id) {
        None => {
            return Err(ControllerError::StaleBrokerEpoch(format!(
                "No broker registration found for broker {broker_id}"
            )))
        }
        Some(b) if b.broker_epoch != req.broker_epoch => {
            return Err(ControllerError::StaleBrokerEpoch(format!(
                "Expected broker epoch {}, but got {} for broker {broker_id}",
                b.broker_epoch, req.broker_epoch
            )))
        }
        Some(_) => {}
    }
    let topic = image
        .topics
        .get(&req.topic_id)
        .ok_or(ControllerError::UnknownTopicId(req.topic_id))?;
    let name = format!("{}-{}", topic.name, req.partition);
    let p = topic.partitions.get(&req.partition).ok_or_else(|| {
        ControllerError::UnknownTopicOrPartition(format!("Partition {name} does not exist."))
    })?;
    if req.leader_epoch != p.leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch(format!(
            "The request for partition {name} has leader epoch {}, but the partition's leader epoch is {}.",
            req.leader_epoch, p.leader_epoch
        )));
    }
    if broker_id != p.leader {
        return Err(ControllerError::NotLeaderOrFollower(format!(
            "Broker {broker_id} is not the leader of partition {name} (the leader is {}).",
            p.leader
        )));
    }
    if req.partition_epoch != p.partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion(format!(
            "The request for partition {name} has partition epoch {}, but the partition's epoch is {}.",
            req.partition_epoch, p.partition_epoch
        )));
    }
    let new_isr = &req.new_isr;
    if new_isr.is_empty() {
        return Err(ControllerError::InvalidRequest(format!(
            "The new ISR of partition {name} is empty."
        )));
    }
    let mut seen = BTreeSet::new();
    for r in new_isr {
        if !seen.insert(*r) {
            return Err(ControllerError::InvalidRequest(format!(
                "The new ISR of partition {name} names broker {r} more than once."
            )));
        }
        if !p.replicas.contains(r) {
            return Err(ControllerError::InvalidRequest(format!(
                "The new ISR of partition {name} contains broker {r}, which is not a replica (replicas: {:?}).",
                p.replicas
            )));
        }
    }
    if !new_isr.contains(&p.leader) {
        return Err(ControllerError::InvalidRequest(format!(
            "The new ISR {new_isr:?} of partition {name} does not contain its leader {}.",
            p.leader
        )));
    }
    for r in new_isr {
        if !p.isr.contains(r) && !is_eligible(image, sessions, *r) {
            let why = match image.brokers.get(r) {
                None => "not registered",
                Some(b) if b.fenced => "fenced",
                Some(_) => "in controlled shutdown",
            };
            return Err(ControllerError::IneligibleReplica(format!(
                "Broker {r} cannot join the ISR of partition {name}: it is {why}."
            )));
        }
    }
    Ok(p)
}
