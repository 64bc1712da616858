//! keel's black-box test kit: start real `keel` processes, drive real clients
//! (kcat, confluent-kafka for Python) against them as subprocesses, and read the
//! results back. Nothing here reaches into the broker's memory. [`faults`] is the
//! Jepsen-style fault harness behind `keel-faults`; [`checker`] judges its histories.

pub mod background;
pub mod checker;
pub mod clients;
pub mod cluster;
pub mod faults;
pub mod groups;
pub mod latency;
pub mod node;
pub mod records;

pub use node::KeelNode;
