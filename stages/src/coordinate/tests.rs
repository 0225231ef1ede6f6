//! The coordinator's state machine, driven directly: quorums, deadlines, errors. No threads,
//! sockets or storage: the test plays the storage stage and reads the machine's outbox.
//! Reference: Dynamo §4.5.

use super::*;
use crate::durability::Durability;
use crate::error::ServiceError;
use crate::event::{
    ClientRequest, ConnId, CoordinateEvent, Event, IntakeEvent, Now, OpId, Origin, PeerDone,
    ReplicateEvent, StorageDone, StorageEvent, StorageOutcome, StorageRequest,
};
use crate::membership::{Member, Membership, MembershipView};
use crate::seda::{Effect, Outbox};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use crate::wire::{ContextSeal, FrameDecoder, Message, ReplicaReply};
use crate::NodeId;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(100);

/// The machine's outbox, in the shape these tests check: requests to storage and peers, and
/// client replies decoded back from their frames.
#[derive(Debug)]
enum Output {
    Storage(StorageEvent),
    Peer {
        peer: NodeId,
        op: OpId,
        message: Message,
    },
    Reply {
        origin: Origin,
        message: Message,
    },
    Other(String),
}

fn outputs(outbox: &mut Outbox) -> Vec<Output> {
    outbox
        .take()
        .into_iter()
        .map(|effect| match effect {
            Effect::Send {
                event: Event::Storage(event),
                ..
            } => Output::Storage(event),
            Effect::Send {
                event:
                    Event::Replicate(ReplicateEvent::Send {
                        peer, op, message, ..
                    }),
                ..
            } => Output::Peer { peer, op, message },
            Effect::Send {
                event: Event::Intake(IntakeEvent::Send { conn, frame }),
                ..
            } => {
                let mut decoder = FrameDecoder::new(1 << 20);
                decoder.extend(&frame);
                let frame = decoder.next_frame().expect("a frame").expect("whole");
                let message = Message::decode(&frame).expect("decodes");
                let origin = Origin {
                    conn,
                    request_id: frame.request_id,
                };
                Output::Reply { origin, message }
            }
            other => Output::Other(format!("{other:?}")),
        })
        .filter(|output| !matches!(output, Output::Other(o) if o.contains("Latency")))
        .collect()
}

fn on_event(c: &mut Coordinator, now: Instant, event: CoordinateEvent, out: &mut Vec<Output>) {
    let mut outbox = Outbox::new();
    c.handle(
        Now {
            instant: now,
            wall_ms: 0,
        },
        event,
        &mut outbox,
    );
    out.extend(outputs(&mut outbox));
}

fn on_tick(c: &mut Coordinator, now: Instant, out: &mut Vec<Output>) {
    let mut outbox = Outbox::new();
    c.tick(now, &mut outbox);
    out.extend(outputs(&mut outbox));
}

fn coordinator() -> Coordinator {
    let node = NodeId::new("n1");
    let member = Member {
        id: node.clone(),
        addr: "127.0.0.1:1".parse().expect("addr"),
        weight: 1,
        zone: None,
    };
    let membership = MembershipView::new(Membership::new(1, 8, vec![member]).expect("membership"));
    let settings = CoordinatorSettings {
        node,
        n: 1,
        r: 1,
        w: 1,
        request_timeout: TIMEOUT,
        seal: ContextSeal::new(b"coordinator-tests-secret"),
        probe_interval: Duration::from_millis(100),
        replica_timeout: Duration::from_secs(60),
        durable_writes: Durability::None,
    };
    Coordinator::new(settings, membership)
}

fn get(request_id: u64, now: Instant) -> CoordinateEvent {
    CoordinateEvent::Client {
        origin: Origin {
            conn: ConnId(7),
            request_id,
        },
        request: ClientRequest::Get {
            key: b"k".to_vec(),
            r: None,
            timeout: None,
        },
        received_at: now,
    }
}

fn storage_op(out: &[Output]) -> OpId {
    match out {
        [Output::Storage(StorageEvent {
            op,
            request: StorageRequest::Read { .. },
            ..
        })] => *op,
        other => panic!("expected one storage read, got {other:?}"),
    }
}

/// Goal: a request whose replicas never answer fails at its deadline with the quorum error
/// saying how many of how many answered — never a hang; and not a moment before.
#[test]
fn unanswered_request_fails_at_its_deadline_with_the_quorum_error() {
    let mut c = coordinator();
    let start = Instant::now();
    let mut out = Vec::new();
    on_event(&mut c, start, get(1, start), &mut out);
    storage_op(&out);
    out.clear();
    on_tick(&mut c, start + TIMEOUT / 2, &mut out);
    assert!(out.is_empty(), "failed before the deadline: {out:?}");
    on_tick(&mut c, start + TIMEOUT, &mut out);
    match out.as_slice() {
        [Output::Reply {
            origin,
            message: Message::Error(error),
        }] => {
            assert_eq!(origin.request_id, 1);
            assert_eq!(
                *error,
                ServiceError::Quorum {
                    operation: "get".into(),
                    needed: 1,
                    acked: 0,
                    asked: 1,
                    failed: 0,
                    first_failure: None,
                }
            );
        }
        other => panic!("expected one quorum error, got {other:?}"),
    }
    assert_eq!(c.pending_requests(), 0);
}

/// Goal: a failure that makes the quorum unreachable is answered at once with the quorum error
/// (counting the failure), and a late answer after the deadline changes nothing.
#[test]
fn failure_that_makes_quorum_unreachable_is_answered_at_once() {
    let mut c = coordinator();
    let start = Instant::now();
    let mut out = Vec::new();
    on_event(&mut c, start, get(1, start), &mut out);
    let op = storage_op(&out);
    out.clear();
    let failure = ServiceError::Storage {
        reason: "disk on fire".into(),
    };
    on_event(
        &mut c,
        start,
        CoordinateEvent::Storage(StorageDone {
            op,
            result: Err(failure.clone()),
            durable: false,
        }),
        &mut out,
    );
    let expected = ServiceError::Quorum {
        operation: "get".into(),
        needed: 1,
        acked: 0,
        asked: 1,
        failed: 1,
        first_failure: Some(format!("n1: {failure}")),
    };
    assert!(
        matches!(out.as_slice(), [Output::Reply { message: Message::Error(e), .. }] if *e == expected),
        "{out:?}"
    );
    out.clear();
    let late = StorageDone {
        op,
        result: Ok(StorageOutcome::Versions(VersionSet::new())),
        durable: false,
    };
    on_event(
        &mut c,
        start + TIMEOUT * 2,
        CoordinateEvent::Storage(late),
        &mut out,
    );
    on_tick(&mut c, start + TIMEOUT * 2, &mut out);
    assert!(out.is_empty(), "late answer produced {out:?}");
}

/// Goal: per-request quorums outside 1..=N are refused before any storage work.
#[test]
fn quorum_outside_one_to_n_is_refused_before_any_work() {
    let mut c = coordinator();
    let start = Instant::now();
    let mut out = Vec::new();
    let request = ClientRequest::Get {
        key: b"k".to_vec(),
        r: Some(2),
        timeout: None,
    };
    on_event(
        &mut c,
        start,
        CoordinateEvent::Client {
            origin: Origin {
                conn: ConnId(1),
                request_id: 3,
            },
            request,
            received_at: start,
        },
        &mut out,
    );
    assert!(matches!(
        out.as_slice(),
        [Output::Reply {
            message: Message::Error(ServiceError::InvalidQuorum { value: 2, n: 1, .. }),
            ..
        }]
    ));
}

/// Goal: once the failure detector holds peers down, a request asks only the healthy replicas;
/// when they are fewer than the quorum, the last answer ends the request with the quorum
/// error at once — no request is left without a reply. Reference: Dynamo §4.6, §4.8.3.
#[test]
fn request_with_too_few_healthy_replicas_is_answered_when_they_have() {
    let (mut c, _) = coordinator_of_three(3, 2, 2);
    let start = Instant::now();
    // First get: the two peers fail, which marks them down.
    let mut out = Vec::new();
    on_event(&mut c, start, get(1, start), &mut out);
    for output in std::mem::take(&mut out) {
        if let Output::Peer { peer, op, .. } = output {
            let done = PeerDone {
                op,
                peer: peer.clone(),
                result: Err(ServiceError::PeerUnreachable {
                    node: peer.to_string(),
                }),
            };
            on_event(&mut c, start, CoordinateEvent::Peer(done), &mut out);
        }
    }
    // Second get: only the local replica is asked.
    out.clear();
    on_event(&mut c, start, get(2, start), &mut out);
    let op = storage_op(&out);
    out.clear();
    let answer = StorageDone {
        op,
        result: Ok(StorageOutcome::Versions(VersionSet::new())),
        durable: false,
    };
    on_event(&mut c, start, CoordinateEvent::Storage(answer), &mut out);
    let expected = ServiceError::Quorum {
        operation: "get".into(),
        needed: 2,
        acked: 1,
        asked: 1,
        failed: 0,
        first_failure: None,
    };
    assert!(
        out.iter().any(|o| matches!(o, Output::Reply { origin, message: Message::Error(e) } if origin.request_id == 2 && *e == expected)),
        "{out:?}"
    );
}

/// Goal: a put forwarded to a preference-list node that answers with an error gets exactly
/// that answer, and is not forwarded again (a second primary would write a second version of
/// the same client put). Only an unreachable primary moves the put on to the next.
#[test]
fn forwarded_put_relays_an_error_answer_and_is_not_forwarded_twice() {
    let (mut c, membership) = coordinator_of_three(2, 1, 1);
    let me = NodeId::new("n1");
    let key = (0..1000)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| {
            !membership
                .ring()
                .preference_list_for_key(k, 2)
                .primaries
                .contains(&me)
        })
        .expect("a key outside n1's lists");

    let start = Instant::now();
    let put = |forwarded| ClientRequest::Put {
        key: key.clone(),
        context: Default::default(),
        value: Some(b"v".to_vec()),
        w: None,
        timeout: None,
        forwarded,
        durable: None,
        overwrite: false,
    };
    let mut out = Vec::new();
    on_event(
        &mut c,
        start,
        CoordinateEvent::Client {
            origin: Origin {
                conn: ConnId(1),
                request_id: 9,
            },
            request: put(false),
            received_at: start,
        },
        &mut out,
    );
    let (peer, op) = match out.as_slice() {
        [Output::Peer {
            peer,
            op,
            message: Message::Put(m),
            ..
        }] if m.forwarded => (peer.clone(), *op),
        other => panic!("expected one forwarded put, got {other:?}"),
    };
    out.clear();
    let refusal = ServiceError::TooManySiblings { count: 33, max: 32 };
    on_event(
        &mut c,
        start,
        CoordinateEvent::Peer(PeerDone {
            op,
            peer,
            result: Ok(Message::Error(refusal.clone())),
        }),
        &mut out,
    );
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

/// A coordinator for n1 in a 3-member cluster with the given N/R/W (probes and replica
/// timeouts far off, so only the test's events decide), and its membership.
fn coordinator_of_three(n: usize, r: usize, w: usize) -> (Coordinator, Membership) {
    coordinator_of_three_with(n, r, w, Durability::None)
}

/// [`coordinator_of_three`] with a default `durable_writes`.
fn coordinator_of_three_with(
    n: usize,
    r: usize,
    w: usize,
    durable_writes: Durability,
) -> (Coordinator, Membership) {
    let members: Vec<Member> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Member {
            id: NodeId::new(*id),
            addr: "127.0.0.1:1".parse().expect("addr"),
            weight: 1,
            zone: None,
        })
        .collect();
    let membership = Membership::new(1, 8, members).expect("membership");
    let settings = CoordinatorSettings {
        node: NodeId::new("n1"),
        n,
        r,
        w,
        request_timeout: TIMEOUT,
        seal: ContextSeal::new(b"coordinator-tests-secret"),
        probe_interval: Duration::from_secs(60),
        replica_timeout: Duration::from_secs(60),
        durable_writes,
    };
    let view = MembershipView::new(membership.clone());
    (Coordinator::new(settings, view), membership)
}

/// Sends a client put of `k` through `c` (n1) with `durable`: the local write's operation
/// and whether it was asked to flush.
fn start_put(c: &mut Coordinator, durable: Option<Durability>) -> (OpId, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let request = ClientRequest::Put {
        key: b"k".to_vec(),
        context: Default::default(),
        value: Some(b"v".to_vec()),
        w: None,
        timeout: None,
        forwarded: false,
        durable,
        overwrite: false,
    };
    let origin = Origin {
        conn: ConnId(1),
        request_id: 5,
    };
    let client = CoordinateEvent::Client {
        origin,
        request,
        received_at: start,
    };
    on_event(c, start, client, &mut out);
    match out.as_slice() {
        [Output::Storage(StorageEvent {
            op,
            request: StorageRequest::CoordinatePut { durable, .. },
            ..
        })] => (*op, *durable),
        other => panic!("expected the local write, got {other:?}"),
    }
}

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
    let ack = PeerDone {
        op,
        peer,
        result: Ok(Message::ReplicaReply(ReplicaReply {
            versions: VersionSet::new(),
            durable,
        })),
    };
    on_event(c, Instant::now(), CoordinateEvent::Peer(ack), out);
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

/// Goal: when the failure detector sees a peer it had marked down answer again, hinted
/// handoff is told once (so the hints for it do not wait out their pause); a peer that was
/// never down, or is already back, is not announced. Reference: Dynamo §4.6, §4.8.3.
#[test]
fn a_down_peer_heard_again_is_announced_to_handoff_once() {
    let (mut c, _) = coordinator_of_three(3, 2, 2);
    let now = Instant::now();
    let announced = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::Other(e) if e.contains("PeerUp")))
            .count()
    };
    let heard = || CoordinateEvent::Heard {
        peer: NodeId::new("n2"),
    };
    let mut out = Vec::new();
    on_event(&mut c, now, heard(), &mut out);
    assert_eq!(announced(&out), 0, "n2 was never down: {out:?}");
    let unreachable = PeerDone {
        op: OpId(999),
        peer: NodeId::new("n2"),
        result: Err(ServiceError::PeerUnreachable { node: "n2".into() }),
    };
    on_event(&mut c, now, CoordinateEvent::Peer(unreachable), &mut out);
    assert_eq!(announced(&out), 0);
    for _ in 0..2 {
        on_event(&mut c, now, heard(), &mut out);
    }
    assert_eq!(
        announced(&out),
        1,
        "announced once when it came back: {out:?}"
    );
}
