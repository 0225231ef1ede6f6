//! A partition this node handed away: its drop resumes where the last step stopped, and
//! the cleanup's later looks at it answer from memory while nothing was written to it
//! (`store/empty.rs`).

use super::tests::{node, put, CountingScans, Q};
use super::*;
use crate::vclock::VClock;

/// Goal: a partition handed away is looked at again (every cleanup delay, for a stale
/// coordinator's stray write: a final sync's read, then a drop step) without a scan while
/// nothing was written to it since a drop found it empty: each such scan walked the engine's
/// tombstones of everything the drop removed, and after a join that kept a loaded cluster's
/// p99 at twice its level. A write makes the next look scan and drop it. Method: the memory
/// engine behind a wrapper counting object scans.
#[test]
fn an_emptied_partition_is_looked_at_without_a_scan_until_a_write_lands() {
    let engine = CountingScans::of(Space::Objects);
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    let partition = crate::ring::partition_of_position(Q, crate::ring::key_position(b"k")).0;
    let drop_step = |store: &Store| store.drop_partition(partition, 100, || true).expect("drop");
    let sync_read = |store: &Store| {
        store
            .transfer_batch(partition, None, None, 100, 1 << 20)
            .expect("read")
    };
    put(&store, b"k", &VClock::new(), b"a");
    assert_eq!(drop_step(&store), (1, true), "the object is dropped");
    let before = engine.scans();
    for _ in 0..3 {
        assert_eq!(drop_step(&store), (0, true));
        assert!(sync_read(&store).objects.is_empty());
    }
    assert_eq!(engine.scans(), before, "known empty: no scan");
    // A stray write reaches it: the next looks scan, find it, send it and drop it.
    put(&store, b"k", &VClock::new(), b"b");
    assert_eq!(
        sync_read(&store).objects.len(),
        1,
        "the final sync sends it"
    );
    assert_eq!(drop_step(&store), (1, true), "and the drop removes it");
    let after_write = engine.scans();
    assert_eq!(drop_step(&store), (0, true));
    assert!(sync_read(&store).objects.is_empty());
    assert_eq!(engine.scans(), after_write, "empty again, and known");
}

/// Goal: a partition's drop resumes each step where the last stopped (a step from the first
/// key walked the engine's tombstones of every step before it), and a write that lands
/// behind the cursor mid-pass is still dropped: that pass does not call the partition empty,
/// and the next starts from the first key. Method: 40 objects dropped 16 a step; after two
/// steps all 40 are written again, so 32 land behind the cursor.
#[test]
fn a_drop_resumes_where_it_stopped_and_still_finds_writes_behind_it() {
    let engine = CountingScans::of(Space::Objects);
    let store = Store::with_engine(engine.clone(), &node(), 4, 0).expect("opens");
    let in_partition_1 = |key: &Vec<u8>| {
        crate::ring::partition_of_position(4, crate::ring::key_position(key)).0 == 1
    };
    let keys: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("k{i}").into_bytes())
        .filter(in_partition_1)
        .take(40)
        .collect();
    assert_eq!(keys.len(), 40);
    for key in &keys {
        put(&store, key, &VClock::new(), b"a");
    }
    let step = || store.drop_partition(1, 16, || true).expect("drop");
    assert_eq!(step(), (16, false));
    let resumed = || engine.resumed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(resumed(), 0);
    assert_eq!(step(), (16, false));
    assert_eq!(resumed(), 1, "the second step resumed after the first");
    for key in &keys {
        put(&store, key, &VClock::new(), b"b");
    }
    let mut removed = 32;
    let mut steps = 0;
    loop {
        let (n, empty) = step();
        removed += n;
        steps += 1;
        assert!(steps < 20, "the drop ends");
        if empty {
            break;
        }
    }
    assert_eq!(removed, 32 + 40, "every object written is dropped once");
    for key in &keys {
        assert!(store.read(key).expect("read").is_empty(), "nothing is left");
    }
}
