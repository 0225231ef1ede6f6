//! The handoff machine alone: rounds, batches per target, acks and deletions, retargeting,
//! refusals and back-off, driven with a made-up clock and storage answers.

use super::*;
use crate::event::Event;
use crate::seda::Effect;
use crate::versioning::VersionSet;
use crate::NodeId;

fn at(start: Instant, ms: u64) -> Now {
    Now {
        instant: start + Duration::from_millis(ms),
        wall_ms: 0,
    }
}

/// The operation of the hint scan the outbox holds, if any.
fn scan_op(out: &mut Outbox) -> Option<OpId> {
    out.take().into_iter().find_map(|effect| match effect {
        Effect::Send {
            event:
                Event::Storage(StorageEvent {
                    op,
                    request: StorageRequest::ReadHints { .. },
                    ..
                }),
            ..
        } => Some(op),
        _ => None,
    })
}

/// The operations of the deliveries the outbox holds.
fn delivery_ops(out: &mut Outbox) -> Vec<OpId> {
    out.take()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                event: Event::Replicate(ReplicateEvent::Send { op, .. }),
                ..
            } => Some(op),
            _ => None,
        })
        .collect()
}

fn hint(i: u8) -> Hint {
    Hint {
        hint_key: vec![i],
        target: NodeId::new("down"),
        key: vec![i],
        versions: VersionSet::default(),
    }
}

/// A round at `ms` whose every delivery fails (its target is down).
fn failing_round(machine: &mut HandoffMachine, out: &mut Outbox, start: Instant, ms: u64) {
    machine.on_tick(at(start, ms), out);
    let scan = scan_op(out).expect("a round starts with a scan");
    fail_round(machine, out, start, ms, scan);
}

/// The round whose hint scan is `scan` finds two hints, and both deliveries fail.
fn fail_round(machine: &mut HandoffMachine, out: &mut Outbox, start: Instant, ms: u64, scan: OpId) {
    let done = StorageDone {
        op: scan,
        result: Ok(StorageOutcome::Hints {
            hints: vec![hint(1), hint(2)],
            held: 2,
        }),
        durable: false,
    };
    machine.on_event(at(start, ms), HandoffEvent::Storage(done), out);
    for op in delivery_ops(out) {
        let failed = PeerDone {
            op,
            peer: NodeId::new("down"),
            result: Err(ServiceError::ShuttingDown),
        };
        machine.on_event(at(start, ms), HandoffEvent::Peer(failed), out);
    }
}

/// Goal: after a round in which every delivery failed (the target is down), the next
/// round waits for the pause instead of reading and resending the hints at every tick;
/// the pause grows while rounds keep failing. Method: a machine driven by hand.
#[test]
fn rounds_that_only_fail_pause_and_the_pause_grows() {
    let start = Instant::now();
    let logger = Logger::root(slog::Discard, slog::o!());
    let mut machine = HandoffMachine::new(Gate::new(None, start), logger);
    let mut out = Outbox::new();
    failing_round(&mut machine, &mut out, start, 0);
    machine.on_tick(at(start, 200), &mut out);
    assert_eq!(scan_op(&mut out), None, "paused after a failing round");
    // The pause (400 ms) was decided at 200 ms: the next round starts at 600 ms.
    failing_round(&mut machine, &mut out, start, 600);
    machine.on_tick(at(start, 800), &mut out);
    machine.on_tick(at(start, 1200), &mut out);
    assert_eq!(
        scan_op(&mut out),
        None,
        "the second pause is longer (800 ms)"
    );
    machine.on_tick(at(start, 1600), &mut out);
    assert!(scan_op(&mut out).is_some(), "rounds resume after the pause");
}

/// Goal: the failure detector seeing a down peer answer again ends the pause its failed
/// deliveries started (the next tick starts a round, not the end of the pause), also when it
/// comes before the tick that would have closed the failed round and paused; the pause after
/// the next failure starts again from the shortest. Method: a machine driven by hand.
/// Reference: Dynamo §4.6.
#[test]
fn a_peer_back_up_ends_the_pause_of_failed_rounds() {
    let start = Instant::now();
    let back = || HandoffEvent::PeerUp {
        peer: NodeId::new("down"),
    };
    // After the pause was decided.
    let mut paused = machine(start);
    let mut out = Outbox::new();
    failing_round(&mut paused, &mut out, start, 0);
    paused.on_tick(at(start, 200), &mut out);
    assert_eq!(
        scan_op(&mut out),
        None,
        "paused after a failing round (until 600 ms)"
    );
    paused.on_event(at(start, 250), back(), &mut out);
    paused.on_tick(at(start, 300), &mut out);
    let scan = scan_op(&mut out).expect("a round starts at once, not at 600 ms");

    // Before the failed round was closed.
    let mut open = machine(start);
    failing_round(&mut open, &mut out, start, 0);
    open.on_event(at(start, 100), back(), &mut out);
    open.on_tick(at(start, 200), &mut out);
    assert!(
        scan_op(&mut out).is_some(),
        "no pause for failures from before"
    );

    // The backoff was reset: a failing round now pauses 400 ms, not 800 ms.
    fail_round(&mut paused, &mut out, start, 300, scan);
    paused.on_tick(at(start, 400), &mut out);
    paused.on_tick(at(start, 800), &mut out);
    assert!(scan_op(&mut out).is_some(), "the pause restarted at 400 ms");
}

fn machine(start: Instant) -> HandoffMachine {
    HandoffMachine::new(
        Gate::new(None, start),
        Logger::root(slog::Discard, slog::o!()),
    )
}

fn hint_for(i: u8, target: &str) -> Hint {
    let mut versions = VersionSet::new();
    versions
        .coordinate_put(
            &NodeId::new("fallback"),
            &crate::vclock::VClock::new(),
            Some(vec![i; 10]),
            1,
            10,
        )
        .expect("a version");
    Hint {
        hint_key: vec![i],
        target: NodeId::new(target),
        key: vec![i],
        versions,
    }
}

/// What a round sent: per delivery, its operation, peer and the keys of its batch.
fn batches(effects: &[Effect]) -> Vec<(OpId, NodeId, Vec<Vec<u8>>)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                event:
                    Event::Replicate(ReplicateEvent::Send {
                        op,
                        peer,
                        message: Message::HandoffBatch(batch),
                        ..
                    }),
                ..
            } => Some((
                *op,
                peer.clone(),
                batch.objects.iter().map(|o| o.key.to_vec()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// How many hints each batch among the effects carries.
fn batch_sizes(effects: Vec<Effect>) -> Vec<usize> {
    batches(&effects)
        .iter()
        .map(|(_, _, keys)| keys.len())
        .collect()
}

/// The hints of every deletion among the effects.
fn deletions(effects: &[Effect]) -> Vec<Vec<Vec<u8>>> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                event:
                    Event::Storage(StorageEvent {
                        request: StorageRequest::DeleteHints { hints },
                        ..
                    }),
                ..
            } => Some(hints.iter().map(|h| h.key.clone()).collect()),
            _ => None,
        })
        .collect()
}

/// Runs a round: a tick, then storage's answer `hints` to its scan.
fn round(machine: &mut HandoffMachine, now: Now, hints: Vec<Hint>, out: &mut Outbox) {
    machine.on_tick(now, out);
    let scan = scan_op(out).expect("a round starts with a scan");
    let held = hints.len() as u64;
    let done = StorageDone {
        op: scan,
        result: Ok(StorageOutcome::Hints { hints, held }),
        durable: false,
    };
    machine.on_event(now, HandoffEvent::Storage(done), out);
}

/// Goal: the hints of a round travel as one batch per intended node, and a batch's hints
/// are deleted together (one storage operation) only once that node acknowledged every
/// object; a failed batch, or an acknowledgement that counts fewer objects, deletes
/// nothing. Method: a machine driven by hand.
#[test]
fn hints_travel_in_one_batch_per_node_and_are_deleted_only_after_its_ack() {
    let start = Instant::now();
    let mut machine = machine(start);
    let mut out = Outbox::new();
    let hints = vec![
        hint_for(1, "a"),
        hint_for(2, "b"),
        hint_for(3, "a"),
        hint_for(4, "c"),
        hint_for(5, "a"),
    ];
    round(&mut machine, at(start, 0), hints, &mut out);
    let effects = out.take();
    assert!(
        deletions(&effects).is_empty(),
        "nothing is deleted before its ack"
    );
    let sent = batches(&effects);
    let keys: BTreeMap<String, Vec<Vec<u8>>> = sent
        .iter()
        .map(|(_, peer, keys)| (peer.to_string(), keys.clone()))
        .collect();
    assert_eq!(sent.len(), 3, "one batch per node: {keys:?}");
    assert_eq!(keys["a"], vec![vec![1], vec![3], vec![5]]);
    assert_eq!(keys["b"], vec![vec![2]]);
    assert_eq!(machine.in_flight(), 5);
    let answer = |peer: &str, result| {
        let op = sent
            .iter()
            .find(|(_, p, _)| p.to_string() == peer)
            .map(|(op, _, _)| *op)
            .expect("a batch for the peer");
        HandoffEvent::Peer(PeerDone {
            op,
            peer: NodeId::new(peer),
            result,
        })
    };
    let ack = |merged| Ok(Message::HandoffAck(HandoffAck { merged }));
    machine.on_event(at(start, 1), answer("a", ack(3)), &mut out);
    assert_eq!(
        deletions(&out.take()),
        vec![vec![vec![1], vec![3], vec![5]]]
    );
    machine.on_event(at(start, 1), answer("b", ack(0)), &mut out);
    assert!(deletions(&out.take()).is_empty(), "an ack of fewer objects");
    let refused = Err(ServiceError::PeerUnreachable {
        node: "c".into(),
        why: None,
    });
    machine.on_event(at(start, 1), answer("c", refused), &mut out);
    assert!(deletions(&out.take()).is_empty(), "a failed batch");
    assert_eq!(machine.in_flight(), 0);
}

/// Goal: a batch to one node stops growing at the byte cap, so it stays under the
/// receiver's frame limit; a hint larger than the cap goes alone.
#[test]
fn a_batch_to_one_node_is_split_at_the_byte_cap() {
    let start = Instant::now();
    let one = {
        let h = hint_for(0, "a");
        h.key.len() + h.versions.approx_bytes()
    };
    let mut machine = machine(start).batch_bytes(2 * one);
    let mut out = Outbox::new();
    let hints = (1..=5).map(|i| hint_for(i, "a")).collect();
    round(&mut machine, at(start, 0), hints, &mut out);
    assert_eq!(batch_sizes(out.take()), vec![2, 2, 1]);

    let mut machine = HandoffMachine::new(
        Gate::new(None, start),
        Logger::root(slog::Discard, slog::o!()),
    )
    .batch_bytes(1);
    let hints = (1..=3).map(|i| hint_for(i, "a")).collect();
    round(&mut machine, at(start, 0), hints, &mut out);
    assert_eq!(
        batch_sizes(out.take()),
        vec![1, 1, 1],
        "hints over the cap go one by one"
    );
}

/// Goal: a batch the target refuses with an answer (one object over its limits refuses
/// them all) is not sent whole again: its hints go one by one, so only the bad one stays
/// behind; a batch refused as busy (`Overloaded`: a full queue, or a receiver pacing what it
/// takes in) is sent whole again after the shortest pause, which does not grow.
#[test]
fn a_refused_batch_is_sent_again_one_hint_at_a_time() {
    let start = Instant::now();
    let mut out = Outbox::new();
    let hints = || (1..=3).map(|i| hint_for(i, "a")).collect::<Vec<_>>();
    let sizes_after = |refusal: ServiceError, pauses: bool, out: &mut Outbox| {
        let mut machine = machine(start);
        round(&mut machine, at(start, 0), hints(), out);
        let sent = batches(&out.take());
        assert_eq!(sent.len(), 1);
        let answer = PeerDone {
            op: sent[0].0,
            peer: NodeId::new("a"),
            result: Ok(Message::Error(refusal)),
        };
        machine.on_event(at(start, 1), HandoffEvent::Peer(answer), out);
        // The next tick ends the round and pauses (the tick after the pause starts the next
        // round). After a busy refusal the pause stays the shortest: refused again, the next
        // round still comes 400 ms later, where a second failure would wait 800 ms.
        machine.on_tick(at(start, 2), out);
        assert_eq!(scan_op(out), None, "paused after the refused round");
        if pauses {
            round(&mut machine, at(start, 2000), hints(), out);
        } else {
            round(&mut machine, at(start, 402), hints(), out);
            let sent = batches(&out.take());
            let again = PeerDone {
                op: sent[0].0,
                peer: NodeId::new("a"),
                result: Ok(Message::Error(ServiceError::Overloaded {
                    stage: "handoff".into(),
                })),
            };
            machine.on_event(at(start, 403), HandoffEvent::Peer(again), out);
            machine.on_tick(at(start, 404), out);
            assert_eq!(scan_op(out), None, "paused again");
            round(&mut machine, at(start, 804), hints(), out);
        }
        batch_sizes(out.take())
    };
    let too_many = ServiceError::TooManySiblings { count: 9, max: 8 };
    assert_eq!(sizes_after(too_many, true, &mut out), vec![1, 1, 1]);
    let full = ServiceError::Overloaded {
        stage: "handoff".into(),
    };
    assert_eq!(sizes_after(full, false, &mut out), vec![3]);
}

/// Goal: the tokens a sender took for a batch the receiver refused as busy come back to its
/// gate (nothing was delivered), while a batch that failed otherwise keeps them spent (it was
/// work: a frame sent to a node that could not take it).
#[test]
fn a_batch_refused_as_busy_gives_its_tokens_back() {
    let start = Instant::now();
    let logger = Logger::root(slog::Discard, slog::o!());
    // (the answer, the gate's tokens after it, the tokens it counts as used: the
    // controller's reading)
    for (refusal, tokens_after, granted_after) in [
        (
            ServiceError::Overloaded {
                stage: "handoff".into(),
            },
            4,
            0,
        ),
        (ServiceError::TooManySiblings { count: 9, max: 8 }, 1, 3),
    ] {
        let gate = Gate::new(Some(10), start); // 10 tokens a second, a burst of 4
        let mut machine = HandoffMachine::new(gate.clone(), logger.clone());
        let mut out = Outbox::new();
        let hints = (1..=3).map(|i| hint_for(i, "a")).collect();
        round(&mut machine, at(start, 0), hints, &mut out);
        let sent = batches(&out.take());
        assert_eq!(gate.available(start), 1, "three of four tokens taken");
        let answer = PeerDone {
            op: sent[0].0,
            peer: NodeId::new("a"),
            result: Ok(Message::Error(refusal.clone())),
        };
        machine.on_event(at(start, 0), HandoffEvent::Peer(answer), &mut out);
        assert_eq!(gate.available(start), tokens_after, "after {refusal:?}");
        assert_eq!(gate.reading().granted, granted_after, "after {refusal:?}");
    }
}

/// Goal: a round whose deliveries were all acknowledged starts the next one at once (the gate
/// alone paces handoff, not the 200 ms tick) while the gate holds a full round's tokens, and
/// leaves it to the tick otherwise, or when any delivery of the round failed. Method:
/// machines with gates unlimited, at 500/s and at 1000/s, driven by hand.
#[test]
fn an_acknowledged_round_starts_the_next_at_once_while_the_gate_allows() {
    let start = Instant::now();
    let ack_all = |machine: &mut HandoffMachine, out: &mut Outbox, effects: Vec<Effect>| {
        for (op, peer, keys) in batches(&effects) {
            let acked = PeerDone {
                op,
                peer,
                result: Ok(Message::HandoffAck(HandoffAck {
                    merged: keys.len() as u32,
                })),
            };
            machine.on_event(at(start, 1), HandoffEvent::Peer(acked), out);
        }
    };
    let mut out = Outbox::new();
    let mut unlimited = machine(start);
    round(
        &mut unlimited,
        at(start, 0),
        vec![hint_for(1, "a")],
        &mut out,
    );
    let sent = out.take();
    ack_all(&mut unlimited, &mut out, sent);
    assert!(
        scan_op(&mut out).is_some(),
        "the next round's scan goes out with the ack, before any tick"
    );

    let logger = Logger::root(slog::Discard, slog::o!());
    let mut paced = HandoffMachine::new(Gate::new(Some(500), start), logger);
    // A rate of 500/s holds 200 tokens (its burst): the round sends one hint, and once it is
    // acknowledged the gate holds 199, less than a round, so the tick starts the next one.
    round(&mut paced, at(start, 0), vec![hint_for(1, "a")], &mut out);
    let sent = out.take();
    assert_eq!(batches(&sent).len(), 1);
    ack_all(&mut paced, &mut out, sent);
    assert_eq!(
        scan_op(&mut out),
        None,
        "less than a round of tokens, no chained round"
    );

    // At 1000/s the gate holds 400 tokens (its burst): a full round's worth, so it chains.
    let logger = Logger::root(slog::Discard, slog::o!());
    let mut fast = HandoffMachine::new(Gate::new(Some(1000), start), logger);
    round(&mut fast, at(start, 0), vec![hint_for(1, "a")], &mut out);
    let sent = out.take();
    ack_all(&mut fast, &mut out, sent);
    assert!(scan_op(&mut out).is_some(), "a full round's tokens chain");

    // A round with one batch acknowledged and one failed does not chain either.
    let mut mixed = machine(start);
    round(
        &mut mixed,
        at(start, 0),
        vec![hint_for(1, "a"), hint_for(2, "b")],
        &mut out,
    );
    let mut sent = batches(&out.take());
    let (op, peer, _) = sent.remove(0);
    let failed = PeerDone {
        op,
        peer,
        result: Err(ServiceError::ShuttingDown),
    };
    mixed.on_event(at(start, 1), HandoffEvent::Peer(failed), &mut out);
    let (op, peer, _) = sent.remove(0);
    let acked = PeerDone {
        op,
        peer,
        result: Ok(Message::HandoffAck(HandoffAck { merged: 1 })),
    };
    mixed.on_event(at(start, 1), HandoffEvent::Peer(acked), &mut out);
    assert_eq!(scan_op(&mut out), None, "a round with a failure waits");

    // A failed round does not chain: the tick pauses it.
    let mut failing = machine(start);
    round(&mut failing, at(start, 0), vec![hint_for(1, "a")], &mut out);
    let (op, peer, _) = batches(&out.take()).remove(0);
    let failed = PeerDone {
        op,
        peer,
        result: Err(ServiceError::ShuttingDown),
    };
    failing.on_event(at(start, 1), HandoffEvent::Peer(failed), &mut out);
    assert_eq!(scan_op(&mut out), None, "a round that only failed waits");
}

mod receive;

/// Members n1, n2 and n3 over 8 partitions.
fn three_members() -> crate::membership::Membership {
    let members = ["n1", "n2", "n3"]
        .iter()
        .enumerate()
        .map(|(i, name)| crate::membership::Member::loopback(name, i as u16 + 1))
        .collect();
    crate::membership::Membership::new(1, 8, members).expect("valid")
}

/// Goal: a batch the target refuses with `NotAReplica` (it does not hold that partition in
/// its view: one of the two views is behind) holds back only that partition's hints, which go
/// alone from then on; the target's other hints still travel together.
#[test]
fn hints_of_a_partition_the_target_does_not_hold_go_alone_and_the_rest_together() {
    use crate::membership::MembershipView;
    let start = Instant::now();
    let membership = three_members();
    let n2 = NodeId::new("n2");
    // Two keys each of two partitions n2 holds (N = 1), as hints for n2.
    let ring = membership.ring();
    let keys_of_n2: Vec<(u32, Vec<u8>)> = (0..2000)
        .map(|i| format!("key-{i}").into_bytes())
        .filter(|k| ring.preference_list_for_key(k, 1).primaries.contains(&n2))
        .map(|k| (ring.partition_of(&k).0, k))
        .collect();
    let first = keys_of_n2[0].0;
    let other = keys_of_n2
        .iter()
        .find(|(p, _)| *p != first)
        .expect("n2 holds two partitions")
        .0;
    let pick = |partition: u32| {
        keys_of_n2
            .iter()
            .filter(move |(p, _)| *p == partition)
            .take(2)
    };
    let hints = || {
        pick(first)
            .chain(pick(other))
            .enumerate()
            .map(|(i, (_, key))| Hint {
                hint_key: vec![i as u8],
                key: key.clone(),
                ..hint_for(i as u8, "n2")
            })
            .collect::<Vec<_>>()
    };
    let view = MembershipView::new(membership.clone());
    let mut machine = machine(start).retargeting(view, NodeId::new("n1"), 1);
    let mut out = Outbox::new();
    round(&mut machine, at(start, 0), hints(), &mut out);
    let sent = batches(&out.take());
    assert_eq!(sent.len(), 1, "one batch of four: {sent:?}");
    let refusal = PeerDone {
        op: sent[0].0,
        peer: n2.clone(),
        result: Ok(Message::Error(ServiceError::NotAReplica {
            node: "n2".into(),
            partition: first,
            version: 1,
        })),
    };
    machine.on_event(at(start, 1), HandoffEvent::Peer(refusal), &mut out);
    assert!(deletions(&out.take()).is_empty(), "nothing deleted");
    machine.on_tick(at(start, 2), &mut out);
    round(&mut machine, at(start, 2000), hints(), &mut out);
    let mut sizes = batch_sizes(out.take());
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        vec![1, 1, 2],
        "the refused partition's two alone, the others together"
    );
}
