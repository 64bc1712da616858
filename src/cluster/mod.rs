//! The broker side of cluster membership: this node's identity on disk and its
//! registration with the controller.

pub mod heartbeat;
pub mod identity;
pub mod registration;
