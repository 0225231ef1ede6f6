//! Anti-entropy (Dynamo §4.7, SPEC §5), background class: replicas of a partition compare
//! Merkle trees and exchange only the keys that differ, so replicas that missed writes (never
//! answered, or lost their data directory) converge without any client read; and tombstones
//! every replica holds are purged after a grace period.
//!
//! DRIVER SIDE, one exchange at a time, each (partition, peer) on its own jittered schedule.
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
//! Trees: after a start every partition this node replicates has none; they are rebuilt here
//! in chunks, and ready trees are rebuilt again on a slow jittered schedule to catch rot.
//!
//! Tombstone purge, by the smallest-id replica of a partition only: once an exchange with
//! every other replica has left them in sync, tombstone-only keys older than both that
//! moment and `tombstone_grace` are on every replica. They are purged in two phases: every
//! member checks (a replica holds exactly that set; nobody keeps a hint for the key, whose
//! delivery would bring an older version back), then the replicas delete the keys that still
//! hold exactly the set. A replica that was down has no exchange and blocks the purge.
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
//! ANSWERING SIDE (also here): a peer's tree, digest, sync and purge requests come from parse
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
use slog::{info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Keys folded per rebuild step (the partition's writers wait for one step at most).
const REBUILD_CHUNK: usize = 256;
/// Keys looked at per purge step.
const PURGE_SCAN: usize = 1024;
/// How long one step may wait for storage or a peer before the exchange is given up. Short:
/// the stage runs one exchange at a time, so a lost answer stalls every pair until then (a
/// step's messages are bounded to 512 KiB, well under this on any LAN).
const STEP_DEADLINE: Duration = Duration::from_secs(3);
/// How soon a pair is tried again when a tree was not ready or an exchange was cut short
/// (jittered, so two replicas that opened one partition at once do not collide again).
const RETRY_SOON: Duration = Duration::from_millis(500);
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

/// Where an exchange is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    OwnBranches,
    PeerBranches,
    OwnSegments { confirming: bool },
    PeerSegments { confirming: bool },
    WaitConfirm { until: Instant },
    OwnDigests,
    PeerDigests,
    OwnObjects,
    PeerSync,
    MergeBack,
}

/// One exchange under way.
#[derive(Debug)]
struct Exchange {
    partition: u32,
    peer: NodeId,
    started_ms: u64,
    step: Step,
    /// The operation the step waits for, and until when.
    waiting: Option<(OpId, Instant)>,
    root: u64,
    own_hashes: Vec<u64>,
    branches: Vec<u16>,
    first_segments: Vec<u16>,
    segments: Vec<u16>,
    own_digests: BTreeMap<Vec<u8>, u64>,
    /// Where this node's digest list stopped short, if it did: its last key's place.
    own_cut: Option<Place>,
    /// Where the lists begin: after this place, once both lists of the same segments
    /// stopped short with nothing differing before (the exchange goes on from there).
    resume: Option<Place>,
    theirs_to_fetch: Vec<Vec<u8>>,
    sent: u64,
    received: u64,
    cut_short: bool,
}

/// A key's place in stored order: its segment, then the key.
type Place = (u16, Vec<u8>);

/// The differing keys two digest lists show.
#[derive(Debug, PartialEq, Eq)]
struct Differences {
    /// Keys this node holds differently or alone: to send.
    send: Vec<Vec<u8>>,
    /// Keys the peer holds differently or alone: to ask for.
    fetch: Vec<Vec<u8>>,
    /// Not every difference of the segments was found or taken: exchange again soon.
    cut_short: bool,
    /// Where the comparison stopped: the earlier of the two lists' cuts, if either stopped
    /// short.
    boundary: Option<Place>,
}

/// Compares two digest lists of the same segments, each with the place where it stopped
/// short of the segments' end, if it did. A list is complete only up to its cut, so keys
/// are compared up to the earlier cut and the rest left to the next exchange: a key past it
/// is not missing, only not listed (comparing it would send, or ask for, what the other side
/// already holds). At most `max_keys` keys are taken.
fn compare_digests(
    (own, own_cut): (&BTreeMap<Vec<u8>, u64>, Option<Place>),
    (theirs, their_cut): (&BTreeMap<Vec<u8>, u64>, Option<Place>),
    place: impl Fn(&[u8]) -> Place,
    max_keys: usize,
) -> Differences {
    let boundary = match (own_cut, their_cut) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut found = Differences {
        send: Vec::new(),
        fetch: Vec::new(),
        cut_short: boundary.is_some(),
        boundary: boundary.clone(),
    };
    let keys: BTreeSet<&Vec<u8>> = own
        .keys()
        .chain(theirs.keys())
        .filter(|key| boundary.as_ref().is_none_or(|b| place(key) <= *b))
        .collect();
    for key in keys {
        let (mine, other) = (own.get(key), theirs.get(key));
        if mine == other {
            continue;
        }
        if found.send.len() + found.fetch.len() >= max_keys {
            found.cut_short = true;
            break;
        }
        if mine.is_some() {
            found.send.push(key.clone());
        }
        if other.is_some() {
            found.fetch.push(key.clone());
        }
    }
    found
}

/// A purge under way.
#[derive(Debug)]
struct Purge {
    partition: u32,
    step: PurgeStep,
    objects: Vec<(Vec<u8>, VersionSet)>,
    /// Members still to answer the current phase.
    waiting: BTreeSet<OpId>,
    deadline: Instant,
    /// Keys every answer so far agreed to.
    agreed: Option<BTreeSet<Vec<u8>>>,
    failed: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum PurgeStep {
    Candidates,
    Check,
    Commit,
}

/// A request of a peer this node is answering, waiting for storage.
#[derive(Debug)]
enum Serving {
    /// A tree level; the asker's root if it sent one (and whether it opened an exchange).
    Tree {
        partition: u32,
        root: Option<u64>,
    },
    /// A peer's digests, at most `limit` keys.
    Digests {
        limit: usize,
    },
    /// A peer's sync; `objects` were charged to this node's debt when it arrived, behind
    /// `ahead` tokens (counted in `retired`) charged before them.
    Sync {
        partition: u32,
        objects: u64,
        ahead: u64,
    },
    Purge,
}

/// A peer's exchange holding one of this node's partitions.
#[derive(Clone, Copy, Debug)]
struct Lease {
    conn: ConnId,
    until: Instant,
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    exchanges: u64,
    in_sync_exchanges: u64,
    keys_sent: u64,
    keys_received: u64,
    digests_compared: u64,
    bytes_exchanged: u64,
    rebuilds: u64,
    rot_found: u64,
    tombstones_purged: u64,
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
    /// Tokens owed for work done (see [`AntiEntropyMachine::pay_debt`]).
    debt: u64,
    /// Tokens of debt paid or forgiven since the machine started: where a charge stands in
    /// the order debts are paid (see [`AntiEntropyMachine::forgive`]).
    retired: u64,
    rng: u64,
    next_op: u64,
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
            wall_ms: 0,
            totals: Totals::default(),
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

    // ---- tree rebuilds ----

    /// Starts the next rebuild step: a partition without a tree first, else one due for its
    /// rot check.
    fn start_rebuild(&mut self, now: Instant, out: &mut Outbox) {
        // Missing trees first, then rot checks; a partition whose step failed waits its
        // `next_rebuild` so it cannot hold every later partition back.
        let due = self
            .partitions
            .iter()
            .filter(|(_, s)| s.next_rebuild <= now)
            .min_by_key(|(_, s)| s.tree_ready)
            .map(|(p, _)| *p);
        let Some(partition) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        let limit = REBUILD_CHUNK;
        let op = self.storage(StorageRequest::RebuildTree { partition, limit }, out);
        self.rebuild = Some((partition, op, now + STEP_DEADLINE));
    }

    fn on_rebuilt(&mut self, now: Instant, partition: u32, outcome: StorageOutcome) {
        let StorageOutcome::Rebuilt(step) = outcome else {
            return;
        };
        self.debt += step.folded as u64;
        if !step.done {
            return; // the next tick folds the next chunk
        }
        self.totals.rebuilds += 1;
        if step.rot {
            self.totals.rot_found += 1;
            warn!(self.logger, "a partition's Merkle tree differed from its data; rebuilt";
                "partition" => partition);
        }
        let interval = self.jitter(self.settings.rebuild_interval);
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.tree_ready = true;
            state.next_rebuild = now + interval;
        }
    }

    // ---- exchanges ----

    /// Starts the exchange whose time came first, if any and if the gate allows one.
    fn start_exchange(&mut self, now: Instant, out: &mut Outbox) {
        let leases = &self.leases;
        let due = self
            .partitions
            .iter()
            .filter(|(p, s)| s.tree_ready && leases.get(p).is_none_or(|l| l.until <= now))
            .flat_map(|(p, s)| {
                s.peers
                    .iter()
                    .filter(|(_, state)| state.next_exchange <= now)
                    .map(move |(peer, state)| (state.next_exchange, *p, peer.clone()))
            })
            .min();
        let Some((_, partition, peer)) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        self.debt += 1;
        let op = self.storage(
            StorageRequest::TreeView {
                partition,
                branches: None,
            },
            out,
        );
        self.exchange = Some(Exchange {
            partition,
            peer,
            started_ms: self.wall_ms,
            step: Step::OwnBranches,
            waiting: Some((op, now + STEP_DEADLINE)),
            root: 0,
            own_hashes: Vec::new(),
            branches: Vec::new(),
            first_segments: Vec::new(),
            segments: Vec::new(),
            own_digests: BTreeMap::new(),
            own_cut: None,
            resume: None,
            theirs_to_fetch: Vec::new(),
            sent: 0,
            received: 0,
            cut_short: false,
        });
    }

    /// Ends the exchange. `in_sync` records that the pair held the same data as of its start
    /// (what the purge relies on); `retry` brings the pair's next exchange forward (a tree
    /// was not ready, or the exchange was cut short).
    fn finish_exchange(&mut self, exchange: Exchange, now: Instant, in_sync: bool, retry: bool) {
        let next = if retry {
            self.jitter(RETRY_SOON)
        } else {
            self.jitter(self.settings.exchange_interval)
        };
        // Before the peer's tree was seen nothing was compared: not an exchange.
        let compared =
            exchange.step != Step::OwnBranches && (in_sync || exchange.step != Step::PeerBranches);
        let Some(peer) = self
            .partitions
            .get_mut(&exchange.partition)
            .and_then(|s| s.peers.get_mut(&exchange.peer))
        else {
            return;
        };
        peer.next_exchange = now + next;
        if !compared {
            return;
        }
        peer.report.exchanges += 1;
        peer.report.last_exchange_ms = self.wall_ms;
        peer.report.keys_sent += exchange.sent;
        peer.report.keys_received += exchange.received;
        if in_sync && !exchange.cut_short {
            peer.report.in_sync_since_ms = exchange.started_ms;
        }
        self.totals.exchanges += 1;
        self.debt += exchange.sent + exchange.received;
        self.totals.keys_sent += exchange.sent;
        self.totals.keys_received += exchange.received;
    }

    /// Gives the exchange up (a peer or storage failed, or a step timed out); the pair is
    /// tried again at its normal interval.
    fn abandon_exchange(&mut self, exchange: Exchange, now: Instant, why: &str) {
        info!(self.logger, "anti-entropy exchange given up";
            "partition" => exchange.partition, "peer" => %exchange.peer, "why" => why);
        let next = self.jitter(self.settings.exchange_interval);
        if let Some(peer) = self
            .partitions
            .get_mut(&exchange.partition)
            .and_then(|s| s.peers.get_mut(&exchange.peer))
        {
            peer.next_exchange = now + next;
        }
    }

    /// Advances the exchange with the answer its step waited for.
    fn on_exchange_answer(&mut self, now: Instant, answer: Answer, out: &mut Outbox) {
        let Some(mut exchange) = self.exchange.take() else {
            return;
        };
        exchange.waiting = None;
        let partition = exchange.partition;
        let peer = exchange.peer.clone();
        match (exchange.step.clone(), answer) {
            (Step::OwnBranches, Answer::Storage(StorageOutcome::Tree(view))) => {
                if !view.ready {
                    return self.finish_exchange(exchange, now, false, true);
                }
                exchange.root = view.root;
                exchange.own_hashes = view.hashes;
                let message = Message::AaeTree(AaeTree {
                    partition,
                    branches: None,
                    root: Some(exchange.root),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerBranches;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerBranches, Answer::Peer(Message::AaeTreeReply(reply))) => {
                if !reply.ready {
                    return self.finish_exchange(exchange, now, false, true);
                }
                if reply.root == exchange.root {
                    self.totals.in_sync_exchanges += 1;
                    return self.finish_exchange(exchange, now, true, false);
                }
                exchange.branches = differing(&exchange.own_hashes, &reply.hashes)
                    .into_iter()
                    .filter(|&b| b < self.shape.branches())
                    .map(|b| b as u16)
                    .collect();
                self.ask_own_segments(&mut exchange, false, now, out);
            }
            (Step::OwnSegments { confirming }, Answer::Storage(StorageOutcome::Tree(view))) => {
                exchange.own_hashes = view.hashes;
                let message = Message::AaeTree(AaeTree {
                    partition,
                    branches: Some(exchange.branches.clone()),
                    root: None,
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerSegments { confirming };
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerSegments { confirming }, Answer::Peer(Message::AaeTreeReply(reply))) => {
                let segments: Vec<u16> = exchange
                    .branches
                    .iter()
                    .flat_map(|&b| self.shape.segments_of(b))
                    .collect();
                let found: Vec<u16> = differing(&exchange.own_hashes, &reply.hashes)
                    .into_iter()
                    .filter_map(|i| segments.get(i).copied())
                    .collect();
                if !confirming {
                    exchange.first_segments = found;
                    exchange.step = Step::WaitConfirm {
                        until: now + self.settings.confirm_delay,
                    };
                } else {
                    let first: BTreeSet<u16> = exchange.first_segments.iter().copied().collect();
                    exchange.segments = found.into_iter().filter(|s| first.contains(s)).collect();
                    if exchange.segments.is_empty() {
                        // Every difference was a write in flight, now arrived on both.
                        return self.finish_exchange(exchange, now, true, false);
                    }
                    if exchange.segments.len() > MAX_AAE_ITEMS {
                        exchange.segments.truncate(MAX_AAE_ITEMS);
                        exchange.cut_short = true;
                    }
                    self.ask_own_digests(&mut exchange, now, out);
                }
            }
            (Step::OwnDigests, Answer::Storage(StorageOutcome::Digests(digests))) => {
                let limit = self.digest_limit();
                exchange.own_cut = (digests.len() >= limit)
                    .then(|| digests.last().map(|(key, _)| self.place(key)))
                    .flatten();
                exchange.own_digests = digests.into_iter().collect();
                let message = Message::AaeDigests(AaeDigests {
                    partition,
                    segments: exchange.segments.clone(),
                    limit: limit as u32,
                    after: exchange
                        .resume
                        .as_ref()
                        .map(|(_, key)| Bytes::from(key.clone())),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerDigests;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerDigests, Answer::Peer(Message::AaeDigestsReply(reply))) => {
                let their_cut = (reply.cut || reply.digests.len() >= self.digest_limit())
                    .then(|| reply.digests.last().map(|d| self.place(&d.key)))
                    .flatten();
                self.totals.digests_compared +=
                    (exchange.own_digests.len() + reply.digests.len()) as u64;
                let theirs: BTreeMap<Vec<u8>, u64> = reply
                    .digests
                    .into_iter()
                    .map(|d| (d.key.into_vec(), d.hash))
                    .collect();
                let found = compare_digests(
                    (&exchange.own_digests, exchange.own_cut.take()),
                    (&theirs, their_cut),
                    |key| self.place(key),
                    self.settings.max_keys_per_exchange,
                );
                exchange.cut_short |= found.cut_short;
                let (ours_to_send, theirs_to_fetch) = (found.send, found.fetch);
                if ours_to_send.is_empty() && theirs_to_fetch.is_empty() {
                    // Nothing differs up to where a list stopped short: go on from there
                    // within this exchange (starting again from the segments' start, the
                    // next exchange would stop at the same place for ever).
                    if let Some(boundary) = found.boundary {
                        if exchange.resume.as_ref().is_none_or(|r| boundary > *r) {
                            exchange.segments.retain(|&segment| segment >= boundary.0);
                            exchange.resume = Some(boundary);
                            self.ask_own_digests(&mut exchange, now, out);
                            self.exchange = Some(exchange);
                            return;
                        }
                    }
                }
                if ours_to_send.is_empty() && theirs_to_fetch.is_empty() {
                    let in_sync = !exchange.cut_short;
                    let retry = exchange.cut_short;
                    return self.finish_exchange(exchange, now, in_sync, retry);
                }
                exchange.theirs_to_fetch = theirs_to_fetch;
                let op = self.storage(StorageRequest::sync(Vec::new(), ours_to_send), out);
                exchange.step = Step::OwnObjects;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::OwnObjects, Answer::Storage(StorageOutcome::Objects(mut objects))) => {
                if cap_bytes(&mut objects) {
                    exchange.cut_short = true;
                }
                exchange.sent = objects.len() as u64;
                let message = Message::AaeSync(AaeSync {
                    partition,
                    objects: AaeObject::many(objects),
                    want: exchange
                        .theirs_to_fetch
                        .iter()
                        .map(|k| Bytes::from(k.clone()))
                        .collect(),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerSync;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerSync, Answer::Peer(Message::AaeSyncReply(reply))) => {
                exchange.received = reply.objects.len() as u64;
                // The peer leaves out what would not fit one message: more next time.
                exchange.cut_short |= reply.objects.len() < exchange.theirs_to_fetch.len();
                let merge = reply
                    .objects
                    .into_iter()
                    .map(|o| (o.key.into_vec(), o.versions))
                    .collect();
                let op = self.storage(StorageRequest::sync(merge, Vec::new()), out);
                exchange.step = Step::MergeBack;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::MergeBack, Answer::Storage(StorageOutcome::Objects(_))) => {
                let cut_short = exchange.cut_short;
                return self.finish_exchange(exchange, now, !cut_short, cut_short);
            }
            (_, Answer::Failed(why)) => {
                return self.abandon_exchange(exchange, now, &why);
            }
            (_, _) => {
                return self.abandon_exchange(
                    exchange,
                    now,
                    "an answer that does not fit the step",
                );
            }
        }
        self.exchange = Some(exchange);
    }

    /// Asks storage for this node's digests of the exchange's segments (after its resume
    /// place, if any), at most [`Self::digest_limit`].
    fn ask_own_digests(&mut self, exchange: &mut Exchange, now: Instant, out: &mut Outbox) {
        let op = self.storage(
            StorageRequest::segment_digests_after(
                exchange.partition,
                exchange.segments.clone(),
                exchange.resume.as_ref().map(|(_, key)| key.clone()),
                self.digest_limit(),
            ),
            out,
        );
        exchange.step = Step::OwnDigests;
        exchange.waiting = Some((op, now + STEP_DEADLINE));
    }

    fn ask_own_segments(
        &mut self,
        exchange: &mut Exchange,
        confirming: bool,
        now: Instant,
        out: &mut Outbox,
    ) {
        let op = self.storage(
            StorageRequest::TreeView {
                partition: exchange.partition,
                branches: Some(exchange.branches.clone()),
            },
            out,
        );
        exchange.step = Step::OwnSegments { confirming };
        exchange.waiting = Some((op, now + STEP_DEADLINE));
    }

    // ---- tombstone purge ----

    /// Starts a purge step for a partition this node leads whose every peer was found in
    /// sync, if one is due.
    fn start_purge(&mut self, now: Instant, out: &mut Outbox) {
        let grace_ms = self.settings.tombstone_grace.as_millis() as u64;
        let wall = self.wall_ms;
        // The due partition whose turn came first (the first due in partition order would
        // starve the later ones).
        let due = self
            .partitions
            .iter()
            .filter_map(|(p, s)| {
                if !s.purge_leader || s.next_purge > now || s.peers.is_empty() {
                    return None;
                }
                let synced = s
                    .peers
                    .values()
                    .map(|peer| peer.report.in_sync_since_ms)
                    .min()?;
                if synced == 0 {
                    return None;
                }
                Some((
                    s.next_purge,
                    *p,
                    synced.min(wall.saturating_sub(grace_ms)),
                    s.purge_cursor.clone(),
                ))
            })
            .min()
            .map(|(_, p, before, after)| (p, before, after));
        let Some((partition, before_ms, after)) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        let scan_limit = PURGE_SCAN;
        let op = self.storage(
            StorageRequest::PurgeCandidates {
                partition,
                after,
                scan_limit,
                before_ms,
            },
            out,
        );
        self.purge = Some(Purge {
            partition,
            step: PurgeStep::Candidates,
            objects: Vec::new(),
            waiting: BTreeSet::from([op]),
            deadline: now + STEP_DEADLINE,
            agreed: None,
            failed: false,
        });
    }

    fn on_purge_answer(&mut self, now: Instant, op: OpId, answer: Answer, out: &mut Outbox) {
        let Some(mut purge) = self.purge.take() else {
            return;
        };
        purge.waiting.remove(&op);
        match (&purge.step, answer) {
            (
                PurgeStep::Candidates,
                Answer::Storage(StorageOutcome::PurgeCandidates {
                    objects,
                    resume,
                    scanned,
                }),
            ) => {
                self.debt += scanned as u64;
                let interval = self.jitter(self.settings.exchange_interval);
                if let Some(state) = self.partitions.get_mut(&purge.partition) {
                    state.purge_cursor = resume.clone();
                    if resume.is_none() {
                        state.next_purge = now + interval;
                    }
                }
                if objects.is_empty() {
                    return;
                }
                let mut objects = objects;
                cap_bytes(&mut objects);
                purge.objects = objects;
                purge.step = PurgeStep::Check;
                purge.deadline = now + STEP_DEADLINE;
                self.broadcast_purge(&mut purge, PurgePhase::Check, now, out);
                let op = self.storage(
                    StorageRequest::PurgeCheck {
                        objects: purge.objects.clone(),
                        replica: true,
                    },
                    out,
                );
                purge.waiting.insert(op);
            }
            (PurgeStep::Check, answer) => {
                match keys_of(answer) {
                    Some(keys) => {
                        let keys: BTreeSet<Vec<u8>> = keys.into_iter().collect();
                        purge.agreed = Some(match purge.agreed.take() {
                            Some(agreed) => agreed.intersection(&keys).cloned().collect(),
                            None => keys,
                        });
                    }
                    None => purge.failed = true,
                }
                if purge.waiting.is_empty() {
                    let agreed = purge.agreed.take().unwrap_or_default();
                    if purge.failed || agreed.is_empty() {
                        return; // a member did not answer: the keys wait for a later pass
                    }
                    purge.objects.retain(|(key, _)| agreed.contains(key));
                    purge.step = PurgeStep::Commit;
                    purge.deadline = now + STEP_DEADLINE;
                    self.broadcast_purge(&mut purge, PurgePhase::Commit, now, out);
                    let op = self.storage(
                        StorageRequest::PurgeCommit {
                            objects: purge.objects.clone(),
                        },
                        out,
                    );
                    purge.waiting.insert(op);
                    purge.agreed = None;
                }
            }
            (PurgeStep::Commit, answer) => {
                if let Answer::Storage(StorageOutcome::Keys(keys)) = &answer {
                    self.totals.tombstones_purged += keys.len() as u64;
                }
                if purge.waiting.is_empty() {
                    return;
                }
            }
            (PurgeStep::Candidates, _) => {
                // The look failed (an object that does not decode, say): try this partition
                // again later rather than every tick.
                let interval = self.jitter(self.settings.exchange_interval);
                if let Some(state) = self.partitions.get_mut(&purge.partition) {
                    state.next_purge = now + interval.max(FAILURE_PAUSE);
                }
                return;
            }
        }
        self.purge = Some(purge);
    }

    /// Sends a purge phase: the check to every other member (anyone may hold a hint), the
    /// commit to the other replicas.
    fn broadcast_purge(
        &mut self,
        purge: &mut Purge,
        phase: PurgePhase,
        now: Instant,
        out: &mut Outbox,
    ) {
        let me = self.settings.node.clone();
        let targets: Vec<NodeId> = match phase {
            PurgePhase::Check => self
                .membership
                .current()
                .members()
                .map(|m| m.id.clone())
                .filter(|id| *id != me)
                .collect(),
            PurgePhase::Commit => self
                .partitions
                .get(&purge.partition)
                .map(|s| s.peers.keys().cloned().collect())
                .unwrap_or_default(),
        };
        let objects = AaeObject::many(purge.objects.clone());
        for target in targets {
            // Whether the target replicates the partition, in this (the leader's) view: a
            // member whose view lags must still be checked as the replica it may be.
            let replica = self
                .partitions
                .get(&purge.partition)
                .is_some_and(|s| s.peers.contains_key(&target));
            let message = Message::AaePurge(AaePurge {
                partition: purge.partition,
                phase,
                replica,
                objects: objects.clone(),
            });
            let op = self.peer(target, message, now, out);
            purge.waiting.insert(op);
        }
    }

    // ---- answering peers ----

    /// Answers a peer's request (through storage; a busy partition at once).
    fn serve(&mut self, now: Instant, origin: Origin, request: AaeRequest, out: &mut Outbox) {
        let (serving, storage_request) = match request {
            AaeRequest::Tree {
                partition,
                branches,
                root,
            } => {
                // Branches past the shape name no segments (a peer of another Q, or a bug).
                let branches = branches.map(|list| {
                    let count = self.shape.branches();
                    list.into_iter()
                        .filter(|&b| usize::from(b) < count)
                        .collect::<Vec<_>>()
                });
                if branches.is_none() {
                    // The opening of an exchange: one per partition at a time on this node.
                    let mine = self
                        .exchange
                        .as_ref()
                        .is_some_and(|e| e.partition == partition);
                    let other = self
                        .leases
                        .get(&partition)
                        .is_some_and(|l| l.conn != origin.conn && l.until > now);
                    if mine || other || !self.pay_debt(now) {
                        let busy = Message::AaeTreeReply(AaeTreeReply {
                            ready: false,
                            root: 0,
                            keys: 0,
                            hashes: Vec::new(),
                        });
                        return out.reply(IntakeEvent::reply(origin, &busy));
                    }
                }
                self.lease(partition, origin.conn, now);
                (
                    Serving::Tree { partition, root },
                    StorageRequest::TreeView {
                        partition,
                        branches,
                    },
                )
            }
            AaeRequest::Digests {
                partition,
                segments,
                limit,
                after,
            } => {
                self.lease(partition, origin.conn, now);
                (
                    Serving::Digests { limit },
                    StorageRequest::segment_digests_after(partition, segments, after, limit),
                )
            }
            AaeRequest::Sync {
                partition,
                objects,
                want,
            } => {
                // Merging them is this node's work: charged like its own (see the module's
                // Pacing), so it opens no exchange for a peer until they are paid for.
                let charged = objects.len() as u64;
                let ahead = self.retired + self.debt;
                self.debt += charged;
                (
                    Serving::Sync {
                        partition,
                        objects: charged,
                        ahead,
                    },
                    StorageRequest::sync(objects, want),
                )
            }
            AaeRequest::Purge {
                partition,
                phase,
                replica,
                objects,
            } => {
                let request = match phase {
                    // A replica (in the leader's view or this node's) must hold exactly the
                    // tombstones; any member, no hint for the keys and no other version.
                    PurgePhase::Check => StorageRequest::PurgeCheck {
                        objects,
                        replica: replica || self.partitions.contains_key(&partition),
                    },
                    PurgePhase::Commit => StorageRequest::PurgeCommit { objects },
                };
                (Serving::Purge, request)
            }
        };
        let op = self.storage(storage_request, out);
        self.serving.insert(op, (origin, serving));
    }

    fn lease(&mut self, partition: u32, conn: ConnId, now: Instant) {
        self.leases.insert(
            partition,
            Lease {
                conn,
                until: now + LEASE,
            },
        );
    }

    /// Storage answered a peer's request: reply to the peer.
    fn on_served(
        &mut self,
        origin: Origin,
        serving: Serving,
        outcome: StorageOutcome,
        out: &mut Outbox,
    ) {
        let message = match (serving, outcome) {
            (Serving::Tree { partition, root }, StorageOutcome::Tree(view)) => {
                let same = root == Some(view.root) && view.ready;
                if same || !view.ready {
                    self.release(partition, origin.conn);
                }
                Message::AaeTreeReply(AaeTreeReply {
                    ready: view.ready,
                    root: view.root,
                    keys: view.keys,
                    hashes: if same { Vec::new() } else { view.hashes },
                })
            }
            (Serving::Digests { limit }, StorageOutcome::Digests(mut digests)) => {
                let cut = digests.len() >= limit;
                let mut bytes = 0;
                let fits = digests
                    .iter()
                    .take_while(|(key, _)| {
                        bytes += key.len() + 16;
                        bytes <= MAX_AAE_BATCH_BYTES
                    })
                    .count();
                let cut = cut || fits < digests.len();
                digests.truncate(fits);
                Message::AaeDigestsReply(AaeDigestsReply {
                    digests: digests
                        .into_iter()
                        .map(|(key, hash)| KeyDigest {
                            key: Bytes::from(key),
                            hash,
                        })
                        .collect(),
                    cut,
                })
            }
            (Serving::Sync { partition, .. }, StorageOutcome::Objects(mut objects)) => {
                self.release(partition, origin.conn);
                cap_bytes(&mut objects);
                Message::AaeSyncReply(AaeSyncReply {
                    objects: AaeObject::many(objects),
                })
            }
            (Serving::Purge, StorageOutcome::Keys(keys)) => Message::AaePurgeReply(AaePurgeReply {
                keys: keys.into_iter().map(Bytes::from).collect(),
            }),
            (_, other) => Message::Error(ServiceError::Storage {
                reason: format!("storage answered an anti-entropy request with {other:?}"),
            }),
        };
        out.reply(IntakeEvent::reply(origin, &message));
    }

    /// Storage refused (a full queue) or failed a peer's request: the peer hears the error
    /// as it is (`Overloaded` stays `Overloaded`, so it can tell a busy node from a broken
    /// one), the partition's lease is released at once rather than when it runs out, and a
    /// sync's charge is forgiven.
    fn not_served(
        &mut self,
        origin: Origin,
        serving: Serving,
        error: ServiceError,
        out: &mut Outbox,
    ) {
        self.forgive(&serving);
        if let Serving::Tree { partition, .. } | Serving::Sync { partition, .. } = serving {
            self.release(partition, origin.conn);
        }
        out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
    }

    /// A peer's sync that storage refused or failed merged nothing this node must pay for
    /// (as hinted handoff does for a refused batch): the part of its charge not yet paid
    /// comes off the debt. Debts are paid in the order they were charged, and a sync's steps
    /// span ticks that pay, so by the time it fails some of its charge may be paid: only the
    /// rest is forgiven, never debt owed for other work. (After another charge was forgiven
    /// meanwhile this errs towards forgiving less.) A sync that failed after some of its
    /// steps went in is forgiven the same; it is rare (a full queue, a failing disk) and the
    /// next exchange finds what it left.
    fn forgive(&mut self, serving: &Serving) {
        if let Serving::Sync { objects, ahead, .. } = serving {
            let paid = self.retired.saturating_sub(*ahead).min(*objects);
            let unpaid = (objects - paid).min(self.debt);
            self.debt -= unpaid;
            self.retired += unpaid;
        }
    }

    fn release(&mut self, partition: u32, conn: ConnId) {
        if self.leases.get(&partition).is_some_and(|l| l.conn == conn) {
            self.leases.remove(&partition);
        }
    }

    // ---- the report ----

    fn publish(&mut self, summaries: Vec<TreeSummary>) {
        for summary in summaries {
            if let Some(state) = self.partitions.get_mut(&summary.partition) {
                state.summary = Some(summary);
            }
        }
        let partitions = self
            .partitions
            .iter()
            .map(|(p, s)| AaePartitionReport {
                partition: *p,
                tree: s
                    .summary
                    .as_ref()
                    .map_or("missing", |t| t.state)
                    .to_string(),
                root: s.summary.as_ref().map_or(0, |t| t.root),
                keys: s.summary.as_ref().map_or(0, |t| t.keys),
                peers: s.peers.values().map(|peer| peer.report.clone()).collect(),
            })
            .collect();
        let t = self.totals;
        self.board.publish(AaeReport {
            node: self.settings.node.clone(),
            enabled: self.settings.enabled,
            partitions,
            exchanges: t.exchanges,
            in_sync_exchanges: t.in_sync_exchanges,
            keys_sent: t.keys_sent,
            keys_received: t.keys_received,
            digests_compared: t.digests_compared,
            bytes_exchanged: t.bytes_exchanged,
            rebuilds: t.rebuilds,
            rot_found: t.rot_found,
            tombstones_purged: t.tombstones_purged,
        });
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
            .values()
            .flat_map(|s| s.peers.values())
            .filter(|peer| peer.next_exchange <= now)
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
