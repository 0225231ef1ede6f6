//! Merkle trees for anti-entropy (Dynamo §4.7, SPEC §5): one tree per partition over the
//! (key, version set) pairs a replica holds. Pure: no threads, no storage.
//!
//! The tree is the XOR form of Riak's Tictac AAE: an object's hash lands in one leaf
//! ("segment") chosen by its key, a segment is the XOR of the hashes of its objects, a branch
//! the XOR of its segments and the root the XOR of everything. XOR makes every write an O(1)
//! update from the old and the new hash (`apply(segment, old ^ new)`, and the store already
//! reads the old value before it writes), makes updates commute (so concurrent writers need no
//! order), and makes an absent object and a removed one identical. Two levels are enough: a
//! root compare settles a partition in sync with one message, a differing root costs one round
//! trip for the branches and one for the segments below the differing branches.
//!
//! Each object lives in exactly one segment, and the store keeps objects on disk ordered by
//! `[partition][segment][key]`, so the keys of a differing segment are one range scan.

use xxhash_rust::xxh3::Xxh3;

/// Total segments over all partitions the shape aims for (2^18 × 8 bytes = 2 MiB of leaves per
/// node at most, whatever Q is). With the default Q = 64 that is 4,096 segments per partition,
/// a few keys per segment at a million keys, so a difference of a hundred keys is found by
/// comparing a few hundred key digests.
const TOTAL_SEGMENT_BITS: u32 = 18;
/// Bounds on the segment bits per partition: at least 64 segments (a small Q still narrows a
/// difference), at most 4,096 (a tree must stay cheap to send a level of).
const MIN_SEGMENT_BITS: u32 = 6;
const MAX_SEGMENT_BITS: u32 = 12;

/// How many branches and segments a partition's tree has. Derived from Q alone, so every node of
/// a cluster builds the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeShape {
    branch_bits: u32,
    leaf_bits: u32,
}

impl TreeShape {
    /// The shape for a ring of `partitions` (Q, a power of two).
    pub fn for_partitions(partitions: u32) -> TreeShape {
        let q_bits = partitions.max(1).trailing_zeros();
        let bits = TOTAL_SEGMENT_BITS
            .saturating_sub(q_bits)
            .clamp(MIN_SEGMENT_BITS, MAX_SEGMENT_BITS);
        TreeShape {
            branch_bits: bits / 2,
            leaf_bits: bits - bits / 2,
        }
    }

    /// Segments (leaves) per partition.
    pub fn segments(&self) -> usize {
        1 << (self.branch_bits + self.leaf_bits)
    }

    /// Branches per partition.
    pub fn branches(&self) -> usize {
        1 << self.branch_bits
    }

    /// Segments under one branch.
    pub fn segments_per_branch(&self) -> usize {
        1 << self.leaf_bits
    }

    /// The segment of a key at ring `position`: its low bits (the partition takes the high
    /// ones, so the two are independent).
    pub fn segment_of_position(&self, position: u128) -> u16 {
        // Below 2^12, so the cast loses nothing.
        (position & (self.segments() as u128 - 1)) as u16
    }

    /// The branch a segment hangs under.
    pub fn branch_of(&self, segment: u16) -> u16 {
        segment >> self.leaf_bits
    }

    /// The segments under `branch`.
    /// A branch past the shape has none.
    pub fn segments_of(&self, branch: u16) -> std::ops::Range<u16> {
        if usize::from(branch) >= self.branches() {
            return 0..0;
        }
        let first = branch << self.leaf_bits;
        // segments() <= 4096, so this fits a u16.
        first..first + self.segments_per_branch() as u16
    }
}

/// An object's contribution to its segment: XXH3-64 over the key (length prefixed, so key and
/// value bytes cannot trade places) and the stored bytes of its version set. Version sets are
/// kept sorted so equal sets encode identically on every replica. XXH3 and not a std hasher
/// because the value must be the same on every node and every build; not MD5 because every
/// write hashes its old and its new object, and MD5 was 4–6 % of a loaded node's CPU. Trees
/// live in memory only, so the function can change between releases without a migration (but
/// every node of a cluster must run the same one, or their roots never agree).
pub fn object_hash(key: &[u8], encoded_set: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&(key.len() as u64).to_be_bytes());
    hasher.update(key);
    hasher.update(encoded_set);
    hasher.digest()
}

/// One partition's tree: segment, branch and root hashes, and the number of keys it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    shape: TreeShape,
    segments: Vec<u64>,
    branches: Vec<u64>,
    root: u64,
    keys: u64,
}

impl MerkleTree {
    /// The tree of an empty partition.
    pub fn new(shape: TreeShape) -> MerkleTree {
        MerkleTree {
            shape,
            segments: vec![0; shape.segments()],
            branches: vec![0; shape.branches()],
            root: 0,
            keys: 0,
        }
    }

    /// Records a write to an object of `segment`: its hash went from `old` to `new` (0 for
    /// absent, on either side).
    pub fn update(&mut self, segment: u16, old: Option<u64>, new: Option<u64>) {
        let delta = old.unwrap_or(0) ^ new.unwrap_or(0);
        let segment = usize::from(segment) % self.segments.len();
        self.segments[segment] ^= delta;
        let branch = usize::from(self.shape.branch_of(segment as u16));
        self.branches[branch] ^= delta;
        self.root ^= delta;
        match (old, new) {
            (None, Some(_)) => self.keys += 1,
            (Some(_), None) => self.keys = self.keys.saturating_sub(1),
            _ => {}
        }
    }

    /// The root hash: equal roots mean equal partitions.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Keys in the partition.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Every branch hash, in branch order.
    pub fn branch_hashes(&self) -> &[u64] {
        &self.branches
    }

    /// The segment hashes under `branch`, in segment order (empty for a branch out of range).
    pub fn segment_hashes(&self, branch: u16) -> &[u64] {
        let range = self.shape.segments_of(branch);
        self.segments
            .get(usize::from(range.start)..usize::from(range.end))
            .unwrap_or(&[])
    }
}

/// The positions at which two hash lists differ (a list of another length differs wherever
/// either has an entry: a peer of another shape is compared as wholly different).
pub fn differing(ours: &[u64], theirs: &[u64]) -> Vec<usize> {
    (0..ours.len().max(theirs.len()))
        .filter(|&i| ours.get(i) != theirs.get(i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        object_hash(&i.to_be_bytes(), b"set")
    }

    /// Goal: `object_hash` is pinned: every node of a cluster must compute the same value for
    /// the same object, whatever its build, or their roots never agree and anti-entropy
    /// exchanges every segment for ever. A change of this value is a wire change (all nodes
    /// must be upgraded together) and must be said so in the release notes. It also checks
    /// that the key's length prefix keeps key and value bytes from trading places.
    #[test]
    fn object_hash_is_a_fixed_function_of_key_and_stored_bytes() {
        assert_eq!(object_hash(b"cart", b"apple"), PINNED);
        assert_ne!(
            object_hash(b"cartapple", b""),
            object_hash(b"cart", b"apple")
        );
        assert_ne!(
            object_hash(b"car", b"tapple"),
            object_hash(b"cart", b"apple")
        );
    }
    const PINNED: u64 = 15_431_672_682_267_302_317;

    /// Goal: the tree depends only on which objects it holds, not on the order of the writes
    /// (XOR commutes), so two replicas that saw the same writes in different orders agree.
    #[test]
    fn trees_of_the_same_objects_agree_whatever_the_write_order() {
        let shape = TreeShape::for_partitions(64);
        let mut a = MerkleTree::new(shape);
        let mut b = MerkleTree::new(shape);
        for i in 0..500u64 {
            a.update((i * 7 % 4096) as u16, None, Some(hash(i)));
        }
        for i in (0..500u64).rev() {
            b.update((i * 7 % 4096) as u16, None, Some(hash(i)));
        }
        assert_eq!(a, b);
        assert_eq!(a.keys(), 500);
    }

    /// Goal: an overwrite and a removal are undone exactly: writing an object then removing
    /// it gives the empty tree back, and a changed object changes its segment, its branch and
    /// the root, and nothing else.
    #[test]
    fn an_update_touches_only_its_segment_its_branch_and_the_root() {
        let shape = TreeShape::for_partitions(64);
        let mut tree = MerkleTree::new(shape);
        let segment = 1234;
        tree.update(segment, None, Some(hash(1)));
        let before = tree.clone();
        tree.update(segment, Some(hash(1)), Some(hash(2)));
        let branch = shape.branch_of(segment);
        assert_eq!(
            differing(before.branch_hashes(), tree.branch_hashes()),
            vec![usize::from(branch)]
        );
        let first = shape.segments_of(branch).start;
        assert_eq!(
            differing(before.segment_hashes(branch), tree.segment_hashes(branch)),
            vec![usize::from(segment - first)]
        );
        assert_ne!(before.root(), tree.root());
        tree.update(segment, Some(hash(2)), None);
        assert_eq!(tree, MerkleTree::new(shape));
    }

    /// Goal: every Q gets a shape within bounds, and the whole node's leaves stay small.
    #[test]
    fn the_shape_scales_with_q_within_bounds() {
        assert_eq!(TreeShape::for_partitions(64).segments(), 4096);
        assert_eq!(TreeShape::for_partitions(1).segments(), 4096);
        assert_eq!(TreeShape::for_partitions(1 << 16).segments(), 64);
        for bits in 0..=16 {
            let shape = TreeShape::for_partitions(1 << bits);
            assert!(shape.segments() <= 4096);
            assert_eq!(
                shape.branches() * shape.segments_per_branch(),
                shape.segments()
            );
            let total = shape.segments() << bits;
            assert!(total <= 1 << 22, "Q = 2^{bits}: {total} segments");
        }
    }

    /// Goal: a branch number past the shape (from a peer) names no segments and no hashes,
    /// instead of overflowing.
    #[test]
    fn branches_past_the_shape_name_nothing() {
        let shape = TreeShape::for_partitions(64);
        assert!(shape.segments_of(u16::MAX).is_empty());
        assert!(MerkleTree::new(shape).segment_hashes(1023).is_empty());
    }

    /// Goal: the object hash separates key from value (no shifting bytes between them).
    #[test]
    fn object_hashes_separate_key_and_value() {
        assert_ne!(object_hash(b"ab", b"c"), object_hash(b"a", b"bc"));
        assert_eq!(object_hash(b"a", b"bc"), object_hash(b"a", b"bc"));
    }
}
