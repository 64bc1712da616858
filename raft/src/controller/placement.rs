//! Replica placement for new partitions.
//!
//! Round-robin over the unfenced brokers sorted by id, starting at a random broker: the
//! replicas of partition `k` are the `rf` brokers following `start + k`, so leaders (first
//! replicas) rotate over all brokers. Rack awareness is not implemented yet.

use std::collections::BTreeSet;

use super::ControllerContext;
use super::ControllerError;
use crate::image::MetadataImage;

/// Replicas for `count` new partitions with `replication_factor` replicas each.
///
/// # Errors
/// [`ControllerError::InvalidReplicationFactor`] if fewer than `replication_factor`
/// brokers are unfenced.
pub(super) fn place(
    image: &MetadataImage,
    ctx: &mut ControllerContext<'_>,
    count: i32,
    replication_factor: i16,
) -> Result<Vec<Vec<i32>>, ControllerError> {
    let brokers = image.unfenced_broker_ids();
    let rf = usize::try_from(replication_factor).unwrap_or(0);
    if rf == 0 || rf > brokers.len() {
        return Err(replication_factor_unreachable(
            replication_factor,
            brokers.len(),
        ));
    }
    let n = brokers.len();
    let start = ctx.random_index(n);
    let count = usize::try_from(count).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let first = (start + k) % n;
        out.push((0..rf).map(|j| brokers[(first + j) % n]).collect());
    }
    Ok(out)
}

pub(super) fn replication_factor_unreachable(rf: i16, unfenced: usize) -> ControllerError {
    ControllerError::InvalidReplicationFactor(format!(
        "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {unfenced} broker(s) are registered."
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
