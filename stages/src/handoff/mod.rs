//! Hinted handoff (Dynamo §4.6), background class: hands the hints this node keeps for other
//! nodes back to them once they answer again.
//!
//! DRIVER SIDE (here): every tick, if no delivery is in flight, ask storage for the next batch
//! of hints (resuming after the last one, so undeliverable hints do not block the rest) and
//! send them, one rate-gate token per hint; when tokens run out the rest wait for the next
//! round. A round whose deliveries were all acknowledged starts the next one at once while
//! the gate holds a full round's tokens, so a high rate, not the tick, is what paces handoff.
//! The hints of a round meant for one node travel together as a `HandoffBatch` (split only
//! to stay well under the frame limit): the returning node merges the whole batch as one
//! storage operation (cut by storage into chunks of 32, with one flush at the end), where a
//! `ReplicaWrite` per hint cost it a frame, a coordinator hop, a storage operation and a
//! group-commit turn each, the same as a foreground write, while four fallbacks aimed all of
//! that at it at once. The hints of a batch are
//! deleted, in one storage operation, only after the intended node acknowledged the batch,
//! and each only if it still holds exactly what was delivered (a write that reached the hint
//! meanwhile is delivered next round). A node that is still down fails fast (its link is
//! backing off), and its hints wait for a later round; after a round in which every delivery
//! failed the next rounds pause (400 ms, doubling to 2 s), so hints for a dead node are not
//! read and resent five times a second. The pause ends early when the coordinator's failure
//! detector sees a down peer answer again (`HandoffEvent::PeerUp`): a returning node got its
//! first hints up to 3.3 s after it was back (`benches/hinted_handoff.sh`'s node logs). Only
//! for a peer this node's coordinator saw fail: a fallback that holds hints for a peer it
//! never sent a request to itself (another coordinator chose it) waits out its pause, at most
//! [`MAX_ROUND_BACKOFF`], as before.
//!
//! RECEIVER SIDE (`receive.rs`): a `HandoffBatch` from a fallback is merged by clock like any
//! replica write (`StorageRequest::Sync`) and acknowledged with `HandoffAck`; one holding a
//! key whose partition the receiver holds in no ring of its view is refused whole
//! (`NotAReplica`), as a replica write would be. The receiver
//! pays for what it merges too, one token of its own gate per object, because the returning
//! node is where a backlog hurts the foreground: four fallbacks pacing themselves, each on its
//! own latency, had no way to see the damage they did there (issue 9's benchmark: with every
//! fallback held to a steady 1000 hints/s, two runs gave the client a p99.9 of 7.4x and 8.4x
//! the baseline through a 40 s drain and a third 2.5x, in which the returning node's own p99
//! was 12-56 ms with a 140 ms peak, against 3-18 ms in the baseline, and the client's worst
//! seconds were its worst periods). So the returning node's controller decides how fast it
//! takes hints in: a batch that arrives while the receiver still owes tokens for the last one
//! is answered `Overloaded` without being merged (the fallback keeps its hints, and offers
//! more after the shortest pause if nothing of its round got in: a busy node is up, but
//! reads each batch it refuses), and one that arrives with nothing owed is merged and charged
//! whole (the debt is paid as tokens accrue, so a batch larger than the bucket still gets
//! in; one storage refuses or fails is not charged). Refused objects count in the backlog the
//! gate reports for a second (once per batch, however often its sender offers it again), so
//! the receiver's controller gives its handoff stage a share of the budget while hints wait
//! to come in; the sender gets back the tokens it spent on a batch refused as busy. A
//! handoff gate pinned at 0 pauses taking hints in as well as handing them off.
//!
//! A hint whose intended node no longer holds the key's partition (`retarget.rs`; it left, was
//! removed, or the partition moved away after the hint was written) is delivered to the key's
//! current replicas instead, one `ReplicaWrite` each, this node's own copy merged here (rare: only
//! after a membership change), and deleted once every one of them acknowledged it: a write must
//! not vanish with a leaver.
//!
//! Hints live in the store, so they survive a restart of this node. The machine reads and
//! deletes them through the storage stage, never directly.

use crate::error::ServiceError;
use crate::event::{
    ConnId, Event, HandoffEvent, Hint, IntakeEvent, Now, OpId, Origin, PeerDone, ReplicateEvent,
    ReplyTo, StorageDone, StorageEvent, StorageOutcome, StorageRequest,
};
use crate::membership::MembershipView;
use crate::seda::{Gate, LogLimits, Machine, Outbox};
use crate::versioning::VersionSet;
use crate::wire::{
    AaeObject, Bytes, HandoffAck, HandoffBatch, Message, ReplicaWrite, MAX_AAE_ITEMS,
};
use crate::NodeId;
use retarget::Fanout;
use slog::{debug, info, warn, Logger};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Hints read from the store per round.
const HINTS_PER_ROUND: usize = 256;

/// How long the objects of a batch refused for want of tokens count as this node's backlog:
/// the fallbacks send them again within their longest pause ([`MAX_ROUND_BACKOFF`]), but
/// most come back sooner, and demand that stopped must stop claiming budget.
const REFUSED_WINDOW: Duration = Duration::from_secs(1);
/// Refused batches remembered for the backlog at once: a round is at most 256 hints, so a
/// few per sender; the bound only keeps a peer sending odd batches from growing the map.
const MAX_REFUSED_TRACKED: usize = 1024;
/// A batch to one node stops growing at about this many bytes (a hint larger than this goes
/// alone), unless the frame limit asks for less: see [`HandoffMachine::batch_bytes`].
pub const DEFAULT_BATCH_BYTES: usize = 256 * 1024;
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
/// hints if the failure detector's `PeerUp` is lost (offered to a full queue).
const MAX_ROUND_BACKOFF: Duration = Duration::from_secs(2);

/// One delivery awaiting its answer.
struct Delivery {
    /// The hints it carries: a batch for their intended node, or the one hint of a fanout
    /// sent to one current replica.
    hints: Vec<Hint>,
    /// Whether it is a fanout's `ReplicaWrite` (counted in [`Fanout`]) or a `HandoffBatch`.
    fanout: bool,
    /// When it counts as failed.
    deadline: Instant,
}

/// The handoff stage's machine.
pub struct HandoffMachine {
    /// One token per hint delivered and one per object of a batch taken in; the backlog it
    /// reports is the hints this node holds (as storage counted them with the last scan),
    /// plus what it owes and refused as a receiver (see the module's RECEIVER SIDE).
    gate: Gate,
    /// The hint scan storage is working on: its operation and when it was asked.
    scanning: Option<(OpId, Instant)>,
    /// How many hints that scan asked for (fewer back means the pass reached the end).
    scan_limit: usize,
    /// Deliveries awaiting acknowledgement.
    in_flight: BTreeMap<OpId, Delivery>,
    /// Where the next round resumes in the hints keyspace (`None`: from the start).
    cursor: Option<Vec<u8>>,
    /// Hints of the current round acknowledged.
    round_acked: u64,
    /// Hints of the current round whose delivery failed (refused, lost or past the deadline).
    round_failed: u64,
    /// Hints of the current round the target refused as busy (`Overloaded`: its own gate
    /// or a full queue). Not failures: the round does not chain, and if nothing of it was
    /// acknowledged it pauses the shortest pause, never a growing one (see
    /// [`HandoffMachine::end_round`]).
    round_busy: u64,
    /// Hints sent to their key's current replicas, counted for the log (`retarget.rs`).
    retargeted: retarget::Retargeted,
    /// The pause after rounds in which every delivery failed (zero after a success).
    backoff: Duration,
    /// When the current pause ends (`None`: no pause).
    paused_until: Option<Instant>,
    next_op: u64,
    /// A batch to one node stops growing at about this many bytes.
    batch_bytes: usize,
    /// The membership, this node and N, to send hints of departed nodes to the current
    /// replicas (`None`: always to the intended node).
    membership: Option<(MembershipView, NodeId, usize)>,
    /// Hints sent to several current replicas: acknowledgements still awaited, and whether
    /// one failed (then the hint stays for the next round).
    fanout: BTreeMap<Vec<u8>, Fanout>,
    /// Merges of retargeted hints into this node's own store, awaiting storage.
    local_merges: BTreeMap<OpId, Hint>,
    /// Batches received from fallbacks, being merged: where to answer and how many objects.
    serving: BTreeMap<OpId, (Origin, u32)>,
    /// Hints this node holds, as storage counted them with the last scan.
    held: u64,
    /// Hints handed off and deleted since the count last read 0: logged once when it does
    /// again (a line per batch was dozens per returning node, and "deleted" read as alarming).
    handed_off: u64,
    /// Tokens still owed for received batches already admitted (see the module's RECEIVER
    /// SIDE): no batch is admitted while any are.
    receive_debt: u64,
    /// Failed hint storage operations' log lines, at most one a second per kind of error.
    failures: LogLimits<std::mem::Discriminant<ServiceError>>,
    /// Objects of batches refused for want of tokens, by sender (its connection) and a hash
    /// of the batch's first key (keys may be 64 KiB), with when: the demand the backlog
    /// reports for [`REFUSED_WINDOW`]. Keyed so a batch offered again replaces its own entry
    /// (a fallback offers the same hints again after its pause: summing every offer counted
    /// one backlog two or three times a second) while a round's several batches add up. At
    /// most [`MAX_REFUSED_TRACKED`] entries, entries past the window dropped first.
    refused: BTreeMap<(ConnId, u64), (Instant, u64)>,
    /// Hints (by hint key) of batches the target refused with an answer (not a lost link or
    /// a full queue): one bad object (too many versions, a limit the target sets lower)
    /// refuses its whole batch, and scans in key order would batch it with the same
    /// neighbours every pass. These go alone, so only the bad one stays behind. So do the
    /// hints of a partition the target said it does not hold (`NotAReplica`), until it
    /// takes them.
    solo: BTreeSet<Vec<u8>>,
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
            retargeted: retarget::Retargeted::default(),
            round_busy: 0,
            backoff: Duration::ZERO,
            paused_until: None,
            next_op: 0,
            batch_bytes: DEFAULT_BATCH_BYTES,
            membership: None,
            fanout: BTreeMap::new(),
            local_merges: BTreeMap::new(),
            serving: BTreeMap::new(),
            held: 0,
            handed_off: 0,
            receive_debt: 0,
            failures: LogLimits::default(),
            refused: BTreeMap::new(),
            solo: BTreeSet::new(),
            logger,
        }
    }

    /// Sends hints whose intended node no longer holds their key to the key's current
    /// replicas, as `membership` says (this node is `me`; N replicas per key).
    pub fn retargeting(mut self, membership: MembershipView, me: NodeId, n: usize) -> Self {
        self.membership = Some((membership, me, n));
        self
    }

    /// Caps a batch at `bytes` (at least 1). A node built from config passes half its
    /// `limits.max_frame_bytes`, so a batch's estimated size leaves room for the estimate's
    /// error and the frame's overhead on a receiver with the same limits.
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// A delivery failed: its hints stay for a later round (a fanned-out hint is kept if
    /// any of its replicas failed).
    fn delivery_failed(&mut self, delivery: Delivery, out: &mut Outbox) {
        self.round_failed += delivery.hints.len() as u64;
        if delivery.fanout {
            for hint in &delivery.hints {
                self.fanout_answer(hint, false, out);
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

    /// Sends the hints storage read, as far as the rate gate allows, and reports the backlog:
    /// every hint the node holds (`held`, exact as of the scan) and what it owes and refused
    /// as a receiver. Hints for their intended node are gathered into one batch per node; a
    /// batch that reaches the byte cap is sent and the next one started.
    fn deliver(&mut self, now: Instant, hints: Vec<Hint>, held: u64, out: &mut Outbox) {
        self.held = held;
        if held == 0 && self.handed_off > 0 {
            info!(self.logger, "every hint this node held was handed off"; "handed_off" => self.handed_off);
            self.handed_off = 0;
        }
        self.report_backlog(now);
        let end_of_pass = hints.len() < self.scan_limit;
        let scanned = hints.len();
        let deadline = now + DELIVERY_DEADLINE;
        let mut sent = 0;
        // Per intended node: the batch being gathered and its estimated bytes.
        let mut batches: BTreeMap<NodeId, (Vec<Hint>, usize)> = BTreeMap::new();
        for hint in hints {
            if !self.gate.try_take(1, now) {
                break; // out of tokens: this hint and the rest go next round
            }
            sent += 1;
            self.cursor = Some(hint.hint_key.clone());
            if let Some((replicas, local)) = self.retarget(&hint) {
                self.fan_out(hint, replicas, local, deadline, out);
                continue;
            }
            let target = hint.target.clone();
            if self.solo.remove(&hint.hint_key) {
                self.send_batch(target, vec![hint], deadline, out);
                continue;
            }
            let bytes = hint.key.len() + hint.versions.approx_bytes();
            let (batch, size) = batches.entry(target.clone()).or_default();
            if !batch.is_empty()
                && (*size + bytes > self.batch_bytes || batch.len() >= MAX_AAE_ITEMS)
            {
                let full = std::mem::take(batch);
                *size = 0;
                self.send_batch(target, full, deadline, out);
            }
            *size += bytes;
            batch.push(hint);
        }
        for (target, (batch, _)) in batches {
            if !batch.is_empty() {
                self.send_batch(target, batch, deadline, out);
            }
        }
        if end_of_pass && sent == scanned {
            self.cursor = None; // every hint of the pass was sent; the next round starts over
        }
    }

    /// Sends `hints`, all meant for `target`, as one `HandoffBatch`.
    fn send_batch(
        &mut self,
        target: NodeId,
        hints: Vec<Hint>,
        deadline: Instant,
        out: &mut Outbox,
    ) {
        let objects = hints
            .iter()
            .map(|hint| AaeObject {
                key: Bytes::from(hint.key.clone()),
                versions: hint.versions.clone(),
            })
            .collect();
        let op = self.new_op();
        out.request(ReplicateEvent::Send {
            peer: target,
            op,
            message: Message::HandoffBatch(HandoffBatch { objects }),
            deadline,
            reply_to: ReplyTo::Handoff,
        });
        let delivery = Delivery {
            hints,
            fanout: false,
            deadline,
        };
        self.in_flight.insert(op, delivery);
    }

    fn on_storage(&mut self, now: Instant, done: StorageDone, out: &mut Outbox) {
        if let Some((origin, merged)) = self.serving.remove(&done.op) {
            let message = match done.result {
                Ok(_) => Message::HandoffAck(HandoffAck { merged }),
                Err(error) => {
                    // Nothing was merged: nothing to pay for (only the last batch admitted
                    // can be owed for, and it is this one or paid).
                    self.receive_debt = 0;
                    Message::Error(error)
                }
            };
            return out.reply(IntakeEvent::reply(origin, &message));
        }
        if let Some(hint) = self.local_merges.remove(&done.op) {
            return self.local_merge_answered(&hint, done.result.is_ok(), out);
        }
        let scan = self.scanning.is_some_and(|(op, _)| op == done.op);
        match done.result {
            Ok(StorageOutcome::Hints { hints, held }) if scan => {
                self.scanning = None;
                self.deliver(now, hints, held, out);
            }
            Ok(StorageOutcome::HintsDeleted(deleted)) if deleted > 0 => {
                debug!(self.logger, "hints handed off and deleted here"; "hints" => deleted);
                self.handed_off += deleted;
            }
            // Those that changed meanwhile: the next round delivers the new versions.
            Ok(_) => {}
            Err(error) => {
                if scan {
                    self.scanning = None;
                }
                let kind = std::mem::discriminant(&error);
                if let Some(held_back) = self.failures.admit(kind, now) {
                    warn!(self.logger, "hint storage operation failed"; "error" => %error,
                          "failures_not_logged_since_the_last" => held_back);
                }
            }
        }
    }

    fn on_delivered(&mut self, now: Instant, done: PeerDone, out: &mut Outbox) {
        let Some(delivery) = self.in_flight.remove(&done.op) else {
            return;
        };
        self.delivery_answered(now, delivery, done, out);
        self.chain_round(now, out);
    }

    /// A round whose last delivery was just answered, every one acknowledged, starts the
    /// next one at once instead of at the next tick if the gate holds a full round's tokens:
    /// then the gate alone paces handoff (a tick-paced round capped an unthrottled node at
    /// 256 hints per 200 ms, whatever its rate). With fewer tokens the next tick starts it:
    /// rounds chained on a few tokens each cost a scan, a frame and a deletion per handful of
    /// hints. A round with a failure waits for the tick (which pauses a round that only
    /// failed): a fanned-out hint with one replica down is acknowledged by the others every
    /// round and would otherwise be resent without pause. So does a round the target refused
    /// as busy: it is pacing what it takes in.
    fn chain_round(&mut self, now: Instant, out: &mut Outbox) {
        if !self.in_flight.is_empty()
            || self.scanning.is_some()
            || self.round_acked == 0
            || self.round_failed > 0
            || self.round_busy > 0
            || self.gate.available(now) < HINTS_PER_ROUND as u64
        {
            return;
        }
        self.end_round(now);
        self.start_round(now, out);
    }

    /// The partition of `key` in this node's view (`None` without a membership: tests).
    fn partition_of(&self, key: &[u8]) -> Option<u32> {
        let (membership, _, _) = self.membership.as_ref()?;
        Some(membership.current().ring().partition_of(key).0)
    }

    /// Hints in deliveries awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.in_flight.values().map(|d| d.hints.len()).sum()
    }
}

impl Machine for HandoffMachine {
    type Input = HandoffEvent;

    fn on_event(&mut self, now: Now, event: HandoffEvent, out: &mut Outbox) {
        match event {
            HandoffEvent::Storage(done) => self.on_storage(now.instant, done, out),
            HandoffEvent::Peer(done) => self.on_delivered(now.instant, done, out),
            HandoffEvent::Serve { origin, objects } => {
                self.serve(now.instant, origin, objects, out)
            }
            HandoffEvent::PeerUp { peer } => {
                // Any peer: the next round delivers to the one that is back, and the others'
                // deliveries fail fast on their links (and pause the rounds again). Failures
                // counted before it came back say nothing about the next round: a round that
                // failed but is not closed yet (closed at the next tick) must not pause.
                if self.paused_until.take().is_some() || self.round_failed > 0 {
                    info!(self.logger, "a peer is back: hinted handoff resumes"; "peer" => %peer);
                }
                self.round_failed = 0;
                self.backoff = Duration::ZERO;
            }
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        let now = now.instant;
        self.pay_receive_debt(now);
        self.report_backlog(now);
        let expired: Vec<OpId> = self
            .in_flight
            .iter()
            .filter(|(_, delivery)| delivery.deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            if let Some(delivery) = self.in_flight.remove(&op) {
                self.delivery_failed(delivery, out);
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
    /// delivery of the same hints; a received batch storage could not take is answered
    /// with the refusal (the sender keeps its hints and tries again).
    fn on_refused(&mut self, _now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        match event {
            Event::Replicate(ReplicateEvent::Send { op, .. }) => {
                if let Some(delivery) = self.in_flight.remove(&op) {
                    self.delivery_failed(delivery, out);
                }
            }
            Event::Storage(StorageEvent { op, .. })
                if self.scanning.is_some_and(|(scan, _)| scan == op) =>
            {
                self.scanning = None;
            }
            Event::Storage(StorageEvent { op, .. }) => {
                if let Some((origin, _)) = self.serving.remove(&op) {
                    self.receive_debt = 0; // never merged (see `on_storage`)
                    return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
                }
                if let Some(hint) = self.local_merges.remove(&op) {
                    self.local_merge_answered(&hint, false, out);
                }
            }
            _ => {}
        }
    }
}

mod answers;
mod receive;
mod retarget;
#[cfg(test)]
mod tests;
