//! The load tool's memory of contexts: the last context any worker got for each key, shared
//! by every worker of the run, so an update supersedes what the run last read or wrote there.
//!
//! Per worker it was a 32-thread run's largest cost: a key's next update came from another
//! worker, whose context was older, so nearly every put added a sibling (94 % of reads saw
//! siblings, sets grew to `max_siblings` = 32 and each put then refused with
//! `TooManySiblings` cost a read and a second write). One client process that remembers its
//! contexts, as a Dynamo client library does, sees what it wrote; concurrent writers of one key
//! still make siblings, as they must.

use crate::client::Context;
use std::collections::HashMap;
use std::sync::Mutex;

/// Contexts remembered in all (one per key touched); a shard is cleared when its part is full.
const CONTEXT_CACHE_KEYS: usize = 100_000;

/// Shards, so 32 workers rarely wait on one another's lock.
const SHARDS: usize = 64;

/// The shared context cache.
pub struct Contexts {
    shards: Vec<Mutex<HashMap<u64, Context>>>,
}

impl Default for Contexts {
    fn default() -> Contexts {
        Contexts {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Contexts {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Context>> {
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last context remembered for `key` (a slow worker's older read can replace a newer
    /// one; the put then adds a sibling, as a client with that context would).
    pub fn get(&self, key: u64) -> Option<Context> {
        self.shard(key).get(&key).cloned()
    }

    /// Remembers `context` as the one to write `key` with next.
    pub fn remember(&self, key: u64, context: Context) {
        let mut shard = self.shard(key);
        if shard.len() >= CONTEXT_CACHE_KEYS / SHARDS && !shard.contains_key(&key) {
            shard.clear();
        }
        shard.insert(key, context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: what one worker remembers another finds, the last remembered wins, and the cache
    /// stays bounded.
    #[test]
    fn workers_share_the_last_context_and_the_cache_stays_bounded() {
        let contexts = Contexts::default();
        contexts.remember(7, Context(b"old".to_vec()));
        contexts.remember(7, Context(b"new".to_vec()));
        let seen = std::thread::scope(|s| s.spawn(|| contexts.get(7)).join());
        assert_eq!(seen.ok().flatten(), Some(Context(b"new".to_vec())));
        for key in 0..(3 * CONTEXT_CACHE_KEYS as u64) {
            contexts.remember(key, Context(vec![1]));
        }
        let held: usize = contexts
            .shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum();
        assert!(held <= CONTEXT_CACHE_KEYS, "{held}");
    }
}
