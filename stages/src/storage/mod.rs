//! The storage stage: every read and write of the node's database goes through here.
//!
//! Group commit (SPEC §7): a worker applies its whole batch and answers at once every operation
//! that need not be on disk; the answers of those that must be go to the commit stage
//! (`commit.rs`) in one [`CommitEvent`], which flushes the journal **once** (fdatasync) for
//! all the events it has and only then sends them, so an acknowledged durable write is on disk
//! and the flush cost is shared by every write that queued meanwhile. Storage itself never
//! waits for the disk, so it can run on the intake loop's thread whatever `sync` is. A write
//! must be on disk when its request asked (`durable_writes`, Dynamo §6.1's buffered writes: see
//! [`crate::durability`]) or the node's `sync = "always"`. With `"periodic"` worker 0 asks the
//! commit stage for a flush every `sync_interval` on its tick; with `"none"` nothing waits for
//! the disk: every batch hands its writes to the OS before any answer ([`Store::write_out`];
//! they survive a process crash, not a power loss), and worker 0 asks the commit stage on its
//! tick to start the journal's writeback without waiting for it ([`Store::write_back`]).
//!
//! Background merges yield (issue 9, issue 10): a `Sync` carrying more than [`MERGE_CHUNK`]
//! objects (a hint batch, an anti-entropy exchange, up to a thousand keys) merges that many,
//! and sends the rest back to the end of its own queue as the same operation. These requests
//! come from background stages and so run in storage's background lane (`background_storage`,
//! its own queue and workers, never the intake's loop); the chunks keep one such operation
//! from holding that lane's slot, and the locks it shares with the foreground, for long, and
//! let the lane's other work run between them. Only the last chunk flushes and answers (with the
//! reads). Background reads are cut too: a `Sync` reads [`READ_CHUNK`] keys a step before
//! its merges, a `SegmentDigests` scans about [`DIGEST_CHUNK`] keys' worth of segments a
//! step, and what a step found travels in the rest's `found`.
//!
//! The machine answers each operation to the stage its event names (`reply_to`); the bytes
//! live behind the [`Engine`] trait: fjall in the product, memory in the simulator.

mod cache;
mod commit;
pub mod cpu_priority;
mod engine;
mod instance;
mod memory;
mod store;
mod trees;

pub use commit::CommitMachine;
pub use engine::{journal_files, Engine, FjallEngine, Space};
pub use memory::{MemoryBackup, MemoryEngine};
pub use store::{
    actor_node, ActorOrigin, StorageError, Store, VersionLimits, DEFAULT_OBJECT_CACHE_BYTES,
    MAX_STORABLE_KEY_BYTES,
};

use crate::error::ServiceError;
use crate::event::{
    CommitEvent, Event, Now, Reach, ReplyTo, StorageDone, StorageEvent, StorageOutcome,
    StorageRequest,
};
use crate::seda::{LogLimits, Machine, Outbox};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use slog::{error, Logger};
use std::fmt;

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Never flush explicitly; fastest, loses recent writes on power loss. The journal's
    /// writeback is still started on storage's tick ([`Store::write_back`]), waiting for
    /// nothing, so the engine's own syncs find little to write.
    None,
    /// Flush every `sync_interval_ms`; loses at most that window on power loss.
    Periodic,
    /// Flush before acknowledging, one flush per commit-stage batch (group commit). A
    /// delivered hint's deletion acknowledges nothing and rides the next flush
    /// ([`StorageRequest::wants_flush`](crate::event::StorageRequest::wants_flush)).
    Always,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::None => "none",
            SyncMode::Periodic => "periodic",
            SyncMode::Always => "always",
        })
    }
}

/// Settings of the storage stage.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// This node (its actor, `Store::actor`, names the dots it makes).
    pub node: NodeId,
    /// Durability mode.
    pub sync: SyncMode,
    /// Bounds applied to new versions.
    pub limits: VersionLimits,
    /// The membership and N: a drop step stops at any key once this node holds the
    /// partition again (the view may change between the transfer stage's decision and the
    /// step; data received since must not be dropped). `None`: drops are not checked.
    pub ownership: Option<(crate::membership::MembershipView, usize)>,
}

/// Most objects a `Sync` merges in one storage operation; the rest go back to the end of the
/// queue. A merge of a 1 KiB object costs tens of microseconds here, so a chunk holds a
/// storage slot for about a millisecond, where a 1000-key exchange held it for tens.
pub const MERGE_CHUNK: usize = 32;

/// Most keys a `Sync` reads in one storage operation, the same way (a point read costs
/// 10-20 us here). When storage ran these on the intake loop's thread, an exchange's read of
/// a thousand keys in one turn held every client request behind it for tens of milliseconds
/// (issue 10's benchmark: loop turns of 20-90 ms during a wiped replica's rebuild); they now
/// run in the background lane, where the steps still bound one operation's turn.
pub const READ_CHUNK: usize = 64;

/// About how many keys `SegmentDigests` scans in one storage operation (whole segments, as
/// many as the partition's keys per segment make this many); the other segments go back to
/// the end of the queue. A digest reads the key's stored object and hashes it, and an
/// exchange's scan of up to 4096 keys in one turn was the other long turn.
pub const DIGEST_CHUNK: usize = 256;

/// An answer held until the batch's end (and, if it must be on disk, the commit stage's flush).
struct Held {
    reply_to: ReplyTo,
    done: StorageDone,
    /// Whether the operation is answered only after the flush (and not acknowledged if it
    /// fails).
    flush: bool,
    /// A coordinated write's first answer, sent before the flush (`Applied`).
    early: Option<StorageDone>,
    /// What the operation does with the engine's objects: whether its answer waits for the
    /// batch's [`Store::write_out`], and fails if that does.
    reach: Reach,
}

/// One storage worker's machine.
pub struct StorageMachine {
    store: Store,
    settings: StorageSettings,
    /// Whether this worker asks for the periodic flush (only one worker does).
    flushes_periodically: bool,
    /// Whether this worker asks for `sync = "none"`'s periodic journal writeback (only one
    /// worker does; see [`Store::write_back`]).
    writes_back: bool,
    /// Failed operations' log lines, at most one a second per kind of error.
    failures: LogLimits<std::mem::Discriminant<StorageError>>,
    logger: Logger,
    /// The batch's answers.
    held: Vec<Held>,
    /// Answers waiting for the flush whose commit event found the commit queue full: sent
    /// again with the next batch's (or the next tick). Storage runs on the intake's loop, which
    /// must never wait for a queue, so the event is a request, not a blocking reply. Bounded
    /// in fact by the writes in flight: each is a client's or a background stage's request
    /// still waiting for this answer, and those are bounded by their own queues and windows.
    uncommitted: Vec<(ReplyTo, StorageDone)>,
}

impl StorageMachine {
    /// A worker; worker 0 is the one that flushes periodically.
    pub fn new(
        index: usize,
        store: Store,
        settings: StorageSettings,
        logger: Logger,
    ) -> StorageMachine {
        StorageMachine {
            store,
            flushes_periodically: index == 0 && settings.sync == SyncMode::Periodic,
            writes_back: index == 0 && settings.sync == SyncMode::None,
            failures: LogLimits::default(),
            settings,
            logger,
            held: Vec::new(),
            uncommitted: Vec::new(),
        }
    }

    fn apply(&self, request: StorageRequest) -> Result<StorageOutcome, StorageError> {
        let store = &self.store;
        Ok(match request {
            StorageRequest::Read { key, with_hints } => StorageOutcome::Versions(if with_hints {
                store.read_with_hints(&key)?
            } else {
                store.read(&key)?
            }),
            StorageRequest::StoreHint {
                target,
                key,
                versions,
                ..
            } => StorageOutcome::Versions(store.store_hint(&target, &key, &versions)?),
            StorageRequest::CoordinatePut {
                key,
                context,
                value,
                now_ms,
                durable: _,
                overwrite,
            } => {
                let limits = &self.settings.limits;
                let (set, version) = if overwrite {
                    store.coordinate_overwrite(&key, &context, value, now_ms, limits)?
                } else {
                    store.coordinate_put(&key, &context, value, now_ms, limits)?
                };
                StorageOutcome::Written { set, version }
            }
            StorageRequest::Merge { key, versions, .. } => {
                StorageOutcome::Versions(store.merge(&key, &versions)?)
            }
            StorageRequest::ReadHints { after, limit } => StorageOutcome::Hints {
                hints: store.hints_batch(after.as_deref(), limit)?,
                held: store.hints_held(),
            },
            StorageRequest::DeleteHints { hints } => {
                let mut deleted = 0;
                for hint in &hints {
                    deleted += u64::from(store.delete_hint_if_unchanged(hint)?);
                }
                StorageOutcome::HintsDeleted(deleted)
            }
            StorageRequest::PendingHints => StorageOutcome::PendingHints(store.pending_hints()?),
            StorageRequest::TreeView {
                partition,
                branches,
            } => StorageOutcome::Tree(store.tree_view(partition, branches.as_deref())),
            StorageRequest::SegmentDigests {
                partition,
                segments,
                limit,
                after,
                mut found,
            } => {
                let left = limit.saturating_sub(found.len());
                found.extend(store.segment_digests_after(
                    partition,
                    &segments,
                    after.as_deref(),
                    left,
                )?);
                StorageOutcome::Digests(found)
            }
            StorageRequest::Sync {
                merge,
                read,
                mut found,
            } => {
                found.extend(store.read_many(&read)?);
                store.merge_many(&merge)?;
                StorageOutcome::Objects(found)
            }
            StorageRequest::RebuildTree { partition, limit } => {
                StorageOutcome::Rebuilt(store.rebuild_step(partition, limit)?)
            }
            StorageRequest::TreeSummaries => StorageOutcome::TreeSummaries(store.tree_summaries()),
            StorageRequest::TransferBatch {
                partition,
                segment,
                after,
                max_keys,
                max_bytes,
            } => {
                let read = store.transfer_batch(
                    partition,
                    segment,
                    after.as_deref(),
                    max_keys,
                    max_bytes,
                )?;
                StorageOutcome::Batch {
                    objects: read.objects,
                    bytes: read.bytes,
                    resume: read.resume,
                }
            }
            StorageRequest::DropPartition { partition, limit } => {
                let node = &self.settings.node;
                let unowned = || {
                    self.settings.ownership.as_ref().is_none_or(|(view, n)| {
                        !view
                            .current()
                            .holds(node, crate::ring::PartitionId(partition), *n)
                    })
                };
                let (removed, done) = store.drop_partition(partition, limit, unowned)?;
                StorageOutcome::Dropped { removed, done }
            }
            StorageRequest::SaveMembership { bytes } => {
                store.save_membership(&bytes)?;
                StorageOutcome::Saved
            }
            StorageRequest::PurgeCandidates {
                partition,
                after,
                scan_limit,
                before_ms,
            } => {
                let look =
                    store.purge_candidates(partition, after.as_deref(), scan_limit, before_ms)?;
                StorageOutcome::PurgeCandidates {
                    objects: look.candidates,
                    resume: look.resume,
                    scanned: look.scanned,
                }
            }
            StorageRequest::PurgeCheck { objects, replica } => {
                let mut agreed = Vec::new();
                for (key, set) in objects {
                    // A replica holds exactly the tombstones; any other member holds nothing
                    // of the key or exactly them (a former replica's copy could come back).
                    let stored = store.read(&key)?;
                    let matches = stored == set || (!replica && stored.is_empty());
                    if matches && !store.holds_hint_for(&key)? {
                        agreed.push(key);
                    }
                }
                StorageOutcome::Keys(agreed)
            }
            StorageRequest::PurgeCommit { objects } => {
                let mut purged = Vec::new();
                for (key, set) in objects {
                    if store.purge_if_unchanged(&key, &set)? {
                        purged.push(key);
                    }
                }
                StorageOutcome::Keys(purged)
            }
        })
    }

    /// Cuts a background request too big for one turn down to its first step and returns the
    /// rest to queue again: a `Sync` reads [`READ_CHUNK`] keys a step, then merges
    /// [`MERGE_CHUNK`] objects a step (so the last step merges, and flushes if it must); a
    /// `SegmentDigests` scans about [`DIGEST_CHUNK`] keys' worth of segments a step. What a
    /// step found goes into the rest's `found` once it is applied ([`Self::carry`]).
    fn cut(&self, event: &mut StorageEvent) -> Option<StorageEvent> {
        let request = match &mut event.request {
            StorageRequest::Sync { merge, read, .. } if read.len() > READ_CHUNK => {
                StorageRequest::Sync {
                    merge: std::mem::take(merge),
                    read: read.split_off(READ_CHUNK),
                    found: Vec::new(),
                }
            }
            StorageRequest::Sync { merge, .. } if merge.len() > MERGE_CHUNK => {
                StorageRequest::sync(merge.split_off(MERGE_CHUNK), Vec::new())
            }
            StorageRequest::SegmentDigests {
                partition,
                segments,
                limit,
                ..
            } => {
                let per_step = (DIGEST_CHUNK / self.store.keys_per_segment(*partition)).max(1);
                if segments.len() <= per_step {
                    return None;
                }
                // The rest starts at a segment of its own: from its start.
                StorageRequest::segment_digests(*partition, segments.split_off(per_step), *limit)
            }
            _ => return None,
        };
        Some(StorageEvent {
            op: event.op,
            reply_to: event.reply_to,
            request,
        })
    }

    /// Moves what a step found into the rest of its request, which answers for the whole;
    /// `false` if the rest is not needed after all (the digests reached their limit).
    fn carry(rest: &mut StorageEvent, result: &mut Result<StorageOutcome, ServiceError>) -> bool {
        match (&mut rest.request, result) {
            (StorageRequest::Sync { found, .. }, Ok(StorageOutcome::Objects(objects))) => {
                *found = std::mem::take(objects);
                true
            }
            (
                StorageRequest::SegmentDigests { found, limit, .. },
                Ok(StorageOutcome::Digests(digests)),
            ) => {
                if digests.len() >= *limit {
                    return false;
                }
                *found = std::mem::take(digests);
                true
            }
            _ => true,
        }
    }

    fn hold(&mut self, now: Now, mut event: StorageEvent, out: &mut Outbox) {
        let rest = self.cut(&mut event);
        let StorageEvent {
            op,
            mut reply_to,
            request,
        } = event;
        // A chunk with a rest does not flush: the last chunk's flush makes the whole merge
        // durable (one fdatasync per merge, as before the cut), and only it answers.
        let flush = rest.is_none() && request.wants_flush(self.settings.sync == SyncMode::Always);
        let reach = request.reach();
        let mut result = self.apply(request).map_err(|e| match e {
            StorageError::TooManySiblings { count, max } => ServiceError::TooManySiblings {
                count: count as u64,
                max: max as u64,
            },
            StorageError::ObjectTooLarge {
                bytes,
                versions,
                max,
            } => ServiceError::ObjectTooLarge {
                bytes: bytes as u64,
                versions: versions as u64,
                max: max as u64,
            },
            other => {
                // Once a journal flush failed every write fails the same way: a line a
                // second per kind of error, with how many were held back, not one per request.
                let kind = std::mem::discriminant(&other);
                if let Some(held_back) = self.failures.admit(kind, now.instant) {
                    error!(self.logger, "storage operation failed"; "op" => op.0, "error" => %other,
                           "failures_not_logged_since_the_last" => held_back);
                }
                ServiceError::Storage {
                    reason: other.to_string(),
                }
            }
        });
        if let Some(mut rest) = rest {
            if result.is_ok() && Self::carry(&mut rest, &mut result) {
                // The rest answers, once it is done too. It goes to the end of storage's
                // own queue, behind what arrived meanwhile; under a full queue it is refused
                // and the request answered `Overloaded` (see `on_refused`): a node whose
                // storage queue is full has no room for background work.
                reply_to = ReplyTo::Nobody;
                out.request(rest);
            }
            // Else the rest is not done: the error is the answer, and the asker's retry
            // does the whole again (merging by clock is idempotent).
        }
        // A coordinated write to flush is answered twice: applied now (its coordinator
        // replicates it meanwhile), flushed after the batch's flush.
        let (result, early) = match result {
            Ok(StorageOutcome::Written { set, version }) if flush => {
                let early = StorageDone {
                    op,
                    result: Ok(StorageOutcome::Applied { set, version }),
                    durable: false,
                };
                (Ok(StorageOutcome::Flushed), Some(early))
            }
            other => (other, None),
        };
        self.held.push(Held {
            reply_to,
            done: StorageDone {
                op,
                result,
                durable: false,
            },
            flush,
            early,
            reach,
        });
    }

    /// Hands what the batch wrote or read to the OS before any of it is answered, so an
    /// acknowledged write survives the process's death whatever `sync` says, and so does
    /// any object a read passes on (a value another thread wrote is visible before that
    /// thread's batch writes it out: shipped to a peer and then lost here, its dot could be
    /// issued again after a restart). One system call per batch, none when nothing is
    /// buffered; none for a batch of trees and digests alone (the background lane's
    /// rebuilds, which would otherwise take fjall's journal lock at a low CPU priority). If
    /// it fails, nothing that wrote is acknowledged; reads are still answered, as they are
    /// after any failed flush (the node refuses writes until restarted).
    fn write_out(&mut self, now: Now) {
        if self.held.iter().all(|held| held.reach == Reach::Hashes) {
            return;
        }
        let Err(error) = self.store.write_out() else {
            return;
        };
        let kind = std::mem::discriminant(&error);
        if let Some(held_back) = self.failures.admit(kind, now.instant) {
            error!(self.logger, "storage write-out failed"; "error" => %error,
                   "failures_not_logged_since_the_last" => held_back);
        }
        let refusal = ServiceError::Storage {
            reason: error.to_string(),
        };
        for held in self
            .held
            .iter_mut()
            .filter(|held| held.reach == Reach::Writes)
        {
            if held.done.result.is_ok() {
                held.done.result = Err(refusal.clone());
            }
            held.early = None;
            held.flush = false;
        }
    }

    fn answer(held: Held, out: &mut Outbox) {
        if let Some(answer) = held.reply_to.storage_done(held.done) {
            out.reply(answer);
        }
    }
}

impl Machine for StorageMachine {
    type Input = StorageEvent;

    fn on_event(&mut self, now: Now, event: StorageEvent, out: &mut Outbox) {
        self.on_batch(now, &mut vec![event], out);
    }

    fn on_batch(&mut self, now: Now, batch: &mut Vec<StorageEvent>, out: &mut Outbox) {
        for event in batch.drain(..) {
            self.hold(now, event, out);
        }
        self.write_out(now);
        // What need not be on disk is answered now: a buffered write or a read does not wait
        // for the fdatasync a durable write in the same batch asked for. What must be on disk
        // is answered by the commit stage after its flush.
        let mut commit = CommitEvent {
            waiting: std::mem::take(&mut self.uncommitted),
            write_back: false,
        };
        for mut held in self.held.drain(..) {
            if let Some(early) = held.early.take() {
                if let Some(answer) = held.reply_to.storage_done(early) {
                    out.reply(answer);
                }
            }
            if held.flush && held.done.result.is_ok() {
                commit.waiting.push((held.reply_to, held.done));
            } else {
                Self::answer(held, out);
            }
        }
        if !commit.waiting.is_empty() {
            out.request(commit);
        }
    }

    /// A commit event found the commit queue full: its answers wait (`uncommitted`); the
    /// commit stage stopped: they are answered with the error. The rest of a cut request (a
    /// merge, reads, a digest scan) found the queue full: the request is answered
    /// `Overloaded` (the asker keeps what it sent and tries again later).
    fn on_refused(&mut self, _now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        if let Event::Commit(commit) = event {
            if matches!(error, ServiceError::Overloaded { .. }) {
                // The writes are applied; their answers wait for room (`uncommitted`).
                self.uncommitted.extend(commit.waiting);
            } else {
                // The commit stage stopped: not flushed, so not acknowledged.
                for (reply_to, mut done) in commit.waiting {
                    done.result = Err(error.clone());
                    if let Some(answer) = reply_to.storage_done(done) {
                        out.reply(answer);
                    }
                }
            }
            return;
        }
        if let Event::Storage(StorageEvent { op, reply_to, .. }) = event {
            let done = StorageDone {
                op,
                result: Err(error),
                durable: false,
            };
            if let Some(answer) = reply_to.storage_done(done) {
                out.reply(answer);
            }
        }
    }

    fn on_tick(&mut self, _now: Now, out: &mut Outbox) {
        if self.flushes_periodically || self.writes_back || !self.uncommitted.is_empty() {
            // The commit stage flushes, so whichever thread runs storage never waits for it
            // (a refused periodic request is simply the next tick's).
            let waiting = std::mem::take(&mut self.uncommitted);
            out.request(CommitEvent {
                write_back: self.writes_back && waiting.is_empty(),
                waiting,
            });
        }
    }

    // No flush of its own on stop: the commit stage stops after storage and flushes last,
    // which covers `uncommitted` writes too (their askers stopped before storage).
}

#[cfg(test)]
mod drop_tests;
#[cfg(test)]
mod instance_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
