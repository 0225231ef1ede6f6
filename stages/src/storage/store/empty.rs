//! What lets a partition this node no longer holds be looked at again without a scan while
//! nothing was written to it, and its drop resume where the last step stopped (see
//! [`EmptyWatch`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// `empty_as_of` before any drop found the partition empty.
const UNKNOWN: u64 = u64::MAX;

/// Per partition, the writes of objects counted since open, and that count when a drop pass
/// last found the partition empty (it reached the end with nothing written meanwhile).
///
/// Why: after a join, each old replica looks at every partition it handed away again every
/// `cleanup_delay`, for a stale coordinator's stray write: a final sync that streams the whole
/// partition to each replica, then a drop step. The partition is empty, but its range is full
/// of the engine's tombstones for the objects the drop removed, so each look was a scan over
/// thousands of them, on every old node, for as long as they lived. A loaded cluster's p99
/// stayed at about twice its level before the join for minutes after it (stop 44's
/// `benches/rebalance.sh` after phase; the background pool's worker doing those scans was 11 %
/// of n1's CPU). While the count has not moved since the partition was found empty, it still
/// is: the look answers from here.
///
/// A write is counted after the engine took it, so a scan that began after a counted write
/// sees that write; a write counted after a scan began moves the count and the next look
/// scans. Removals are not counted: they cannot make an empty partition hold anything.
/// Nothing is known at open.
///
/// It also keeps each partition's drop pass where it is: the last stored key a step looked at
/// and the count when the pass began. A step resumes after that key instead of scanning from
/// the partition's first key past the tombstones of every step before it (a partition of 15k
/// objects dropped 1024 at a time walked 100k of them). A write that lands behind the cursor
/// moves the count, so the pass that reaches the end does not call the partition empty and the
/// next one starts from its first key again.
pub(in crate::storage) struct EmptyWatch {
    /// Per partition, the object writes counted since open.
    writes: Vec<AtomicU64>,
    /// Per partition, `writes` when a drop pass last found it empty (`UNKNOWN`: never).
    empty_as_of: Vec<AtomicU64>,
    /// Per partition, the drop pass under way.
    cursors: Vec<Mutex<Option<DropPass>>>,
}

/// Where a drop step starts: after `after` (`None`: the partition's first key), in a pass
/// that began when the count was `as_of`.
#[derive(Clone)]
pub(in crate::storage) struct DropPass {
    /// The stored key the last step of the pass looked at last.
    pub(in crate::storage) after: Option<Vec<u8>>,
    /// The partition's write count when the pass began.
    pub(in crate::storage) as_of: u64,
}

impl EmptyWatch {
    /// A watch over `partitions` partitions, knowing nothing.
    pub(super) fn new(partitions: u32) -> EmptyWatch {
        EmptyWatch {
            writes: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            empty_as_of: (0..partitions).map(|_| AtomicU64::new(UNKNOWN)).collect(),
            cursors: (0..partitions).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn cursor(&self, partition: u32) -> Option<MutexGuard<'_, Option<DropPass>>> {
        // A key and a count, replaced whole: a panic cannot leave it half-changed.
        let cursor = self.cursors.get(partition as usize)?;
        Some(
            cursor
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Where the next drop step of `partition` starts: the pass under way, or a new one from
    /// the partition's first key as of the count now.
    pub(super) fn drop_pass(&self, partition: u32) -> DropPass {
        self.cursor(partition)
            .and_then(|cursor| cursor.clone())
            .unwrap_or_else(|| DropPass {
                after: None,
                as_of: self.count(partition),
            })
    }

    /// The drop step of `pass` looked up to the stored key `last`; the pass goes on after it.
    pub(super) fn drop_went_to(&self, partition: u32, pass: &DropPass, last: Vec<u8>) {
        if let Some(mut cursor) = self.cursor(partition) {
            *cursor = Some(DropPass {
                after: Some(last),
                as_of: pass.as_of,
            });
        }
    }

    /// The drop pass was stopped (the node holds the partition again): the next starts from
    /// the partition's first key.
    pub(super) fn drop_stopped(&self, partition: u32) {
        if let Some(mut cursor) = self.cursor(partition) {
            *cursor = None;
        }
    }

    /// The drop pass `pass` reached the partition's end, having removed every object it met
    /// (`complete`) or not. Returns whether the partition is empty now: a complete pass during
    /// which nothing was written to it. Then it is known empty until the next write.
    pub(super) fn drop_ended(&self, partition: u32, pass: &DropPass, complete: bool) -> bool {
        self.drop_stopped(partition);
        let empty = complete && self.count(partition) == pass.as_of;
        if empty {
            self.found_empty(partition, pass.as_of);
        }
        empty
    }

    /// An object of `partition` was written (call after the engine took it).
    pub(super) fn wrote(&self, partition: u32) {
        if let Some(count) = self.writes.get(partition as usize) {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The writes counted for `partition` so far: read before a scan, for
    /// [`EmptyWatch::found_empty`].
    pub(super) fn count(&self, partition: u32) -> u64 {
        self.writes
            .get(partition as usize)
            .map_or(0, |count| count.load(Ordering::SeqCst))
    }

    /// A scan from the partition's first key, begun when the count was `as_of`, found nothing.
    pub(super) fn found_empty(&self, partition: u32, as_of: u64) {
        if let Some(mark) = self.empty_as_of.get(partition as usize) {
            mark.store(as_of, Ordering::SeqCst);
        }
    }

    /// Whether `partition` is known to hold no object: found empty, and written to since by
    /// nothing. False for a partition number past Q.
    pub(super) fn known_empty(&self, partition: u32) -> bool {
        let index = partition as usize;
        match (self.empty_as_of.get(index), self.writes.get(index)) {
            (Some(mark), Some(count)) => {
                let mark = mark.load(Ordering::SeqCst);
                mark != UNKNOWN && mark == count.load(Ordering::SeqCst)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a partition is known empty only from a scan that found nothing until the next
    /// write, and a write counted while the scan ran keeps it unknown.
    #[test]
    fn a_partition_is_known_empty_until_its_next_write() {
        let watch = EmptyWatch::new(4);
        assert!(!watch.known_empty(1), "nothing is known at open");
        let as_of = watch.count(1);
        watch.found_empty(1, as_of);
        assert!(watch.known_empty(1));
        assert!(!watch.known_empty(2), "only the partition scanned");
        watch.wrote(1);
        assert!(!watch.known_empty(1), "a write since the scan");
        // A scan during which a write landed: its mark is older than the count.
        let as_of = watch.count(1);
        watch.wrote(1);
        watch.found_empty(1, as_of);
        assert!(!watch.known_empty(1));
        assert!(!watch.known_empty(9), "past Q: never known");
        watch.wrote(9); // ignored, no panic
    }
}
