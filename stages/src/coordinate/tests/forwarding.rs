//! Forwarded puts (SPEC §3: a coordinator outside the key's preference list forwards a put
//! to a node in it): what a forwarded put's error, silence or refusal turns into, and when it
//! moves on to the next list node.

use super::*;

/// Goal: a put forwarded to a preference-list node that answers with an error gets exactly
/// that answer, and is not forwarded again (a second primary would write a second version of
/// the same client put). Only an unreachable primary moves the put on to the next.
#[test]
fn forwarded_put_relays_an_error_answer_and_is_not_forwarded_twice() {
    let (mut c, membership) = coordinator_of_three(2, 1, 1);
    let start = Instant::now();
    let mut out = Vec::new();
    let (peer, op) = forward_a_put(&mut c, &membership, start, &mut out);
    let refusal = ServiceError::TooManySiblings { count: 33, max: 32 };
    let relayed = answer(&peer, op, Ok(Message::Error(refusal.clone())));
    on_event(&mut c, start, relayed, &mut out);
    match out.as_slice() {
        [Output::Reply {
            origin,
            message: Message::Error(e),
        }] => {
            assert_eq!((origin.request_id, e), (9, &refusal));
        }
        other => panic!("expected the primary's error relayed once, got {other:?}"),
    }
}

/// Goal: a forwarded put whose first node was refused by our own full queue and whose next
/// node has not answered by the deadline is a quorum error naming that node (it may have
/// applied the put), not `Overloaded` (which says nothing was done).
#[test]
fn a_forwarded_put_unanswered_at_its_deadline_is_a_quorum_error_naming_the_node() {
    let (mut c, membership) = coordinator_of_three(2, 1, 1);
    let start = Instant::now();
    let mut out = Vec::new();
    let (first, op) = forward_a_put(&mut c, &membership, start, &mut out);
    let full = ServiceError::Overloaded {
        stage: "replicate".into(),
    };
    on_event(&mut c, start, answer(&first, op, Err(full)), &mut out);
    let (next, _) = forwarded(&out);
    assert_ne!(next, first);
    out.clear();
    on_tick(&mut c, start + TIMEOUT * 2, &mut out);
    match out.as_slice() {
        [Output::Reply {
            message: Message::Error(ServiceError::Quorum { missing, .. }),
            ..
        }] => assert_eq!(missing, &vec![format!("{next} (forwarded, no answer)")]),
        other => panic!("expected a quorum error, got {other:?}"),
    }
}

/// Goal: a forwarded put that no list node could be reached for says so with counts that add
/// up: each node tried, down ones too, is one asked and one failed, and none is "held down,
/// not asked" (with both list nodes held down it said "1 asked, 2 failed; missing: n2 (held
/// down, not asked), n3 (...)" though both were tried).
#[test]
fn a_forward_no_list_node_takes_counts_each_node_tried_as_asked() {
    let (mut c, membership) = coordinator_of_three(2, 1, 1);
    let start = Instant::now();
    let mut out = Vec::new();
    for peer in ["n2", "n3"] {
        let failed = CoordinateEvent::LinkFailed {
            peer: NodeId::new(peer),
            refused: false,
        };
        on_event(&mut c, start, failed, &mut out);
    }
    out.clear();
    let (mut peer, mut op) = forward_a_put(&mut c, &membership, start, &mut out);
    for _ in 0..2 {
        on_event(&mut c, start, unreachable(&peer, op), &mut out);
        if let [Output::Peer { .. }] = out.as_slice() {
            (peer, op) = forwarded(&out);
            out.clear();
        }
    }
    match out.as_slice() {
        [Output::Reply {
            message:
                Message::Error(ServiceError::Quorum {
                    asked,
                    failed,
                    missing,
                    ..
                }),
            ..
        }] => {
            assert_eq!((*asked, *failed), (2, 2));
            assert!(missing.is_empty(), "{missing:?}");
        }
        other => panic!("expected a quorum error, got {other:?}"),
    }
}

/// Goal: a put forwarded to a list node that is stopping, refused `ShuttingDown` (it did
/// nothing with it), goes to the next list node instead of failing the client's request.
#[test]
fn a_forwarded_put_refused_by_a_stopping_node_goes_to_the_next_list_node() {
    let (mut c, membership) = coordinator_of_three(2, 2, 2);
    let now = Instant::now();
    let mut out = Vec::new();
    let (first, op) = forward_a_put(&mut c, &membership, now, &mut out);
    out.clear();
    let refusal = answer(&first, op, Ok(Message::Error(ServiceError::ShuttingDown)));
    on_event(&mut c, now, refusal, &mut out);
    let (second, _) = forwarded(&out);
    assert_ne!(second, first, "the next list node: {out:?}");
}
