//! A node every peer refuses: its side of the intake machine. A node started with another
//! secret, Q or build than its cluster's has every handshake refused, so it can reach no other
//! replica: its coordinated puts fail their quorum (after writing locally: the value turns up
//! later), its reads answer from its own data only, and a context another node sealed is
//! "not of this cluster" to it. A trial's wrong-secret node failed a third of a partition-aware
//! client's requests that way. Once every other member (two at least) refused this node's
//! handshake under the current membership, and none accepted it since, it refuses clients'
//! data requests `CutOff` before any stage sees them, so nothing is applied, and the
//! partition-aware client takes them to another node.
//!
//! Why two at least: with one peer, which of the two is the odd one cannot be told, unless
//! their rings contradict each other (see `refused_by_every_peer`). Why under
//! the current membership: a node waiting to join is refused ("not a member") until the join
//! commits, and those refusals say nothing once it has. A node that is not a member of its own
//! membership (waiting to join, or removed) is never cut off: it serves no partition anyway.
//! A hello that goes unanswered is not a refusal: a paused peer does not make this node whole.

use super::IntakeMachine;
use crate::error::ServiceError;
use crate::event::ConnId;
use crate::seda::Outbox;
use crate::wire::{kind, Frame, Message};
use crate::NodeId;
use slog::{info, warn};
use std::collections::BTreeMap;

/// What the intake knows of peers refusing this node.
#[derive(Debug, Default)]
pub(super) struct CutOff {
    /// Each peer's last refusal of this node's handshake, with the membership version it came
    /// under, until a handshake with it works.
    refusals: BTreeMap<NodeId, (u64, String)>,
    /// Why client requests are refused (the first refusing peer's reason), while they are.
    reason: Option<String>,
    /// Peers whose ring this node found contradicting its own (Q, N or the initial ring), with
    /// the membership version it was found under, until a handshake with them works.
    conflicts: BTreeMap<NodeId, u64>,
}

impl IntakeMachine {
    /// `peer` refused this node's handshake (`why`).
    pub(super) fn note_refusal(&mut self, peer: &NodeId, why: &str) {
        let version = self.membership.current().version;
        self.cut_off
            .refusals
            .insert(peer.clone(), (version, why.to_string()));
        self.update_cut_off();
    }

    /// A handshake with `peer` worked.
    pub(super) fn note_accepted(&mut self, peer: &NodeId) {
        let conflicted = self.cut_off.conflicts.remove(peer).is_some();
        if self.cut_off.refusals.remove(peer).is_some() || conflicted {
            self.update_cut_off();
        }
    }

    /// This node refused `peer`'s handshake, or its answer, because their rings contradict
    /// each other (`Refusal::is_terms`).
    pub(super) fn note_conflict(&mut self, peer: &NodeId) {
        let version = self.membership.current().version;
        self.cut_off.conflicts.insert(peer.clone(), version);
        self.update_cut_off();
    }

    /// Works out again whether every peer refuses this node (after a refusal, a handshake
    /// that worked, and at each tick while it is cut off, which follows membership changes),
    /// logging a change.
    pub(super) fn update_cut_off(&mut self) {
        let reason = self.refused_by_every_peer();
        match (&self.cut_off.reason, &reason) {
            (None, Some(why)) => {
                warn!(self.logger, "every peer refuses this node's handshake: client requests are refused CutOff until one accepts it"; "first" => %why)
            }
            (Some(_), None) => {
                info!(
                    self.logger,
                    "not every peer refuses this node any more: serving client requests"
                )
            }
            _ => {}
        }
        self.cut_off.reason = reason;
    }

    /// The first refusing peer's reason, when every other member refused this node, itself
    /// a member, under the current membership: two at least, or one whose ring contradicts
    /// this node's. Why the second: a fresh founder whose list names one other member (a
    /// second trial's) was refused by it, could not tell which of the two was odd, and took
    /// writes (W = 1) the real cluster never saw; but rings that contradict each other mean
    /// one side is misconfigured, and a node no peer accepts is the one to stop serving. Two
    /// founders that contradict each other and know no third both stop: serving would let
    /// their rings diverge.
    fn refused_by_every_peer(&self) -> Option<String> {
        let membership = self.membership.current();
        membership.member(&self.node)?;
        let mut others = 0;
        let mut conflict = false;
        let mut first = None;
        for member in membership.members().filter(|m| m.id != self.node) {
            others += 1;
            match self.cut_off.refusals.get(&member.id) {
                Some((version, why)) if *version == membership.version => {
                    first.get_or_insert_with(|| format!("{}: {why}", member.id));
                }
                _ => return None,
            }
            conflict |= self.cut_off.conflicts.get(&member.id) == Some(&membership.version);
        }
        first.filter(|_| others >= 2 || conflict)
    }

    /// Whether client requests are refused `CutOff` now.
    pub(super) fn is_cut_off(&self) -> bool {
        self.cut_off.reason.is_some()
    }

    /// Whether `frame` on `conn` is a client's request refused because every peer refuses
    /// this node: its gets, puts and deletes, and its ring, which a partition-aware client
    /// would route by (a trial's load tool seeded with a node of another Q routed by its
    /// ring of 128 partitions); refused, the client asks its next seed. Reads of its state
    /// (`Members`, `Stats`, a local get) are still answered: they are how an operator finds
    /// out, and the refusal names the first peer's reason.
    pub(super) fn refused_as_cut_off(&self, conn: ConnId, frame: &Frame) -> bool {
        self.is_cut_off()
            && matches!(
                frame.kind,
                kind::GET | kind::PUT | kind::DELETE | kind::RING
            )
            && self.is_client(conn)
    }

    /// The answer to a request refused by [`IntakeMachine::refused_as_cut_off`].
    pub(super) fn refuse_as_cut_off(&self, conn: ConnId, request_id: u64, out: &mut Outbox) {
        let reason = self.cut_off.reason.clone().unwrap_or_default();
        let error = Message::Error(ServiceError::CutOff { reason });
        self.write(conn, request_id, &error, out);
    }
}
