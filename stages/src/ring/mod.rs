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

/// The partition of `partitions` (Q, a power of two) containing a ring position: its top
/// log2(Q) bits. Free of a [`Ring`] because the store lays objects out by partition and knows
/// only Q.
pub fn partition_of_position(partitions: u32, position: u128) -> PartitionId {
    // Q is a power of two, so trailing zeros is log2(Q); Q = 1 has no bits to take, and
    // shifting a u128 by 128 would overflow.
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return PartitionId(0);
    }
    // The shifted value is below 2^bits <= Q, so the cast loses nothing.
    PartitionId((position >> (128 - bits)) as u32)
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
        Ok(finish(partitions, members, slots, &targets, None))
    }

    /// The assignment for a new node set that moves as few partitions as it must from self:
    /// partitions of removed nodes, and partitions of nodes now above their share, go to nodes
    /// below theirs.
    ///
    /// Rebalancing with the same node set moves nothing; a join moves partitions only to the
    /// new node; a leave moves only the leaver's partitions (from a ring made by [`Ring::new`]
    /// these are guaranteed; after a long history of changes they hold all but in rare rounding
    /// corner cases). Q never changes.
    ///
    /// Which receiver gets which freed partition is then chosen so that the partitions each
    /// node *stores* (those whose preference list of `n` names it) come close to its weighted
    /// share of N·Q (`balance.rs`): the same partitions move either way.
    pub fn rebalance(&self, nodes: &[NodeSpec], n: usize) -> Result<Ring, RingError> {
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
        Ok(finish(
            self.partitions,
            members,
            slots,
            &targets,
            Some((n, self)),
        ))
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
        partition_of_position(self.partitions, position)
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

    /// How many partitions each node stores: those whose preference list of `n` names it.
    /// Strategy 3 spreads the owners evenly, but who follows whom on the ring decides the
    /// replicas, and after joins and leaves they can drift apart (a trial's 4 nodes, N=3,
    /// held 44, 46, 44 and 58 of 192). A node that stores none is absent.
    pub fn replicas_held(&self, n: usize) -> BTreeMap<NodeId, u32> {
        let mut held = BTreeMap::new();
        for p in 0..self.partitions {
            for node in self.preference_list(PartitionId(p), n).primaries {
                *held.entry(node).or_insert(0) += 1;
            }
        }
        held
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

/// Deals the free slots (see [`fill_free`]) and names each slot's owner; with `balance_for`
/// (a rebalance's N and the ring it changes), then permutes the dealt owners toward even
/// replica counts ([`balance_replicas`]). Slots and targets number the members in id order.
fn finish(
    partitions: u32,
    members: BTreeMap<NodeId, NodeSpec>,
    slots: Vec<Option<usize>>,
    targets: &[u32],
    balance_for: Option<(usize, &Ring)>,
) -> Ring {
    let free: Vec<usize> = (0..slots.len()).filter(|&p| slots[p].is_none()).collect();
    let ids: Vec<&NodeId> = members.keys().collect();
    let dealt = fill_free(slots, targets);
    let owners = dealt.iter().map(|&number| ids[number].clone()).collect();
    // Members number at most MAX_NODES, so every number fits a u32.
    let numbers = dealt.into_iter().map(|number| number as u32).collect();
    let mut ring = Ring {
        partitions,
        owners,
        numbers,
        nodes: members,
    };
    if let Some((n, old)) = balance_for {
        balance_replicas(&mut ring, &free, n, old);
    }
    ring
}

/// A node's weighted share of Q, s = Q·w/Σw, as the integers the assignment works with.
mod assign;
mod balance;

use balance::balance_replicas;

use assign::{
    fill_free, fresh_targets, rebalance_targets, release_excess, share_of, shares, Standing,
};

#[cfg(test)]
mod tests;
