//! The object cache: the decoded version sets of recently read keys, kept beside
//! the engine so a hot key's read-before-write and its gets skip the engine's lookup and the
//! decoding of its bytes (issue 12: on a loaded node they were a sixth of the loop thread's
//! time, most of it in the memtable's skiplist, which keeps every version of a hot key until
//! it is flushed).
//!
//! One [`CacheStripe`] lives inside each of the store's key-lock stripes, so the cache changes
//! only under the lock that orders every read-modify-write of its keys: whenever that lock is
//! free an entry is what the engine holds for its key (refreshed after the engine accepted a
//! write, removed with it; a put or a replica merge moves the set out and puts the new one,
//! or the unchanged one, back, or removes the entry, before it lets go), and nothing about it
//! can race. Each stripe keeps its share of the byte budget and evicts in admission order
//! (FIFO: no bookkeeping on a hit, and a key rewritten keeps its place, which for a
//! write-heavy hot set is as good as recency).

use crate::versioning::VersionSet;
use std::collections::VecDeque;

/// Bytes an entry costs beyond its key and encoded set: its slot in the map, the FIFO's key
/// copy and the decoded set's allocations (versions, clocks), roughly. Counted so a budget of
/// many small entries is not overrun several times over.
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// A cached object: its versions and the Merkle hash of its stored bytes (a write needs the
/// old hash to update the partition's tree, and the bytes are no longer read).
#[derive(Debug)]
pub struct Cached {
    /// The versions the engine holds for the key.
    pub set: VersionSet,
    /// `merkle::object_hash` of the key and its stored bytes.
    pub hash: u64,
    /// What it counts against the budget.
    cost: usize,
    /// When it entered (its ticket in `order`).
    admitted: u64,
}

/// The entries by stored key. Hashed, not ordered: every read and write looks its key up
/// here (a `BTreeMap`'s walk of key comparisons was 3 % of a 3-node cluster's CPU), and
/// eviction follows the stripe's own FIFO. It offers lookups only, so nothing can walk it in
/// the hash's order (STYLE 20; `stages/tests/tidy.rs` holds this file to it).
#[derive(Default)]
struct Lookup(std::collections::HashMap<Vec<u8>, Cached>); // never iterated (STYLE 20)

impl Lookup {
    fn get(&self, stored: &[u8]) -> Option<&Cached> {
        self.0.get(stored)
    }

    fn get_mut(&mut self, stored: &[u8]) -> Option<&mut Cached> {
        self.0.get_mut(stored)
    }

    fn contains_key(&self, stored: &[u8]) -> bool {
        self.0.contains_key(stored)
    }

    fn insert(&mut self, stored: Vec<u8>, cached: Cached) {
        self.0.insert(stored, cached);
    }

    fn remove(&mut self, stored: &[u8]) -> Option<Cached> {
        self.0.remove(stored)
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One stripe's part of the cache.
#[derive(Default)]
pub struct CacheStripe {
    /// Stored key (partition, segment, key) → its cached object.
    entries: Lookup,
    /// Keys in admission order, for eviction, each with its admission ticket: a key removed
    /// and admitted again has a new ticket, so its old place in the queue is recognised as
    /// stale (skipped at the front, dropped when the queue is compacted) and never evicts
    /// the new entry early.
    order: VecDeque<(u64, Vec<u8>)>,
    /// The next admission ticket.
    next_ticket: u64,
    /// Bytes counted against the budget by the entries.
    bytes: usize,
    /// This stripe's share of `[storage] object_cache_mib`.
    budget: usize,
}

/// Sizes only: the entries' order is the hash's, which no output should show.
impl std::fmt::Debug for CacheStripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStripe")
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl CacheStripe {
    /// A stripe holding at most `budget` bytes (0: caches nothing).
    pub fn new(budget: usize) -> CacheStripe {
        CacheStripe {
            budget,
            ..CacheStripe::default()
        }
    }

    /// The cached object stored under `stored`, if any.
    pub fn get(&self, stored: &[u8]) -> Option<&Cached> {
        self.entries.get(stored)
    }

    /// Records that the engine now holds `set` (whose stored bytes hash to `hash`, and are
    /// `encoded_len` long) under `stored`.
    pub fn insert(&mut self, stored: &[u8], set: VersionSet, hash: u64, encoded_len: usize) {
        let cost = stored.len() + encoded_len + ENTRY_OVERHEAD_BYTES;
        if cost > self.budget {
            self.remove(stored);
            return;
        }
        match self.entries.get_mut(stored) {
            Some(old) => {
                self.bytes = self.bytes - old.cost + cost;
                old.set = set;
                old.hash = hash;
                old.cost = cost;
            }
            None => {
                let admitted = self.next_ticket;
                self.next_ticket += 1;
                let entry = Cached {
                    set,
                    hash,
                    cost,
                    admitted,
                };
                self.entries.insert(stored.to_vec(), entry);
                self.order.push_back((admitted, stored.to_vec()));
                self.bytes += cost;
            }
        }
        self.evict();
    }

    /// [`CacheStripe::insert`] for a key already cached only: a write refreshes its entry,
    /// but does not admit a key nobody read before it (a bulk load of a million keys would
    /// otherwise fill the cache with keys never touched again; a key is admitted by its
    /// first read, a put's read-before-write included, so an updated key is cached from its
    /// second write on).
    pub fn refresh(&mut self, stored: &[u8], set: VersionSet, hash: u64, encoded_len: usize) {
        if self.entries.contains_key(stored) {
            self.insert(stored, set, hash, encoded_len);
        }
    }

    /// The cached object under `stored` with its set moved out (left empty), for a write
    /// that may replace it: the caller then [`CacheStripe::refresh`]es the entry, puts the
    /// set back unchanged ([`CacheStripe::restore`]) or, if the write fails,
    /// [`CacheStripe::remove`]s it, before it lets go of the stripe's lock. Saves a put and a
    /// replica merge a copy of the set (the entry keeps its place in the eviction order).
    pub fn take(&mut self, stored: &[u8]) -> Option<(VersionSet, u64)> {
        self.entries
            .get_mut(stored)
            .map(|cached| (std::mem::take(&mut cached.set), cached.hash))
    }

    /// Puts back a set [`CacheStripe::take`] moved out and the caller did not change (the
    /// engine still holds it, so the hash and cost stand).
    pub fn restore(&mut self, stored: &[u8], set: VersionSet) {
        if let Some(cached) = self.entries.get_mut(stored) {
            cached.set = set;
        }
    }

    /// Records that the engine no longer holds anything under `stored`.
    pub fn remove(&mut self, stored: &[u8]) {
        if let Some(old) = self.entries.remove(stored) {
            self.bytes -= old.cost;
        }
    }

    /// Forgets everything (after a panic while the stripe's lock was held, when an entry may
    /// no longer be what the engine holds).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Bytes counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `ticket` is still `stored`'s place in the queue.
    fn current(&self, ticket: u64, stored: &[u8]) -> bool {
        self.entries
            .get(stored)
            .is_some_and(|entry| entry.admitted == ticket)
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((ticket, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.current(ticket, &oldest) {
                self.remove(&oldest);
            }
        }
        // Places of removed keys pile up in `order` under churn: compact it when it is mostly
        // such leftovers.
        if self.order.len() > 2 * self.entries.len() + 16 {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|(ticket, key)| self.current(*ticket, key));
            self.order = order;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::VClock;
    use crate::NodeId;

    fn set(value: &[u8]) -> VersionSet {
        let mut set = VersionSet::new();
        let put = set.coordinate_put(
            &NodeId::new("n1"),
            &VClock::new(),
            Some(value.to_vec()),
            0,
            10,
        );
        assert!(put.is_ok());
        set
    }

    /// Goal: an entry is what was last inserted for its key, and gone once removed; a refresh
    /// updates a cached key and admits no other.
    #[test]
    fn holds_the_last_set_written_until_removed() {
        let mut stripe = CacheStripe::new(10_000);
        stripe.insert(b"k", set(b"one"), 1, 10);
        stripe.insert(b"k", set(b"two"), 2, 10);
        let cached = stripe.get(b"k").expect("cached");
        assert_eq!((cached.set.clone(), cached.hash), (set(b"two"), 2));
        assert_eq!(stripe.bytes(), 1 + 10 + ENTRY_OVERHEAD_BYTES);
        stripe.remove(b"k");
        assert!(stripe.get(b"k").is_none());
        assert_eq!(stripe.bytes(), 0);
        stripe.refresh(b"k", set(b"three"), 3, 10);
        assert!(stripe.get(b"k").is_none(), "a refresh admits no new key");
        stripe.insert(b"k", set(b"three"), 3, 10);
        stripe.refresh(b"k", set(b"four"), 4, 10);
        assert_eq!(stripe.get(b"k").map(|c| c.hash), Some(4));
    }

    /// Goal: the budget is never exceeded: the oldest inserted keys go first, and an entry
    /// larger than the whole budget is not kept (nor is an older one left behind for it).
    #[test]
    fn evicts_oldest_first_and_stays_within_its_budget() {
        let cost = 2 + 40 + ENTRY_OVERHEAD_BYTES;
        let mut stripe = CacheStripe::new(3 * cost);
        for key in [b"k1", b"k2", b"k3", b"k4"] {
            stripe.insert(key, set(b"v"), 0, 40);
            assert!(stripe.bytes() <= 3 * cost);
        }
        assert!(stripe.get(b"k1").is_none());
        assert!(stripe.get(b"k2").is_some() && stripe.get(b"k4").is_some());
        stripe.insert(b"k2", set(b"v"), 0, 10 * cost);
        assert!(stripe.get(b"k2").is_none(), "too large for the budget");
        assert!(stripe.bytes() <= 3 * cost);
        let mut off = CacheStripe::new(0);
        off.insert(b"k", set(b"v"), 0, 1);
        assert!(off.get(b"k").is_none());
    }

    /// Goal: keys removed while queued for eviction do not pile up in the queue, nor does
    /// one key removed and admitted again and again; and its stale place never evicts the
    /// entry it has now.
    #[test]
    fn churn_of_removed_keys_does_not_grow_the_queue() {
        let mut stripe = CacheStripe::new(1 << 20);
        for i in 0..10_000u32 {
            let key = i.to_be_bytes();
            stripe.insert(&key, set(b"v"), 0, 10);
            stripe.remove(&key);
        }
        assert!(stripe.order.len() <= 16 + 2, "{}", stripe.order.len());
        for _ in 0..10_000 {
            stripe.insert(b"again", set(b"v"), 0, 10);
            stripe.remove(b"again");
        }
        stripe.insert(b"again", set(b"v"), 0, 10);
        assert!(stripe.order.len() <= 16 + 2, "{}", stripe.order.len());

        let cost = 2 + 40 + ENTRY_OVERHEAD_BYTES;
        let mut small = CacheStripe::new(2 * cost);
        small.insert(b"k1", set(b"v"), 0, 40);
        small.remove(b"k1");
        small.insert(b"k2", set(b"v"), 0, 40);
        small.insert(b"k1", set(b"v"), 0, 40); // admitted again, behind k2
        small.insert(b"k3", set(b"v"), 0, 40); // evicts the oldest live entry: k2
        assert!(small.get(b"k2").is_none());
        assert!(small.get(b"k1").is_some() && small.get(b"k3").is_some());
    }
}
