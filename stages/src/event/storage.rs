//! The storage stage's events: what other stages ask of the local store, and its answers.

use super::{OpId, ReplyTo};
use crate::error::ServiceError;
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use crate::NodeId;
use std::collections::BTreeMap;
use std::fmt;

/// One operation on the local store: what to do, and where its answer goes.
#[derive(Debug)]
pub struct StorageEvent {
    /// The asker's operation, echoed in the answer.
    pub op: OpId,
    /// The stage that gets the answer.
    pub reply_to: ReplyTo,
    /// What to do.
    pub request: StorageRequest,
}

/// Writes storage applied that may be acknowledged only once on disk, with their answers:
/// the commit stage flushes the journal once for every such event it has, then sends each
/// answer (marked durable, or the flush's error). Empty: a flush asked for by `sync =
/// "periodic"`'s tick, answering nobody, or with `write_back`, `sync = "none"`'s.
#[derive(Debug, Default)]
pub struct CommitEvent {
    /// The answers to send once flushed, each to its asker.
    pub waiting: Vec<(ReplyTo, StorageDone)>,
    /// Only start the journal's writeback, waiting for nothing (`sync = "none"`'s tick; see
    /// [`crate::storage::Store::write_back`]). A batch with any other event flushes instead,
    /// which covers this too.
    pub write_back: bool,
}

impl fmt::Display for CommitEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.write_back && self.waiting.is_empty() {
            return f.write_str("journal writeback");
        }
        write!(f, "flush for {} writes", self.waiting.len())
    }
}

/// What a storage operation does with the engine's objects ([`StorageRequest::reach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// It may change what the engine holds: its answer waits for the batch's write-out and
    /// is refused if that fails.
    Writes,
    /// It reads objects and its answer carries them (or what is decided from them) out: the
    /// answer waits for the write-out.
    HandsOut,
    /// It reads trees, digests or counts only: nothing to wait for.
    Hashes,
}

/// What a storage operation does.
#[derive(Debug)]
pub enum StorageRequest {
    /// Read the stored versions of a key.
    Read {
        /// The key.
        key: Vec<u8>,
        /// Merge in hints this node keeps for others (replica reads: a fallback serves what
        /// it stands in for) or not (an operator's look at the node's own objects).
        with_hints: bool,
    },
    /// Coordinate a put or delete (`value: None`) with the client's context.
    CoordinatePut {
        /// The key.
        key: Vec<u8>,
        /// The client's context (empty for a blind put).
        context: VClock,
        /// New value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// Wall-clock time for the version's timestamp.
        now_ms: u64,
        /// Flush before answering (`durable_writes` "one" or "all").
        durable: bool,
        /// Supersede every version stored here, not only what the context covers.
        overwrite: bool,
    },
    /// Keep versions meant for a down node as a hint (sloppy quorum).
    StoreHint {
        /// The node the versions belong to.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// The versions.
        versions: VersionSet,
        /// Flush before answering (the coordinator asked, `durable_writes = "all"`).
        durable: bool,
    },
    /// Merge versions a coordinator or repairer sent (replica write).
    Merge {
        /// The key.
        key: Vec<u8>,
        /// The versions to merge in.
        versions: VersionSet,
        /// Flush before answering (the coordinator asked, `durable_writes = "all"`).
        durable: bool,
    },
    /// Up to `limit` hints in key order, after the hint key `after` (hinted handoff's scan).
    ReadHints {
        /// Resume after this hint key (`None`: from the start).
        after: Option<Vec<u8>>,
        /// Most hints returned.
        limit: usize,
    },
    /// Delete delivered hints, each only if it still holds exactly what was delivered.
    DeleteHints {
        /// The hints as delivered.
        hints: Vec<Hint>,
    },
    /// Count the hints held, per intended node.
    PendingHints,
    /// A level of a partition's Merkle tree (anti-entropy).
    TreeView {
        /// The partition.
        partition: u32,
        /// `None`: the branch hashes; else the segment hashes under these branches.
        branches: Option<Vec<u16>>,
    },
    /// The keys of some segments of a partition with their object hashes. Built with
    /// [`StorageRequest::segment_digests`].
    SegmentDigests {
        /// The partition.
        partition: u32,
        /// The segments.
        segments: Vec<u16>,
        /// Most keys returned.
        limit: usize,
        /// Only the first segment's keys after this one (an exchange going on past where its
        /// lists last stopped short); `None`: from each segment's start.
        after: Option<Vec<u8>>,
        /// What the earlier steps of this request found: storage scans a few hundred keys a
        /// turn and queues the other segments again (see `storage::DIGEST_CHUNK`). Empty
        /// when a stage asks.
        found: Vec<(Vec<u8>, u64)>,
    },
    /// Read those keys, then merge these objects (anti-entropy's exchange of differing keys;
    /// a key in both gets its stored set before the merge, and the asker merging it ends
    /// with the same union as this node). Built with [`StorageRequest::sync`].
    Sync {
        /// Objects to merge like replica writes.
        merge: Vec<(Vec<u8>, VersionSet)>,
        /// Keys to read.
        read: Vec<Vec<u8>>,
        /// What the earlier steps of this request read: storage reads a few dozen keys and
        /// merges a few dozen objects a turn, and queues the rest again (see
        /// `storage::READ_CHUNK`, `storage::MERGE_CHUNK`). Empty when a stage asks.
        found: Vec<(Vec<u8>, VersionSet)>,
    },
    /// Fold up to `limit` more keys into a partition's tree being rebuilt.
    RebuildTree {
        /// The partition.
        partition: u32,
        /// Most keys folded.
        limit: usize,
    },
    /// Every partition's tree state, root and key count.
    TreeSummaries,
    /// The next objects of a partition (or of one of its segments) in stored order, after the
    /// stored key `after`: at most `max_keys`, and no more once `max_bytes` are reached.
    TransferBatch {
        /// The partition.
        partition: u32,
        /// Only this segment's keys, if given.
        segment: Option<u16>,
        /// Resume after this stored key (`None`: from the start).
        after: Option<Vec<u8>>,
        /// Most objects.
        max_keys: usize,
        /// Stop adding objects once their encoded size reaches this.
        max_bytes: usize,
    },
    /// Remove up to `limit` objects of a partition this node no longer holds.
    DropPartition {
        /// The partition.
        partition: u32,
        /// Most objects removed.
        limit: usize,
    },
    /// Keep this encoded membership durably (gossip, after every change).
    SaveMembership {
        /// The membership, as `wire::encode_membership` wrote it.
        bytes: Vec<u8>,
    },
    /// Tombstone-only keys of a partition older than `before_ms`, a bounded look at a time.
    PurgeCandidates {
        /// The partition.
        partition: u32,
        /// Resume after this stored key (`None`: from the start).
        after: Option<Vec<u8>>,
        /// Most keys looked at.
        scan_limit: usize,
        /// Only tombstones written before this wall-clock ms.
        before_ms: u64,
    },
    /// Which of these tombstone sets this node lets go: no hint for the key, and (if it is a
    /// replica) exactly this set stored.
    PurgeCheck {
        /// The keys and tombstone sets.
        objects: Vec<(Vec<u8>, VersionSet)>,
        /// Whether this node replicates them (else only its hints are checked).
        replica: bool,
    },
    /// Delete each key that still holds exactly its set.
    PurgeCommit {
        /// The keys and tombstone sets.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
}

impl StorageRequest {
    /// Read `read`, then merge `merge`; answered with the objects read.
    pub fn sync(merge: Vec<(Vec<u8>, VersionSet)>, read: Vec<Vec<u8>>) -> StorageRequest {
        StorageRequest::Sync {
            merge,
            read,
            found: Vec::new(),
        }
    }

    /// The keys of `segments` of `partition` with their object hashes, at most `limit`.
    pub fn segment_digests(partition: u32, segments: Vec<u16>, limit: usize) -> StorageRequest {
        StorageRequest::segment_digests_after(partition, segments, None, limit)
    }

    /// [`StorageRequest::segment_digests`], the first segment's keys only after `after`.
    pub fn segment_digests_after(
        partition: u32,
        segments: Vec<u16>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> StorageRequest {
        StorageRequest::SegmentDigests {
            partition,
            segments,
            limit,
            after,
            found: Vec::new(),
        }
    }

    /// Whether the operation must be on disk before it is answered: it asked to be, or it
    /// writes and the node's own `sync = "always"` flushes every write. A hint's deletion
    /// never waits for a flush: losing it to a power cut only delivers the hint again, which
    /// the receiver merges by clock to the same result, and it reaches the disk with the next
    /// flush anyway (under `sync = "always"`, the next write's). Waiting would add an
    /// fdatasync per delivery round to every node that drains hints, on a disk the foreground
    /// shares.
    pub fn wants_flush(&self, sync_always: bool) -> bool {
        match self {
            StorageRequest::CoordinatePut { durable, .. }
            | StorageRequest::Merge { durable, .. }
            | StorageRequest::StoreHint { durable, .. } => *durable || sync_always,
            StorageRequest::DeleteHints { .. } => false,
            other => sync_always && other.writes(),
        }
    }

    /// What the operation does with the engine's objects, which decides its part in the
    /// batch's write-out ([`crate::storage::Store::write_out`]): another worker's write is
    /// visible before its own batch writes it out, so an answer that acknowledges a write or
    /// carries objects (or what is decided from them) out of storage, to a client, a peer, a
    /// transfer or a purge, must wait for it. Trees and digests carry hashes only: an
    /// exchange they start reads its objects with a `Sync`, which waits. Every kind is named,
    /// so a new one must say.
    pub fn reach(&self) -> Reach {
        match self {
            // An anti-entropy sync with nothing (left) to merge only reads, as `writes` says.
            StorageRequest::Sync { merge, .. } if merge.is_empty() => Reach::HandsOut,
            StorageRequest::CoordinatePut { .. }
            | StorageRequest::StoreHint { .. }
            | StorageRequest::Merge { .. }
            | StorageRequest::DeleteHints { .. }
            | StorageRequest::Sync { .. }
            | StorageRequest::DropPartition { .. }
            | StorageRequest::SaveMembership { .. }
            | StorageRequest::PurgeCommit { .. } => Reach::Writes,
            StorageRequest::Read { .. }
            | StorageRequest::ReadHints { .. }
            | StorageRequest::TransferBatch { .. }
            | StorageRequest::PurgeCandidates { .. }
            | StorageRequest::PurgeCheck { .. } => Reach::HandsOut,
            StorageRequest::PendingHints
            | StorageRequest::TreeView { .. }
            | StorageRequest::SegmentDigests { .. }
            | StorageRequest::RebuildTree { .. }
            | StorageRequest::TreeSummaries => Reach::Hashes,
        }
    }

    /// Whether the operation writes (and so waits for the group commit under `sync = "always"`).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            StorageRequest::CoordinatePut { .. }
                | StorageRequest::StoreHint { .. }
                | StorageRequest::Merge { .. }
                | StorageRequest::DeleteHints { .. }
                | StorageRequest::PurgeCommit { .. }
        ) || matches!(self, StorageRequest::Sync { merge, .. } if !merge.is_empty())
    }
}

impl fmt::Display for StorageEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.op;
        match &self.request {
            StorageRequest::Read { .. } => write!(f, "read op {op}"),
            StorageRequest::CoordinatePut { value, .. } => {
                let kind = if value.is_some() { "put" } else { "delete" };
                write!(f, "coordinate {kind} op {op}")
            }
            StorageRequest::Merge { versions, .. } => write!(f, "merge op {op} {versions}"),
            StorageRequest::StoreHint { target, .. } => write!(f, "hint for {target} op {op}"),
            StorageRequest::ReadHints { limit, .. } => write!(f, "read {limit} hints op {op}"),
            StorageRequest::DeleteHints { hints } => {
                write!(f, "delete {} delivered hints op {op}", hints.len())
            }
            StorageRequest::PendingHints => write!(f, "count hints op {op}"),
            StorageRequest::TreeView { partition, .. } => {
                write!(f, "tree of partition {partition} op {op}")
            }
            StorageRequest::SegmentDigests {
                partition,
                segments,
                ..
            } => write!(
                f,
                "digests of {} segments of partition {partition} op {op}",
                segments.len()
            ),
            StorageRequest::Sync { merge, read, .. } => write!(
                f,
                "sync op {op}: merge {}, read {}",
                merge.len(),
                read.len()
            ),
            StorageRequest::RebuildTree { partition, limit } => {
                write!(f, "rebuild {limit} of partition {partition} op {op}")
            }
            StorageRequest::TreeSummaries => write!(f, "tree summaries op {op}"),
            StorageRequest::TransferBatch {
                partition, after, ..
            } => write!(
                f,
                "transfer batch of partition {partition} (resuming: {}) op {op}",
                after.is_some()
            ),
            StorageRequest::DropPartition { partition, limit } => {
                write!(f, "drop {limit} of partition {partition} op {op}")
            }
            StorageRequest::SaveMembership { bytes } => {
                write!(f, "save membership ({} B) op {op}", bytes.len())
            }
            StorageRequest::PurgeCandidates { partition, .. } => {
                write!(f, "purge candidates of partition {partition} op {op}")
            }
            StorageRequest::PurgeCheck { objects, .. } => {
                write!(f, "purge check of {} keys op {op}", objects.len())
            }
            StorageRequest::PurgeCommit { objects } => {
                write!(f, "purge of {} keys op {op}", objects.len())
            }
        }?;
        write!(f, " for {}", self.reply_to)
    }
}

/// A hint: versions of `key` this node holds for `target`, a preference-list node that was
/// down when they were written (Dynamo §4.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// Its key in the hints keyspace.
    pub hint_key: Vec<u8>,
    /// The node the versions belong to.
    pub target: NodeId,
    /// The object's key.
    pub key: Vec<u8>,
    /// The versions to hand over.
    pub versions: VersionSet,
}

/// What a storage operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOutcome {
    /// The stored versions (reads, merges, hints stored).
    Versions(VersionSet),
    /// A coordinated write: the set after it and the version it created.
    Written {
        /// The key's versions after the write.
        set: VersionSet,
        /// The version the write created.
        version: Version,
    },
    /// A coordinated write that must be flushed, answered as soon as it is applied so the
    /// coordinator can replicate it while the flush runs; a second answer for the same
    /// operation follows: [`StorageOutcome::Flushed`], or the flush's error.
    Applied {
        /// The key's versions after the write.
        set: VersionSet,
        /// The version the write created.
        version: Version,
    },
    /// The write answered earlier as [`StorageOutcome::Applied`] is on disk.
    Flushed,
    /// A batch of hints, and how many hints the node holds in all (for the handoff stage's
    /// backlog).
    Hints {
        /// The batch.
        hints: Vec<Hint>,
        /// Every hint the node holds now.
        held: u64,
    },
    /// How many delivered hints were deleted (the others changed since they were read).
    HintsDeleted(u64),
    /// Hints held per intended node.
    PendingHints(BTreeMap<NodeId, u64>),
    /// A level of a partition's tree.
    Tree(TreeView),
    /// Keys with their object hashes.
    Digests(Vec<(Vec<u8>, u64)>),
    /// Keys with their versions.
    Objects(Vec<(Vec<u8>, VersionSet)>),
    /// A step of a tree rebuild.
    Rebuilt(RebuildStep),
    /// Every partition's tree.
    TreeSummaries(Vec<TreeSummary>),
    /// The membership is on disk.
    Saved,
    /// A transfer batch, and the stored key to resume after (`None`: the scan is complete).
    Batch {
        /// Keys with their versions.
        objects: Vec<(Vec<u8>, VersionSet)>,
        /// Their encoded size.
        bytes: u64,
        /// Resume after this stored key.
        resume: Option<Vec<u8>>,
    },
    /// A drop step: objects removed, and whether the partition is now empty.
    Dropped {
        /// Objects removed.
        removed: usize,
        /// Whether nothing is left.
        done: bool,
    },
    /// Purge candidates, and where the next look resumes.
    PurgeCandidates {
        /// Tombstone-only keys old enough.
        objects: Vec<(Vec<u8>, VersionSet)>,
        /// Resume after this stored key (`None`: the partition was looked at to its end).
        resume: Option<Vec<u8>>,
        /// Keys looked at (what the look cost).
        scanned: usize,
    },
    /// The keys a purge check agreed to, or a purge commit deleted.
    Keys(Vec<Vec<u8>>),
}

/// The answer to one storage operation.
#[derive(Debug)]
pub struct StorageDone {
    /// The operation answered.
    pub op: OpId,
    /// Its outcome.
    pub result: Result<StorageOutcome, ServiceError>,
    /// The operation's writes were flushed to disk before this answer (group commit).
    pub durable: bool,
}

impl fmt::Display for StorageDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(StorageOutcome::Versions(set)) => write!(f, "op {} done: {set}", self.op),
            Ok(StorageOutcome::Written { set, .. }) => write!(f, "op {} written: {set}", self.op),
            Ok(StorageOutcome::Applied { set, .. }) => write!(f, "op {} applied: {set}", self.op),
            Ok(StorageOutcome::Flushed) => write!(f, "op {} flushed", self.op),
            Ok(StorageOutcome::Hints { hints, held }) => {
                write!(f, "op {} {} hints of {held}", self.op, hints.len())
            }
            Ok(StorageOutcome::HintsDeleted(deleted)) => {
                write!(f, "op {} {deleted} hints deleted", self.op)
            }
            Ok(StorageOutcome::PendingHints(counts)) => {
                write!(f, "op {} hints held for {} nodes", self.op, counts.len())
            }
            Ok(StorageOutcome::Tree(view)) => {
                write!(f, "op {} tree ({} hashes)", self.op, view.hashes.len())
            }
            Ok(StorageOutcome::Digests(digests)) => {
                write!(f, "op {} {} digests", self.op, digests.len())
            }
            Ok(StorageOutcome::Objects(objects)) => {
                write!(f, "op {} {} objects", self.op, objects.len())
            }
            Ok(StorageOutcome::Rebuilt(step)) => {
                write!(
                    f,
                    "op {} folded {} (done: {})",
                    self.op, step.folded, step.done
                )
            }
            Ok(StorageOutcome::Saved) => write!(f, "op {} saved", self.op),
            Ok(StorageOutcome::Batch { objects, .. }) => {
                write!(f, "op {} batch of {}", self.op, objects.len())
            }
            Ok(StorageOutcome::Dropped { removed, done }) => {
                write!(f, "op {} dropped {removed} (done: {done})", self.op)
            }
            Ok(StorageOutcome::TreeSummaries(trees)) => {
                write!(f, "op {} {} trees", self.op, trees.len())
            }
            Ok(StorageOutcome::PurgeCandidates { objects, .. }) => {
                write!(f, "op {} {} purge candidates", self.op, objects.len())
            }
            Ok(StorageOutcome::Keys(keys)) => write!(f, "op {} {} keys", self.op, keys.len()),
            Err(error) => write!(f, "op {} failed: {}", self.op, error.kind()),
        }
    }
}

/// A partition's tree as anti-entropy sees it: whether there is one, its root, its key count
/// and the hashes of the level asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeView {
    /// Whether the partition has a tree (false while it is first built after a start).
    pub ready: bool,
    /// The root hash.
    pub root: u64,
    /// Keys in the partition.
    pub keys: u64,
    /// The branch hashes, or the segment hashes of the branches asked for, in order.
    pub hashes: Vec<u64>,
}

impl TreeView {
    /// The view of a partition without a tree.
    pub fn missing() -> TreeView {
        TreeView {
            ready: false,
            root: 0,
            keys: 0,
            hashes: Vec::new(),
        }
    }
}

/// What one step of a tree rebuild did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildStep {
    /// Keys folded by this step.
    pub folded: usize,
    /// Whether the tree is complete (and now serves).
    pub done: bool,
    /// Whether a rebuilt tree differs from the one it replaced (rot, or a bug).
    pub rot: bool,
}

/// One partition's tree, for `shoal admin aae`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSummary {
    /// The partition.
    pub partition: u32,
    /// `missing`, `building` or `ready`.
    pub state: &'static str,
    /// The root hash of the tree that serves (0 without one).
    pub root: u64,
    /// Keys under that tree.
    pub keys: u64,
}
