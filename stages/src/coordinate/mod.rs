//! The coordination stage (Dynamo §4.5): turns a client request into storage operations on the
//! key's replicas, counts their answers against R or W, and replies once the quorum is reached
//! or the deadline passed. The logic is the pure [`Coordinator`] machine; the runtime (or the
//! simulator) delivers its outbox.
//!
//! Threads: exactly one. The pending-request table lives in one thread so that no lock is taken
//! per answer; coordination is bookkeeping, cheap next to storage and the network.

mod machine;

pub use machine::{Coordinator, CoordinatorSettings};

#[cfg(test)]
mod tests;
