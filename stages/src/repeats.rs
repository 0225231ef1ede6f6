//! Counting repeated events so that each is warned of at its 1st, 10th, 100th... occurrence
//! rather than at every one: a peer refusing our handshake (a wrong secret) is redialled
//! every backoff, and a node with the wrong secret drew about six warnings a second.

use std::collections::BTreeMap;

/// Counts of repeated events by key; says when one is worth a warning.
#[derive(Debug, Default)]
pub(crate) struct Repeats(BTreeMap<String, u64>);

impl Repeats {
    /// Keys kept: past this the counts start over (callers' keys are bounded by the members,
    /// times the kinds of refusal on each side: 64 was passed by a cluster of 33 nodes once
    /// keys were per kind; this bounds a caller that is wrong about that).
    const MAX_KEYS: usize = 1024;

    /// Counts one more `key`; its count when that is 1 or a power of ten (warn then), else
    /// `None` (log at debug).
    pub(crate) fn note(&mut self, key: &str) -> Option<u64> {
        if self.0.len() >= Self::MAX_KEYS && !self.0.contains_key(key) {
            self.0.clear();
        }
        let count = self.0.entry(key.to_string()).or_insert(0);
        *count += 1;
        let mut power = 1;
        while power < *count {
            power *= 10;
        }
        (power == *count).then_some(*count)
    }

    /// Starts every count whose key begins with `prefix` over (what they counted stopped
    /// happening: a peer's refusals of each kind, once its handshake worked).
    pub(crate) fn forget_all(&mut self, prefix: &str) {
        self.0.retain(|key, _| !key.starts_with(prefix));
    }
}
