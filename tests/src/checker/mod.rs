//! The fault harness's history checker: the history file format ([`history`]) and
//! the queue workload's checker ([`queue::check`]).
//!
//! Pure code over plain data: no processes, sockets or clocks. The harness that
//! runs clients and nemeses writes a [`History`]; this module only judges it.

pub mod history;
pub mod queue;

#[cfg(test)]
mod tests;

pub use history::{AssignedPartition, Event, EventType, History, Op, Record, SendOp};
pub use queue::{check, Anomaly, AnomalyKind, OutcomeCounts, Report, Source, Witness};
