//! The consistent-hashing ring: which node owns a key, and which nodes replicate it.
//!
//! Dynamo §4.2 hashes every key with MD5 onto a ring of 2^128 positions and gives each node
//! positions on it. §6.2 compares three ways of choosing those positions and settles on the
//! third, which shoal uses: cut the ring into Q equal partitions fixed when the cluster is
//! created (Q a power of two), and hand whole partitions to nodes, about Q/S each. Partition
//! boundaries never move, so a join or a leave only changes *who* owns some partitions: data
//! moves a partition at a time, anti-entropy keeps one Merkle tree per partition, and the whole
//! assignment is a list of Q names that gossips cheaply.
//!
//! - **Placement.** A key's partition is the top log2(Q) bits of its MD5 ([`key_position`]).
//! - **Assignment.** Node i's fair share is s_i = Q·w_i/Σw. A fresh ring ([`Ring::new`]) gives
//!   each node ⌊s_i⌋ partitions plus one for the largest remainders, so no node owns more than
//!   ⌈s_i⌉ (SPEC §2 allows ⌈s_i⌉ + 1).
//! - **Rebalance.** [`Ring::rebalance`] moves as few partitions as it must: a member keeps its
//!   partitions while its count stays within one of its fair range, ⌊s_i⌋ − 1 ..= ⌈s_i⌉ + 1
//!   (unless another node is then below its floor); a newcomer gets at least ⌊s_i⌋. Rounding
//!   strictly to ⌊s_i⌋ or ⌈s_i⌉ afresh each time would make a join or leave now and then shift
//!   a partition between two bystanders (the apportionment paradoxes of largest remainders);
//!   the slack of one removes that, and keeps a repeated rebalance from moving anything.
//! - **Spread.** Free partitions are handed out in ring order by stride scheduling, so each
//!   node's partitions come at even intervals, and a node that owns a partition within
//!   `SPREAD_WINDOW` is passed over while it is on schedule. So the N-1 partitions after any
//!   partition usually have N distinct owners, a key's replicas land on different nodes without
//!   a long walk, and no node owns long runs whose replicas would all pile onto its successors.
//! - **Preference list** (§4.3): walk clockwise from the key's partition collecting distinct
//!   owners (preferring distinct zones) until N; everyone after that is a fallback for sloppy
//!   quorum (§4.6).
//!
//! Pure and deterministic: no I/O, clocks or randomness, only ordered collections, ties broken
//! by [`NodeId`] order, so every node computes the same ring from the same input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Largest partition count Q. A bound because Q arrives in config and gossip and sizes the
/// owner list; 2^16 partitions is ample for hundreds of nodes.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Largest member count. Dynamo's clusters had at most a few hundred nodes; the bound keeps a
/// hostile gossip message from making every node build a huge ring.
pub const MAX_NODES: usize = 1024;

/// Longest zone name, as for node ids: zones appear in logs and admin output.
pub const MAX_ZONE_BYTES: usize = 64;

/// How many partitions on either side of a free partition the assignment looks at to avoid
/// giving it to a node that already owns one of them. Two matches the default N = 3: the
/// preference list of partition p then usually ends at p + 2 with three distinct nodes, and a
/// node that fails hands its load to several successors rather than one.
const SPREAD_WINDOW: usize = 2;

/// Position of a key on the ring: MD5(key) read as a big-endian u128.
pub fn key_position(key: &[u8]) -> u128 {
    Md5::digest(key)
        .iter()
        .fold(0u128, |position, byte| (position << 8) | u128::from(*byte))
}

/// One of the Q equal slices of the ring, numbered clockwise from position 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

/// A node as the operator configured it: what the ring needs to know about a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's name.
    pub id: NodeId,
    /// Relative capacity: a node of weight 2 gets about twice the partitions of weight 1.
    pub weight: u32,
    /// Failure domain (rack, data centre). Preference lists prefer distinct zones; a node
    /// without one shares a zone with no one.
    pub zone: Option<String>,
}

impl NodeSpec {
    /// A node with the given weight and no zone.
    pub fn new(id: impl Into<NodeId>, weight: u32) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            weight,
            zone: None,
        }
    }

    /// The same node placed in `zone`.
    pub fn with_zone(self, zone: impl Into<String>) -> NodeSpec {
        NodeSpec {
            zone: Some(zone.into()),
            ..self
        }
    }
}

/// The nodes responsible for a partition, in the order a coordinator should use them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceList {
    /// The N nodes that hold the replicas, in walk order; the first is the partition's owner.
    pub primaries: Vec<NodeId>,
    /// Every other member, in walk order: where sloppy quorum sends a replica, with a hint,
    /// when a primary does not answer (Dynamo §4.6).
    pub fallbacks: Vec<NodeId>,
}

/// Why a ring could not be built from config, an admin command or gossip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Q is not a power of two, so partitions could not be the top bits of a position.
    #[error("partition count {partitions} is not a power of two")]
    PartitionCountNotPowerOfTwo {
        /// The Q that was asked for.
        partitions: u32,
    },
    /// Q is 0 or above [`MAX_PARTITIONS`].
    #[error("partition count {partitions} is outside 1..={MAX_PARTITIONS}")]
    PartitionCountOutOfRange {
        /// The Q that was asked for.
        partitions: u32,
    },
    /// The node set is empty: no one could own a partition.
    #[error("a ring needs at least one node")]
    NoNodes,
    /// More than [`MAX_NODES`] nodes.
    #[error("{nodes} nodes is more than the {MAX_NODES} a ring may have")]
    TooManyNodes {
        /// How many nodes were given.
        nodes: usize,
    },
    /// A node name fails [`NodeId::is_valid`].
    #[error("node id {node:?} is not a valid name")]
    InvalidNodeId {
        /// The offending name.
        node: NodeId,
    },
    /// A node has weight 0, which would give it no share and divide by zero in an all-zero set.
    #[error("node {node} has weight 0")]
    ZeroWeight {
        /// The node.
        node: NodeId,
    },
    /// A zone name is empty, longer than [`MAX_ZONE_BYTES`], or not printable ASCII.
    #[error("node {node} has an invalid zone name")]
    InvalidZone {
        /// The node whose zone is bad.
        node: NodeId,
    },
    /// The same node appears twice in the node set.
    #[error("node {node} appears twice")]
    DuplicateNode {
        /// The repeated node.
        node: NodeId,
    },
    /// A received ring has an owner list whose length is not Q.
    #[error("ring has {owners} owners for {partitions} partitions")]
    OwnerCountMismatch {
        /// Length of the owner list.
        owners: usize,
        /// The ring's Q.
        partitions: u32,
    },
    /// A received ring names an owner that is not among its nodes.
    #[error("partition {partition} has an owner that is not a member")]
    UnknownOwner {
        /// The partition whose owner is unknown.
        partition: u32,
    },
}

/// The assignment of the Q partitions to nodes, and the nodes themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingRecord", into = "RingRecord")]
pub struct Ring {
    /// Q, a power of two in 1..=MAX_PARTITIONS; fixed for the life of the cluster.
    partitions: u32,
    /// `owners[p]` owns partition p; always Q entries, each a key of `nodes`.
    owners: Vec<NodeId>,
    /// `owners[p]`'s position among `nodes` in id order, so that a walk can mark the nodes it
    /// met in a flat array rather than a set of names (and gossip can send numbers).
    numbers: Vec<u32>,
    /// The members by name; ordered so that every walk over them is deterministic.
    nodes: BTreeMap<NodeId, NodeSpec>,
}

impl Ring {
    /// A fresh assignment of Q partitions over the nodes (no previous owner).
    ///
    /// Every node gets its share rounded by largest remainders; partitions are then dealt in
    /// ring order, which stripes equal nodes round-robin.
    pub fn new(partitions: u32, nodes: &[NodeSpec]) -> Result<Ring, RingError> {
        check_partition_count(partitions)?;
        let members = check_nodes(nodes)?;
        let specs: Vec<&NodeSpec> = members.values().collect();
        let targets = fresh_targets(partitions, &shares(partitions, &specs));
        let slots = vec![None; partitions as usize];
        Ok(finish(partitions, members, slots, &targets))
    }

    /// The assignment for a new node set that moves as few partitions as it must from self:
    /// partitions of removed nodes, and partitions of nodes now above their share, go to nodes
    /// below theirs.
    ///
    /// Rebalancing with the same node set moves nothing; a join moves partitions only to the
    /// new node; a leave moves only the leaver's partitions (from a ring made by [`Ring::new`]
    /// these are guaranteed; after a long history of changes they hold all but in rare rounding
    /// corner cases). Q never changes.
    pub fn rebalance(&self, nodes: &[NodeSpec]) -> Result<Ring, RingError> {
        let members = check_nodes(nodes)?;
        // Nodes are numbered in id order; a slot holds its owner's number, None once free.
        let number: BTreeMap<&NodeId, usize> = members.keys().zip(0..).collect();
        let mut slots: Vec<Option<usize>> = self
            .owners
            .iter()
            .map(|owner| number.get(owner).copied())
            .collect();
        let mut held = vec![0u32; members.len()];
        for i in slots.iter().flatten() {
            held[*i] += 1;
        }
        let specs: Vec<&NodeSpec> = members.values().collect();
        // A node in the old ring is a member even if it owned nothing; only newcomers must be
        // brought up to their full floor.
        let standings: Vec<Standing> = shares(self.partitions, &specs)
            .into_iter()
            .zip(&specs)
            .zip(held)
            .map(|((share, spec), held)| Standing {
                share,
                held: self.nodes.contains_key(&spec.id).then_some(held),
            })
            .collect();
        let targets = rebalance_targets(self.partitions, &standings);
        release_excess(&mut slots, &targets);
        Ok(finish(self.partitions, members, slots, &targets))
    }

    /// Q, the number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// The partition a key falls in.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        self.partition_of_position(key_position(key))
    }

    /// The partition containing a ring position: its top log2(Q) bits.
    pub fn partition_of_position(&self, position: u128) -> PartitionId {
        // Q is a power of two, so trailing zeros is log2(Q); Q = 1 has no bits to take, and
        // shifting a u128 by 128 would overflow.
        let bits = self.partitions.trailing_zeros();
        if bits == 0 {
            return PartitionId(0);
        }
        // The shifted value is below 2^bits <= Q, so the cast loses nothing.
        PartitionId((position >> (128 - bits)) as u32)
    }

    /// The owner of a partition. `partition` must be below Q; a larger one (a programmer
    /// error) is taken modulo Q in release builds.
    pub fn owner(&self, partition: PartitionId) -> &NodeId {
        &self.owners[self.slot(partition)]
    }

    /// Every partition's owner, in partition order.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// The members, in [`NodeId`] order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.values()
    }

    /// A member's configuration, if it is a member.
    pub fn node(&self, id: &NodeId) -> Option<&NodeSpec> {
        self.nodes.get(id)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id)
    }

    /// The partitions `id` owns, in partition order (empty for a non-member).
    pub fn partitions_of(&self, id: &NodeId) -> Vec<PartitionId> {
        (0..self.partitions)
            .map(PartitionId)
            .zip(&self.owners)
            .filter(|(_, owner)| *owner == id)
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Fair share bound of SPEC §2: ceil(Q*w/Σw) + 1. Zero for a non-member.
    pub fn max_partitions_for(&self, id: &NodeId) -> u32 {
        let Some(spec) = self.nodes.get(id) else {
            return 0;
        };
        let total_weight = self.nodes.values().map(|node| u64::from(node.weight)).sum();
        share_of(self.partitions, spec.weight, total_weight).ceil + 1
    }

    /// Walk partitions clockwise from `partition` (itself first), collecting owners, skipping
    /// nodes already taken, and where zones are configured preferring distinct zones, until n
    /// distinct nodes (fewer only if the cluster has fewer); keep walking to list every other
    /// node as a fallback, in walk order.
    ///
    /// With zones, a first pass takes only nodes whose zone is new and a second fills up with
    /// any remaining nodes; either way the primaries are listed in walk order, so the owner of
    /// `partition` always comes first. Members that own no partition (tiny weights) come after
    /// all owners, in [`NodeId`] order.
    pub fn preference_list(&self, partition: PartitionId, n: usize) -> PreferenceList {
        let walk = self.walk_from(partition);
        let chosen = self.choose_primaries(&walk, n);
        let mut list = PreferenceList {
            primaries: Vec::new(),
            fallbacks: Vec::new(),
        };
        for (node, primary) in walk.into_iter().zip(chosen) {
            if primary {
                list.primaries.push(node.clone());
            } else {
                list.fallbacks.push(node.clone());
            }
        }
        list
    }

    /// The preference list of the partition `key` falls in.
    pub fn preference_list_for_key(&self, key: &[u8], n: usize) -> PreferenceList {
        self.preference_list(self.partition_of(key), n)
    }

    /// The partitions whose owner differs between two rings of the same Q (for ownership
    /// transfer and tests). Rings of different Q share no layout, so then every partition of
    /// `self` is reported.
    pub fn moved_partitions(&self, other: &Ring) -> Vec<PartitionId> {
        let all = (0..self.partitions).map(PartitionId);
        if self.partitions != other.partitions {
            return all.collect();
        }
        all.zip(self.owners.iter().zip(&other.owners))
            .filter(|(_, (mine, theirs))| mine != theirs)
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Index of a partition in `owners`; out-of-range ids wrap (Q is a power of two).
    fn slot(&self, partition: PartitionId) -> usize {
        debug_assert!(
            partition.0 < self.partitions,
            "partition {partition:?} beyond Q"
        );
        (partition.0 & (self.partitions - 1)) as usize
    }

    /// Every member once, in the order a clockwise walk from `partition` first meets it.
    fn walk_from(&self, partition: PartitionId) -> Vec<&NodeId> {
        let ids: Vec<&NodeId> = self.nodes.keys().collect();
        let (start, partitions) = (self.slot(partition), self.numbers.len());
        let mut met = vec![false; ids.len()];
        let mut walk = Vec::with_capacity(ids.len());
        for step in 0..partitions {
            if walk.len() == ids.len() {
                break; // everyone met: the rest of the walk adds nothing
            }
            let number = self.numbers[(start + step) % partitions] as usize;
            if !met[number] {
                met[number] = true;
                walk.push(number);
            }
        }
        walk.extend((0..ids.len()).filter(|&number| !met[number]));
        walk.into_iter().map(|number| ids[number]).collect()
    }

    /// Marks which entries of `walk` are primaries: distinct zones first, then anyone.
    fn choose_primaries(&self, walk: &[&NodeId], n: usize) -> Vec<bool> {
        let mut chosen = vec![false; walk.len()];
        let mut count = 0;
        if self.nodes.values().any(|spec| spec.zone.is_some()) {
            let mut zones = BTreeSet::new();
            for (k, id) in walk.iter().enumerate() {
                if count == n {
                    break;
                }
                let zone = self.nodes.get(*id).and_then(|spec| spec.zone.as_deref());
                // A node without a zone shares a failure domain with no one we know of.
                if zone.is_none_or(|zone| zones.insert(zone)) {
                    chosen[k] = true;
                    count += 1;
                }
            }
        }
        for mark in chosen.iter_mut() {
            if count == n {
                break;
            }
            if !*mark {
                *mark = true;
                count += 1;
            }
        }
        chosen
    }
}

/// The ring as it travels in gossip: nodes in id order, owners as indices into them (a u32
/// each instead of Q repeated names).
#[derive(Serialize, Deserialize)]
struct RingRecord {
    /// Q.
    partitions: u32,
    /// The members, sorted by id.
    nodes: Vec<NodeSpec>,
    /// For each partition, the position of its owner in `nodes`.
    owners: Vec<u32>,
}

impl From<Ring> for RingRecord {
    fn from(ring: Ring) -> RingRecord {
        RingRecord {
            partitions: ring.partitions,
            nodes: ring.nodes.into_values().collect(),
            owners: ring.numbers,
        }
    }
}

impl TryFrom<RingRecord> for Ring {
    type Error = RingError;

    /// Checks a received ring as thoroughly as a configured one: it came from the network.
    fn try_from(record: RingRecord) -> Result<Ring, RingError> {
        check_partition_count(record.partitions)?;
        let members = check_nodes(&record.nodes)?;
        if record.owners.len() != record.partitions as usize {
            return Err(RingError::OwnerCountMismatch {
                owners: record.owners.len(),
                partitions: record.partitions,
            });
        }
        let ids: Vec<&NodeId> = members.keys().collect();
        let mut owners = Vec::with_capacity(record.owners.len());
        for (partition, &number) in (0..).zip(&record.owners) {
            let owner = ids.get(number as usize);
            owners.push((*owner.ok_or(RingError::UnknownOwner { partition })?).clone());
        }
        Ok(Ring {
            partitions: record.partitions,
            owners,
            numbers: record.owners,
            nodes: members,
        })
    }
}

/// Q must be a power of two within 1..=MAX_PARTITIONS.
fn check_partition_count(partitions: u32) -> Result<(), RingError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(RingError::PartitionCountOutOfRange { partitions });
    }
    if !partitions.is_power_of_two() {
        return Err(RingError::PartitionCountNotPowerOfTwo { partitions });
    }
    Ok(())
}

/// Validates a node set and orders it by id.
fn check_nodes(nodes: &[NodeSpec]) -> Result<BTreeMap<NodeId, NodeSpec>, RingError> {
    if nodes.is_empty() {
        return Err(RingError::NoNodes);
    }
    if nodes.len() > MAX_NODES {
        return Err(RingError::TooManyNodes { nodes: nodes.len() });
    }
    let mut members = BTreeMap::new();
    for spec in nodes {
        let node = spec.id.clone();
        if !spec.id.is_valid() {
            return Err(RingError::InvalidNodeId { node });
        }
        if spec.weight == 0 {
            return Err(RingError::ZeroWeight { node });
        }
        if spec
            .zone
            .as_deref()
            .is_some_and(|zone| !is_valid_zone(zone))
        {
            return Err(RingError::InvalidZone { node });
        }
        if members.insert(node.clone(), spec.clone()).is_some() {
            return Err(RingError::DuplicateNode { node });
        }
    }
    Ok(members)
}

/// Zone names follow the node-id rules: non-empty, bounded, printable ASCII without spaces.
fn is_valid_zone(zone: &str) -> bool {
    !zone.is_empty() && zone.len() <= MAX_ZONE_BYTES && zone.bytes().all(|b| b.is_ascii_graphic())
}

/// Deals the free slots (see [`fill_free`]) and names each slot's owner. Slots and targets
/// number the members in id order.
fn finish(
    partitions: u32,
    members: BTreeMap<NodeId, NodeSpec>,
    slots: Vec<Option<usize>>,
    targets: &[u32],
) -> Ring {
    let ids: Vec<&NodeId> = members.keys().collect();
    let dealt = fill_free(slots, targets);
    let owners = dealt.iter().map(|&number| ids[number].clone()).collect();
    // Members number at most MAX_NODES, so every number fits a u32.
    let numbers = dealt.into_iter().map(|number| number as u32).collect();
    Ring {
        partitions,
        owners,
        numbers,
        nodes: members,
    }
}

/// A node's weighted share of Q, s = Q·w/Σw, as the integers the assignment works with.
#[derive(Clone, Copy, Debug)]
struct Share {
    /// ⌊s⌋.
    floor: u32,
    /// ⌈s⌉.
    ceil: u32,
    /// Q·w mod Σw: the fraction of s scaled by Σw, the same scale for every node, so
    /// remainders compare directly without floating point.
    remainder: u64,
}

/// The share of every node in `specs`.
fn shares(partitions: u32, specs: &[&NodeSpec]) -> Vec<Share> {
    let total_weight = specs.iter().map(|spec| u64::from(spec.weight)).sum();
    specs
        .iter()
        .map(|spec| share_of(partitions, spec.weight, total_weight))
        .collect()
}

/// One node's share. u64 cannot overflow: Q <= 2^16 and w < 2^32.
fn share_of(partitions: u32, weight: u32, total_weight: u64) -> Share {
    let scaled = u64::from(partitions) * u64::from(weight);
    // Weights are at least 1, so the total is too; max(1) only guards a misuse.
    let total_weight = total_weight.max(1);
    // w <= Σw, so the floor is at most Q and fits.
    let floor = u32::try_from(scaled / total_weight).unwrap_or(partitions);
    let remainder = scaled % total_weight;
    Share {
        floor,
        ceil: floor + u32::from(remainder > 0),
        remainder,
    }
}

/// Largest-remainder rounding of the shares: ⌊s⌋ each, plus one for the nodes with the
/// largest remainders (ties by id) until the counts sum to Q.
fn fresh_targets(partitions: u32, shares: &[Share]) -> Vec<u32> {
    let mut targets: Vec<u32> = shares.iter().map(|share| share.floor).collect();
    let assigned: u32 = targets.iter().sum();
    let extra = partitions.saturating_sub(assigned) as usize;
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by_key(|&i| (Reverse(shares[i].remainder), i));
    for &i in order.iter().take(extra) {
        targets[i] += 1;
    }
    targets
}

/// A node's share and how many partitions it holds now (None for a newcomer).
#[derive(Clone, Copy, Debug)]
struct Standing {
    /// The node's fair share under the new weights.
    share: Share,
    /// Partitions it owns in the old ring; None if it was not a member, which also marks it
    /// as a newcomer that must reach its full floor.
    held: Option<u32>,
}

impl Standing {
    fn held(&self) -> u32 {
        self.held.unwrap_or(0)
    }

    /// Fewest partitions the node may end with: a member may sit one below its floor rather
    /// than take a partition from a bystander; a newcomer gets its full floor.
    fn low(&self) -> u32 {
        match self.held {
            Some(_) => self.share.floor.saturating_sub(1),
            None => self.share.floor,
        }
    }

    /// Most partitions the node may end with: the SPEC §2 bound.
    fn high(&self) -> u32 {
        self.share.ceil + 1
    }

    /// Which nodes gain first when the clamped counts sum below Q (lower tier first), or None
    /// at the bound. Keeping a partition in place beats moving one; among moves: nodes below
    /// their floor (those receiving anyway first), then nodes receiving anyway, newcomers,
    /// anyone below ceil, anyone below the bound.
    fn grow_tier(&self, target: u32) -> Option<usize> {
        let (held, floor, ceil) = (self.held(), self.share.floor, self.share.ceil);
        let tiers = [
            target < held,
            target < floor && target > held,
            target < floor,
            target > held && target < ceil,
            self.held.is_none(),
            target < ceil,
        ];
        (target < self.high()).then(|| tiers.iter().take_while(|&&tier| !tier).count())
    }

    /// Which nodes give up first when the clamped counts sum above Q, or None at the low end:
    /// those only raised by the clamp (no partition moves), then those above ceil, then above
    /// floor, then anyone.
    fn shrink_tier(&self, target: u32) -> Option<usize> {
        let share = self.share;
        let tiers = [
            target > self.held(),
            target > share.ceil,
            target > share.floor,
        ];
        (target > self.low()).then(|| tiers.iter().take_while(|&&tier| !tier).count())
    }
}

/// Target counts for a rebalance: each node's current count clamped into its band
/// [`Standing::low`]..=[`Standing::high`], then nudged one partition at a time, by tier and
/// remainder, until the counts sum to Q. The band holds Q (Σlow <= Σ⌊s⌋ <= Q <= Σ⌈s⌉), so the
/// nudging always finishes.
fn rebalance_targets(partitions: u32, standings: &[Standing]) -> Vec<u32> {
    let mut targets: Vec<u32> = standings
        .iter()
        .map(|standing| standing.held().clamp(standing.low(), standing.high()))
        .collect();
    let sum: u64 = targets.iter().map(|&target| u64::from(target)).sum();
    let wanted = u64::from(partitions);
    if sum < wanted {
        grow(&mut targets, standings, wanted - sum);
    } else if sum > wanted {
        shrink(&mut targets, standings, sum - wanted);
    }
    even_out(&mut targets, standings);
    debug_assert_eq!(targets.iter().map(|&t| u64::from(t)).sum::<u64>(), wanted);
    targets
}

/// Where the band's slack left one node above its ceil and another below its floor (after a
/// weight change, say), one partition moves between them: the slack exists to avoid moving
/// partitions between bystanders, not to keep a node off its share when another has too many.
/// Band ends are one off the fair range, so each swap fixes one node on either side.
fn even_out(targets: &mut [u32], standings: &[Standing]) {
    let mut over: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i] > standings[i].share.ceil)
        .collect();
    let mut under: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i] < standings[i].share.floor)
        .collect();
    // The mirror of the grow and shrink orders: smallest remainder gives, largest receives.
    over.sort_by_key(|&i| (standings[i].share.remainder, Reverse(i)));
    under.sort_by_key(|&i| (Reverse(standings[i].share.remainder), i));
    for (giver, taker) in over.into_iter().zip(under) {
        targets[giver] -= 1;
        targets[taker] += 1;
    }
}

/// Adds `missing` partitions to targets, best tier first, then largest remainder, then id.
fn grow(targets: &mut [u32], standings: &[Standing], missing: u64) {
    let key = |i: usize, target: u32| {
        let remainder = standings[i].share.remainder;
        standings[i]
            .grow_tier(target)
            .map(|tier| (tier, Reverse(remainder), i))
    };
    nudge(targets, missing, key, |target| target + 1);
}

/// Removes `excess` partitions from targets, best tier first, then smallest remainder, then
/// the later id (the mirror of [`grow`]).
fn shrink(targets: &mut [u32], standings: &[Standing], excess: u64) {
    let key = |i: usize, target: u32| {
        let remainder = standings[i].share.remainder;
        standings[i]
            .shrink_tier(target)
            .map(|tier| (tier, remainder, Reverse(i)))
    };
    nudge(targets, excess, key, |target| target - 1);
}

/// Steps the target that sorts first by `key` (None: may not step) `times` times.
fn nudge<K: Ord>(
    targets: &mut [u32],
    times: u64,
    key: impl Fn(usize, u32) -> Option<K>,
    step: impl Fn(u32) -> u32,
) {
    let mut queue: BTreeSet<(K, usize)> = (0..targets.len())
        .filter_map(|i| key(i, targets[i]).map(|k| (k, i)))
        .collect();
    for _ in 0..times {
        let Some((_, i)) = queue.pop_first() else {
            break; // unreachable: the bands hold Q
        };
        targets[i] = step(targets[i]);
        queue.extend(key(i, targets[i]).map(|k| (k, i)));
    }
}

/// Frees partitions of nodes holding more than their target. A first pass frees only
/// partitions with no free partition within [`SPREAD_WINDOW`], so the newly free partitions
/// are spread out and can go to one newcomer without giving it neighbouring partitions.
fn release_excess(slots: &mut [Option<usize>], targets: &[u32]) {
    let mut excess: Vec<u32> = targets.iter().map(|_| 0).collect();
    for i in slots.iter().flatten() {
        excess[*i] += 1;
    }
    for (surplus, target) in excess.iter_mut().zip(targets) {
        *surplus = surplus.saturating_sub(*target);
    }
    for spaced in [true, false] {
        for p in 0..slots.len() {
            let Some(i) = slots[p] else { continue };
            if excess[i] > 0 && !(spaced && window(slots.len(), p).any(|n| slots[n].is_none())) {
                slots[p] = None;
                excess[i] -= 1;
            }
        }
    }
}

/// Gives every free slot an owner, in partition order, by stride scheduling: a node short of
/// d partitions should get its j-th one (from 0) at fraction (j + ½)/d of the way through the
/// free slots, and the earliest due node gets the next slot. That interleaves nodes evenly by
/// weight instead of leaving a heavy node a run of partitions at the end. Among the due order,
/// a node owning a partition within [`SPREAD_WINDOW`] is passed over, unless it is already
/// more than a slot behind schedule. Ties go to the lower id. Targets sum to Q, so the
/// deficits add up to exactly the free slots.
fn fill_free(mut slots: Vec<Option<usize>>, targets: &[u32]) -> Vec<usize> {
    let mut deficit: Vec<u64> = targets.iter().map(|&t| u64::from(t)).collect();
    for i in slots.iter().flatten() {
        deficit[*i] = deficit[*i].saturating_sub(1);
    }
    let free = slots.iter().filter(|slot| slot.is_none()).count() as u64;
    let mut queue: BTreeSet<(u64, usize)> = (0..deficit.len())
        .filter(|&i| deficit[i] > 0)
        .map(|i| (due(0, deficit[i]), i))
        .collect();
    let mut given = vec![0u64; deficit.len()];
    let mut filled = 0u64;
    for p in 0..slots.len() {
        if slots[p].is_some() {
            continue;
        }
        let near: Vec<usize> = window(slots.len(), p).filter_map(|n| slots[n]).collect();
        let first = queue.first().copied();
        // A node is late if its next partition was due more than one slot ago; slot k's middle
        // is at (2k + 1) / (2·free) of the way.
        let late = first.is_some_and(|(_, i)| {
            filled > 0 && (2 * given[i] + 1) * free < (2 * filled - 1) * deficit[i]
        });
        // Without lateness at most 2·SPREAD_WINDOW entries are skipped, so the scan is short.
        let pick = match first {
            Some(first) if !late => queue
                .iter()
                .copied()
                .find(|(_, i)| !near.contains(i))
                .or(Some(first)),
            other => other,
        };
        let Some((key, i)) = pick else {
            break; // unreachable: deficits sum to the free slots
        };
        queue.remove(&(key, i));
        given[i] += 1;
        if given[i] < deficit[i] {
            queue.insert((due(given[i], deficit[i]), i));
        }
        slots[p] = Some(i);
        filled += 1;
    }
    debug_assert!(
        slots.iter().all(Option::is_some),
        "a partition was left without owner"
    );
    slots.into_iter().map(|slot| slot.unwrap_or(0)).collect()
}

/// When a node's next partition is due, (2·given + 1) / (2·deficit) of the way through the
/// free slots, as a fixed-point key. Both parts are at most 2^17 + 1, so two different
/// fractions differ by at least 2^-34: scaled by 2^40 they stay apart after rounding down,
/// and equal fractions get equal keys, so the key orders exactly like the fraction.
fn due(given: u64, deficit: u64) -> u64 {
    ((2 * given + 1) << 40) / (2 * deficit.max(1))
}

/// The partitions within [`SPREAD_WINDOW`] of `p` on either side, wrapping round the ring,
/// excluding `p` itself (which a small ring would otherwise reach).
fn window(partitions: usize, p: usize) -> impl Iterator<Item = usize> {
    (1..=SPREAD_WINDOW)
        .flat_map(move |d| {
            [
                (p + d) % partitions,
                (p + partitions - d % partitions) % partitions,
            ]
        })
        .filter(move |&n| n != p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The table of exact assignments and errors in `testdata/ring/cases.txt`.
    const CASES: &str = include_str!("../testdata/ring/cases.txt");

    fn node(name: &str, weight: u32) -> NodeSpec {
        NodeSpec::new(name, weight)
    }

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|&name| NodeId::from(name)).collect()
    }

    /// Nodes n00, n01, … with the given weights.
    fn numbered(weights: &[u32]) -> Vec<NodeSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| node(&format!("n{i:02}"), w))
            .collect()
    }

    fn counts(ring: &Ring) -> BTreeMap<NodeId, u32> {
        let mut counts: BTreeMap<NodeId, u32> = ring.nodes().map(|n| (n.id.clone(), 0)).collect();
        for owner in ring.owners() {
            *counts.entry(owner.clone()).or_default() += 1;
        }
        counts
    }

    /// ⌊Q·w/Σw⌋ and ⌈Q·w/Σw⌉ for a member, computed independently of the module.
    fn fair_range(ring: &Ring, id: &NodeId) -> (u32, u32) {
        let total: u64 = ring.nodes().map(|n| u64::from(n.weight)).sum();
        let scaled =
            u64::from(ring.partition_count()) * u64::from(ring.node(id).map_or(0, |n| n.weight));
        let floor = u32::try_from(scaled / total).unwrap_or(u32::MAX);
        (floor, floor + u32::from(scaled % total != 0))
    }

    /// Q from the sizes the ring properties are checked at.
    fn partition_count() -> impl Strategy<Value = u32> {
        prop::sample::select(vec![8u32, 16, 64, 256])
    }

    fn weights(min_nodes: usize) -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(1u32..=8, min_nodes..=12)
    }

    /// Parses `name:weight[@zone]`.
    fn parse_node(text: &str) -> NodeSpec {
        let (name_weight, zone) = match text.split_once('@') {
            Some((left, zone)) => (left, Some(zone.to_string())),
            None => (text, None),
        };
        let (name, weight) = name_weight.split_once(':').unwrap_or((name_weight, "1"));
        NodeSpec {
            id: NodeId::from(name),
            weight: weight.parse().unwrap_or(0),
            zone,
        }
    }

    /// Builds the ring a table line describes: Ring::new on the first node set, then a
    /// rebalance for each later one.
    fn run_case(left: &str) -> Result<Ring, RingError> {
        let mut sets = left.split(';');
        let mut first = sets.next().unwrap_or_default().split_whitespace();
        let partitions: u32 = first.next().and_then(|q| q.parse().ok()).unwrap_or(0);
        let mut ring = Ring::new(partitions, &first.map(parse_node).collect::<Vec<_>>())?;
        for set in sets {
            ring = ring.rebalance(&set.split_whitespace().map(parse_node).collect::<Vec<_>>())?;
        }
        Ok(ring)
    }

    /// Goal: the exact assignments and errors of the table, so a change to the algorithm (which
    /// every node must compute identically) is a visible diff. Method: replay each line.
    /// Reference: Dynamo §6.2 strategy 3.
    #[test]
    fn assignments_and_errors_match_the_table() {
        let mut wrong = Vec::new();
        for line in CASES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (left, expected) = line.split_once("=>").unwrap_or((line, ""));
            let got = match run_case(left) {
                Ok(ring) => ring
                    .owners()
                    .iter()
                    .map(NodeId::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(error) => format!("! {error:?}"),
            };
            if got != expected.trim() {
                wrong.push(format!("{} => {got}", left.trim()));
            }
        }
        assert!(
            wrong.is_empty(),
            "cases that differ, with what the code gives:\n{}",
            wrong.join("\n")
        );
    }

    /// Goal: key positions are MD5 read big-endian. Method: RFC 1321 test vectors.
    /// Reference: Dynamo §4.2.
    #[test]
    fn key_position_is_md5_read_big_endian() {
        assert_eq!(key_position(b""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(key_position(b"abc"), 0x900150983cd24fb0d6963f7d28e17f72);
    }

    /// Goal: a key's partition is the top log2(Q) bits of MD5(key). Method: MD5("") starts
    /// d41d = 1101 0100 0001 1101. Reference: Dynamo §6.2 strategy 3.
    #[test]
    fn partition_of_takes_the_top_bits_of_md5() {
        let nodes = [node("a", 1)];
        for (partitions, expected) in [(1, 0), (2, 1), (64, 0b110101), (256, 0xd4), (65536, 0xd41d)]
        {
            let ring = Ring::new(partitions, &nodes).unwrap();
            assert_eq!(
                ring.partition_of(b""),
                PartitionId(expected),
                "Q = {partitions}"
            );
        }
    }

    /// Goal: the partitions are equal, contiguous ranges covering the whole ring. Method: the
    /// first and last position of every range, and the ring's two ends.
    /// Reference: Dynamo §6.2 strategy 3.
    #[test]
    fn partitions_cut_the_ring_into_equal_ranges() {
        for partitions in [1u32, 2, 8, 64, 1024] {
            let ring = Ring::new(partitions, &[node("a", 1)]).unwrap();
            // Each range is last + 1 positions wide (computed so that Q = 1 cannot overflow).
            let last = u128::MAX / u128::from(partitions);
            for p in 0..partitions {
                let start = u128::from(p) * last + u128::from(p);
                assert_eq!(ring.partition_of_position(start), PartitionId(p));
                assert_eq!(ring.partition_of_position(start + last), PartitionId(p));
            }
            assert_eq!(ring.partition_of_position(0), PartitionId(0));
            assert_eq!(
                ring.partition_of_position(u128::MAX),
                PartitionId(partitions - 1)
            );
        }
    }

    /// Goal: equal nodes are striped, so N consecutive partitions have N distinct owners and
    /// the preference list is just the next N owners. Method: 4 nodes, Q = 64, N = 3.
    /// Reference: Dynamo §4.3.
    #[test]
    fn fresh_ring_gives_neighbouring_partitions_distinct_owners() {
        let ring = Ring::new(64, &numbered(&[1, 1, 1, 1])).unwrap();
        let owners = ring.owners();
        for p in 0..64usize {
            let next: Vec<NodeId> = (0..3).map(|d| owners[(p + d) % 64].clone()).collect();
            let list = ring.preference_list(PartitionId(p as u32), 3);
            assert_eq!(list.primaries, next);
            assert_eq!(list.primaries.len() + list.fallbacks.len(), 4);
        }
    }

    /// Goal: the walk skips nodes already taken and lists the rest as fallbacks in walk order.
    /// Method: a ring where one heavy node owns runs of partitions. Reference: Dynamo §4.3.
    #[test]
    fn preference_list_skips_nodes_already_taken() {
        let ring = Ring::new(8, &[node("a", 5), node("b", 2), node("c", 1)]).unwrap();
        let owners: Vec<&str> = ring.owners().iter().map(NodeId::as_str).collect();
        assert_eq!(owners, ["a", "b", "c", "a", "b", "a", "a", "a"]);
        let list = ring.preference_list(PartitionId(5), 2);
        assert_eq!(list.primaries, ids(&["a", "b"]));
        assert_eq!(list.fallbacks, ids(&["c"]));
        assert_eq!(
            ring.preference_list(PartitionId(2), 5).primaries,
            ids(&["c", "a", "b"])
        );
        let none = ring.preference_list(PartitionId(0), 0);
        assert!(none.primaries.is_empty());
        assert_eq!(none.fallbacks, ids(&["a", "b", "c"]));
    }

    /// Goal: with zones, primaries come from distinct zones first, listed in walk order, and
    /// are topped up with any node when zones run out. Method: two nodes in each of three
    /// zones. Reference: Dynamo §4.2 (replicas across data centres).
    #[test]
    fn preference_list_prefers_distinct_zones_then_fills_with_any_node() {
        let zones = ["z1", "z1", "z2", "z2", "z3", "z3"];
        let nodes: Vec<NodeSpec> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(zones)
            .map(|(name, zone)| node(name, 1).with_zone(zone))
            .collect();
        let ring = Ring::new(8, &nodes).unwrap();
        let owners: Vec<&str> = ring.owners().iter().map(NodeId::as_str).collect();
        assert_eq!(owners, ["a", "b", "c", "d", "e", "f", "b", "a"]);
        let list = ring.preference_list(PartitionId(0), 3);
        assert_eq!(list.primaries, ids(&["a", "c", "e"]));
        assert_eq!(list.fallbacks, ids(&["b", "d", "f"]));
        let list = ring.preference_list(PartitionId(1), 4);
        // The walk meets b c d e f a: b c e are the first of their zones, then d tops up.
        assert_eq!(list.primaries, ids(&["b", "c", "d", "e"]));
        assert_eq!(list.fallbacks, ids(&["f", "a"]));
        let for_key = ring.preference_list_for_key(b"k", 3);
        assert_eq!(for_key, ring.preference_list(ring.partition_of(b"k"), 3));
    }

    /// Goal: a join takes spread-out partitions, so the newcomer does not own neighbours.
    /// Method: 4 equal nodes, Q = 64, one joins. Reference: Dynamo §6.2 strategy 3.
    #[test]
    fn a_joining_node_takes_partitions_spread_round_the_ring() {
        let before = Ring::new(64, &numbered(&[1, 1, 1, 1])).unwrap();
        let after = before.rebalance(&numbered(&[1, 1, 1, 1, 1])).unwrap();
        let taken = after.partitions_of(&NodeId::from("n04"));
        assert_eq!(taken.len(), 12);
        for pair in taken.windows(2) {
            assert!(pair[1].0 - pair[0].0 > SPREAD_WINDOW as u32, "{taken:?}");
        }
    }

    /// Goal: rings of different Q are never compared slot by slot. Method: Q = 8 against 16.
    #[test]
    fn rings_of_different_q_report_every_partition_moved() {
        let small = Ring::new(8, &[node("a", 1)]).unwrap();
        let large = Ring::new(16, &[node("a", 1)]).unwrap();
        assert_eq!(small.moved_partitions(&large).len(), 8);
        assert!(small.moved_partitions(&small).is_empty());
    }

    /// Goal: bad counts are typed errors, never a panic. Method: the bounds the table cannot
    /// express. Reference: SPEC §11 (every count from the network is bounded).
    #[test]
    fn out_of_bound_node_sets_are_errors() {
        let many = numbered(&vec![1; MAX_NODES + 1]);
        assert_eq!(
            Ring::new(8, &many),
            Err(RingError::TooManyNodes {
                nodes: MAX_NODES + 1
            })
        );
        let ring = Ring::new(8, &[node("a", 1)]).unwrap();
        assert_eq!(ring.rebalance(&[]), Err(RingError::NoNodes));
        let empty = NodeSpec::new(NodeId::new(""), 1);
        assert_eq!(
            Ring::new(8, &[empty]),
            Err(RingError::InvalidNodeId {
                node: NodeId::new("")
            })
        );
        let long_zone = node("a", 1).with_zone("z".repeat(MAX_ZONE_BYTES + 1));
        assert_eq!(
            Ring::new(8, &[long_zone]),
            Err(RingError::InvalidZone { node: "a".into() })
        );
    }

    /// Goal: a ring survives gossip unchanged. Method: MessagePack round trip.
    #[test]
    fn ring_survives_a_messagepack_round_trip() {
        let ring = Ring::new(16, &[node("a", 2), node("b", 1).with_zone("z1")]).unwrap();
        let bytes = rmp_serde::to_vec(&ring).unwrap();
        assert_eq!(rmp_serde::from_slice::<Ring>(&bytes).unwrap(), ring);
    }

    /// Goal: a received ring is checked like a configured one. Method: records with a bad Q,
    /// a short owner list and an owner index past the node list.
    #[test]
    fn a_received_ring_with_bad_fields_is_rejected() {
        let decode = |partitions: u32, owners: Vec<u32>| {
            let record = RingRecord {
                partitions,
                nodes: vec![node("a", 1), node("b", 1)],
                owners,
            };
            let bytes = rmp_serde::to_vec(&record).unwrap();
            rmp_serde::from_slice::<Ring>(&bytes).map_err(|error| error.to_string())
        };
        assert!(decode(4, vec![0, 1, 0, 1]).is_ok());
        let bad_q = decode(3, vec![0, 1, 0]).unwrap_err();
        assert!(bad_q.contains("not a power of two"), "{bad_q}");
        let short = decode(4, vec![0, 1]).unwrap_err();
        assert!(short.contains("2 owners for 4 partitions"), "{short}");
        let unknown = decode(4, vec![0, 1, 2, 0]).unwrap_err();
        assert!(unknown.contains("partition 2"), "{unknown}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Goal: every partition has exactly one owner, and it is a member.
        /// Method: random weights and Q. Reference: Dynamo §6.2 strategy 3.
        #[test]
        fn every_partition_has_exactly_one_member_owner(q in partition_count(), w in weights(1)) {
            let ring = Ring::new(q, &numbered(&w)).unwrap();
            prop_assert_eq!(ring.owners().len(), q as usize);
            prop_assert!(ring.owners().iter().all(|owner| ring.contains(owner)));
            let owned: usize = ring.nodes().map(|n| ring.partitions_of(&n.id).len()).sum();
            prop_assert_eq!(owned, q as usize);
        }

        /// Goal: a fresh ring gives each node its share rounded down or up, within the SPEC
        /// bound ⌈Q·w/Σw⌉ + 1. Method: random weights 1..=8 on 1..=12 nodes.
        /// Reference: Dynamo §6.2 strategy 3.
        #[test]
        fn a_fresh_ring_gives_every_node_its_rounded_share(q in partition_count(), w in weights(1)) {
            let ring = Ring::new(q, &numbered(&w)).unwrap();
            for (id, count) in counts(&ring) {
                let (floor, ceil) = fair_range(&ring, &id);
                prop_assert!(floor <= count && count <= ceil, "{id}: {count} vs {floor}..={ceil}");
                prop_assert!(count <= ring.max_partitions_for(&id));
            }
        }

        /// Goal: a preference list holds min(N, S) distinct nodes, the owner first, and every
        /// other member as a fallback. Method: every partition of random rings, N in 0..=6.
        /// Reference: Dynamo §4.3, §4.6.
        #[test]
        fn preference_lists_hold_n_distinct_nodes_then_all_others(
            q in partition_count(), w in weights(1), n in 0usize..=6,
        ) {
            let ring = Ring::new(q, &numbered(&w)).unwrap();
            for p in (0..q).map(PartitionId) {
                let list = ring.preference_list(p, n);
                prop_assert_eq!(list.primaries.len(), n.min(w.len()));
                if n > 0 {
                    prop_assert_eq!(&list.primaries[0], ring.owner(p));
                }
                let all: BTreeSet<&NodeId> = list.primaries.iter().chain(&list.fallbacks).collect();
                prop_assert_eq!(all.len(), list.primaries.len() + list.fallbacks.len());
                prop_assert_eq!(all.len(), w.len());
            }
        }

        /// Goal: primaries span min(N, zones) zones. Method: random rings with nodes in up
        /// to four zones. Reference: Dynamo §4.2.
        #[test]
        fn preference_lists_span_as_many_zones_as_they_can(
            q in partition_count(), w in weights(1), zones in prop::collection::vec(0u8..4, 12),
            n in 1usize..=4,
        ) {
            let nodes: Vec<NodeSpec> =
                numbered(&w).into_iter().zip(&zones).map(|(s, z)| s.with_zone(format!("z{z}"))).collect();
            let zone_count = nodes.iter().map(|s| &s.zone).collect::<BTreeSet<_>>().len();
            let ring = Ring::new(q, &nodes).unwrap();
            for p in (0..q).map(PartitionId) {
                let list = ring.preference_list(p, n);
                let spanned: BTreeSet<_> = list.primaries.iter().map(|id| &ring.node(id).unwrap().zone).collect();
                prop_assert_eq!(spanned.len(), n.min(zone_count));
            }
        }

        /// Goal: a join moves partitions only to the new node, and about its share of them
        /// (at least ⌊Q·w/Σw⌋, at most the bound). Method: random ring plus one node.
        /// Reference: Dynamo §4.8, §6.2 strategy 3.
        #[test]
        fn a_join_moves_partitions_only_to_the_new_node(
            q in partition_count(), w in weights(1), joiner_weight in 1u32..=8,
        ) {
            let mut nodes = numbered(&w);
            let before = Ring::new(q, &nodes).unwrap();
            nodes.push(node("joiner", joiner_weight));
            let after = before.rebalance(&nodes).unwrap();
            let joiner = NodeId::from("joiner");
            let moved = before.moved_partitions(&after);
            prop_assert_eq!(&moved, &after.partitions_of(&joiner));
            let (floor, _) = fair_range(&after, &joiner);
            prop_assert!(floor as usize <= moved.len());
            prop_assert!(moved.len() <= after.max_partitions_for(&joiner) as usize);
        }

        /// Goal: a leave moves exactly the leaver's partitions. Method: random ring minus one
        /// node. Reference: Dynamo §4.8, §6.2 strategy 3.
        #[test]
        fn a_leave_moves_only_the_leavers_partitions(
            q in partition_count(), w in weights(2), leaver in any::<prop::sample::Index>(),
        ) {
            let mut nodes = numbered(&w);
            let before = Ring::new(q, &nodes).unwrap();
            let gone = nodes.remove(leaver.index(nodes.len())).id;
            let after = before.rebalance(&nodes).unwrap();
            prop_assert_eq!(before.moved_partitions(&after), before.partitions_of(&gone));
            prop_assert!(!after.owners().contains(&gone));
        }

        /// Goal: after any history of joins, leaves and weight changes, every node stays within
        /// its band (⌊s⌋ − 1 ..= ⌈s⌉ + 1, the upper end being the SPEC bound), and rebalancing
        /// with the same nodes moves nothing. Method: random histories of up to 8 changes.
        /// Reference: Dynamo §6.2 strategy 3.
        #[test]
        fn any_history_keeps_the_bound_and_a_repeat_moves_nothing(
            q in partition_count(), w in weights(1),
            history in prop::collection::vec((0u8..3, 1u32..=8, any::<prop::sample::Index>()), 0..8),
        ) {
            let mut nodes = numbered(&w);
            let mut ring = Ring::new(q, &nodes).unwrap();
            for (step, (change, weight, pick)) in history.into_iter().enumerate() {
                match change {
                    0 => nodes.push(node(&format!("j{step}"), weight)),
                    1 if nodes.len() > 1 => { nodes.remove(pick.index(nodes.len())); }
                    _ => { let i = pick.index(nodes.len()); nodes[i].weight = weight; }
                }
                ring = ring.rebalance(&nodes).unwrap();
                for (id, count) in counts(&ring) {
                    let (floor, _) = fair_range(&ring, &id);
                    prop_assert!(count + 1 >= floor && count <= ring.max_partitions_for(&id));
                }
                let again = ring.rebalance(&nodes).unwrap();
                prop_assert!(ring.moved_partitions(&again).is_empty());
                prop_assert_eq!(&again, &ring);
            }
        }
    }
}
