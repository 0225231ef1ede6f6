//! Ownership transfer (Dynamo §4.8, SPEC §6), background class: after a commit changes a
//! partition's replicas, its old replica streams it to each new one, and a node drops the
//! partitions it no longer holds, by itself.
//!
//! DRIVER SIDE (the old replica, one transfer at a time):
//! 1. **Snapshot**: the partition's Merkle segment hashes, the baseline of step 4.
//! 2. **Stream**: the partition in stored order, in batches sized by the gate's tokens (one
//!    per object) and a byte bound; each batch is acknowledged by the new replica before the
//!    next is read. The cursor is the last acknowledged key: a timeout or an error resumes
//!    from it, never from zero, and a transfer whose target keeps failing is parked (cursor
//!    and all) while the others go on.
//! 3. **Settle**: waits until `settle` has passed since this node saw the commit, so every
//!    coordinator has heard of it (and sends new writes to the new replica as well) and every
//!    write sent by one that had not has landed.
//! 4. **Catch up**: the segments whose hashes changed since the snapshot were written during
//!    the stream, perhaps only here; those segments are streamed again. (Without a ready tree
//!    at the snapshot, the whole partition is streamed again.)
//! 5. **Done**: the gossip stage records it in the membership (and spreads it); reads of the
//!    partition move to the new replicas once all of its transfers are done.
//!
//! RECEIVER SIDE (the new replica): a batch is merged like replica writes (by clock, so a
//! repeated batch changes nothing) and acknowledged once storage has it. A batch for a
//! partition this node does not hold in its view is refused (it has not heard of the commit
//! yet: the sender retries).
//!
//! CLEANUP: a partition this node holds under no ring a coordinator may use, and sends no
//! transfer of, is dropped `cleanup_delay` after it stopped holding it (after a start, the
//! delay counts from the start, so a stale view has time to be corrected by gossip), once a
//! final sync has sent it to the replicas that hold it then (see `cleanup.rs`). The drop
//! is paced by the gate and removes only objects unchanged since it read them; an empty
//! partition is looked at again only after another `cleanup_delay` (a stale coordinator's
//! stray write is dropped then).

use crate::error::ServiceError;
use crate::event::{
    Event, GossipEvent, IntakeEvent, Now, OpId, Origin, PeerDone, ReplicateEvent, ReplyTo,
    StorageDone, StorageEvent, StorageOutcome, StorageRequest, TransferBoard, TransferEvent,
};
use crate::membership::{Membership, MembershipView, Stamp};
use crate::merkle::{differing, TreeShape};
use crate::ring::PartitionId;
use crate::seda::{Gate, Machine, Outbox};
use crate::versioning::VersionSet;
use crate::wire::{AaeObject, Message, TransferAck, TransferBatch, TransferProgress};
use crate::NodeId;
use slog::{debug, info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// How long storage may take to answer before the step is asked again.
const STORAGE_DEADLINE: Duration = Duration::from_secs(30);
/// The first pause after a failed batch; it doubles per failure up to [`MAX_RETRY_PAUSE`].
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between attempts of one transfer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Failures in a row after which a transfer is parked so the others can go on.
const FAILURES_BEFORE_PARKING: u32 = 3;
/// The longest pause before a failed final sync is tried again.
const MAX_SYNC_PAUSE: Duration = Duration::from_secs(60);
/// How long a parked transfer waits before it is taken up again (from its cursor).
const PARK_PAUSE: Duration = Duration::from_secs(2);
/// Finished transfers kept on the board, so `admin ring` shows what just completed.
const FINISHED_SHOWN: usize = 64;

/// How the transfer stage is set up.
#[derive(Clone, Debug)]
pub struct TransferSettings {
    /// This node.
    pub node: NodeId,
    /// Replicas per key.
    pub n: usize,
    /// Most objects per batch.
    pub batch_keys: usize,
    /// A batch stops growing once its objects reach this many bytes.
    pub batch_bytes: usize,
    /// How long after seeing a commit the catch-up pass waits (step 3).
    pub settle: Duration,
    /// How long a partition this node no longer holds is kept before it is dropped.
    pub cleanup_delay: Duration,
    /// How long a batch may wait for its acknowledgement.
    pub ack_timeout: Duration,
}

/// Where a transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Snapshot,
    Streaming,
    Settling { until: Instant },
    Comparing,
}

impl Phase {
    fn name(self, catch_up: bool) -> &'static str {
        match self {
            Phase::Snapshot => "snapshot",
            Phase::Streaming if catch_up => "catching_up",
            Phase::Streaming => "streaming",
            Phase::Settling { .. } => "settling",
            Phase::Comparing => "comparing",
        }
    }
}

/// What an outgoing transfer waits for.
#[derive(Debug)]
enum Waiting {
    Storage {
        op: OpId,
        deadline: Instant,
    },
    Peer {
        op: OpId,
        deadline: Instant,
        resume: Option<Vec<u8>>,
        objects: u64,
        bytes: u64,
    },
}

/// One outgoing transfer.
#[derive(Debug)]
struct Active {
    partition: u32,
    to: NodeId,
    phase: Phase,
    /// Segment hashes when the stream started; `None`: the tree was not ready.
    baseline: Option<Vec<u64>>,
    /// Segments the current pass still streams, the current one first (`None`: the whole
    /// partition in one scan).
    segments: Option<VecDeque<u16>>,
    /// The stored key of the last acknowledged object of the current scan.
    cursor: Option<Vec<u8>>,
    /// Whether the current pass is the catch-up (step 4).
    catch_up: bool,
    /// Whether this is the final sync before a drop (see CLEANUP), not a pending transfer.
    final_sync: bool,
    /// The segment hashes at the last comparison: what the new replica holds, at least.
    compared: Option<Vec<u64>>,
    waiting: Option<Waiting>,
    /// No new step before this (after a failure).
    retry_at: Option<Instant>,
    /// Failures in a row.
    failures: u32,
    /// Why the last step failed, for the line that parks it (a frame too large, a peer's
    /// refusal, no answer by the deadline).
    last_error: Option<String>,
    /// The most objects a batch may hold from now on, after a batch the frame limit refused
    /// (halved each time, down to one).
    keys_cap: Option<usize>,
    objects: u64,
    bytes: u64,
    retries: u64,
    /// Times it was parked: the first is warned of.
    parks: u32,
}

impl Active {
    fn new(partition: u32, to: NodeId) -> Active {
        Active {
            partition,
            to,
            phase: Phase::Snapshot,
            baseline: None,
            segments: None,
            cursor: None,
            catch_up: false,
            final_sync: false,
            compared: None,
            waiting: None,
            retry_at: None,
            failures: 0,
            last_error: None,
            keys_cap: None,
            objects: 0,
            bytes: 0,
            retries: 0,
            parks: 0,
        }
    }

    fn progress(&self, phase: &str) -> TransferProgress {
        TransferProgress {
            partition: self.partition,
            to: self.to.clone(),
            phase: phase.to_string(),
            objects: self.objects,
            bytes: self.bytes,
            retries: self.retries,
            last_error: self.last_error.clone().unwrap_or_default(),
        }
    }
}

/// A partition's final sync before its drop (see `cleanup.rs`): made when this node finishes
/// sending the partition (with the baseline), or when its drop comes due without one.
#[derive(Default)]
struct Handed {
    /// The segment hashes this node last compared when it sent the partition (the final
    /// sync's baseline; `None`: unknown, or the tree was not ready, so the whole partition is
    /// sent).
    compared: Option<Vec<u64>>,
    /// The replicas the final sync reached.
    synced_to: BTreeSet<NodeId>,
    /// Failed attempts per replica: the least failed is tried first, so a dead replica does
    /// not hold up the live ones.
    failures: BTreeMap<NodeId, u32>,
    /// A whole-partition scan found nothing: no replica needs the sync.
    empty: bool,
}

impl Handed {
    /// Forgets the sync's progress (the node holds the partition again; it syncs afresh
    /// when it stops).
    fn restart(&mut self) {
        self.synced_to.clear();
        self.failures.clear();
        self.empty = false;
    }
}

/// The transfer stage's machine.
pub struct TransferMachine {
    settings: TransferSettings,
    membership: MembershipView,
    /// One token per object streamed or dropped.
    gate: Gate,
    board: TransferBoard,
    active: Option<Active>,
    /// Transfers set aside after repeated failures, with when to take them up again.
    parked: BTreeMap<(u32, NodeId), (Active, Instant)>,
    /// Finished transfers the gossip stage has not taken yet (its queue was full).
    unreported: Vec<(u32, NodeId)>,
    /// Transfers finished under the commit in `commit_seen`: not started again while their
    /// done mark travels to this node's view (gossip records it after this stage reports it),
    /// which took one more tree snapshot and a pass over the partition for nothing.
    sent: BTreeSet<(u32, NodeId)>,
    /// Finished transfers, newest last, for the board.
    finished: VecDeque<TransferProgress>,
    /// Final syncs: of partitions this node sent (with the segment hashes it last
    /// compared), and of partitions whose drop came due: before a partition is dropped here,
    /// it is sent to each replica that holds it then (what changed since the baseline, or
    /// all of it). Kept until a drop empties the partition.
    handed: BTreeMap<u32, Handed>,
    /// When a partition's failed final sync may be tried again.
    sync_after: BTreeMap<u32, Instant>,
    /// The commit this node last saw, and when it first saw it.
    commit_seen: Option<(Stamp, Instant)>,
    /// Batches received, waiting for storage to merge them.
    serving: BTreeMap<OpId, (Origin, u32)>,
    /// Since when each partition this node does not hold has not been held.
    unowned_since: BTreeMap<u32, Instant>,
    /// Partitions found empty by a drop, and when.
    found_empty: BTreeMap<u32, Instant>,
    /// The drop step storage is working on.
    dropping: Option<(u32, OpId, Instant)>,
    /// Objects each partition's drop has removed so far, logged once when it is empty (a
    /// line per step made most of a node's log during a join).
    dropped_so_far: BTreeMap<u32, u64>,
    /// Partitions due for a drop and not yet found empty (part of the backlog).
    drops_due: u64,
    /// Partitions no longer held and not yet found empty, due or still waiting out the delay
    /// (published for `admin plan`; its fall to 0 is logged: the operator's "drops done").
    drops_waiting: u64,
    /// The most `drops_waiting` has been since it was last 0 (the logged total).
    drops_peak: u64,
    /// Of those, partitions a drop removed objects from (0: every one was found empty, as
    /// after a fresh start, where nothing was handed away).
    drops_with_objects: u64,
    /// When the machine started (cleanup waits `cleanup_delay` from here at least).
    started: Instant,
    next_op: u64,
    logger: Logger,
}

impl TransferMachine {
    /// A machine reading the membership from `membership`, paced by `gate`.
    pub fn new(
        settings: TransferSettings,
        membership: MembershipView,
        gate: Gate,
        board: TransferBoard,
        started: Instant,
        logger: Logger,
    ) -> TransferMachine {
        TransferMachine {
            settings,
            membership,
            gate,
            board,
            active: None,
            parked: BTreeMap::new(),
            unreported: Vec::new(),
            sent: BTreeSet::new(),
            finished: VecDeque::new(),
            handed: BTreeMap::new(),
            sync_after: BTreeMap::new(),
            commit_seen: None,
            serving: BTreeMap::new(),
            unowned_since: BTreeMap::new(),
            found_empty: BTreeMap::new(),
            dropping: None,
            dropped_so_far: BTreeMap::new(),
            drops_due: 0,
            drops_waiting: 0,
            drops_peak: 0,
            drops_with_objects: 0,
            started,
            next_op: 0,
            logger,
        }
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn storage(&mut self, request: StorageRequest, out: &mut Outbox) -> OpId {
        let op = self.new_op();
        out.request(StorageEvent {
            op,
            reply_to: ReplyTo::Transfer,
            request,
        });
        op
    }

    /// This node's outgoing transfers under `m`, not yet done, but those to a node staged for
    /// removal: the operator said it is dead, and the next commit lets its copies go.
    fn outgoing(&self, m: &Membership) -> BTreeSet<(u32, NodeId)> {
        m.pending_transfers(self.settings.n)
            .into_iter()
            .filter(|t| t.from.as_ref() == Some(&self.settings.node))
            .filter(|t| !m.goes_to_removed(t))
            .map(|t| (t.partition, t.to))
            .collect()
    }

    // ---- DRIVER SIDE ----

    fn advance(&mut self, now: Instant, out: &mut Outbox) {
        let m = self.membership.current();
        let stamp = m.assignment().stamp.clone();
        if self
            .commit_seen
            .as_ref()
            .is_none_or(|(seen, _)| *seen != stamp)
        {
            self.commit_seen = Some((stamp, now));
            self.sent.clear();
        }
        let outgoing = self.outgoing(&m);
        // A transfer no longer pending (done, or replaced by a newer commit) is let go; so
        // is a final sync of a partition this node holds again.
        if let Some(active) = &self.active {
            let gone = if active.final_sync {
                m.holds(
                    &self.settings.node,
                    PartitionId(active.partition),
                    self.settings.n,
                )
            } else {
                !outgoing.contains(&(active.partition, active.to.clone()))
            };
            if gone {
                self.active = None;
            }
        }
        self.parked.retain(|key, _| outgoing.contains(key));
        self.report_unreported(out);
        if self.active.is_none() {
            self.take_next(&outgoing, now);
        }
        self.step(now, out);
        self.cleanup(&m, &outgoing, now, out);
        self.publish(&outgoing);
    }

    /// Takes up the first pending transfer not yet tried (nor finished, its done mark on its
    /// way), else a parked one that is due.
    /// Fresh ones first: a receiver that never answers (a join at a dead address) parks its
    /// transfers again and again, and taking those up first would starve every other one.
    fn take_next(&mut self, outgoing: &BTreeSet<(u32, NodeId)>, now: Instant) {
        let fresh = outgoing
            .iter()
            .find(|key| !self.parked.contains_key(*key) && !self.sent.contains(*key))
            .cloned();
        if let Some((partition, to)) = fresh {
            debug!(self.logger, "transfer starts"; "partition" => partition, "to" => %to);
            self.active = Some(Active::new(partition, to));
            return;
        }
        let due = self
            .parked
            .iter()
            .find(|(_, (_, until))| *until <= now)
            .map(|(key, _)| key.clone());
        if let Some((mut active, _)) = due.and_then(|key| self.parked.remove(&key)) {
            active.failures = 0;
            active.retry_at = None;
            self.active = Some(active);
        }
    }

    /// Starts the active transfer's next step, unless it waits for an answer or a pause.
    fn step(&mut self, now: Instant, out: &mut Outbox) {
        let Some(active) = &self.active else {
            return;
        };
        if active.waiting.is_some() || active.retry_at.is_some_and(|at| at > now) {
            return;
        }
        let partition = active.partition;
        let request = match active.phase {
            Phase::Snapshot | Phase::Comparing => StorageRequest::TreeView {
                partition,
                branches: Some(all_branches(self.partitions())),
            },
            Phase::Settling { until } if until <= now => {
                if let Some(active) = &mut self.active {
                    active.phase = Phase::Comparing;
                }
                return self.step(now, out);
            }
            Phase::Settling { .. } => return,
            Phase::Streaming => {
                let tokens = self.gate.available(now);
                if tokens == 0 {
                    return;
                }
                StorageRequest::TransferBatch {
                    partition,
                    segment: active.segments.as_ref().and_then(|s| s.front().copied()),
                    after: active.cursor.clone(),
                    max_keys: self
                        .settings
                        .batch_keys
                        .min(tokens as usize)
                        .min(active.keys_cap.unwrap_or(usize::MAX)),
                    max_bytes: self.settings.batch_bytes,
                }
            }
        };
        let op = self.storage(request, out);
        if let Some(active) = &mut self.active {
            active.waiting = Some(Waiting::Storage {
                op,
                deadline: now + STORAGE_DEADLINE,
            });
        }
    }

    fn partitions(&self) -> u32 {
        self.membership.current().ring().partition_count()
    }

    /// The transfer is complete: the gossip stage records it. (A final sync only clears the
    /// way for the drop.)
    fn finish(&mut self, out: &mut Outbox) {
        let Some(active) = self.active.take() else {
            return;
        };
        if active.final_sync {
            debug!(self.logger, "final sync done"; "partition" => active.partition,
                   "to" => %active.to, "objects" => active.objects);
            if let Some(handed) = self.handed.get_mut(&active.partition) {
                handed.synced_to.insert(active.to);
            }
            return;
        }
        // The oldest comparison of the partition is the safe baseline for its final sync.
        self.handed
            .entry(active.partition)
            .or_insert_with(|| Handed {
                compared: active.compared.clone(),
                ..Handed::default()
            });
        info!(self.logger, "transfer done"; "partition" => active.partition, "to" => %active.to,
              "objects" => active.objects, "bytes" => active.bytes, "retries" => active.retries);
        self.finished.push_back(active.progress("done"));
        while self.finished.len() > FINISHED_SHOWN {
            self.finished.pop_front();
        }
        self.sent.insert((active.partition, active.to.clone()));
        self.unreported.push((active.partition, active.to));
        self.report_unreported(out);
    }

    fn report_unreported(&mut self, out: &mut Outbox) {
        for (partition, to) in std::mem::take(&mut self.unreported) {
            out.request(GossipEvent::Transferred { partition, to });
        }
    }

    /// Gives up on answers past their deadline (the step is retried from the cursor).
    fn expire(&mut self, now: Instant) {
        let overdue = match self.active.as_ref().and_then(|a| a.waiting.as_ref()) {
            Some(Waiting::Storage { deadline, .. } | Waiting::Peer { deadline, .. }) => {
                *deadline <= now
            }
            None => false,
        };
        if overdue {
            self.failed(now, "no answer by the step's deadline".into());
        }
        if self
            .dropping
            .as_ref()
            .is_some_and(|(_, _, deadline)| *deadline <= now)
        {
            self.dropping = None;
        }
    }

    // ---- RECEIVER SIDE ----

    fn serve(
        &mut self,
        origin: Origin,
        partition: u32,
        objects: Vec<(Vec<u8>, VersionSet)>,
        out: &mut Outbox,
    ) {
        let m = self.membership.current();
        if partition >= m.ring().partition_count()
            || !m.holds(&self.settings.node, PartitionId(partition), self.settings.n)
        {
            let error = ServiceError::NotAReplica {
                node: self.settings.node.to_string(),
                partition,
                version: m.version,
            };
            return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
        }
        let count = objects.len() as u32;
        let op = self.storage(StorageRequest::sync(objects, Vec::new()), out);
        self.serving.insert(op, (origin, count));
    }

    // ---- THE REPORT ----

    /// Publishes the outgoing transfers and reports the backlog (transfers pending here, and
    /// partitions waiting to be dropped), so the controller gives the stage a share.
    fn publish(&self, outgoing: &BTreeSet<(u32, NodeId)>) {
        let mut progress: Vec<TransferProgress> = self.finished.iter().cloned().collect();
        for (active, _) in self.parked.values() {
            progress.push(active.progress(TransferProgress::PARKED));
        }
        if let Some(active) = &self.active {
            let phase = if active.final_sync {
                "final_sync"
            } else {
                active.phase.name(active.catch_up)
            };
            progress.push(active.progress(phase));
        }
        self.board.publish(progress);
        self.board.publish_drops_waiting(self.drops_waiting);
        self.gate
            .report_backlog(outgoing.len() as u64 + self.drops_due);
    }
}

/// Every branch of a partition's tree, for a whole-tree snapshot.
fn all_branches(partitions: u32) -> Vec<u16> {
    (0..TreeShape::for_partitions(partitions).branches() as u16).collect()
}

impl Machine for TransferMachine {
    type Input = TransferEvent;

    fn on_event(&mut self, now: Now, event: TransferEvent, out: &mut Outbox) {
        let now = now.instant;
        match event {
            TransferEvent::Serve {
                origin,
                partition,
                objects,
            } => self.serve(origin, partition, objects, out),
            TransferEvent::Storage(done) => self.on_storage(now, done, out),
            TransferEvent::Peer(done) => self.on_peer(now, done, out),
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        self.expire(now.instant);
        self.advance(now.instant, out);
    }

    /// A refused batch or step is a failure (retried from the cursor); a refused report to
    /// gossip is sent again next tick; a refused merge of a received batch is answered.
    fn on_refused(&mut self, now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        match event {
            Event::Gossip(GossipEvent::Transferred { partition, to }) => {
                self.unreported.push((partition, to));
            }
            Event::Storage(StorageEvent { op, .. }) => {
                if let Some((origin, _)) = self.serving.remove(&op) {
                    return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
                }
                if self.dropping.as_ref().is_some_and(|(_, d, _)| *d == op) {
                    self.dropping = None;
                    return;
                }
                self.failed(now.instant, format!("storage refused the step: {error}"));
            }
            Event::Replicate(ReplicateEvent::Send { .. }) => {
                self.failed(now.instant, format!("the batch was not sent: {error}"));
            }
            _ => {}
        }
    }
}

mod answers;
mod cleanup;
#[cfg(test)]
mod tests;
