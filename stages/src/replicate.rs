//! The replication fan-out stage: requests to peers out, their answers back.
//!
//! DRIVER SIDE (this node asks): the coordinator, handoff and repair hand it `Send` events;
//! it gives each request a request id of its own (so operations of different askers never
//! share one on the wire), encodes the frame, hands it to the intake for the peer's
//! connection, and remembers the request until its deadline. Answers arrive from parse as
//! `Reply` (read on the connection this node opened to the peer) and go to the asker named in
//! the request's `reply_to`, as a `PeerDone` carrying the asker's own operation id. When the
//! intake reports a peer's connection failed (or a send was refused while it backs off),
//! every request outstanding on that peer fails at once — `PeerLost` when an established
//! connection broke (the peer may have acted on them), `PeerUnreachable` otherwise — so a
//! quorum that cannot be met fails now rather than at the deadline. When none of them was the
//! coordinator's, the coordinator's failure detector is told too (`LinkFailed`): it would
//! otherwise learn of a dead peer only from client traffic.
//!
//! RECEIVER SIDE (a peer asks): not here. A peer's `ReplicaRead`/`ReplicaWrite` enters like a
//! client request (intake → parse → coordinate, served from local storage) and is answered on
//! the connection it came on.
//!
//! Threads: one; the outstanding table lives in it.

use crate::error::ServiceError;
use crate::event::{CoordinateEvent, IntakeEvent, Now, OpId, PeerDone, ReplicateEvent, ReplyTo};
use crate::seda::{Machine, Outbox};
use crate::wire::Message;
use crate::NodeId;
use std::collections::BTreeMap;
use std::time::Instant;

/// A request sent to a peer and not yet answered.
#[derive(Debug)]
struct Outstanding {
    peer: NodeId,
    /// The asker's operation, echoed in the answer.
    op: OpId,
    reply_to: ReplyTo,
    deadline: Instant,
}

/// The replication stage's machine.
pub struct ReplicateMachine {
    /// Requests sent and not yet answered, by their request id on the wire.
    outstanding: BTreeMap<u64, Outstanding>,
    /// The next request id; ids are never reused while the node runs.
    next_request_id: u64,
    /// Largest frame peers accept from a peer (`max_peer_frame_bytes`: half of
    /// `limits.max_write_buffer_bytes`, at least `max_frame_bytes`; the same on every node).
    max_frame_bytes: usize,
}

impl ReplicateMachine {
    /// The stage, refusing to send frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> ReplicateMachine {
        ReplicateMachine {
            outstanding: BTreeMap::new(),
            next_request_id: 1,
            max_frame_bytes,
        }
    }

    /// Sends the asker its answer (a blocking send in the runtime: no asker reaches this
    /// stage with a blocking send, so no cycle).
    fn answer(out: &mut Outbox, reply_to: ReplyTo, done: PeerDone) {
        if let Some(event) = reply_to.peer_done(done) {
            out.reply(event);
        }
    }

    fn send(
        &mut self,
        peer: NodeId,
        op: OpId,
        message: Message,
        deadline: Instant,
        reply_to: ReplyTo,
        out: &mut Outbox,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let error = match message.encode(request_id) {
            Ok(frame) if frame.len() <= self.max_frame_bytes => {
                self.outstanding.insert(
                    request_id,
                    Outstanding {
                        peer: peer.clone(),
                        op,
                        reply_to,
                        deadline,
                    },
                );
                return out.reply(IntakeEvent::ToPeer { peer, frame });
            }
            // A frame peers would refuse (a version set of many large siblings) would cost
            // the whole link; refuse it here, for this operation only.
            Ok(frame) => ServiceError::ValueTooLarge {
                size: frame.len() as u64,
                max: self.max_frame_bytes as u64,
            },
            Err(error) => error.into(),
        };
        let done = PeerDone {
            op,
            peer,
            result: Err(error),
        };
        Self::answer(out, reply_to, done);
    }

    fn on_reply(&mut self, peer: NodeId, request_id: u64, message: Message, out: &mut Outbox) {
        // Only the peer the request went to may answer it.
        let Some(outstanding) = self.outstanding.get(&request_id) else {
            return;
        };
        if outstanding.peer != peer {
            return;
        }
        if let Some(Outstanding { op, reply_to, .. }) = self.outstanding.remove(&request_id) {
            // An error reply is still an answer: the peer is alive and said no. Only a
            // transport failure (below) is an Err.
            let done = PeerDone {
                op,
                peer,
                result: Ok(message),
            };
            Self::answer(out, reply_to, done);
        }
    }

    fn on_peer_failed(
        &mut self,
        peer: NodeId,
        in_flight_lost: bool,
        refused: Option<String>,
        out: &mut Outbox,
    ) {
        let failed: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        // The coordinator's failure detector learns of the failure from its own requests'
        // answers; when only other stages' requests were on the link, it is told here (an
        // offer: dropped, not waited for, when its queue is full).
        let others_only = failed.iter().all(|id| {
            self.outstanding
                .get(id)
                .is_some_and(|o| o.reply_to != ReplyTo::Coordinate)
        });
        if !failed.is_empty() && others_only {
            out.offer(CoordinateEvent::LinkFailed {
                peer: peer.clone(),
                refused: refused.is_some(),
            });
        }
        for request_id in failed {
            if let Some(Outstanding {
                op, reply_to, peer, ..
            }) = self.outstanding.remove(&request_id)
            {
                let node = peer.to_string();
                let error = if in_flight_lost {
                    ServiceError::PeerLost { node }
                } else {
                    ServiceError::PeerUnreachable {
                        node,
                        why: refused.clone(),
                    }
                };
                let done = PeerDone {
                    op,
                    peer,
                    result: Err(error),
                };
                Self::answer(out, reply_to, done);
            }
        }
    }

    /// Requests waiting for an answer.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

impl Machine for ReplicateMachine {
    type Input = ReplicateEvent;

    fn on_event(&mut self, _now: Now, event: ReplicateEvent, out: &mut Outbox) {
        match event {
            ReplicateEvent::Send {
                peer,
                op,
                message,
                deadline,
                reply_to,
            } => self.send(peer, op, message, deadline, reply_to, out),
            ReplicateEvent::Reply {
                peer,
                request_id,
                message,
            } => self.on_reply(peer, request_id, message, out),
            ReplicateEvent::PeerFailed {
                peer,
                in_flight_lost,
                refused,
            } => self.on_peer_failed(peer, in_flight_lost, refused, out),
        }
    }

    /// Forgets requests past their deadline: their askers have already given up on them.
    fn on_tick(&mut self, now: Now, _out: &mut Outbox) {
        self.outstanding.retain(|_, o| o.deadline > now.instant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CoordinateEvent, Event, HandoffEvent};
    use crate::seda::Effect;
    use std::time::Duration;

    /// A `Ping` to `peer` as operation `op` of `reply_to`, due within a second of `now`.
    fn ping(peer: &str, op: u64, reply_to: ReplyTo, now: Now) -> ReplicateEvent {
        ReplicateEvent::Send {
            peer: NodeId::new(peer),
            op: OpId(op),
            message: Message::Ping,
            deadline: now.instant + Duration::from_secs(1),
            reply_to,
        }
    }

    /// The intake's report that no link to n2 could be made.
    fn n2_unreachable() -> ReplicateEvent {
        ReplicateEvent::PeerFailed {
            peer: NodeId::new("n2"),
            in_flight_lost: false,
            refused: None,
        }
    }

    fn answers(out: &mut Outbox) -> Vec<Event> {
        out.take()
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Send { event, .. } if !matches!(event, Event::Intake(_)) => Some(event),
                _ => None,
            })
            .collect()
    }

    /// Goal: two askers that use the same operation id get their own answers, each routed
    /// by its `ReplyTo` (no flag bits in ids), and a peer cannot answer a request sent to
    /// another.
    #[test]
    fn answers_reach_the_asker_named_in_the_request() {
        let mut machine = ReplicateMachine::new(1 << 20);
        let now = Now::real();
        let mut out = Outbox::new();
        let n2 = NodeId::new("n2");
        for reply_to in [ReplyTo::Coordinate, ReplyTo::Handoff] {
            machine.on_event(now, ping("n2", 7, reply_to, now), &mut out);
        }
        out.take();
        let stranger = ReplicateEvent::Reply {
            peer: NodeId::new("n3"),
            request_id: 1,
            message: Message::Pong,
        };
        machine.on_event(now, stranger, &mut out);
        assert!(
            answers(&mut out).is_empty(),
            "n3 answered a request sent to n2"
        );
        for request_id in [2, 1] {
            let reply = ReplicateEvent::Reply {
                peer: n2.clone(),
                request_id,
                message: Message::Pong,
            };
            machine.on_event(now, reply, &mut out);
        }
        let routed = answers(&mut out);
        assert!(matches!(
            routed.as_slice(),
            [
                Event::Handoff(HandoffEvent::Peer(PeerDone { op: OpId(7), .. })),
                Event::Coordinate(CoordinateEvent::Peer(PeerDone { op: OpId(7), .. }))
            ]
        ));
    }

    /// Goal: a failed link under background stages' requests only (gossip, anti-entropy)
    /// tells the coordinator's failure detector (a dead peer on a cluster without client
    /// traffic must not stay "up"); under a coordinator request it does not, since the
    /// coordinator learns from that request's answer. Reference: Dynamo §4.8.3.
    #[test]
    fn a_link_failed_under_background_requests_reaches_the_failure_detector() {
        let now = Now::real();
        for (askers, told) in [
            (vec![ReplyTo::Gossip, ReplyTo::AntiEntropy], true),
            (vec![ReplyTo::Gossip, ReplyTo::Coordinate], false),
        ] {
            let mut machine = ReplicateMachine::new(1 << 20);
            let mut out = Outbox::new();
            for (op, reply_to) in askers.into_iter().enumerate() {
                machine.on_event(now, ping("n2", op as u64, reply_to, now), &mut out);
            }
            out.take();
            machine.on_event(now, n2_unreachable(), &mut out);
            let link_failed = answers(&mut out)
                .into_iter()
                .filter(|event| {
                    matches!(event, Event::Coordinate(CoordinateEvent::LinkFailed { peer, .. }) if peer.as_str() == "n2")
                })
                .count();
            assert_eq!(link_failed, usize::from(told), "told: {told}");
        }
    }

    /// Goal: a failed link fails every request outstanding on that peer at once, with
    /// `PeerUnreachable`, and nothing on other peers.
    #[test]
    fn failed_link_fails_only_that_peers_requests() {
        let mut machine = ReplicateMachine::new(1 << 20);
        let now = Now::real();
        let mut out = Outbox::new();
        for (peer, op) in [("n2", 1), ("n3", 2), ("n2", 3)] {
            machine.on_event(now, ping(peer, op, ReplyTo::Coordinate, now), &mut out);
        }
        out.take();
        machine.on_event(now, n2_unreachable(), &mut out);
        let ops: Vec<u64> = answers(&mut out)
            .into_iter()
            .filter_map(|event| match event {
                Event::Coordinate(CoordinateEvent::Peer(PeerDone {
                    op,
                    result: Err(ServiceError::PeerUnreachable { .. }),
                    ..
                })) => Some(op.0),
                _ => None,
            })
            .collect();
        assert_eq!(ops, vec![1, 3]);
        assert_eq!(machine.outstanding(), 1);
    }
}
