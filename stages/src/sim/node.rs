//! One simulated node: the same stage machines the product runs, over a memory engine that
//! survives its crashes, with the stage queues modelled as counters (a full foreground queue
//! refuses a request exactly as the product's does).

use crate::anti_entropy::{AntiEntropyMachine, AntiEntropySettings};
use crate::coordinate::{Coordinator, CoordinatorSettings};
use crate::durability::Durability;
use crate::event::{
    AaeBoard, Event, Now, Operation, Refusal, SocketCommand, StageId, TransferBoard,
};
use crate::gossip::{GossipMachine, GossipSettings};
use crate::handoff::HandoffMachine;
use crate::intake::{IntakeMachine, IntakeSettings};
use crate::membership::MembershipView;
use crate::parse::{ParseMachine, ParseSettings};
use crate::repair::RepairMachine;
use crate::replicate::ReplicateMachine;
use crate::seda::{deliver, Gate, Machine, Outbox, Post};
use crate::storage::{
    CommitMachine, MemoryBackup, MemoryEngine, StorageMachine, StorageSettings, Store, SyncMode,
    VersionLimits,
};
use crate::transfer::{TransferMachine, TransferSettings};
use crate::wire::ContextSeal;
use crate::NodeId;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster secret of every simulated node.
pub const SECRET: &[u8] = b"simulated-cluster-secret-0123456789";
/// Replicas per key, and the default quorums.
pub const N: usize = 3;
const R: usize = 2;
/// The default write quorum (the replication checker counts copies against it).
pub const W: usize = 2;
/// Timeouts shorter than the product's defaults, so that a few simulated seconds see many
/// deadlines, reroutes and probes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const REPLICA_TIMEOUT: Duration = Duration::from_millis(300);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const MAX_SIBLINGS: usize = 32;
/// The largest frame between simulated nodes and the largest reply (half their write buffer,
/// as `LimitsSection::max_peer_frame_bytes` makes it for a real node).
const SIM_PEER_FRAME_BYTES: usize = 8 << 20;
/// Hints delivered, and hints taken in, per second by each node (its handoff gate).
const HANDOFF_RATE_PER_SEC: u64 = 1000;
/// Repair writes sent per second by each node (its repair gate).
const REPAIR_RATE_PER_SEC: u64 = 1000;
/// Anti-entropy keys per second by each node (its gate).
const ANTI_ENTROPY_RATE_PER_SEC: u64 = 5000;
/// Objects streamed or dropped per second by each node's transfer stage (its gate).
const TRANSFER_RATE_PER_SEC: u64 = 5000;
/// Stages of a node.
pub const STAGES: usize = StageId::ALL.len();

/// How often each ticking stage is ticked, in simulated µs (the stages whose `on_tick` does
/// work; the others' ticks are no-ops under `sync = "always"`).
pub const TICKS: [(StageId, u64); 8] = [
    (StageId::Intake, 100_000),
    (StageId::Coordinate, 10_000),
    (StageId::Replicate, 100_000),
    (StageId::Repair, 100_000),
    (StageId::Handoff, 200_000),
    (StageId::AntiEntropy, 100_000),
    (StageId::Transfer, 100_000),
    (StageId::Gossip, 100_000),
];

/// The machines of a running node.
pub struct Machines {
    pub intake: IntakeMachine,
    parse: ParseMachine,
    coordinate: Coordinator,
    replicate: ReplicateMachine,
    repair: RepairMachine,
    handoff: HandoffMachine,
    anti_entropy: AntiEntropyMachine,
    transfer: TransferMachine,
    gossip: GossipMachine,
    /// Storage's background lane: its own machine over the same store, as on a real node.
    background_storage: StorageMachine,
    storage: StorageMachine,
    commit: CommitMachine,
}

/// One node of the simulated cluster.
pub struct SimNode {
    pub id: NodeId,
    pub membership: MembershipView,
    pub engine: Arc<MemoryEngine>,
    /// Grows at every restart; events of an earlier incarnation are dropped.
    pub incarnation: u32,
    /// `None` while crashed.
    pub machines: Option<Machines>,
    /// The node's store, for the final checks.
    pub store: Option<Store>,
    /// Simulated µs until which the node processes nothing (0: running).
    pub paused_until: u64,
    /// Events scheduled for each stage and not yet delivered (the queue's depth).
    pub queued: [usize; STAGES],
    /// When each stage's last scheduled event is delivered (queues are FIFO).
    pub last_at: [u64; STAGES],
    /// Each stage's queue bound.
    pub capacity: [usize; STAGES],
    /// The node's `sync` and the cluster's `durable_writes`.
    pub durability: (SyncMode, Durability),
    /// The copy of its data an operator took (the restore fault), to restore it from later.
    pub backup: Option<MemoryBackup>,
}

impl SimNode {
    /// A node that has never run.
    pub fn new(
        id: NodeId,
        membership: MembershipView,
        capacity: [usize; STAGES],
        durability: (SyncMode, Durability),
    ) -> SimNode {
        SimNode {
            durability,
            id,
            membership,
            engine: MemoryEngine::new(),
            incarnation: 0,
            machines: None,
            store: None,
            paused_until: 0,
            queued: [0; STAGES],
            last_at: [0; STAGES],
            capacity,
            backup: None,
        }
    }

    /// Starts (or restarts, after a crash) the node's machines on its engine.
    pub fn start(&mut self, base: Instant, wall_ms: u64) -> Result<(), String> {
        let partitions = self.membership.current().ring().partition_count();
        // A new process: a failed flush's refusal was the old one's (fjall's engine is
        // opened anew).
        self.engine.restart();
        // At the node's simulated wall clock, as a real node opens its store: every start
        // raises the floor of its dots' counters, so a power loss that took writes it had
        // replicated never lets it make one of their dots again.
        let store = Store::with_engine(self.engine.clone(), &self.id, partitions, wall_ms)
            .map_err(|e| e.to_string())?;
        // As a real node does: start from the membership it saved, if it saved one (a
        // change merged but not yet flushed when it crashed comes back by gossip).
        if let Some(bytes) = store.load_membership().map_err(|e| e.to_string())? {
            let saved = crate::wire::decode_membership(&bytes).map_err(|e| e.to_string())?;
            self.membership.set(saved);
        }
        let seal = ContextSeal::new(SECRET);
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let coordinator = CoordinatorSettings {
            node: self.id.clone(),
            n: N,
            r: R,
            w: W,
            request_timeout: REQUEST_TIMEOUT,
            seal: seal.clone(),
            probe_interval: PROBE_INTERVAL,
            replica_timeout: REPLICA_TIMEOUT,
            durable_writes: self.durability.1,
        };
        let parse = ParseSettings {
            max_key_bytes: 1024,
            max_value_bytes: 64 * 1024,
            seal: seal.clone(),
            max_replica_versions: MAX_SIBLINGS * 4,
            replicas: N,
            request_timeout: REQUEST_TIMEOUT,
        };
        let intake = IntakeSettings {
            max_frame_bytes: 4 << 20,
            max_connections: 1024,
            max_write_buffer_bytes: 16 << 20,
            max_peer_frame_bytes: SIM_PEER_FRAME_BYTES,
            frame_timeout: Duration::from_secs(30),
            client_token: None,
            replicas: N,
        };
        let storage = StorageSettings {
            node: self.id.clone(),
            sync: self.durability.0,
            limits: VersionLimits {
                max_clock_entries: 10,
                max_siblings: MAX_SIBLINGS,
                max_frame_bytes: intake.max_frame_bytes,
            },
            ownership: Some((self.membership.clone(), N)),
        };
        let view = self.membership.clone();
        let board = TransferBoard::default();
        self.machines = Some(Machines {
            intake: IntakeMachine::new(
                intake,
                view.clone(),
                self.id.clone(),
                seal,
                nonce_seed(&self.id, self.incarnation),
                logger.clone(),
            ),
            parse: ParseMachine::new(parse, view.clone()),
            coordinate: Coordinator::new(coordinator, view),
            replicate: ReplicateMachine::new(SIM_PEER_FRAME_BYTES),
            repair: RepairMachine::new(self.id.clone(), Gate::new(Some(REPAIR_RATE_PER_SEC), base)),
            handoff: HandoffMachine::new(
                Gate::new(Some(HANDOFF_RATE_PER_SEC), base),
                logger.clone(),
            )
            .retargeting(self.membership.clone(), self.id.clone(), N),
            anti_entropy: AntiEntropyMachine::new(
                AntiEntropySettings {
                    node: self.id.clone(),
                    n: N,
                    enabled: true,
                    // Short, so a simulated run of a few seconds sees many exchanges.
                    exchange_interval: Duration::from_millis(1000),
                    rebuild_interval: Duration::from_secs(10),
                    confirm_delay: Duration::from_millis(200),
                    max_keys_per_exchange: 256,
                    // Longer than any run: the simulator checks convergence, not purges.
                    tombstone_grace: Duration::from_secs(3600),
                },
                self.membership.clone(),
                Gate::new(Some(ANTI_ENTROPY_RATE_PER_SEC), base),
                AaeBoard::new(self.id.clone(), true),
                logger.clone(),
            ),
            transfer: TransferMachine::new(
                TransferSettings {
                    node: self.id.clone(),
                    n: N,
                    batch_keys: 64,
                    batch_bytes: 64 * 1024,
                    settle: Duration::from_millis(1500),
                    cleanup_delay: Duration::from_secs(3),
                    ack_timeout: Duration::from_secs(1),
                },
                self.membership.clone(),
                Gate::new(Some(TRANSFER_RATE_PER_SEC), base),
                board.clone(),
                base,
                logger.clone(),
            ),
            gossip: GossipMachine::new(
                GossipSettings {
                    node: self.id.clone(),
                    n: N,
                    partitions,
                    interval: Duration::from_millis(1000),
                    seeds: self
                        .membership
                        .current()
                        .members()
                        .map(|m| m.id.clone())
                        .collect(),
                    listen: None,
                },
                // The view outlives a crash: it stands for the membership the node saved.
                (*self.membership.current()).clone(),
                self.membership.clone(),
                board,
                base,
                logger.clone(),
            ),
            // Worker 1: only the foreground lane's first worker flushes periodically.
            background_storage: StorageMachine::new(
                1,
                store.clone(),
                storage.clone(),
                logger.clone(),
            ),
            storage: StorageMachine::new(0, store.clone(), storage, logger.clone()),
            commit: CommitMachine::new(store.clone(), logger),
        });
        self.store = Some(store);
        self.incarnation += 1;
        self.queued = [0; STAGES];
        self.paused_until = 0;
        Ok(())
    }

    /// A crash: the machines are gone, and with them the writes their process had not yet
    /// written out; with `power` (the machine's power, not only the process) the engine also
    /// loses what was not flushed. After a process crash alone, a later power loss still
    /// takes what was never flushed.
    pub fn crash(&mut self, power: bool) {
        self.machines = None;
        self.store = None;
        self.engine.lose_process();
        if power {
            self.engine.lose_power();
        }
        self.queued = [0; STAGES];
        self.paused_until = 0;
    }

    /// An operator's stop (SIGTERM), once the world ran its drain (`World::drain_step`): as
    /// on a real node, the commit stage stops last, with the final flush and the mark of a
    /// clean close, so the next start keeps the node's dot actor. What was still on its way
    /// between the stages (peers' replica traffic; the clients' requests were answered, or the
    /// drain timed out) is dropped unanswered. A node already down stays so.
    pub fn stop_cleanly(&mut self) {
        let Some(mut machines) = self.machines.take() else {
            return;
        };
        machines.commit.on_stop(&mut Outbox::new());
        self.crash(false);
    }
}

/// Where a node's machines put their outbox in the simulator: events are scheduled for the
/// node's own stages (after a hop), refused when a stage's modelled queue is full; socket
/// commands are collected for the network.
pub struct SimPost<'a> {
    /// Schedules an event for a stage of this node at a simulated time.
    pub schedule: &'a mut dyn FnMut(StageId, Event) -> u64,
    pub queued: &'a mut [usize; STAGES],
    pub capacity: &'a [usize; STAGES],
    pub sockets: &'a mut Vec<SocketCommand>,
}

fn index(stage: StageId) -> usize {
    stage as usize
}

impl Post for SimPost<'_> {
    fn try_send(&mut self, event: Event) -> Result<(), (Refusal, Event)> {
        let stage = index(event.stage());
        if self.queued[stage] >= self.capacity[stage] {
            return Err((Refusal::Full, event));
        }
        self.send(event);
        Ok(())
    }

    fn send(&mut self, event: Event) {
        self.queued[index(event.stage())] += 1;
        (self.schedule)(event.stage(), event);
    }

    fn latency(&mut self, _operation: Operation, _latency: Duration) {}

    fn count(&mut self, _count: crate::seda::Count) {}

    fn socket(&mut self, command: SocketCommand) {
        self.sockets.push(command);
    }
}

fn run<M: Machine>(machine: &mut M, now: Now, input: Option<M::Input>, post: &mut SimPost<'_>) {
    let mut outbox = Outbox::new();
    match input {
        Some(event) => {
            machine.on_event(now, event, &mut outbox);
        }
        None => machine.on_tick(now, &mut outbox),
    }
    deliver(machine, now, &mut outbox, post);
}

impl Machines {
    /// Hands `event` to its stage's machine and delivers what it produced.
    pub fn handle(&mut self, now: Now, event: Event, post: &mut SimPost<'_>) {
        match event {
            Event::Intake(e) => run(&mut self.intake, now, Some(e), post),
            Event::Parse(e) => run(&mut self.parse, now, Some(e), post),
            Event::Coordinate(e) => run(&mut self.coordinate, now, Some(e), post),
            Event::Replicate(e) => run(&mut self.replicate, now, Some(e), post),
            Event::Repair(e) => run(&mut self.repair, now, Some(e), post),
            Event::Handoff(e) => run(&mut self.handoff, now, Some(e), post),
            Event::AntiEntropy(e) => run(&mut self.anti_entropy, now, Some(e), post),
            Event::Transfer(e) => run(&mut self.transfer, now, Some(e), post),
            Event::Gossip(e) => run(&mut self.gossip, now, Some(e), post),
            Event::Storage(e) if e.reply_to.background() => {
                run(&mut self.background_storage, now, Some(e), post)
            }
            Event::Storage(e) => run(&mut self.storage, now, Some(e), post),
            Event::Commit(e) => run(&mut self.commit, now, Some(e), post),
        }
    }

    /// Ticks one stage's machine.
    pub fn tick(&mut self, now: Now, stage: StageId, post: &mut SimPost<'_>) {
        match stage {
            StageId::Intake => run(&mut self.intake, now, None, post),
            StageId::Parse => run(&mut self.parse, now, None, post),
            StageId::Coordinate => run(&mut self.coordinate, now, None, post),
            StageId::Replicate => run(&mut self.replicate, now, None, post),
            StageId::Repair => run(&mut self.repair, now, None, post),
            StageId::Handoff => run(&mut self.handoff, now, None, post),
            StageId::AntiEntropy => run(&mut self.anti_entropy, now, None, post),
            StageId::Transfer => run(&mut self.transfer, now, None, post),
            StageId::Gossip => run(&mut self.gossip, now, None, post),
            StageId::BackgroundStorage => run(&mut self.background_storage, now, None, post),
            StageId::Storage => run(&mut self.storage, now, None, post),
            StageId::Commit => run(&mut self.commit, now, None, post),
        }
    }

    /// Bytes arrived on one of the intake's connections.
    pub fn received(
        &mut self,
        now: Now,
        conn: crate::event::ConnId,
        bytes: &[u8],
        post: &mut SimPost<'_>,
    ) {
        let mut outbox = Outbox::new();
        self.intake.on_received(now, conn, bytes, &mut outbox);
        deliver(&mut self.intake, now, &mut outbox, post);
    }

    /// A clean stop's drain, one step (`IntakeMachine::begin_drain`, `drain_step`); its last
    /// once no client connection is left or `timed_out`: the peers are told and their
    /// connections closed. Whether that was the last.
    pub fn drain(&mut self, now: Now, timed_out: bool, post: &mut SimPost<'_>) -> bool {
        let mut outbox = Outbox::new();
        self.intake.begin_drain();
        let last = self.intake.drain_step(&mut outbox) || timed_out;
        if last {
            self.intake.announce_stop(&mut outbox);
        }
        deliver(&mut self.intake, now, &mut outbox, post);
        last
    }

    /// One of the intake's connections closed.
    pub fn closed(&mut self, now: Now, conn: crate::event::ConnId, post: &mut SimPost<'_>) {
        let mut outbox = Outbox::new();
        self.intake.on_closed(now, conn, &mut outbox);
        deliver(&mut self.intake, now, &mut outbox, post);
    }
}

/// A simulated node's handshake nonce seed: different for every node and every restart (as a
/// real process's random seed is), and the same in every replay of a run.
fn nonce_seed(node: &NodeId, incarnation: u32) -> [u8; crate::wire::NONCE_BYTES] {
    use md5::{Digest, Md5};
    Md5::new()
        .chain_update(node.as_str().as_bytes())
        .chain_update(incarnation.to_be_bytes())
        .finalize()
        .into()
}
