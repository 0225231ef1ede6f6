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

use super::{
    ClientRequest, CoordinateEvent, Operation, OperationLatencies, Origin, PeerBoard, PeerDone,
    ServeRequest,
};
use crate::error::ServiceError;
use crate::failure_detector::FailureDetector;
use crate::membership::MembershipView;
use crate::quorum::{QuorumState, QuorumTracker};
use crate::storage::{OpId, StorageDone, StorageEvent, StorageOutcome};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use crate::wire::{
    Bytes, ContextSeal, DeleteRequest, GetReply, LocalReply, Message, PutReply, PutRequest,
    ReplicaRead, ReplicaReply, ReplicaWrite,
};
use crate::NodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Read repair work for the background repair stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairEvent {
    /// The key.
    pub key: Vec<u8>,
    /// The reconciled versions every replica should hold.
    pub versions: VersionSet,
    /// The replicas whose versions differed.
    pub targets: Vec<NodeId>,
}

/// What the coordinator asks the driver to do.
#[derive(Debug)]
pub enum CoordinateOutput {
    /// Queue this event for the local storage stage.
    Storage(StorageEvent),
    /// Send this request to a peer (through the replication stage).
    Peer {
        /// The peer.
        peer: NodeId,
        /// The operation its reply answers.
        op: OpId,
        /// The request.
        message: Message,
        /// When the replication stage may forget it.
        deadline: Instant,
    },
    /// Send this reply to the client.
    Reply {
        /// Where the request came from.
        origin: Origin,
        /// The reply.
        message: Message,
    },
    /// Hand read repair to the background repair stage.
    Repair(RepairEvent),
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
    /// How often a peer held down is probed.
    pub probe_interval: Duration,
    /// How long a replica may stay silent before its replica goes to a fallback (Dynamo §4.6:
    /// a node that "misses its deadline" is treated like one that is down).
    pub replica_timeout: Duration,
}

/// How long a probe may take before it counts as failed (the peer stays down).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
    },
    /// A put forwarded to a preference-list node; `untried` are the next candidates.
    Forward {
        message: Message,
        untried: Vec<NodeId>,
    },
    /// A peer's or operator's request served from the local store.
    Serve { request: ServeKind },
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

/// The coordinator of one node.
pub struct Coordinator {
    settings: CoordinatorSettings,
    membership: MembershipView,
    latencies: OperationLatencies,
    /// Next id for requests and operations. Coordinator ids stay below 2^63; the repair
    /// stage numbers its own operations above, so replies never reach the wrong owner.
    next_id: u64,
    requests: HashMap<RequestKey, Pending>,
    /// Which request, and which replica, each operation belongs to.
    operations: HashMap<OpId, OpInfo>,
    /// Every peer's health as this node's traffic shows it.
    detector: FailureDetector,
    /// Probes in flight: operation → (peer, deadline).
    probes: HashMap<OpId, (NodeId, Instant)>,
    /// Where `admin members` reads the detector's view.
    board: PeerBoard,
    /// Deadlines in time order, so a tick inspects only the expired ones.
    deadlines: BTreeSet<(Instant, RequestKey)>,
}

impl Coordinator {
    /// A coordinator for `settings.node` routing by the current membership.
    pub fn new(
        settings: CoordinatorSettings,
        membership: MembershipView,
        latencies: OperationLatencies,
        board: PeerBoard,
    ) -> Coordinator {
        Coordinator {
            detector: FailureDetector::new(settings.probe_interval),
            probes: HashMap::new(),
            board,
            settings,
            membership,
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
            } => self.start_client_request(now, wall_ms, origin, request, received_at, out),
            CoordinateEvent::Serve {
                origin,
                request,
                received_at,
            } => self.start_serve(origin, request, received_at, out),
            CoordinateEvent::Storage(done) => {
                let StorageDone { op, result } = done;
                self.on_answer(now, op, result, out)
            }
            CoordinateEvent::Peer(done) => self.on_peer_answer(now, done, out),
        }
    }

    /// Fails every request whose deadline has passed with the quorum error (marking the
    /// replicas that stayed silent as failed), starts read repair for expired reads, probes
    /// down peers, and publishes the detector's view.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<CoordinateOutput>) {
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
            let silent: Vec<NodeId> = if forwarded {
                Vec::new()
            } else {
                self.operations
                    .values()
                    .filter(|op| op.request == key)
                    .map(|op| op.node.clone())
                    .collect()
            };
            for node in silent.iter().filter(|n| **n != self.settings.node) {
                self.detector.failed(node, now);
            }
            if let Some(mut pending) = self.requests.remove(&key) {
                if !pending.replied {
                    let error = pending.tracker.error(pending.operation.name());
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
        if let Ok(mut board) = self.board.lock() {
            *board = self.detector.statuses(now);
        }
    }

    fn start_client_request(
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
        let (targets, spares) = self.targets(request.key());
        let primaries = self
            .membership
            .current()
            .ring()
            .preference_list_for_key(request.key(), n)
            .primaries;
        let deadline = received_at + timeout.unwrap_or(self.settings.request_timeout);
        let me = self.settings.node.clone();
        let key = self.new_id();
        let mut pending = Pending {
            origin,
            operation,
            key: request.key().to_vec(),
            received_at,
            deadline,
            tracker: QuorumTracker::new(quorum, targets.len()),
            replied: false,
            work: Work::Serve {
                request: ServeKind::Local,
            }, // replaced below
        };
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
            } => {
                if !primaries.contains(&me) && !forwarded {
                    // Healthy list nodes first; down ones last, in case the detector is wrong.
                    let (mut untried, down): (Vec<NodeId>, Vec<NodeId>) =
                        primaries.into_iter().partition(|p| self.detector.is_up(p));
                    untried.extend(down);
                    let message =
                        forwarded_message(&self.settings.seal, &k, &context, value, w, timeout);
                    pending.work = Work::Forward { message, untried };
                    self.requests.insert(key, pending);
                    self.deadlines.insert((deadline, key));
                    self.forward_next(now, key, out);
                    return;
                }
                // A forwarded put whose sender's view differs may land outside the list: this
                // node is then one of the N replicas it writes.
                let mut remotes: Vec<Target> =
                    targets.into_iter().filter(|t| t.node != me).collect();
                remotes.truncate(n.saturating_sub(1));
                pending.tracker = QuorumTracker::new(quorum, remotes.len() + 1);
                pending.work = Work::Write {
                    context: None,
                    written: None,
                    remotes,
                    spares,
                };
                let op = self.new_op(key, &me, None);
                out.push(CoordinateOutput::Storage(StorageEvent::CoordinatePut {
                    op,
                    key: k,
                    context,
                    value,
                    now_ms: wall_ms,
                }));
            }
        }
        self.deadlines.insert((deadline, key));
        self.requests.insert(key, pending);
    }

    fn start_serve(
        &mut self,
        origin: Origin,
        request: ServeRequest,
        received_at: Instant,
        out: &mut Vec<CoordinateOutput>,
    ) {
        let key = self.new_id();
        let me = self.settings.node.clone();
        let op = self.new_op(key, &me, None);
        let (kind, item, event) = match request {
            // `get --local`: the node's own objects, not the hints it keeps for others.
            ServeRequest::Local { key: k } => (
                ServeKind::Local,
                k.clone(),
                StorageEvent::Read {
                    op,
                    key: k,
                    with_hints: false,
                },
            ),
            ServeRequest::ReplicaRead { key: k } => (
                ServeKind::Replica,
                k.clone(),
                StorageEvent::Read {
                    op,
                    key: k,
                    with_hints: true,
                },
            ),
            // Sloppy quorum: a fallback keeps versions meant for another node as a hint.
            ServeRequest::ReplicaWrite {
                key: k,
                versions,
                hint: Some(target),
            } if target != me => (
                ServeKind::Replica,
                k.clone(),
                StorageEvent::StoreHint {
                    op,
                    target,
                    key: k,
                    versions,
                },
            ),
            ServeRequest::ReplicaWrite {
                key: k, versions, ..
            } => (
                ServeKind::Replica,
                k.clone(),
                StorageEvent::Merge {
                    op,
                    key: k,
                    versions,
                },
            ),
        };
        let deadline = received_at + self.settings.request_timeout;
        out.push(CoordinateOutput::Storage(event));
        self.deadlines.insert((deadline, key));
        self.requests.insert(
            key,
            Pending {
                origin,
                operation: Operation::Get,
                key: item,
                received_at,
                deadline,
                tracker: QuorumTracker::new(1, 1),
                replied: false,
                work: Work::Serve { request: kind },
            },
        );
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn new_op(&mut self, request: RequestKey, node: &NodeId, hint: Option<NodeId>) -> OpId {
        let op = self.new_id();
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
        out: &mut Vec<CoordinateOutput>,
    ) {
        let op = self.new_op(request, node, None);
        if *node == self.settings.node {
            out.push(CoordinateOutput::Storage(StorageEvent::Read {
                op,
                key: key.to_vec(),
                with_hints: true,
            }));
        } else {
            let message = Message::ReplicaRead(ReplicaRead {
                key: Bytes::from(key.to_vec()),
            });
            out.push(CoordinateOutput::Peer {
                peer: node.clone(),
                op,
                message,
                deadline,
            });
        }
    }

    fn send_write(
        &mut self,
        request: RequestKey,
        target: Target,
        key: &[u8],
        versions: &VersionSet,
        deadline: Instant,
        out: &mut Vec<CoordinateOutput>,
    ) {
        let op = self.new_op(request, &target.node, target.hint.clone());
        let message = Message::ReplicaWrite(ReplicaWrite {
            key: Bytes::from(key.to_vec()),
            versions: versions.clone(),
            hint: target.hint,
        });
        out.push(CoordinateOutput::Peer {
            peer: target.node,
            op,
            message,
            deadline,
        });
    }

    fn reply(
        &mut self,
        now: Instant,
        pending: &mut Pending,
        message: Message,
        out: &mut Vec<CoordinateOutput>,
    ) {
        pending.replied = true;
        if !matches!(pending.work, Work::Serve { .. }) {
            self.latencies.record(
                pending.operation,
                now.saturating_duration_since(pending.received_at),
            );
        }
        out.push(CoordinateOutput::Reply {
            origin: pending.origin,
            message,
        });
    }
}

mod answers;
mod failover;
use answers::repair_if_read;
use failover::forwarded_message;

/// Latency per operation, for `OperationLatencies::snapshot`.
pub(super) type LatencyMap = BTreeMap<Operation, hdrhistogram::Histogram<u64>>;
