//! The background stages' events: read repair and hinted handoff.

use super::{PeerDone, StorageDone};
use crate::versioning::VersionSet;
use crate::NodeId;
use std::fmt;

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

/// The handoff stage's events: answers to what it asked of storage and of peers.
#[derive(Debug)]
pub enum HandoffEvent {
    /// Storage answered a hint scan or a hint deletion.
    Storage(StorageDone),
    /// The intended node answered a delivery (or could not be reached).
    Peer(PeerDone),
}

impl fmt::Display for HandoffEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffEvent::Storage(done) => write!(f, "storage {done}"),
            HandoffEvent::Peer(done) => write!(f, "delivery {done}"),
        }
    }
}
