//! The read repair stage (Dynamo §4.5), background class: sends a read's reconciled versions to
//! the replicas that answered with something else. It takes a token from its rate gate per
//! batch before working (SEDA runtime), so repair never competes with foreground requests
//! beyond its configured rate; the resource controller will turn that rate.
//!
//! Repairs are fire-and-forget: a repair write that is lost is redone by the next read of the
//! key or by anti-entropy, and answers are dropped by the replication stage (operation ids
//! carry `REPAIR_OP_BIT`).

use crate::coordinate::RepairEvent;
use crate::replicate::{ReplicateEvent, REPAIR_OP_BIT};
use crate::seda::{Stage, StageSender};
use crate::storage::StorageEvent;
use crate::wire::{Bytes, Message, ReplicaWrite};
use crate::NodeId;
use std::fmt;
use std::time::{Duration, Instant};

/// How long a repair write may wait for its peer before the replication stage forgets it.
const REPAIR_DEADLINE: Duration = Duration::from_secs(5);

/// The repair stage's events.
#[derive(Debug)]
pub enum RepairStageEvent {
    /// Repair one key on the listed replicas.
    Repair(RepairEvent),
}

impl fmt::Display for RepairStageEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairStageEvent::Repair(r) => write!(
                f,
                "repair {} B key on {} replicas",
                r.key.len(),
                r.targets.len()
            ),
        }
    }
}

/// The repair stage.
pub struct RepairStage {
    node: NodeId,
    storage: StageSender<StorageEvent>,
    replicate: StageSender<ReplicateEvent>,
    next_op: u64,
}

impl RepairStage {
    /// A repair worker for `node`.
    pub fn new(
        node: NodeId,
        storage: StageSender<StorageEvent>,
        replicate: StageSender<ReplicateEvent>,
    ) -> RepairStage {
        RepairStage {
            node,
            storage,
            replicate,
            next_op: 0,
        }
    }

    fn repair(&mut self, now: Instant, repair: RepairEvent) {
        for target in repair.targets {
            self.next_op =
                self.next_op.wrapping_add(1) & !(REPAIR_OP_BIT | crate::replicate::HANDOFF_OP_BIT);
            let op = self.next_op | REPAIR_OP_BIT;
            // try_send: background work yields to foreground; a dropped repair is redone later.
            if target == self.node {
                let _ = self.storage.try_send(StorageEvent::Merge {
                    op,
                    key: repair.key.clone(),
                    versions: repair.versions.clone(),
                });
            } else {
                let message = Message::ReplicaWrite(ReplicaWrite {
                    key: Bytes::from(repair.key.clone()),
                    versions: repair.versions.clone(),
                    hint: None,
                });
                let _ = self.replicate.try_send(ReplicateEvent::Send {
                    peer: target,
                    op,
                    message,
                    deadline: now + REPAIR_DEADLINE,
                });
            }
        }
    }
}

impl Stage for RepairStage {
    type Event = RepairStageEvent;

    fn handle_batch(&mut self, now: Instant, batch: &mut Vec<RepairStageEvent>) {
        for event in batch.drain(..) {
            match event {
                RepairStageEvent::Repair(repair) => self.repair(now, repair),
            }
        }
    }
}
