//! The fault harness's history checker: the history file format ([`history`]) and
//! the queue workload's checker ([`queue::check`]) with the availability figures and
//! recovery bound of [`availability`].
//!
//! Pure code over plain data: no processes, sockets or clocks. The harness that
//! runs clients and nemeses writes a [`History`]; this module only judges it.

pub mod availability;
pub mod history;
pub mod queue;

#[cfg(test)]
mod tests;

pub use history::{
    AssignedPartition, Event, EventType, History, NemesisAction, Op, Record, SendOp,
    NEMESIS_PROCESS,
};
pub use queue::{
    check, check_with, Anomaly, AnomalyKind, CheckOptions, OutcomeCounts, Report, Source, Witness,
};
