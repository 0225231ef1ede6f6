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
    },
    /// Keep versions meant for a down node as a hint (sloppy quorum).
    StoreHint {
        /// The node the versions belong to.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// The versions.
        versions: VersionSet,
    },
    /// Merge versions a coordinator or repairer sent (replica write).
    Merge {
        /// The key.
        key: Vec<u8>,
        /// The versions to merge in.
        versions: VersionSet,
    },
    /// Up to `limit` hints in key order, after the hint key `after` (hinted handoff's scan).
    ReadHints {
        /// Resume after this hint key (`None`: from the start).
        after: Option<Vec<u8>>,
        /// Most hints returned.
        limit: usize,
    },
    /// Delete a delivered hint if it still holds exactly what was delivered.
    DeleteHint {
        /// The hint as delivered.
        hint: Hint,
    },
    /// Count the hints held, per intended node.
    PendingHints,
}

impl StorageRequest {
    /// Whether the operation writes (and so waits for the group commit under `sync = "always"`).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            StorageRequest::CoordinatePut { .. }
                | StorageRequest::StoreHint { .. }
                | StorageRequest::Merge { .. }
                | StorageRequest::DeleteHint { .. }
        )
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
            StorageRequest::DeleteHint { hint } => {
                write!(f, "delete hint for {} op {op}", hint.target)
            }
            StorageRequest::PendingHints => write!(f, "count hints op {op}"),
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
    /// A batch of hints, and how many hints the node holds in all (for the handoff stage's
    /// backlog).
    Hints {
        /// The batch.
        hints: Vec<Hint>,
        /// Every hint the node holds now.
        held: u64,
    },
    /// Whether a delivered hint was deleted (false: it changed since it was read).
    HintDeleted(bool),
    /// Hints held per intended node.
    PendingHints(BTreeMap<NodeId, u64>),
}

/// The answer to one storage operation.
#[derive(Debug)]
pub struct StorageDone {
    /// The operation answered.
    pub op: OpId,
    /// Its outcome.
    pub result: Result<StorageOutcome, ServiceError>,
}

impl fmt::Display for StorageDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(StorageOutcome::Versions(set)) => write!(f, "op {} done: {set}", self.op),
            Ok(StorageOutcome::Written { set, .. }) => write!(f, "op {} written: {set}", self.op),
            Ok(StorageOutcome::Hints { hints, held }) => {
                write!(f, "op {} {} hints of {held}", self.op, hints.len())
            }
            Ok(StorageOutcome::HintDeleted(deleted)) => {
                write!(f, "op {} hint deleted: {deleted}", self.op)
            }
            Ok(StorageOutcome::PendingHints(counts)) => {
                write!(f, "op {} hints held for {} nodes", self.op, counts.len())
            }
            Err(error) => write!(f, "op {} failed: {}", self.op, error.kind()),
        }
    }
}
