//! The background stages' events: read repair, hinted handoff and anti-entropy; and the board
//! anti-entropy publishes its report on.

use super::{Origin, PeerDone, StorageDone};
use crate::versioning::VersionSet;
use crate::wire::AaeReport;
use crate::NodeId;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Read repair work (Dynamo §4.5): the reconciled versions of a key, for the replicas whose
/// own versions differed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairEvent {
    /// The key.
    pub key: Vec<u8>,
    /// The reconciled versions every replica should hold.
    pub versions: VersionSet,
    /// The replicas whose versions differed.
    pub targets: Vec<NodeId>,
}

impl fmt::Display for RepairEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "repair {} B key on {} replicas",
            self.key.len(),
            self.targets.len()
        )
    }
}

/// The handoff stage's events: answers to what it asked of storage and of peers, and hints
/// other nodes deliver to this one.
#[derive(Debug)]
pub enum HandoffEvent {
    /// Storage answered a hint scan, a hint deletion or the merge of a received batch.
    Storage(StorageDone),
    /// The intended node answered a delivery (or could not be reached).
    Peer(PeerDone),
    /// A fallback delivered hints meant for this node (validated by parse): merge them and
    /// acknowledge on `origin`'s connection.
    Serve {
        /// Where to answer.
        origin: Origin,
        /// The hinted objects.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
    /// The coordinator's failure detector saw `peer` answer again after it was down: a round
    /// paused by failed deliveries starts at the next tick, not when its pause runs out.
    PeerUp {
        /// The peer that came back.
        peer: NodeId,
    },
}

impl fmt::Display for HandoffEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffEvent::Storage(done) => write!(f, "storage {done}"),
            HandoffEvent::Peer(done) => write!(f, "delivery {done}"),
            HandoffEvent::Serve { objects, .. } => {
                write!(f, "receive {} hinted objects", objects.len())
            }
            HandoffEvent::PeerUp { peer } => write!(f, "{peer} is up"),
        }
    }
}

/// A peer's anti-entropy request, validated by parse, served by the anti-entropy stage (which
/// so knows every exchange on its partitions, its own and its peers').
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AaeRequest {
    /// A level of this node's tree of a partition.
    Tree {
        /// The partition.
        partition: u32,
        /// `None`: the branch hashes (the start of an exchange); else the segment hashes under
        /// these branches.
        branches: Option<Vec<u16>>,
        /// The asker's root (equal roots: the answer leaves the hashes out).
        root: Option<u64>,
    },
    /// The keys of some segments with their object hashes.
    Digests {
        /// The partition.
        partition: u32,
        /// The segments.
        segments: Vec<u16>,
        /// Most keys to list (validated by parse: 1..=`MAX_AAE_ITEMS`).
        limit: usize,
        /// Only the first segment's keys after this one.
        after: Option<Vec<u8>>,
    },
    /// Merge these objects and answer with this node's versions of `want` as they were
    /// before the merge (the end of an exchange).
    Sync {
        /// The partition.
        partition: u32,
        /// Objects to merge (validated and normalised by parse).
        objects: Vec<(Vec<u8>, VersionSet)>,
        /// Keys to answer with.
        want: Vec<Vec<u8>>,
        /// The asker, as it names itself (for the report of that peer).
        from: Option<crate::NodeId>,
    },
    /// A tombstone purge's check or commit.
    Purge {
        /// The partition of every key.
        partition: u32,
        /// Check or commit.
        phase: crate::wire::PurgePhase,
        /// Whether the leader counts this node as a replica of the partition.
        replica: bool,
        /// Keys and the tombstone sets to purge.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
}

/// The anti-entropy stage's events: peers' requests, and answers to what it asked of storage
/// and of peers.
#[derive(Debug)]
pub enum AntiEntropyEvent {
    /// A peer's request, to answer on `origin`.
    Serve {
        /// Where to answer.
        origin: super::Origin,
        /// The request.
        request: AaeRequest,
    },
    /// Storage answered (a tree level, digests, objects, a rebuild step, a purge step).
    Storage(StorageDone),
    /// A peer answered (or could not be reached).
    Peer(PeerDone),
}

impl fmt::Display for AntiEntropyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AntiEntropyEvent::Serve { request, .. } => write!(f, "peer asks {request:?}"),
            AntiEntropyEvent::Storage(done) => write!(f, "storage {done}"),
            AntiEntropyEvent::Peer(done) => write!(f, "peer {done}"),
        }
    }
}

/// A request the gossip stage serves: a peer's gossip, or an operator's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipServe {
    /// A peer's round (validated by parse: it came on an authenticated link).
    Gossip(Box<crate::wire::GossipRequest>),
    /// An operator's plan request (stage a change, show, commit); boxed, as a member's
    /// address and zone would make every event larger.
    Plan(Box<crate::wire::PlanRequest>),
}

/// The gossip stage's events: requests to serve, and answers to what it asked of storage
/// (saves of the membership) and of peers (rounds).
#[derive(Debug)]
pub enum GossipEvent {
    /// A request, to answer on `origin`.
    Serve {
        /// Where to answer.
        origin: super::Origin,
        /// The request.
        request: GossipServe,
    },
    /// Storage answered a save.
    Storage(StorageDone),
    /// A peer answered a round (or could not be reached).
    Peer(PeerDone),
    /// The transfer stage finished handing `partition` to `to` (acknowledged to the end).
    Transferred {
        /// The partition.
        partition: u32,
        /// The new replica that holds it now.
        to: NodeId,
    },
}

impl fmt::Display for GossipEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GossipEvent::Serve { request, .. } => match request {
                GossipServe::Gossip(g) => write!(f, "peer gossips {:016x}", g.digest),
                GossipServe::Plan(p) => write!(f, "plan {:?} (commit: {})", p.change, p.commit),
            },
            GossipEvent::Storage(done) => write!(f, "storage {done}"),
            GossipEvent::Peer(done) => write!(f, "peer {done}"),
            GossipEvent::Transferred { partition, to } => {
                write!(f, "partition {partition} handed to {to}")
            }
        }
    }
}

/// The ownership-transfer stage's events: a batch from an old replica to merge, and answers to
/// what it asked of storage and of peers.
#[derive(Debug)]
pub enum TransferEvent {
    /// An old replica's batch of a partition this node receives, to merge and acknowledge on
    /// `origin` (validated by parse).
    Serve {
        /// Where to answer.
        origin: super::Origin,
        /// The partition.
        partition: u32,
        /// Its objects.
        objects: Vec<(Vec<u8>, VersionSet)>,
    },
    /// Storage answered (a batch read, a merge, a tree snapshot, a drop step).
    Storage(StorageDone),
    /// The new replica answered a batch (or could not be reached).
    Peer(PeerDone),
}

impl fmt::Display for TransferEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferEvent::Serve {
                partition, objects, ..
            } => write!(
                f,
                "batch of partition {partition} ({} objects)",
                objects.len()
            ),
            TransferEvent::Storage(done) => write!(f, "storage {done}"),
            TransferEvent::Peer(done) => write!(f, "peer {done}"),
        }
    }
}

/// Where the transfer stage publishes its outgoing transfers' progress and how many partitions
/// it handed away and has not dropped yet, and the gossip stage reads them into `admin plan`
/// and `admin ring` answers. Cheap to clone.
#[derive(Clone, Default)]
pub struct TransferBoard {
    progress: Arc<Mutex<Vec<crate::wire::TransferProgress>>>,
    drops_waiting: Arc<std::sync::atomic::AtomicU64>,
}

impl TransferBoard {
    /// Replaces the published progress.
    pub fn publish(&self, progress: Vec<crate::wire::TransferProgress>) {
        // A poisoned lock only means a reader panicked; the value is replaced whole.
        let mut guard = match self.progress.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = progress;
    }

    /// Partitions this node no longer holds and has not dropped yet, those still waiting out
    /// `cleanup_delay` included (the transfer stage's backlog counts only those due).
    pub fn publish_drops_waiting(&self, partitions: u64) {
        self.drops_waiting
            .store(partitions, std::sync::atomic::Ordering::Relaxed);
    }

    /// See [`TransferBoard::publish_drops_waiting`].
    pub fn drops_waiting(&self) -> u64 {
        self.drops_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The published progress.
    pub fn read(&self) -> Vec<crate::wire::TransferProgress> {
        match self.progress.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Where the anti-entropy stage publishes its report and the intake reads it for `shoal admin
/// aae` (a node answers even while its queues are full). Cheap to clone.
#[derive(Clone)]
pub struct AaeBoard {
    report: Arc<Mutex<AaeReport>>,
}

impl AaeBoard {
    /// An empty report for `node`.
    pub fn new(node: NodeId, enabled: bool) -> AaeBoard {
        AaeBoard {
            report: Arc::new(Mutex::new(AaeReport {
                node,
                enabled,
                partitions: Vec::new(),
                exchanges: 0,
                in_sync_exchanges: 0,
                keys_sent: 0,
                keys_received: 0,
                digests_compared: 0,
                bytes_exchanged: 0,
                rebuilds: 0,
                rot_found: 0,
                tombstones_purged: 0,
            })),
        }
    }

    /// The report as last published.
    pub fn report(&self) -> AaeReport {
        // A panic while publishing leaves the previous report whole.
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the report.
    pub fn publish(&self, report: AaeReport) {
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }
}
