//! The read repair stage (Dynamo §4.5), background class: sends a read's reconciled versions to
//! the replicas that answered with something else. The runtime takes a token from the stage's
//! rate gate per batch before the machine runs, so repair never competes with foreground
//! requests beyond its configured rate; the resource controller will turn that rate.
//!
//! Repairs are fire-and-forget (`ReplyTo::Nobody`): a repair write that is lost is redone by
//! the next read of the key or by anti-entropy, and its answer is dropped.

use crate::event::{Now, OpId, RepairEvent, ReplicateEvent, ReplyTo, StorageEvent, StorageRequest};
use crate::seda::{Machine, Outbox};
use crate::wire::{Bytes, Message, ReplicaWrite};
use crate::NodeId;
use std::time::Duration;

/// How long a repair write may wait for its peer before the replication stage forgets it.
const REPAIR_DEADLINE: Duration = Duration::from_secs(5);

/// The repair stage's machine.
pub struct RepairMachine {
    node: NodeId,
    next_op: u64,
}

impl RepairMachine {
    /// A repair worker for `node`.
    pub fn new(node: NodeId) -> RepairMachine {
        RepairMachine { node, next_op: 0 }
    }
}

impl Machine for RepairMachine {
    type Input = RepairEvent;

    fn on_event(&mut self, now: Now, repair: RepairEvent, out: &mut Outbox) {
        for target in repair.targets {
            self.next_op += 1;
            let op = OpId(self.next_op);
            // Offered, not requested: background work yields to foreground, and a dropped
            // repair is redone later.
            if target == self.node {
                out.offer(StorageEvent {
                    op,
                    reply_to: ReplyTo::Nobody,
                    request: StorageRequest::Merge {
                        key: repair.key.clone(),
                        versions: repair.versions.clone(),
                    },
                });
            } else {
                let message = Message::ReplicaWrite(ReplicaWrite {
                    key: Bytes::from(repair.key.clone()),
                    versions: repair.versions.clone(),
                    hint: None,
                });
                out.offer(ReplicateEvent::Send {
                    peer: target,
                    op,
                    message,
                    deadline: now.instant + REPAIR_DEADLINE,
                    reply_to: ReplyTo::Nobody,
                });
            }
        }
    }
}
