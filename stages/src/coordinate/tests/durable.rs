//! Durable writes (Dynamo §6.1, `durable_writes`): who flushes before the reply, how the
//! reply counts durable copies, and a put that replicates during its coordinator's flush.

use super::*;

/// The set and version n1's local write of `k` makes.
/// Answers the put's local write `op` with a new version of n1, as `outcome` (written, or
/// applied with its flush to follow), `durable` saying whether it was flushed; what the
/// coordinator sent in return.
fn answer_local_write(
    c: &mut Coordinator,
    op: OpId,
    outcome: fn(VersionSet, crate::versioning::Version) -> StorageOutcome,
    durable: bool,
) -> Vec<Output> {
    let mut set = VersionSet::new();
    let version = set
        .coordinate_put(
            &NodeId::new("n1"),
            &VClock::new(),
            Some(b"v".to_vec()),
            1,
            10,
        )
        .expect("a version");
    let done = StorageDone {
        op,
        result: Ok(outcome(set, version)),
        durable,
    };
    let mut out = Vec::new();
    on_event(c, Instant::now(), CoordinateEvent::Storage(done), &mut out);
    out
}

/// The replica writes among `out`: peer, operation, whether they ask to flush.
fn replica_writes(out: &[Output]) -> Vec<(NodeId, OpId, bool)> {
    out.iter()
        .map(|o| match o {
            Output::Peer {
                peer,
                op,
                message: Message::ReplicaWrite(w),
            } => (peer.clone(), *op, w.durable),
            other => panic!("expected replica writes, got {other:?}"),
        })
        .collect()
}

/// A replica's acknowledgement of a write, on disk or not.
fn replica_ack(
    c: &mut Coordinator,
    (peer, op): (NodeId, OpId),
    durable: bool,
    out: &mut Vec<Output>,
) {
    let versions = VersionSet::new();
    let ack = answer(
        &peer,
        op,
        Ok(Message::ReplicaReply(ReplicaReply { versions, durable })),
    );
    on_event(c, Instant::now(), ack, out);
}

/// Runs one put through n1 of a 3-node N=3 W=2 cluster with `durable` (or the default
/// `default`): the local write answers with its own durability, then the first replica acks
/// with `remote_durable`. Returns whether the local write was asked to flush, whether the
/// replica writes were, and the reply's durable copies.
fn durable_put(
    default: Durability,
    durable: Option<Durability>,
    local_durable: bool,
    remote_durable: bool,
) -> (bool, Vec<bool>, u8) {
    let (mut c, _) = coordinator_of_three_with(3, 2, 2, default);
    let (op, local_flush) = start_put(&mut c, durable);
    let written = |set, version| StorageOutcome::Written { set, version };
    let mut out = answer_local_write(&mut c, op, written, local_durable);
    let sent = replica_writes(&out);
    out.clear();
    let (peer, op, _) = sent.first().cloned().expect("a replica write");
    replica_ack(&mut c, (peer, op), remote_durable, &mut out);
    let copies = match out.as_slice() {
        [Output::Reply {
            message: Message::PutReply(reply),
            ..
        }] => reply.durable,
        other => panic!("expected the put's reply at W = 2, got {other:?}"),
    };
    (local_flush, sent.iter().map(|s| s.2).collect(), copies)
}

/// Goal: Dynamo §6.1's buffered writes at the coordinator: with `durable_writes = "one"` the
/// coordinator's own write flushes and the replica writes do not; with `"all"` every replica
/// write flushes; with `"none"` none does; a request's override beats the cluster default;
/// and the reply counts exactly the acknowledgements that were on disk.
#[test]
fn durable_writes_choose_who_flushes_and_the_reply_counts_durable_copies() {
    use Durability::{All, None as Buffered, One};
    assert_eq!(
        durable_put(One, None, true, false),
        (true, vec![false, false], 1)
    );
    assert_eq!(
        durable_put(All, None, true, true),
        (true, vec![true, true], 2)
    );
    assert_eq!(
        durable_put(Buffered, None, false, false),
        (false, vec![false, false], 0)
    );
    // The request's choice wins over the default, both ways.
    assert_eq!(
        durable_put(Buffered, Some(All), true, true),
        (true, vec![true, true], 2)
    );
    assert_eq!(
        durable_put(All, Some(Buffered), false, false),
        (false, vec![false, false], 0)
    );
    // A node with sync = "always" flushes anyway: its answer says so, and is counted.
    assert_eq!(
        durable_put(Buffered, None, true, true),
        (false, vec![false, false], 2)
    );
}

/// Starts a put through n1 (N=3 W=2, `durable_writes = "one"`) and answers its local write as
/// applied with its flush to follow. Returns the coordinator, the local operation and the
/// replica writes sent (peer, operation, whether they asked to flush).
fn put_applied_before_its_flush() -> (Coordinator, OpId, Vec<(NodeId, OpId, bool)>) {
    let (mut c, _) = coordinator_of_three_with(3, 2, 2, Durability::One);
    let (op, _) = start_put(&mut c, None);
    let applied = |set, version| StorageOutcome::Applied { set, version };
    let sent = replica_writes(&answer_local_write(&mut c, op, applied, false));
    (c, op, sent)
}

/// Goal: with `"one"` the write is replicated while the coordinator's flush runs (the flush
/// and the round trip overlap), yet the client hears "ok" only once that flush answered, even
/// when W buffered acknowledgements came first; the reply then counts one durable copy.
#[test]
fn one_replicates_during_the_coordinators_flush_and_replies_only_after_it() {
    let (mut c, local, sent) = put_applied_before_its_flush();
    assert_eq!(sent.len(), 2, "both other replicas get the write at once");
    assert!(sent.iter().all(|s| !s.2), "with one, replicas do not flush");
    let mut out = Vec::new();
    for (peer, op, _) in sent {
        replica_ack(&mut c, (peer, op), false, &mut out);
    }
    assert!(out.is_empty(), "no reply before the local flush: {out:?}");
    let flushed = StorageDone {
        op: local,
        result: Ok(StorageOutcome::Flushed),
        durable: true,
    };
    on_event(
        &mut c,
        Instant::now(),
        CoordinateEvent::Storage(flushed),
        &mut out,
    );
    match out.as_slice() {
        [Output::Reply {
            message: Message::PutReply(reply),
            ..
        }] => assert_eq!(reply.durable, 1),
        other => panic!("expected the reply after the flush, got {other:?}"),
    }
}

/// Goal: with `"one"` a put whose coordinator flush failed is answered with that failure even
/// though W replicas applied it: no copy is on disk, so "ok" would be a lie.
#[test]
fn one_fails_the_put_when_the_coordinators_flush_fails() {
    let (mut c, local, sent) = put_applied_before_its_flush();
    let mut out = Vec::new();
    for (peer, op, _) in sent {
        replica_ack(&mut c, (peer, op), false, &mut out);
    }
    let failure = ServiceError::Storage {
        reason: "journal flush failed: disk gone".into(),
    };
    let failed = StorageDone {
        op: local,
        result: Err(failure.clone()),
        durable: false,
    };
    on_event(
        &mut c,
        Instant::now(),
        CoordinateEvent::Storage(failed),
        &mut out,
    );
    match out.as_slice() {
        [Output::Reply {
            message: Message::Error(e),
            ..
        }] => assert_eq!(e, &failure),
        other => panic!("expected the flush's error, got {other:?}"),
    }
}
