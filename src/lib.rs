//! keel: a Kafka-compatible streaming broker whose cluster metadata lives in a Raft
//! quorum inside the cluster (KRaft style).
//!
//! Where to start reading: `server` wires a node together; `protocol` frames and
//! routes requests to `api/<api>.rs`; the Produce path goes `api::produce` →
//! `replication::Partition` → `keel_storage::Log`; metadata changes go through
//! `keel_raft` and reach the data plane only through `replication::ReplicaManager`.

pub mod api;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod errors;
pub mod group;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod topic_config;
pub mod txn;
