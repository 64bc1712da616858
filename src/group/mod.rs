//! Consumer groups: the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets, stored in the replicated, compacted internal
//! topic `__consumer_offsets`.
//!
//! - `state` — the pure state machine of one group (no I/O, no clock);
//!   `member` its inputs and outputs; `offsets` a group's committed offsets.
//! - `coordinator` — the shell: which groups this broker coordinates (the leader of
//!   the group's offsets partition), parked requests, timers, writes.
//! - `log_format` — Kafka's encoding of the offsets topic's records; `load` replays
//!   a partition into groups; `persist` writes records like an acks=all produce.
//! - `offsets_topic` — the topic's name, partitioning and creation.
//! - `consumer_protocol` — reading the "consumer" protocol's subscriptions and
//!   assignments (tooling only: the broker never needs them to run a group).

pub mod consumer_protocol;
pub mod coordinator;
pub mod error;
pub mod load;
pub mod log_format;
pub mod member;
pub mod offsets;
pub mod offsets_topic;
pub mod persist;
pub mod state;
#[cfg(test)]
mod state_tests;

pub use coordinator::{CommitEntry, CoordinatorConfig, GroupCoordinator};
pub use error::GroupError;
pub use offsets_topic::OFFSETS_TOPIC;
