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
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// A vector clock. Entries are kept in a `BTreeMap` so iteration order, and therefore encoding
/// and every decision made from a clock, is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VClock {
    entries: BTreeMap<NodeId, ClockEntry>,
}

impl VClock {
    /// The empty clock: the history of an object nobody has written.
    pub fn new() -> VClock {
        VClock::default()
    }

    /// The counter for `node` (0 when absent).
    pub fn counter(&self, node: &NodeId) -> u64 {
        self.entries.get(node).map_or(0, |entry| entry.counter)
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
            .keys()
            .map(|node| node.as_str().len() + 24)
            .sum::<usize>()
    }

    /// Whether the clock has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in node order.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, &ClockEntry)> {
        self.entries.iter()
    }

    /// Whether the clock covers `dot`, i.e. the event happened in the history it summarises.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.counter(&dot.node) >= dot.counter
    }

    /// Records `dot` as seen: the entry for its node rises to at least its counter.
    pub fn add_dot(&mut self, dot: &Dot, timestamp_ms: u64) {
        let entry = self.entries.entry(dot.node.clone()).or_insert(ClockEntry {
            counter: 0,
            timestamp_ms,
        });
        if dot.counter >= entry.counter {
            entry.counter = dot.counter;
            entry.timestamp_ms = entry.timestamp_ms.max(timestamp_ms);
        }
    }

    /// Sets `node`'s entry to `counter` (used by tests and decoders; does not lower an entry).
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
            match self.entries.get_mut(node) {
                Some(ours) => {
                    ours.counter = ours.counter.max(theirs.counter);
                    ours.timestamp_ms = ours.timestamp_ms.max(theirs.timestamp_ms);
                }
                None => {
                    self.entries.insert(node.clone(), *theirs);
                }
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
        let mut by_age: Vec<(u64, NodeId)> = self
            .entries
            .iter()
            .map(|(node, entry)| (entry.timestamp_ms, node.clone()))
            .collect();
        by_age.sort();
        let excess = self.entries.len() - max_entries;
        for (_, node) in by_age.into_iter().take(excess) {
            self.entries.remove(&node);
        }
        excess
    }
}

#[cfg(test)]
mod tests;
