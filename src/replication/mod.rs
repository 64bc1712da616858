//! The data plane on this broker: which partition replicas it hosts (decided only by
//! the metadata image), their logs, high watermarks, flushers and the log cleaner.

pub mod cleaner;
pub mod fetcher;
pub mod isr;
pub mod leader_state;
pub mod log_dir;
pub mod manager;
pub mod partition;

pub use manager::ReplicaManager;
pub use partition::Partition;
