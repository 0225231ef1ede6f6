//! What the node counts for its metrics beyond queues and latencies: hints handed off,
//! read-repair writes, and client operations that failed, by kind of error. Machines report
//! each as an effect ([`Count`]); the driver adds it here; a `/metrics` scrape reads it.

use crate::event::Operation;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One thing to count, reported by a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// Hints their target acknowledged (delivered, and deleted here).
    HintsHandedOff(u64),
    /// Read-repair writes issued to stale replicas (this node's own copy included).
    RepairWrites(u64),
    /// A client operation answered with an error of this kind (`ServiceError::kind`).
    Failed {
        /// Which operation.
        operation: Operation,
        /// The error's kind.
        kind: &'static str,
    },
}

/// The node's counts since it started. Cheap to clone: every clone shares them.
#[derive(Clone, Debug, Default)]
pub struct NodeCounters(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    hints_handed_off: AtomicU64,
    repair_writes: AtomicU64,
    /// Few kinds, and only on failures: a map behind a lock costs nothing on the way of a
    /// request that succeeds.
    failed: Mutex<BTreeMap<(Operation, &'static str), u64>>,
}

impl NodeCounters {
    /// Adds `count`.
    pub fn add(&self, count: Count) {
        match count {
            Count::HintsHandedOff(n) => {
                self.0.hints_handed_off.fetch_add(n, Ordering::Relaxed);
            }
            Count::RepairWrites(n) => {
                self.0.repair_writes.fetch_add(n, Ordering::Relaxed);
            }
            Count::Failed { operation, kind } => {
                if let Ok(mut failed) = self.0.failed.lock() {
                    *failed.entry((operation, kind)).or_default() += 1;
                }
            }
        }
    }

    /// Hints handed off so far.
    pub fn hints_handed_off(&self) -> u64 {
        self.0.hints_handed_off.load(Ordering::Relaxed)
    }

    /// Read-repair writes issued so far.
    pub fn repair_writes(&self) -> u64 {
        self.0.repair_writes.load(Ordering::Relaxed)
    }

    /// Failed client operations so far, by operation and kind of error, in that order.
    pub fn failed(&self) -> Vec<(Operation, &'static str, u64)> {
        self.0
            .failed
            .lock()
            .map(|failed| {
                failed
                    .iter()
                    .map(|(&(op, kind), &n)| (op, kind, n))
                    .collect()
            })
            .unwrap_or_default()
    }
}
