//! Producer ids and (later) transactions.

pub mod producer_ids;
pub mod refusals;
