//! Hinted handoff (Dynamo §4.6), background class: hands the hints this node keeps for other
//! nodes back to them once they answer again.
//!
//! DRIVER SIDE (here): every tick, if no delivery is in flight, ask storage for the next batch
//! of hints (resuming after the last one, so undeliverable hints do not block the rest) and
//! send each to its intended node as a plain `ReplicaWrite`, one rate-gate token per hint;
//! when tokens run out the rest wait for the next round. A hint is deleted only after the
//! intended node acknowledged it, and only if it still holds exactly what was delivered (a
//! write that reached the hint meanwhile is delivered next round). A node that is still down
//! fails fast (its link is backing off), and its hints wait for a later round; after a round
//! in which every delivery failed the next rounds pause (400 ms, doubling to 2 s), so hints
//! for a dead node are not read and resent five times a second.
//!
//! RECEIVER SIDE: the intended node merges the versions like any replica write.
//!
//! A hint whose intended node no longer holds the key's partition (it left, or was removed,
//! after the hint was written) is delivered to the key's current replicas instead, and
//! deleted once every one of them acknowledged it: a write must not vanish with a leaver.
//!
//! Hints live in the store, so they survive a restart of this node. The machine reads and
//! deletes them through the storage stage, never directly.

use crate::error::ServiceError;
use crate::event::{
    Event, HandoffEvent, Hint, Now, OpId, PeerDone, ReplicateEvent, ReplyTo, StorageDone,
    StorageEvent, StorageOutcome, StorageRequest,
};
use crate::membership::MembershipView;
use crate::seda::{Gate, Machine, Outbox};
use crate::wire::{Bytes, Message, ReplicaWrite};
use crate::NodeId;
use slog::{info, warn, Logger};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Hints read from the store per round.
const HINTS_PER_ROUND: usize = 256;
/// How long a delivery may wait for its acknowledgement before the round is retried.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(5);
/// How long a hint scan may wait for storage before it is asked again.
const SCAN_DEADLINE: Duration = Duration::from_secs(5);
/// The first pause after a round in which every delivery failed (the targets are down); it
/// doubles per such round up to [`MAX_ROUND_BACKOFF`], and one delivery that succeeds ends
/// it. Without it, hints for a down node are read from storage and sent to a dead link five
/// times a second, which costs the foreground for nothing.
const MIN_ROUND_BACKOFF: Duration = Duration::from_millis(400);
/// The longest pause between failing rounds: also the longest a returning node waits for its
/// hints beyond the failure detector's probe.
const MAX_ROUND_BACKOFF: Duration = Duration::from_secs(2);

/// A hint sent to several current replicas (its intended node no longer holds its key).
struct Fanout {
    /// Answers still awaited.
    remaining: usize,
    /// Whether one of them failed (then the hint stays for the next round).
    failed: bool,
}

/// The handoff stage's machine.
pub struct HandoffMachine {
    /// One token per hint delivered; the backlog it reports is the hints this node holds, as
    /// storage counted them with the last scan.
    gate: Gate,
    /// The hint scan storage is working on: its operation and when it was asked.
    scanning: Option<(OpId, Instant)>,
    /// How many hints that scan asked for (fewer back means the pass reached the end).
    scan_limit: usize,
    /// Deliveries awaiting acknowledgement, with their deadline.
    in_flight: BTreeMap<OpId, (Hint, Instant)>,
    /// Where the next round resumes in the hints keyspace (`None`: from the start).
    cursor: Option<Vec<u8>>,
    /// Deliveries of the current round acknowledged.
    round_acked: u64,
    /// Deliveries of the current round that failed (refused, lost or past their deadline).
    round_failed: u64,
    /// The pause after rounds in which every delivery failed (zero after a success).
    backoff: Duration,
    /// When the current pause ends (`None`: no pause).
    paused_until: Option<Instant>,
    next_op: u64,
    /// The membership, this node and N, to send hints of departed nodes to the current
    /// replicas (`None`: always to the intended node).
    membership: Option<(MembershipView, NodeId, usize)>,
    /// Hints sent to several current replicas: acknowledgements still awaited, and whether
    /// one failed (then the hint stays for the next round).
    fanout: BTreeMap<Vec<u8>, Fanout>,
    /// Merges of retargeted hints into this node's own store, awaiting storage.
    local_merges: BTreeMap<OpId, Hint>,
    logger: Logger,
}

impl HandoffMachine {
    /// A handoff worker paced by `gate` (one token per hint).
    pub fn new(gate: Gate, logger: Logger) -> HandoffMachine {
        HandoffMachine {
            gate,
            scanning: None,
            scan_limit: HINTS_PER_ROUND,
            in_flight: BTreeMap::new(),
            cursor: None,
            round_acked: 0,
            round_failed: 0,
            backoff: Duration::ZERO,
            paused_until: None,
            next_op: 0,
            membership: None,
            fanout: BTreeMap::new(),
            local_merges: BTreeMap::new(),
            logger,
        }
    }

    /// Sends hints whose intended node no longer holds their key to the key's current
    /// replicas, as `membership` says (this node is `me`; N replicas per key).
    pub fn retargeting(mut self, membership: MembershipView, me: NodeId, n: usize) -> Self {
        self.membership = Some((membership, me, n));
        self
    }

    /// Where a hint goes: its intended node, or (if that node no longer holds the key's
    /// partition) every current replica but this node, and whether this node is one too.
    fn destinations(&self, hint: &Hint) -> (Vec<NodeId>, bool) {
        let Some((view, me, n)) = &self.membership else {
            return (vec![hint.target.clone()], false);
        };
        let m = view.current();
        let partition = m.ring().partition_of(&hint.key);
        if m.holds(&hint.target, partition, *n) {
            return (vec![hint.target.clone()], false);
        }
        let replicas = m.replicas(partition, *n);
        let mut nodes: Vec<NodeId> = replicas
            .list
            .primaries
            .into_iter()
            .chain(replicas.also_write)
            .collect();
        let local = nodes.contains(me);
        nodes.retain(|node| node != me);
        (nodes, local)
    }

    /// A delivery failed: a hint sent to several replicas is kept if any of them failed.
    fn delivery_failed(&mut self, hint: &Hint, out: &mut Outbox) {
        self.round_failed += 1;
        self.fanout_answer(hint, false, out);
    }

    /// Counts one answer of a fanned-out hint; deletes it once all acknowledged.
    fn fanout_answer(&mut self, hint: &Hint, acked: bool, out: &mut Outbox) {
        let Some(fanout) = self.fanout.get_mut(&hint.hint_key) else {
            return;
        };
        fanout.remaining = fanout.remaining.saturating_sub(1);
        fanout.failed |= !acked;
        if fanout.remaining == 0 {
            let failed = fanout.failed;
            self.fanout.remove(&hint.hint_key);
            if !failed {
                let delete = self.storage(StorageRequest::DeleteHint { hint: hint.clone() });
                out.request(delete);
            }
        }
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn storage(&mut self, request: StorageRequest) -> StorageEvent {
        StorageEvent {
            op: self.new_op(),
            reply_to: ReplyTo::Handoff,
            request,
        }
    }

    /// Asks storage for the next batch of hints: as many as the gate has tokens for (so a
    /// slow rate does not make storage read hints only to leave most of them), none while it
    /// has none.
    fn start_round(&mut self, now: Instant, out: &mut Outbox) {
        let tokens = self.gate.available(now);
        if tokens == 0 {
            return;
        }
        self.scan_limit = HINTS_PER_ROUND.min(usize::try_from(tokens).unwrap_or(usize::MAX));
        let scan = self.storage(StorageRequest::ReadHints {
            after: self.cursor.clone(),
            limit: self.scan_limit,
        });
        self.scanning = Some((scan.op, now));
        out.request(scan);
    }

    /// Sends a batch of hints, as far as the rate gate allows, and reports the backlog: every
    /// hint the node holds (`held`, exact as of the scan).
    fn deliver(&mut self, now: Instant, hints: Vec<Hint>, held: u64, out: &mut Outbox) {
        self.gate.report_backlog(held);
        let end_of_pass = hints.len() < self.scan_limit;
        let scanned = hints.len();
        let mut sent = 0;
        for hint in hints {
            if !self.gate.try_take(1, now) {
                break; // out of tokens: this hint and the rest go next round
            }
            sent += 1;
            self.cursor = Some(hint.hint_key.clone());
            let (destinations, local) = self.destinations(&hint);
            if destinations != [hint.target.clone()] {
                let count = destinations.len() + usize::from(local);
                if count == 0 {
                    continue; // no replica at all in this view: the hint waits
                }
                info!(self.logger, "hint for a node that no longer holds its key goes to the current replicas";
                      "intended" => %hint.target, "replicas" => count);
                let fanout = Fanout {
                    remaining: count,
                    failed: false,
                };
                self.fanout.insert(hint.hint_key.clone(), fanout);
            }
            if local {
                // This node is a current replica too: its copy is merged here, and counts as
                // one acknowledgement once storage has it.
                let merge = self.storage(StorageRequest::Merge {
                    key: hint.key.clone(),
                    versions: hint.versions.clone(),
                    durable: false,
                });
                self.local_merges.insert(merge.op, hint.clone());
                out.request(merge);
            }
            let deadline = now + DELIVERY_DEADLINE;
            for peer in destinations {
                let op = self.new_op();
                let message = Message::ReplicaWrite(ReplicaWrite {
                    key: Bytes::from(hint.key.clone()),
                    versions: hint.versions.clone(),
                    hint: None,
                    durable: false,
                });
                out.request(ReplicateEvent::Send {
                    peer,
                    op,
                    message,
                    deadline,
                    reply_to: ReplyTo::Handoff,
                });
                self.in_flight.insert(op, (hint.clone(), deadline));
            }
        }
        if end_of_pass && sent == scanned {
            self.cursor = None; // every hint of the pass was sent; the next round starts over
        }
    }

    fn on_storage(&mut self, now: Instant, done: StorageDone, out: &mut Outbox) {
        if let Some(hint) = self.local_merges.remove(&done.op) {
            if done.result.is_ok() {
                self.round_acked += 1;
                self.fanout_answer(&hint, true, out);
            } else {
                self.delivery_failed(&hint, out);
            }
            return;
        }
        let scan = self.scanning.is_some_and(|(op, _)| op == done.op);
        match done.result {
            Ok(StorageOutcome::Hints { hints, held }) if scan => {
                self.scanning = None;
                self.deliver(now, hints, held, out);
            }
            Ok(StorageOutcome::HintDeleted(true)) => info!(self.logger, "hint handed off"),
            // It changed meanwhile: the next round delivers the new versions.
            Ok(StorageOutcome::HintDeleted(false)) => {}
            Ok(_) => {}
            Err(error) => {
                if scan {
                    self.scanning = None;
                }
                warn!(self.logger, "hint storage operation failed"; "error" => %error);
            }
        }
    }

    fn on_delivered(&mut self, done: PeerDone, out: &mut Outbox) {
        let Some((hint, _)) = self.in_flight.remove(&done.op) else {
            return;
        };
        let acked = matches!(done.result, Ok(Message::ReplicaReply(_)));
        if self.fanout.contains_key(&hint.hint_key) {
            if acked {
                self.round_acked += 1;
                self.fanout_answer(&hint, true, out);
            } else {
                self.delivery_failed(&hint, out);
            }
        } else if acked {
            self.round_acked += 1;
            let delete = self.storage(StorageRequest::DeleteHint { hint });
            out.request(delete);
        } else {
            self.round_failed += 1;
        }
    }

    /// A round ended (nothing in flight): if every delivery failed, pause the next rounds,
    /// longer each time; one success ends the pause.
    fn end_round(&mut self, now: Instant) {
        if self.round_acked == 0 && self.round_failed > 0 {
            self.backoff = (self.backoff * 2).clamp(MIN_ROUND_BACKOFF, MAX_ROUND_BACKOFF);
            self.paused_until = Some(now + self.backoff);
        } else if self.round_acked > 0 {
            self.backoff = Duration::ZERO;
            self.paused_until = None;
        }
        self.round_acked = 0;
        self.round_failed = 0;
    }

    /// Deliveries awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

impl Machine for HandoffMachine {
    type Input = HandoffEvent;

    fn on_event(&mut self, now: Now, event: HandoffEvent, out: &mut Outbox) {
        match event {
            HandoffEvent::Storage(done) => self.on_storage(now.instant, done, out),
            HandoffEvent::Peer(done) => self.on_delivered(done, out),
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        let now = now.instant;
        let expired: Vec<OpId> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            if let Some((hint, _)) = self.in_flight.remove(&op) {
                self.delivery_failed(&hint, out);
            }
        }
        if self
            .scanning
            .is_some_and(|(_, asked)| now.saturating_duration_since(asked) >= SCAN_DEADLINE)
        {
            self.scanning = None; // storage's answer was lost; ask again
        }
        if self.in_flight.is_empty() && self.scanning.is_none() {
            self.end_round(now);
            if self.paused_until.is_some_and(|until| now < until) {
                return;
            }
            self.start_round(now, out);
        }
    }

    /// A full queue: a delivery not sent stays a hint for the next round; a scan not taken
    /// is asked again on the next tick; a deletion not taken is redone after the next
    /// delivery of the same hint.
    fn on_refused(&mut self, _now: Now, event: Event, _error: ServiceError, out: &mut Outbox) {
        match event {
            Event::Replicate(ReplicateEvent::Send { op, .. }) => {
                if let Some((hint, _)) = self.in_flight.remove(&op) {
                    self.delivery_failed(&hint, out);
                }
            }
            Event::Storage(StorageEvent { op, .. })
                if self.scanning.is_some_and(|(scan, _)| scan == op) =>
            {
                self.scanning = None;
            }
            Event::Storage(StorageEvent { op, .. }) => {
                if let Some(hint) = self.local_merges.remove(&op) {
                    self.delivery_failed(&hint, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::seda::Effect;
    use crate::versioning::VersionSet;
    use crate::NodeId;

    fn at(start: Instant, ms: u64) -> Now {
        Now {
            instant: start + Duration::from_millis(ms),
            wall_ms: 0,
        }
    }

    /// The operation of the hint scan the outbox holds, if any.
    fn scan_op(out: &mut Outbox) -> Option<OpId> {
        out.take().into_iter().find_map(|effect| match effect {
            Effect::Send {
                event:
                    Event::Storage(StorageEvent {
                        op,
                        request: StorageRequest::ReadHints { .. },
                        ..
                    }),
                ..
            } => Some(op),
            _ => None,
        })
    }

    /// The operations of the deliveries the outbox holds.
    fn delivery_ops(out: &mut Outbox) -> Vec<OpId> {
        out.take()
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Send {
                    event: Event::Replicate(ReplicateEvent::Send { op, .. }),
                    ..
                } => Some(op),
                _ => None,
            })
            .collect()
    }

    fn hint(i: u8) -> Hint {
        Hint {
            hint_key: vec![i],
            target: NodeId::new("down"),
            key: vec![i],
            versions: VersionSet::default(),
        }
    }

    /// Goal: after a round in which every delivery failed (the target is down), the next
    /// round waits for the pause instead of reading and resending the hints at every tick;
    /// the pause grows while rounds keep failing. Method: a machine driven by hand.
    #[test]
    fn rounds_that_only_fail_pause_and_the_pause_grows() {
        let start = Instant::now();
        let logger = Logger::root(slog::Discard, slog::o!());
        let mut machine = HandoffMachine::new(Gate::new(None, start), logger);
        let mut out = Outbox::new();
        let failing_round = |machine: &mut HandoffMachine, out: &mut Outbox, ms: u64| {
            machine.on_tick(at(start, ms), out);
            let scan = scan_op(out).expect("a round starts with a scan");
            let done = StorageDone {
                op: scan,
                result: Ok(StorageOutcome::Hints {
                    hints: vec![hint(1), hint(2)],
                    held: 2,
                }),
                durable: false,
            };
            machine.on_event(at(start, ms), HandoffEvent::Storage(done), out);
            for op in delivery_ops(out) {
                let failed = PeerDone {
                    op,
                    peer: NodeId::new("down"),
                    result: Err(ServiceError::ShuttingDown),
                };
                machine.on_event(at(start, ms), HandoffEvent::Peer(failed), out);
            }
        };
        failing_round(&mut machine, &mut out, 0);
        machine.on_tick(at(start, 200), &mut out);
        assert_eq!(scan_op(&mut out), None, "paused after a failing round");
        // The pause (400 ms) was decided at 200 ms: the next round starts at 600 ms.
        failing_round(&mut machine, &mut out, 600);
        machine.on_tick(at(start, 800), &mut out);
        machine.on_tick(at(start, 1200), &mut out);
        assert_eq!(
            scan_op(&mut out),
            None,
            "the second pause is longer (800 ms)"
        );
        machine.on_tick(at(start, 1600), &mut out);
        assert!(scan_op(&mut out).is_some(), "rounds resume after the pause");
    }
}
