//! The simulator's loop: one priority queue of `(time, sequence, job)`, one seeded random
//! generator, K nodes, the network and the clients. Every job runs at its simulated time, in
//! sequence order among equals, so a seed replays exactly.

use super::check::decode_set;
use super::check::{checker, History, Violation};
use super::client::Client;
use super::net::{End, Network};
use super::node::{Machines, SimNode, SimPost, N, REQUEST_TIMEOUT, TICKS, W};
use super::rng::SimRng;
use super::{Faults, SimConfig, SimReport};
use crate::event::{encode_reply, ConnId, Event, Now, SocketCommand, StageId};
use crate::membership::{Member, Membership, MembershipView};
use crate::storage::{Engine, SyncMode};
use crate::wire::{encoded_header, kind, FrameDecoder, Message, StatsReply};
use crate::NodeId;
use md5::{Digest, Md5};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The simulated wall clock at time 0 (a fixed date, so digests do not depend on today).
const WALL_BASE_MS: u64 = 1_800_000_000_000;
/// Partitions of the simulated ring (few, so lookups are cheap; N = 3 of up to 5 nodes).
const PARTITIONS: u32 = 16;
/// After the heal, before the final reads: probes bring nodes back and hints drain (a
/// delivery lost in the partition is retried after its 5 s deadline).
const QUIET_US: u64 = 8_000_000;
/// After the last final read: read repair finishes.
const SETTLE_US: u64 = 2_000_000;
/// Longest the final reads may take before the run stops anyway.
const FINAL_LIMIT_US: u64 = 20_000_000;
/// A request without a reply for this long breaks "every request gets exactly one reply"
/// (the coordinator answers every request by its deadline; pauses add at most their length).
const PATIENCE_US: u64 = 3 * REQUEST_TIMEOUT.as_micros() as u64 + 2_000_000;
/// How often client patience and the end of the final reads are checked.
const WATCHDOG_US: u64 = 250_000;
/// Bound on the jobs of one run (a run that does not end is a bug of its own).
const MAX_JOBS: u64 = 5_000_000;
/// The smallest queue bound a seed draws.
const SMALLEST_QUEUE: u64 = 8;
/// Something to do at a simulated time.
enum Job {
    /// An event for a stage of a node (in the incarnation that queued it).
    Deliver {
        node: usize,
        incarnation: u32,
        event: Event,
    },
    /// A stage's tick.
    Tick {
        node: usize,
        incarnation: u32,
        stage: StageId,
    },
    /// A frame arriving at end `to` of a link.
    Frame {
        link: u64,
        to: usize,
        frame: Vec<u8>,
    },
    /// A node's dial failed.
    DialFailed {
        node: usize,
        incarnation: u32,
        conn: ConnId,
    },
    /// A link closes; both ends hear of it.
    Closed { link: u64 },
    /// A clean stop's drain takes its next step (it began at `since`).
    DrainStep {
        node: usize,
        incarnation: u32,
        since: u64,
    },
    /// A clean stop's drain is over: the node stops and its backup is taken.
    DrainEnd { node: usize, incarnation: u32 },
    /// A client starts its next task (connecting first if need be).
    ClientStart { client: usize },
    /// A fault begins or ends.
    Fault(Fault),
    /// Every fault ends, and clients stop starting work.
    Heal,
    /// The clients read every key from every replica.
    FinalReads,
    /// Client patience, and the end of the final reads.
    Watchdog,
    /// The run ends.
    Stop,
}

#[derive(Clone, Debug)]
enum Fault {
    /// An operator joins the node (outside the ring until now) through a running member.
    Join(usize),
    /// An operator stages the node's leave through a running member, then commits it.
    Leave(usize),
    /// An operator stages a join at an address where nothing listens (a mistyped one), just
    /// before the joiner's: that commit then moves partitions to a node that never takes them.
    GhostJoin,
    /// The operator notices and removes the ghost: stages its removal and commits, looking
    /// again every 500 ms while attempts are left (a commit is refused while copies to live
    /// nodes are pending).
    RemoveGhost {
        attempts: u32,
    },
    /// An operator commits the staged changes through the claimant, again every 500 ms until
    /// `node` is in the ring (`joining`) or out of it (a commit is refused while the previous
    /// one's transfers are pending, or while the claimant is down).
    Commit {
        node: usize,
        joining: bool,
        attempts: u32,
    },
    /// The node's process dies: what it handed to the OS survives, what it still buffered
    /// does not (storage writes a batch out before answering it).
    Crash(usize),
    /// The node's machine loses power: what it never flushed is lost too.
    PowerLoss(usize),
    /// An operator stops the node cleanly and copies its data (the restore fault).
    Backup(usize),
    /// The node's disk dies (its process with it), and the operator restores the copy.
    Restore(usize),
    Restart(usize),
    /// The stopped node will listen at its moved address ([`moved_addr`]) when it restarts:
    /// dials to the old one find nothing from now on (a node moved to another host).
    Relisten(usize),
    /// An operator records the node's moved address (`admin move`) through a running member,
    /// looking again every 500 ms while attempts are left (the member asked may go down
    /// before gossip spreads it).
    Move {
        node: usize,
        attempts: u32,
    },
    Pause(usize, u64),
    FailFlushes(usize, u32),
    Partition(BTreeSet<usize>),
    EndPartition,
}

struct Scheduled {
    at: u64,
    seq: u64,
    job: Job,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The clock, the queue of jobs and the random generator.
struct Scheduler {
    time: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    rng: SimRng,
}

impl Scheduler {
    fn at(&mut self, at: u64, job: Job) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.time),
            seq: self.seq,
            job,
        }));
    }

    fn after(&mut self, delay: u64, job: Job) {
        self.at(self.time + delay, job);
    }
}

/// A client and where it is connected.
struct SimClient {
    client: Client,
    link: Option<u64>,
    decoder: FrameDecoder,
}

/// The whole simulated world of one seed.
pub struct World {
    seed: u64,
    sched: Scheduler,
    base: Instant,
    nodes: Vec<SimNode>,
    /// Each node's wall-clock skew, ms.
    skew_ms: Vec<u64>,
    addrs: BTreeMap<SocketAddr, usize>,
    net: Network,
    clients: Vec<SimClient>,
    history: History,
    faults: Faults,
    /// Whether every acknowledged write is flushed first (`sync = "always"`, or
    /// `durable_writes` "one" or "all"): then any machine's power loss is a fault the
    /// configuration promises to survive, and the crash fault draws as many as it likes;
    /// otherwise one (W = 2 machines hold every acknowledged write).
    acked_flushed: bool,
    /// Whether every acknowledged write is flushed on W machines (`sync = "always"`, or
    /// `durable_writes = "all"`): then a restored backup, which loses one machine's writes
    /// since the copy, and power losses anywhere together still leave a flushed copy.
    acked_flushed_twice: bool,
    /// Whether the message faults (drop, duplicate, reorder, delay) are on now.
    noisy: bool,
    /// Whether clients start new workload tasks.
    working: bool,
    workload_end: u64,
    final_start: Option<u64>,
    stopping: bool,
    digest: Md5,
    trace: Option<Vec<String>>,
    jobs: u64,
    requests_ok: u64,
    requests_failed: u64,
    violations: Vec<Violation>,
    /// The node outside the initial ring that joins (with the membership fault).
    joiner: Option<usize>,
}

impl World {
    /// A world for `seed`: nodes started, clients and faults scheduled.
    pub fn new(seed: u64, config: &SimConfig) -> World {
        let mut rng = SimRng::new(seed);
        let count = config.nodes.unwrap_or_else(|| 3 + rng.index(3)).max(1);
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                id: NodeId::new(format!("n{}", i + 1)),
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7400)),
                weight: 1,
                zone: None,
            })
            .collect();
        let addrs = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.addr, i))
            .collect();
        let mut nodes = Vec::new();
        for member in &members {
            // Rebuilt per node: the view is each node's own.
            let membership = Membership::new(1, PARTITIONS, members.clone())
                .map(MembershipView::new)
                .unwrap_or_else(|e| unreachable!("simulated members form a ring: {e}"));
            let capacity = StageId::ALL.map(|stage| queue_capacity(stage, &mut rng));
            let durability = (config.sync, config.durable_writes);
            nodes.push(SimNode::new(
                member.id.clone(),
                membership,
                capacity,
                durability,
            ));
        }
        // With the membership fault, one more node runs from the start outside the ring (its
        // config names the members as seeds) until an operator joins it.
        let joiner = config.faults.membership.then(|| {
            let membership = Membership::new(1, PARTITIONS, members.clone())
                .map(MembershipView::new)
                .unwrap_or_else(|e| unreachable!("simulated members form a ring: {e}"));
            let capacity = StageId::ALL.map(|stage| queue_capacity(stage, &mut rng));
            let id = NodeId::new(format!("n{}", count + 1));
            let durability = (config.sync, config.durable_writes);
            nodes.push(SimNode::new(id, membership, capacity, durability));
            count
        });
        let mut addrs: BTreeMap<SocketAddr, usize> = addrs;
        if let Some(joiner) = joiner {
            addrs.insert(joiner_addr(joiner), joiner);
        }
        let total = nodes.len();
        let skew_ms = (0..total).map(|_| rng.range(0, 50)).collect();
        let clients = (0..count.max(2))
            .map(|id| SimClient {
                client: Client::new(id, N as u8),
                link: None,
                decoder: FrameDecoder::new(4 << 20),
            })
            .collect();
        let mut world = World {
            seed,
            sched: Scheduler {
                time: 0,
                seq: 0,
                queue: BinaryHeap::new(),
                rng,
            },
            base: Instant::now(),
            nodes,
            skew_ms,
            addrs,
            net: Network::default(),
            clients,
            history: History::default(),
            faults: config.faults,
            acked_flushed: config.sync == SyncMode::Always
                || config.durable_writes.coordinator_flushes(),
            acked_flushed_twice: config.sync == SyncMode::Always
                || config.durable_writes.replicas_flush(),
            noisy: false,
            working: true,
            workload_end: config.workload_ms * 1000,
            final_start: None,
            stopping: false,
            digest: Md5::new(),
            trace: config.trace.then(Vec::new),
            jobs: 0,
            requests_ok: 0,
            requests_failed: 0,
            violations: Vec::new(),
            joiner,
        };
        world.boot();
        world
    }

    /// Starts every node and client, and schedules the faults and the phases.
    fn boot(&mut self) {
        for node in 0..self.nodes.len() {
            self.start_node(node);
        }
        for client in 0..self.clients.len() {
            let delay = self.sched.rng.range(0, 10_000);
            self.sched.after(delay, Job::ClientStart { client });
        }
        self.noisy =
            self.faults.drop || self.faults.duplicate || self.faults.reorder || self.faults.delay;
        self.plan_faults();
        self.sched.at(self.workload_end, Job::Heal);
        self.sched.at(self.workload_end + QUIET_US, Job::FinalReads);
        self.sched.after(WATCHDOG_US, Job::Watchdog);
    }

    fn now(&self, node: usize) -> Now {
        Now {
            instant: self.base + Duration::from_micros(self.sched.time),
            wall_ms: WALL_BASE_MS + self.sched.time / 1000 + self.skew_ms[node],
        }
    }

    fn record(&mut self, line: String) {
        self.digest.update(line.as_bytes());
        self.digest.update(b"\n");
        if let Some(trace) = &mut self.trace {
            trace.push(line);
        }
    }

    /// Runs the seed to its end and judges it.
    pub fn run(mut self) -> SimReport {
        while let Some(Reverse(next)) = self.sched.queue.pop() {
            self.sched.time = next.at;
            self.jobs += 1;
            if self.jobs > MAX_JOBS {
                self.violations.push(Violation {
                    checker: checker::FINAL_READ,
                    detail: format!("the run did not end within {MAX_JOBS} jobs"),
                });
                break;
            }
            self.job(next.job);
            if self.stopping {
                break;
            }
        }
        self.finish()
    }

    fn job(&mut self, job: Job) {
        match job {
            Job::Deliver {
                node,
                incarnation,
                event,
            } => self.deliver(node, incarnation, event),
            Job::Tick {
                node,
                incarnation,
                stage,
            } => self.tick(node, incarnation, stage),
            Job::Frame { link, to, frame } => self.frame(link, to, frame),
            Job::DialFailed {
                node,
                incarnation,
                conn,
            } => self.conn_closed(node, incarnation, conn),
            Job::Closed { link } => self.closed(link),
            Job::DrainStep {
                node,
                incarnation,
                since,
            } => self.drain_step(node, incarnation, since),
            Job::DrainEnd { node, incarnation } => {
                if self.current(node, incarnation) {
                    self.stop_cleanly(node);
                    self.nodes[node].backup = Some(self.nodes[node].engine.backup());
                }
            }
            Job::ClientStart { client } => self.client_start(client),
            Job::Fault(fault) => self.fault(fault),
            Job::Heal => self.heal(),
            Job::FinalReads => self.final_reads(),
            Job::Watchdog => self.watchdog(),
            Job::Stop => self.stopping = true,
        }
    }

    fn current(&self, node: usize, incarnation: u32) -> bool {
        let n = &self.nodes[node];
        n.incarnation == incarnation && n.machines.is_some()
    }

    /// Runs `work` on a node's machines with a post that schedules what they send, then
    /// carries out their socket commands.
    fn with_machines(
        &mut self,
        node: usize,
        work: impl FnOnce(&mut Machines, Now, &mut SimPost<'_>),
    ) {
        let now = self.now(node);
        let mut sockets = Vec::new();
        {
            let World { sched, nodes, .. } = self;
            let SimNode {
                machines,
                queued,
                last_at,
                capacity,
                incarnation,
                ..
            } = &mut nodes[node];
            let Some(machines) = machines.as_mut() else {
                return;
            };
            let incarnation = *incarnation;
            let mut schedule = |stage: StageId, event: Event| {
                let hop = if matches!(stage, StageId::Storage | StageId::BackgroundStorage) {
                    sched.rng.range(50, 400) // a write and its share of a group commit
                } else {
                    sched.rng.range(5, 50)
                };
                let slot = &mut last_at[stage as usize];
                let at = (sched.time + hop).max(*slot);
                *slot = at;
                sched.at(
                    at,
                    Job::Deliver {
                        node,
                        incarnation,
                        event,
                    },
                );
                at
            };
            let mut post = SimPost {
                schedule: &mut schedule,
                queued,
                capacity,
                sockets: &mut sockets,
            };
            work(machines, now, &mut post);
        }
        for command in sockets {
            self.socket(node, command);
        }
    }

    fn deliver(&mut self, node: usize, incarnation: u32, event: Event) {
        if !self.current(node, incarnation) {
            return;
        }
        let paused_until = self.nodes[node].paused_until;
        if paused_until > self.sched.time {
            return self.sched.at(
                paused_until,
                Job::Deliver {
                    node,
                    incarnation,
                    event,
                },
            );
        }
        let stage = event.stage();
        self.record(format!(
            "{:>10} n{} {:<10} {event}",
            self.sched.time,
            node + 1,
            stage.name()
        ));
        let queued = &mut self.nodes[node].queued[stage as usize];
        *queued = queued.saturating_sub(1);
        self.with_machines(node, |machines, now, post| {
            machines.handle(now, event, post)
        });
    }

    fn tick(&mut self, node: usize, incarnation: u32, stage: StageId) {
        if !self.current(node, incarnation) {
            return; // a restart schedules ticks of its own
        }
        let period = TICKS
            .iter()
            .find(|(s, _)| *s == stage)
            .map_or(100_000, |(_, p)| *p);
        let paused_until = self.nodes[node].paused_until;
        if paused_until <= self.sched.time {
            self.with_machines(node, |machines, now, post| machines.tick(now, stage, post));
        }
        let next = (self.sched.time + period).max(paused_until);
        self.sched.at(
            next,
            Job::Tick {
                node,
                incarnation,
                stage,
            },
        );
    }

    /// Starts a node's machines over its engine. A start can fail (its store's open flushes
    /// the journal, and the disk may be failing flushes): the error is returned and the node
    /// stays down.
    fn try_start_node(&mut self, node: usize) -> Result<(), String> {
        let wall_ms = self.now(node).wall_ms;
        self.nodes[node].start(self.base, wall_ms)?;
        let incarnation = self.nodes[node].incarnation;
        let (actor, origin) = match &self.nodes[node].store {
            Some(store) => (store.actor(), store.actor_origin()),
            None => unreachable!("a started node has its store"),
        };
        self.record(format!(
            "{:>10} n{} start #{incarnation} actor {actor} ({origin})",
            self.sched.time,
            node + 1
        ));
        for (stage, period) in TICKS {
            let first = self.sched.rng.range(0, period);
            self.sched.after(
                first,
                Job::Tick {
                    node,
                    incarnation,
                    stage,
                },
            );
        }
        Ok(())
    }

    /// Starts a node that must come up (at heal, when no fault is left): failing is a
    /// violation.
    fn start_node(&mut self, node: usize) {
        if let Err(error) = self.try_start_node(node) {
            self.violations.push(Violation {
                checker: checker::CONVERGENCE,
                detail: format!("n{} could not restart: {error}", node + 1),
            });
        }
    }
}

/// Where the joining node listens.
fn joiner_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7400))
}

/// Where a node that moved listens.
fn moved_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, index as u8 + 1], 7400))
}

/// A stage's queue bound in the simulator: small in some seeds, so full queues (and the
/// `Overloaded` answers they cause) happen. Never below `SMALLEST_QUEUE`: one request puts up
/// to N events on a queue at once, so a smaller bound would refuse every request of a kind.
fn queue_capacity(stage: StageId, rng: &mut SimRng) -> usize {
    if rng.percent(30) {
        rng.range(SMALLEST_QUEUE, 32) as usize
    } else {
        stage.row().queue_capacity
    }
}

mod clients;
mod network;
mod phases;
