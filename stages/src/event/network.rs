//! The events of the stages that face the network: frames for the intake to write, and the
//! replication stage's requests to peers and their answers.

use super::{ConnId, OpId, Origin, ReplyTo};
use crate::error::ServiceError;
use crate::wire::Message;
use crate::NodeId;
use std::fmt;
use std::time::Instant;

/// Frames for the intake loop to write.
#[derive(Debug)]
pub enum IntakeEvent {
    /// Write an encoded frame to a connection (a reply to what arrived on it).
    Send {
        /// The connection.
        conn: ConnId,
        /// A complete encoded frame.
        frame: Vec<u8>,
    },
    /// Write an encoded frame to a peer, over the connection this node keeps to it (opened
    /// on first use).
    ToPeer {
        /// The peer.
        peer: NodeId,
        /// A complete encoded frame.
        frame: Vec<u8>,
    },
}

impl IntakeEvent {
    /// A reply to a request, encoded, for the connection it came on.
    pub fn reply(origin: Origin, message: &Message) -> IntakeEvent {
        IntakeEvent::Send {
            conn: origin.conn,
            frame: encode_reply(origin.request_id, message),
        }
    }

    /// The request id and message of the frame this event sends, decoded (tests read the
    /// replies a machine sent back this way).
    #[cfg(test)]
    pub(crate) fn sent_message(&self) -> Option<(u64, Message)> {
        let IntakeEvent::Send { frame, .. } = self else {
            return None;
        };
        let mut decoder = crate::wire::FrameDecoder::new(usize::MAX);
        decoder.extend(frame);
        let frame = decoder.next_frame().ok().flatten()?;
        Some((frame.request_id, Message::decode(&frame).ok()?))
    }
}

/// `frame` if it takes at most `max_reply_bytes`, whole frame counted (a receiver counts the
/// bytes after the length prefix, so it takes it too), else `Err` with an error frame for the
/// same request in its place (`ReplyTooLarge`, naming both sizes): a receiver closes a
/// connection that sends it an oversized frame, which would fail every other request on that
/// connection and, between nodes, drop the link.
pub fn reply_within(frame: Vec<u8>, max_reply_bytes: usize) -> Result<Vec<u8>, Vec<u8>> {
    if frame.len() <= max_reply_bytes {
        return Ok(frame);
    }
    let request_id = crate::wire::encoded_header(&frame).map_or(0, |(_, id)| id);
    let error = ServiceError::ReplyTooLarge {
        bytes: frame.len() as u64,
        max: max_reply_bytes as u64,
    };
    Err(encode_reply(request_id, &Message::Error(error)))
}

/// Encodes a reply frame. If the reply cannot be encoded (a bug), the requester gets an error
/// frame naming the failure instead of silence.
pub fn encode_reply(request_id: u64, message: &Message) -> Vec<u8> {
    message.encode(request_id).unwrap_or_else(|e| {
        let error = ServiceError::MalformedFrame {
            reason: format!("reply not encodable: {e}"),
        };
        Message::Error(error).encode(request_id).unwrap_or_default()
    })
}

impl fmt::Display for IntakeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntakeEvent::Send { conn, frame } => write!(f, "send {} B to conn {conn}", frame.len()),
            IntakeEvent::ToPeer { peer, frame } => {
                write!(f, "send {} B to peer {peer}", frame.len())
            }
        }
    }
}

/// The replication stage's events.
#[derive(Debug)]
pub enum ReplicateEvent {
    /// Send a request to a peer; its answer (or failure) goes to `reply_to` as a `PeerDone`
    /// carrying `op`.
    Send {
        /// The peer.
        peer: NodeId,
        /// The asker's operation.
        op: OpId,
        /// The request.
        message: Message,
        /// When to give up on an answer.
        deadline: Instant,
        /// Who gets the answer.
        reply_to: ReplyTo,
    },
    /// A peer's answer, read by parse from the connection this node opened to that peer.
    Reply {
        /// The peer.
        peer: NodeId,
        /// The frame's request id: the replication stage's own id for the request it sent.
        request_id: u64,
        /// The answer.
        message: Message,
    },
    /// The intake lost (or could not open) the connection to a peer.
    PeerFailed {
        /// The peer.
        peer: NodeId,
        /// Whether an established connection broke, so requests outstanding on it may have
        /// reached the peer (`PeerLost`); otherwise none did (`PeerUnreachable`).
        in_flight_lost: bool,
        /// Why, when the peer refused this node's handshake (its reason), so the requests
        /// failed say so rather than only "unreachable".
        refused: Option<String>,
    },
}

impl fmt::Display for ReplicateEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicateEvent::Send {
                peer,
                op,
                message,
                reply_to,
                ..
            } => write!(f, "send {message} to {peer} op {op} for {reply_to}"),
            ReplicateEvent::Reply {
                peer,
                request_id,
                message,
            } => write!(f, "{message} from {peer} request {request_id}"),
            ReplicateEvent::PeerFailed {
                peer,
                in_flight_lost,
                ..
            } => {
                let lost = if *in_flight_lost {
                    " (in flight lost)"
                } else {
                    ""
                };
                write!(f, "peer {peer} failed{lost}")
            }
        }
    }
}

/// What the intake's machine asks of the sockets it does not own: the mio loop carries these
/// out in the product, the simulated network in the simulator.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketCommand {
    /// Queue an encoded frame on a connection.
    Write {
        /// The connection.
        conn: ConnId,
        /// A complete encoded frame.
        frame: Vec<u8>,
    },
    /// Open a connection to a peer under this id; its outcome comes back as connected or
    /// closed.
    Dial {
        /// The id the machine chose for it.
        conn: ConnId,
        /// The peer.
        peer: NodeId,
        /// Where it listens.
        addr: std::net::SocketAddr,
    },
    /// Close a connection once its queued output is written.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Close a connection now, dropping what it has not been sent (a client that stalled).
    Abort {
        /// The connection.
        conn: ConnId,
    },
    /// Answer a `Stats` request with the node's live statistics, which only the loop that
    /// owns the queues can read (so an overloaded node can still be inspected).
    Stats {
        /// Where the request came from.
        origin: super::Origin,
    },
    /// Answer an `admin aae` request with anti-entropy's published report.
    Aae {
        /// Where the request came from.
        origin: super::Origin,
    },
    /// Carry out an `admin throttle` change on the gates (which the loop's stats source
    /// holds) and answer with the controller's state and every background stage's rate.
    Throttle {
        /// Where the request came from.
        origin: super::Origin,
        /// The change, already checked to name a background stage.
        change: GateChange,
    },
}

/// A checked `admin throttle` change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateChange {
    /// Nothing: only show.
    Show,
    /// Pin a background stage's rate (units per second).
    Pin(super::StageId, u64),
    /// Hand a background stage back to the controller.
    Auto(super::StageId),
}

impl fmt::Display for SocketCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketCommand::Write { conn, frame } => {
                write!(f, "write {} B to conn {conn}", frame.len())
            }
            SocketCommand::Dial { conn, peer, .. } => write!(f, "dial {peer} as conn {conn}"),
            SocketCommand::Close { conn } => write!(f, "close conn {conn}"),
            SocketCommand::Abort { conn } => write!(f, "abort conn {conn}"),
            SocketCommand::Stats { origin } => write!(f, "stats for conn {}", origin.conn),
            SocketCommand::Aae { origin } => write!(f, "aae report for conn {}", origin.conn),
            SocketCommand::Throttle { origin, change } => {
                write!(f, "throttle {change:?} for conn {}", origin.conn)
            }
        }
    }
}
