//! Membership (Dynamo §4.8): who is in the cluster, where they listen, the partition
//! assignment, and the ownership transfers a change of assignment set off — one value that
//! every node holds a copy of and that gossip merges.
//!
//! The value is a state-based CRDT, so copies changed through different nodes at the same time
//! merge instead of one overwriting the other:
//! - **members** are a map, one entry per node id, of two last-writer-wins registers each (the
//!   role: state, weight, zone; and the address), stamped with a Lamport [`Stamp`] (counter,
//!   then the node that wrote it, break ties), a removal winning over any later write. A join
//!   staged through n1 and a leave staged through n2 both survive the merge, and so do a move
//!   and a leave of one member.
//! - **the ring** (the committed assignment) is one register stamped by its commit, carrying
//!   the ring it replaced while transfers are pending, the set of transfers done (a
//!   grow-only set, merged by union) and, where a partition was served apart from its list in
//!   that ring when the commit was made, the replicas it was served from (`old_replicas`).
//!   Two commits made at once: the later stamp wins, and the other commit's member changes
//!   stay staged, visible in the next [`Membership::plan`].
//!
//! What an operator *wants* (members `Active`, `Leaving`, `Removed`) is kept apart from what
//! is *committed* (the ring): the difference is the plan, shown before it is applied (riak's
//! plan/commit). After a commit, every partition whose replicas changed has a transfer per new
//! replica from an old one; until a partition's transfers are done its reads stay on the old
//! replicas and its writes go to old and new ([`Membership::replicas`]).
//!
//! Pure: no clock, no I/O. [`MembershipView`] is the shared, swappable handle the stages read
//! the current value through; the gossip stage is its one writer.

use crate::error::ServiceError;
use crate::ring::{NodeSpec, PartitionId, PreferenceList, Ring, RingError};
use crate::NodeId;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Where it listens for clients and peers.
    pub addr: SocketAddr,
    /// Relative capacity.
    pub weight: u32,
    /// Failure zone, if configured.
    pub zone: Option<String>,
}

impl Member {
    /// A member of weight 1 with no zone on 127.0.0.1:`port`, for tests.
    #[cfg(test)]
    pub(crate) fn loopback(id: &str, port: u16) -> Member {
        Member {
            id: NodeId::new(id),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            zone: None,
        }
    }

    fn spec(&self) -> NodeSpec {
        NodeSpec {
            id: self.id.clone(),
            weight: self.weight,
            zone: self.zone.clone(),
        }
    }
}

/// A Lamport timestamp: who wrote a register and when, in an order every node agrees on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Above every counter the writer had seen.
    pub counter: u64,
    /// The node that wrote it (breaks ties between concurrent writes).
    pub node: NodeId,
}

impl Stamp {
    /// The stamp of a value every node derives from the same config (no writer).
    fn initial() -> Stamp {
        Stamp {
            counter: 0,
            node: NodeId::new(""),
        }
    }
}

/// What the operator wants of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// In the ring, or to be added by the next commit.
    Active,
    /// To be taken out of the ring; it hands its partitions over first (`admin leave`).
    Leaving,
    /// Dead: taken out of the ring, its replicas rebuilt from the others (`admin remove`);
    /// a copy it finished sending before stays done.
    Removed,
}

/// One member's entry: two last-writer-wins registers, merged apart. Its role (state, weight
/// and zone: join, leave, remove) and its address (join, `admin move`). One register held
/// both once, so a move and a leave or remove staged at about the same time through two
/// nodes undid one another (a review's finding: the later stamp took the whole entry, and a
/// move could bring a removed node back). A removed member stays removed whatever the stamps
/// say (its id never comes back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The member.
    pub member: Member,
    /// What the operator wants of it.
    pub state: MemberState,
    /// The newest write to either register, and by whom: builds before the split merge whole
    /// entries by it.
    pub stamp: Stamp,
    /// When the role was written, if before `stamp` (absent: at `stamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_stamp: Option<Stamp>,
    /// When the address was written, if before `stamp` (absent: at `stamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr_stamp: Option<Stamp>,
}

impl MemberEntry {
    /// A member entry whose registers were written at `role` and `addr`.
    pub(crate) fn new(member: Member, state: MemberState, role: Stamp, addr: Stamp) -> Self {
        let stamp = role.clone().max(addr.clone());
        MemberEntry {
            member,
            state,
            role_stamp: (role != stamp).then_some(role),
            addr_stamp: (addr != stamp).then_some(addr),
            stamp,
        }
    }

    /// When the role was written.
    pub fn role_written(&self) -> &Stamp {
        self.role_stamp.as_ref().unwrap_or(&self.stamp)
    }

    /// When the address was written.
    pub fn addr_written(&self) -> &Stamp {
        self.addr_stamp.as_ref().unwrap_or(&self.stamp)
    }

    /// The two entries merged, register by register: the later role (a removal above all)
    /// and the later address. Equal stamps with different values (a copy passed on by a
    /// build before the split, which claims both registers were written at `stamp`; founders
    /// whose configs differ) are settled by the values, so every node ends with the same
    /// whatever order it saw them in.
    fn merged(&self, theirs: &MemberEntry) -> MemberEntry {
        let role_rank = |e: &MemberEntry| {
            let m = &e.member;
            let removed = e.state == MemberState::Removed;
            (
                removed,
                e.role_written().clone(),
                e.state as u8,
                m.weight,
                m.zone.clone(),
            )
        };
        let role = if role_rank(theirs) > role_rank(self) {
            theirs
        } else {
            self
        };
        let addr_rank = |e: &MemberEntry| (e.addr_written().clone(), e.member.addr);
        let addr = if addr_rank(theirs) > addr_rank(self) {
            theirs
        } else {
            self
        };
        // Never below either stamp (a removal can outlast a later write): builds before the
        // split take the newer whole entry.
        let stamp = self.stamp.clone().max(theirs.stamp.clone());
        let before = |written: &Stamp| Some(written.clone()).filter(|w| *w != stamp);
        MemberEntry {
            member: Member {
                addr: addr.member.addr,
                ..role.member.clone()
            },
            state: role.state,
            role_stamp: before(role.role_written()),
            addr_stamp: before(addr.addr_written()),
            stamp,
        }
    }
}

/// The committed assignment, one register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The current ring.
    pub ring: Ring,
    /// The commit that made it.
    pub stamp: Stamp,
    /// The ring it replaced; `None` for the initial ring.
    pub previous: Option<Ring>,
    /// Transfers of this commit that are done, as (partition, sending node, receiving node).
    pub done: BTreeSet<(u32, Option<NodeId>, NodeId)>,
    /// The old replicas of partitions whose old replicas are not their list in `previous`.
    /// Empty unless this commit passed while copies of the one before still waited for
    /// removed nodes (a join at a wrong address): the partitions those copies were for were
    /// still read and written on the replicas before *that* commit, so those are the ones that
    /// hold their data and must send it (see `undone_by_next_commit`). Absent in values
    /// written before it existed.
    #[serde(default)]
    pub old_replicas: BTreeMap<u32, Vec<NodeId>>,
}

/// One partition's data to copy from an old replica to a new one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Transfer {
    /// The partition.
    pub partition: u32,
    /// The old replica that streams it (`None`: no old replica is left to copy from).
    pub from: Option<NodeId>,
    /// The new replica.
    pub to: NodeId,
}

/// What a commit would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Members that would enter the ring.
    pub joining: Vec<NodeId>,
    /// Members that would leave it, handing their data over.
    pub leaving: Vec<NodeId>,
    /// Dead members that would be taken out.
    pub removed: Vec<NodeId>,
    /// Partitions whose owner (first replica) changes.
    pub owners_changed: u32,
    /// Every copy a commit would start.
    pub transfers: Vec<Transfer>,
}

impl Plan {
    /// Whether a commit would change nothing.
    pub fn is_empty(&self) -> bool {
        self.joining.is_empty() && self.leaving.is_empty() && self.removed.is_empty()
    }
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The member is not known.
    #[error("{node} is not a member")]
    UnknownMember {
        /// The node named.
        node: NodeId,
    },
    /// A join names a node id that is already a member, at another address.
    #[error("{node} is already a member at {addr} (a member that moved to another address keeps its id and data: `shoal admin move`)")]
    AlreadyMember {
        /// The node named.
        node: NodeId,
        /// Where it is known to listen.
        addr: SocketAddr,
    },
    /// A removed node cannot come back under the same id (its dots could be reused).
    #[error("{node} was removed; a node that comes back joins under a new id")]
    WasRemoved {
        /// The node named.
        node: NodeId,
    },
    /// Taking the member out would leave no node in the ring.
    #[error("{node} is the last member of the ring")]
    LastMember {
        /// The node named.
        node: NodeId,
    },
    /// Nothing is staged.
    #[error("nothing to commit: no join, leave or remove is staged")]
    NothingStaged,
    /// Only the claimant commits.
    #[error("{me} is not the claimant; commit through {claimant} (the ring member with the smallest id that was not removed)")]
    NotClaimant {
        /// The node asked.
        me: NodeId,
        /// The node that commits.
        claimant: NodeId,
    },
    /// Another member listens at the address a join or a move names.
    #[error("{addr} is where member {node} listens; each member needs an address of its own")]
    AddressTaken {
        /// The address.
        addr: SocketAddr,
        /// The member there.
        node: NodeId,
    },
    /// A join or move names an address no peer can dial.
    #[error("{addr} cannot be dialled by peers (port 0, or an unspecified IP such as 0.0.0.0): give the address they reach the node at")]
    NotDialable {
        /// The address.
        addr: SocketAddr,
    },
    /// The previous commit's transfers are not all done.
    #[error("{pending} transfers of the previous commit are still pending; commit again once they are done (admin ring shows them), or, if their receiver will never come up (a join at a wrong address), stage its removal (admin remove) and commit that")]
    TransfersPending {
        /// How many.
        pending: usize,
    },
    /// The staged members do not make a valid ring.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// A value received from a peer is not a valid membership of this cluster.
    #[error("invalid membership: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Where a key's replicas are, for a coordinator: while the key's partition is moving, reads
/// use the old replicas (the new ones do not hold it yet) and writes also reach the new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicas {
    /// The replicas that count toward R and W, and the fallbacks of sloppy quorum.
    pub list: PreferenceList,
    /// New replicas being filled: each write is sent to them too, but their answers do not
    /// count toward W (a read would not ask them).
    pub also_write: Vec<NodeId>,
}

impl Replicas {
    /// Whether `node` is one of them: in the list, or a new replica being filled.
    pub fn includes(&self, node: &NodeId) -> bool {
        self.list.primaries.contains(node) || self.also_write.contains(node)
    }
}

/// The cluster's membership: members, committed ring and pending transfers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The highest Lamport counter in the value: grows with every change, so a client holding
    /// a lower version knows to refresh (two different values may share a version).
    pub version: u64,
    members: BTreeMap<NodeId, MemberEntry>,
    assignment: Assignment,
}

impl Membership {
    /// The membership of `members`, all active, at `version`, with a fresh ring of
    /// `partitions`. Every node given the same members derives the same value.
    pub fn new(
        version: u64,
        partitions: u32,
        members: Vec<Member>,
    ) -> Result<Membership, RingError> {
        let specs: Vec<NodeSpec> = members.iter().map(Member::spec).collect();
        let ring = Ring::new(partitions, &specs)?;
        let members = members
            .into_iter()
            .map(|member| {
                let entry = MemberEntry::new(
                    member,
                    MemberState::Active,
                    Stamp::initial(),
                    Stamp::initial(),
                );
                (entry.member.id.clone(), entry)
            })
            .collect();
        Ok(Membership {
            version,
            members,
            assignment: Assignment {
                ring,
                stamp: Stamp::initial(),
                previous: None,
                done: BTreeSet::new(),
                old_replicas: BTreeMap::new(),
            },
        })
    }

    /// The committed ring.
    pub fn ring(&self) -> &Ring {
        &self.assignment.ring
    }

    /// The committed assignment (ring, the ring it replaced, transfers done).
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// What this node's initial ring is, for the handshake to compare: the ring's digest while
    /// it is still the one every founder dealt from the config's member list (no commit since)
    /// and `me` is in it, else 0 (a joiner's seeds are no founder's list; after a commit the
    /// newer ring simply wins). Two founders naming different ones were given different lists.
    pub fn genesis(&self, me: &NodeId) -> u64 {
        let a = &self.assignment;
        let founder = a.ring.nodes().any(|spec| &spec.id == me);
        if a.stamp == Stamp::initial() && founder {
            ring_digest(&a.ring).max(1)
        } else {
            0
        }
    }

    /// Where this membership has node `me` when that is not `listen`, where it listens: peers
    /// dial the membership's address, so a node that moved is reached only once `shoal admin
    /// move` records the new one. A listen address on every interface (0.0.0.0) is compared by
    /// port. `None` too for a node that is not a member (yet).
    pub fn listed_elsewhere(&self, me: &NodeId, listen: SocketAddr) -> Option<SocketAddr> {
        let listed = self.addr_of(me)?;
        let same = if listen.ip().is_unspecified() {
            listed.port() == listen.port()
        } else {
            listed == listen
        };
        (!same).then_some(listed)
    }

    /// Whether member `id`'s address was written after the initial ring (`admin move`, or
    /// the join that added it): then a config that lists it elsewhere is stale, as it should be.
    pub fn address_rewritten(&self, id: &NodeId) -> bool {
        self.members
            .get(id)
            .is_some_and(|e| *e.addr_written() != Stamp::initial())
    }

    /// A member by id, unless it was removed.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members
            .get(id)
            .filter(|e| e.state != MemberState::Removed)
            .map(|e| &e.member)
    }

    /// Every member not removed, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|e| e.state != MemberState::Removed)
            .map(|e| &e.member)
    }

    /// Every register, removed members included, in id order.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values()
    }

    /// Where a member listens.
    pub fn addr_of(&self, id: &NodeId) -> Option<SocketAddr> {
        self.member(id).map(|m| m.addr)
    }

    /// What the operator wants of a member, if it is known.
    pub fn state_of(&self, id: &NodeId) -> Option<MemberState> {
        self.members.get(id).map(|e| e.state)
    }

    /// Merges a copy from another node into this one; returns whether this one changed.
    pub fn merge(&mut self, other: &Membership) -> bool {
        let before = self.digest();
        for (id, theirs) in &other.members {
            let merged = match self.members.get(id) {
                Some(ours) => ours.merged(theirs),
                None => theirs.clone(),
            };
            self.members.insert(id.clone(), merged);
        }
        let ours = &self.assignment;
        let theirs = &other.assignment;
        // A later commit replaces the ring. Two initial rings (one stamp, no commit) dealt
        // from different member lists (a node restarted with another list, or a joiner's
        // seeds) never replace each other: taking the other's, as a tie broken by digest once
        // did, dropped every partition of a member one list left out, on every node; the
        // handshake refuses such a founder (`Membership::genesis`). Two commits of one stamp
        // (a claimant restored from a backup, committing again before gossip reached it) are
        // still settled by digest, so every node ends with the same ring.
        let initial = theirs.stamp == Stamp::initial() && ours.stamp == Stamp::initial();
        let newer = theirs.stamp > ours.stamp
            || (!initial
                && theirs.stamp == ours.stamp
                && ring_digest(&theirs.ring) > ring_digest(&ours.ring));
        if newer {
            self.assignment = theirs.clone();
        } else if theirs.stamp == ours.stamp && theirs.ring == ours.ring {
            let done = theirs.done.clone();
            self.assignment.done.extend(done);
        }
        self.version = self.version.max(other.version);
        self.digest() != before
    }

    /// A digest of the whole value: equal digests, equal values (gossip sends the value only
    /// when digests differ).
    pub fn digest(&self) -> u64 {
        let mut md5 = Md5::new();
        md5.update(self.version.to_be_bytes());
        for entry in self.members.values() {
            hash_str(&mut md5, entry.member.id.as_str());
            hash_str(&mut md5, &entry.member.addr.to_string());
            md5.update(entry.member.weight.to_be_bytes());
            hash_str(&mut md5, entry.member.zone.as_deref().unwrap_or(""));
            md5.update([entry.state as u8]);
            hash_stamp(&mut md5, &entry.stamp);
            // Only when either is present, so a value without them digests as builds before
            // them do; then both, so "role only" and "address only" differ.
            if entry.role_stamp.is_some() || entry.addr_stamp.is_some() {
                hash_stamp(&mut md5, entry.role_written());
                hash_stamp(&mut md5, entry.addr_written());
            }
        }
        let a = &self.assignment;
        hash_stamp(&mut md5, &a.stamp);
        md5.update(ring_digest(&a.ring).to_be_bytes());
        md5.update(a.previous.as_ref().map_or(0, ring_digest).to_be_bytes());
        for (partition, from, to) in &a.done {
            md5.update(partition.to_be_bytes());
            hash_str(&mut md5, from.as_ref().map_or("", NodeId::as_str));
            hash_str(&mut md5, to.as_str());
        }
        for (partition, replicas) in &a.old_replicas {
            md5.update(partition.to_be_bytes());
            md5.update((replicas.len() as u64).to_be_bytes());
            for node in replicas {
                hash_str(&mut md5, node.as_str());
            }
        }
        first_u64(&md5.finalize())
    }

    /// Checks a value received from a peer: the same Q as ours, and rings that are whole.
    pub fn check(&self, partitions: u32) -> Result<(), MembershipError> {
        let invalid = |reason: String| MembershipError::Invalid { reason };
        let a = &self.assignment;
        for ring in std::iter::once(&a.ring).chain(&a.previous) {
            if ring.partition_count() != partitions {
                return Err(invalid(format!(
                    "a ring of {} partitions, this cluster has {partitions}",
                    ring.partition_count()
                )));
            }
        }
        for (id, entry) in &self.members {
            if id != &entry.member.id {
                return Err(invalid(format!("member {id} is filed under another id")));
            }
            // `stamp` is the newest write to the entry: a register's own is older, or absent.
            let split = [&entry.role_stamp, &entry.addr_stamp];
            if split.into_iter().flatten().any(|s| *s >= entry.stamp) {
                return Err(invalid(format!(
                    "member {id} has a register newer than its stamp"
                )));
            }
        }
        if let Some((partition, _, _)) = a.done.iter().find(|(p, _, _)| *p >= partitions) {
            return Err(invalid(format!(
                "a transfer of partition {partition}, beyond Q"
            )));
        }
        if !a.old_replicas.is_empty() && a.previous.is_none() {
            return Err(invalid("old replicas kept without a previous ring".into()));
        }
        for (partition, replicas) in &a.old_replicas {
            let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
            if *partition >= partitions || replicas.is_empty() || distinct.len() < replicas.len() {
                return Err(invalid(format!(
                    "old replicas of partition {partition}: beyond Q, none or repeated"
                )));
            }
            if let Some(node) = replicas.iter().find(|id| !self.members.contains_key(id)) {
                return Err(invalid(format!("old replica {node} is not a member")));
            }
        }
        let rings = std::iter::once(&a.ring).chain(&a.previous);
        if let Some(node) = rings
            .flat_map(|ring| ring.nodes())
            .find(|spec| !self.members.contains_key(&spec.id))
        {
            return Err(invalid(format!("ring node {} is not a member", node.id)));
        }
        Ok(())
    }
}

fn hash_str(md5: &mut Md5, s: &str) {
    md5.update((s.len() as u64).to_be_bytes());
    md5.update(s.as_bytes());
}

fn hash_stamp(md5: &mut Md5, stamp: &Stamp) {
    md5.update(stamp.counter.to_be_bytes());
    hash_str(md5, stamp.node.as_str());
}

fn first_u64(bytes: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first)
}

/// A digest of a ring: its nodes (with weights and zones) and its owners.
fn ring_digest(ring: &Ring) -> u64 {
    let mut md5 = Md5::new();
    md5.update(ring.partition_count().to_be_bytes());
    for spec in ring.nodes() {
        hash_str(&mut md5, spec.id.as_str());
        md5.update(spec.weight.to_be_bytes());
        hash_str(&mut md5, spec.zone.as_deref().unwrap_or(""));
    }
    for owner in ring.owners() {
        hash_str(&mut md5, owner.as_str());
    }
    first_u64(&md5.finalize())
}

/// The shared handle to the current membership. Reads are a lock and an `Arc` clone; the
/// value read is immutable, so a stage can use it for a whole request without holding the lock.
#[derive(Clone, Debug)]
pub struct MembershipView {
    current: Arc<RwLock<Arc<Installed>>>,
}

/// One installed membership and the replicas of its partitions, each worked out on first use.
/// Why: a coordinator asks for a key's replicas on every request, and once any commit has
/// happened that is two preference-list walks and the last commit's copies of the partition
/// (`benches/codec_vclock.rs`, group `membership`: 540 ns after a join, 261 ns on a ring
/// never changed, 183 ns through this cache). The value is immutable once installed, so its answers never go stale; the
/// next installed value starts empty.
#[derive(Debug)]
struct Installed {
    membership: Arc<Membership>,
    /// The replication factor the first asker used, and a slot per partition.
    replicas: OnceLock<(usize, Box<[OnceLock<Replicas>]>)>,
}

impl Installed {
    fn new(membership: Membership) -> Installed {
        Installed {
            membership: Arc::new(membership),
            replicas: OnceLock::new(),
        }
    }
}

impl MembershipView {
    /// A view holding `membership`.
    pub fn new(membership: Membership) -> MembershipView {
        MembershipView {
            current: Arc::new(RwLock::new(Arc::new(Installed::new(membership)))),
        }
    }

    fn installed(&self) -> Arc<Installed> {
        // A poisoned lock means a writer panicked mid-swap; the Arc inside is still whole.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The current membership.
    pub fn current(&self) -> Arc<Membership> {
        Arc::clone(&self.installed().membership)
    }

    /// The current membership's replicas of `key` ([`Membership::replicas_for_key`]),
    /// remembered per partition until the next membership is installed. Only one `n` is
    /// remembered (a node has one); another is worked out each time.
    pub fn replicas_for_key(&self, key: &[u8], n: usize) -> Replicas {
        self.with_replicas(key, n, Replicas::clone)
    }

    /// Why `node` refuses to store `key` (a replica write, a forwarded put, a hint): it holds
    /// the key's partition under no ring a coordinator may use ([`Membership::holds`]), so
    /// its cleanup would drop the copy, perhaps after its final sync, while the write's
    /// quorum counted it. Answered from the same remembered replicas. A sender with a newer
    /// view than this node's is refused too, until gossip brings it the commit.
    pub fn not_a_replica(&self, node: &NodeId, key: &[u8], n: usize) -> Option<ServiceError> {
        if self.with_replicas(key, n, |r| r.includes(node)) {
            return None;
        }
        let m = self.current();
        Some(ServiceError::NotAReplica {
            node: node.to_string(),
            partition: m.ring().partition_of(key).0,
            version: m.version,
        })
    }

    fn with_replicas<T>(&self, key: &[u8], n: usize, f: impl FnOnce(&Replicas) -> T) -> T {
        let installed = self.installed();
        let membership = &installed.membership;
        let partition = membership.ring().partition_of(key);
        let (cached_n, slots) = installed.replicas.get_or_init(|| {
            let count = membership.ring().partition_count() as usize;
            (n, (0..count).map(|_| OnceLock::new()).collect())
        });
        match slots.get(partition.0 as usize) {
            Some(slot) if *cached_n == n => {
                f(slot.get_or_init(|| membership.replicas(partition, n)))
            }
            _ => f(&membership.replicas(partition, n)),
        }
    }

    /// Installs `membership` (the gossip stage, the one writer, installs every value it
    /// merged; the value only ever grows in the merge order, so no reader sees it go back).
    pub fn set(&self, membership: Membership) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(Installed::new(membership));
    }
}

mod changes;
#[cfg(test)]
mod tests;
mod transfers;
