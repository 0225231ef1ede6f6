//! A clean stop's side of the intake machine (SIGINT, SIGTERM: `Node::shutdown`): refuse what
//! arrives, answer what was taken, close the clients' connections, then tell the peers and
//! close theirs. The loop (`intake/mod.rs`, `Intake::drained`) calls these in turn and bounds
//! them in time; split from `machine.rs` to keep each file one concern.

use super::IntakeMachine;
use crate::error::ServiceError;
use crate::event::{ConnId, CoordinateEvent};
use crate::seda::Outbox;
use crate::wire::{kind, Frame, Message};
use crate::NodeId;
use slog::info;

/// Where a clean stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    /// Serving.
    Off,
    /// Answering what was taken; refusing clients' new requests and peers' forwarded ones.
    Answering,
    /// Nothing owed: every client connection closes once its output is written, and new
    /// connections are closed at once.
    Closing,
    /// The peers were told: their connections close once `Stopping` is written.
    Announced,
}

impl IntakeMachine {
    /// A clean stop begins: from now on a client's request is refused `ShuttingDown`, and so
    /// is a put or delete a peer forwards (its coordinator sends it to the next list node);
    /// both are refused before any stage sees them, so neither was applied. Requests already
    /// taken are still answered, and peers' replica requests and the answers to this node's
    /// own are served as before. `Auth`, `Stats`, `Throttle`, `Aae`, `Members` and `Ring`
    /// are still answered (they change no data). Called again, it does nothing.
    pub fn begin_drain(&mut self) {
        if self.drain == Drain::Off {
            self.drain = Drain::Answering;
        }
    }

    /// Whether `frame` on `conn` is refused because the node is stopping: a client's request,
    /// or a put or delete a peer forwarded (the coordination a client asked of it).
    pub(super) fn refused_while_draining(&self, conn: ConnId, frame: &Frame) -> bool {
        if self.drain == Drain::Off {
            return false;
        }
        // What only reads the node's state is still answered (a trial found `admin members`
        // refused while `admin stats` was answered).
        let reads_state = matches!(frame.kind, kind::MEMBERS | kind::RING);
        self.is_forwarded(conn, frame) || (self.is_client(conn) && !reads_state)
    }

    /// Whether `frame` on `conn` is a put or delete a proven peer forwarded (a peer sends a
    /// client's kind of request only to forward it).
    pub(super) fn is_forwarded(&self, conn: ConnId, frame: &Frame) -> bool {
        matches!(frame.kind, kind::PUT | kind::DELETE)
            && self
                .connections
                .get(&conn)
                .is_some_and(|c| c.authenticated.is_some())
    }

    /// The answer to a refused frame.
    pub(super) fn refuse_as_stopping(&self, conn: ConnId, request_id: u64, out: &mut Outbox) {
        let error = Message::Error(ServiceError::ShuttingDown);
        self.write(conn, request_id, &error, out);
    }

    /// A clean stop's next step: once no client is owed an answer, every client connection is
    /// closed (after its output is written). Returns whether no client connection is left.
    pub fn drain_step(&mut self, out: &mut Outbox) -> bool {
        match self.drain {
            Drain::Off => false,
            Drain::Answering if self.owed() > 0 => false,
            Drain::Answering => {
                self.drain = Drain::Closing;
                let open: Vec<ConnId> = self
                    .connections
                    .iter()
                    .filter(|(conn, c)| !c.closing && self.is_client(**conn))
                    .map(|(conn, _)| *conn)
                    .collect();
                for conn in open {
                    self.close(conn, out);
                }
                false
            }
            Drain::Closing | Drain::Announced => self.clients_open() == 0,
        }
    }

    /// Whether the peers were told: frames for them are failed, not dialled.
    pub(super) fn announced(&self) -> bool {
        self.drain == Drain::Announced
    }

    /// A clean stop's last word to the peers: `Stopping` on every connection with a peer, the
    /// links this node dialled and the ones peers dialled, each then closed like a client's
    /// (its output written first, then the close, then the linger), so each peer reads it
    /// before that connection's end and takes the end as planned.
    pub fn announce_stop(&mut self, out: &mut Outbox) {
        self.drain = Drain::Announced;
        let mut told = Vec::new();
        for (conn, peer) in self.links.established_links() {
            self.write(conn, 0, &Message::Stopping, out);
            told.push(peer);
        }
        let dialled_in: Vec<(ConnId, NodeId)> = self
            .connections
            .iter()
            .filter_map(|(conn, c)| c.authenticated.clone().map(|peer| (*conn, peer)))
            .collect();
        for (conn, peer) in dialled_in {
            self.write(conn, 0, &Message::Stopping, out);
            told.push(peer);
        }
        let peer_conns: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(conn, c)| !c.closing && !self.is_client(**conn))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in peer_conns {
            if self.dialing.contains_key(&conn) {
                // Still in its handshake (or connecting): nothing was said on it, and a close
                // would wait for a connect that may never come.
                out.socket(crate::event::SocketCommand::Abort { conn });
                if let Some(c) = self.connections.get_mut(&conn) {
                    c.closing = true;
                }
            } else {
                self.close(conn, out);
            }
        }
        told.sort();
        told.dedup();
        info!(self.logger, "stopping: told the peers"; "peers" => told.len());
    }

    /// Connections with peers still open (after [`IntakeMachine::announce_stop`]: those whose
    /// `Stopping` is not all written yet).
    pub fn peers_open(&self) -> usize {
        self.connections
            .keys()
            .filter(|conn| !self.is_client(**conn))
            .count()
    }

    /// A peer said it is stopping, on a link this node dialled or one it proved itself on:
    /// the coordinator's failure detector holds it down at once, and its connections' close
    /// and the failed redials while it is away are logged as planned. From anyone else the
    /// frame is refused: only a peer may say so, and only of itself.
    pub(super) fn on_peer_stopping(&mut self, conn: ConnId, request_id: u64, out: &mut Outbox) {
        let peer = self.links.peer_of(conn).cloned().or_else(|| {
            self.connections
                .get(&conn)
                .and_then(|c| c.authenticated.clone())
        });
        let Some(peer) = peer else {
            let error = ServiceError::Unauthorized {
                reason: "only a peer that completed the handshake may say it is stopping".into(),
            };
            return self.write(conn, request_id, &Message::Error(error), out);
        };
        if !self.links.is_stopping(&peer) {
            info!(self.logger, "peer is stopping: requests go to the other replicas until it is back"; "peer" => %peer);
        }
        self.links.stopping(&peer);
        out.offer(CoordinateEvent::PeerStopped { peer });
    }

    /// Requests taken and not answered yet, over every connection: clients' requests, and
    /// the puts and deletes proven peers forwarded.
    pub fn owed(&self) -> u64 {
        self.connections
            .iter()
            .map(|(conn, c)| {
                let client = if self.is_client(*conn) { c.awaiting } else { 0 };
                u64::from(client) + c.forwarded.len() as u64
            })
            .sum()
    }

    /// Whether `conn` is a client's: not a link this node dialled, not a peer that proved
    /// itself. (One in the middle of its handshake counts as a client, as it does for the
    /// requests it may send before its proof: the count of what is owed must agree.)
    pub(super) fn is_client(&self, conn: ConnId) -> bool {
        self.links.peer_of(conn).is_none()
            && self
                .connections
                .get(&conn)
                .is_some_and(|c| c.authenticated.is_none())
    }

    /// Client connections still open.
    pub fn clients_open(&self) -> usize {
        self.connections
            .keys()
            .filter(|conn| self.is_client(**conn))
            .count()
    }
}
