//! Sends the ISR changes leaders want to the controller (AlterPartition), one request
//! per change, concurrently, and applies the answers.
//!
//! A change is pending on its partition from the moment it is proposed until the
//! answer: the leader then counts the maximal ISR for its high watermark (an added
//! replica may already count, a removed one still counts) and proposes nothing else.
//! The controller's compare-and-set on the leader epoch and partition epoch decides;
//! a refused or lost request just clears the pending change, and the leader proposes
//! again from whatever state the image then holds.

use std::sync::Arc;
use std::time::Duration;

use keel_raft::controller::{ControllerRequest, ControllerResponse};
use tokio::sync::mpsc;

use super::manager::now_ms;
use super::partition::{IsrProposal, Partition};
use crate::broker::Broker;

/// How long one AlterPartition may take before the change is given up and retried.
pub const ALTER_PARTITION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the queue closes (the replica manager is dropped).
pub async fn run(
    broker: Arc<Broker>,
    mut proposals: mpsc::UnboundedReceiver<(Arc<Partition>, IsrProposal)>,
) {
    while let Some((partition, proposal)) = proposals.recv().await {
        tokio::spawn(alter(broker.clone(), partition, proposal));
    }
}

async fn alter(broker: Arc<Broker>, partition: Arc<Partition>, proposal: IsrProposal) {
    let req = ControllerRequest::AlterPartition {
        broker_id: broker.config.node_id,
        broker_epoch: broker.broker_epoch(),
        topic_id: partition.topic_id,
        partition: partition.index,
        leader_epoch: proposal.leader_epoch,
        partition_epoch: proposal.partition_epoch,
        new_isr: proposal.new_isr.clone(),
    };
    tracing::info!(
        topic = %partition.topic,
        partition = partition.index,
        isr = ?proposal.new_isr,
        partition_epoch = proposal.partition_epoch,
        "proposing ISR change"
    );
    match broker.submit_within(req, ALTER_PARTITION_TIMEOUT).await {
        Ok(ControllerResponse::AlterPartition(Ok(state))) => {
            if state.leader == broker.config.node_id {
                partition.become_leader(
                    state.leader_epoch,
                    state.partition_epoch,
                    state.replicas,
                    state.isr,
                    now_ms(),
                );
            }
        }
        Ok(ControllerResponse::AlterPartition(Err(e))) => {
            tracing::info!(topic = %partition.topic, partition = partition.index, "ISR change refused: {e}");
            partition.isr_change_failed(&proposal, now_ms());
        }
        Ok(other) => {
            tracing::error!("controller answered AlterPartition with {other:?}");
            partition.isr_change_failed(&proposal, now_ms());
        }
        Err(e) => {
            tracing::info!(topic = %partition.topic, partition = partition.index, "ISR change not committed: {e}");
            partition.isr_change_failed(&proposal, now_ms());
        }
    }
}
