//! The one vocabulary of the stages (STYLE habit 17): every stage's input event, the typed ids
//! they carry, the address an answer goes back to ([`ReplyTo`]), the stage table
//! ([`StageId`]) and the one mapping of a refused send to the error a client sees.
//!
//! Stage modules import this module and the pure paper modules, never each other (a test in
//! `tests/tidy.rs` of this crate walks the source and fails on a stage-to-stage import). Events
//! move between stages only as effects in a machine's outbox (`seda::Outbox`), delivered by
//! the threaded runtime or by the simulator.

mod background;
mod ids;
mod network;
mod requests;
mod stage_id;
mod storage;

pub use background::{
    AaeBoard, AaeRequest, AntiEntropyEvent, GossipEvent, GossipServe, HandoffEvent, RepairEvent,
    TransferBoard, TransferEvent,
};
pub use ids::{wall_clock_ms, ConnId, Now, OpId, Origin};
pub use network::{
    encode_reply, reply_within, GateChange, IntakeEvent, ReplicateEvent, SocketCommand,
};
pub use requests::{ClientRequest, CoordinateEvent, Operation, ParseEvent, PeerDone, ServeRequest};
pub use stage_id::{StageClass, StageId, StageRow, UnknownStage};
pub use storage::{
    CommitEvent, Hint, Reach, RebuildStep, StorageDone, StorageEvent, StorageOutcome,
    StorageRequest, TreeSummary, TreeView,
};

use crate::error::ServiceError;
use std::fmt;

/// An event for some stage: what an outbox holds and a driver delivers.
#[derive(Debug)]
pub enum Event {
    /// For the intake loop.
    Intake(IntakeEvent),
    /// For request parsing.
    Parse(ParseEvent),
    /// For coordination.
    Coordinate(CoordinateEvent),
    /// For replication fan-out.
    Replicate(ReplicateEvent),
    /// For read repair.
    Repair(RepairEvent),
    /// For hinted handoff.
    Handoff(HandoffEvent),
    /// For anti-entropy.
    AntiEntropy(AntiEntropyEvent),
    /// For ownership transfer.
    Transfer(TransferEvent),
    /// For gossip.
    Gossip(GossipEvent),
    /// For storage.
    Storage(StorageEvent),
    /// For the journal flush (group commit).
    Commit(CommitEvent),
}

impl Event {
    /// The stage the event is for.
    pub fn stage(&self) -> StageId {
        match self {
            Event::Intake(_) => StageId::Intake,
            Event::Parse(_) => StageId::Parse,
            Event::Coordinate(_) => StageId::Coordinate,
            Event::Replicate(_) => StageId::Replicate,
            Event::Repair(_) => StageId::Repair,
            Event::Handoff(_) => StageId::Handoff,
            Event::AntiEntropy(_) => StageId::AntiEntropy,
            Event::Transfer(_) => StageId::Transfer,
            Event::Gossip(_) => StageId::Gossip,
            Event::Storage(e) if e.reply_to.background() => StageId::BackgroundStorage,
            Event::Storage(_) => StageId::Storage,
            Event::Commit(_) => StageId::Commit,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Intake(e) => e.fmt(f),
            Event::Parse(e) => e.fmt(f),
            Event::Coordinate(e) => e.fmt(f),
            Event::Replicate(e) => e.fmt(f),
            Event::Repair(e) => e.fmt(f),
            Event::Handoff(e) => e.fmt(f),
            Event::AntiEntropy(e) => e.fmt(f),
            Event::Transfer(e) => e.fmt(f),
            Event::Gossip(e) => e.fmt(f),
            Event::Storage(e) => e.fmt(f),
            Event::Commit(e) => e.fmt(f),
        }
    }
}

macro_rules! into_event {
    ($($variant:ident($type:ty)),* $(,)?) => {
        $(impl From<$type> for Event {
            fn from(event: $type) -> Event {
                Event::$variant(event)
            }
        })*
    };
}

into_event!(
    Intake(IntakeEvent),
    Parse(ParseEvent),
    Coordinate(CoordinateEvent),
    Replicate(ReplicateEvent),
    Repair(RepairEvent),
    Handoff(HandoffEvent),
    AntiEntropy(AntiEntropyEvent),
    Transfer(TransferEvent),
    Gossip(GossipEvent),
    Storage(StorageEvent),
    Commit(CommitEvent),
);

/// Where an answer goes: the stage that asked. Carried in every storage operation and every
/// request to a peer, so an answer finds its way back by type, never by bits in an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// The coordinator (client requests, replica reads and writes, probes, members).
    Coordinate,
    /// Hinted handoff (hint scans, deliveries, deletions, merges of batches it received).
    Handoff,
    /// Anti-entropy (tree levels, digests, exchanges, rebuilds, purges).
    AntiEntropy,
    /// Gossip (membership saves, gossip rounds).
    Gossip,
    /// Ownership transfer (batches read, sent and merged; partitions dropped).
    Transfer,
    /// Nobody: fire and forget (read repair; a lost repair is redone by the next read).
    Nobody,
}

impl ReplyTo {
    /// Whether the asker is a background stage (hinted handoff, anti-entropy, transfer, or a
    /// read repair nobody waits for): its storage requests go to storage's background lane
    /// ([`StageId::BackgroundStorage`]), so they never hold up a client's on the intake's loop.
    pub fn background(self) -> bool {
        matches!(
            self,
            ReplyTo::Handoff | ReplyTo::AntiEntropy | ReplyTo::Transfer | ReplyTo::Nobody
        )
    }

    /// The event that carries a storage answer to its asker (`None`: nobody is waiting).
    pub fn storage_done(self, done: StorageDone) -> Option<Event> {
        match self {
            ReplyTo::Coordinate => Some(Event::Coordinate(CoordinateEvent::Storage(done))),
            ReplyTo::Handoff => Some(Event::Handoff(HandoffEvent::Storage(done))),
            ReplyTo::AntiEntropy => Some(Event::AntiEntropy(AntiEntropyEvent::Storage(done))),
            ReplyTo::Gossip => Some(Event::Gossip(GossipEvent::Storage(done))),
            ReplyTo::Transfer => Some(Event::Transfer(TransferEvent::Storage(done))),
            ReplyTo::Nobody => None,
        }
    }

    /// The event that carries a peer's answer to its asker (`None`: nobody is waiting).
    pub fn peer_done(self, done: PeerDone) -> Option<Event> {
        match self {
            ReplyTo::Coordinate => Some(Event::Coordinate(CoordinateEvent::Peer(done))),
            ReplyTo::Handoff => Some(Event::Handoff(HandoffEvent::Peer(done))),
            ReplyTo::AntiEntropy => Some(Event::AntiEntropy(AntiEntropyEvent::Peer(done))),
            ReplyTo::Gossip => Some(Event::Gossip(GossipEvent::Peer(done))),
            ReplyTo::Transfer => Some(Event::Transfer(TransferEvent::Peer(done))),
            ReplyTo::Nobody => None,
        }
    }
}

impl fmt::Display for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyTo::Coordinate => "coordinate",
            ReplyTo::Handoff => "handoff",
            ReplyTo::AntiEntropy => "anti-entropy",
            ReplyTo::Gossip => "gossip",
            ReplyTo::Transfer => "transfer",
            ReplyTo::Nobody => "nobody",
        })
    }
}

/// Why a stage's queue did not take an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is at capacity.
    Full,
    /// The stage has stopped.
    Closed,
}

impl Refusal {
    /// The one mapping of a refused send to what the client hears: a full queue is
    /// `Overloaded` naming the stage (SEDA's fail-fast admission), a stopped one
    /// `ShuttingDown`.
    pub fn error(self, stage: StageId) -> ServiceError {
        match self {
            Refusal::Full => ServiceError::Overloaded {
                stage: stage.name().to_string(),
            },
            Refusal::Closed => ServiceError::ShuttingDown,
        }
    }
}
