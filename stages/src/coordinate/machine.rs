//! The coordinator's state machine (SPEC §4): pending requests, their quorums and deadlines.
//! Pure: it reads no clock and touches no queue; the driver passes `now` and routes the
//! outputs, and a simulator can do the same.
//!
//! - A **put** is coordinated by a preference-list node: a node outside the list forwards it
//!   to one inside (so clock entries come only from preference-list nodes). The coordinator
//!   writes locally first (creating the new version), then sends the resulting version set to
//!   the other N-1 replicas and answers after W acknowledgements, its own included.
//! - A **get** asks all N replicas, answers after R with the merged versions, and once every
//!   replica answered (or the deadline passed) sends the merged set to the replicas whose own
//!   set differed: read repair, done by the background repair stage.
//! - **Serve** requests (a peer's replica read/write, an operator's local read) touch only the
//!   local store.
//! - **Sloppy quorum** (§4.6): replicas go to the first N *healthy* nodes of the walk. A
//!   primary the failure detector holds down is replaced by the next healthy fallback, and a
//!   write sent there carries a hint naming the primary; a replica that fails during a request
//!   is retried on the next spare fallback the same way. Hints count toward W.
//! - **Failure detection** (§4.8.3): every peer answer or failure (including a missed
//!   deadline) updates the [`FailureDetector`]; down peers are probed with `Ping` every
//!   `probe_interval` and come back by themselves.

use crate::durability::Durability;
use crate::error::ServiceError;
use crate::event::{
    ClientRequest, CoordinateEvent, Event, HandoffEvent, IntakeEvent, Now, OpId, Operation, Origin,
    PeerDone, RepairEvent, ReplicateEvent, ReplyTo, ServeRequest, StorageDone, StorageEvent,
    StorageOutcome, StorageRequest,
};
use crate::failure_detector::FailureDetector;
use crate::membership::{MemberState, MembershipView};
use crate::quorum::{QuorumState, QuorumTracker};
use crate::seda::{Count, Machine, Outbox};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use crate::wire::{
    Bytes, ContextSeal, DeleteRequest, GetReply, LocalReply, MemberStatus, MembersReply, Message,
    PutReply, PutRequest, ReplicaRead, ReplicaReply, ReplicaWrite,
};
use crate::NodeId;
use slog::{info, Logger};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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
    /// How often a peer held down is probed.
    pub probe_interval: Duration,
    /// How long a replica may stay silent before its replica goes to a fallback (Dynamo §4.6:
    /// a node that "misses its deadline" is treated like one that is down).
    pub replica_timeout: Duration,
    /// Default durable writes (Dynamo §6.1): how many replicas flush before the reply.
    pub durable_writes: Durability,
}

/// How long a probe may take before it counts as failed (the peer stays down).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a member that stays down is named again in the log ("peer still down").
const STILL_DOWN_EVERY: Duration = Duration::from_secs(60);

/// One replica of a request: the node asked, and the preference-list node it stands in for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    node: NodeId,
    hint: Option<NodeId>,
}

/// What a pending operation is: its request, the node asked, and whom it stands in for.
#[derive(Clone, Debug)]
struct OpInfo {
    request: RequestKey,
    node: NodeId,
    hint: Option<NodeId>,
    /// The first tick that saw the operation outstanding (its age is measured from there,
    /// within one tick, so `new_op` needs no clock).
    seen: Option<Instant>,
    /// Already judged silent: not judged again.
    timed_out: bool,
}

/// What a pending request is doing.
enum Work {
    /// A client get: each replica's answer, their merge, and healthy fallbacks not yet asked.
    /// `primaries` are the key's preference list: only they are read-repaired (a fallback that
    /// answered keeps hints, not objects).
    Read {
        replies: BTreeMap<NodeId, VersionSet>,
        merged: VersionSet,
        spares: Vec<NodeId>,
        primaries: Vec<NodeId>,
    },
    /// A client put or delete this node coordinates. `context` and `written` are set once the
    /// local write created the version; `remotes` are the other replicas it is then sent to;
    /// `spares` are healthy fallbacks for replicas that fail.
    Write {
        context: Option<VClock>,
        written: Option<VersionSet>,
        remotes: Vec<Target>,
        spares: Vec<NodeId>,
        /// New replicas of a moving partition: sent the write, not counted toward W.
        also_write: Vec<NodeId>,
        /// Who flushes before acknowledging (the local write flushes for "one" and "all").
        durability: Durability,
        /// Acknowledgements whose copy was on disk, for the reply.
        durable_copies: u8,
        /// `"one"`: the local write is applied and replicated but its flush has not answered;
        /// no reply until it has.
        awaiting_local_flush: bool,
    },
    /// A put forwarded to a preference-list node; `untried` are the next candidates.
    Forward {
        message: Message,
        untried: Vec<NodeId>,
    },
    /// A peer's or operator's request served from the local store.
    Serve { request: ServeKind },
    /// `admin members`: waiting for storage's count of the hints held.
    Members,
}

/// Which reply a served request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServeKind {
    Local,
    Replica,
}

/// A request waiting for its quorum (or, after replying, for stragglers).
struct Pending {
    origin: Origin,
    operation: Operation,
    key: Vec<u8>,
    received_at: Instant,
    deadline: Instant,
    tracker: QuorumTracker,
    /// Whether the client has its answer; the request stays until every replica answered or
    /// the deadline passed, so read repair sees every reply.
    replied: bool,
    work: Work,
}

/// Identifies a pending request inside the coordinator.
type RequestKey = u64;

/// The coordinator of one node. Every table is ordered (`BTreeMap`), so the order in which a
/// tick judges silent replicas or probes peers, and so the fallback each gets, is the same in
/// every run of a simulator seed.
pub struct Coordinator {
    settings: CoordinatorSettings,
    membership: MembershipView,
    /// Next id for requests and operations (one counter: a request key and an operation id
    /// never need to be told apart, and answers are routed by `ReplyTo`, not by id).
    next_id: u64,
    /// Boxed: answers take a request out and put it back, and a B-tree moves its neighbours'
    /// values on every removal; a box is 8 bytes to move, a `Pending` hundreds (the
    /// coordinator's largest `memmove` in a 3-node profile).
    requests: BTreeMap<RequestKey, Box<Pending>>,
    /// Which request, and which replica, each operation belongs to.
    operations: BTreeMap<OpId, OpInfo>,
    /// Every peer's health as this node's traffic shows it.
    detector: FailureDetector,
    /// Probes in flight: operation → (peer, deadline).
    probes: BTreeMap<OpId, (NodeId, Instant)>,
    /// Deadlines in time order, so a tick inspects only the expired ones.
    deadlines: BTreeSet<(Instant, RequestKey)>,
    /// Where the detector's verdicts are logged (a peer down, up again).
    logger: Logger,
}

impl Coordinator {
    /// A coordinator for `settings.node` routing by the current membership.
    pub fn new(settings: CoordinatorSettings, membership: MembershipView) -> Coordinator {
        Coordinator {
            detector: FailureDetector::new(settings.probe_interval),
            probes: BTreeMap::new(),
            settings,
            membership,
            next_id: 1,
            requests: BTreeMap::new(),
            operations: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            logger: Logger::root(slog::Discard, slog::o!()),
        }
    }

    /// The same, logging the failure detector's verdicts to `logger`.
    pub fn with_logger(mut self, logger: Logger) -> Coordinator {
        self.logger = logger;
        self
    }

    /// The same, publishing the peers its detector holds down to `board` (the metrics).
    pub fn with_peer_board(mut self, board: crate::failure_detector::PeerBoard) -> Coordinator {
        self.detector.publish_to(board);
        self
    }

    /// Requests waiting for a quorum or for stragglers.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Handles one event at time `now` (its wall clock stamps new versions).
    pub fn handle(&mut self, now: Now, event: CoordinateEvent, out: &mut Outbox) {
        let wall_ms = now.wall_ms;
        let now = now.instant;
        match event {
            CoordinateEvent::Client {
                origin,
                request,
                received_at,
            } => self.start_client_request(now, wall_ms, origin, request, received_at, out),
            CoordinateEvent::Serve {
                origin,
                request,
                received_at,
            } => self.start_serve(origin, request, received_at, out),
            CoordinateEvent::Members {
                origin,
                received_at,
            } => self.start_members(origin, received_at, out),
            CoordinateEvent::Storage(done) => {
                let StorageDone {
                    op,
                    result,
                    durable,
                } = done;
                self.on_answer(now, op, result, durable, out)
            }
            CoordinateEvent::Peer(done) => self.on_peer_answer(now, done, out),
            CoordinateEvent::Heard { peer } => self.heard_from(&peer, out),
            CoordinateEvent::LinkFailed { peer, refused } => self.link_failed(&peer, now, refused),
            CoordinateEvent::PeerStopped { peer } => self.peer_stopped(&peer, now),
        }
    }

    /// Fails every request whose deadline has passed with the quorum error (marking the
    /// replicas that stayed silent as failed), starts read repair for expired reads, and
    /// probes down peers.
    pub fn tick(&mut self, now: Instant, out: &mut Outbox) {
        let expired: Vec<(Instant, RequestKey)> = self
            .deadlines
            .range(..=(now, RequestKey::MAX))
            .copied()
            .collect();
        let any_expired = !expired.is_empty();
        for (deadline, key) in expired {
            self.deadlines.remove(&(deadline, key));
            // A replica that let the deadline pass counts as failed (Dynamo §4.8.3). Not a node a
            // put was forwarded to: it works to the same deadline and is judged by its answer.
            let forwarded = self
                .requests
                .get(&key)
                .is_some_and(|p| matches!(p.work, Work::Forward { .. }));
            let outstanding: Vec<NodeId> = self
                .operations
                .values()
                .filter(|op| op.request == key)
                .map(|op| op.node.clone())
                .collect();
            if !forwarded {
                let me = self.settings.node.clone();
                for node in outstanding.iter().filter(|n| **n != me) {
                    self.peer_failed(node, now, "silent at a request's deadline");
                }
            }
            let why = if forwarded {
                "forwarded, no answer"
            } else {
                "silent"
            };
            if let Some(mut pending) = self.requests.remove(&key) {
                if !pending.replied {
                    for node in &outstanding {
                        pending.tracker.missing(node.as_str(), why);
                    }
                    let error = if matches!(
                        pending.work,
                        Work::Write {
                            awaiting_local_flush: true,
                            ..
                        }
                    ) {
                        // W replicas may have acknowledged; the one that had to flush did not.
                        ServiceError::Storage {
                            reason: "the coordinator's durable write (durable_writes = \"one\") \
                                     did not finish its flush before the deadline"
                                .into(),
                        }
                    } else {
                        pending.tracker.error(pending.operation.name())
                    };
                    self.reply(now, &mut pending, Message::Error(error), out);
                }
                repair_if_read(&pending, out);
            }
        }
        // Operations of requests that just expired are dropped; a sweep is only needed then.
        if any_expired {
            self.operations
                .retain(|_, op| self.requests.contains_key(&op.request));
        }
        self.reroute_silent_replicas(now, out);
        self.probe_down_peers(now, out);
    }

    fn start_client_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        origin: Origin,
        request: ClientRequest,
        received_at: Instant,
        out: &mut Outbox,
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
            out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
            return;
        }
        let replicas = self.membership.replicas_for_key(request.key(), n);
        let primaries = replicas.list.primaries.clone();
        let (targets, spares) = self.targets(replicas.list);
        let deadline = received_at + timeout.unwrap_or(self.settings.request_timeout);
        let me = self.settings.node.clone();
        let key = self.new_id();
        let mut tracker = QuorumTracker::new(quorum, targets.len());
        // Primaries held down that no fallback stands in for: a failed quorum names them.
        for primary in primaries
            .iter()
            .filter(|p| !targets.iter().any(|t| t.node == **p))
        {
            tracker.missing(
                primary.as_str(),
                &self.detector.not_asked_note(primary, now),
            );
        }
        let mut pending = Box::new(Pending {
            origin,
            operation,
            key: request.key().to_vec(),
            received_at,
            deadline,
            tracker,
            replied: false,
            work: Work::Serve {
                request: ServeKind::Local,
            }, // replaced below
        });
        match request {
            ClientRequest::Get { key: k, .. } => {
                pending.work = Work::Read {
                    replies: BTreeMap::new(),
                    merged: VersionSet::new(),
                    spares,
                    primaries: primaries.clone(),
                };
                for target in &targets {
                    self.send_read(key, &target.node, &k, deadline, out);
                }
            }
            ClientRequest::Put {
                key: k,
                context,
                value,
                w,
                timeout,
                forwarded,
                durable,
                overwrite,
            } => {
                if !primaries.contains(&me) && !forwarded {
                    // Healthy list nodes first; down ones last, in case the detector is wrong.
                    let (mut untried, down): (Vec<NodeId>, Vec<NodeId>) =
                        primaries.into_iter().partition(|p| self.detector.is_up(p));
                    untried.extend(down);
                    let message = forwarded_message(
                        &self.settings.seal,
                        &k,
                        &context,
                        value,
                        (w, timeout, durable, overwrite),
                    );
                    pending.work = Work::Forward { message, untried };
                    // A forward tries every list node, down ones too: each is counted as it is
                    // asked, and none is "held down, not asked".
                    pending.tracker = QuorumTracker::new(quorum, 0);
                    self.requests.insert(key, pending);
                    self.deadlines.insert((deadline, key));
                    self.forward_next(now, key, out);
                    return;
                }
                // A forwarded put whose sender's view differs may land outside the list: this
                // node is then one of the N replicas it writes, if it holds the key at all (a
                // copy here would be dropped by cleanup, perhaps after its final sync, while
                // the quorum counted it): otherwise the sender tries the next list node.
                if forwarded {
                    if let Some(error) = self.not_a_replica(&k) {
                        return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
                    }
                }
                let mut remotes: Vec<Target> =
                    targets.into_iter().filter(|t| t.node != me).collect();
                remotes.truncate(n.saturating_sub(1));
                pending.tracker.set_asked(remotes.len() + 1);
                let durability = durable.unwrap_or(self.settings.durable_writes);
                pending.work = Work::Write {
                    context: None,
                    written: None,
                    remotes,
                    spares,
                    also_write: replicas.also_write,
                    durability,
                    durable_copies: 0,
                    awaiting_local_flush: false,
                };
                let op = self.new_op(key, &me, None);
                out.request(storage(
                    op,
                    StorageRequest::CoordinatePut {
                        key: k,
                        context,
                        value,
                        now_ms: wall_ms,
                        // Dynamo §6.1: the coordinator, a replica, is the one that writes
                        // durably ("one"); its flush ends before the others get the write.
                        durable: durability.coordinator_flushes(),
                        overwrite,
                    },
                ));
            }
        }
        self.deadlines.insert((deadline, key));
        self.requests.insert(key, pending);
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn new_op(&mut self, request: RequestKey, node: &NodeId, hint: Option<NodeId>) -> OpId {
        let op = OpId(self.new_id());
        self.operations.insert(
            op,
            OpInfo {
                request,
                node: node.clone(),
                hint,
                seen: None,
                timed_out: false,
            },
        );
        op
    }

    fn send_read(
        &mut self,
        request: RequestKey,
        node: &NodeId,
        key: &[u8],
        deadline: Instant,
        out: &mut Outbox,
    ) {
        let op = self.new_op(request, node, None);
        if *node == self.settings.node {
            out.request(storage(
                op,
                StorageRequest::Read {
                    key: key.to_vec(),
                    with_hints: true,
                },
            ));
        } else {
            let message = Message::ReplicaRead(ReplicaRead {
                key: Bytes::from(key.to_vec()),
            });
            out.request(to_peer(node.clone(), op, message, deadline));
        }
    }

    fn send_write(
        &mut self,
        request: RequestKey,
        target: Target,
        key: &[u8],
        versions: &VersionSet,
        (deadline, durable): (Instant, bool),
        out: &mut Outbox,
    ) {
        let op = self.new_op(request, &target.node, target.hint.clone());
        let message = Message::ReplicaWrite(ReplicaWrite {
            key: Bytes::from(key.to_vec()),
            versions: versions.clone(),
            hint: target.hint,
            durable,
        });
        out.request(to_peer(target.node, op, message, deadline));
    }

    fn reply(&mut self, now: Instant, pending: &mut Pending, message: Message, out: &mut Outbox) {
        pending.replied = true;
        if !matches!(pending.work, Work::Serve { .. } | Work::Members) {
            out.latency(
                pending.operation,
                now.saturating_duration_since(pending.received_at),
            );
            if let Message::Error(error) = &message {
                out.count(Count::Failed {
                    operation: pending.operation,
                    kind: error.kind(),
                });
            }
        }
        out.reply(IntakeEvent::reply(pending.origin, &message));
    }
}

/// An operation on the local store, answered to the coordinator.
fn storage(op: OpId, request: StorageRequest) -> StorageEvent {
    StorageEvent {
        op,
        reply_to: ReplyTo::Coordinate,
        request,
    }
}

/// A request to a peer, answered to the coordinator.
fn to_peer(peer: NodeId, op: OpId, message: Message, deadline: Instant) -> ReplicateEvent {
    ReplicateEvent::Send {
        peer,
        op,
        message,
        deadline,
        reply_to: ReplyTo::Coordinate,
    }
}

impl Machine for Coordinator {
    type Input = CoordinateEvent;

    fn on_event(&mut self, now: Now, event: CoordinateEvent, out: &mut Outbox) {
        self.handle(now, event, out);
    }

    fn on_tick(&mut self, now: Now, out: &mut Outbox) {
        self.tick(now.instant, out);
    }

    /// Its 5 ms tick only resolves deadlines, reroutes silent replicas and probes down peers:
    /// with no request in flight and every peer up there is nothing to do.
    fn idle(&self) -> bool {
        self.requests.is_empty()
            && self.operations.is_empty()
            && self.probes.is_empty()
            && !self.detector.any_down()
    }

    /// A request this coordinator sent was refused (a full storage or replication queue):
    /// the operation fails with that error, as a lost peer's would, and the client hears it.
    fn on_refused(&mut self, now: Now, event: Event, error: ServiceError, out: &mut Outbox) {
        match event {
            Event::Storage(StorageEvent { op, .. }) => {
                self.on_answer(now.instant, op, Err(error), false, out)
            }
            Event::Replicate(ReplicateEvent::Send { peer, op, .. }) => {
                let done = PeerDone {
                    op,
                    peer,
                    result: Err(error),
                };
                self.on_peer_answer(now.instant, done, out)
            }
            _ => {}
        }
    }
}

mod answers;
mod failover;
mod serve;
use answers::repair_if_read;
use failover::forwarded_message;
