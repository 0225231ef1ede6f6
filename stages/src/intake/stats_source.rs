//! What the node's statistics are read from: `admin stats` and `admin throttle` (answered on
//! the intake's loop), the metrics and `/health` (on their own thread).

use super::ConnectionBoard;
use crate::event::{AaeBoard, GateChange};
use crate::seda::{GateRegistry, OperationLatencies, Router, StageThrottle};
use crate::wire::{StatsReply, ThrottleReply};
use crate::NodeId;
use std::sync::Arc;
use std::time::Instant;

/// What a `Stats` request is answered from.
#[derive(Clone)]
pub struct StatsSource {
    /// This node.
    pub node: NodeId,
    /// Every stage's queue and statistics.
    pub router: Router,
    /// Client operation latencies.
    pub latencies: OperationLatencies,
    /// Hints handed off, repair writes, failed operations.
    pub counters: crate::seda::NodeCounters,
    /// Open connections by kind (the intake machine's board).
    pub connections: ConnectionBoard,
    /// Set once the intake's thread panicked: the node then reads and answers no connection
    /// and is stopping (`/health` turns unhealthy at once).
    pub intake_failed: Arc<std::sync::atomic::AtomicBool>,
    /// Every background stage's gate, and the controller's published state.
    pub gates: GateRegistry,
    /// Anti-entropy's report.
    pub aae: AaeBoard,
    /// Why storage refuses every write until the node restarts, or `None` (the store's
    /// `failure`, read through this so the intake imports no stage module).
    pub storage_failure: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl StatsSource {
    /// The node's statistics now, with the controller and every background gate.
    pub fn snapshot(&self) -> StatsReply {
        StatsReply {
            node: self.node.clone(),
            stages: self.router.snapshots(),
            operations: self.latencies.snapshot(),
            controller: Box::new(self.gates.controller()),
            background: self.background(),
            storage_failure: (self.storage_failure)(),
        }
    }

    /// Every background stage's throttle: its gate, with its queued events in the backlog.
    fn background(&self) -> Vec<StageThrottle> {
        self.gates.stages(|stage| self.router.depth(stage) as u64)
    }

    /// Carries out an `admin throttle` change and answers with the state after it.
    pub fn throttle(&self, change: GateChange) -> ThrottleReply {
        let now = Instant::now();
        match change {
            GateChange::Show => {}
            GateChange::Pin(stage, rate) => {
                if let Some(gate) = self.gates.gate(stage) {
                    gate.pin(rate, now);
                }
            }
            GateChange::Auto(stage) => {
                if let Some(gate) = self.gates.gate(stage) {
                    gate.release(now);
                }
            }
        }
        ThrottleReply {
            node: self.node.clone(),
            controller: self.gates.controller(),
            stages: self.background(),
        }
    }
}
