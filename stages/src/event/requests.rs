//! The foreground request events: frames for parse, and the requests, local results and peer
//! answers the coordinator works from.

use super::{ConnId, OpId, Origin, StorageDone};
use crate::durability::Durability;
use crate::error::ServiceError;
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use crate::wire::{Frame, Message};
use crate::NodeId;
use std::fmt;
use std::time::{Duration, Instant};

/// A frame read from a connection, for the parse stage.
///
/// A client's request (`peer` none, not `authenticated`) is answered exactly once: by one
/// `IntakeEvent::Send` to `conn`, or by this event refused back to the intake. The intake
/// counts on it to close a client's half-closed connection after the last answer.
#[derive(Debug)]
pub struct ParseEvent {
    /// The connection it arrived on.
    pub conn: ConnId,
    /// The frame.
    pub frame: Frame,
    /// When the intake read it (the start of the request's end-to-end latency).
    pub received_at: Instant,
    /// The peer, when the frame arrived on a connection this node opened to it (so it can
    /// only be an answer to one of this node's requests).
    pub peer: Option<NodeId>,
    /// Whether the connection proved it is a peer (it completed the handshake): only then are
    /// peer-only requests served and the `forwarded` flag honoured (SPEC §11).
    pub authenticated: bool,
}

impl fmt::Display for ParseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from conn {}", self.frame, self.conn)
    }
}

/// A validated client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Read quorum override.
        r: Option<usize>,
        /// Deadline override.
        timeout: Option<Duration>,
    },
    /// Write a value, or a tombstone (`value: None`, a delete).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The client's context, decoded.
        context: VClock,
        /// The value, `None` for a delete.
        value: Option<Vec<u8>>,
        /// Write quorum override.
        w: Option<usize>,
        /// Deadline override.
        timeout: Option<Duration>,
        /// Forwarded by a node outside the preference list: coordinate it here regardless.
        forwarded: bool,
        /// Durable writes override (Dynamo §6.1).
        durable: Option<Durability>,
        /// Supersede every version the coordinator holds (see `PutRequest::overwrite`).
        overwrite: bool,
    },
}

impl ClientRequest {
    /// The request's key.
    pub fn key(&self) -> &[u8] {
        match self {
            ClientRequest::Get { key, .. } | ClientRequest::Put { key, .. } => key,
        }
    }
}

/// A request served from the local store alone: a peer's replica operation or an operator's
/// local read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeRequest {
    /// `shoal get --local`: this node's stored versions.
    Local {
        /// The key.
        key: Vec<u8>,
    },
    /// A coordinator asks for this replica's versions.
    ReplicaRead {
        /// The key.
        key: Vec<u8>,
    },
    /// A coordinator or repairer sends versions to merge.
    ReplicaWrite {
        /// The key.
        key: Vec<u8>,
        /// The versions (validated and normalised by parse).
        versions: VersionSet,
        /// The node these versions are meant for, when this node stands in for it.
        hint: Option<NodeId>,
        /// Flush before acknowledging.
        durable: bool,
    },
}

/// The client operations, for quorum errors and latency statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// A get.
    Get,
    /// A put.
    Put,
    /// A delete.
    Delete,
}

impl Operation {
    /// The lower-case name used in errors and stats.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
        }
    }
}

/// A peer's answer to an operation (or why none will come), routed back by the replication
/// stage to the stage that asked.
#[derive(Debug)]
pub struct PeerDone {
    /// The asker's operation.
    pub op: OpId,
    /// The peer that answered (or failed).
    pub peer: NodeId,
    /// The peer's reply message, or why none will come.
    pub result: Result<Message, ServiceError>,
}

impl fmt::Display for PeerDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(message) => write!(f, "op {} answered by {}: {message}", self.op, self.peer),
            Err(error) => write!(
                f,
                "op {} failed on {}: {}",
                self.op,
                self.peer,
                error.kind()
            ),
        }
    }
}

/// The coordination stage's events.
#[derive(Debug)]
pub enum CoordinateEvent {
    /// A parsed client request.
    Client {
        /// Where to reply.
        origin: Origin,
        /// The request.
        request: ClientRequest,
        /// When the intake read its frame (the start of its end-to-end latency).
        received_at: Instant,
    },
    /// A peer's or operator's request for the local store.
    Serve {
        /// Where to reply.
        origin: Origin,
        /// The request.
        request: ServeRequest,
        /// When the intake read its frame.
        received_at: Instant,
    },
    /// `admin members`: every member with this node's view of its health and the hints held
    /// for it (the coordinator owns the failure detector; storage counts the hints).
    Members {
        /// Where to reply.
        origin: Origin,
        /// When the intake read its frame.
        received_at: Instant,
    },
    /// A local storage operation finished.
    Storage(StorageDone),
    /// A peer answered (or will not).
    Peer(PeerDone),
    /// The gossip stage heard from a peer (it answered a round): the failure detector holds it
    /// up without waiting for its next probe.
    Heard {
        /// The peer.
        peer: crate::NodeId,
    },
    /// The link to a peer failed under another stage's requests (gossip, anti-entropy,
    /// handoff, transfer, repair): the failure detector suspects a member that still serves
    /// (`FailureDetector::suspect`: an up peer is marked down, a down one left as it is). Without this a dead peer stayed "up" on a cluster with no client
    /// traffic, while every background stage failed to reach it.
    LinkFailed {
        /// The peer.
        peer: crate::NodeId,
        /// The peer refused this node's handshake (`FailureDetector::refused`).
        refused: bool,
    },
    /// A peer said, as its clean stop ended, that it is stopping (`Message::Stopping`): the
    /// failure detector marks a member that still serves down at once, its requests go to
    /// fallbacks (with hints) until a probe finds it back.
    PeerStopped {
        /// The peer.
        peer: crate::NodeId,
    },
}

impl fmt::Display for CoordinateEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoordinateEvent::Client {
                origin, request, ..
            } => {
                let kind = match request {
                    ClientRequest::Get { .. } => "get",
                    ClientRequest::Put { value: Some(_), .. } => "put",
                    ClientRequest::Put { value: None, .. } => "delete",
                };
                write!(
                    f,
                    "client {kind} from conn {} id {}",
                    origin.conn, origin.request_id
                )
            }
            CoordinateEvent::Serve {
                origin, request, ..
            } => {
                let kind = match request {
                    ServeRequest::Local { .. } => "local read",
                    ServeRequest::ReplicaRead { .. } => "replica read",
                    ServeRequest::ReplicaWrite { .. } => "replica write",
                };
                write!(
                    f,
                    "{kind} from conn {} id {}",
                    origin.conn, origin.request_id
                )
            }
            CoordinateEvent::Members { origin, .. } => {
                write!(
                    f,
                    "members from conn {} id {}",
                    origin.conn, origin.request_id
                )
            }
            CoordinateEvent::Storage(done) => write!(f, "storage {done}"),
            CoordinateEvent::Peer(done) => write!(f, "peer {done}"),
            CoordinateEvent::Heard { peer } => write!(f, "gossip heard from {peer}"),
            CoordinateEvent::LinkFailed { peer, .. } => write!(f, "link to {peer} failed"),
            CoordinateEvent::PeerStopped { peer } => write!(f, "{peer} stopped"),
        }
    }
}
