//! Data versioning (Dynamo §4.4) with dotted versions, the fix Riak needed (SPEC §3).
//!
//! Every stored version carries its **dot**, the `(actor, counter)` of the write that created it
//! (the actor names the coordinating node and its run since its last crash: `Store::actor`),
//! beside its **past**, the client context it was written with. A version `v` is obsolete exactly
//! when some clock that a writer had seen covers `v.dot`:
//! - a put with context `C` removes the stored versions whose dots `C` covers, keeps the rest as
//!   siblings and adds the new version;
//! - merging two replicas' sets keeps every version unless another version's *past* covers its dot.
//!
//! Why not plain vector clocks: two puts through coordinator A with the same context `C` get
//! clocks `C+{A:k+1}` and `C+{A:k+2}`, and the second dominates the first, so an acknowledged
//! write vanishes. With dots they are `(A,k+1) past C` and `(A,k+2) past C`: neither past covers
//! the other's dot, so both survive. The context handed to a client covers every sibling it was
//! shown, so its next put replaces all of them and siblings do not pile up (Riak's "sibling
//! explosion").
//!
//! A delete is a version whose value is `None` (a tombstone). It takes part in all of the above
//! like any version, which is what keeps a stale replica from resurrecting a deleted value.

use crate::vclock::{Dot, VClock};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One version of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The write that created this version.
    pub dot: Dot,
    /// The context the writer supplied: every event this version supersedes.
    pub past: VClock,
    /// The value, or `None` for a tombstone written by a delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Wall-clock milliseconds when the coordinator created the version.
    pub timestamp_ms: u64,
}

impl Version {
    /// Whether this version records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Whether this version's writer had seen `other`, making `other` obsolete.
    pub fn supersedes(&self, other: &Version) -> bool {
        self.dot != other.dot && self.past.covers(&other.dot)
    }
}

/// Errors of version arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The coordinator's counter for this object cannot grow (a context at `u64::MAX`).
    #[error("vector clock counter of node {node} would overflow")]
    CounterOverflow {
        /// The coordinator whose counter is exhausted.
        node: NodeId,
    },
}

/// The versions of one key that no other version supersedes: one normally, several when
/// concurrent writes left siblings. Kept sorted by dot so equal sets encode identically (the
/// Merkle digest of a set depends on that).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionSet {
    versions: Vec<Version>,
}

impl VersionSet {
    /// The set of an object never written.
    pub fn new() -> VersionSet {
        VersionSet::default()
    }

    /// About how many bytes the set takes in MessagePack (a buffer size, not a bound): per
    /// version its value, its dot, its context and its timestamp.
    pub fn encoded_size_hint(&self) -> usize {
        5 + self
            .versions
            .iter()
            .map(|v| {
                let value = v.value.as_ref().map_or(0, Vec::len);
                value + v.dot.node.as_str().len() + v.past.encoded_size_hint() + 32
            })
            .sum::<usize>()
    }

    /// A set made of `versions`, reconciled (superseded versions dropped, duplicates merged).
    pub fn from_versions(versions: Vec<Version>) -> VersionSet {
        let mut set = VersionSet::new();
        for version in versions {
            set.absorb(version);
        }
        set
    }

    /// Every version, tombstones included, in dot order.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Roughly how many bytes the set takes on the wire: its values plus about 32 bytes per
    /// clock entry and per version. For sizing batches below the frame limit, not exact.
    pub fn approx_bytes(&self) -> usize {
        self.versions
            .iter()
            .map(|v| v.value.as_ref().map_or(0, Vec::len) + 32 * (v.past.len() + 2))
            .sum()
    }

    /// Number of versions (tombstones included).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether the set holds no version at all (not even a tombstone).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The values a client sees: siblings that are not tombstones.
    pub fn live_values(&self) -> impl Iterator<Item = &[u8]> {
        self.versions.iter().filter_map(|v| v.value.as_deref())
    }

    /// Whether every version is a tombstone (the key reads as absent).
    pub fn is_deleted(&self) -> bool {
        self.versions.iter().all(Version::is_tombstone)
    }

    /// The context to hand a client: a clock covering every version (and each one's past), so a
    /// put carrying it replaces all of them.
    pub fn context(&self) -> VClock {
        let mut context = VClock::new();
        for version in &self.versions {
            context.merge(&version.past);
            context.add_dot(&version.dot, version.timestamp_ms);
        }
        context
    }

    /// The highest counter `node` (an actor) has used for this object, in any dot or past.
    pub(crate) fn max_counter(&self, node: &NodeId) -> u64 {
        self.versions
            .iter()
            .map(|v| {
                let own = if &v.dot.node == node {
                    v.dot.counter
                } else {
                    0
                };
                own.max(v.past.counter(node))
            })
            .max()
            .unwrap_or(0)
    }

    /// The coordinator's side of a put (SPEC §4): creates the new version with a fresh dot of
    /// `node`, whose past is the client's `context` (truncated to `max_clock_entries`), removes
    /// the versions that context covers and keeps the rest as siblings. Returns the new version.
    ///
    /// The counter is one above anything `node` has used for this object, *including* versions
    /// the context is about to remove, so a dot is never reused.
    pub fn coordinate_put(
        &mut self,
        node: &NodeId,
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        max_clock_entries: usize,
    ) -> Result<Version, VersionError> {
        self.coordinate_put_above(node, context, value, now_ms, max_clock_entries, 0)
    }

    /// [`VersionSet::coordinate_put`] with a counter above `floor` too: the store's high-water
    /// mark of the actor's dots (`storage/store/actor.rs`), so no dot is made twice even where
    /// the key's set keeps no trace of an earlier one.
    pub fn coordinate_put_above(
        &mut self,
        node: &NodeId,
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        max_clock_entries: usize,
        floor: u64,
    ) -> Result<Version, VersionError> {
        let counter = self
            .max_counter(node)
            .max(context.counter(node))
            .max(floor)
            .checked_add(1)
            .ok_or_else(|| VersionError::CounterOverflow { node: node.clone() })?;
        let mut past = context.clone();
        past.truncate(max_clock_entries);
        let version = Version {
            dot: Dot {
                node: node.clone(),
                counter,
            },
            past,
            value,
            timestamp_ms: now_ms,
        };
        self.versions.retain(|v| !context.covers(&v.dot));
        self.absorb(version.clone());
        Ok(version)
    }

    /// The context to return to the writer of `version`, given this set just after the write
    /// (the coordinator's local set).
    ///
    /// Ideally the writer's context plus the new dot, so its next put supersedes its own write.
    /// But a vector clock cannot hold a gap: if the writer had seen this coordinator's counter
    /// up to 1 and its write took 3, then `{coordinator: 3}` also covers event 2 — someone
    /// else's write the writer never saw — and its next put would silently delete it. So the
    /// dot is added only when the result covers no other live version; otherwise the writer
    /// gets its own context back, and its next put leaves this write as a sibling (an extra
    /// sibling, never a lost write). Checking the coordinator's set is enough: every live
    /// version carrying one of its actor's dots is in its own set, where it was created (a
    /// crash, or a partition's drop of a set holding its counters, ends the actor first:
    /// `storage/store/actor.rs`).
    pub fn write_context(&self, version: &Version) -> VClock {
        let mut candidate = version.past.clone();
        candidate.add_dot(&version.dot, version.timestamp_ms);
        let covers_unseen = self
            .versions
            .iter()
            .any(|v| v.dot != version.dot && candidate.covers(&v.dot));
        if covers_unseen {
            version.past.clone()
        } else {
            candidate
        }
    }

    /// A replica's side: merges another replica's set into this one (replication, read repair,
    /// anti-entropy, handoff). Commutative, associative and idempotent; a version is dropped only
    /// if another version supersedes it. Returns whether this set changed (a replica stores
    /// the set only then; knowing it here spares a copy of the set and a comparison per write).
    pub fn merge(&mut self, other: &VersionSet) -> bool {
        let mut changed = false;
        for version in &other.versions {
            changed |= self.absorb(version.clone());
        }
        changed
    }

    /// Adds one version: ignored if something here supersedes it, and removes what it
    /// supersedes. Returns whether the set changed.
    fn absorb(&mut self, version: Version) -> bool {
        if let Some(existing) = self.versions.iter_mut().find(|v| v.dot == version.dot) {
            // One dot names one write, so copies are equal; if a bug or a truncated clock ever
            // made two differ, keep the same one on every replica (the larger) so they converge.
            if version_order_key(&version) > version_order_key(existing) {
                *existing = version;
                return true;
            }
            return false;
        }
        if self.versions.iter().any(|v| v.supersedes(&version)) {
            return false;
        }
        self.versions.retain(|v| !version.supersedes(v));
        let at = self
            .versions
            .binary_search_by(|v| v.dot.cmp(&version.dot))
            .unwrap_or_else(|insert_at| insert_at);
        self.versions.insert(at, version);
        true
    }
}

/// A total order on versions with one dot, used only to pick a winner deterministically.
fn version_order_key(version: &Version) -> (u64, &Option<Vec<u8>>, usize) {
    (version.timestamp_ms, &version.value, version.past.len())
}

impl fmt::Display for VersionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, v) in self.versions.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let kind = if v.is_tombstone() {
                "tombstone"
            } else {
                "value"
            };
            write!(f, "{sep}{}:{} {kind}", v.dot.node, v.dot.counter)?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests;
