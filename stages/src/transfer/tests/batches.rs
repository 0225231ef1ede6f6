//! A transfer's batches: resumed from the last acknowledged key after a failure, and read
//! again smaller when the frame limit refuses one.

use super::*;

/// Goal: a transfer streams in acknowledged batches; a batch that fails is read again from
/// the last acknowledged key (never from zero); once the stream ends and nothing changed in
/// the tree meanwhile, the gossip stage is told the partition is handed over.
#[test]
fn a_failed_batch_resumes_after_the_last_acknowledged_key() {
    let (mut machine, transfer, segments, t, mut out) = fresh();
    machine.on_tick(Now::at(t), &mut out);
    let events = effects(&mut out);
    let (op, request) = storage_request(&events);
    assert!(
        matches!(request, StorageRequest::TreeView { .. }),
        "{request:?}"
    );
    machine.on_event(Now::at(t), storage_done(op, tree(segments)), &mut out);
    // First batch, from the start.
    let events = effects(&mut out);
    let (op, request) = storage_request(&events);
    match request {
        StorageRequest::TransferBatch {
            partition, after, ..
        } => {
            assert_eq!(*partition, transfer.partition);
            assert_eq!(after, &None);
        }
        other => panic!("unexpected {other:?}"),
    }
    let batch = batch_of(&["a", "b"], 10, Some(b"cursor-b"));
    machine.on_event(Now::at(t), storage_done(op, batch), &mut out);
    let (op, peer, count) = peer_send(&effects(&mut out));
    assert_eq!((peer, count), (transfer.to.clone(), 2));
    let ack = |op| {
        TransferEvent::Peer(PeerDone {
            op,
            peer: transfer.to.clone(),
            result: Ok(Message::TransferAck(TransferAck { merged: 2 })),
        })
    };
    machine.on_event(Now::at(t), ack(op), &mut out);
    // Second batch, after b; it fails on the wire.
    let events = effects(&mut out);
    let (op, request) = storage_request(&events);
    assert!(
        matches!(request, StorageRequest::TransferBatch { after: Some(a), .. } if a == b"cursor-b"),
        "{request:?}"
    );
    let batch = batch_of(&["c"], 5, None);
    machine.on_event(Now::at(t), storage_done(op, batch), &mut out);
    let (op, _, _) = peer_send(&effects(&mut out));
    machine.on_event(
        Now::at(t),
        TransferEvent::Peer(PeerDone {
            op,
            peer: transfer.to.clone(),
            result: Err(ServiceError::PeerUnreachable {
                node: transfer.to.to_string(),
                why: None,
            }),
        }),
        &mut out,
    );
    assert!(effects(&mut out).is_empty(), "no retry before the pause");
    // After the pause: read again after b, not from the start.
    let later = t + Duration::from_secs(1);
    machine.on_tick(Now::at(later), &mut out);
    let events = effects(&mut out);
    let (op, request) = storage_request(&events);
    assert!(
        matches!(request, StorageRequest::TransferBatch { after: Some(a), .. } if a == b"cursor-b"),
        "resumed from the last acknowledged key: {request:?}"
    );
    let batch = batch_of(&["c"], 5, None);
    machine.on_event(Now::at(later), storage_done(op, batch), &mut out);
    let (op, _, _) = peer_send(&effects(&mut out));
    machine.on_event(Now::at(later), ack(op), &mut out);
    // The stream ended: settle (zero here), then compare the tree with the snapshot.
    machine.on_tick(Now::at(later), &mut out);
    let events = effects(&mut out);
    let (op, request) = storage_request(&events);
    assert!(
        matches!(request, StorageRequest::TreeView { .. }),
        "{request:?}"
    );
    machine.on_event(Now::at(later), storage_done(op, tree(segments)), &mut out);
    let events = effects(&mut out);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Gossip(GossipEvent::Transferred { partition, to })
                if *partition == transfer.partition && *to == transfer.to
        )),
        "{events:?}"
    );
    machine.publish(&BTreeSet::new());
    assert!(machine
        .board
        .read()
        .iter()
        .any(|p| p.phase == "done" && p.objects == 3 && p.retries == 1));
}

/// Goal: a batch the frame limit refuses (`FrameTooLarge`: its encoding outgrew its byte
/// count) is read again with half as many objects, so the transfer goes on instead of
/// sending the same batch for ever.
#[test]
fn a_batch_too_large_for_a_frame_is_read_again_smaller() {
    let (mut machine, transfer, _, t, mut out) = snapshot_taken();
    let (op, _) = storage_request(&effects(&mut out));
    let batch = batch_of(&["a", "b", "c", "d"], 40, None);
    machine.on_event(Now::at(t), storage_done(op, batch), &mut out);
    let (op, _, count) = peer_send(&effects(&mut out));
    assert_eq!(count, 4);
    let refused = TransferEvent::Peer(PeerDone {
        op,
        peer: transfer.to.clone(),
        result: Err(ServiceError::FrameTooLarge {
            declared: 2 << 20,
            max: 1 << 20,
        }),
    });
    machine.on_event(Now::at(t), refused, &mut out);
    let later = t + Duration::from_secs(1);
    machine.on_tick(Now::at(later), &mut out);
    let events = effects(&mut out);
    let (_, request) = storage_request(&events);
    assert!(
        matches!(
            request,
            StorageRequest::TransferBatch {
                max_keys: 2,
                after: None,
                ..
            }
        ),
        "half as many, from the same place: {request:?}"
    );
}
