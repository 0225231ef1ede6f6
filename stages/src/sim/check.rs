//! What the simulated clients did, and the checkers that judge it (TESTING.md §2, §3). Each
//! violation names its checker, so a failing seed says which property broke.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A broken property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that found it.
    pub checker: &'static str,
    /// What it found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

/// The checkers, by name.
pub mod checker {
    /// No acknowledged add is missing from the final read (lost = acked − final).
    pub const LOST_ADD: &str = "lost-add";
    /// Nothing is read that no client wrote.
    pub const PHANTOM: &str = "phantom-value";
    /// Two puts with one context both survive (SPEC §3).
    pub const SAME_CONTEXT: &str = "same-context-puts";
    /// A put whose context covers every sibling leaves one version.
    pub const RECONCILE: &str = "reconciling-put";
    /// An acknowledged blind put is not dropped unless a delete saw it.
    pub const BLIND_PUT: &str = "blind-put-dropped";
    /// Every request gets exactly one reply.
    pub const ONE_REPLY: &str = "one-reply";
    /// After heal and quiet, every replica of every key holds the same version set, and no
    /// hint is left.
    pub const CONVERGENCE: &str = "convergence";
    /// After heal and quiet (hints handed off), and before any final read repairs anything,
    /// every acknowledged add is on at least W of its key's primaries.
    pub const REPLICATED: &str = "replicated-w";
    /// The final reads themselves succeed once everything healed.
    pub const FINAL_READ: &str = "final-read";
    /// A put a stopping node refused (`ShuttingDown`: before any stage saw it) is never
    /// applied: its element is never read.
    pub const REFUSED_APPLIED: &str = "refused-write-applied";
}

/// Encodes a set as a value (`set:1,5,9`).
pub fn encode_set(elements: &BTreeSet<u64>) -> Vec<u8> {
    let list: Vec<String> = elements.iter().map(u64::to_string).collect();
    format!("set:{}", list.join(",")).into_bytes()
}

/// Decodes a set value; `None` if it is not one.
pub fn decode_set(value: &[u8]) -> Option<BTreeSet<u64>> {
    let text = std::str::from_utf8(value).ok()?.strip_prefix("set:")?;
    if text.is_empty() {
        return Some(BTreeSet::new());
    }
    text.split(',').map(|e| e.parse().ok()).collect()
}

/// A blind put's fate.
#[derive(Clone, Debug, Default)]
struct BlindValue {
    acked: bool,
    /// A delete was attempted with a context from a read that returned this value: it may
    /// rightly be gone.
    seen_by_delete: bool,
}

/// The same-context scenario of one key.
#[derive(Clone, Debug, Default)]
struct Pair {
    /// The two values put with one context, and whether each was acknowledged.
    first: Option<(Vec<u8>, bool)>,
    second: Option<(Vec<u8>, bool)>,
    /// The reconciling put's value and whether it was acknowledged.
    reconcile: Option<(Vec<u8>, bool)>,
}

/// Everything the clients did and saw.
#[derive(Default)]
pub struct History {
    /// Set keys: elements whose add was attempted, and acknowledged.
    attempted_adds: BTreeMap<String, BTreeSet<u64>>,
    acked_adds: BTreeMap<String, BTreeSet<u64>>,
    /// Set keys: elements whose put a stopping node refused (never to be read).
    refused_adds: BTreeMap<String, BTreeSet<u64>>,
    /// Every other key: the values written to it.
    written: BTreeMap<String, BTreeSet<Vec<u8>>>,
    blind: BTreeMap<String, BTreeMap<Vec<u8>, BlindValue>>,
    pairs: BTreeMap<String, Pair>,
    /// The final read of each key.
    finals: BTreeMap<String, Vec<Vec<u8>>>,
    violations: Vec<Violation>,
}

impl History {
    /// Records a violation found while the run was going on.
    pub fn violation(&mut self, checker: &'static str, detail: String) {
        self.violations.push(Violation { checker, detail });
    }

    /// An add of `element` to the set in `key` is about to be put.
    pub fn add_attempted(&mut self, key: &str, element: u64) {
        self.attempted_adds
            .entry(key.to_string())
            .or_default()
            .insert(element);
    }

    /// The put carrying `element` was refused by a node that is stopping: not applied.
    pub fn add_refused(&mut self, key: &str, element: u64) {
        self.refused_adds
            .entry(key.to_string())
            .or_default()
            .insert(element);
    }

    /// The put carrying `element` was acknowledged.
    pub fn add_acked(&mut self, key: &str, element: u64) {
        self.acked_adds
            .entry(key.to_string())
            .or_default()
            .insert(element);
    }

    /// A value is about to be put to `key` (not a set key).
    pub fn write_attempted(&mut self, key: &str, value: &[u8]) {
        self.written
            .entry(key.to_string())
            .or_default()
            .insert(value.to_vec());
    }

    /// A blind put was acknowledged.
    pub fn blind_acked(&mut self, key: &str, value: &[u8]) {
        self.blind
            .entry(key.to_string())
            .or_default()
            .entry(value.to_vec())
            .or_default()
            .acked = true;
    }

    /// A delete of `key` is about to be sent with the context of a read that saw `values`.
    pub fn delete_attempted(&mut self, key: &str, values: &[Vec<u8>]) {
        let blind = self.blind.entry(key.to_string()).or_default();
        for value in values {
            blind.entry(value.clone()).or_default().seen_by_delete = true;
        }
    }

    /// The same-context scenario's puts: `which` is 0 and 1 for the two puts with one
    /// context, 2 for the reconciling put.
    pub fn pair_put(&mut self, key: &str, which: u8, value: &[u8], acked: bool) {
        let pair = self.pairs.entry(key.to_string()).or_default();
        let slot = match which {
            0 => &mut pair.first,
            1 => &mut pair.second,
            _ => &mut pair.reconcile,
        };
        *slot = Some((value.to_vec(), acked));
    }

    /// Checks a read's values against what was written: a value nobody wrote is a phantom.
    pub fn check_read(&mut self, key: &str, values: &[Vec<u8>]) {
        for value in values {
            let elements = decode_set(value);
            if let (Some(elements), Some(refused_here)) = (&elements, self.refused_adds.get(key)) {
                let refused: Vec<u64> = elements.intersection(refused_here).copied().collect();
                if !refused.is_empty() {
                    self.violation(
                        checker::REFUSED_APPLIED,
                        format!("{key} holds {refused:?}, whose put a stopping node refused"),
                    );
                }
            }
            let known = match elements {
                Some(elements) => {
                    let attempted = self.attempted_adds.get(key);
                    elements
                        .iter()
                        .all(|e| attempted.is_some_and(|a| a.contains(e)))
                }
                None => self.written.get(key).is_some_and(|w| w.contains(value)),
            };
            if !known {
                let shown = String::from_utf8_lossy(value).into_owned();
                self.violation(
                    checker::PHANTOM,
                    format!("{key} returned {shown:?}, which no client wrote"),
                );
            }
        }
    }

    /// The final read of `key` after heal.
    pub fn final_read(&mut self, key: &str, values: Vec<Vec<u8>>) {
        self.check_read(key, &values);
        self.finals.insert(key.to_string(), values);
    }

    /// The acknowledged adds of every set key.
    pub fn acked_adds(&self) -> &BTreeMap<String, BTreeSet<u64>> {
        &self.acked_adds
    }

    /// Set adds a stopping node refused, over every key.
    pub fn refused_add_count(&self) -> u64 {
        self.refused_adds.values().map(|r| r.len() as u64).sum()
    }

    /// Acknowledged adds, over every key.
    pub fn acked_add_count(&self) -> u64 {
        self.acked_adds.values().map(|a| a.len() as u64).sum()
    }

    /// Every key a client touched, in order.
    pub fn keys(&self) -> BTreeSet<String> {
        self.attempted_adds
            .keys()
            .chain(self.written.keys())
            .cloned()
            .collect()
    }

    /// Runs the checkers on the final reads; returns every violation of the run.
    pub fn finish(mut self) -> Vec<Violation> {
        for key in self.keys() {
            if !self.finals.contains_key(&key) {
                self.violation(checker::FINAL_READ, format!("no final read of {key}"));
            }
        }
        let finals = std::mem::take(&mut self.finals);
        self.check_adds(&finals);
        self.check_blind(&finals);
        self.check_pairs(&finals);
        self.violations
    }

    fn check_adds(&mut self, finals: &BTreeMap<String, Vec<Vec<u8>>>) {
        let acked = std::mem::take(&mut self.acked_adds);
        for (key, acked) in acked {
            let Some(values) = finals.get(&key) else {
                continue;
            };
            let present: BTreeSet<u64> = values
                .iter()
                .filter_map(|v| decode_set(v))
                .flatten()
                .collect();
            let lost: Vec<u64> = acked.difference(&present).copied().collect();
            if !lost.is_empty() {
                self.violation(
                    checker::LOST_ADD,
                    format!("{key}: acknowledged adds {lost:?} missing from the final read"),
                );
            }
        }
    }

    fn check_blind(&mut self, finals: &BTreeMap<String, Vec<Vec<u8>>>) {
        let blind = std::mem::take(&mut self.blind);
        for (key, values) in blind {
            let Some(present) = finals.get(&key) else {
                continue;
            };
            for (value, fate) in values {
                if fate.acked && !fate.seen_by_delete && !present.contains(&value) {
                    self.violation(
                        checker::BLIND_PUT,
                        format!(
                            "{key}: acknowledged blind put {:?} gone, and no delete saw it",
                            String::from_utf8_lossy(&value)
                        ),
                    );
                }
            }
        }
    }

    fn check_pairs(&mut self, finals: &BTreeMap<String, Vec<Vec<u8>>>) {
        let pairs = std::mem::take(&mut self.pairs);
        for (key, pair) in pairs {
            let Some(present) = finals.get(&key) else {
                continue;
            };
            match (pair.first, pair.second, pair.reconcile) {
                // Compared as a set of values: a put applied twice (a forward retried after
                // its link broke, a duplicated frame) leaves two versions of one value, which
                // is Dynamo's at-least-once, not a lost reconciliation.
                (_, _, Some((c, true))) => {
                    let values: BTreeSet<&Vec<u8>> = present.iter().collect();
                    if values != BTreeSet::from([&c]) {
                        self.violation(
                            checker::RECONCILE,
                            format!(
                                "{key}: a put whose context covered every sibling was acknowledged, yet the key holds {:?}",
                                present.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>()
                            ),
                        );
                    }
                }
                // A reconciling put that was attempted but not acknowledged may still have been
                // applied (on fewer than W replicas, then spread by repair): then A and B are
                // rightly gone. Only scenarios that never reconciled keep both for sure.
                (Some((a, true)), Some((b, true)), None) => {
                    for value in [a, b] {
                        if !present.contains(&value) {
                            self.violation(
                                checker::SAME_CONTEXT,
                                format!(
                                    "{key}: of two acknowledged puts with one context, {:?} is lost",
                                    String::from_utf8_lossy(&value)
                                ),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the checkers catch what they are named for: an acked add missing, a value no
    /// client wrote, one of two same-context puts lost, a put refused as shutting down read.
    #[test]
    fn checkers_catch_what_they_are_named_for() {
        let mut history = History::default();
        history.add_attempted("s", 1);
        history.add_acked("s", 1);
        history.add_attempted("s", 2);
        history.add_attempted("r", 3);
        history.add_refused("r", 3);
        history.final_read("r", vec![encode_set(&BTreeSet::from([3]))]);
        history.final_read("s", vec![encode_set(&BTreeSet::from([2, 9]))]);
        history.write_attempted("p", b"a");
        history.write_attempted("p", b"b");
        history.pair_put("p", 0, b"a", true);
        history.pair_put("p", 1, b"b", true);
        history.final_read("p", vec![b"a".to_vec()]);
        let found: BTreeSet<&str> = history.finish().iter().map(|v| v.checker).collect();
        assert_eq!(
            found,
            BTreeSet::from([
                checker::LOST_ADD,
                checker::PHANTOM,
                checker::SAME_CONTEXT,
                checker::REFUSED_APPLIED
            ])
        );
    }
}
