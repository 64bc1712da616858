//! Partition reassignment (KIP-455, as KRaft does it) and leader elections asked for by an
//! operator (ElectLeaders) or by the periodic preferred-leader rebalance.
//!
//! A reassignment to `target` first widens the replicas to the original replicas followed
//! by the adding ones (`target` less the original), so the adding brokers start following
//! the leader; it is recorded as a [`MetadataRecord::PartitionReassignment`] that the image
//! keeps. Once the leader's AlterPartition puts every target replica in the ISR, the
//! controller finishes it: the replicas become `target`, the ISR keeps only target
//! replicas, and a leader that is being removed hands over to the first target replica that
//! is in the ISR and eligible. A removing replica that leads keeps leading until then.
//! Cancelling goes back to the original replicas.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::partitions;
use super::BrokerSessions;
use super::ControllerError;
use crate::image::MetadataImage;
use crate::image::PartitionImage;
use crate::image::Reassignment;
use crate::image::NO_LEADER;
use crate::records::MetadataRecord;

/// The partition `topic_id`/`partition` and its display name (`topic-partition`).
///
/// # Errors
/// UnknownTopicId, UnknownTopicOrPartition.
fn find_partition<'a>(
    image: &'a MetadataImage,
    topic_id: &Uuid,
    partition: i32,
) -> Result<(&'a PartitionImage, String), ControllerError> {
    let topic = image
        .topics
        .get(topic_id)
        .ok_or(ControllerError::UnknownTopicId(*topic_id))?;
    let name = format!("{}-{partition}", topic.name);
    let p = topic.partitions.get(&partition).ok_or_else(|| {
        ControllerError::UnknownTopicOrPartition(format!("Partition {name} does not exist."))
    })?;
    Ok((p, name))
}

/// Applies `records` to a copy of `image`.
fn after(image: &MetadataImage, records: &[MetadataRecord]) -> MetadataImage {
    let mut next = image.clone();
    for r in records {
        next.apply(r);
    }
    next
}

/// The first replica of `replicas` that is in `isr` and eligible to lead.
fn first_eligible_in(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    replicas: &[i32],
    isr: &[i32],
) -> i32 {
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && partitions::is_eligible(image, sessions, *r))
        .unwrap_or(NO_LEADER)
}

/// A PartitionChange from `p` to (`leader`, `isr`, `replicas`), naming only what changes,
/// or `None` if nothing does.
fn change(
    topic_id: Uuid,
    partition: i32,
    p: &PartitionImage,
    leader: i32,
    isr: Vec<i32>,
    replicas: Vec<i32>,
) -> Option<MetadataRecord> {
    let leader = (leader != p.leader).then_some(leader);
    let isr = (isr != p.isr).then_some(isr);
    let replicas = (replicas != p.replicas).then_some(replicas);
    if leader.is_none() && isr.is_none() && replicas.is_none() {
        return None;
    }
    Some(MetadataRecord::PartitionChange {
        topic_id,
        partition,
        leader,
        isr,
        replicas,
    })
}

/// Checks a reassignment target: non-empty, no duplicates, only registered brokers.
fn check_target(image: &MetadataImage, name: &str, target: &[i32]) -> Result<(), ControllerError> {
    if target.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "The target replica list of partition {name} is empty."
        )));
    }
    let mut seen = BTreeSet::new();
    for r in target {
        if !seen.insert(*r) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The target replica list {target:?} of partition {name} names broker {r} more than once."
            )));
        }
        if !image.brokers.contains_key(r) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The target replica list {target:?} of partition {name} contains broker {r}, which is not registered."
            )));
        }
    }
    Ok(())
}

/// The records that move `p` to `replicas`: the ISR keeps only members of `replicas` (or,
/// if none is left, becomes all of `replicas`, as Kafka does when a revert would leave
/// it empty), and a leader outside the new ISR is replaced by the first eligible member.
fn narrow_to(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
    p: &PartitionImage,
    replicas: Vec<i32>,
) -> Option<MetadataRecord> {
    let mut isr: Vec<i32> = p
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        tracing::warn!(%topic_id, partition, ?replicas, isr = ?p.isr, "no replica left in the ISR: the ISR becomes every replica");
        isr = replicas.clone();
    }
    let leader = if p.leader != NO_LEADER && isr.contains(&p.leader) {
        p.leader
    } else {
        first_eligible_in(image, sessions, &replicas, &isr)
    };
    change(topic_id, partition, p, leader, isr, replicas)
}

/// Starts, replaces (`Some(target)`) or cancels (`None`) the reassignment of one partition.
///
/// # Errors
/// UnknownTopicId, UnknownTopicOrPartition, InvalidReplicaAssignment (an empty target,
/// duplicates, unregistered brokers), NoReassignmentInProgress (a cancel without one).
pub(super) fn alter_reassignment(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
    target: Option<Vec<i32>>,
) -> (Vec<MetadataRecord>, Result<(), ControllerError>) {
    match reassignment_records(image, sessions, topic_id, partition, target) {
        Ok(records) => (records, Ok(())),
        Err(e) => (Vec::new(), Err(e)),
    }
}

fn reassignment_records(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
    target: Option<Vec<i32>>,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let (p, name) = find_partition(image, &topic_id, partition)?;
    let in_progress = image.reassignment(&topic_id, partition).is_some();
    let original = image.original_replicas(&topic_id, partition, &p.replicas);
    let Some(target) = target else {
        if !in_progress {
            return Err(ControllerError::NoReassignmentInProgress);
        }
        tracing::info!(partition = %name, replicas = ?original, "cancelling partition reassignment");
        return Ok(cancel(image, sessions, topic_id, partition, p, original));
    };
    check_target(image, &name, &target)?;
    if target == original {
        // Nothing to move; a reassignment in progress is cancelled.
        return Ok(if in_progress {
            cancel(image, sessions, topic_id, partition, p, original)
        } else {
            Vec::new()
        });
    }
    tracing::info!(partition = %name, ?target, replicas = ?original, "starting partition reassignment");
    let mut records = vec![MetadataRecord::PartitionReassignment {
        topic_id,
        partition,
        target: Some(target.clone()),
    }];
    let mut replicas = original.clone();
    replicas.extend(target.iter().copied().filter(|r| !original.contains(r)));
    records.extend(narrow_to(image, sessions, topic_id, partition, p, replicas));
    let next = after(image, &records);
    records.extend(complete_if_done(&next, sessions, topic_id, partition));
    Ok(records)
}

/// The records that put `p` back on its `original` replicas and end its reassignment.
fn cancel(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
    p: &PartitionImage,
    original: Vec<i32>,
) -> Vec<MetadataRecord> {
    let mut records: Vec<MetadataRecord> =
        narrow_to(image, sessions, topic_id, partition, p, original)
            .into_iter()
            .collect();
    records.push(MetadataRecord::PartitionReassignment {
        topic_id,
        partition,
        target: None,
    });
    records
}

/// The records that finish the reassignment of `topic_id`/`partition` in `image` if every
/// target replica is in the ISR; none if there is no reassignment, it is not done yet, or
/// the leader must move off a removed replica and no target replica can take over.
pub(super) fn complete_if_done(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
) -> Vec<MetadataRecord> {
    let Some(Reassignment { target, .. }) = image.reassignment(&topic_id, partition) else {
        return Vec::new();
    };
    let Ok((p, name)) = find_partition(image, &topic_id, partition) else {
        return Vec::new();
    };
    if !target.iter().all(|r| p.isr.contains(r)) {
        return Vec::new();
    }
    let isr: Vec<i32> = p
        .isr
        .iter()
        .copied()
        .filter(|r| target.contains(r))
        .collect();
    let leader = if target.contains(&p.leader) {
        p.leader
    } else {
        match first_eligible_in(image, sessions, target, &isr) {
            NO_LEADER if p.leader != NO_LEADER => {
                tracing::info!(partition = %name, ?target, "reassignment waits: no target replica can lead yet");
                return Vec::new();
            }
            elected => elected,
        }
    };
    tracing::info!(partition = %name, ?target, leader, "partition reassignment complete");
    let mut records: Vec<MetadataRecord> =
        change(topic_id, partition, p, leader, isr, target.clone())
            .into_iter()
            .collect();
    records.push(MetadataRecord::PartitionReassignment {
        topic_id,
        partition,
        target: None,
    });
    records
}

/// Elects a leader of one partition: the preferred (first) replica, or with `unclean` any
/// eligible replica of a partition without a leader. Returns the partition's state after.
///
/// # Errors
/// UnknownTopicId, UnknownTopicOrPartition; ElectionNotNeeded (the preferred replica
/// already leads, or with `unclean` the partition has a leader);
/// PreferredLeaderNotAvailable (the preferred replica is not an eligible ISR member);
/// EligibleLeadersNotAvailable (unclean, and no replica is eligible).
pub(super) fn elect_leaders(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    topic_id: Uuid,
    partition: i32,
    unclean: bool,
) -> (Vec<MetadataRecord>, Result<PartitionImage, ControllerError>) {
    let (p, name) = match find_partition(image, &topic_id, partition) {
        Ok(found) => found,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let record = if unclean {
        if p.leader != NO_LEADER {
            return (Vec::new(), Err(ControllerError::ElectionNotNeeded));
        }
        let clean = first_eligible_in(image, sessions, &p.replicas, &p.isr);
        if clean != NO_LEADER {
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader: Some(clean),
                isr: None,
                replicas: None,
            }
        } else {
            let Some(leader) = p
                .replicas
                .iter()
                .copied()
                .find(|r| partitions::is_eligible(image, sessions, *r))
            else {
                return (
                    Vec::new(),
                    Err(ControllerError::EligibleLeadersNotAvailable),
                );
            };
            tracing::warn!(partition = %name, leader, isr = ?p.isr, "unclean leader election: a replica outside the ISR leads");
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader: Some(leader),
                isr: Some(vec![leader]),
                replicas: None,
            }
        }
    } else {
        let Some(preferred) = p.replicas.first().copied() else {
            return (
                Vec::new(),
                Err(ControllerError::PreferredLeaderNotAvailable),
            );
        };
        if p.leader == preferred {
            return (Vec::new(), Err(ControllerError::ElectionNotNeeded));
        }
        if !p.isr.contains(&preferred) || !partitions::is_eligible(image, sessions, preferred) {
            return (
                Vec::new(),
                Err(ControllerError::PreferredLeaderNotAvailable),
            );
        }
        MetadataRecord::PartitionChange {
            topic_id,
            partition,
            leader: Some(preferred),
            isr: None,
            replicas: None,
        }
    };
    let records = vec![record];
    let next = after(image, &records);
    match find_partition(&next, &topic_id, partition) {
        Ok((p, _)) => {
            let p = p.clone();
            (records, Ok(p))
        }
        Err(e) => (Vec::new(), Err(e)),
    }
}

/// The leadership changes that give every partition back to its preferred (first) replica
/// where that replica is in the ISR, eligible and not leading; partitions being reassigned
/// are left alone. Pure: the caller proposes the records as one entry (the active
/// controller does so every `leader_imbalance_check_interval_ms` when
/// `auto_leader_rebalance_enable` is on).
pub fn preferred_leader_elections(
    image: &MetadataImage,
    sessions: &BrokerSessions,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic_id, topic) in &image.topics {
        for (partition, p) in &topic.partitions {
            let Some(preferred) = p.replicas.first().copied() else {
                continue;
            };
            if p.leader == preferred
                || !p.isr.contains(&preferred)
                || !partitions::is_eligible(image, sessions, preferred)
                || image.reassignment(topic_id, *partition).is_some()
            {
                continue;
            }
            records.push(MetadataRecord::PartitionChange {
                topic_id: *topic_id,
                partition: *partition,
                leader: Some(preferred),
                isr: None,
                replicas: None,
            });
        }
    }
    records
}
