//! A node asked to store a key whose partition it holds in no ring of its view (its view is
//! older or newer than the sender's) refuses with `NotAReplica`, and the sender goes on
//! without it: a coordinator to a spare fallback, a forwarding node to the next list node.
//! Reference: Dynamo §4.6 (sloppy quorum), §4.8 (membership changes).

use super::*;

/// The first key of `key-0`.. whose preference list of `n` holds `node` (`held`) or not.
fn key_where(membership: &Membership, node: &NodeId, n: usize, held: bool) -> Vec<u8> {
    (0..1000)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| {
            membership
                .ring()
                .preference_list_for_key(k, n)
                .primaries
                .contains(node)
                == held
        })
        .expect("such a key")
}

/// Goal: a replica write for a key whose partition this node holds in no ring a coordinator
/// may use is refused with `NotAReplica` and not stored: the node would drop that partition
/// (perhaps after its final sync), so a copy counted toward W there could be lost. A key it
/// holds is merged as before, and a hint for another node is kept whatever the key.
#[test]
fn a_replica_write_for_a_partition_this_node_does_not_hold_is_refused() {
    // N = 1: each partition has one replica, so n1 holds some keys and not others.
    let (mut c, membership) = coordinator_of_three(1, 1, 1);
    let n1 = NodeId::new("n1");
    let key_where = |held: bool| key_where(&membership, &n1, 1, held);
    let write = |key: Vec<u8>, hint: Option<NodeId>| CoordinateEvent::Serve {
        origin: Origin {
            conn: ConnId(9),
            request_id: 5,
        },
        request: ServeRequest::ReplicaWrite {
            key,
            versions: VersionSet::new(),
            hint,
            durable: false,
        },
        received_at: Instant::now(),
    };
    let now = Instant::now();

    let mut out = Vec::new();
    on_event(&mut c, now, write(key_where(false), None), &mut out);
    match out.as_slice() {
        [Output::Reply {
            message: Message::Error(ServiceError::NotAReplica { node, version, .. }),
            ..
        }] => assert_eq!((node.as_str(), *version), ("n1", membership.version)),
        other => panic!("expected the refusal alone, got {other:?}"),
    }

    let mut out = Vec::new();
    on_event(&mut c, now, write(key_where(true), None), &mut out);
    assert!(
        matches!(
            out.as_slice(),
            [Output::Storage(StorageEvent {
                request: StorageRequest::Merge { .. },
                ..
            })]
        ),
        "{out:?}"
    );

    let mut out = Vec::new();
    let hint = Some(NodeId::new("n2"));
    on_event(&mut c, now, write(key_where(false), hint), &mut out);
    assert!(
        matches!(
            out.as_slice(),
            [Output::Storage(StorageEvent {
                request: StorageRequest::StoreHint { .. },
                ..
            })]
        ),
        "{out:?}"
    );
}

/// Goal: a replica that refuses a write because it does not hold the key in its view
/// (`NotAReplica`: its view is older or newer than the coordinator's) is replaced by the next
/// spare within the request, with a hint naming it, as an unreachable one is; the put reaches
/// W without it.
#[test]
fn a_replica_write_refused_as_not_a_replica_goes_to_a_spare_with_a_hint() {
    let (mut c, membership) = coordinator_of_three(2, 2, 2);
    let n1 = NodeId::new("n1");
    let key = key_where(&membership, &n1, 2, true);
    let now = Instant::now();
    let mut out = Vec::new();
    on_event(&mut c, now, client_put(key, None, now), &mut out);
    let op = match out.as_slice() {
        [Output::Storage(StorageEvent { op, .. })] => *op,
        other => panic!("expected the local write, got {other:?}"),
    };
    let mut set = VersionSet::new();
    let version = set
        .coordinate_put(&n1, &VClock::new(), Some(b"v".to_vec()), 1, 10)
        .expect("a version");
    let written = StorageDone {
        op,
        result: Ok(StorageOutcome::Written { set, version }),
        durable: false,
    };
    let mut out = Vec::new();
    on_event(&mut c, now, CoordinateEvent::Storage(written), &mut out);
    let (refuser, op) = match out.as_slice() {
        [Output::Peer {
            peer,
            op,
            message: Message::ReplicaWrite(w),
        }] if w.hint.is_none() => (peer.clone(), *op),
        other => panic!("expected one replica write, got {other:?}"),
    };
    let mut out = Vec::new();
    on_event(&mut c, now, not_a_replica(&refuser, op), &mut out);
    let (spare, op) = match out.as_slice() {
        [Output::Peer {
            peer,
            op,
            message: Message::ReplicaWrite(w),
        }] => {
            assert_eq!(w.hint.as_ref(), Some(&refuser), "hinted for the refuser");
            (peer.clone(), *op)
        }
        other => panic!("expected the write on a spare, got {other:?}"),
    };
    assert!(spare != refuser && spare != n1, "{spare}");
    let versions = VersionSet::new();
    let reply = ReplicaReply {
        versions,
        durable: false,
    };
    let mut out = Vec::new();
    on_event(
        &mut c,
        now,
        answer(&spare, op, Ok(Message::ReplicaReply(reply))),
        &mut out,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Output::Reply {
                message: Message::PutReply(_),
                ..
            }]
        ),
        "{out:?}"
    );
}

/// Goal: a forwarded put reaching a node that holds the key in no ring of its view is
/// refused with `NotAReplica` before any write (a local copy would count toward W and then be
/// dropped by cleanup), and the forwarding node tries the next list node instead of
/// answering the client with the refusal.
#[test]
fn a_forwarded_put_refused_as_not_a_replica_goes_to_the_next_list_node() {
    let (mut c, membership) = coordinator_of_three(2, 2, 2);
    let n1 = NodeId::new("n1");
    let now = Instant::now();

    // n1 receives a forwarded put of a key it does not hold.
    let key = key_where(&membership, &n1, 2, false);
    let mut forwarded_put = client_put(key, None, now);
    if let CoordinateEvent::Client {
        request: ClientRequest::Put { forwarded, .. },
        ..
    } = &mut forwarded_put
    {
        *forwarded = true;
    }
    let mut out = Vec::new();
    on_event(&mut c, now, forwarded_put, &mut out);
    assert!(
        matches!(
            out.as_slice(),
            [Output::Reply {
                message: Message::Error(ServiceError::NotAReplica { .. }),
                ..
            }]
        ),
        "refused before any write: {out:?}"
    );

    // n1 forwards a client's put of such a key: the first list node refuses, the next is
    // asked.
    let mut out = Vec::new();
    let (first, op) = forward_a_put(&mut c, &membership, now, &mut out);
    on_event(&mut c, now, not_a_replica(&first, op), &mut out);
    let (second, _) = forwarded(&out);
    assert_ne!(second, first, "the next list node: {out:?}");
}

/// `refuser`'s answer to operation `op`: it holds the key's partition under no ring.
fn not_a_replica(refuser: &NodeId, op: OpId) -> CoordinateEvent {
    let node = refuser.to_string();
    let refusal = ServiceError::NotAReplica {
        node,
        partition: 0,
        version: 1,
    };
    answer(refuser, op, Ok(Message::Error(refusal)))
}
