//! The store's partition layout and Merkle trees: format migration, Q checks, rebuilds, and
//! trees that agree exactly when the data does.

use super::*;
use crate::ring::{key_position, partition_of_position};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use std::sync::Arc;

const Q: u32 = 8;
const LIMITS: VersionLimits = VersionLimits {
    max_clock_entries: 10,
    max_siblings: 3,
    max_frame_bytes: 4 << 20,
};

fn node() -> NodeId {
    NodeId::new("n1")
}

fn store() -> Store {
    Store::with_engine(MemoryEngine::new(), &node(), Q, 0).expect("opens")
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

fn put(store: &Store, i: u32, value: &[u8]) -> VersionSet {
    store
        .coordinate_put(&key(i), &VClock::new(), Some(value.to_vec()), 1, &LIMITS)
        .expect("put")
        .0
}

fn overwrite(store: &Store, i: u32, value: &[u8]) {
    let set = store.read(&key(i)).expect("read");
    store
        .coordinate_put(&key(i), &set.context(), Some(value.to_vec()), 2, &LIMITS)
        .expect("overwrite");
}

/// Rebuilds every partition's tree to completion.
fn rebuild_all(store: &Store) {
    for partition in 0..Q {
        while !store.rebuild_step(partition, 16).expect("step").done {}
    }
}

fn roots(store: &Store) -> Vec<(u64, u64)> {
    (0..Q)
        .map(|p| {
            let view = store.tree_view(p, None);
            assert!(view.ready, "partition {p} has a tree");
            (view.root, view.keys)
        })
        .collect()
}

/// Goal: a tree kept up to date by writes equals the tree rebuilt from the data, so a rebuild
/// after a restart finds what the writes built, and a rot check of a healthy tree finds
/// nothing. Keys are counted per partition.
#[test]
fn trees_updated_by_writes_equal_trees_rebuilt_from_the_data() {
    let store = store();
    rebuild_all(&store); // empty trees, now ready: writes update them from here
    for i in 0..300 {
        put(&store, i, b"a");
    }
    for i in 0..100 {
        overwrite(&store, i, b"b");
    }
    let live = roots(&store);
    assert_eq!(live.iter().map(|(_, keys)| keys).sum::<u64>(), 300);
    let mut rot = false;
    for partition in 0..Q {
        loop {
            let step = store.rebuild_step(partition, 16).expect("step");
            rot |= step.rot;
            if step.done {
                break;
            }
        }
    }
    assert!(!rot, "a healthy tree is not reported as rot");
    assert_eq!(roots(&store), live);
}

/// Goal: writes that race a rebuild (before, at and after its cursor) all end up in the
/// rebuilt tree exactly once: it equals the tree of a store that received the same writes
/// with no rebuild going on.
#[test]
fn writes_during_a_rebuild_are_counted_exactly_once() {
    let racing = store();
    let quiet = store();
    rebuild_all(&quiet);
    for i in 0..200 {
        put(&racing, i, b"a");
        put(&quiet, i, b"a");
    }
    // Start every rebuild, then interleave small steps with writes of old and new keys.
    for partition in 0..Q {
        racing.rebuild_step(partition, 3).expect("first step");
    }
    let mut next = 200;
    let mut done = [false; Q as usize];
    while done.contains(&false) {
        for partition in 0..Q {
            if !done[partition as usize] {
                done[partition as usize] = racing.rebuild_step(partition, 3).expect("step").done;
            }
        }
        for store in [&racing, &quiet] {
            overwrite(store, next - 200, b"x"); // an old key: before or after the cursor
            put(store, next, b"new"); // a key that did not exist
        }
        next += 1;
    }
    assert_eq!(roots(&racing), roots(&quiet));
    assert_eq!(
        racing.objects().expect("objects"),
        quiet.objects().expect("objects")
    );
}

/// Goal: before its first rebuild a partition has no tree to compare (anti-entropy must not
/// take an empty tree for an empty partition), and the tree view names the level asked for.
#[test]
fn a_partition_without_a_tree_is_not_ready_and_levels_have_their_sizes() {
    let store = store();
    put(&store, 1, b"a");
    assert!(!store.tree_view(0, None).ready);
    rebuild_all(&store);
    let shape = crate::merkle::TreeShape::for_partitions(Q);
    let view = store.tree_view(0, None);
    assert_eq!(view.hashes.len(), shape.branches());
    let view = store.tree_view(0, Some(&[0, 1]));
    assert_eq!(view.hashes.len(), 2 * shape.segments_per_branch());
    let summaries = store.tree_summaries();
    assert_eq!(summaries.len(), Q as usize);
    assert!(summaries.iter().all(|s| s.state == "ready"));
}

/// Goal: the digests of a segment are its keys with the hashes its tree was built from, and
/// two replicas holding one key differently differ in exactly that key's digest.
#[test]
fn segment_digests_pinpoint_the_differing_key() {
    let a = store();
    let b = store();
    for i in 0..50 {
        let set = put(&a, i, b"same");
        b.merge(&key(i), &set).expect("replicate");
    }
    put(&a, 7, b"only-on-a");
    let location_of_7 = {
        let digests = |s: &Store| -> Vec<(Vec<u8>, u64)> {
            (0..Q)
                .flat_map(|p| {
                    let all: Vec<u16> = (0..4096).collect();
                    s.segment_digests(p, &all, usize::MAX).expect("digests")
                })
                .collect()
        };
        let (da, db) = (digests(&a), digests(&b));
        assert_eq!(da.len(), 50);
        da.into_iter()
            .zip(db)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(location_of_7, vec![key(7)]);
}

/// Goal: a digest scan that goes on after a key starts right after it in the first segment
/// and takes the later segments whole: resumed at every key of a partition's list in turn,
/// with a limit of one, it walks the same list (an exchange going on past where its lists
/// stopped short visits every key once, and never starts again from the beginning).
#[test]
fn digest_scans_resume_after_a_key_and_walk_every_key_once() {
    let store = store();
    for i in 0..200 {
        put(&store, i, b"v");
    }
    let all: Vec<u16> = (0..4096).collect();
    let partition = (0..Q)
        .max_by_key(|&p| {
            store
                .segment_digests(p, &all, usize::MAX)
                .expect("digests")
                .len()
        })
        .expect("a partition");
    let whole = store
        .segment_digests(partition, &all, usize::MAX)
        .expect("digests");
    assert!(whole.len() >= 2, "a partition with keys in several places");
    let shape = crate::merkle::TreeShape::for_partitions(Q);
    let segment_of = |key: &[u8]| shape.segment_of_position(crate::ring::key_position(key));
    let mut walked = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut segments = all.clone();
    loop {
        let next = store
            .segment_digests_after(partition, &segments, after.as_deref(), 1)
            .expect("digests");
        let Some((key, hash)) = next.into_iter().next() else {
            break;
        };
        walked.push((key.clone(), hash));
        let segment = segment_of(&key);
        segments.retain(|&s| s >= segment);
        after = Some(key);
    }
    assert_eq!(walked, whole);
}

/// Goal: a format-1 data directory (objects keyed by key alone) is migrated when opened:
/// every object readable, the old keyspace empty, the format stamped 2; and a directory laid
/// out for another Q is refused with an error that says what to do.
#[test]
fn format_one_directories_migrate_and_another_q_is_refused() {
    let engine = MemoryEngine::new();
    let set = {
        let scratch = store();
        put(&scratch, 1, b"old")
    };
    let bytes = crate::wire::encode_version_set(&set).expect("encode");
    engine
        .insert(Space::LegacyObjects, &key(1), &bytes)
        .expect("legacy object");
    engine.insert(Space::Meta, b"node_id", b"n1").expect("meta");
    engine.insert(Space::Meta, b"format", b"1").expect("meta");
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("migrates");
    assert_eq!(store.read(&key(1)).expect("read"), set);
    assert!(engine
        .scan(Space::LegacyObjects, &[], None, 10)
        .expect("scan")
        .is_empty());
    assert_eq!(
        engine.get(Space::Meta, b"format").expect("meta").as_deref(),
        Some(&b"2"[..])
    );
    drop(store);
    let error = Store::with_engine(Arc::clone(&engine) as Arc<dyn Engine>, &node(), 16, 0)
        .err()
        .expect("another Q is refused");
    let text = error.to_string();
    assert!(
        text.contains("8 partitions") && text.contains("16"),
        "{text}"
    );
}

/// Goal: a node whose data directory was lost comes back with a new epoch: its new dots are
/// above every dot it made before (which live on in other replicas), so one dot never names
/// two writes, and replicas can converge. So does a node whose crash lost writes it had
/// already replicated (a power loss before the flush): the floor rises to the clock at every
/// start, and a clock set back keeps it. Fails if the reopened store issued the lost dot again.
#[test]
fn a_recreated_directory_never_reuses_a_dot() {
    let engine = MemoryEngine::new();
    let old = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let before = put(&old, 1, b"before the wipe");
    let old_counter = before.versions()[0].dot.counter;
    assert!(old_counter > 1_000_000, "counters start above the epoch");
    drop(old);
    let wiped = Store::with_engine(MemoryEngine::new(), &node(), Q, 2_000).expect("opens");
    let after = put(&wiped, 1, b"after the wipe");
    assert!(after.versions()[0].dot.counter > old_counter);

    // The write of key 1 was never flushed: the power loss takes it here, while its
    // replicas keep it.
    engine.lose_power();
    let reopened = Store::with_engine(engine.clone(), &node(), Q, 5_000).expect("reopens");
    assert!(reopened.read(&key(1)).expect("reads").is_empty());
    let again = put(&reopened, 1, b"after the power loss");
    let again_counter = again.versions()[0].dot.counter;
    assert!(again_counter > 5_000_000, "the floor rose to the clock");
    drop(reopened);
    let clock_back = Store::with_engine(engine, &node(), Q, 3_000).expect("reopens");
    let later = put(&clock_back, 2, b"with the clock set back");
    assert!(
        later.versions()[0].dot.counter > 5_000_000,
        "a clock set back keeps the floor"
    );
}

/// Goal: a transfer reads a partition in bounded batches that resume exactly after the last
/// stored key (every key once, in order), one segment at a time when asked; a drop removes a
/// partition in steps, keeps the tree in step, and leaves other partitions alone.
#[test]
fn transfer_batches_resume_exactly_and_drops_empty_only_their_partition() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engines = [
        (
            "fjall",
            Store::open(dir.path(), &node(), Q, 0).expect("fjall opens"),
        ),
        ("memory", store()),
    ];
    let where_is = |k: &[u8]| {
        let position = crate::ring::key_position(k);
        (
            crate::ring::partition_of_position(Q, position).0,
            crate::merkle::TreeShape::for_partitions(Q).segment_of_position(position),
        )
    };
    for (name, store) in engines {
        for i in 0..400 {
            put(&store, i, b"v");
        }
        for p in 0..Q {
            while !store.rebuild_step(p, 1000).expect("rebuild").done {}
        }
        let (partition, segment) = where_is(&key(0));
        let expected: Vec<Vec<u8>> = (0..400)
            .map(key)
            .filter(|k| where_is(k).0 == partition)
            .collect();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort();
        // Cut by keys, and by bytes (a cut before an object reads it again next time).
        for (max_keys, max_bytes) in [(7, 1 << 20), (100, 120)] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let read = store
                    .transfer_batch(partition, None, after.as_deref(), max_keys, max_bytes)
                    .expect("batch");
                assert!(read.objects.len() <= max_keys, "{name}");
                seen.extend(read.objects.into_iter().map(|(k, _)| k));
                match read.resume {
                    Some(resume) => after = Some(resume),
                    None => break,
                }
            }
            seen.sort();
            assert_eq!(
                seen, sorted_expected,
                "{name} ({max_keys}, {max_bytes}): every key once"
            );
        }
        // A byte bound cuts a batch short, but never below one object.
        let read = store
            .transfer_batch(partition, None, None, 100, 1)
            .expect("batch");
        assert_eq!(read.objects.len(), 1, "{name}");
        assert!(read.resume.is_some(), "{name}");
        // Nor is it crossed by a later object: two objects' worth holds two, not three.
        let one = read.bytes as usize;
        let read = store
            .transfer_batch(partition, None, None, 100, 2 * one + one / 2)
            .expect("batch");
        assert_eq!(read.objects.len(), 2, "{name}");
        assert!(read.bytes as usize <= 2 * one + one / 2, "{name}");
        // One segment only.
        let read = store
            .transfer_batch(partition, Some(segment), None, 1000, 1 << 20)
            .expect("segment");
        assert!(read
            .objects
            .iter()
            .all(|(k, _)| where_is(k) == (partition, segment)));
        let others = 400 - expected.len() as u64;
        let mut steps = 0;
        loop {
            let (_, done) = store.drop_partition(partition, 16, || true).expect("drop");
            steps += 1;
            if done {
                break;
            }
            assert!(steps < 1000, "{name}: the drop ends");
        }
        assert!(steps >= expected.len() / 16, "{name}: in bounded steps");
        // Read from the engine, not answered by the drop's own record of the partition.
        let left = store.objects().expect("objects");
        assert!(
            left.iter().all(|(k, _)| where_is(k).0 != partition),
            "{name}: the drop emptied the partition"
        );
        let keys: u64 = store.tree_summaries().iter().map(|t| t.keys).sum();
        assert_eq!(keys, others, "{name}: trees count only what is left");
    }
}

/// Goal: the tombstone purge's pass skips a partition that cannot hold a tombstone-only key
/// (no delete since its last pass began), and looks again once a delete lands in it: with no
/// deletes, reading every key it leads once a minute doubled a loaded cluster's p99.
#[test]
fn a_purge_pass_skips_a_partition_without_tombstones_until_a_delete_lands() {
    let store = store();
    for i in 0..40 {
        put(&store, i, b"v");
    }
    let partition = partition_of_position(Q, key_position(&key(0))).0;
    let any_age = u64::MAX;
    let look = |store: &Store| {
        store
            .purge_candidates(partition, None, 1024, any_age)
            .expect("look")
    };
    let cut_short = store
        .purge_candidates(partition, None, 1, any_age)
        .expect("look");
    assert!(cut_short.resume.is_some(), "a pass of one key at a time");
    let first = look(&store);
    assert!(
        first.scanned > 1,
        "a pass cut short proves nothing: the next one looks"
    );
    assert!(first.candidates.is_empty());
    let second = look(&store);
    assert_eq!(second.scanned, 0, "no tombstone since: nothing to look at");
    assert!(second.resume.is_none() && second.candidates.is_empty());
    let set = store.read(&key(0)).expect("read");
    store
        .coordinate_put(&key(0), &set.context(), None, 3, &LIMITS)
        .expect("delete");
    let third = look(&store);
    assert!(third.scanned > 0, "a delete landed: the pass looks");
    assert_eq!(third.candidates.len(), 1);
    assert_eq!(
        look(&store).candidates.len(),
        1,
        "a tombstone the pass met (not yet purged) is looked at again"
    );
}
