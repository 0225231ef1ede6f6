//! The replication fan-out stage: requests to peers out, their answers back.
//!
//! DRIVER SIDE (this node asks): the coordinator and the repair stage hand it `Send` events;
//! it encodes each as a frame whose request id is the operation id, hands it to the intake for
//! the peer's connection, and remembers the operation until its deadline. Answers arrive from
//! parse as `Reply` (read on the connection this node opened to the peer) and go to the
//! coordinator as `PeerDone`. When the intake reports a peer's connection failed (or a send
//! was refused while it backs off), every operation outstanding on that peer fails at once with
//! `PeerUnreachable`, so a quorum that cannot be met fails now rather than at the deadline.
//!
//! RECEIVER SIDE (a peer asks): not here. A peer's `ReplicaRead`/`ReplicaWrite` enters like a
//! client request (intake → parse → coordinate, served from local storage) and is answered on
//! the connection it came on.
//!
//! Threads: one; the outstanding table lives in it.

use crate::coordinate::{CoordinateEvent, PeerDone};
use crate::error::ServiceError;
use crate::handoff::HandoffEvent;
use crate::intake::IntakeEvent;
use crate::seda::{Stage, StageSender};
use crate::storage::OpId;
use crate::wire::Message;
use crate::NodeId;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

/// Operation ids with this bit set belong to the repair stage: their answers are dropped here
/// instead of going to the coordinator, which never issued them.
pub const REPAIR_OP_BIT: OpId = 1 << 63;
/// Operation ids with this bit set belong to the handoff stage, which gets their answers.
/// (Coordinator ids stay below both bits.)
pub const HANDOFF_OP_BIT: OpId = 1 << 62;

/// The replication stage's events.
#[derive(Debug)]
pub enum ReplicateEvent {
    /// Send a request to a peer.
    Send {
        /// The peer.
        peer: NodeId,
        /// The operation (the frame's request id).
        op: OpId,
        /// The request.
        message: Message,
        /// When to forget the operation if no answer came.
        deadline: Instant,
    },
    /// A peer's answer, read by parse from the connection to that peer.
    Reply {
        /// The peer.
        peer: NodeId,
        /// The operation answered.
        op: OpId,
        /// The answer.
        message: Message,
    },
    /// The intake lost (or could not open) the connection to a peer.
    PeerFailed {
        /// The peer.
        peer: NodeId,
    },
}

impl fmt::Display for ReplicateEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicateEvent::Send {
                peer, op, message, ..
            } => write!(f, "send {message} to {peer} op {op}"),
            ReplicateEvent::Reply { peer, op, message } => {
                write!(f, "{message} from {peer} op {op}")
            }
            ReplicateEvent::PeerFailed { peer } => write!(f, "peer {peer} failed"),
        }
    }
}

/// The replication stage.
pub struct ReplicateStage {
    /// Operations sent and not yet answered: peer and deadline.
    outstanding: HashMap<OpId, (NodeId, Instant)>,
    intake: StageSender<IntakeEvent>,
    coordinate: StageSender<CoordinateEvent>,
    handoff: StageSender<HandoffEvent>,
    /// Largest frame peers accept (`limits.max_frame_bytes`, the same on every node).
    max_frame_bytes: usize,
}

impl ReplicateStage {
    /// The stage, sending frames through `intake` and answers to `coordinate`.
    pub fn new(
        intake: StageSender<IntakeEvent>,
        coordinate: StageSender<CoordinateEvent>,
        handoff: StageSender<HandoffEvent>,
        max_frame_bytes: usize,
    ) -> ReplicateStage {
        ReplicateStage {
            outstanding: HashMap::new(),
            intake,
            coordinate,
            handoff,
            max_frame_bytes,
        }
    }

    fn answer(&self, op: OpId, peer: NodeId, result: Result<Message, ServiceError>) {
        if op & HANDOFF_OP_BIT != 0 {
            // Blocking: the handoff stage reaches this one only with try_send.
            let acknowledged = matches!(result, Ok(Message::ReplicaReply(_)));
            let _ = self
                .handoff
                .send(HandoffEvent::Delivered { op, acknowledged });
        } else if op & REPAIR_OP_BIT == 0 {
            // Blocking: the coordinator never waits on this stage (it uses try_send), so no cycle.
            let _ = self
                .coordinate
                .send(CoordinateEvent::Peer(PeerDone { op, peer, result }));
        }
    }

    fn handle(&mut self, event: ReplicateEvent) {
        match event {
            ReplicateEvent::Send {
                peer,
                op,
                message,
                deadline,
            } => match message.encode(op) {
                // A frame peers would refuse (a version set of many large siblings) would cost
                // the whole link; refuse it here, for this operation only.
                Ok(frame) if frame.len() > self.max_frame_bytes => {
                    let error = ServiceError::ValueTooLarge {
                        size: frame.len() as u64,
                        max: self.max_frame_bytes as u64,
                    };
                    self.answer(op, peer, Err(error));
                }
                Ok(frame) => {
                    self.outstanding.insert(op, (peer.clone(), deadline));
                    let _ = self.intake.send(IntakeEvent::ToPeer { peer, frame });
                }
                Err(error) => self.answer(op, peer, Err(error.into())),
            },
            ReplicateEvent::Reply { peer, op, message } => {
                // Only the peer the operation went to may answer it.
                if self.outstanding.get(&op).is_some_and(|(to, _)| *to == peer) {
                    self.outstanding.remove(&op);
                    // An error reply is still an answer: the peer is alive and said no. Only
                    // a transport failure (below) is an Err.
                    self.answer(op, peer, Ok(message));
                }
            }
            ReplicateEvent::PeerFailed { peer } => {
                let failed: BTreeMap<OpId, NodeId> = self
                    .outstanding
                    .iter()
                    .filter(|(_, (to, _))| *to == peer)
                    .map(|(op, (to, _))| (*op, to.clone()))
                    .collect();
                for (op, to) in failed {
                    self.outstanding.remove(&op);
                    self.answer(
                        op,
                        to,
                        Err(ServiceError::PeerUnreachable {
                            node: peer.to_string(),
                        }),
                    );
                }
            }
        }
    }
}

impl Stage for ReplicateStage {
    type Event = ReplicateEvent;

    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<ReplicateEvent>) {
        for event in batch.drain(..) {
            self.handle(event);
        }
    }

    /// Forgets operations past their deadline: the coordinator has already failed them.
    fn on_tick(&mut self, now: Instant) {
        self.outstanding.retain(|_, (_, deadline)| *deadline > now);
    }
}
