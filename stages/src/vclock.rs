//! Vector clocks (Dynamo §4.4): one `(node, counter, last-updated timestamp)` entry per node that
//! coordinated a write in an object's history.
//!
//! A clock answers one question: did the history it summarises include a given event? Comparing
//! two clocks gives a partial order (`Equal`, `Descends`, `Dominated`, `Concurrent`). Clocks are
//! kept small by truncation: past `max_entries`, the entries updated longest ago are dropped, as
//! the paper does. **The risk truncation carries**: a dropped entry makes the clock forget events,
//! so a later write that really descends from them looks concurrent with them and they come back
//! as siblings. With dots (see `versioning`) a forgotten event can only cause an extra sibling,
//! never a lost write; entries come only from preference-list nodes (SPEC §3), so with N = 3 the
//! default bound of 10 is rarely reached.
//!
//! Pure: no clocks are read here; callers pass `now_ms`.

use crate::NodeId;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One node's entry: how many writes it coordinated in this history, and when the last was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockEntry {
    /// Number of events by this node that the clock covers (events `1..=counter`).
    pub counter: u64,
    /// Wall-clock milliseconds of the newest of those events; used only to pick which entries
    /// truncation drops, never to order versions.
    pub timestamp_ms: u64,
}

/// The event that wrote a version: `(node, counter)`. Dotted version vectors (Preguiça et al.
/// 2010) keep it apart from the causal past so that two writes with one context stay distinct.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The coordinator that created the version.
    pub node: NodeId,
    /// That coordinator's counter for this event.
    pub counter: u64,
}

/// How two clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both cover exactly the same events.
    Equal,
    /// `self` covers every event of `other` and more.
    Descends,
    /// `other` covers every event of `self` and more.
    Dominated,
    /// Each covers an event the other does not.
    Concurrent,
}

/// A vector clock. Entries are kept sorted by node in one vector, so iteration order, and
/// therefore encoding and every decision made from a clock, is deterministic. A vector and not
/// a `BTreeMap`: a clock holds a handful of entries (truncation bounds them, 10 by default),
/// and every stored version carries one that a read, a merge and a cache refresh copy and
/// drop; a map's node costs an allocation of ~370 bytes for one entry and a walk of its
/// nodes per copy (4 % of a 3-node cluster's CPU went to copying and dropping clocks), a
/// vector one allocation of 32 bytes an entry. Encoded as the map it was, byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VClock {
    /// Sorted by node, each node once.
    entries: Vec<(NodeId, ClockEntry)>,
}

impl VClock {
    /// The empty clock: the history of an object nobody has written.
    pub fn new() -> VClock {
        VClock::default()
    }

    fn position(&self, node: &NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(ours, _)| ours.cmp(node))
    }

    fn entry(&self, node: &NodeId) -> Option<&ClockEntry> {
        self.position(node).ok().map(|at| &self.entries[at].1)
    }

    /// The counter for `node` (0 when absent).
    pub fn counter(&self, node: &NodeId) -> u64 {
        self.entry(node).map_or(0, |entry| entry.counter)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// About how many bytes the clock takes in MessagePack (a buffer size, not a bound):
    /// per entry its node's name and two integers of up to 9 bytes each.
    pub fn encoded_size_hint(&self) -> usize {
        5 + self
            .entries
            .iter()
            .map(|(node, _)| node.as_str().len() + 24)
            .sum::<usize>()
    }

    /// Whether the clock has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in node order.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, &ClockEntry)> {
        self.entries.iter().map(|(node, entry)| (node, entry))
    }

    /// Whether the clock covers `dot`, i.e. the event happened in the history it summarises.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.counter(&dot.node) >= dot.counter
    }

    /// Records `dot` as seen: the entry for its node rises to at least its counter.
    pub fn add_dot(&mut self, dot: &Dot, timestamp_ms: u64) {
        let at = match self.position(&dot.node) {
            Ok(at) => at,
            Err(at) => {
                let fresh = ClockEntry {
                    counter: 0,
                    timestamp_ms,
                };
                self.entries.insert(at, (dot.node.clone(), fresh));
                at
            }
        };
        let entry = &mut self.entries[at].1;
        if dot.counter >= entry.counter {
            entry.counter = dot.counter;
            entry.timestamp_ms = entry.timestamp_ms.max(timestamp_ms);
        }
    }

    /// Sets `node`'s entry to `counter` (used by tests and benches; does not lower an entry).
    pub fn with_entry(mut self, node: impl Into<NodeId>, counter: u64, timestamp_ms: u64) -> Self {
        self.add_dot(
            &Dot {
                node: node.into(),
                counter,
            },
            timestamp_ms,
        );
        self
    }

    /// The least clock that covers both: entry-wise maximum (timestamps too).
    pub fn merge(&mut self, other: &VClock) {
        for (node, theirs) in &other.entries {
            match self.position(node) {
                Ok(at) => {
                    let ours = &mut self.entries[at].1;
                    ours.counter = ours.counter.max(theirs.counter);
                    ours.timestamp_ms = ours.timestamp_ms.max(theirs.timestamp_ms);
                }
                Err(at) => self.entries.insert(at, (node.clone(), *theirs)),
            }
        }
    }

    /// Whether `self` covers every event `other` covers.
    pub fn descends(&self, other: &VClock) -> bool {
        other
            .entries
            .iter()
            .all(|(node, entry)| self.counter(node) >= entry.counter)
    }

    /// The causal relation between two clocks (timestamps play no part).
    pub fn compare(&self, other: &VClock) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Descends,
            (false, true) => Causality::Dominated,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Drops the entries updated longest ago until at most `max_entries` remain (ties broken by
    /// node order so every replica truncates alike). Returns how many were dropped. See the
    /// module doc for the risk this carries.
    pub fn truncate(&mut self, max_entries: usize) -> usize {
        if self.entries.len() <= max_entries {
            return 0;
        }
        // Oldest first, ties by node order (the entries' own order, so by index): one pass
        // of `retain` drops them.
        let mut by_age: Vec<(u64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(at, (_, entry))| (entry.timestamp_ms, at))
            .collect();
        by_age.sort_unstable();
        let excess = self.entries.len() - max_entries;
        let mut dropped = vec![false; self.entries.len()];
        for (_, at) in by_age.into_iter().take(excess) {
            dropped[at] = true;
        }
        let mut at = 0;
        self.entries.retain(|_| {
            at += 1;
            !dropped[at - 1]
        });
        excess
    }
}

impl Serialize for VClock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (node, entry) in &self.entries {
            map.serialize_entry(node, entry)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for VClock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<VClock, D::Error> {
        deserializer.deserialize_map(ClockVisitor)
    }
}

struct ClockVisitor;

impl<'de> Visitor<'de> for ClockVisitor {
    type Value = VClock;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of node to clock entry")
    }

    /// As the `BTreeMap` it replaced decoded: in any order, a node named twice keeps its last
    /// entry. The map's length is the sender's word, so it sizes nothing beyond 16 entries.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VClock, A::Error> {
        let mut entries: Vec<(NodeId, ClockEntry)> =
            Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        let mut sorted = true;
        while let Some((node, entry)) = map.next_entry::<NodeId, ClockEntry>()? {
            match entries.last_mut() {
                // The same node again: its last entry wins, and a run of repeats holds one.
                Some((last, held)) if *last == node => *held = entry,
                Some((last, _)) => {
                    sorted &= *last < node;
                    entries.push((node, entry));
                }
                None => entries.push((node, entry)),
            }
        }
        if !sorted {
            // Stable, so of a node's entries the last stays last; that one's entry is kept.
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = later.1;
                }
                same
            });
        }
        Ok(VClock { entries })
    }
}

#[cfg(test)]
mod tests;
