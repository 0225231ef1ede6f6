//! The coordinator's state machine (SPEC §4): pending requests, their quorums and deadlines.
//! Pure: it reads no clock and touches no queue; the driver passes `now` and routes the
//! outputs, and a simulator can do the same.

use super::{ClientRequest, CoordinateEvent, Operation, OperationLatencies, Origin};
use crate::error::ServiceError;
use crate::quorum::{QuorumState, QuorumTracker};
use crate::ring::Ring;
use crate::storage::{OpId, StorageDone, StorageEvent, StorageOutcome};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use crate::wire::{Bytes, ContextSeal, GetReply, Message, PutReply};
use crate::NodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the coordinator asks the driver to do.
#[derive(Debug)]
pub enum CoordinateOutput {
    /// Queue this event for the local storage stage.
    Storage(StorageEvent),
    /// Send this reply to the client.
    Reply {
        /// Where the request came from.
        origin: Origin,
        /// The reply.
        message: Message,
    },
}

/// Quorum defaults and limits of the coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorSettings {
    /// This node.
    pub node: NodeId,
    /// Replicas per key (N).
    pub n: usize,
    /// Default read quorum (R).
    pub r: usize,
    /// Default write quorum (W).
    pub w: usize,
    /// Default request deadline.
    pub request_timeout: Duration,
    /// Seals the contexts handed to clients.
    pub seal: ContextSeal,
}

/// A request waiting for its quorum.
struct Pending {
    origin: Origin,
    operation: Operation,
    received_at: Instant,
    deadline: Instant,
    tracker: QuorumTracker,
    /// Versions gathered from replicas (gets).
    merged: VersionSet,
    /// The context to return for a put, once the local write created its version.
    written: Option<VClock>,
    replied: bool,
}

/// Identifies a pending request inside the coordinator.
type RequestKey = u64;

/// The coordinator of one node.
pub struct Coordinator {
    settings: CoordinatorSettings,
    ring: Arc<Ring>,
    latencies: OperationLatencies,
    next_id: u64,
    requests: HashMap<RequestKey, Pending>,
    /// Which request each storage operation belongs to.
    operations: HashMap<OpId, RequestKey>,
    /// Deadlines in time order, so a tick inspects only the expired ones.
    deadlines: BTreeSet<(Instant, RequestKey)>,
}

impl Coordinator {
    /// A coordinator for `settings.node` routing by `ring`.
    pub fn new(
        settings: CoordinatorSettings,
        ring: Arc<Ring>,
        latencies: OperationLatencies,
    ) -> Coordinator {
        Coordinator {
            settings,
            ring,
            latencies,
            next_id: 1,
            requests: HashMap::new(),
            operations: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Requests waiting for a quorum or for stragglers.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Handles one event at time `now` (`wall_ms`: wall clock for version timestamps).
    pub fn on_event(
        &mut self,
        now: Instant,
        wall_ms: u64,
        event: CoordinateEvent,
        out: &mut Vec<CoordinateOutput>,
    ) {
        match event {
            CoordinateEvent::Client {
                origin,
                request,
                received_at,
            } => self.start_request(now, wall_ms, origin, request, received_at, out),
            CoordinateEvent::Storage(done) => self.on_storage_done(now, done, out),
        }
    }

    /// Fails every request whose deadline has passed with the quorum error.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<CoordinateOutput>) {
        let expired: Vec<(Instant, RequestKey)> = self
            .deadlines
            .range(..=(now, RequestKey::MAX))
            .copied()
            .collect();
        for (deadline, key) in expired {
            self.deadlines.remove(&(deadline, key));
            if let Some(mut pending) = self.requests.remove(&key) {
                if !pending.replied {
                    let error = pending.tracker.error(pending.operation.name());
                    self.reply(now, &mut pending, Message::Error(error), out);
                }
            }
        }
        self.operations
            .retain(|_, key| self.requests.contains_key(key));
    }

    fn start_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        origin: Origin,
        request: ClientRequest,
        received_at: Instant,
        out: &mut Vec<CoordinateOutput>,
    ) {
        let (operation, quorum, timeout) = match &request {
            ClientRequest::Get { r, timeout, .. } => {
                (Operation::Get, r.unwrap_or(self.settings.r), *timeout)
            }
            ClientRequest::Put {
                w, timeout, value, ..
            } => {
                let operation = if value.is_some() {
                    Operation::Put
                } else {
                    Operation::Delete
                };
                (operation, w.unwrap_or(self.settings.w), *timeout)
            }
        };
        let n = self.settings.n;
        if quorum == 0 || quorum > n {
            let name = if operation == Operation::Get {
                "r"
            } else {
                "w"
            };
            let error = ServiceError::InvalidQuorum {
                name: name.into(),
                value: quorum as u64,
                n: n as u64,
            };
            out.push(CoordinateOutput::Reply {
                origin,
                message: Message::Error(error),
            });
            return;
        }
        let replicas = self
            .ring
            .preference_list_for_key(request.key(), n)
            .primaries;
        let deadline = received_at + timeout.unwrap_or(self.settings.request_timeout);
        let key = self.next_id;
        self.next_id += 1;
        let mut pending = Pending {
            origin,
            operation,
            received_at,
            deadline,
            tracker: QuorumTracker::new(quorum, replicas.len()),
            merged: VersionSet::new(),
            written: None,
            replied: false,
        };
        // Replicas other than this node are reached by replication (a later stage); until a
        // transport exists they count as asked and unanswered, so the deadline reports them.
        if !replicas.contains(&self.settings.node) {
            let error = pending.tracker.error(operation.name());
            self.reply(now, &mut pending, Message::Error(error), out);
            return;
        }
        let op = self.new_op(key);
        out.push(CoordinateOutput::Storage(match request {
            ClientRequest::Get { key, .. } => StorageEvent::Read { op, key },
            ClientRequest::Put {
                key,
                context,
                value,
                ..
            } => StorageEvent::CoordinatePut {
                op,
                key,
                context,
                value,
                now_ms: wall_ms,
            },
        }));
        self.deadlines.insert((deadline, key));
        self.requests.insert(key, pending);
    }

    fn new_op(&mut self, key: RequestKey) -> OpId {
        let op = self.next_id;
        self.next_id += 1;
        self.operations.insert(op, key);
        op
    }

    fn on_storage_done(
        &mut self,
        now: Instant,
        done: StorageDone,
        out: &mut Vec<CoordinateOutput>,
    ) {
        let Some(key) = self.operations.remove(&done.op) else {
            return; // the request already expired; its late answer changes nothing
        };
        let Some(mut pending) = self.requests.remove(&key) else {
            return;
        };
        let state = match done.result {
            Ok(StorageOutcome::Versions(set)) => {
                pending.merged.merge(&set);
                pending.tracker.ack()
            }
            Ok(StorageOutcome::Written { set, version }) => {
                pending.written = Some(set.write_context(&version));
                pending.merged.merge(&set);
                pending.tracker.ack()
            }
            Err(error) => {
                let state = pending.tracker.fail();
                if state == QuorumState::Unreachable && !pending.replied {
                    self.reply(now, &mut pending, Message::Error(error), out);
                }
                state
            }
        };
        if state == QuorumState::Reached && !pending.replied {
            let message = success_reply(&self.settings.seal, &pending);
            self.reply(now, &mut pending, message, out);
        }
        if pending.tracker.all_answered() {
            self.deadlines.remove(&(pending.deadline, key));
        } else {
            self.requests.insert(key, pending);
        }
    }

    fn reply(
        &mut self,
        now: Instant,
        pending: &mut Pending,
        message: Message,
        out: &mut Vec<CoordinateOutput>,
    ) {
        pending.replied = true;
        self.latencies.record(
            pending.operation,
            now.saturating_duration_since(pending.received_at),
        );
        out.push(CoordinateOutput::Reply {
            origin: pending.origin,
            message,
        });
    }
}

/// The reply to a request whose quorum was reached.
fn success_reply(seal: &ContextSeal, pending: &Pending) -> Message {
    match (&pending.operation, &pending.written) {
        (Operation::Get, _) => Message::GetReply(GetReply {
            values: pending
                .merged
                .live_values()
                .map(|v| Bytes::from(v.to_vec()))
                .collect(),
            context: Bytes::from(seal.encode(&pending.merged.context())),
        }),
        // See `VersionSet::write_context`: the writer's context plus its own write, unless
        // that would also cover a sibling the writer never saw.
        (_, Some(context)) => Message::PutReply(PutReply {
            context: Bytes::from(seal.encode(context)),
        }),
        (_, None) => Message::PutReply(PutReply {
            context: Bytes::from(seal.encode(&pending.merged.context())),
        }),
    }
}

/// Latency per operation, for `OperationLatencies::snapshot`.
pub(super) type LatencyMap = BTreeMap<Operation, hdrhistogram::Histogram<u64>>;
