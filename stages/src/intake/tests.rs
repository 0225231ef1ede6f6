//! The intake machine's side of the peer handshake, two machines wired by hand: what the
//! dialer holds and when it lets go, and what fails a link.

use super::*;
use crate::event::{Event, IntakeEvent, Now, ReplicateEvent, SocketCommand};
use crate::membership::{Member, Membership, MembershipView};
use crate::seda::{Effect, Machine, Outbox};
use crate::wire::{kind, ContextSeal, FrameDecoder, Message};
use crate::NodeId;
use std::time::{Duration, Instant};

mod cut_off;
mod oversized;
mod refusals;

const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"intake-tests-cluster-secret";

fn membership() -> MembershipView {
    let members = vec![Member::loopback("n1", 1), Member::loopback("n2", 2)];
    MembershipView::new(Membership::new(1, 8, members).expect("membership"))
}

fn machine(node: &str, secret: &[u8], seed: u8) -> IntakeMachine {
    machine_in(node, secret, seed, membership())
}

fn machine_in(node: &str, secret: &[u8], seed: u8, membership: MembershipView) -> IntakeMachine {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    machine_logging(node, secret, seed, membership, logger)
}

fn machine_logging(
    node: &str,
    secret: &[u8],
    seed: u8,
    membership: MembershipView,
    logger: slog::Logger,
) -> IntakeMachine {
    let settings = IntakeSettings {
        max_frame_bytes: 1 << 20,
        max_connections: 16,
        max_write_buffer_bytes: 4096,
        max_peer_frame_bytes: 2 << 20,
        frame_timeout: FRAME_TIMEOUT,
        client_token: None,
        replicas: 3,
    };
    IntakeMachine::new(
        settings,
        membership,
        NodeId::new(node),
        ContextSeal::new(secret),
        [seed; 16],
        logger,
    )
}

/// The frames written, in order, and the connections closed.
#[derive(Default, Debug)]
struct Written {
    frames: Vec<(ConnId, Vec<u8>)>,
    closed: Vec<ConnId>,
    dialled: Vec<ConnId>,
    failed: Vec<(NodeId, bool)>,
    /// The reason each failure carried, when the peer refused this node's handshake.
    refused: Vec<Option<String>>,
    parsed: usize,
    /// Of those, from a connection that completed the handshake.
    parsed_as_peer: usize,
    /// Peers the coordinator was told stopped.
    stopped: Vec<NodeId>,
}

fn written(out: &mut Outbox) -> Written {
    let mut w = Written::default();
    for effect in out.take() {
        match effect {
            Effect::Socket(SocketCommand::Write { conn, frame }) => w.frames.push((conn, frame)),
            Effect::Socket(SocketCommand::Close { conn } | SocketCommand::Abort { conn }) => {
                w.closed.push(conn)
            }
            Effect::Socket(SocketCommand::Dial { conn, .. }) => w.dialled.push(conn),
            Effect::Send {
                event:
                    Event::Replicate(ReplicateEvent::PeerFailed {
                        peer,
                        in_flight_lost,
                        refused,
                    }),
                ..
            } => {
                w.failed.push((peer, in_flight_lost));
                w.refused.push(refused);
            }
            Effect::Send {
                event: Event::Coordinate(crate::event::CoordinateEvent::PeerStopped { peer }),
                ..
            } => w.stopped.push(peer),
            Effect::Send {
                event: Event::Parse(parse),
                ..
            } => {
                w.parsed += 1;
                w.parsed_as_peer += usize::from(parse.authenticated);
            }
            _ => {}
        }
    }
    w
}

fn kind_of(frame: &[u8]) -> u16 {
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.extend(frame);
    decoder
        .next_frame()
        .expect("a frame")
        .expect("a whole frame")
        .kind
}

fn to_peer(frame: &[u8]) -> IntakeEvent {
    IntakeEvent::ToPeer {
        peer: NodeId::new("n2"),
        frame: frame.to_vec(),
    }
}

/// `dialer` sends a ping to `receiver` (n2): the dial and hello, the receiver's challenge, and
/// the dialer's answer to it. The link, the receiver's side of it, and what the dialer did
/// with the challenge.
fn dial_and_answer(
    dialer: &mut IntakeMachine,
    receiver: &mut IntakeMachine,
    now: Now,
    out: &mut Outbox,
) -> (ConnId, ConnId, Written) {
    dialer.on_event(now, to_peer(&ping()), out);
    let w = written(out);
    let link = w.dialled[0];
    let incoming = receiver.accept().expect("accepted");
    receiver.on_received(now, incoming, &w.frames[0].1, out);
    let challenge = written(out).frames.remove(0).1;
    dialer.on_received(now, link, &challenge, out);
    (link, incoming, written(out))
}

fn ping() -> Vec<u8> {
    crate::wire::Message::Ping.encode(1).expect("encode")
}

/// Goal: a dialer writes only its hello until the receiver's challenge arrives, then its proof
/// and every frame it held, in order; later frames go straight out; the receiver passes the
/// held request on as an authenticated peer's.
#[test]
fn a_dialer_holds_its_frames_until_the_challenge_and_then_sends_proof_and_frames() {
    let now = Now::real();
    let (mut dialer, mut receiver) = (machine("n1", SECRET, 1), machine("n2", SECRET, 2));
    let mut out = Outbox::new();
    dialer.on_event(now, to_peer(&ping()), &mut out);
    dialer.on_event(now, to_peer(&ping()), &mut out);
    let w = written(&mut out);
    assert_eq!(w.dialled.len(), 1);
    let link = w.dialled[0];
    let kinds: Vec<u16> = w.frames.iter().map(|(_, f)| kind_of(f)).collect();
    assert_eq!(
        kinds,
        vec![kind::PEER_HELLO],
        "only the hello before the challenge"
    );

    let incoming = receiver.accept().expect("accepted");
    receiver.on_received(now, incoming, &w.frames[0].1, &mut out);
    let r = written(&mut out);
    assert_eq!(r.closed, vec![]);
    assert_eq!(r.frames.len(), 1);
    assert_eq!(kind_of(&r.frames[0].1), kind::PEER_CHALLENGE);

    dialer.on_received(now, link, &r.frames[0].1, &mut out);
    let w = written(&mut out);
    let kinds: Vec<u16> = w.frames.iter().map(|(_, f)| kind_of(f)).collect();
    assert_eq!(kinds, vec![kind::PEER_PROOF, kind::PING, kind::PING]);
    assert!(w.frames.iter().all(|(conn, _)| *conn == link));
    dialer.on_event(now, to_peer(&ping()), &mut out);
    let later = written(&mut out);
    assert_eq!(later.frames.len(), 1, "an established link writes at once");

    let bytes: Vec<u8> = w.frames.iter().flat_map(|(_, f)| f.clone()).collect();
    receiver.on_received(now, incoming, &bytes, &mut out);
    let r = written(&mut out);
    assert_eq!(r.closed, vec![], "the proof is accepted");
    assert_eq!(r.parsed, 2, "both held pings reach parse");
    assert_eq!(r.parsed_as_peer, 2, "as a proven peer's");
}

/// Goal: a challenge signed with another cluster's secret drops the link without writing a
/// proof or any held frame, and replication hears at once that the peer is unreachable (none
/// of its frames was sent), once, not again when the socket's close comes back.
#[test]
fn a_challenge_from_another_cluster_closes_the_link_and_sends_nothing() {
    let now = Now::real();
    let (mut dialer, mut stranger) = (
        machine("n1", SECRET, 1),
        machine("n2", b"another-cluster-secret", 2),
    );
    let mut out = Outbox::new();
    let (link, _, w) = dial_and_answer(&mut dialer, &mut stranger, now, &mut out);
    assert_eq!(w.frames.len(), 0, "no proof and no held frame");
    assert_eq!(w.closed, vec![link]);
    assert_eq!(w.failed, vec![(NodeId::new("n2"), false)]);
    dialer.on_closed(now, link, &mut out);
    assert_eq!(written(&mut out).failed, vec![], "reported once");
}

/// Goal: requests failed because the peer refused this node's handshake say so, with the
/// peer's reason, and so do those failed while the link backs off after it (a quorum error
/// read only "peer n2 is unreachable" for a wrong cluster secret); once a later dial fails
/// without a refusal, they no longer do.
#[test]
fn a_refused_handshake_is_the_reason_requests_to_that_peer_fail() {
    let now = Now::real();
    let (mut dialer, mut stranger) = (
        machine("n1", SECRET, 1),
        machine("n2", b"another-cluster-secret", 2),
    );
    let mut out = Outbox::new();
    let (_, _, w) = dial_and_answer(&mut dialer, &mut stranger, now, &mut out);
    let first = w.refused.first().cloned().flatten().expect("a reason");
    // The stranger's challenge is not signed with this cluster's secret: the dialer itself
    // refuses it, and says so (it used to read as the stranger's refusal).
    assert!(
        first.contains("this node refused its answer to the hello: challenge not signed with this cluster's secret"),
        "{first}"
    );
    dialer.on_event(now, to_peer(&ping()), &mut out);
    let backing_off = written(&mut out);
    assert_eq!(backing_off.dialled.len(), 0, "backing off, not redialling");
    assert_eq!(backing_off.refused, vec![Some(first)]);
    // The peer has since stopped: a redial that closes without a refusal fails with no
    // reason, and so do the sends backing off after it (it refused once; it is gone now).
    let later = Now {
        instant: now.instant + Duration::from_secs(1),
        wall_ms: now.wall_ms + 1000,
    };
    dialer.on_event(later, to_peer(&ping()), &mut out);
    let redial = written(&mut out).dialled[0];
    dialer.on_closed(later, redial, &mut out);
    assert_eq!(written(&mut out).refused, vec![None]);
    dialer.on_event(later, to_peer(&ping()), &mut out);
    assert_eq!(written(&mut out).refused, vec![None]);
}

/// Goal: a peer that never answers the hello (paused, partitioned, or not shoal) has its link
/// aborted after the handshake timeout, not before, and what it held fails at once; the next
/// frame for the peer is not written on the abandoned link but waits for the backoff and
/// redials with a new hello. Frames beyond the hold's bound fail at once.
#[test]
fn an_unanswered_hello_times_out_and_a_full_hold_fails_frames() {
    let start = Instant::now();
    let now = Now {
        instant: start,
        wall_ms: 0,
    };
    let mut dialer = machine("n1", SECRET, 1);
    let mut out = Outbox::new();
    dialer.on_event(now, to_peer(&ping()), &mut out);
    let link = written(&mut out).dialled[0];
    dialer.on_event(now, to_peer(&vec![0u8; 5000]), &mut out);
    let w = written(&mut out);
    assert_eq!(
        w.failed,
        vec![(NodeId::new("n2"), false)],
        "a frame over the held bound fails"
    );
    assert!(w.frames.is_empty());

    let at = |d: Duration| Now {
        instant: start + d,
        wall_ms: 0,
    };
    dialer.on_tick(at(HANDSHAKE_TIMEOUT), &mut out);
    assert_eq!(written(&mut out).closed, vec![], "not before the timeout");
    let timed_out = at(HANDSHAKE_TIMEOUT + Duration::from_millis(1));
    dialer.on_tick(timed_out, &mut out);
    let w = written(&mut out);
    assert_eq!(w.closed, vec![link]);
    assert_eq!(w.failed, vec![(NodeId::new("n2"), false)]);
    dialer.on_event(timed_out, to_peer(&ping()), &mut out);
    let w = written(&mut out);
    assert!(w.frames.is_empty(), "nothing on the abandoned link");
    assert_eq!(w.failed, vec![(NodeId::new("n2"), false)], "backing off");
    dialer.on_event(at(HANDSHAKE_TIMEOUT * 2), to_peer(&ping()), &mut out);
    let w = written(&mut out);
    assert_eq!(w.dialled.len(), 1, "redialled after the backoff");
    assert_ne!(w.dialled[0], link);
    let kinds: Vec<u16> = w.frames.iter().map(|(_, f)| kind_of(f)).collect();
    assert_eq!(kinds, vec![kind::PEER_HELLO]);
}

/// Goal: two nodes' nonces differ, and one node never repeats one: what makes a recorded
/// proof worthless on another connection.
#[test]
fn nonces_never_repeat_within_a_node_or_across_seeds() {
    let seal = ContextSeal::new(SECRET);
    let mut a = handshake::NonceSource::new([1; 16]);
    let mut b = handshake::NonceSource::new([2; 16]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        assert!(seen.insert(a.next(&seal)));
        assert!(seen.insert(b.next(&seal)));
    }
}

/// Goal: a peer that answers a request on an established link with `Unauthorized` (it no
/// longer counts the link as proven) gets the answer passed on and the link closed, so the
/// next frame (after the backoff) redials and handshakes afresh instead of being refused for ever.
#[test]
fn an_unauthorized_answer_on_a_link_closes_it_for_a_fresh_handshake() {
    let now = Now::real();
    let (mut dialer, mut receiver) = (machine("n1", SECRET, 1), machine("n2", SECRET, 2));
    let mut out = Outbox::new();
    let (link, _, w) = dial_and_answer(&mut dialer, &mut receiver, now, &mut out);
    assert_eq!(w.frames.len(), 2, "proof and ping");

    let refusal = crate::event::encode_reply(
        1,
        &crate::wire::Message::Error(crate::error::ServiceError::Unauthorized {
            reason: "no valid hello".into(),
        }),
    );
    dialer.on_received(now, link, &refusal, &mut out);
    let w = written(&mut out);
    assert_eq!(w.parsed, 1, "the refusal still answers its request");
    assert_eq!(w.closed, vec![link]);
    dialer.on_closed(now, link, &mut out);
    written(&mut out);
    let after_backoff = Now {
        instant: now.instant + Duration::from_secs(1),
        ..now
    };
    dialer.on_event(after_backoff, to_peer(&ping()), &mut out);
    let w = written(&mut out);
    let kinds: Vec<u16> = w.frames.iter().map(|(_, f)| kind_of(f)).collect();
    assert_eq!(w.dialled.len(), 1, "redialled");
    assert_eq!(kinds, vec![kind::PEER_HELLO]);
}

/// Goal: a client that shuts its sending side after its requests keeps its connection until
/// every one is answered (a refused one too), then it closes; one owed nothing closes at once.
#[test]
fn a_client_that_stops_sending_gets_its_answers_before_the_close() {
    let now = Now::real();
    let mut out = Outbox::new();
    let mut node = machine("n1", SECRET, 1);
    let client = node.accept().expect("accepted");
    let mut requests = ping();
    requests.extend(crate::wire::Message::Ping.encode(2).expect("encode"));
    requests.extend(crate::wire::Message::Ping.encode(3).expect("encode"));
    node.on_received(now, client, &requests, &mut out);
    let parsed: Vec<Event> = out
        .take()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                event: event @ Event::Parse(_),
                ..
            } => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(parsed.len(), 3);

    assert!(
        node.on_read_closed(client, &mut out),
        "three answers are owed"
    );
    assert!(written(&mut out).closed.is_empty());
    let answer = |request_id| IntakeEvent::Send {
        conn: client,
        frame: crate::wire::Message::Pong
            .encode(request_id)
            .expect("encode"),
    };
    node.on_event(now, answer(1), &mut out);
    let first = written(&mut out);
    assert_eq!((first.frames.len(), first.closed.len()), (1, 0));
    let refused = parsed.into_iter().nth(1).expect("the second request");
    node.on_refused(now, refused, crate::ServiceError::ShuttingDown, &mut out);
    let second = written(&mut out);
    assert_eq!((second.frames.len(), second.closed.len()), (1, 0));
    node.on_event(now, answer(3), &mut out);
    let last = written(&mut out);
    assert_eq!(last.frames.len(), 1);
    assert_eq!(last.closed, vec![client], "closed after the last answer");

    // Owed nothing: closed once its output is written (not dropped with it).
    let idle = node.accept().expect("accepted");
    assert!(node.on_read_closed(idle, &mut out));
    assert_eq!(written(&mut out).closed, vec![idle]);
}

/// Goal: a stopping node's intake answers what it took, refuses a client's later requests
/// `ShuttingDown` before any stage sees them, closes every client connection once none is
/// owed an answer, and closes new connections at once from then on.
#[test]
fn a_draining_intake_refuses_new_requests_and_closes_clients_once_none_is_owed() {
    let now = Now::real();
    let mut out = Outbox::new();
    let mut node = machine("n1", SECRET, 1);
    let busy = node.accept().expect("accepted");
    let idle = node.accept().expect("accepted");
    node.on_received(now, busy, &ping(), &mut out);
    assert_eq!(written(&mut out).parsed, 1);

    node.begin_drain();
    assert!(!node.drain_step(&mut out), "one answer is owed");
    assert!(
        written(&mut out).closed.is_empty(),
        "nothing closes while owed"
    );
    let later = crate::wire::Message::Ping.encode(2).expect("encode");
    node.on_received(now, busy, &later, &mut out);
    let refusal = written(&mut out);
    assert_eq!(refusal.parsed, 0, "refused before any stage");
    let [(conn, frame)] = refusal.frames.as_slice() else {
        panic!("one refusal written: {refusal:?}");
    };
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.extend(frame);
    let frame = decoder.next_frame().expect("frame").expect("whole");
    assert_eq!((*conn, frame.request_id), (busy, 2));
    assert!(matches!(
        crate::wire::Message::decode(&frame),
        Ok(crate::wire::Message::Error(
            crate::ServiceError::ShuttingDown
        ))
    ));

    let answer = crate::wire::Message::Pong.encode(1).expect("encode");
    node.on_event(
        now,
        IntakeEvent::Send {
            conn: busy,
            frame: answer,
        },
        &mut out,
    );
    assert_eq!(
        written(&mut out).frames.len(),
        1,
        "the owed answer is written"
    );
    assert!(!node.drain_step(&mut out), "the clients are still open");
    let mut closed = written(&mut out).closed;
    closed.sort();
    assert_eq!(
        closed,
        vec![busy, idle],
        "every client closes once none is owed"
    );
    assert!(
        node.accept().is_none(),
        "a new connection is closed at once"
    );
    node.on_closed(now, busy, &mut out);
    node.on_closed(now, idle, &mut out);
    assert!(node.drain_step(&mut out), "no client connection is left");
}

/// Goal: a draining node refuses a put a peer forwards (its coordinator tries the next list
/// node) but serves the peer's replica traffic; as its drain ends it says it is stopping on
/// every connection with a peer, the links it dialled and the ones peers dialled, and closes
/// each once that is written; the peer that reads it tells its coordinator (which holds the
/// node down); a client cannot say it for a peer.
#[test]
fn a_stopping_node_tells_its_peers_and_only_a_peer_may_say_it() {
    let now = Now::real();
    let (mut n1, mut n2) = (machine("n1", SECRET, 1), machine("n2", SECRET, 2));
    let mut out = Outbox::new();
    // n1 dials n2; n2's side of the link is the connection n1 proved itself on.
    let (link, incoming, answered) = dial_and_answer(&mut n1, &mut n2, now, &mut out);
    let proof: Vec<u8> = answered.frames.into_iter().flat_map(|(_, f)| f).collect();
    n2.on_received(now, incoming, &proof, &mut out);
    assert_eq!(written(&mut out).parsed_as_peer, 1, "n1 proved itself");

    let forwarded_put = |request_id| {
        crate::wire::Message::Put(crate::wire::PutRequest {
            key: crate::wire::Bytes::from(b"k".to_vec()),
            context: None,
            value: crate::wire::Bytes::from(b"v".to_vec()),
            w: None,
            timeout_ms: None,
            forwarded: true,
            durable: None,
            overwrite: false,
        })
        .encode(request_id)
        .expect("encode")
    };
    // Taken before the stop: owed, and waited for.
    n2.on_received(now, incoming, &forwarded_put(5), &mut out);
    assert_eq!(written(&mut out).parsed_as_peer, 1);
    n2.begin_drain();
    assert_eq!(n2.owed(), 1, "a forwarded put taken is owed");
    assert!(!n2.drain_step(&mut out));
    let reply = crate::wire::Message::Pong.encode(5).expect("encode");
    n2.on_event(
        now,
        IntakeEvent::Send {
            conn: incoming,
            frame: reply,
        },
        &mut out,
    );
    assert_eq!(n2.owed(), 0, "answered");
    written(&mut out);
    n2.on_received(now, incoming, &forwarded_put(7), &mut out);
    let turned_away = written(&mut out);
    assert_eq!(
        turned_away.parsed, 0,
        "a forwarded put is refused: {turned_away:?}"
    );
    assert_eq!(turned_away.frames.len(), 1, "with an answer");
    n2.on_received(now, incoming, &ping(), &mut out);
    assert_eq!(
        written(&mut out).parsed_as_peer,
        1,
        "replica traffic is served"
    );

    n2.announce_stop(&mut out);
    let told = written(&mut out);
    assert_eq!(told.frames.len(), 1, "one connection with a peer: {told:?}");
    let (conn, frame) = &told.frames[0];
    assert_eq!((*conn, kind_of(frame)), (incoming, kind::PEER_STOPPING));
    assert_eq!(told.closed, vec![incoming], "closed once that is written");
    assert_eq!(n2.peers_open(), 1, "until the loop closed it");
    n2.on_closed(now, incoming, &mut out);
    assert_eq!(n2.peers_open(), 0);

    n1.on_received(now, link, frame, &mut out);
    let heard = written(&mut out);
    assert_eq!(heard.stopped, vec![NodeId::new("n2")]);
    assert!(heard.frames.is_empty(), "no answer");
    n1.announce_stop(&mut out);
    let told_back = written(&mut out);
    let kinds: Vec<(ConnId, u16)> = told_back
        .frames
        .iter()
        .map(|(conn, f)| (*conn, kind_of(f)))
        .collect();
    assert_eq!(
        kinds,
        vec![(link, kind::PEER_STOPPING)],
        "on the link it dialled"
    );
    assert_eq!(told_back.closed, vec![link]);
    n1.on_closed(now, link, &mut out);
    assert_eq!(
        written(&mut out).failed.len(),
        1,
        "the close still fails what was on it"
    );

    let mut n3 = machine("n3", SECRET, 3);
    let client = n3.accept().expect("accepted");
    n3.on_received(now, client, frame, &mut out);
    let refused = written(&mut out);
    assert!(
        refused.stopped.is_empty(),
        "a client cannot say a peer stopped"
    );
    assert_eq!(refused.frames.len(), 1, "it is told why");
}
