//! Anti-entropy (Dynamo §4.7, SPEC §5), background class: replicas of a partition compare
//! Merkle trees and exchange only the keys that differ, so replicas that missed writes (never
//! answered, or lost their data directory) converge without any client read; and tombstones
//! every replica holds are purged after a grace period.
//!
//! DRIVER SIDE (`exchange.rs`), one exchange at a time, each (partition, peer) on its own
//! jittered schedule.
//! A partition takes part in one exchange at a time on each node, started here or by a peer
//! (a peer that opens an exchange on a busy partition hears "not ready" and tries again
//! soon). So two replicas never run two exchanges of one partition at once, and a replica
//! that lost its data pulls each key once, from the first peer it exchanges with, instead of
//! from every peer at the same time:
//! 1. own branch hashes (storage), then the peer's, sent with our root: equal roots end it
//!    (one small round trip for a partition in sync);
//! 2. the segment hashes under the differing branches, ours then theirs; after
//!    `confirm_delay` the same again, keeping only segments that differ both times (Tictac's
//!    confirm: a difference that is only a write in flight drops out);
//! 3. the keys of those segments with their object hashes, ours then theirs: the differing
//!    keys, at most `max_keys_per_exchange` (the rest wait for the next exchange, which comes
//!    soon when one was cut short);
//! 4. our versions of the differing keys we hold go to the peer, which merges them and answers
//!    with its versions of the ones it holds; we merge those. Both now hold the merge.
//!
//! Trees (`trees.rs`): after a start every partition this node replicates has none; they are
//! rebuilt in chunks, and ready trees are rebuilt again on a slow jittered schedule to catch rot.
//!
//! Tombstone purge (`purge.rs`), by the smallest-id replica of a partition only: once an exchange
//! with every other replica has left them in sync, tombstone-only keys older than both that moment
//! and `tombstone_grace` are on every replica. They are purged in two phases: every member checks
//! (a replica holds exactly that set; nobody keeps a hint for the key, whose delivery would bring
//! an older version back), then the replicas delete the keys that still hold exactly the set. A
//! replica that was down has no exchange and blocks the purge.
//!
//! Pacing: one token of the stage's gate per key folded into a tree, per key looked at for a
//! purge, per object exchanged, and one per exchange; charged once the work is done (its size
//! is known only then), and no new work starts while tokens are owed. The answering side
//! pays too, one token per object a peer's sync gives it to merge, and while it owes it
//! answers a peer opening an exchange "not ready": a replica rebuilt from nothing (its data
//! directory lost) takes its keys in at the pace its own controller allows, set by the
//! foreground latency there, not at the pace of the peers that send them (issue 9's finding
//! for hinted handoff, which the same debt paces on the receiving side).
//!
//! ANSWERING SIDE (`serve.rs`): a peer's tree, digest, sync and purge requests come from parse
//! and are answered from storage. Opening an exchange (the branch-level tree request) leases
//! the partition to that peer's connection until its sync, or [`LEASE`] without a step.

use crate::error::ServiceError;
use crate::event::{
    AaeBoard, AaeRequest, AntiEntropyEvent, ConnId, Event, IntakeEvent, Now, OpId, Origin,
    PeerDone, ReplicateEvent, ReplyTo, StorageDone, StorageEvent, StorageOutcome, StorageRequest,
    TreeSummary,
};
use crate::membership::MembershipView;
use crate::merkle::{differing, TreeShape};
use crate::ring::{key_position, PartitionId};
use crate::seda::{Gate, Machine, Outbox};
use crate::versioning::VersionSet;
use crate::wire::{
    AaeDigests, AaeDigestsReply, AaeObject, AaePartitionReport, AaePeerReport, AaePurge,
    AaePurgeReply, AaeReport, AaeSync, AaeSyncReply, AaeTree, AaeTreeReply, Bytes, KeyDigest,
    Message, PurgePhase, MAX_AAE_ITEMS,
};
use crate::NodeId;
use slog::{debug, info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod exchange;
mod progress;
mod purge;
mod serve;
mod trees;

use exchange::{Exchange, Place, Step};
use progress::{CatchUp, Totals};
use purge::Purge;
use serve::{Lease, Serving};

/// How long one step may wait for storage or a peer before the exchange is given up. Short:
/// the stage runs one exchange at a time, so a lost answer stalls every pair until then (a
/// step's messages are bounded to 512 KiB, well under this on any LAN).
const STEP_DEADLINE: Duration = Duration::from_secs(3);
/// How long a partition waits after a rebuild step or a purge look failed.
const FAILURE_PAUSE: Duration = Duration::from_secs(5);
/// Most bytes of objects (keys, values, clocks; estimated) one anti-entropy message carries,
/// well under the default frame bound: more differing data goes in the next exchanges.
const MAX_AAE_BATCH_BYTES: usize = 512 * 1024;
/// How often the report is refreshed (tree roots from storage).
const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How long a peer's exchange holds one of this node's partitions without a next step.
const LEASE: Duration = Duration::from_secs(3);

/// Settings of the anti-entropy stage (`[anti_entropy]`).
#[derive(Clone, Debug)]
pub struct AntiEntropySettings {
    /// This node.
    pub node: NodeId,
    /// Replicas per key (N): the replicas of a partition are its preference list.
    pub n: usize,
    /// Whether exchanges and purges run (trees are kept either way).
    pub enabled: bool,
    /// Mean time between two exchanges of one partition with one peer (jittered ±50 %).
    pub exchange_interval: Duration,
    /// Mean time between two rot checks (rebuilds) of one partition's tree (jittered).
    pub rebuild_interval: Duration,
    /// Pause before differing segments are compared again (writes in flight settle).
    pub confirm_delay: Duration,
    /// Most differing keys one exchange moves.
    pub max_keys_per_exchange: usize,
    /// How long a tombstone is kept at least, after every replica holds it.
    pub tombstone_grace: Duration,
}

/// What the stage knows of one peer of one partition.
#[derive(Clone, Debug)]
struct PeerState {
    next_exchange: Instant,
    report: AaePeerReport,
}

/// What the stage knows of one partition it replicates.
#[derive(Clone, Debug)]
struct PartitionState {
    /// Whether this node's tree for it is complete (after a start, once rebuilt).
    tree_ready: bool,
    next_rebuild: Instant,
    /// The other replicas.
    peers: BTreeMap<NodeId, PeerState>,
    /// Whether this node leads the partition's tombstone purge (smallest id of its replicas).
    purge_leader: bool,
    next_purge: Instant,
    purge_cursor: Option<Vec<u8>>,
    summary: Option<TreeSummary>,
}

/// The anti-entropy stage's machine.
pub struct AntiEntropyMachine {
    settings: AntiEntropySettings,
    membership: MembershipView,
    gate: Gate,
    board: AaeBoard,
    logger: Logger,
    /// Membership version the partitions were computed for.
    membership_version: Option<u64>,
    partitions: BTreeMap<u32, PartitionState>,
    shape: TreeShape,
    exchange: Option<Exchange>,
    /// The rebuild step storage is working on: partition, op, deadline.
    rebuild: Option<(u32, OpId, Instant)>,
    purge: Option<Purge>,
    /// Peers' requests waiting for storage.
    serving: BTreeMap<OpId, (Origin, Serving)>,
    /// Partitions held by a peer's exchange.
    leases: BTreeMap<u32, Lease>,
    /// The tree-summary request in flight, and when the next is due.
    summaries: Option<(OpId, Instant)>,
    /// When the report is next refreshed (`None`: at the first tick).
    next_report: Option<Instant>,
    /// The wall clock as of the last event or tick (the driver's `now`).
    wall_ms: u64,
    totals: Totals,
    /// When the node started, and whether it has caught up since (`progress.rs`).
    catch_up: CatchUp,
    /// Tokens owed for work done (see [`AntiEntropyMachine::pay_debt`]).
    debt: u64,
    /// Tokens of debt paid or forgiven since the machine started: where a charge stands in
    /// the order debts are paid (see [`AntiEntropyMachine::forgive`]).
    retired: u64,
    rng: u64,
    next_op: u64,
    /// Peers whose last exchange was given up: their next failures log at debug until an
    /// exchange with them completes (a dead peer fails one exchange per partition, a dozen
    /// lines a second at info).
    failing_peers: BTreeSet<NodeId>,
    /// Partitions still being copied to a new replica by an ownership transfer, with that
    /// replica: no exchange of the partition involves it until the copy is done (see
    /// [`AntiEntropyMachine::copy_pending`]).
    copying: BTreeSet<(u32, NodeId)>,
}

impl AntiEntropyMachine {
    /// The stage for `settings.node`, paced by `gate`, publishing on `board`.
    pub fn new(
        settings: AntiEntropySettings,
        membership: MembershipView,
        gate: Gate,
        board: AaeBoard,
        logger: Logger,
    ) -> AntiEntropyMachine {
        // Seeded from the node id so the simulator is deterministic and nodes differ.
        let rng = settings
            .node
            .as_str()
            .bytes()
            .fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
            })
            | 1;
        let partitions = membership.current().ring().partition_count();
        AntiEntropyMachine {
            settings,
            membership,
            gate,
            board,
            logger,
            membership_version: None,
            partitions: BTreeMap::new(),
            shape: TreeShape::for_partitions(partitions),
            exchange: None,
            rebuild: None,
            purge: None,
            serving: BTreeMap::new(),
            leases: BTreeMap::new(),
            summaries: None,
            next_report: None,
            failing_peers: BTreeSet::new(),
            copying: BTreeSet::new(),
            wall_ms: 0,
            totals: Totals::default(),
            catch_up: CatchUp::default(),
            debt: 0,
            retired: 0,
            rng,
            next_op: 0,
        }
    }

    /// Pays the tokens the work done so far cost (as much as the gate grants now); new work
    /// starts only when nothing is owed. Work is charged after it is done because its size
    /// (keys in a partition, keys that differ) is known only then.
    fn pay_debt(&mut self, now: Instant) -> bool {
        let owed = self.debt;
        let paid = self.gate.pay(&mut self.debt, now);
        self.retired += owed - self.debt;
        paid
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    /// A duration drawn uniformly from [mean/2, 3·mean/2) (xorshift; deterministic).
    fn jitter(&mut self, mean: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let millis = mean.as_millis().max(1) as u64;
        Duration::from_millis(millis / 2 + self.rng % millis)
    }

    /// Recomputes the partitions this node replicates and their peers when the membership
    /// changed, keeping what is known of partitions that stay.
    fn refresh_partitions(&mut self, now: Instant) {
        let membership = self.membership.current();
        if self.membership_version == Some(membership.version) {
            return;
        }
        self.membership_version = Some(membership.version);
        // Every transfer done moves the version, so this follows each copy's end.
        self.copying = membership
            .pending_transfers(self.settings.n)
            .into_iter()
            .map(|t| (t.partition, t.to))
            .collect();
        let ring = membership.ring();
        let me = self.settings.node.clone();
        let mut partitions = BTreeMap::new();
        for p in 0..ring.partition_count() {
            let replicas: Vec<NodeId> = ring
                .preference_list(PartitionId(p), self.settings.n)
                .primaries;
            if !replicas.contains(&me) {
                continue;
            }
            let mut state = self
                .partitions
                .remove(&p)
                .unwrap_or_else(|| PartitionState {
                    tree_ready: false,
                    next_rebuild: now,
                    peers: BTreeMap::new(),
                    purge_leader: false,
                    next_purge: now,
                    purge_cursor: None,
                    summary: None,
                });
            state.purge_leader = replicas.iter().min() == Some(&me);
            let mut peers = BTreeMap::new();
            for peer in replicas.into_iter().filter(|r| *r != me) {
                let known = state.peers.remove(&peer);
                let first = now + self.jitter(self.settings.exchange_interval) / 4;
                peers.insert(
                    peer.clone(),
                    known.unwrap_or(PeerState {
                        next_exchange: first,
                        report: AaePeerReport {
                            peer,
                            last_exchange_ms: 0,
                            in_sync_since_ms: 0,
                            exchanges: 0,
                            keys_sent: 0,
                            keys_received: 0,
                        },
                    }),
                );
            }
            state.peers = peers;
            partitions.insert(p, state);
        }
        self.partitions = partitions;
    }

    /// Whether an ownership transfer is still copying `partition` to this node or to `peer`:
    /// an exchange of the pair now would compare a copy half made and send the rest of the
    /// partition a second time (a trial's join: anti-entropy sent 25-50 % of what the
    /// transfers did, whole partitions to the new node while their transfers ran). The
    /// transfer's own catch-up covers what changes meanwhile; the exchanges resume once its
    /// done mark reaches this node.
    fn copy_pending(&self, partition: u32, peer: &NodeId) -> bool {
        // Asked for every pair on every tick (the backlog), and nothing is copying nearly
        // always: no key is built then.
        if self.copying.is_empty() {
            return false;
        }
        self.copying.contains(&(partition, peer.clone()))
            || self
                .copying
                .contains(&(partition, self.settings.node.clone()))
    }

    /// Most digests an exchange lists on each side: twice the keys it may move, so a nearly
    /// synced partition's differing segments fit one exchange, while a wiped replica's peer
    /// scans two keys per key it sends, not [`MAX_AAE_ITEMS`] (4096) per thousand.
    fn digest_limit(&self) -> usize {
        self.settings
            .max_keys_per_exchange
            .saturating_mul(2)
            .clamp(1, MAX_AAE_ITEMS)
    }

    /// A key's place in a partition's stored order (segment, then key), which is the order of
    /// a digest list.
    fn place(&self, key: &[u8]) -> Place {
        (
            self.shape.segment_of_position(key_position(key)),
            key.to_vec(),
        )
    }

    fn storage(&mut self, request: StorageRequest, out: &mut Outbox) -> OpId {
        let op = self.new_op();
        out.request(StorageEvent {
            op,
            reply_to: ReplyTo::AntiEntropy,
            request,
        });
        op
    }

    fn peer(&mut self, peer: NodeId, message: Message, now: Instant, out: &mut Outbox) -> OpId {
        let op = self.new_op();
        self.totals.bytes_exchanged += encoded_size(&message);
        out.request(ReplicateEvent::Send {
            peer,
            op,
            message,
            deadline: now + STEP_DEADLINE,
            reply_to: ReplyTo::AntiEntropy,
        });
        op
    }

    fn on_answer(&mut self, now: Instant, op: OpId, answer: Answer, out: &mut Outbox) {
        if let Some((partition, rebuild_op, _)) = self.rebuild {
            if rebuild_op == op {
                self.rebuild = None;
                match answer {
                    Answer::Storage(outcome) => self.on_rebuilt(now, partition, outcome),
                    _ => {
                        warn!(self.logger, "tree rebuild step failed"; "partition" => partition);
                        if let Some(state) = self.partitions.get_mut(&partition) {
                            state.next_rebuild = now + FAILURE_PAUSE;
                        }
                    }
                }
                return;
            }
        }
        if self.summaries.is_some_and(|(asked, _)| asked == op) {
            self.summaries = None;
            if let Answer::Storage(StorageOutcome::TreeSummaries(summaries)) = answer {
                self.publish(summaries);
            }
            return;
        }
        if self
            .exchange
            .as_ref()
            .and_then(|e| e.waiting)
            .is_some_and(|(waiting, _)| waiting == op)
        {
            return self.on_exchange_answer(now, answer, out);
        }
        if self.purge.as_ref().is_some_and(|p| p.waiting.contains(&op)) {
            self.on_purge_answer(now, op, answer, out);
        }
    }
}

/// An answer to one of the stage's operations.
enum Answer {
    Storage(StorageOutcome),
    Peer(Message),
    Failed(String),
}

fn keys_of(answer: Answer) -> Option<Vec<Vec<u8>>> {
    match answer {
        Answer::Storage(StorageOutcome::Keys(keys)) => Some(keys),
        Answer::Peer(Message::AaePurgeReply(reply)) => {
            Some(reply.keys.into_iter().map(Bytes::into_vec).collect())
        }
        _ => None,
    }
}

/// The bytes a message takes on the wire (what the report counts as exchanged).
fn encoded_size(message: &Message) -> u64 {
    message.encode(0).map_or(0, |frame| frame.len() as u64)
}

impl Machine for AntiEntropyMachine {
    type Input = AntiEntropyEvent;

    fn on_event(&mut self, now: Now, event: AntiEntropyEvent, out: &mut Outbox) {
        self.wall_ms = now.wall_ms;
        self.catch_up.saw(now.wall_ms);
        let now = now.instant;
        let (op, answer) = match event {
            AntiEntropyEvent::Serve { origin, request } => {
                return self.serve(now, origin, request, out);
            }
            AntiEntropyEvent::Storage(StorageDone { op, result, .. })
                if self.serving.contains_key(&op) =>
            {
                if let Some((origin, serving)) = self.serving.remove(&op) {
                    match result {
                        Ok(outcome) => self.on_served(origin, serving, outcome, out),
                        Err(error) => self.not_served(origin, serving, error, out),
                    }
                }
                return;
            }
            AntiEntropyEvent::Storage(StorageDone { op, result, .. }) => (
                op,
                match result {
                    Ok(outcome) => Answer::Storage(outcome),
                    Err(error) => Answer::Failed(error.to_string()),
                },
            ),
            AntiEntropyEvent::Peer(PeerDone { op, result, .. }) => (
                op,
                match result {
                    Ok(Message::Error(error)) => Answer::Failed(error.to_string()),
                    Ok(message) => {
                        self.totals.bytes_exchanged += encoded_size(&message);
                        Answer::Peer(message)
                    }
                    Err(error) => Answer::Failed(error.to_string()),
                },
            ),
        };
        self.on_answer(now, op, answer, out);
        // The next exchange (or rebuild step) starts as soon as one ends, not at the next
        // tick: a pass over partitions in sync costs round trips, and a rebuild of a million
        // keys is paced by the gate, not by 256 keys a tick.
        if self.settings.enabled && self.exchange.is_none() {
            self.start_exchange(now, out);
        }
        if self.rebuild.is_none() {
            self.start_rebuild(now, out);
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        self.wall_ms = now.wall_ms;
        self.catch_up.saw(now.wall_ms);
        let now = now.instant;
        // Every tick, not only when new work would start: the bucket holds at most 400 ms
        // of its rate, so a debt paid only at the next start (a peer's opening, a rebuild
        // step) would lose what accrued beyond that meanwhile.
        self.pay_debt(now);
        self.refresh_partitions(now);
        // Steps whose answer never came are given up (the peer's link is down, or a queue
        // dropped the event).
        if self.rebuild.is_some_and(|(_, _, deadline)| deadline <= now) {
            self.rebuild = None;
        }
        if let Some(exchange) = self.exchange.take() {
            if exchange
                .waiting
                .is_some_and(|(_, deadline)| deadline <= now)
            {
                self.abandon_exchange(exchange, now, "a step timed out");
            } else {
                self.exchange = Some(exchange);
            }
        }
        if self.purge.as_ref().is_some_and(|p| p.deadline <= now) {
            self.purge = None;
        }
        self.leases.retain(|_, lease| lease.until > now);
        if self
            .summaries
            .is_some_and(|(_, asked)| asked + STEP_DEADLINE <= now)
        {
            self.summaries = None;
        }
        if self.rebuild.is_none() {
            self.start_rebuild(now, out);
        }
        if self.settings.enabled {
            if let Some(mut exchange) = self.exchange.take() {
                if let Step::WaitConfirm { until } = exchange.step {
                    if until <= now {
                        self.ask_own_segments(&mut exchange, true, now, out);
                    }
                }
                self.exchange = Some(exchange);
            } else {
                self.start_exchange(now, out);
            }
            if self.purge.is_none() {
                self.start_purge(now, out);
            }
        }
        if self.summaries.is_none() && self.next_report.is_none_or(|at| at <= now) {
            self.next_report = Some(now + REPORT_PERIOD);
            let op = self.storage(StorageRequest::TreeSummaries, out);
            self.summaries = Some((op, now));
        }
        // The work waiting, for the controller's split: trees to build, pairs due for an
        // exchange and tokens owed (a stage with no backlog gets only the floor rate, which
        // would pay for a peer's sync of a thousand keys in fifty seconds).
        let missing = self.partitions.values().filter(|s| !s.tree_ready).count();
        let due = self
            .partitions
            .iter()
            .flat_map(|(p, s)| s.peers.iter().map(move |(peer, state)| (*p, peer, state)))
            .filter(|(p, peer, state)| state.next_exchange <= now && !self.copy_pending(*p, peer))
            .count();
        self.gate.report_backlog((missing + due) as u64 + self.debt);
    }

    /// A full queue: the step's answer will never come; give the step up now rather than at
    /// its deadline.
    fn on_refused(&mut self, now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        if let Event::Storage(StorageEvent { op, .. }) = &event {
            if let Some((origin, serving)) = self.serving.remove(op) {
                return self.not_served(origin, serving, error, out);
            }
        }
        let op = match &event {
            Event::Storage(StorageEvent { op, .. }) => *op,
            Event::Replicate(ReplicateEvent::Send { op, .. }) => *op,
            _ => return,
        };
        self.on_answer(now.instant, op, Answer::Failed(error.to_string()), out);
    }
}

/// Keeps the first objects whose estimated encoded size fits [`MAX_AAE_BATCH_BYTES`] (at least
/// one, which a frame bound sized for the largest value always fits). Returns whether any were
/// left out.
fn cap_bytes(objects: &mut Vec<(Vec<u8>, VersionSet)>) -> bool {
    let mut bytes = 0;
    let fits = objects
        .iter()
        .take_while(|(key, set)| {
            bytes += key.len() + set.approx_bytes();
            bytes <= MAX_AAE_BATCH_BYTES
        })
        .count()
        .max(1)
        .min(objects.len());
    let cut = fits < objects.len();
    objects.truncate(fits);
    cut
}

#[cfg(test)]
mod tests;
