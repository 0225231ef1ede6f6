//! The receiving side alone: a fallback's batch merged in one storage operation and then
//! acknowledged, and batches refused as busy while tokens are owed for the last one.

use super::*;

/// Goal: the receiving side merges a delivered batch in one storage operation and
/// acknowledges it with the count only once storage answered; a merge storage refused
/// (its queue full) is answered with that refusal, so the sender keeps its hints.
#[test]
fn a_received_batch_is_merged_in_one_operation_then_acknowledged() {
    let start = Instant::now();
    let mut machine = machine(start);
    let mut out = Outbox::new();
    let origin = Origin {
        conn: crate::event::ConnId(7),
        request_id: 42,
    };
    let objects: Vec<(Vec<u8>, VersionSet)> = (1..=3)
        .map(|i| {
            let h = hint_for(i, "me");
            (h.key, h.versions)
        })
        .collect();
    let serve = HandoffEvent::Serve {
        origin,
        objects: objects.clone(),
    };
    machine.on_event(at(start, 0), serve, &mut out);
    let merges: Vec<(OpId, usize)> = out
        .take()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                event:
                    Event::Storage(StorageEvent {
                        op,
                        request: StorageRequest::Sync { merge, read, .. },
                        ..
                    }),
                ..
            } if read.is_empty() => Some((op, merge.len())),
            _ => None,
        })
        .collect();
    assert_eq!(merges.len(), 1, "one storage operation for the batch");
    assert_eq!(merges[0].1, 3);
    assert!(reply_of(&mut out).is_none(), "no answer before storage's");
    let done = StorageDone {
        op: merges[0].0,
        result: Ok(StorageOutcome::Objects(Vec::new())),
        durable: true,
    };
    machine.on_event(at(start, 1), HandoffEvent::Storage(done), &mut out);
    assert_eq!(
        reply_of(&mut out),
        Some((42, Message::HandoffAck(HandoffAck { merged: 3 })))
    );

    let serve = HandoffEvent::Serve { origin, objects };
    machine.on_event(at(start, 2), serve, &mut out);
    let refused = out
        .take()
        .into_iter()
        .find_map(|effect| match effect {
            Effect::Send { event, .. } => Some(event),
            _ => None,
        })
        .expect("the merge");
    let full = ServiceError::Overloaded {
        stage: "storage".into(),
    };
    machine.on_refused(at(start, 2), refused, full.clone(), &mut out);
    assert_eq!(reply_of(&mut out), Some((42, Message::Error(full))));
}

/// Goal: the returning node paces what it takes in by its own gate (issue 9): a batch is
/// merged and charged whole when nothing is owed, and one that arrives while tokens are still
/// owed is refused `Overloaded` without a merge; the owed tokens and the refused objects (each
/// sender's latest batch, once however often it is offered) are the backlog its controller
/// sees, and once the debt is paid a batch gets in again.
/// Reference: Dynamo §4.6 (hinted handoff), §6.5 (admission control of background work).
#[test]
fn a_receiver_refuses_batches_while_it_owes_tokens_for_the_last() {
    let start = Instant::now();
    let logger = Logger::root(slog::Discard, slog::o!());
    let gate = Gate::new(Some(10), start); // 10 tokens a second, a burst of 4
    let mut machine = HandoffMachine::new(gate.clone(), logger);
    let mut out = Outbox::new();
    let origin = Origin {
        conn: crate::event::ConnId(7),
        request_id: 42,
    };
    let batch = || HandoffEvent::Serve {
        origin,
        objects: (1..=20)
            .map(|i| {
                let h = hint_for(i, "me");
                (h.key, h.versions)
            })
            .collect(),
    };
    let merges = |out: &mut Outbox| {
        out.take()
            .into_iter()
            .filter(|effect| {
                matches!(
                    effect,
                    Effect::Send {
                        event: Event::Storage(StorageEvent {
                            request: StorageRequest::Sync { .. },
                            ..
                        }),
                        ..
                    }
                )
            })
            .count()
    };

    machine.on_event(at(start, 0), batch(), &mut out);
    assert_eq!(merges(&mut out), 1, "nothing owed: the batch is merged");
    assert_eq!(
        gate.reading().backlog,
        16,
        "20 objects charged, the burst of 4 paid"
    );

    machine.on_event(at(start, 10), batch(), &mut out);
    let busy = ServiceError::Overloaded {
        stage: "handoff".into(),
    };
    assert_eq!(reply_of(&mut out), Some((42, Message::Error(busy))));
    machine.on_event(at(start, 10), batch(), &mut out);
    assert_eq!(merges(&mut out), 0, "tokens owed: no merge");
    assert_eq!(
        gate.reading().backlog,
        16 + 20,
        "the debt and the refused batch's objects, once: its sender offered it twice"
    );
    let serve = |conn: u64, hints: std::ops::RangeInclusive<u8>| HandoffEvent::Serve {
        origin: Origin {
            conn: crate::event::ConnId(conn),
            request_id: 43,
        },
        objects: hints
            .map(|i| {
                let h = hint_for(i, "me");
                (h.key, h.versions)
            })
            .collect(),
    };
    machine.on_event(at(start, 20), serve(8, 21..=30), &mut out);
    assert_eq!(merges(&mut out), 0, "tokens owed: no merge");
    assert_eq!(
        gate.reading().backlog,
        16 + 20 + 10,
        "a second sender's refused batch adds to the first's"
    );
    machine.on_event(at(start, 30), serve(7, 31..=35), &mut out);
    assert_eq!(
        gate.reading().backlog,
        16 + 20 + 10 + 5,
        "another batch of the first sender's round adds too"
    );

    // Each tick pays what accrued (4 tokens per 400 ms); the refused objects stop counting
    // after a second.
    for ms in [400, 800, 1200, 1600] {
        machine.on_tick(at(start, ms), &mut out);
    }
    out.take();
    assert_eq!(gate.reading().backlog, 0, "debt paid, refusals aged out");
    machine.on_event(at(start, 1700), batch(), &mut out);
    assert_eq!(merges(&mut out), 1, "paid up: the next batch gets in");
}

/// The one reply frame an outbox holds: its request id and message.
fn reply_of(out: &mut Outbox) -> Option<(u64, Message)> {
    reply_in(out.take())
}

/// The first reply among `effects`: its request id and message.
fn reply_in(effects: Vec<Effect>) -> Option<(u64, Message)> {
    effects.into_iter().find_map(|effect| match effect {
        Effect::Send {
            event: Event::Intake(event),
            ..
        } => event.sent_message(),
        _ => None,
    })
}

/// Goal: a batch holding a key whose partition this node holds in no ring of its view is
/// refused with `NotAReplica` and nothing of it is stored (cleanup would drop that copy,
/// perhaps after its final sync, while the fallback deleted its hint); a batch of keys it
/// holds is merged.
#[test]
fn a_batch_with_a_key_this_node_does_not_hold_is_refused_and_not_stored() {
    use crate::membership::MembershipView;
    let start = Instant::now();
    // N = 1 of three members: n1 holds some keys and not others.
    let membership = three_members();
    let n1 = NodeId::new("n1");
    let key_where = |held: bool| {
        (0..1000)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| {
                membership
                    .ring()
                    .preference_list_for_key(k, 1)
                    .primaries
                    .contains(&n1)
                    == held
            })
            .expect("such a key")
    };
    let view = MembershipView::new(membership.clone());
    let mut machine = machine(start).retargeting(view, n1.clone(), 1);
    let mut out = Outbox::new();
    let origin = Origin {
        conn: crate::event::ConnId(7),
        request_id: 42,
    };
    let objects = vec![
        (key_where(true), VersionSet::new()),
        (key_where(false), VersionSet::new()),
    ];
    let serve = HandoffEvent::Serve { origin, objects };
    machine.on_event(at(start, 0), serve, &mut out);
    let effects = out.take();
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                event: Event::Storage(_),
                ..
            }
        )),
        "nothing stored: {effects:?}"
    );
    match reply_in(effects) {
        Some((42, Message::Error(ServiceError::NotAReplica { node, .. }))) => {
            assert_eq!(node, "n1")
        }
        other => panic!("expected NotAReplica, got {other:?}"),
    }

    let objects = vec![(key_where(true), VersionSet::new())];
    let serve = HandoffEvent::Serve { origin, objects };
    machine.on_event(at(start, 1), serve, &mut out);
    assert!(
        out.take().iter().any(|e| matches!(
            e,
            Effect::Send {
                event: Event::Storage(_),
                ..
            }
        )),
        "a batch of held keys is merged"
    );
}
