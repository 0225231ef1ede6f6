//! A node every peer refuses: its side of the intake machine. A node started with another
//! secret, Q or build than its cluster's has every handshake refused, so it can reach no other
//! replica: its coordinated puts fail their quorum (after writing locally: the value turns up
//! later), its reads answer from its own data only, and a context another node sealed is
//! "not of this cluster" to it. A trial's wrong-secret node failed a third of a partition-aware
//! client's requests that way. Once every other member (two at least) refused it and none has
//! accepted it since, it refuses clients' data requests `CutOff` before any stage sees them,
//! so nothing is applied, and the partition-aware client takes them to another node.
//! Why two at least: with one peer, which of the two is the odd one cannot be told.

use super::IntakeMachine;
use crate::error::ServiceError;
use crate::event::ConnId;
use crate::seda::Outbox;
use crate::wire::{kind, Frame, Message};
use slog::{info, warn};

impl IntakeMachine {
    /// Works out again whether every peer refuses this node (after a dial's handshake failed
    /// or worked, and at each tick, which follows membership changes), logging a change.
    pub(super) fn update_cut_off(&mut self) {
        let membership = self.membership.current();
        let mut others = 0;
        let mut reason = None;
        for member in membership.members().filter(|m| m.id != self.node) {
            others += 1;
            match self.links.refused(&member.id) {
                Some(why) => {
                    reason.get_or_insert_with(|| format!("{}: {why}", member.id));
                }
                None => return self.set_cut_off(None),
            }
        }
        self.set_cut_off(reason.filter(|_| others >= 2));
    }

    fn set_cut_off(&mut self, reason: Option<String>) {
        match (&self.cut_off, &reason) {
            (None, Some(why)) => {
                warn!(self.logger, "every peer refuses this node's handshake: client requests are refused CutOff until one accepts it"; "first" => %why)
            }
            (Some(_), None) => {
                info!(
                    self.logger,
                    "a peer accepts this node's handshake again: serving client requests"
                )
            }
            _ => {}
        }
        self.cut_off = reason;
    }

    /// Whether `frame` on `conn` is a client's data request refused because every peer
    /// refuses this node. Reads of its state (`Members`, `Ring`, `Stats`, a local get) are
    /// still answered: they are how an operator finds out.
    pub(super) fn refused_as_cut_off(&self, conn: ConnId, frame: &Frame) -> bool {
        self.cut_off.is_some()
            && matches!(frame.kind, kind::GET | kind::PUT | kind::DELETE)
            && self.is_client(conn)
    }

    /// The answer to a request refused by [`IntakeMachine::refused_as_cut_off`].
    pub(super) fn refuse_as_cut_off(&self, conn: ConnId, request_id: u64, out: &mut Outbox) {
        let reason = self.cut_off.clone().unwrap_or_default();
        let error = Message::Error(ServiceError::CutOff { reason });
        self.write(conn, request_id, &error, out);
    }
}
