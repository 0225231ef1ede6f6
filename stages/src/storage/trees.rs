//! The store's Merkle trees, one per partition, kept in memory beside the objects (SPEC §5).
//!
//! A tree is updated by every write, under the written key's lock, from the old and the new
//! object hash. After a start (or a crash) a partition has no tree; the anti-entropy stage has
//! it rebuilt in chunks (`Store::rebuild_step`), and, slowly, rebuilds ready trees too, to
//! catch rot (a tree that no longer matches the data).
//!
//! A rebuild must not spoil a tree with writes it races. It folds a partition's keys in stored
//! order, a chunk at a time, holding the partition's lock for the chunk, and remembers the last
//! key folded (its cursor). A writer holds the same lock while it writes the engine and
//! updates the tree, and updates the tree being built only for a key at or before the cursor
//! (a later key is read by a later chunk, with the write in it). A chunk is small (a few
//! hundred keys, well under a millisecond), so a writer waits for one at most that long, and
//! only writers of that partition.

use crate::merkle::{MerkleTree, TreeShape};
use std::sync::{Mutex, MutexGuard};

/// One partition's tree, as far as it exists.
#[derive(Clone, Debug)]
pub enum TreeState {
    /// None yet (the node started): anti-entropy waits for a rebuild.
    Missing,
    /// Being rebuilt. `previous` is the ready tree a rot check replaces (still served meanwhile).
    Building {
        /// The tree of the keys folded so far (and of writes to them since).
        tree: MerkleTree,
        /// The last stored key folded (`None`: none yet).
        cursor: Option<Vec<u8>>,
        /// The tree being checked, kept current and served until the rebuild ends.
        previous: Option<MerkleTree>,
    },
    /// Current.
    Ready(MerkleTree),
}

impl TreeState {
    /// The tree to compare with peers, if there is one.
    pub fn serving(&self) -> Option<&MerkleTree> {
        match self {
            TreeState::Ready(tree) => Some(tree),
            TreeState::Building { previous, .. } => previous.as_ref(),
            TreeState::Missing => None,
        }
    }
}

/// Every partition's tree state.
pub struct Trees {
    shape: TreeShape,
    partitions: Vec<Mutex<TreeState>>,
}

impl Trees {
    /// Q missing trees.
    pub fn new(partitions: u32) -> Trees {
        Trees {
            shape: TreeShape::for_partitions(partitions),
            partitions: (0..partitions)
                .map(|_| Mutex::new(TreeState::Missing))
                .collect(),
        }
    }

    /// The shape every tree has.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// A partition's state (`None` for a partition outside Q).
    pub fn lock(&self, partition: u32) -> Option<MutexGuard<'_, TreeState>> {
        // A panic under the lock leaves a tree at worst stale; the next rot check fixes it.
        self.partitions
            .get(partition as usize)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Partitions in Q.
    pub fn count(&self) -> u32 {
        self.partitions.len() as u32
    }
}

/// Records a write of `stored_key` (applied under the partition's lock, which the caller holds
/// as `state`) whose object hash went from `old` to `new`.
pub fn record_write(
    state: &mut TreeState,
    segment: u16,
    stored_key: &[u8],
    old: Option<u64>,
    new: Option<u64>,
) {
    if old == new {
        return;
    }
    match state {
        TreeState::Missing => {}
        TreeState::Ready(tree) => tree.update(segment, old, new),
        TreeState::Building {
            tree,
            cursor,
            previous,
        } => {
            if cursor.as_deref().is_some_and(|c| stored_key <= c) {
                tree.update(segment, old, new);
            }
            if let Some(previous) = previous {
                previous.update(segment, old, new);
            }
        }
    }
}
