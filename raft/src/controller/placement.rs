//! Replica placement for new partitions.
//!
//! Only usable brokers (unfenced, not in controlled shutdown) get replicas. The brokers are
//! put in one ring: sorted by id when no broker declares a rack; otherwise alternating
//! between racks (the first broker of each rack, then the second of each, ...). Partition
//! `k` is led by the broker at `start + k` in the ring (`start` is random), so leaders
//! rotate over all brokers; its followers are the next brokers in the ring, taking first
//! those whose rack the partition does not have yet, so a partition spans as many racks as
//! its replication factor allows.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::partitions::is_eligible;
use super::BrokerSessions;
use super::ControllerContext;
use super::ControllerError;
use crate::image::MetadataImage;

/// The placement ring: usable broker ids with their racks (see the module docs).
fn ring(image: &MetadataImage, sessions: &BrokerSessions) -> Vec<(i32, Option<String>)> {
    let usable: Vec<(i32, Option<String>)> = image
        .brokers
        .values()
        .filter(|b| is_eligible(image, sessions, b.broker_id))
        .map(|b| (b.broker_id, b.rack.clone()))
        .collect();
    if usable.iter().all(|(_, rack)| rack.is_none()) {
        return usable;
    }
    // A broker without a rack counts as a rack of its own kind (`None`).
    let mut by_rack: BTreeMap<Option<String>, Vec<(i32, Option<String>)>> = BTreeMap::new();
    for b in usable {
        by_rack.entry(b.1.clone()).or_default().push(b);
    }
    let mut out = Vec::new();
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..deepest {
        for brokers in by_rack.values() {
            if let Some(b) = brokers.get(i) {
                out.push(b.clone());
            }
        }
    }
    out
}

/// Replicas for `count` new partitions with `replication_factor` replicas each.
///
/// # Errors
/// [`ControllerError::InvalidReplicationFactor`] if fewer than `replication_factor`
/// brokers are usable.
pub(super) fn place(
    image: &MetadataImage,
    sessions: &BrokerSessions,
    ctx: &mut ControllerContext<'_>,
    count: i32,
    replication_factor: i16,
) -> Result<Vec<Vec<i32>>, ControllerError> {
    let ring = ring(image, sessions);
    let rf = usize::try_from(replication_factor).unwrap_or(0);
    if rf == 0 || rf > ring.len() {
        return Err(replication_factor_unreachable(
            replication_factor,
            ring.len(),
        ));
    }
    let n = ring.len();
    let start = ctx.random_index(n);
    let count = usize::try_from(count).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let first = (start + k) % n;
        let walk = || (0..n).map(|j| &ring[(first + j) % n]);
        let mut replicas: Vec<i32> = Vec::with_capacity(rf);
        let mut racks: BTreeSet<&Option<String>> = BTreeSet::new();
        // New racks first, then whoever comes next.
        for (id, rack) in walk() {
            if replicas.len() < rf && racks.insert(rack) {
                replicas.push(*id);
            }
        }
        for (id, _) in walk() {
            if replicas.len() < rf && !replicas.contains(id) {
                replicas.push(*id);
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

pub(super) fn replication_factor_unreachable(rf: i16, unfenced: usize) -> ControllerError {
    ControllerError::InvalidReplicationFactor(format!(
        "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {unfenced} broker(s) are registered and usable (unfenced, not shutting down)."
    ))
}

/// Checks one manually assigned replica list; returns the in-sync replicas it starts with
/// (the unfenced ones, in replica order).
///
/// # Errors
/// [`ControllerError::InvalidReplicaAssignment`] for an empty list, a duplicate or
/// unregistered broker, or a list whose brokers are all fenced.
pub(super) fn check_manual_replicas(
    image: &MetadataImage,
    partition: i32,
    replicas: &[i32],
) -> Result<Vec<i32>, ControllerError> {
    if replicas.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "The manual partition assignment includes an empty replica list for partition {partition}."
        )));
    }
    let mut seen = BTreeSet::new();
    for id in replicas {
        if !seen.insert(*id) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The manual partition assignment includes the broker {id} more than once (partition {partition})."
            )));
        }
        if !image.brokers.contains_key(id) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The manual partition assignment includes broker {id}, but no such broker is registered (partition {partition})."
            )));
        }
    }
    let isr: Vec<i32> = replicas
        .iter()
        .copied()
        .filter(|id| image.brokers.get(id).is_some_and(|b| !b.fenced))
        .collect();
    if isr.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "All brokers specified in the manual partition assignment for partition {partition} are fenced."
        )));
    }
    Ok(isr)
}
