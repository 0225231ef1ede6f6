//! The coordination stage (Dynamo §4.5): turns a client request into storage operations on the
//! key's replicas, counts their answers against R or W, and replies once the quorum is reached
//! or the deadline passed. The logic is the pure [`Coordinator`]; [`CoordinateStage`] only moves
//! its outputs onto queues.
//!
//! Threads: exactly one. The pending-request table lives in one thread so that no lock is taken
//! per answer; coordination is bookkeeping, cheap next to storage and the network.

mod machine;

pub use machine::{CoordinateOutput, Coordinator, CoordinatorSettings, RepairEvent};

use crate::error::ServiceError;
use crate::intake::{ConnId, IntakeEvent};
use crate::repair::RepairStageEvent;
use crate::replicate::ReplicateEvent;
use crate::seda::{micros, new_latency_histogram, SendError, Stage, StageSender};
use crate::storage::{StorageDone, StorageEvent};
use crate::vclock::VClock;
use crate::wire::{Message, OperationLatency};
use machine::LatencyMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a request came from, so its reply finds the way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client connection.
    pub conn: ConnId,
    /// The request id the client chose.
    pub request_id: u64,
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
    },
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
        versions: crate::versioning::VersionSet,
        /// The node these versions are meant for, when this node stands in for it.
        hint: Option<crate::NodeId>,
    },
}

/// The failure detector's view, published by the coordinator for `admin members`.
pub type PeerBoard = Arc<Mutex<Vec<crate::failure_detector::PeerStatus>>>;

/// A peer's answer to an operation, routed back by the replication stage.
#[derive(Debug)]
pub struct PeerDone {
    /// The operation answered.
    pub op: crate::storage::OpId,
    /// The peer that answered (or failed).
    pub peer: crate::NodeId,
    /// The peer's reply message, or why none will come.
    pub result: Result<Message, ServiceError>,
}

impl ClientRequest {
    /// The request's key.
    pub fn key(&self) -> &[u8] {
        match self {
            ClientRequest::Get { key, .. } | ClientRequest::Put { key, .. } => key,
        }
    }
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
    /// A local storage operation finished.
    Storage(StorageDone),
    /// A peer answered (or will not).
    Peer(PeerDone),
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
            CoordinateEvent::Storage(done) => write!(f, "storage done op {}", done.op),
            CoordinateEvent::Peer(done) => write!(f, "peer {} done op {}", done.peer, done.op),
        }
    }
}

/// End-to-end latency histograms of client operations, written by the coordinator and read
/// by `admin stats`.
#[derive(Clone, Default)]
pub struct OperationLatencies {
    histograms: Arc<Mutex<LatencyMap>>,
}

impl OperationLatencies {
    /// Records one answered request.
    pub fn record(&self, operation: Operation, latency: Duration) {
        if let Ok(mut map) = self.histograms.lock() {
            map.entry(operation)
                .or_insert_with(new_latency_histogram)
                .saturating_record(micros(latency));
        }
    }

    /// Percentiles per operation.
    pub fn snapshot(&self) -> Vec<OperationLatency> {
        let Ok(map) = self.histograms.lock() else {
            return Vec::new();
        };
        map.iter()
            .map(|(operation, h)| OperationLatency {
                operation: operation.name().to_string(),
                count: h.len(),
                latency_us_p50: h.value_at_quantile(0.5),
                latency_us_p99: h.value_at_quantile(0.99),
                latency_us_p999: h.value_at_quantile(0.999),
            })
            .collect()
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The driver of the coordinator: routes its outputs to the storage and intake queues.
pub struct CoordinateStage {
    machine: Coordinator,
    storage: StageSender<StorageEvent>,
    intake: StageSender<IntakeEvent>,
    replicate: StageSender<ReplicateEvent>,
    repair: StageSender<RepairStageEvent>,
    outbox: Vec<CoordinateOutput>,
}

impl CoordinateStage {
    /// A driver around `machine`.
    pub fn new(
        machine: Coordinator,
        storage: StageSender<StorageEvent>,
        intake: StageSender<IntakeEvent>,
        replicate: StageSender<ReplicateEvent>,
        repair: StageSender<RepairStageEvent>,
    ) -> CoordinateStage {
        CoordinateStage {
            machine,
            storage,
            intake,
            replicate,
            repair,
            outbox: Vec::new(),
        }
    }

    /// Routes every output; a storage queue that is full answers the operation with
    /// `Overloaded`, which the machine turns into the client's reply.
    fn flush(&mut self, now: Instant) {
        while !self.outbox.is_empty() {
            for output in std::mem::take(&mut self.outbox) {
                self.route(now, output);
            }
        }
    }

    fn route(&mut self, now: Instant, output: CoordinateOutput) {
        {
            match output {
                CoordinateOutput::Storage(event) => {
                    if let Err(refused) = self.storage.try_send(event) {
                        let error = match refused {
                            SendError::Full(_) => ServiceError::Overloaded {
                                stage: "storage".into(),
                            },
                            SendError::Closed(_) => ServiceError::ShuttingDown,
                        };
                        let op = storage_op(&refused.into_event());
                        let done = StorageDone {
                            op,
                            result: Err(error),
                        };
                        self.machine.on_event(
                            now,
                            wall_clock_ms(),
                            CoordinateEvent::Storage(done),
                            &mut self.outbox,
                        );
                    }
                }
                CoordinateOutput::Reply { origin, message } => {
                    let _ = self.intake.send(IntakeEvent::reply(origin, &message));
                }
                // try_send: the replication stage sends back to this one, so waiting on it
                // could deadlock. A full queue fails the operation like a lost peer would.
                CoordinateOutput::Peer {
                    peer,
                    op,
                    message,
                    deadline,
                } => {
                    let event = ReplicateEvent::Send {
                        peer: peer.clone(),
                        op,
                        message,
                        deadline,
                    };
                    if let Err(refused) = self.replicate.try_send(event) {
                        let error = match refused {
                            SendError::Full(_) => ServiceError::Overloaded {
                                stage: "replicate".into(),
                            },
                            SendError::Closed(_) => ServiceError::ShuttingDown,
                        };
                        let done = PeerDone {
                            op,
                            peer,
                            result: Err(error),
                        };
                        self.machine.on_event(
                            now,
                            wall_clock_ms(),
                            CoordinateEvent::Peer(done),
                            &mut self.outbox,
                        );
                    }
                }
                // Repair is best effort: when its queue is full the work is dropped (and
                // counted as rejected); anti-entropy repairs what read repair did not.
                CoordinateOutput::Repair(repair) => {
                    let _ = self.repair.try_send(RepairStageEvent::Repair(repair));
                }
            }
        }
    }
}

fn storage_op(event: &StorageEvent) -> crate::storage::OpId {
    match event {
        StorageEvent::Read { op, .. }
        | StorageEvent::CoordinatePut { op, .. }
        | StorageEvent::StoreHint { op, .. }
        | StorageEvent::Merge { op, .. } => *op,
    }
}

impl Stage for CoordinateStage {
    type Event = CoordinateEvent;

    fn handle_batch(&mut self, now: Instant, batch: &mut Vec<CoordinateEvent>) {
        let wall_ms = wall_clock_ms();
        for event in batch.drain(..) {
            self.machine.on_event(now, wall_ms, event, &mut self.outbox);
        }
        self.flush(now);
    }

    fn on_tick(&mut self, now: Instant) {
        self.machine.on_tick(now, &mut self.outbox);
        self.flush(now);
    }
}

#[cfg(test)]
mod tests;
