//! One storage test suite, run against both engines (fjall, the product's, and memory, the
//! simulator's), so the simulator's engine behaves as the product's does; then the memory
//! engine's faults and the object cache. The machine's group commit is in `machine_tests.rs`,
//! its requests cut into steps in `step_tests.rs`.

use super::*;
use crate::event::Hint;
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use std::sync::Arc;

pub(super) const LIMITS: VersionLimits = VersionLimits {
    max_clock_entries: 10,
    max_siblings: 3,
    max_frame_bytes: 4 << 20,
};

/// Q for the tests' stores.
pub(super) const Q: u32 = 8;

pub(super) fn node() -> NodeId {
    NodeId::new("n1")
}

/// A store over each engine; the temp dir (if any) lives as long as the store.
pub(super) fn engines() -> Vec<(&'static str, Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let fjall = Store::open(dir.path(), &node(), Q, 0).expect("fjall opens");
    let memory = Store::with_engine(MemoryEngine::new(), &node(), Q, 0).expect("memory opens");
    vec![("fjall", fjall, Some(dir)), ("memory", memory, None)]
}

pub(super) fn put(
    store: &Store,
    key: &[u8],
    context: &VClock,
    value: &[u8],
) -> (VersionSet, Version) {
    store
        .coordinate_put(key, context, Some(value.to_vec()), 1, &LIMITS)
        .expect("put")
}

/// A set holding one blind write of `value` coordinated by another node (`n2`), as a
/// replica write brings it.
pub(super) fn written_by_n2(value: &[u8], now_ms: u64) -> VersionSet {
    let mut set = VersionSet::new();
    set.coordinate_put(
        &NodeId::new("n2"),
        &VClock::new(),
        Some(value.to_vec()),
        now_ms,
        10,
    )
    .expect("a version");
    set
}

/// Goal: an absent key reads as no versions; a put creates one version with a dot of this
/// node's actor; a put with the returned context replaces it; blind puts add siblings up to the limit
/// and past it fail with nothing stored (and the object cache, whose set the refused put had
/// moved out, still reads as what is stored). Both engines.
#[test]
fn puts_version_and_bound_siblings_on_both_engines() {
    for (name, store, _dir) in engines() {
        assert!(store.read(b"k").expect("read").is_empty(), "{name}");
        let (set, version) = put(&store, b"k", &VClock::new(), b"a");
        assert_eq!(set.len(), 1, "{name}");
        assert_eq!(version.dot.node, store.actor(), "{name}");
        assert_eq!(actor_node(&store.actor()), "n1", "{name}");
        let (set, _) = put(&store, b"k", &set.context(), b"b");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"b"[..]],
            "{name}"
        );
        put(&store, b"k", &VClock::new(), b"c");
        put(&store, b"k", &VClock::new(), b"d");
        let refused = store.coordinate_put(b"k", &VClock::new(), Some(b"e".to_vec()), 1, &LIMITS);
        assert!(
            matches!(
                refused,
                Err(StorageError::TooManySiblings { count: 4, max: 3 })
            ),
            "{name}"
        );
        assert_eq!(
            store.read(b"k").expect("read").len(),
            3,
            "{name}: nothing stored"
        );
    }
}

/// Goal: a replica merge is idempotent and keeps what neither side dominates.
#[test]
fn merges_are_idempotent_on_both_engines() {
    for (name, store, _dir) in engines() {
        let other = Store::with_engine(MemoryEngine::new(), &NodeId::new("n2"), Q, 0).expect("n2");
        let (theirs, _) = other
            .coordinate_put(b"k", &VClock::new(), Some(b"x".to_vec()), 1, &LIMITS)
            .expect("put");
        put(&store, b"k", &VClock::new(), b"a");
        let once = store.merge(b"k", &theirs).expect("merge");
        let twice = store.merge(b"k", &theirs).expect("merge again");
        assert_eq!(once, twice, "{name}");
        assert_eq!(once.len(), 2, "{name}: concurrent versions both kept");
    }
}

/// Goal: hints are kept apart from objects, read together with them for replica reads,
/// scanned in order with resumption, counted per target (and in all, without a scan), and
/// deleted only if unchanged.
#[test]
fn hints_round_trip_on_both_engines() {
    for (name, store, _dir) in engines() {
        let (set, _) = put(&store, b"k", &VClock::new(), b"a");
        let target = NodeId::new("n3");
        store.store_hint(&target, b"h1", &set).expect("hint");
        store.store_hint(&target, b"h2", &set).expect("hint");
        store
            .store_hint(&NodeId::new("n4"), b"h2", &set)
            .expect("hint");
        store
            .store_hint(&target, b"h1", &set)
            .expect("a hint again");
        assert_eq!(
            store.hints_held(),
            3,
            "{name}: a merged hint is not a new one"
        );
        assert!(
            store.read(b"h1").expect("read").is_empty(),
            "{name}: hints are not objects"
        );
        assert_eq!(store.read_with_hints(b"h1").expect("read"), set, "{name}");
        let first = store.hints_batch(None, 2).expect("batch");
        assert_eq!(first.len(), 2, "{name}");
        let rest = store
            .hints_batch(Some(&first[1].hint_key), 10)
            .expect("batch");
        assert_eq!(rest.len(), 1, "{name}: resumes after the cursor");
        let counts = store.pending_hints().expect("count");
        assert_eq!(counts.get(&target), Some(&2), "{name}");
        let stale = Hint {
            versions: VersionSet::new(),
            ..first[0].clone()
        };
        assert!(
            !store.delete_hint_if_unchanged(&stale).expect("delete"),
            "{name}"
        );
        assert!(
            store.delete_hint_if_unchanged(&first[0]).expect("delete"),
            "{name}"
        );
        assert_eq!(
            store.pending_hints().expect("count").values().sum::<u64>(),
            2,
            "{name}"
        );
        assert_eq!(
            store.hints_held(),
            2,
            "{name}: the kept count agrees with a scan"
        );
    }
}

/// The memory engine, counting the scans of one keyspace (and those that resumed after a
/// key).
pub(super) struct CountingScans {
    inner: Arc<MemoryEngine>,
    space: Space,
    scans: std::sync::atomic::AtomicUsize,
    pub(super) resumed: std::sync::atomic::AtomicUsize,
}

impl CountingScans {
    pub(super) fn of(space: Space) -> Arc<CountingScans> {
        Arc::new(CountingScans {
            inner: MemoryEngine::new(),
            space,
            scans: Default::default(),
            resumed: Default::default(),
        })
    }

    pub(super) fn scans(&self) -> usize {
        self.scans.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Engine for CountingScans {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(space, key)
    }
    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.inner.insert(space, key, value)
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        self.inner.remove(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<engine::Entries, StorageError> {
        if space == self.space {
            self.scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if after.is_some() {
                self.resumed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.inner.scan(space, prefix, after, limit)
    }
    fn write_out(&self) -> Result<(), StorageError> {
        self.inner.write_out()
    }
    fn instance(&self) -> Result<Option<String>, StorageError> {
        self.inner.instance()
    }
    fn renew_instance(&self) -> Result<(), StorageError> {
        self.inner.renew_instance()
    }
    fn persist(&self) -> Result<std::time::Duration, StorageError> {
        self.inner.persist()
    }
    fn write_back(&self) -> Result<(), StorageError> {
        self.inner.write_back()
    }
}

/// Goal: with no hint held (the exact count says so), handoff's every-tick read of the next
/// hints and the per-node count read nothing from the engine: after a delivered backlog its
/// tombstones would make each such scan walk thousands of deleted hints. Once a hint is
/// held, both find it. Method: the memory engine behind a wrapper that counts hint scans.
#[test]
fn no_hint_held_means_no_scan_of_the_hints_keyspace() {
    let engine = CountingScans::of(Space::Hints);
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    let scans = || engine.scans();
    let at_open = scans();

    assert!(store.hints_batch(None, 100).expect("batch").is_empty());
    assert!(store.pending_hints().expect("count").is_empty());
    assert_eq!(scans(), at_open, "nothing held: nothing scanned");

    let (set, _) = put(&store, b"k", &VClock::new(), b"a");
    store
        .store_hint(&NodeId::new("n3"), b"h", &set)
        .expect("hint");
    let batch = store.hints_batch(None, 100).expect("batch");
    assert_eq!(batch.len(), 1, "a held hint is found");
    assert_eq!(store.pending_hints().expect("count").len(), 1);

    assert!(store.delete_hint_if_unchanged(&batch[0]).expect("delete"));
    let after_delete = scans();
    assert!(store.hints_batch(None, 100).expect("batch").is_empty());
    assert_eq!(scans(), after_delete, "all delivered: no scan again");
}

/// Goal: an engine that holds another node's data is refused with an error naming both.
#[test]
fn another_nodes_data_is_refused_on_both_engines() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(Store::open(dir.path(), &node(), Q, 0).expect("opens"));
    let error = Store::open(dir.path(), &NodeId::new("n9"), Q, 0)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("n1"), "{error}");
    let memory = MemoryEngine::new();
    drop(Store::with_engine(memory.clone(), &node(), Q, 0).expect("opens"));
    assert!(Store::with_engine(memory, &NodeId::new("n9"), Q, 0).is_err());
}

/// Goal: a replica merge the engine refuses leaves the object cache reading what is stored
/// (the merge moved the cached set out), and a merge that changes nothing puts it back.
#[test]
fn a_refused_or_idle_merge_leaves_the_cached_set_as_stored() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0)
        .expect("opens")
        .with_object_cache(1 << 20);
    let (stored, _) = put(&store, b"k", &VClock::new(), b"a");
    assert_eq!(store.read(b"k").expect("read, now cached"), stored);
    assert!(store.object_cache_bytes() > 0, "the read cached the key");
    assert_eq!(store.merge(b"k", &stored).expect("idle merge"), stored);
    assert_eq!(store.read(b"k").expect("read"), stored, "put back");
    engine.fail_flushes(1);
    assert!(store.persist().is_err());
    let incoming = written_by_n2(b"b", 1);
    assert!(
        store.merge(b"k", &incoming).is_err(),
        "a poisoned engine refuses"
    );
    assert_eq!(
        store.read(b"k").expect("read"),
        stored,
        "nothing lost from the cache"
    );
}

/// Goal: what was flushed survives a crash and what was not is lost, exactly (the
/// simulator's model of power loss); a failed flush keeps the writes pending and poisons the
/// engine, as fjall's: every later write and flush is refused until the process restarts,
/// and the first flush after that makes them durable. The store reports that state (what
/// `admin stats` and `/health` show) while it lasts.
#[test]
fn memory_engine_crash_loses_exactly_the_unflushed_writes() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    put(&store, b"flushed", &VClock::new(), b"a");
    store.persist().expect("flush");
    put(&store, b"unflushed", &VClock::new(), b"b");
    assert_eq!(engine.unflushed_writes(), 1);
    engine.lose_power();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("reopens");
    assert_eq!(store.read(b"flushed").expect("read").len(), 1);
    assert!(store.read(b"unflushed").expect("read").is_empty());

    assert_eq!(
        store.failure(),
        None,
        "a healthy store has no failure to report"
    );
    engine.fail_flushes(1);
    put(&store, b"retried", &VClock::new(), b"c");
    assert!(matches!(
        store.persist(),
        Err(StorageError::Simulated { .. })
    ));
    assert!(matches!(
        store.persist(),
        Err(StorageError::JournalFailed { .. })
    ));
    assert!(engine.poisoned());
    let refused = store.coordinate_put(b"refused", &VClock::new(), Some(b"d".to_vec()), 1, &LIMITS);
    assert!(matches!(refused, Err(StorageError::JournalFailed { .. })));
    let failure = store.failure().expect("a poisoned store reports why");
    assert!(
        failure.contains("refused until the node restarts"),
        "{failure}"
    );
    engine.restart();
    assert_eq!(store.failure(), None, "the poison goes with the process");
    store
        .persist()
        .expect("the first flush after the restart succeeds");
    engine.lose_power();
    assert_eq!(store.read(b"retried").expect("read").len(), 1);
}

/// Goal: an overwrite (the Redis door's `SET`) supersedes every version stored, whatever its
/// context covers, so repeated blind overwrites leave one value, where blind puts leave
/// siblings; versions merged in from another coordinator are superseded by the next
/// overwrite too. Both engines.
#[test]
fn overwrites_supersede_every_stored_version_on_both_engines() {
    for (name, store, _dir) in engines() {
        put(&store, b"blind", &VClock::new(), b"a");
        put(&store, b"blind", &VClock::new(), b"b");
        assert_eq!(store.read(b"blind").expect("read").len(), 2, "{name}");

        let overwrite = |value: &[u8]| {
            store
                .coordinate_overwrite(b"k", &VClock::new(), Some(value.to_vec()), 1, &LIMITS)
                .expect("overwrite")
        };
        overwrite(b"a");
        let (set, _) = overwrite(b"b");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"b"[..]],
            "{name}"
        );

        // A concurrent version from another coordinator: a sibling until the next overwrite.
        let other = written_by_n2(b"x", 2);
        assert_eq!(store.merge(b"k", &other).expect("merge").len(), 2, "{name}");
        let (set, _) = overwrite(b"c");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"c"[..]],
            "{name}"
        );
    }
}

/// Goal: the object cache never disagrees with the engine. With a cache small enough to evict
/// all the time, every read through the caching store equals a cache-less store's read of the
/// same engine, after coordinated puts, merges from another node and purges, and the cache
/// keeps within its budget.
#[test]
fn the_object_cache_always_agrees_with_the_engine() {
    let engine = MemoryEngine::new();
    let budget = 256 * 600; // about one entry per lock stripe
    let cached = Store::with_engine(engine.clone(), &node(), Q, 0)
        .expect("opens")
        .with_object_cache(budget);
    let uncached = Store::with_engine(engine, &node(), Q, 0)
        .expect("opens")
        .with_object_cache(0);
    let other = NodeId::new("n2");
    for step in 0..600u32 {
        let key = format!("key-{}", step % 40).into_bytes();
        let seen = cached.read(&key).expect("read");
        // Every key sees each kind of step in turn (rounds of 40 steps).
        match (step / 40) % 5 {
            0 | 1 => {
                put(
                    &cached,
                    &key,
                    &seen.context(),
                    format!("v{step}").as_bytes(),
                );
            }
            2 => {
                let mut incoming = VersionSet::new();
                let written = incoming.coordinate_put(&other, &VClock::new(), Some(vec![1]), 1, 10);
                assert!(written.is_ok());
                cached.merge(&key, &incoming).expect("merge");
            }
            3 if !seen.is_empty() => {
                assert!(cached.purge_if_unchanged(&key, &seen).expect("purge"));
            }
            _ => {
                put(&cached, &key, &VClock::new(), b"blind");
            }
        }
        assert_eq!(
            cached.read(&key).expect("cached read"),
            uncached.read(&key).expect("engine read"),
            "step {step}"
        );
        assert!(cached.object_cache_bytes() <= budget);
    }
    assert!(uncached.object_cache_bytes() == 0);
}

/// Goal: a crash gives the node a new actor, so that no context it hands out (a put's write
/// context, a read's) covers a write the crash took here that another replica still holds, and
/// a client's next put keeps that write as a sibling instead of superseding it unseen.
/// Fails with one actor per node: the new dot's counter, above the lost one, covers it.
#[test]
fn a_crash_gives_the_node_a_new_actor_so_no_context_covers_the_writes_it_lost() {
    let engine = MemoryEngine::new();
    let first = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let first_actor = first.actor();
    // x is replicated (`replica` holds its set) but never flushed here.
    let (replica, lost) = put(&first, b"k", &VClock::new(), b"x");
    drop(first);
    engine.lose_power();
    let second = Store::with_engine(engine.clone(), &node(), Q, 2_000).expect("reopens");
    assert_ne!(second.actor(), first_actor, "a crash ends the actor");
    assert_eq!(actor_node(&second.actor()), "n1");
    assert!(
        second.read(b"k").expect("read").is_empty(),
        "x is lost here"
    );

    let (set, version) = put(&second, b"k", &VClock::new(), b"y");
    let write_context = set.write_context(&version);
    assert!(!write_context.covers(&lost.dot), "a put's context covers x");
    assert!(
        !set.context().covers(&lost.dot),
        "a read's context covers x"
    );
    let (after, _) = put(&second, b"k", &write_context, b"z");
    let mut merged = replica.clone();
    merged.merge(&after);
    let mut values: Vec<_> = merged.live_values().collect();
    values.sort();
    assert_eq!(values, vec![&b"x"[..], &b"z"[..]], "x survives beside z");
}

/// Goal: a clean close keeps the actor over a restart (its dots are all on disk); a restart
/// after a run that did not close cleanly takes a new one (also after a power loss: the open
/// that kept the actor flushed the marker's removal), even with the clock set back; a
/// directory without an actor (new, or wiped) takes a new one, named by the clock.
#[test]
fn a_clean_close_keeps_the_actor_and_a_crash_or_a_wipe_never_does() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let actor = store.actor();
    assert_eq!(actor.as_str(), "n1@1000000");
    put(&store, b"k", &VClock::new(), b"a");
    store.close_cleanly().expect("closes");
    drop(store);
    let kept = Store::with_engine(engine.clone(), &node(), Q, 2_000).expect("reopens");
    assert_eq!(kept.actor(), actor, "a clean close keeps the actor");
    assert_eq!(kept.actor_origin(), ActorOrigin::Kept);
    drop(kept); // no clean close: a crash, and a power loss: the open flushed the marker away
    engine.lose_power();
    let crashed = Store::with_engine(engine.clone(), &node(), Q, 3_000).expect("reopens");
    let crashed_actor = crashed.actor();
    assert_ne!(crashed_actor, actor, "a crash takes a new actor");
    assert_eq!(crashed.actor_origin(), ActorOrigin::UncleanStop);
    drop(crashed);
    let clock_back = Store::with_engine(engine, &node(), Q, 500).expect("reopens");
    assert!(
        clock_back.actor() != crashed_actor && clock_back.actor() != actor,
        "a clock set back still names a new actor: {}",
        clock_back.actor()
    );
    // A wiped directory knows no earlier start: its actor is new by the clock alone.
    let wiped = Store::with_engine(MemoryEngine::new(), &node(), Q, 4_000).expect("opens");
    assert!(
        ![actor, crashed_actor, clock_back.actor()].contains(&wiped.actor()),
        "a wiped directory takes a new actor"
    );
    assert_eq!(wiped.actor_origin(), ActorOrigin::NewDirectory);
}

/// Goal: the longest node name a config accepts, at the latest epoch, still makes an actor
/// that replicas accept in dots and clocks (they check `is_valid_actor`), and no longer name
/// passes.
#[test]
fn the_longest_node_name_makes_an_actor_replicas_accept() {
    use crate::node_id::{MAX_ACTOR_BYTES, MAX_NODE_ID_BYTES};
    let node = NodeId::new("n".repeat(MAX_NODE_ID_BYTES));
    assert!(node.is_valid());
    let store = Store::with_engine(MemoryEngine::new(), &node, Q, u64::MAX / 1000).expect("opens");
    assert!(store.actor().is_valid_actor(), "{}", store.actor());
    assert!(
        !store.actor().is_valid(),
        "an actor is longer than a member's name may be"
    );
    assert!(!NodeId::new("n".repeat(MAX_ACTOR_BYTES + 1)).is_valid_actor());
}

/// Goal: after a local removal of a set holding the current actor's counters, a later put of
/// the key never makes a dot made before, nor one an old context covers: after a purge the
/// floor (a high-water mark of the actor's dots) is above it, a partition's drop renews the actor (the dropped versions live on at the
/// owners, and a new dot of the old actor would cover them); a removal of another actor's set
/// changes neither; a clean restart keeps the renewed actor.
/// Fails without `made_dot`: the put after the purge makes the same dot again.
#[test]
fn a_removal_of_the_actors_versions_never_lets_a_dot_be_made_twice() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let actor = store.actor();
    let (set, deleted) = store
        .coordinate_put(b"k", &VClock::new(), None, 1, &LIMITS)
        .expect("delete");
    let old_context = set.context();
    assert!(store.purge_if_unchanged(b"k", &set).expect("purges"));
    assert_eq!(store.actor(), actor, "a purge keeps the actor");
    let (set, again) = put(&store, b"k", &VClock::new(), b"again");
    assert_ne!(again.dot, deleted.dot, "a dot made twice");
    assert!(
        !old_context.covers(&again.dot),
        "an old context covers the new write"
    );

    let partition_of =
        |key: &[u8]| crate::ring::partition_of_position(Q, crate::ring::key_position(key)).0;
    let dropped_context = set.context();
    let dropped = store
        .drop_partition(partition_of(b"k"), 100, || true)
        .expect("drops");
    assert_eq!(dropped, (1, true));
    let renewed = store.actor();
    assert_ne!(renewed, actor, "a drop renews the actor");
    let (set, back) = put(&store, b"k", &VClock::new(), b"back");
    assert_eq!(back.dot.node, renewed);
    assert_ne!(back.dot, again.dot, "a dot made twice");
    assert!(
        !dropped_context.covers(&back.dot),
        "an old context covers the new write"
    );
    assert!(
        !set.write_context(&back).covers(&again.dot),
        "the new write's context covers the dropped version the owners hold"
    );

    // Another actor's set, in another partition, dropped: nothing changes.
    let other_key = (0u32..)
        .map(|i| format!("j{i}").into_bytes())
        .find(|key| partition_of(key) != partition_of(b"k"))
        .expect("a key elsewhere");
    let other =
        Store::with_engine(MemoryEngine::new(), &NodeId::new("n2"), Q, 1_000).expect("n2 opens");
    let (theirs, _) = other
        .coordinate_put(&other_key, &VClock::new(), None, 1, &LIMITS)
        .expect("n2's delete");
    store.merge(&other_key, &theirs).expect("merge");
    let dropped = store
        .drop_partition(partition_of(&other_key), 100, || true)
        .expect("drops");
    assert_eq!(dropped, (1, true));
    assert_eq!(
        store.actor(),
        renewed,
        "another actor's set leaves the actor alone"
    );

    store.close_cleanly().expect("closes");
    drop(store);
    let reopened = Store::with_engine(engine, &node(), Q, 2_000).expect("reopens");
    assert_eq!(
        reopened.actor(),
        renewed,
        "a clean restart keeps the renewed actor"
    );
}
