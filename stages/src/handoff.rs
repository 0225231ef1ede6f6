//! Hinted handoff (Dynamo §4.6), background class: hands the hints this node keeps for other
//! nodes back to them once they answer again.
//!
//! DRIVER SIDE (here): every tick, if no delivery is in flight, read the next batch of hints
//! from the store (resuming after the last one, so undeliverable hints do not block the rest)
//! and send each to its intended node as a plain `ReplicaWrite`, one rate-gate token per hint;
//! when tokens run out the rest wait for the next tick. A hint is deleted only after the
//! intended node acknowledged it, and only if it still holds exactly what was delivered (a
//! write that reached the hint meanwhile is delivered next round). A node that is still down
//! fails fast (its link is backing off), and its hints wait for a later round.
//!
//! RECEIVER SIDE: the intended node merges the versions like any replica write.
//!
//! Hints live in fjall, so they survive a restart of this node.

use crate::replicate::{ReplicateEvent, HANDOFF_OP_BIT};
use crate::seda::{RateGate, Stage, StageSender};
use crate::storage::{Hint, OpId, Store};
use crate::wire::{Bytes, Message, ReplicaWrite};
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hints read from the store per round.
const HINTS_PER_ROUND: usize = 256;
/// How long a delivery may wait for its acknowledgement before the round is retried.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(5);

/// The handoff stage's events: answers to deliveries, routed by the replication stage.
#[derive(Debug)]
pub enum HandoffEvent {
    /// The intended node answered a delivery (or could not be reached).
    Delivered {
        /// The delivery.
        op: OpId,
        /// Whether the node acknowledged it.
        acknowledged: bool,
    },
}

impl fmt::Display for HandoffEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffEvent::Delivered { op, acknowledged } => {
                write!(f, "delivery {op} acknowledged: {acknowledged}")
            }
        }
    }
}

/// The handoff stage.
pub struct HandoffStage {
    store: Store,
    replicate: StageSender<ReplicateEvent>,
    gate: Arc<Mutex<RateGate>>,
    /// Deliveries awaiting acknowledgement, with their deadline.
    in_flight: HashMap<OpId, (Hint, Instant)>,
    /// Where the next round resumes in the hints keyspace (`None`: from the start).
    cursor: Option<Vec<u8>>,
    next_op: u64,
    logger: Logger,
}

impl HandoffStage {
    /// A handoff worker paced by `gate` (one token per hint).
    pub fn new(
        store: Store,
        replicate: StageSender<ReplicateEvent>,
        gate: Arc<Mutex<RateGate>>,
        logger: Logger,
    ) -> HandoffStage {
        HandoffStage {
            store,
            replicate,
            gate,
            in_flight: HashMap::new(),
            cursor: None,
            next_op: 0,
            logger,
        }
    }

    /// Sends the next round of hints, as far as the rate gate allows.
    fn deliver_round(&mut self, now: Instant) {
        let hints = match self
            .store
            .hints_batch(self.cursor.as_deref(), HINTS_PER_ROUND)
        {
            Ok(hints) => hints,
            Err(error) => {
                warn!(self.logger, "cannot read hints"; "error" => %error);
                return;
            }
        };
        if hints.is_empty() {
            self.cursor = None; // the scan reached the end; start over next round
            return;
        }
        for hint in hints {
            let wait = match self.gate.lock() {
                Ok(mut gate) => gate.acquire(1, now),
                Err(_) => Duration::ZERO,
            };
            if !wait.is_zero() {
                return; // out of tokens: this hint and the rest go next round
            }
            self.cursor = Some(hint.hint_key.clone());
            self.next_op = (self.next_op + 1) & !(HANDOFF_OP_BIT | crate::replicate::REPAIR_OP_BIT);
            let op = self.next_op | HANDOFF_OP_BIT;
            let message = Message::ReplicaWrite(ReplicaWrite {
                key: Bytes::from(hint.key.clone()),
                versions: hint.versions.clone(),
                hint: None,
            });
            let deadline = now + DELIVERY_DEADLINE;
            let send = ReplicateEvent::Send {
                peer: hint.target.clone(),
                op,
                message,
                deadline,
            };
            if self.replicate.try_send(send).is_ok() {
                self.in_flight.insert(op, (hint, deadline));
            }
        }
    }

    fn on_delivered(&mut self, op: OpId, acknowledged: bool) {
        let Some((hint, _)) = self.in_flight.remove(&op) else {
            return;
        };
        if !acknowledged {
            return;
        }
        match self.store.delete_hint_if_unchanged(&hint) {
            Ok(true) => info!(self.logger, "hint handed off"; "target" => %hint.target),
            Ok(false) => {} // it changed meanwhile: the next round delivers the new versions
            Err(error) => warn!(self.logger, "cannot delete delivered hint"; "error" => %error),
        }
    }
}

impl Stage for HandoffStage {
    type Event = HandoffEvent;

    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<HandoffEvent>) {
        for event in batch.drain(..) {
            match event {
                HandoffEvent::Delivered { op, acknowledged } => self.on_delivered(op, acknowledged),
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.in_flight.retain(|_, (_, deadline)| *deadline > now);
        if self.in_flight.is_empty() {
            self.deliver_round(now);
        }
    }
}
