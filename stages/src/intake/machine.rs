//! The intake's logic as a machine: per connection the frame decoder and what the connection
//! proved, the table of links to peers, and every decision about a frame — to parse, answered
//! on the spot, or fatal to the connection. It owns no socket: the mio loop (`mod.rs`) feeds
//! it bytes and connection events and carries out its [`SocketCommand`]s; the simulator does
//! the same over its simulated network.
//!
//! DRIVER SIDE of peering (SPEC §11, Dynamo §4.6): links this node opens are dialled on first
//! use, start with the challenge–response handshake (`handshake.rs`: hello, challenge, proof)
//! and hold their frames until it is done, are redialled after backoff, and are reported to
//! the replication stage when they fail. RECEIVER SIDE: a connection's hello is challenged,
//! and nothing it sends as a peer is acted on before its proof checks out.

mod admission;
mod cut_off;
mod dialing;
mod drain;

use dialing::report_failed;
use drain::Drain;

use super::handshake::{Challenged, Dialing, NonceSource};
use super::peers::PeerLinks;
use crate::error::ServiceError;
use crate::event::{
    encode_reply, reply_within, ConnId, Event, GateChange, IntakeEvent, Now, Origin, ParseEvent,
    SocketCommand, StageId,
};
use crate::membership::{MemberState, Membership, MembershipView};
use crate::seda::{Machine, Outbox, MAX_RATE_PER_SEC};
use crate::wire::{
    kind, ContextSeal, Frame, FrameDecoder, FrameError, Message, ThrottleChange, NONCE_BYTES,
};
use crate::NodeId;
use slog::{debug, info, warn, Logger};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connection ids start here so they never collide with the mio loop's two fixed tokens
/// (listener and waker).
pub const FIRST_CONN: u64 = 2;
/// How long a dialled peer has to answer the hello. A live peer answers at once (the intake
/// does it on the spot, no disk, no other stage); one that has not within this is paused,
/// partitioned or not shoal, and the link is closed and redialled after backoff rather than
/// holding its frames until the peer wakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits of the intake.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// Largest frame accepted (bytes after the length prefix).
    pub max_frame_bytes: usize,
    /// Most open connections; further ones are closed at once.
    pub max_connections: usize,
    /// Most unsent reply bytes per connection before it is dropped as a slow reader.
    pub max_write_buffer_bytes: usize,
    /// Largest frame between nodes (once a link's handshake is done) and largest reply, whole
    /// frame counted: half of `max_write_buffer_bytes`, so one always fits beside what is
    /// unsent, and at least `max_frame_bytes` (`LimitsSection::max_peer_frame_bytes`).
    pub max_peer_frame_bytes: usize,
    /// Longest a connection may take to complete a frame it started: a client that trickles
    /// a frame (or stops half-way) would otherwise hold a connection slot and its buffer for
    /// ever (slowloris).
    pub frame_timeout: Duration,
    /// `[security] client_token`: when set, a client connection's requests (admin ones too)
    /// are refused `Unauthorized` until it sent an `Auth` frame with this token. Peers prove
    /// themselves with the handshake instead.
    pub client_token: Option<String>,
    /// N, the cluster's replicas of each key, which a peer's handshake must not contradict.
    pub replicas: usize,
}

/// What the machine knows of one connection.
struct Connection {
    decoder: FrameDecoder,
    /// When the incomplete frame now buffered began arriving (`None`: nothing partial).
    frame_started: Option<Instant>,
    /// The peer this incoming connection proved to be by completing the handshake (SPEC §11);
    /// `None` for clients. Peer-only requests are served only when set.
    authenticated: Option<NodeId>,
    /// The hello was answered with a challenge; the proof is awaited.
    challenged: Option<Challenged>,
    /// The client sent the right `Auth` token (only asked for with `client_token` set).
    client_authorized: bool,
    /// Closing once its output is written (after a fatal frame error): input is ignored.
    closing: bool,
    /// A client's requests sent on to parse and not answered yet. Every one is answered
    /// exactly once, by an `IntakeEvent::Send` or by a refusal back to this machine (see
    /// [`ParseEvent`]). Not counted: peers' requests, and what the machine or the loop answers
    /// on the spot (errors, `Stats`, `Throttle`, `Aae`).
    awaiting: u32,
    /// The client shut its sending side: the connection closes once `awaiting` is zero.
    read_done: bool,
    /// A proven peer's forwarded puts and deletes taken and not answered yet, by request id:
    /// a clean stop answers them before it closes the connection (the forwarding coordinator
    /// would otherwise tell its client the outcome is unknown).
    forwarded: std::collections::BTreeSet<u64>,
}

/// The intake's machine.
pub struct IntakeMachine {
    settings: IntakeSettings,
    /// Open connections, in id order.
    connections: BTreeMap<ConnId, Connection>,
    next_conn: u64,
    /// Outgoing connections to peers, by peer.
    links: PeerLinks,
    /// The membership the links were last checked against (by pointer: every installed value
    /// is a new one, while two values may share a version).
    links_checked: Option<Arc<Membership>>,
    /// Outgoing connections still in their handshake, with the frames they hold.
    dialing: BTreeMap<ConnId, Dialing>,
    /// Nonces for this node's hellos and challenges.
    nonces: NonceSource,
    /// Where peers listen, and who is a member.
    membership: MembershipView,
    /// This node, named in its handshakes.
    node: NodeId,
    /// The cluster key: signs this node's side of each handshake, checks the other's.
    seal: ContextSeal,
    /// Handshakes refused, counted per peer when dialling and per member the dialer names
    /// (non-members as one) when answering, so each
    /// is warned of at the 1st, 10th, 100th... time rather than at every redial (a node with
    /// the wrong secret drew about six warnings a second).
    refusals: crate::repeats::Repeats,
    /// A clean stop's progress ([`IntakeMachine::begin_drain`]).
    drain: Drain,
    /// Peers' refusals of this node, and whether clients are turned away (`cut_off.rs`).
    cut_off: cut_off::CutOff,
    /// Replies too large to send, warned of at most once a second.
    oversized: crate::seda::LogLimit,
    /// Open connections by kind, published each tick for the metrics.
    board: super::ConnectionBoard,
    logger: Logger,
}

impl IntakeMachine {
    /// A machine for `node` with no connections. `nonce_seed` seeds its handshake nonces
    /// (random for a real node; the simulator's own for a replayable run).
    pub fn new(
        settings: IntakeSettings,
        membership: MembershipView,
        node: NodeId,
        seal: ContextSeal,
        nonce_seed: [u8; NONCE_BYTES],
        logger: Logger,
    ) -> IntakeMachine {
        IntakeMachine {
            settings,
            connections: BTreeMap::new(),
            next_conn: FIRST_CONN,
            links: PeerLinks::default(),
            links_checked: None,
            dialing: BTreeMap::new(),
            nonces: NonceSource::new(nonce_seed),
            membership,
            node,
            seal,
            refusals: crate::repeats::Repeats::default(),
            drain: Drain::Off,
            cut_off: cut_off::CutOff::default(),
            oversized: crate::seda::LogLimit::default(),
            board: super::ConnectionBoard::default(),
            logger,
        }
    }

    /// The limits the machine was built with (the loop needs the write-buffer bound).
    pub fn settings(&self) -> &IntakeSettings {
        &self.settings
    }

    fn open(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.connections.insert(
            conn,
            Connection {
                decoder: FrameDecoder::new(self.settings.max_frame_bytes),
                frame_started: None,
                authenticated: None,
                challenged: None,
                client_authorized: false,
                closing: false,
                awaiting: 0,
                read_done: false,
                forwarded: Default::default(),
            },
        );
        conn
    }

    /// A connection was accepted: its id, or `None` when the connection limit is reached
    /// (the caller closes it).
    pub fn accept(&mut self) -> Option<ConnId> {
        if matches!(self.drain, Drain::Closing | Drain::Announced) {
            return None;
        }
        if self.connections.len() >= self.settings.max_connections {
            warn!(self.logger, "connection refused: limit reached"; "limit" => self.settings.max_connections);
            return None;
        }
        Some(self.open())
    }

    /// Bytes arrived on `conn`: complete frames go to parse (or are answered here).
    pub fn on_received(&mut self, now: Now, conn: ConnId, bytes: &[u8], out: &mut Outbox) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        if connection.closing {
            return;
        }
        connection.decoder.extend(bytes);
        loop {
            let Some(connection) = self.connections.get_mut(&conn) else {
                return;
            };
            match connection.decoder.next_frame() {
                Ok(Some(frame)) => self.dispatch(now, conn, frame, out),
                Ok(None) => {
                    // Start (or stop) the clock on a partial frame.
                    let partial = connection.decoder.buffered_bytes() > 0;
                    connection.frame_started =
                        partial.then(|| connection.frame_started.unwrap_or(now.instant));
                    return;
                }
                Err(error) => return self.unreadable(conn, error, out),
            }
        }
    }

    /// The other side shut its sending half (end of stream) of `conn`. Returns whether the
    /// loop keeps the connection: a client's stays until its output is written (answers
    /// already made, `Stats` replies) and, when it is still owed answers, until the last one
    /// is made (a client that half-closes after its last request, as `nc -N` or a shell pipe
    /// does, still reads its answers). A link to a peer is finished at once (its failure is
    /// reported when the loop closes it).
    pub fn on_read_closed(&mut self, conn: ConnId, out: &mut Outbox) -> bool {
        if self.links.peer_of(conn).is_some() {
            return false;
        }
        let Some(connection) = self.connections.get_mut(&conn) else {
            return false;
        };
        if connection.read_done || connection.closing {
            return true;
        }
        connection.read_done = true;
        if connection.awaiting == 0 {
            self.close(conn, out);
        }
        true
    }

    /// `conn`'s state if it is a client's ([`IntakeMachine::is_client`]).
    fn client_mut(&mut self, conn: ConnId) -> Option<&mut Connection> {
        if !self.is_client(conn) {
            return None;
        }
        self.connections.get_mut(&conn)
    }

    /// A client request on `conn` was answered: a connection whose client stopped sending
    /// closes (once its output is written) after its last answer.
    fn answered(&mut self, conn: ConnId, out: &mut Outbox) {
        let Some(connection) = self.client_mut(conn) else {
            return;
        };
        debug_assert!(
            connection.awaiting > 0,
            "conn {}: an answer to a client request that was never counted",
            conn.0
        );
        connection.awaiting = connection.awaiting.saturating_sub(1);
        if connection.read_done && connection.awaiting == 0 && !connection.closing {
            self.close(conn, out);
        }
    }

    /// A stream that cannot be framed: the error is written, then the connection closed.
    fn unreadable(&mut self, conn: ConnId, error: FrameError, out: &mut Outbox) {
        warn!(self.logger, "unreadable stream, closing connection"; "conn" => conn.0, "error" => %error);
        let reply = match error {
            FrameError::TooLarge { declared, max } => ServiceError::FrameTooLarge { declared, max },
            other => ServiceError::MalformedFrame {
                reason: other.to_string(),
            },
        };
        self.write(conn, 0, &Message::Error(reply), out);
        self.close(conn, out);
    }

    /// Lets `conn`, a peer's link proven by its handshake (either way), carry frames up to
    /// `max_peer_frame_bytes`: a key's versions can outgrow `max_frame_bytes` through replica
    /// merges (siblings each replica took alone), and replica answers, read repairs, hints and
    /// transfers must still carry them. A client's requests, and anything before a handshake
    /// completed, stay bounded by `max_frame_bytes`.
    pub(super) fn take_peer_frames(&mut self, conn: ConnId) {
        let max = self.settings.max_peer_frame_bytes;
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.decoder.set_max_frame_bytes(max);
        }
    }

    /// The connections the metrics read: where `board` gets them.
    pub fn connection_board(&self) -> super::ConnectionBoard {
        self.board.clone()
    }

    fn publish_connections(&self) {
        let peers = self
            .connections
            .iter()
            .filter(|(conn, c)| c.authenticated.is_some() || self.links.peer_of(**conn).is_some())
            .count() as u64;
        self.board
            .publish(self.connections.len() as u64 - peers, peers);
    }

    /// `frame`, or the `ReplyTooLarge` error that replaces it when it is over the most a reply
    /// may take (`max_peer_frame_bytes`: a larger one might not be queued, and a peer reading
    /// it would close the connection).
    fn within_frame(&mut self, now: Now, conn: ConnId, frame: Vec<u8>) -> Vec<u8> {
        let bytes = frame.len();
        let max = self.settings.max_peer_frame_bytes;
        reply_within(frame, max).unwrap_or_else(|error| {
            if let Some(held_back) = self.oversized.admit(now.instant) {
                warn!(self.logger, "a reply over the reply limit was not sent; its request got ReplyTooLarge";
                      "conn" => conn.0, "bytes" => bytes, "max" => max,
                      "not_logged_since_the_last" => held_back);
            }
            error
        })
    }

    fn write(&self, conn: ConnId, request_id: u64, message: &Message, out: &mut Outbox) {
        out.socket(SocketCommand::Write {
            conn,
            frame: encode_reply(request_id, message),
        });
    }

    /// Asks the loop to close `conn` once its output is written; its input is ignored.
    fn close(&mut self, conn: ConnId, out: &mut Outbox) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.closing = true;
        }
        out.socket(SocketCommand::Close { conn });
    }

    fn dispatch(&mut self, now: Now, conn: ConnId, frame: Frame, out: &mut Outbox) {
        let request_id = frame.request_id;
        if self.dialing.contains_key(&conn) {
            return self.on_handshake_answer(now, conn, &frame, out);
        }
        if frame.kind == kind::PEER_HELLO {
            return self.accept_hello(conn, &frame, out);
        }
        if frame.kind == kind::PEER_PROOF {
            return self.accept_proof(conn, &frame, out);
        }
        if frame.kind == kind::AUTH {
            return self.accept_auth(conn, &frame, out);
        }
        if frame.kind == kind::PEER_STOPPING {
            return self.on_peer_stopping(conn, request_id, out);
        }
        if !self.may_request(conn) {
            let error = ServiceError::Unauthorized {
                reason: "this node requires a client token: send Auth first".into(),
            };
            return self.write(conn, request_id, &Message::Error(error), out);
        }
        if frame.kind == kind::THROTTLE {
            match Message::decode(&frame)
                .map_err(ServiceError::from)
                .and_then(gate_change)
            {
                Ok(change) => out.socket(SocketCommand::Throttle {
                    origin: Origin { conn, request_id },
                    change,
                }),
                Err(error) => self.write(conn, request_id, &Message::Error(error), out),
            }
            return;
        }
        if frame.kind == kind::STATS || frame.kind == kind::AAE {
            let origin = Origin { conn, request_id };
            match Message::decode(&frame) {
                Ok(Message::Aae) => out.socket(SocketCommand::Aae { origin }),
                Ok(_) => out.socket(SocketCommand::Stats { origin }),
                Err(error) => self.write(conn, request_id, &Message::Error(error.into()), out),
            }
            return;
        }
        let authenticated = self
            .connections
            .get(&conn)
            .is_some_and(|c| c.authenticated.is_some());
        let peer = self.links.peer_of(conn).cloned();
        let refused = peer.is_some()
            && frame.kind == kind::ERROR
            && matches!(
                Message::decode(&frame),
                Ok(Message::Error(ServiceError::Unauthorized { .. }))
            );
        if self.refused_while_draining(conn, &frame) {
            return self.refuse_as_stopping(conn, request_id, out);
        }
        if self.refused_as_cut_off(conn, &frame) {
            return self.refuse_as_cut_off(conn, request_id, out);
        }
        if self.is_forwarded(conn, &frame) {
            if let Some(peer) = self.connections.get_mut(&conn) {
                peer.forwarded.insert(request_id);
            }
        } else if let Some(client) = self.client_mut(conn) {
            client.awaiting = client.awaiting.saturating_add(1);
        }
        out.request(ParseEvent {
            conn,
            frame,
            received_at: now.instant,
            peer,
            authenticated,
        });
        if refused {
            let peer = self.links.peer_of(conn);
            // The peer does not count this link as proven, though this node's proof was
            // written. TCP makes that all but impossible (it would take a stream with a
            // hole, or a bug), but if it happens every later request on the link would be
            // refused too: close it, so the next frame redials and handshakes afresh.
            warn!(self.logger, "peer refused a request as unauthorized: closing the link to redial"; "peer" => ?peer, "conn" => conn.0);
            self.close(conn, out);
        }
    }

    /// Closes the links dialled at an address the membership no longer gives their peer (an
    /// `admin move`): the next frame redials it at the new one. Checked once per installed
    /// membership (a review found a move merged into a node already at a higher version
    /// skipped by a check per version).
    fn close_links_to_moved_peers(&mut self, out: &mut Outbox) {
        let membership = self.membership.current();
        if self
            .links_checked
            .as_ref()
            .is_some_and(|checked| Arc::ptr_eq(checked, &membership))
        {
            return;
        }
        self.links_checked = Some(Arc::clone(&membership));
        for (conn, peer, dialled) in self.links.dialled_elsewhere(|p| membership.addr_of(p)) {
            self.links.moving(&peer);
            let Some(conn) = conn else { continue };
            let to = membership.addr_of(&peer).map(|a| a.to_string());
            info!(self.logger, "closing the link to a member that moved: dialling it at its new address";
                  "peer" => %peer, "from" => %dialled, "to" => to.unwrap_or_default(), "conn" => conn.0);
            self.close(conn, out);
        }
    }

    /// `conn` closed (by either side, or a dial failed): a peer link's failure is reported to
    /// the replication stage, which fails what was outstanding on it.
    pub fn on_closed(&mut self, now: Now, conn: ConnId, out: &mut Outbox) {
        self.connections.remove(&conn);
        self.dialing.remove(&conn);
        if let Some(peer) = self.links.peer_of(conn).cloned() {
            let in_flight_lost = self.links.is_established(conn);
            // A stopped peer is redialled every backoff (up to 500 ms): warned once, then
            // quiet until a link to it works again (`admin members` shows it down).
            if self.links.failed(&peer, Some(conn), now.instant) {
                // A member an operator took out (a leave, a removal) stops by plan: its link
                // closing is news, not a warning.
                let departing = matches!(
                    self.membership.current().state_of(&peer),
                    Some(MemberState::Leaving | MemberState::Removed)
                );
                if self.drain == Drain::Announced {
                    // This node is stopping and closed it itself, having said so.
                    debug!(self.logger, "link closed: this node is stopping"; "peer" => %peer, "conn" => conn.0);
                } else if self.links.is_moving(&peer) {
                    info!(self.logger, "link to a moved member closed"; "peer" => %peer, "conn" => conn.0);
                } else if in_flight_lost && departing {
                    info!(self.logger, "link to a departing member closed"; "peer" => %peer, "conn" => conn.0);
                } else if self.links.is_stopping(&peer) {
                    info!(self.logger, "link to a stopped peer closed: redialling quietly until it is back"; "peer" => %peer, "conn" => conn.0);
                } else if in_flight_lost {
                    warn!(self.logger, "peer link lost"; "peer" => %peer, "conn" => conn.0);
                } else {
                    // The address this node dials, from its own membership: a member list
                    // that names a wrong one shows here (every node's version can agree).
                    let addr = self
                        .membership
                        .current()
                        .addr_of(&peer)
                        .map(|a| a.to_string());
                    let addr = addr.unwrap_or_else(|| "(no address)".into());
                    warn!(self.logger, "cannot reach peer: redialling quietly until a link to it works"; "peer" => %peer, "addr" => addr, "conn" => conn.0);
                }
            } else {
                debug!(self.logger, "peer still unreachable"; "peer" => %peer, "conn" => conn.0);
            }
            // Closed without a refusal (a refused handshake is abandoned before its close
            // comes back): whatever the peer said before is old news, and a request failed
            // now must not blame a handshake on a peer that has since stopped.
            self.links.set_refused(&peer, None);
            report_failed(peer, in_flight_lost, None, out);
        }
    }
}

impl Machine for IntakeMachine {
    type Input = IntakeEvent;

    fn on_event(&mut self, now: Now, event: IntakeEvent, out: &mut Outbox) {
        match event {
            IntakeEvent::Send { conn, frame } => {
                let frame = self.within_frame(now, conn, frame);
                if let Some(connection) = self.connections.get_mut(&conn) {
                    // Only a proven peer's connection has any: a client's reply reads nothing.
                    if !connection.forwarded.is_empty() {
                        if let Some((_, id)) = crate::wire::encoded_header(&frame) {
                            connection.forwarded.remove(&id);
                        }
                    }
                    out.socket(SocketCommand::Write { conn, frame });
                    self.answered(conn, out);
                }
            }
            IntakeEvent::ToPeer { peer, frame } => self.send_to_peer(now, peer, frame, out),
        }
    }

    /// Closes connections whose partial frame has been arriving for longer than the frame
    /// timeout, and links whose peer did not answer the hello within [`HANDSHAKE_TIMEOUT`]:
    /// their held frames fail instead of waiting for the peer. A node every peer refused
    /// looks again (a membership change may have taken the refusing members out).
    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        self.publish_connections();
        self.close_links_to_moved_peers(out);
        if self.is_cut_off() {
            self.update_cut_off();
        }
        let unanswered: Vec<ConnId> = self
            .dialing
            .iter()
            .filter(|(_, d)| now.instant.saturating_duration_since(d.started) > HANDSHAKE_TIMEOUT)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in unanswered {
            self.abandon_link(now, conn, None, out);
        }
        let timeout = self.settings.frame_timeout;
        let stalled: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.frame_started
                    .is_some_and(|started| now.instant.saturating_duration_since(started) > timeout)
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stalled {
            warn!(self.logger, "closing connection: frame not completed in time"; "conn" => conn.0, "timeout_ms" => timeout.as_millis() as u64);
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.frame_started = None;
                connection.closing = true;
            }
            out.socket(SocketCommand::Abort { conn });
        }
    }

    /// Parse's queue was full: the request is answered `Overloaded` on the spot.
    fn on_refused(&mut self, _now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        if let Event::Parse(ParseEvent { conn, frame, .. }) = event {
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.forwarded.remove(&frame.request_id);
            }
            self.write(conn, frame.request_id, &Message::Error(error), out);
            self.answered(conn, out);
        }
    }
}

/// Checks an `admin throttle` request: the stage it names must be a background stage.
fn gate_change(message: Message) -> Result<GateChange, ServiceError> {
    let Message::Throttle(request) = message else {
        return Err(ServiceError::MalformedFrame {
            reason: "a throttle frame must hold a throttle request".into(),
        });
    };
    let background = |name: &str| match name.parse::<StageId>() {
        Ok(stage) if stage.paced() => Ok(stage),
        _ => Err(ServiceError::NotABackgroundStage {
            name: name.to_string(),
            known: StageId::ALL
                .into_iter()
                .filter(|s| s.paced())
                .map(StageId::name)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    };
    Ok(match request.change {
        ThrottleChange::Show => GateChange::Show,
        ThrottleChange::Pin {
            stage,
            rate_per_sec,
        } => {
            if rate_per_sec > MAX_RATE_PER_SEC {
                return Err(ServiceError::RateTooHigh {
                    rate: rate_per_sec,
                    max: MAX_RATE_PER_SEC,
                });
            }
            GateChange::Pin(background(&stage)?, rate_per_sec)
        }
        ThrottleChange::Auto { stage } => GateChange::Auto(background(&stage)?),
    })
}
