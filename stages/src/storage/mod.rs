//! The storage stage: every read and write of the node's fjall database goes through here.
//!
//! Group commit (SPEC §7): with `sync = "always"` a worker applies its whole batch of writes,
//! flushes the journal **once** (fdatasync), and only then replies, so an acknowledged write is
//! on disk and the flush cost is shared by every write that queued meanwhile. With
//! `"periodic"` worker 0 flushes every `sync_interval` on its tick; with `"none"` fjall's own
//! buffering decides (writes survive a process crash once in OS buffers, not a power loss).

mod store;

pub use store::{Hint, StorageError, Store, VersionLimits, MAX_STORABLE_KEY_BYTES};

use crate::coordinate::CoordinateEvent;
use crate::error::ServiceError;
use crate::seda::{Stage, StageSender};
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use slog::{error, Logger};
use std::fmt;
use std::time::Instant;

/// Identifies one storage operation of a pending request, chosen by the coordinator.
pub type OpId = u64;

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Never flush explicitly; fastest, loses recent writes on power loss.
    None,
    /// Flush every `sync_interval_ms`; loses at most that window on power loss.
    Periodic,
    /// Flush before acknowledging, one flush per batch (group commit).
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

/// The storage stage's events.
#[derive(Debug)]
pub enum StorageEvent {
    /// Read the stored versions of a key.
    Read {
        /// Operation to answer.
        op: OpId,
        /// The key.
        key: Vec<u8>,
        /// Merge in hints this node keeps for others (replica reads: a fallback serves what
        /// it stands in for) or not (an operator's look at the node's own objects).
        with_hints: bool,
    },
    /// Coordinate a put or delete (`value: None`) with the client's context.
    CoordinatePut {
        /// Operation to answer.
        op: OpId,
        /// The key.
        key: Vec<u8>,
        /// The client's context (empty for a blind put).
        context: VClock,
        /// New value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// Wall-clock time for the version's timestamp.
        now_ms: u64,
    },
    /// Keep versions meant for a down node as a hint (sloppy quorum).
    StoreHint {
        /// Operation to answer.
        op: OpId,
        /// The node the versions belong to.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// The versions.
        versions: VersionSet,
    },
    /// Merge versions a coordinator or repairer sent (replica write).
    Merge {
        /// Operation to answer.
        op: OpId,
        /// The key.
        key: Vec<u8>,
        /// The versions to merge in.
        versions: VersionSet,
    },
}

impl fmt::Display for StorageEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageEvent::Read { op, .. } => write!(f, "read op {op}"),
            StorageEvent::CoordinatePut { op, value, .. } => {
                let kind = if value.is_some() { "put" } else { "delete" };
                write!(f, "coordinate {kind} op {op}")
            }
            StorageEvent::Merge { op, versions, .. } => write!(f, "merge op {op} {versions}"),
            StorageEvent::StoreHint { op, target, .. } => write!(f, "hint for {target} op {op}"),
        }
    }
}

/// What a storage operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOutcome {
    /// The stored versions (reads, merges).
    Versions(VersionSet),
    /// A coordinated write: the set after it and the version it created.
    Written {
        /// The key's versions after the write.
        set: VersionSet,
        /// The version the write created.
        version: Version,
    },
}

/// The reply to one storage event.
#[derive(Debug)]
pub struct StorageDone {
    /// The operation answered.
    pub op: OpId,
    /// Its outcome.
    pub result: Result<StorageOutcome, ServiceError>,
}

/// Settings of the storage stage.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// This node (the coordinator id in new dots).
    pub node: NodeId,
    /// Durability mode.
    pub sync: SyncMode,
    /// Bounds applied to new versions.
    pub limits: VersionLimits,
}

/// One storage worker.
pub struct StorageStage {
    store: Store,
    settings: StorageSettings,
    replies: StageSender<CoordinateEvent>,
    /// Whether this worker runs the periodic flush (only one worker does).
    flushes_periodically: bool,
    logger: Logger,
    /// Replies held until the batch's flush.
    pending: Vec<StorageDone>,
    /// Whether each held reply answers a write.
    pending_writes: Vec<bool>,
}

impl StorageStage {
    /// A worker; worker 0 is the one that flushes periodically.
    pub fn new(
        index: usize,
        store: Store,
        settings: StorageSettings,
        replies: StageSender<CoordinateEvent>,
        logger: Logger,
    ) -> StorageStage {
        StorageStage {
            store,
            flushes_periodically: index == 0 && settings.sync == SyncMode::Periodic,
            settings,
            replies,
            logger,
            pending: Vec::new(),
            pending_writes: Vec::new(),
        }
    }

    fn apply(&self, event: StorageEvent) -> (StorageDone, bool) {
        let (op, result, wrote) = match event {
            StorageEvent::Read {
                op,
                key,
                with_hints,
            } => {
                let read = if with_hints {
                    self.store.read_with_hints(&key)
                } else {
                    self.store.read(&key)
                };
                (op, read.map(StorageOutcome::Versions), false)
            }
            StorageEvent::StoreHint {
                op,
                target,
                key,
                versions,
            } => (
                op,
                self.store
                    .store_hint(&target, &key, &versions)
                    .map(StorageOutcome::Versions),
                true,
            ),
            StorageEvent::CoordinatePut {
                op,
                key,
                context,
                value,
                now_ms,
            } => {
                let result = self
                    .store
                    .coordinate_put(
                        &key,
                        &self.settings.node,
                        &context,
                        value,
                        now_ms,
                        &self.settings.limits,
                    )
                    .map(|(set, version)| StorageOutcome::Written { set, version });
                (op, result, true)
            }
            StorageEvent::Merge { op, key, versions } => (
                op,
                self.store
                    .merge(&key, &versions)
                    .map(StorageOutcome::Versions),
                true,
            ),
        };
        let result = result.map_err(|e| match e {
            StorageError::TooManySiblings { count, max } => ServiceError::TooManySiblings {
                count: count as u64,
                max: max as u64,
            },
            other => {
                error!(self.logger, "storage operation failed"; "op" => op, "error" => %other);
                ServiceError::Storage {
                    reason: other.to_string(),
                }
            }
        });
        (StorageDone { op, result }, wrote)
    }

    /// Flushes once for the batch; if the flush fails, no write of the batch is acknowledged
    /// (coordinated puts, replica merges and hints alike: each counts toward some W).
    fn group_commit(&mut self) {
        if let Err(e) = self.store.persist() {
            error!(self.logger, "journal flush failed"; "error" => %e);
            for (done, wrote) in self.pending.iter_mut().zip(&self.pending_writes) {
                if *wrote && done.result.is_ok() {
                    done.result = Err(ServiceError::Storage {
                        reason: format!("journal flush failed: {e}"),
                    });
                }
            }
        }
    }
}

impl Stage for StorageStage {
    type Event = StorageEvent;

    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<StorageEvent>) {
        let mut wrote = false;
        for event in batch.drain(..) {
            let (done, was_write) = self.apply(event);
            wrote |= was_write && done.result.is_ok();
            self.pending.push(done);
            self.pending_writes.push(was_write);
        }
        if wrote && self.settings.sync == SyncMode::Always {
            self.group_commit();
        }
        self.pending_writes.clear();
        for done in self.pending.drain(..) {
            // The coordinator stops last among the request stages' consumers, so a closed
            // queue means shutdown; the reply has nobody left to read it.
            let _ = self.replies.send(CoordinateEvent::Storage(done));
        }
    }

    fn on_tick(&mut self, _now: Instant) {
        if self.flushes_periodically {
            if let Err(e) = self.store.persist() {
                error!(self.logger, "periodic journal flush failed"; "error" => %e);
            }
        }
    }

    fn on_stop(&mut self) {
        if let Err(e) = self.store.persist() {
            error!(self.logger, "final journal flush failed"; "error" => %e);
        }
    }
}
