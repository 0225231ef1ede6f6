//! Who may speak on a connection: a client's `Auth` token, and the receiving side of the peer
//! handshake (SPEC §11: a hello is challenged, the proof checked, and nothing the connection
//! sends as a peer is acted on before it checks out). Split from `machine.rs` to keep each
//! file one concern; the dialling side is in `machine.rs` with the links.

use super::IntakeMachine;
use crate::error::ServiceError;
use crate::event::ConnId;
use crate::intake::handshake::{self, Challenged};
use crate::intake::handshake::{protocol_mismatch, terms_mismatch, Refusal, RingTerms};
use crate::seda::Outbox;
use crate::wire::{same_secret, Frame, Message, PeerHello};
use crate::NodeId;
use slog::{debug, warn};

impl IntakeMachine {
    /// Whether `conn` may send requests: no token is required, or it sent the right one, or it
    /// is a peer (a proven incoming link, or a link this node dialled, whose frames are
    /// answers).
    pub(super) fn may_request(&self, conn: ConnId) -> bool {
        self.settings.client_token.is_none()
            || self.links.peer_of(conn).is_some()
            || self
                .connections
                .get(&conn)
                .is_some_and(|c| c.client_authorized || c.authenticated.is_some())
    }

    /// A client's `Auth`: the right token (compared in constant time) authorizes the
    /// connection; a wrong one is answered `Unauthorized` and the connection closed.
    pub(super) fn accept_auth(&mut self, conn: ConnId, frame: &Frame, out: &mut Outbox) {
        let token = match Message::decode(frame) {
            Ok(Message::Auth(auth)) => auth.token,
            _ => String::new(),
        };
        let accepted = match &self.settings.client_token {
            None => true,
            Some(expected) => same_secret(expected.as_bytes(), token.as_bytes()),
        };
        if accepted {
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.client_authorized = true;
            }
            self.write(conn, frame.request_id, &Message::AuthOk, out);
        } else {
            warn!(self.logger, "refusing a client token"; "conn" => conn.0);
            let error = ServiceError::Unauthorized {
                reason: "wrong client token".into(),
            };
            self.write(conn, frame.request_id, &Message::Error(error), out);
            self.close(conn, out);
        }
    }

    /// RECEIVER SIDE: a hello from a member is answered with a challenge carrying a fresh
    /// nonce; a malformed one, one from a stranger, or a second one on the connection is
    /// refused `Unauthorized` and the connection closed.
    pub(super) fn accept_hello(&mut self, conn: ConnId, frame: &Frame, out: &mut Outbox) {
        let mut member = None;
        let verdict = match Message::decode(frame) {
            Ok(Message::PeerHello(hello)) => {
                let verdict = self.check_hello(conn, &hello);
                if verdict.is_err() {
                    // Only a refusal needs to know whether the dialer names a member.
                    let membership = self.membership.current();
                    member = membership.member(&hello.node).map(|m| m.id.clone());
                }
                verdict
            }
            _ => Err(Refusal::malformed("malformed hello")),
        };
        match verdict {
            Ok((dialer, dialer_nonce)) => {
                let challenged = Challenged {
                    dialer,
                    dialer_nonce,
                    nonce: self.nonces.next(&self.seal),
                };
                let challenge =
                    handshake::challenge(&self.seal, &self.node, &challenged, self.ring_terms());
                self.write(conn, frame.request_id, &challenge, out);
                if let Some(connection) = self.connections.get_mut(&conn) {
                    connection.challenged = Some(challenged);
                }
            }
            Err(reason) => self.refuse_peer(conn, frame.request_id, reason, member, out),
        }
    }

    /// This node's Q, N and initial ring, which a peer's handshake must not contradict.
    pub(super) fn ring_terms(&self) -> RingTerms {
        let membership = self.membership.current();
        RingTerms {
            partitions: membership.ring().partition_count(),
            replicas: u32::try_from(self.settings.replicas).unwrap_or(u32::MAX),
            genesis: membership.genesis(&self.node),
        }
    }

    fn check_hello(
        &self,
        conn: ConnId,
        hello: &PeerHello,
    ) -> Result<(NodeId, crate::wire::Nonce), Refusal> {
        let node = &hello.node;
        if self.membership.current().member(node).is_none() {
            return Err(Refusal::NotAMember { node: node.clone() });
        }
        if let Some(reason) = protocol_mismatch(node, hello.protocol)
            .or_else(|| terms_mismatch(node, RingTerms::from(hello), self.ring_terms()))
        {
            return Err(reason);
        }
        let nonce = handshake::nonce_of(&hello.nonce)
            .ok_or_else(|| Refusal::malformed("hello nonce of the wrong length"))?;
        let fresh = self
            .connections
            .get(&conn)
            .is_some_and(|c| c.challenged.is_none() && c.authenticated.is_none());
        if !fresh {
            return Err(Refusal::malformed("a second hello on one connection"));
        }
        Ok((node.clone(), nonce))
    }

    /// RECEIVER SIDE: the dialer's proof. One that answers this connection's challenge marks
    /// the connection as that peer's; any other (a replayed one, one without a challenge) is
    /// refused `Unauthorized` and the connection closed.
    pub(super) fn accept_proof(&mut self, conn: ConnId, frame: &Frame, out: &mut Outbox) {
        let challenged = self
            .connections
            .get_mut(&conn)
            .and_then(|c| c.challenged.take());
        let dialer = challenged.as_ref().map(|c| c.dialer.clone());
        let verdict = match (Message::decode(frame), challenged) {
            (Ok(Message::PeerProof(proof)), Some(challenged)) => {
                if handshake::proven(&self.seal, &self.node, &challenged, &proof) {
                    Ok(challenged.dialer)
                } else {
                    Err(Refusal::ProofNotAnswering)
                }
            }
            (Ok(Message::PeerProof(_)), None) => Err(Refusal::malformed("proof without a hello")),
            _ => Err(Refusal::malformed("malformed proof")),
        };
        match verdict {
            Ok(peer) => {
                debug!(self.logger, "peer authenticated"; "conn" => conn.0, "peer" => %peer);
                // Its refusals stopped: a later one is news again.
                self.refusals.forget_all(&format!("answer {peer} "));
                if let Some(connection) = self.connections.get_mut(&conn) {
                    connection.authenticated = Some(peer);
                }
                self.take_peer_frames(conn);
            }
            Err(reason) => self.refuse_peer(conn, frame.request_id, reason, dialer, out),
        }
    }

    /// Refuses a handshake. `member`: the member the dialer says it is, if it names one;
    /// refusals are counted per member (and all strangers as one) and per kind, so each
    /// misconfigured node is warned of at its own 1st, 10th, 100th... refusal of each kind
    /// since its handshake last worked.
    fn refuse_peer(
        &mut self,
        conn: ConnId,
        request_id: u64,
        reason: Refusal,
        member: Option<NodeId>,
        out: &mut Outbox,
    ) {
        if let (Some(peer), true) = (&member, reason.is_terms()) {
            self.note_conflict(peer);
        }
        let dialer = member.map_or_else(|| "(not a member)".to_string(), |m| m.to_string());
        let kind = reason.kind();
        match self.refusals.note(&format!("answer {dialer} {kind}")) {
            Some(times) => {
                warn!(self.logger, "refusing a peer handshake"; "conn" => conn.0, "dialer" => %dialer, "kind" => kind, "reason" => %reason, "times" => times)
            }
            None => {
                debug!(self.logger, "refusing a peer handshake"; "conn" => conn.0, "dialer" => %dialer, "kind" => kind, "reason" => %reason)
            }
        }
        let error = Message::Error(ServiceError::Unauthorized {
            reason: reason.to_string(),
        });
        self.write(conn, request_id, &error, out);
        self.close(conn, out);
    }
}
