//! The answering side's pacing: a node pays for the objects a peer's sync gives it to merge,
//! and opens no exchange for a peer while it owes (issue 9's finding, that the node taking
//! a backlog in is where the foreground pays for it, applied to anti-entropy).

use super::exchange::compare_digests;
use super::*;
use crate::event::ConnId;
use crate::membership::{Member, Membership};
use crate::seda::Effect;
use slog::Logger;

fn at(start: Instant, ms: u64) -> Now {
    Now {
        instant: start + Duration::from_millis(ms),
        wall_ms: 0,
    }
}

fn machine(gate: Gate) -> AntiEntropyMachine {
    let members = vec![Member::loopback("n1", 1), Member::loopback("n2", 2)];
    let membership = MembershipView::new(Membership::new(1, 8, members).expect("membership"));
    let settings = AntiEntropySettings {
        node: NodeId::new("n1"),
        n: 2,
        // Only the answering side is under test: this node starts no exchange of its own.
        enabled: false,
        exchange_interval: Duration::from_secs(60),
        rebuild_interval: Duration::from_secs(600),
        confirm_delay: Duration::from_millis(200),
        max_keys_per_exchange: 256,
        tombstone_grace: Duration::from_secs(3600),
    };
    AntiEntropyMachine::new(
        settings,
        membership,
        gate,
        AaeBoard::new(NodeId::new("n1"), true),
        Logger::root(slog::Discard, slog::o!()),
    )
}

/// A peer opening an exchange of partition 3 (the branch-level tree request).
fn opening() -> AntiEntropyEvent {
    AntiEntropyEvent::Serve {
        origin: Origin {
            conn: ConnId(7),
            request_id: 1,
        },
        request: AaeRequest::Tree {
            partition: 3,
            branches: None,
            root: Some(1),
        },
    }
}

/// What the machine did with an opening: `Some(true)` answered "not ready" at once,
/// `Some(false)` asked storage for its tree, `None` neither.
fn refused_as_busy(out: &mut Outbox) -> Option<bool> {
    let effects = out.take();
    let asked_storage = effects.iter().any(|effect| {
        matches!(
            effect,
            Effect::Send {
                event: Event::Storage(StorageEvent {
                    request: StorageRequest::TreeView { .. },
                    ..
                }),
                ..
            }
        )
    });
    let busy = effects.into_iter().any(|effect| match effect {
        Effect::Send {
            event: Event::Intake(event),
            ..
        } => event.sent_message().is_some_and(|(_, m)| {
            matches!(m, Message::AaeTreeReply(AaeTreeReply { ready: false, .. }))
        }),
        _ => false,
    });
    match (busy, asked_storage) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// Goal: merging a peer's sync is charged to this node's gate, and while those tokens are
/// owed a peer's opening hears "not ready"; once the ticks have paid them, an opening is
/// served again. The debt is the backlog the controller sees meanwhile.
/// Reference: Dynamo §4.7 (anti-entropy), §6.5 (admission control of background work).
#[test]
fn a_node_owing_tokens_for_a_peers_sync_opens_no_exchange_until_paid() {
    let start = Instant::now();
    let gate = Gate::new(Some(10), start); // 10 tokens a second, a burst of 4
    let mut machine = machine(gate.clone());
    let mut out = Outbox::new();
    // The backlog before any debt: trees to build and pairs due.
    machine.on_tick(at(start, 0), &mut out);
    out.take();
    let before = gate.reading().backlog;

    machine.on_event(at(start, 0), opening(), &mut out);
    assert_eq!(
        refused_as_busy(&mut out),
        Some(false),
        "nothing owed: the opening is served"
    );

    machine.on_event(at(start, 1), sync_of(20, 2), &mut out);
    out.take();
    machine.on_event(at(start, 2), opening(), &mut out);
    assert_eq!(
        refused_as_busy(&mut out),
        Some(true),
        "20 tokens owed, 4 paid: not ready"
    );
    machine.on_tick(at(start, 100), &mut out);
    out.take();
    assert_eq!(
        gate.reading().backlog,
        before + 16,
        "the debt counts as backlog"
    );

    for ms in [400, 800, 1200, 1600, 2000, 2400] {
        machine.on_tick(at(start, ms), &mut out);
    }
    out.take();
    machine.on_event(at(start, 2500), opening(), &mut out);
    assert_eq!(
        refused_as_busy(&mut out),
        Some(false),
        "paid up: the opening is served"
    );
}

/// n2's sync of `count` objects of partition 3.
fn sync_of(count: u8, request_id: u64) -> AntiEntropyEvent {
    let objects: Vec<(Vec<u8>, VersionSet)> =
        (0..count).map(|i| (vec![i], VersionSet::new())).collect();
    AntiEntropyEvent::Serve {
        origin: Origin {
            conn: ConnId(7),
            request_id,
        },
        request: AaeRequest::Sync {
            partition: 3,
            objects,
            want: Vec::new(),
            from: Some(NodeId::new("n2")),
        },
    }
}

/// The storage operation a served sync asked for, and its event.
fn storage_sync(out: &mut Outbox) -> (OpId, Event) {
    out.take()
        .into_iter()
        .find_map(|effect| match effect {
            Effect::Send {
                event:
                    event @ Event::Storage(StorageEvent {
                        request: StorageRequest::Sync { .. },
                        ..
                    }),
                ..
            } => {
                let Event::Storage(StorageEvent { op, .. }) = &event else {
                    unreachable!("matched a storage event");
                };
                Some((*op, event))
            }
            _ => None,
        })
        .expect("the sync went to storage")
}

/// Goal: a peer's sync this node answers is counted in its report, in the totals and the
/// row of that peer: the objects it merged as received, those it answered with as sent.
/// Before, only the node that started an exchange counted it, so a wiped node's report
/// showed a third of what it got back (its two peers started the other exchanges).
#[test]
fn a_served_sync_counts_what_this_node_received_and_sent() {
    let start = Instant::now();
    let mut machine = machine(Gate::new(None, start));
    let mut out = Outbox::new();
    machine.on_tick(at(start, 0), &mut out);
    out.take();
    machine.on_event(at(start, 1), sync_of(5, 1), &mut out);
    let (op, _) = storage_sync(&mut out);
    let ours: Vec<(Vec<u8>, VersionSet)> = (0..3u8).map(|i| (vec![i], VersionSet::new())).collect();
    let answered = AntiEntropyEvent::Storage(StorageDone {
        op,
        result: Ok(StorageOutcome::Objects(ours)),
        durable: false,
    });
    machine.on_event(at(start, 2), answered, &mut out);
    assert_eq!(
        (machine.totals.keys_received, machine.totals.keys_sent),
        (5, 3)
    );
    let row = &machine.partitions[&3].peers[&NodeId::new("n2")].report;
    assert_eq!((row.keys_received, row.keys_sent), (5, 3));
}

/// Goal: a peer's sync that storage refused (a full queue) or failed merged nothing, so this
/// node does not pay for it: its charge comes off the debt, and a peer's opening is served
/// at once rather than after the ticks would have paid for work never done.
#[test]
fn a_sync_storage_refused_or_failed_is_not_charged() {
    let start = Instant::now();
    let gate = Gate::new(Some(10), start); // 10 tokens a second, a burst of 4
    let mut machine = machine(gate);
    let mut out = Outbox::new();

    // Refused: the storage queue was full.
    machine.on_event(at(start, 0), sync_of(20, 1), &mut out);
    let (_, event) = storage_sync(&mut out);
    machine.on_refused(
        at(start, 1),
        event,
        ServiceError::Overloaded {
            stage: "storage".into(),
        },
        &mut out,
    );
    out.take();
    machine.on_event(at(start, 2), opening(), &mut out);
    assert_eq!(refused_as_busy(&mut out), Some(false), "nothing owed");

    // Failed: storage answered with an error.
    machine.on_event(at(start, 3), sync_of(20, 2), &mut out);
    let (op, _) = storage_sync(&mut out);
    let failed = AntiEntropyEvent::Storage(StorageDone {
        op,
        result: Err(ServiceError::Storage {
            reason: "disk full".into(),
        }),
        durable: false,
    });
    machine.on_event(at(start, 4), failed, &mut out);
    out.take();
    machine.on_event(at(start, 5), opening(), &mut out);
    assert_eq!(refused_as_busy(&mut out), Some(false), "nothing owed");

    // A sync failing after ticks paid part of its charge is forgiven only the rest: a
    // charge made after it (another peer's sync) stays owed whole.
    let mut machine = self::machine(Gate::new(Some(10), start));
    machine.on_event(at(start, 0), sync_of(20, 4), &mut out);
    let (first, _) = storage_sync(&mut out);
    machine.on_tick(at(start, 10), &mut out); // pays the 4 the bucket holds
    out.take();
    assert_eq!(machine.debt, 16);
    machine.on_event(at(start, 11), sync_of(20, 5), &mut out);
    let (second, _) = storage_sync(&mut out);
    assert_eq!(machine.debt, 36);
    let failed = |op| {
        AntiEntropyEvent::Storage(StorageDone {
            op,
            result: Err(ServiceError::Storage {
                reason: "disk full".into(),
            }),
            durable: false,
        })
    };
    machine.on_event(at(start, 12), failed(first), &mut out);
    assert_eq!(
        machine.debt, 20,
        "the first's 16 unpaid forgiven, the second's 20 owed"
    );
    machine.on_event(at(start, 13), failed(second), &mut out);
    assert_eq!(machine.debt, 0);
    out.take();

    // Served: the charge stays until paid.
    machine.on_event(at(start, 6), sync_of(20, 3), &mut out);
    let (op, _) = storage_sync(&mut out);
    let merged = AntiEntropyEvent::Storage(StorageDone {
        op,
        result: Ok(StorageOutcome::Objects(Vec::new())),
        durable: false,
    });
    machine.on_event(at(start, 7), merged, &mut out);
    out.take();
    machine.on_event(at(start, 8), opening(), &mut out);
    assert_eq!(refused_as_busy(&mut out), Some(true), "16 tokens owed");
}

/// A digest list of keys whose place is their first byte as a segment, then the key.
fn digests(keys: &[(&[u8], u64)]) -> BTreeMap<Vec<u8>, u64> {
    keys.iter().map(|(k, h)| (k.to_vec(), *h)).collect()
}

fn by_first_byte(key: &[u8]) -> Place {
    (u16::from(key[0]), key.to_vec())
}

/// Goal: a digest list that stopped short (its limit, or the message's byte cap) is compared
/// only up to where it stopped, so a key past it is not taken as missing on that side (a
/// wiped replica's peer scans about two keys per key it sends, and nothing the other side
/// already holds is sent); with both lists cut, the earlier cut bounds the comparison; whole
/// lists are compared whole, and at most max_keys keys are taken.
#[test]
fn digest_lists_that_stopped_short_are_compared_only_up_to_the_earlier_cut() {
    // Segment 1 differs in k1b; we listed up to segment 3, they stopped after segment 2.
    let own = digests(&[(b"\x01a", 1), (b"\x01b", 2), (b"\x02a", 3), (b"\x03a", 4)]);
    let theirs = digests(&[(b"\x01a", 1), (b"\x01b", 9), (b"\x02a", 3)]);
    let cut_after_2 = Some(by_first_byte(b"\x02a"));
    let found = compare_digests(
        (&own, None),
        (&theirs, cut_after_2.clone()),
        by_first_byte,
        10,
    );
    assert_eq!(
        found.send,
        vec![b"\x01b".to_vec()],
        "k3a is only not listed"
    );
    assert_eq!(found.fetch, vec![b"\x01b".to_vec()]);
    assert!(found.cut_short, "the rest waits for the next exchange");

    // Not cut: k3a is missing on their side, and is sent.
    let found = compare_digests((&own, None), (&theirs, None), by_first_byte, 10);
    assert_eq!(found.send, vec![b"\x01b".to_vec(), b"\x03a".to_vec()]);
    assert!(!found.cut_short);

    // Both cut: the earlier cut (ours, after k1b) bounds it; k2a, which they lack, waits.
    let theirs = digests(&[(b"\x01a", 1), (b"\x01b", 9), (b"\x02b", 5)]);
    let found = compare_digests(
        (&own, Some(by_first_byte(b"\x01b"))),
        (&theirs, Some(by_first_byte(b"\x02b"))),
        by_first_byte,
        10,
    );
    assert_eq!(found.send, vec![b"\x01b".to_vec()]);
    assert_eq!(found.fetch, vec![b"\x01b".to_vec()]);

    // A wiped peer: everything we list is sent, at most max_keys of it.
    let found = compare_digests(
        (&own, Some(by_first_byte(b"\x03a"))),
        (&BTreeMap::new(), None),
        by_first_byte,
        2,
    );
    assert_eq!(found.send, vec![b"\x01a".to_vec(), b"\x01b".to_vec()]);
    assert!(found.fetch.is_empty() && found.cut_short);
}

/// n1's machine with exchanges on (N = 3, a 60 s interval) over `view`, ticked once at the
/// returned start, every tree it replicates ready.
fn exchanging_n1(view: MembershipView) -> (AntiEntropyMachine, Instant) {
    let n1 = NodeId::new("n1");
    let settings = AntiEntropySettings {
        node: n1.clone(),
        n: 3,
        enabled: true,
        exchange_interval: Duration::from_secs(60),
        rebuild_interval: Duration::from_secs(600),
        confirm_delay: Duration::from_millis(200),
        max_keys_per_exchange: 256,
        tombstone_grace: Duration::from_secs(3600),
    };
    let start = Instant::now();
    let mut machine = AntiEntropyMachine::new(
        settings,
        view,
        Gate::new(None, start),
        AaeBoard::new(n1, true),
        Logger::root(slog::Discard, slog::o!()),
    );
    machine.on_tick(at(start, 0), &mut Outbox::new());
    for state in machine.partitions.values_mut() {
        state.tree_ready = true;
    }
    (machine, start)
}

/// Goal: while an ownership transfer copies a partition to a new replica, no exchange of
/// that partition involves the new replica (it would send the partition a second time, as a
/// trial's join found: 25-50 % more traffic than the transfers); the other pairs go on, and
/// once the copy's done mark arrives its pairs are exchanged again.
/// Reference: Dynamo §4.7 (anti-entropy), §4.9 (adding nodes: keys handed over by transfer).
#[test]
fn no_exchange_involves_a_replica_whose_copy_is_still_being_transferred() {
    let n1 = NodeId::new("n1");
    let three = (1..=3u16)
        .map(|i| Member::loopback(&format!("n{i}"), i))
        .collect();
    let mut membership = Membership::new(1, 16, three).expect("membership");
    membership
        .stage_join(&n1, Member::loopback("n4", 4))
        .expect("join");
    membership.commit(&n1, 3).expect("commit");
    let copying: BTreeSet<(u32, NodeId)> = membership
        .pending_transfers(3)
        .into_iter()
        .map(|t| (t.partition, t.to))
        .collect();
    let view = MembershipView::new(membership.clone());
    let (mut machine, start) = exchanging_n1(view.clone());
    let mut out = Outbox::new();
    // Every pair due: start exchanges one after another, each ending at once in sync.
    let started = |machine: &mut AntiEntropyMachine, now: Instant| {
        let mut pairs = BTreeSet::new();
        let mut out = Outbox::new();
        for _ in 0..200 {
            machine.start_exchange(now, &mut out);
            let Some(mut exchange) = machine.exchange.take() else {
                break;
            };
            pairs.insert((exchange.partition, exchange.peer.clone()));
            exchange.step = super::exchange::Step::MergeBack;
            machine.finish_exchange(exchange, now, true, false);
        }
        pairs
    };
    let later = start + Duration::from_secs(120);
    let pairs = started(&mut machine, later);
    let with_n4: Vec<_> = pairs
        .iter()
        .filter(|(_, peer)| peer.as_str() == "n4")
        .collect();
    assert!(
        pairs.iter().all(|pair| !copying.contains(pair)),
        "an exchange with a copy in progress: {pairs:?}"
    );
    assert!(!pairs.is_empty(), "the other pairs go on");
    let n4_pairs_in_ring = machine
        .partitions
        .iter()
        .filter(|(p, s)| {
            s.peers.contains_key(&NodeId::new("n4")) && !copying.contains(&(**p, NodeId::new("n4")))
        })
        .count();
    assert_eq!(
        with_n4.len(),
        n4_pairs_in_ring,
        "n4's pairs with no copy pending go on"
    );

    // The copies are done: the pairs with n4 are exchanged again.
    for t in membership.pending_transfers(3) {
        let sender = t.from.clone().unwrap_or_else(|| n1.clone());
        membership.mark_transferred(&sender, t.partition, &t.to);
    }
    assert!(membership.pending_transfers(3).is_empty());
    view.set(membership);
    machine.on_tick(at(start, 200_000), &mut out);
    let pairs = started(&mut machine, start + Duration::from_secs(400));
    assert!(
        copying
            .iter()
            .filter(|(_, to)| to.as_str() == "n4")
            .all(|pair| { !machine.partitions.contains_key(&pair.0) || pairs.contains(pair) }),
        "after the copies: {pairs:?}"
    );
}

/// Goal: an exchange given up with a peer puts off every pair with that peer an interval, not
/// only its own (a down peer failed one exchange per partition in turn, and showed as a
/// backlog that could make no progress); the other peers' pairs go on; the first exchange with
/// it that works brings its other pairs forward.
#[test]
fn a_failed_exchange_puts_off_every_pair_with_that_peer_until_one_works() {
    let three = (1..=3u16)
        .map(|i| Member::loopback(&format!("n{i}"), i))
        .collect();
    let membership = Membership::new(1, 8, three).expect("membership");
    let (mut machine, start) = exchanging_n1(MembershipView::new(membership));
    let n2 = NodeId::new("n2");
    let now = start + Duration::from_secs(120);
    let next_start = |machine: &mut AntiEntropyMachine, now: Instant| {
        let mut out = Outbox::new();
        machine.start_exchange(now, &mut out);
        machine.exchange.take()
    };
    // Give up exchanges until one with n2 fails; from then on none with n2 starts.
    let mut failed_n2 = false;
    let mut others = 0;
    for _ in 0..40 {
        let Some(exchange) = next_start(&mut machine, now) else {
            break;
        };
        if exchange.peer == n2 {
            assert!(!failed_n2, "an exchange with n2 after one with it failed");
            failed_n2 = true;
        } else {
            others += 1;
        }
        machine.abandon_exchange(exchange, now, "peer n2 is unreachable");
    }
    assert!(failed_n2, "an exchange with n2 was tried");
    assert!(others > 0, "the other peer's pairs went on");

    // An interval later n2 answers: one exchange with it works, and its other pairs are due
    // soon after, not an interval later.
    let back = now + Duration::from_secs(200);
    let exchange = loop {
        let exchange = next_start(&mut machine, back).expect("pairs are due");
        if exchange.peer == n2 {
            break exchange;
        }
        machine.abandon_exchange(exchange, back, "test");
    };
    let done_partition = exchange.partition;
    let mut exchange = exchange;
    exchange.step = super::exchange::Step::MergeBack;
    machine.finish_exchange(exchange, back, true, false);
    let soon = back + Duration::from_secs(1);
    let mut with_n2 = BTreeSet::new();
    for _ in 0..40 {
        let Some(exchange) = next_start(&mut machine, soon) else {
            break;
        };
        if exchange.peer == n2 {
            with_n2.insert(exchange.partition);
        }
        let mut exchange = exchange;
        exchange.step = super::exchange::Step::MergeBack;
        machine.finish_exchange(exchange, soon, true, false);
    }
    let n2_pairs = machine
        .partitions
        .iter()
        .filter(|(p, s)| **p != done_partition && s.peers.contains_key(&n2))
        .count();
    assert!(n2_pairs > 0);
    assert_eq!(
        with_n2.len(),
        n2_pairs,
        "n2's other pairs came soon: {with_n2:?}"
    );
}

/// Goal: the node says it has caught up once every partition it holds was found in sync with
/// each other replica by an exchange that began after its start, not before the last pair,
/// and a pair found in sync before the start does not count (a wiped node's log was silent
/// about its rebuild; only `admin aae` told when it was done).
#[test]
fn catching_up_is_noted_once_every_pair_was_found_in_sync_since_the_start() {
    let start = Instant::now();
    let mut machine = machine(Gate::new(None, start));
    let mut out = Outbox::new();
    let started = Now {
        instant: start,
        wall_ms: 10_000,
    };
    machine.on_tick(started, &mut out);
    let pairs: Vec<(u32, NodeId)> = machine
        .partitions
        .iter()
        .flat_map(|(p, state)| state.peers.keys().map(move |peer| (*p, peer.clone())))
        .collect();
    assert!(pairs.len() >= 2, "{pairs:?}");
    let set = |machine: &mut AntiEntropyMachine, (p, peer): &(u32, NodeId), ms: u64| {
        if let Some(state) = machine
            .partitions
            .get_mut(p)
            .and_then(|s| s.peers.get_mut(peer))
        {
            state.report.in_sync_since_ms = ms;
        }
        machine.note_catch_up();
    };
    let (last, rest) = pairs.split_last().expect("pairs");
    for pair in rest {
        set(&mut machine, pair, 10_500);
    }
    set(&mut machine, last, 9_000);
    assert!(
        !machine.catch_up.done,
        "a pair in sync only before the start"
    );
    set(&mut machine, last, 12_000);
    assert!(
        machine.catch_up.done,
        "every pair found in sync since the start"
    );
}
