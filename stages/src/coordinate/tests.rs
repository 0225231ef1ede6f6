//! The coordinator's state machine, driven directly: quorums, deadlines, errors. No threads,
//! sockets or storage: the test plays the storage stage and reads the machine's outbox.
//! Reference: Dynamo §4.5.

use super::*;
use crate::durability::Durability;
use crate::error::ServiceError;
use crate::event::{
    ClientRequest, ConnId, CoordinateEvent, Event, IntakeEvent, Now, OpId, Origin, PeerDone,
    ReplicateEvent, ServeRequest, StorageDone, StorageEvent, StorageOutcome, StorageRequest,
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
        // Statistics, not behaviour: the metrics tests read what they count.
        .filter(|output| {
            !matches!(output, Output::Other(o) if o.starts_with("Latency") || o.starts_with("Count"))
        })
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

/// `peer`'s answer to operation `op`: `result`.
fn answer(peer: &NodeId, op: OpId, result: Result<Message, ServiceError>) -> CoordinateEvent {
    CoordinateEvent::Peer(PeerDone {
        op,
        peer: peer.clone(),
        result,
    })
}

/// `peer`'s answer to operation `op`: unreachable.
fn unreachable(peer: &NodeId, op: OpId) -> CoordinateEvent {
    let node = peer.to_string();
    answer(
        peer,
        op,
        Err(ServiceError::PeerUnreachable { node, why: None }),
    )
}

/// Answers every peer request in `sent` with `PeerUnreachable`; what that makes goes to `out`.
fn fail_every_peer(c: &mut Coordinator, now: Instant, sent: Vec<Output>, out: &mut Vec<Output>) {
    for output in sent {
        if let Output::Peer { peer, op, .. } = output {
            on_event(c, now, unreachable(&peer, op), out);
        }
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
                    missing: vec!["n1 (silent)".into()],
                }
            );
        }
        other => panic!("expected one quorum error, got {other:?}"),
    }
    assert_eq!(c.pending_requests(), 0);
}

/// A lone node's read whose storage answers `error`: the storage op, and what followed.
fn read_answered_with(
    c: &mut Coordinator,
    start: Instant,
    error: ServiceError,
) -> (OpId, Vec<Output>) {
    let mut out = Vec::new();
    on_event(c, start, get(1, start), &mut out);
    let op = storage_op(&out);
    out.clear();
    let answer = StorageDone {
        op,
        result: Err(error),
        durable: false,
    };
    on_event(c, start, CoordinateEvent::Storage(answer), &mut out);
    (op, out)
}

/// Goal: a failure that makes the quorum unreachable is answered at once with the quorum error
/// (counting the failure), and a late answer after the deadline changes nothing.
#[test]
fn failure_that_makes_quorum_unreachable_is_answered_at_once() {
    let mut c = coordinator();
    let start = Instant::now();
    let failure = ServiceError::Storage {
        reason: "disk on fire".into(),
    };
    let (op, mut out) = read_answered_with(&mut c, start, failure.clone());
    let expected = ServiceError::Quorum {
        operation: "get".into(),
        needed: 1,
        acked: 0,
        asked: 1,
        failed: 1,
        first_failure: Some(format!("n1: {failure}")),
        missing: Vec::new(),
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

/// Goal: a lone node whose storage queue refused the read answers `Overloaded`, naming the
/// stage (back off and retry), not a quorum error.
#[test]
fn a_read_refused_by_a_full_storage_queue_is_answered_overloaded() {
    let full = ServiceError::Overloaded {
        stage: "storage".into(),
    };
    let (_, out) = read_answered_with(&mut coordinator(), Instant::now(), full.clone());
    assert!(
        matches!(out.as_slice(), [Output::Reply { message: Message::Error(e), .. }] if *e == full),
        "{out:?}"
    );
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
    let sent = std::mem::take(&mut out);
    fail_every_peer(&mut c, start, sent, &mut out);
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
        missing: vec![
            "n2 (not asked: held down 0.0 s, its link failed, 1 failure)".into(),
            "n3 (not asked: held down 0.0 s, its link failed, 1 failure)".into(),
        ],
    };
    assert!(
        out.iter().any(|o| matches!(o, Output::Reply { origin, message: Message::Error(e) } if origin.request_id == 2 && *e == expected)),
        "{out:?}"
    );
}

/// A client's put of `key` (connection 1, request 9), received at `start`.
fn client_put(key: Vec<u8>, durable: Option<Durability>, start: Instant) -> CoordinateEvent {
    let request = ClientRequest::Put {
        key,
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
        request_id: 9,
    };
    CoordinateEvent::Client {
        origin,
        request,
        received_at: start,
    }
}

/// The one put forwarded to a peer in `out`: (peer, op).
fn forwarded(out: &[Output]) -> (NodeId, OpId) {
    match out {
        [Output::Peer {
            peer,
            op,
            message: Message::Put(m),
        }] if m.forwarded => (peer.clone(), *op),
        other => panic!("expected one forwarded put, got {other:?}"),
    }
}

/// A client's put (request 9) of a key none of whose replicas is n1, so n1 forwards it; the
/// forward's peer and op. `out` is left empty.
fn forward_a_put(
    c: &mut Coordinator,
    membership: &Membership,
    start: Instant,
    out: &mut Vec<Output>,
) -> (NodeId, OpId) {
    let me = NodeId::new("n1");
    let key = (0..1000)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| {
            let list = membership.ring().preference_list_for_key(k, 2);
            !list.primaries.contains(&me)
        })
        .expect("a key outside n1's lists");
    on_event(c, start, client_put(key, None, start), out);
    let forward = forwarded(out);
    out.clear();
    forward
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
    on_event(
        c,
        start,
        client_put(b"k".to_vec(), durable, start),
        &mut out,
    );
    match out.as_slice() {
        [Output::Storage(StorageEvent {
            op,
            request: StorageRequest::CoordinatePut { durable, .. },
            ..
        })] => (*op, *durable),
        other => panic!("expected the local write, got {other:?}"),
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
    on_event(
        &mut c,
        now,
        unreachable(&NodeId::new("n2"), OpId(999)),
        &mut out,
    );
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

/// Goal: a peer that said it stopped is held down at once, before any request to it failed:
/// a get asks only the others; gossip it sent before it stopped, arriving after, does not bring
/// it back; a probe's answer (once it is back) does, and is announced to hinted handoff.
#[test]
fn a_peer_that_said_it_stopped_is_held_down_until_a_probe_finds_it() {
    let (mut c, _) = coordinator_of_three(3, 2, 2);
    let now = Instant::now();
    let n2 = NodeId::new("n2");
    let mut out = Vec::new();
    on_event(
        &mut c,
        now,
        CoordinateEvent::PeerStopped { peer: n2.clone() },
        &mut out,
    );
    on_event(&mut c, now, get(1, now), &mut out);
    let asked: Vec<NodeId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Peer { peer, .. } => Some(peer.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![NodeId::new("n3")], "n2 is not asked: {out:?}");
    out.clear();
    let back = |out: &[Output]| {
        out.iter()
            .any(|o| matches!(o, Output::Other(e) if e.contains("PeerUp")))
    };
    on_event(
        &mut c,
        now,
        CoordinateEvent::Heard { peer: n2.clone() },
        &mut out,
    );
    assert!(!back(&out), "late gossip does not bring it back: {out:?}");
    // The coordinator of three probes every 60 s.
    on_tick(&mut c, now + Duration::from_secs(61), &mut out);
    let probe = out
        .iter()
        .find_map(|o| match o {
            Output::Peer {
                peer,
                op,
                message: Message::Ping,
            } if *peer == n2 => Some(*op),
            _ => None,
        })
        .expect("n2 probed");
    out.clear();
    let pong = answer(&n2, probe, Ok(Message::Pong));
    on_event(&mut c, now + Duration::from_secs(61), pong, &mut out);
    assert!(back(&out), "a probe's answer brings it back: {out:?}");
}

mod durable;
mod forwarding;
mod not_a_replica;

/// Goal: a request given up before every replica answered (two peers failed, so R=2 can no
/// longer be reached while the local read is still out) names the replica still out: a
/// trial's error said "1 not answered" and not which.
#[test]
fn a_quorum_given_up_early_names_the_replicas_not_yet_answered() {
    let (mut c, _) = coordinator_of_three(3, 2, 2);
    let start = Instant::now();
    let mut out = Vec::new();
    on_event(&mut c, start, get(1, start), &mut out);
    let mut replies = Vec::new();
    fail_every_peer(&mut c, start, out, &mut replies);
    let error = replies
        .iter()
        .find_map(|o| match o {
            Output::Reply {
                message: Message::Error(e),
                ..
            } => Some(e.clone()),
            _ => None,
        })
        .expect("a quorum error once two of three failed");
    match error {
        ServiceError::Quorum {
            acked,
            failed,
            missing,
            ..
        } => {
            assert_eq!((acked, failed), (0, 2));
            assert_eq!(missing, vec!["n1 (not answered yet)".to_string()]);
        }
        other => panic!("expected a quorum error, got {other:?}"),
    }
}
