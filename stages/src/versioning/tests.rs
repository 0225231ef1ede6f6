//! Properties and cases of dotted versions (TESTING.md §1, SPEC §3). Reference: Dynamo §4.4;
//! Preguiça et al., "Dotted Version Vectors" (2010); riak_kv#746.

use super::*;
use crate::vclock::Dot;
use proptest::prelude::*;

const MAX: usize = 10;

fn node(name: &str) -> NodeId {
    NodeId::new(name)
}

fn put(set: &mut VersionSet, by: &str, context: &VClock, value: &str, now: u64) -> Version {
    set.coordinate_put(
        &node(by),
        context,
        Some(value.as_bytes().to_vec()),
        now,
        MAX,
    )
    .expect("counter fits")
}

fn values(set: &VersionSet) -> Vec<String> {
    let mut out: Vec<String> = set
        .live_values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    out.sort();
    out
}

/// Goal: the case plain server-side vector clocks get wrong. Two puts through one coordinator
/// with the same context must both survive as siblings.
#[test]
fn two_puts_with_one_context_through_one_coordinator_both_survive() {
    let mut set = VersionSet::new();
    put(&mut set, "a", &VClock::new(), "v0", 1);
    let context = set.context();
    put(&mut set, "a", &context, "x", 2);
    put(&mut set, "a", &context, "y", 3);
    assert_eq!(values(&set), vec!["x", "y"]);
}

/// Goal: blind writes (no context) never replace each other.
#[test]
fn blind_puts_become_siblings() {
    let mut set = VersionSet::new();
    put(&mut set, "a", &VClock::new(), "1", 1);
    put(&mut set, "a", &VClock::new(), "2", 2);
    put(&mut set, "b", &VClock::new(), "3", 3);
    assert_eq!(values(&set), vec!["1", "2", "3"]);
}

/// Goal: a put with the context of a read that saw all siblings replaces them (the client's
/// semantic reconciliation).
#[test]
fn put_with_context_covering_all_siblings_replaces_them() {
    let mut set = VersionSet::new();
    put(&mut set, "a", &VClock::new(), "1", 1);
    put(&mut set, "b", &VClock::new(), "2", 2);
    let context = set.context();
    put(&mut set, "a", &context, "merged", 3);
    assert_eq!(values(&set), vec!["merged"]);
    assert_eq!(set.len(), 1);
}

/// Goal: a delete hides the key, and a put with the delete's context revives it.
#[test]
fn delete_hides_and_later_put_revives() {
    let mut set = VersionSet::new();
    put(&mut set, "a", &VClock::new(), "1", 1);
    let context = set.context();
    set.coordinate_put(&node("a"), &context, None, 2, MAX)
        .expect("fits");
    assert!(set.is_deleted());
    assert_eq!(values(&set), Vec::<String>::new());
    let context = set.context();
    put(&mut set, "a", &context, "2", 3);
    assert_eq!(values(&set), vec!["2"]);
}

/// Goal: the context a put returns never covers a concurrent write its writer did not see,
/// even when that write took a counter between the writer's two writes.
#[test]
fn write_context_never_covers_an_unseen_sibling() {
    let mut set = VersionSet::new();
    let alice_1 = put(&mut set, "a", &VClock::new(), "alice-1", 1);
    let alice_context = set.write_context(&alice_1);
    put(&mut set, "a", &VClock::new(), "bob", 2);
    let alice_2 = put(&mut set, "a", &alice_context, "alice-2", 3);
    let context = set.write_context(&alice_2);
    put(&mut set, "a", &context, "alice-3", 4);
    assert!(
        values(&set).contains(&"bob".to_string()),
        "{:?}",
        values(&set)
    );
}

/// Goal: without a gap, the write context covers the writer's own write, so its next put
/// replaces it (no needless sibling).
#[test]
fn write_context_without_a_gap_covers_the_writers_own_write() {
    let mut set = VersionSet::new();
    let first = put(&mut set, "a", &VClock::new(), "1", 1);
    let context = set.write_context(&first);
    put(&mut set, "a", &context, "2", 2);
    assert_eq!(values(&set), vec!["2"]);
}

/// Goal: two copies of one dot that differ (a bug or a truncated clock could make them) end
/// as the same one on every replica, the larger, and merge says whether that changed the set:
/// taking the larger copy in changes it, offering the smaller changes nothing.
#[test]
fn two_copies_of_one_dot_keep_the_larger_and_merge_says_which_changed() {
    let mut smaller = VersionSet::new();
    let written = put(&mut smaller, "a", &VClock::new(), "v", 10);
    let mut copy = written.clone();
    copy.timestamp_ms = 20;
    let larger = VersionSet::from_versions(vec![copy.clone()]);
    let mut merged = smaller.clone();
    assert!(
        merged.merge(&larger),
        "taking the larger copy changes the set"
    );
    assert_eq!(merged.versions(), &[copy][..]);
    let mut kept = larger.clone();
    assert!(!kept.merge(&smaller), "the smaller copy changes nothing");
    assert_eq!(kept, larger);
}

/// Goal: a stale replica's old value cannot undo a delete when the sets merge.
#[test]
fn stale_replica_does_not_resurrect_a_deleted_value() {
    let mut fresh = VersionSet::new();
    put(&mut fresh, "a", &VClock::new(), "1", 1);
    let stale = fresh.clone();
    let context = fresh.context();
    fresh
        .coordinate_put(&node("a"), &context, None, 2, MAX)
        .expect("fits");
    fresh.merge(&stale);
    assert!(fresh.is_deleted());
}

/// Goal: a counter at u64::MAX is an error, not a wrap-around.
#[test]
fn counter_overflow_is_an_error() {
    let mut set = VersionSet::new();
    let context = VClock::new().with_entry("a", u64::MAX, 1);
    let err = set
        .coordinate_put(&node("a"), &context, Some(vec![1]), 2, MAX)
        .expect_err("must overflow");
    assert_eq!(err, VersionError::CounterOverflow { node: node("a") });
}

/// Goal: the stored past respects the clock bound; dropped entries only add siblings.
#[test]
fn new_version_past_is_truncated_to_the_bound() {
    let mut set = VersionSet::new();
    let mut context = VClock::new();
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        context = context.with_entry(*name, 1, i as u64);
    }
    let version = set
        .coordinate_put(&node("a"), &context, Some(vec![1]), 9, 3)
        .expect("fits");
    assert_eq!(version.past.len(), 3);
}

/// A random history over three replicas: puts with contexts taken from earlier states of any
/// replica (some stale, some empty), and one-way syncs. Each replica's coordinator name is its
/// own, as in the store, where a coordinator always writes into its local set first (that is
/// what keeps a node's counters unique per key).
#[derive(Clone, Debug)]
enum Step {
    Put {
        replica: usize,
        context_from: Option<usize>,
        tombstone: bool,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (
            0usize..REPLICAS,
            proptest::option::of(0usize..16),
            any::<bool>()
        )
            .prop_map(|(replica, context_from, tombstone)| Step::Put {
                replica,
                context_from,
                tombstone
            }),
        (0usize..REPLICAS, 0usize..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 1..24)
}

const REPLICAS: usize = 3;
const COORDINATORS: [&str; REPLICAS] = ["a", "b", "c"];

fn run(steps: &[Step]) -> (Vec<VersionSet>, Vec<Version>) {
    let mut replicas = vec![VersionSet::new(); REPLICAS];
    let mut contexts: Vec<VClock> = vec![VClock::new()];
    let mut written = Vec::new();
    for (now, step) in steps.iter().enumerate() {
        match step {
            Step::Put {
                replica,
                context_from,
                tombstone,
            } => {
                let context = context_from
                    .map(|i| contexts[i % contexts.len()].clone())
                    .unwrap_or_default();
                let value = if *tombstone {
                    None
                } else {
                    Some(vec![now as u8])
                };
                let v = replicas[*replica]
                    .coordinate_put(
                        &node(COORDINATORS[*replica]),
                        &context,
                        value,
                        now as u64,
                        MAX,
                    )
                    .expect("small counters");
                written.push(v);
                contexts.push(replicas[*replica].context());
            }
            Step::Sync { from, to } => {
                let source = replicas[*from].clone();
                replicas[*to].merge(&source);
            }
        }
    }
    (replicas, written)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: reconciliation never drops a version that no other written version supersedes:
    /// after a full sync, every written version is either present or superseded by a version
    /// some writer created after seeing it (contexts come from gets and from put replies).
    #[test]
    fn merge_never_drops_an_unsuperseded_version(steps in arb_steps()) {
        let (mut replicas, written) = run(&steps);
        for i in 1..REPLICAS {
            let other = replicas[i].clone();
            replicas[0].merge(&other);
        }
        for v in &written {
            let present = replicas[0].versions().iter().any(|x| x.dot == v.dot);
            let superseded = written.iter().any(|w| w.supersedes(v));
            prop_assert!(present || superseded, "version {:?} lost", v.dot);
            if superseded {
                prop_assert!(!present, "superseded version {:?} kept", v.dot);
            }
        }
    }

    /// Goal: merge is commutative, associative and idempotent, so replicas converge whatever
    /// order anti-entropy and read repair deliver sets in.
    #[test]
    fn merge_is_commutative_associative_idempotent(steps in arb_steps()) {
        // The three replicas of one history: dots are unique within a history, as in the store.
        let (sets, _) = run(&steps);
        let m = |x: &VersionSet, y: &VersionSet| { let mut out = x.clone(); out.merge(y); out };
        prop_assert_eq!(m(&sets[0], &sets[1]), m(&sets[1], &sets[0]));
        prop_assert_eq!(m(&m(&sets[0], &sets[1]), &sets[2]), m(&sets[0], &m(&sets[1], &sets[2])));
        prop_assert_eq!(m(&sets[0], &sets[0]), sets[0].clone());
    }

    /// Goal: merge says exactly whether the set changed (a replica writes the set to disk
    /// only then), for every pair of replicas of a history and a set merged into itself.
    #[test]
    fn merge_reports_a_change_exactly_when_the_set_changed(steps in arb_steps()) {
        let (sets, _) = run(&steps);
        for a in &sets {
            for b in &sets {
                let mut merged = a.clone();
                let changed = merged.merge(b);
                prop_assert_eq!(changed, &merged != a);
            }
        }
    }

    /// Goal: the context of a set covers every version in it, so a put with it leaves exactly
    /// one version.
    #[test]
    fn put_with_full_context_leaves_one_version(steps in arb_steps()) {
        let (mut replicas, _) = run(&steps);
        let context = replicas[0].context();
        for v in replicas[0].versions() {
            prop_assert!(context.covers(&v.dot));
        }
        put(&mut replicas[0], "a", &context, "final", 1000);
        prop_assert_eq!(replicas[0].len(), 1);
    }
}

/// The dots a context's holder has seen: the versions it was shown and everything those had
/// seen (causal history), tracked independently of the clocks under test.
type Seen = std::collections::BTreeSet<Dot>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: a context never covers a live write its holder did not see, whether it came from a
    /// get or from a put reply; so a put never supersedes an unseen write (no lost write, SPEC §3).
    /// Method: random histories on three replicas; for every context handed out, compute its
    /// true causal history and check the clock covers no written dot outside it.
    #[test]
    fn contexts_cover_only_what_their_holder_saw(steps in arb_steps()) {
        let mut replicas = vec![VersionSet::new(); REPLICAS];
        let mut history: std::collections::BTreeMap<Dot, Seen> = Default::default();
        let mut contexts: Vec<(VClock, Seen)> = vec![(VClock::new(), Seen::new())];
        let mut written: Vec<Dot> = Vec::new();
        for (now, step) in steps.iter().enumerate() {
            match step {
                Step::Put { replica, context_from, tombstone } => {
                    let (context, seen) = context_from
                        .map(|i| contexts[i % contexts.len()].clone())
                        .unwrap_or_default();
                    // Covering a dot is harmless when a writer who saw it already superseded
                    // it; it is a lost write when the dot is live and unseen.
                    for dot in &written {
                        let legitimately_superseded = history.iter()
                            .any(|(by, saw)| by != dot && saw.contains(dot));
                        prop_assert!(!context.covers(dot) || seen.contains(dot) || legitimately_superseded,
                            "context covers unseen live write {dot:?}");
                    }
                    let value = if *tombstone { None } else { Some(vec![now as u8]) };
                    let set = &mut replicas[*replica];
                    let v = set.coordinate_put(&node(COORDINATORS[*replica]), &context, value, now as u64, MAX)
                        .expect("small counters");
                    let mut own = seen.clone();
                    own.insert(v.dot.clone());
                    history.insert(v.dot.clone(), own.clone());
                    written.push(v.dot.clone());
                    contexts.push((set.write_context(&v), own));
                    let read_seen: Seen = set.versions().iter()
                        .flat_map(|x| history.get(&x.dot).cloned().unwrap_or_default())
                        .collect();
                    contexts.push((set.context(), read_seen));
                }
                Step::Sync { from, to } => {
                    let source = replicas[*from].clone();
                    replicas[*to].merge(&source);
                }
            }
        }
    }
}
