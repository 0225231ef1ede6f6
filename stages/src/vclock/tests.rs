//! Properties of vector clocks (TESTING.md §1). Reference: Dynamo §4.4.

use super::*;
use proptest::prelude::*;

const NODES: [&str; 4] = ["a", "b", "c", "d"];

fn arb_clock() -> impl Strategy<Value = VClock> {
    proptest::collection::vec((0..NODES.len(), 0u64..6, 0u64..100), 0..6).prop_map(|entries| {
        entries
            .into_iter()
            .fold(VClock::new(), |clock, (node, counter, ts)| {
                clock.with_entry(NODES[node], counter, ts)
            })
    })
}

fn merged(a: &VClock, b: &VClock) -> VClock {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: comparison is a partial order. Method: random clocks over four nodes.
    #[test]
    fn compare_is_reflexive_antisymmetric_and_transitive(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
        prop_assert_eq!(a.compare(&a), Causality::Equal);
        if a.descends(&b) && b.descends(&a) {
            prop_assert_eq!(a.compare(&b), Causality::Equal);
            prop_assert!(a.entries().filter(|(_, e)| e.counter > 0).map(|(n, e)| (n.clone(), e.counter))
                .eq(b.entries().filter(|(_, e)| e.counter > 0).map(|(n, e)| (n.clone(), e.counter))));
        }
        if a.descends(&b) && b.descends(&c) {
            prop_assert!(a.descends(&c));
        }
    }

    /// Goal: compare is consistent in both directions.
    #[test]
    fn compare_swaps_descends_and_dominated(a in arb_clock(), b in arb_clock()) {
        let expected = match a.compare(&b) {
            Causality::Descends => Causality::Dominated,
            Causality::Dominated => Causality::Descends,
            other => other,
        };
        prop_assert_eq!(b.compare(&a), expected);
    }

    /// Goal: merge is commutative, associative, idempotent and dominates both inputs.
    #[test]
    fn merge_is_a_join(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        let m = merged(&a, &b);
        prop_assert!(m.descends(&a) && m.descends(&b));
    }

    /// Goal: truncation keeps the newest entries, and exactly `max` of them.
    #[test]
    fn truncation_keeps_the_newest_entries(a in arb_clock(), max in 0usize..5) {
        let mut t = a.clone();
        let dropped = t.truncate(max);
        prop_assert_eq!(t.len(), a.len().min(max));
        prop_assert_eq!(dropped, a.len() - t.len());
        let oldest_kept = t.entries().map(|(_, e)| e.timestamp_ms).min();
        let newest_dropped = a.entries().filter(|(n, _)| t.counter(n) == 0 && a.counter(n) > 0 || !t.entries().any(|(k, _)| k == *n))
            .map(|(_, e)| e.timestamp_ms).max();
        if let (Some(kept), Some(dropped)) = (oldest_kept, newest_dropped) {
            prop_assert!(kept >= dropped);
        }
        prop_assert!(a.descends(&t));
    }
}

/// Goal: two clocks that each saw an event the other did not are concurrent.
#[test]
fn clocks_with_independent_events_are_concurrent() {
    let a = VClock::new().with_entry("a", 2, 1).with_entry("b", 1, 1);
    let b = VClock::new().with_entry("a", 1, 1).with_entry("b", 2, 1);
    assert_eq!(a.compare(&b), Causality::Concurrent);
    assert!(a.covers(&Dot {
        node: "a".into(),
        counter: 2
    }));
    assert!(!a.covers(&Dot {
        node: "a".into(),
        counter: 3
    }));
}

/// Goal: truncation prefers dropping the oldest entry, breaking timestamp ties by node order.
#[test]
fn truncation_drops_oldest_then_lowest_node() {
    let mut clock = VClock::new()
        .with_entry("c", 1, 10)
        .with_entry("a", 1, 5)
        .with_entry("b", 1, 5);
    assert_eq!(clock.truncate(1), 2);
    assert_eq!(clock.counter(&"c".into()), 1);
    assert_eq!(clock.len(), 1);
}

/// The clock as it was kept before (a `BTreeMap`), for the encoding comparisons below.
fn as_map(clock: &VClock) -> std::collections::BTreeMap<NodeId, ClockEntry> {
    clock
        .entries()
        .map(|(node, entry)| (node.clone(), *entry))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: the clock's encoding is the map encoding it always had, byte for byte (stored
    /// objects and other nodes' messages hold it), and decodes back to the same clock.
    #[test]
    fn a_clock_encodes_as_the_map_it_was_and_decodes_back(a in arb_clock()) {
        // Named (messages) and compact (stored sets) alike.
        let compact = rmp_serde::to_vec(&a).expect("encodes");
        prop_assert_eq!(&compact, &rmp_serde::to_vec(&as_map(&a)).expect("encodes"));
        let ours = rmp_serde::to_vec_named(&a).expect("encodes");
        let map = rmp_serde::to_vec_named(&as_map(&a)).expect("encodes");
        prop_assert_eq!(&ours, &map);
        let back: VClock = rmp_serde::from_slice(&ours).expect("decodes");
        prop_assert_eq!(back, a);
    }

    /// Goal: a map from elsewhere, in any order and naming a node twice, decodes as the
    /// `BTreeMap` did (sorted; a node's last entry wins), so lookups by node stay right.
    #[test]
    fn a_clock_decodes_any_map_as_the_btree_map_did(
        pairs in proptest::collection::vec((0..NODES.len(), 0u64..6, 0u64..100), 0..8)
    ) {
        // MessagePack's fixmap header: 0x80 | entries (fewer than 16 here).
        let mut body = vec![0x80 | pairs.len() as u8];
        for (node, counter, ts) in &pairs {
            rmp_serde::encode::write_named(&mut body, &(NODES[*node])).expect("node");
            let entry = ClockEntry { counter: *counter, timestamp_ms: *ts };
            rmp_serde::encode::write_named(&mut body, &entry).expect("entry");
        }
        let ours: VClock = rmp_serde::from_slice(&body).expect("decodes");
        let map: std::collections::BTreeMap<NodeId, ClockEntry> =
            rmp_serde::from_slice(&body).expect("decodes");
        prop_assert_eq!(as_map(&ours), map.clone());
        for (node, entry) in &map {
            prop_assert_eq!(ours.counter(node), entry.counter);
        }
        let nodes: Vec<&NodeId> = ours.entries().map(|(node, _)| node).collect();
        prop_assert!(nodes.windows(2).all(|pair| pair[0] < pair[1]));
    }
}

/// Goal: a clock of more entries than MessagePack's small map holds (16: the map16 header)
/// encodes as the map did and decodes back; truncation of it keeps the newest.
#[test]
fn a_clock_of_twenty_nodes_encodes_as_the_map_and_truncates_to_the_newest() {
    let clock = (0..20u64).fold(VClock::new(), |clock, i| {
        clock.with_entry(format!("node-{:02}", 19 - i).as_str(), i + 1, 100 + i)
    });
    for encode in [
        rmp_serde::to_vec::<VClock>,
        rmp_serde::to_vec_named::<VClock>,
    ] {
        let bytes = encode(&clock).expect("encodes");
        assert_eq!(bytes[0], 0xde, "a map16 header");
        let back: VClock = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(back, clock);
    }
    let map = as_map(&clock);
    assert_eq!(
        rmp_serde::to_vec(&clock).expect("encodes"),
        rmp_serde::to_vec(&map).expect("encodes")
    );
    assert_eq!(
        rmp_serde::to_vec_named(&clock).expect("encodes"),
        rmp_serde::to_vec_named(&map).expect("encodes")
    );
    let mut truncated = clock.clone();
    assert_eq!(truncated.truncate(5), 15);
    let kept: Vec<&str> = truncated.entries().map(|(node, _)| node.as_str()).collect();
    // node-04 .. node-00 were written last (timestamps 115..119).
    assert_eq!(
        kept,
        vec!["node-00", "node-01", "node-02", "node-03", "node-04"]
    );
}
