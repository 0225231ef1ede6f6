//! The read repair stage (Dynamo §4.5), background class: sends a read's reconciled versions to
//! the replicas that answered with something else. Each repair write takes a token from the
//! stage's gate; writes the gate has no token for wait in a bounded list for the next event or
//! tick, so repair never competes with foreground requests beyond the rate the resource
//! controller gives it.
//!
//! Repairs are fire-and-forget (`ReplyTo::Nobody`): a repair write that is lost, or dropped
//! because the list is full (counted, and shown by `admin throttle`), is redone by the next
//! read of the key or by anti-entropy.

use crate::event::{Now, OpId, RepairEvent, ReplicateEvent, ReplyTo, StorageEvent, StorageRequest};
use crate::seda::{Gate, Machine, Outbox};
use crate::versioning::VersionSet;
use crate::wire::{Bytes, Message, ReplicaWrite};
use crate::NodeId;
use std::collections::VecDeque;
use std::time::Duration;

/// How long a repair write may wait for its peer before the replication stage forgets it.
const REPAIR_DEADLINE: Duration = Duration::from_secs(5);
/// Most repair writes waiting for tokens; past it new ones are dropped (and counted), since a
/// later read or anti-entropy redoes them and memory must stay bounded.
pub const MAX_PENDING_REPAIRS: usize = 4096;

/// One repair write: a key's reconciled versions for one replica.
struct RepairWrite {
    key: Vec<u8>,
    versions: VersionSet,
    target: NodeId,
}

/// The repair stage's machine.
pub struct RepairMachine {
    node: NodeId,
    /// One token per repair write.
    gate: Gate,
    /// Writes waiting for tokens, oldest first.
    pending: VecDeque<RepairWrite>,
    /// Writes dropped because `pending` was full.
    dropped: u64,
    next_op: u64,
}

impl RepairMachine {
    /// A repair worker for `node`, paced by `gate`.
    pub fn new(node: NodeId, gate: Gate) -> RepairMachine {
        RepairMachine {
            node,
            gate,
            pending: VecDeque::new(),
            dropped: 0,
            next_op: 0,
        }
    }

    /// Repair writes dropped so far because too many were waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sends waiting writes while the gate grants tokens, then reports what still waits.
    fn send_pending(&mut self, now: Now, out: &mut Outbox) {
        while !self.pending.is_empty() && self.gate.try_take(1, now.instant) {
            if let Some(write) = self.pending.pop_front() {
                self.send(now, write, out);
            }
        }
        self.gate.report_backlog(self.pending.len() as u64);
    }

    fn send(&mut self, now: Now, write: RepairWrite, out: &mut Outbox) {
        self.next_op += 1;
        out.count(crate::seda::Count::RepairWrites(1));
        let op = OpId(self.next_op);
        // Offered, not requested: background work yields to foreground, and a dropped repair
        // is redone later.
        if write.target == self.node {
            out.offer(StorageEvent {
                op,
                reply_to: ReplyTo::Nobody,
                request: StorageRequest::Merge {
                    key: write.key,
                    versions: write.versions,
                    durable: false,
                },
            });
        } else {
            let message = Message::ReplicaWrite(ReplicaWrite {
                key: Bytes::from(write.key),
                versions: write.versions,
                hint: None,
                durable: false,
            });
            out.offer(ReplicateEvent::Send {
                peer: write.target,
                op,
                message,
                deadline: now.instant + REPAIR_DEADLINE,
                reply_to: ReplyTo::Nobody,
            });
        }
    }
}

impl Machine for RepairMachine {
    type Input = RepairEvent;

    fn on_event(&mut self, now: Now, repair: RepairEvent, out: &mut Outbox) {
        for target in repair.targets {
            if self.pending.len() >= MAX_PENDING_REPAIRS {
                self.dropped += 1;
                self.gate.report_dropped(self.dropped);
                continue;
            }
            self.pending.push_back(RepairWrite {
                key: repair.key.clone(),
                versions: repair.versions.clone(),
                target,
            });
        }
        self.send_pending(now, out);
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        self.send_pending(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::seda::Effect;
    use std::time::Instant;

    fn repair(targets: usize) -> RepairEvent {
        RepairEvent {
            key: b"k".to_vec(),
            versions: VersionSet::default(),
            targets: (0..targets).map(|i| NodeId::new(format!("n{i}"))).collect(),
        }
    }

    fn sends(out: &mut Outbox) -> usize {
        out.take()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        event: Event::Replicate(_) | Event::Storage(_),
                        ..
                    }
                )
            })
            .count()
    }

    /// Goal: repair writes beyond the gate's tokens wait and go out on later ticks at the
    /// gate's rate; the backlog the gate sees is what waits.
    #[test]
    fn repair_writes_beyond_the_rate_wait_for_later_ticks() {
        let start = Instant::now();
        let gate = Gate::new(Some(25), start); // a burst of 10 (400 ms at 25/s)
        let mut machine = RepairMachine::new(NodeId::new("me"), gate.clone());
        let mut out = Outbox::new();
        let now = |ms: u64| Now {
            instant: start + Duration::from_millis(ms),
            wall_ms: 0,
        };
        machine.on_event(now(0), repair(30), &mut out);
        assert_eq!(sends(&mut out), 10);
        assert_eq!(gate.reading().backlog, 20);
        machine.on_tick(now(400), &mut out);
        assert_eq!(sends(&mut out), 10);
        machine.on_tick(now(800), &mut out);
        assert_eq!(sends(&mut out), 10);
        assert_eq!(gate.reading().backlog, 0);
    }

    /// Goal: the list of waiting writes is bounded; what does not fit is dropped and counted.
    #[test]
    fn waiting_repairs_are_bounded() {
        let start = Instant::now();
        let mut machine = RepairMachine::new(NodeId::new("me"), Gate::new(Some(0), start));
        let mut out = Outbox::new();
        let now = Now {
            instant: start,
            wall_ms: 0,
        };
        machine.on_event(now, repair(MAX_PENDING_REPAIRS + 7), &mut out);
        assert_eq!(machine.dropped(), 7);
        assert_eq!(machine.gate.reading().dropped, 7, "shown by admin throttle");
        assert_eq!(sends(&mut out), 0);
    }
}
