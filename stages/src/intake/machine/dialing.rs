//! The dialling side of peering: links this node opens to its peers are dialled on first use,
//! hold their frames through the challenge-response handshake (`../handshake.rs`), and are
//! given up, reported and backed off when the handshake fails. Split from `machine.rs` to
//! keep each file one concern.

use super::IntakeMachine;
use crate::event::{ConnId, Now, ReplicateEvent, SocketCommand};
use crate::intake::handshake::{self, Dialing, Refusal};
use crate::intake::peers::Route;
use crate::seda::Outbox;
use crate::wire::{Frame, Message};
use crate::NodeId;
use slog::{debug, warn};

impl IntakeMachine {
    /// Queues a frame for a peer, dialling it if no link exists. Until the link's handshake is
    /// done the frame is held (the receiver would refuse it before the proof).
    pub(super) fn send_to_peer(
        &mut self,
        now: Now,
        peer: NodeId,
        frame: Vec<u8>,
        out: &mut Outbox,
    ) {
        match self.links.route(&peer, now.instant) {
            Route::Via(conn) => match self.dialing.get_mut(&conn) {
                None => out.socket(SocketCommand::Write { conn, frame }),
                // Half the write buffer, so the proof and what is written right after the
                // held frames still fit when they are let go at once.
                Some(dialing)
                    if dialing.held_bytes + frame.len()
                        > self.settings.max_write_buffer_bytes / 2 =>
                {
                    warn!(self.logger, "peer link still in its handshake and its buffer is full: failing the frame"; "peer" => %peer);
                    report_failed(peer, false, None, out);
                }
                Some(dialing) => {
                    dialing.held_bytes += frame.len();
                    dialing.held.push(frame);
                }
            },
            Route::BackingOff => {
                let refused = self.links.refused(&peer);
                report_failed(peer, false, refused, out)
            }
            // Stopping, and the peers were told: a new link would get no word of it.
            Route::Dial if self.announced() => report_failed(peer, false, None, out),
            Route::Dial => {
                let Some(addr) = self.membership.current().addr_of(&peer) else {
                    if self.links.failed(&peer, None, now.instant) {
                        warn!(self.logger, "no address for peer"; "peer" => %peer);
                    }
                    return report_failed(peer, false, None, out);
                };
                let conn = self.open();
                self.links.opened(&peer, conn, addr);
                debug!(self.logger, "dialling peer"; "peer" => %peer, "addr" => %addr, "conn" => conn.0);
                out.socket(SocketCommand::Dial { conn, peer, addr });
                let nonce = self.nonces.next(&self.seal);
                let hello = handshake::hello(&self.node, &nonce, self.ring_terms());
                self.write(conn, 0, &hello, out);
                self.dialing.insert(
                    conn,
                    Dialing {
                        nonce,
                        started: now.instant,
                        held_bytes: frame.len(),
                        held: vec![frame],
                    },
                );
            }
        }
    }

    /// DIALER SIDE: the first frame back on a link in its handshake. A valid challenge is
    /// answered with the proof, followed by every held frame, and the link is established;
    /// anything else (a refusal, a challenge from a stranger) closes the link, which fails
    /// what it held.
    pub(super) fn on_handshake_answer(
        &mut self,
        now: Now,
        conn: ConnId,
        frame: &Frame,
        out: &mut Outbox,
    ) {
        let Some(peer) = self.links.peer_of(conn).cloned() else {
            self.dialing.remove(&conn);
            return self.close(conn, out);
        };
        let Some(dialing) = self.dialing.remove(&conn) else {
            return;
        };
        let verdict = match Message::decode(frame) {
            Ok(Message::PeerChallenge(challenge)) => {
                let terms = self.ring_terms();
                handshake::answer(
                    &self.seal,
                    &self.node,
                    &peer,
                    &dialing.nonce,
                    &challenge,
                    terms,
                )
            }
            Ok(Message::Error(error)) => Err(Refusal::ByPeer {
                error: error.to_string(),
            }),
            Ok(other) => Err(Refusal::Malformed {
                what: format!("the peer answered the hello with {other}"),
            }),
            Err(error) => Err(Refusal::Malformed {
                what: format!("unreadable answer to the hello: {error}"),
            }),
        };
        match verdict {
            Ok(proof) => {
                debug!(self.logger, "peer link established"; "peer" => %peer, "conn" => conn.0);
                // Proven: its answers may now be as large as a peer's may be.
                self.take_peer_frames(conn);
                self.write(conn, 0, &proof, out);
                for frame in dialing.held {
                    out.socket(SocketCommand::Write { conn, frame });
                }
                self.links.established(conn);
                self.note_accepted(&peer);
            }
            Err(reason) => self.abandon_link(now, conn, Some(reason), out),
        }
    }

    /// DIALER SIDE: gives up a link whose handshake failed. Aborted, not closed: a close waits
    /// for a pending connect to finish, which a partition can stretch to minutes. The link
    /// table forgets it at once, so the next frame for the peer backs off and redials instead
    /// of going out on an unproven link, and replication hears that nothing held was sent.
    /// `refused`: why the handshake was refused (the peer answered with something other than
    /// a valid challenge: a secret, a ring or a version to fix), warned at the 1st, 10th,
    /// 100th... refusal of each kind since a link last worked (`Repeats`); `None`: no answer
    /// in time (a paused or partitioned peer), warned once, like a peer that refuses dials.
    pub(super) fn abandon_link(
        &mut self,
        now: Now,
        conn: ConnId,
        refused: Option<Refusal>,
        out: &mut Outbox,
    ) {
        self.dialing.remove(&conn);
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.closing = true;
        }
        out.socket(SocketCommand::Abort { conn });
        if let Some(peer) = self.links.peer_of(conn).cloned() {
            let news = self.links.failed(&peer, Some(conn), now.instant);
            let prefix = format!("dial {peer} ");
            if news {
                self.refusals.forget_all(&prefix);
            }
            let (kind, reason) = match &refused {
                Some(refusal) => (refusal.kind(), refusal.to_string()),
                None => ("no-answer", "hello not answered in time".to_string()),
            };
            let times = match refused {
                Some(_) => self.refusals.note(&format!("{prefix}{kind}")),
                None => news.then_some(1),
            };
            if let Some(times) = times {
                warn!(self.logger, "peer handshake failed, dropping the link"; "peer" => %peer, "conn" => conn.0, "kind" => kind, "reason" => %reason, "times" => times);
            } else {
                debug!(self.logger, "peer handshake failed again"; "peer" => %peer, "conn" => conn.0, "kind" => kind, "reason" => %reason);
            }
            if refused.as_ref().is_some_and(Refusal::is_terms) {
                self.note_conflict(&peer);
            }
            let why = refused.as_ref().map(|refusal| match refusal {
                Refusal::ByPeer { error } => format!("it refused this node's handshake: {error}"),
                own => format!("this node refused its answer to the hello: {own}"),
            });
            self.links.set_refused(&peer, why.clone());
            if why.is_some() {
                self.note_refusal(&peer, &reason);
            }
            report_failed(peer, false, why, out);
        }
    }
}

/// Tells the replication stage a peer failed (`in_flight_lost`: an established link broke, so
/// what was outstanding on it may have been delivered). Offered: the intake never waits; if
/// the queue is full the operations fail at their deadline instead.
pub(super) fn report_failed(
    peer: NodeId,
    in_flight_lost: bool,
    refused: Option<String>,
    out: &mut Outbox,
) {
    out.offer(ReplicateEvent::PeerFailed {
        peer,
        in_flight_lost,
        refused,
    });
}
