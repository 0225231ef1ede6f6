//! A running node: the stages of the stage table, wired by their queues.
//!
//! ```text
//!                 ┌──────────────── replies (send) ─────────────────┐
//! socket → intake ─try_send→ parse ─try_send→ coordinate ─try_send→ storage (fjall) ─try_send→ commit
//!   ↑  ↑                      │                 │  ↑  ↑  ↑              │                      │
//!   │  │ peer answers (send)  └→ replicate ←────┘  │  │  └──── send ────┘  (fdatasync, then)  │
//!   │  └──────── frames to peers (send) ─┘  └─send─┘  └──────────────── send ─────────────────┘
//!   │                          coordinate ─try_send→ repair (background) ─try_send→ storage/replicate
//! ```
//! Background stages (repair, handoff, anti-entropy, transfer) run on a second pool of
//! lower-priority workers, and their storage requests go to storage's background lane
//! (`background_storage`, same store), which the intake's loop never runs.
//! Each stage is a machine (`shoal_stages::seda::Machine`) run by `Driven` on the stage's
//! workers (the intake's by the mio loop); its outbox is delivered through the `Router` of
//! every queue. Requests move forward with `try_send` (a full queue answers `Overloaded`);
//! answers move back with a blocking `send`. The blocking edges (storage, commit and replicate
//! to each stage that asks them, every stage to the intake, parse→replicate; the full list is
//! in ARCHITECTURE.md's invariants) form no cycle: the stages that ask reach replicate, storage
//! and commit only with `try_send` (storage's commit events too: it runs on the intake's loop),
//! and the intake never blocks on its own queue.

mod stages;

use crate::config::{Config, ConfigError, DEFAULT_SECRET};
use crate::controller::ControllerLoop;
use crate::metrics::{MetricsServer, NodeMetrics};
use crate::redis_door::{DoorSettings, RedisDoor};
use shoal_stages::event::{wall_clock_ms, AaeBoard, StageId, TransferBoard};
use shoal_stages::failure_detector::PeerBoard;
use shoal_stages::intake::{Intake, IntakeMachine, IntakeSettings, IntakeSocket, StatsSource};
use shoal_stages::membership::{Membership, MembershipView};
use shoal_stages::ring::RingError;
use shoal_stages::seda::{
    GateRegistry, NodeCounters, OperationLatencies, Router, StageHandle, StageReceiver, Wake,
    WorkerPool,
};
use shoal_stages::storage::cpu_priority::{lower_priority, threads_named, ENGINE_THREAD_NAME};
use shoal_stages::storage::{journal_files, StorageError, Store};
use shoal_stages::wire::{decode_membership, encode_membership, ContextSeal};
use shoal_stages::NodeId;
use slog::{crit, info, o, warn, Logger};
use stages::{add_pool_stages, queues};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many versions of one key a replica accepts from a peer, per allowed sibling: several
/// coordinators may each have added siblings up to the limit concurrently.
const REPLICA_VERSIONS_PER_SIBLING: usize = 4;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Another process holds the data directory's lock.
    #[error("data_dir {0} is in use by another process (is a node already running on it?)")]
    DataDirInUse(String),
    /// The ring could not be built from the members.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// The saved membership is unreadable or belongs to another layout.
    #[error("saved membership: {0}; move the data directory aside to start from the config")]
    Membership(String),
    /// A socket or thread could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        what: what.to_string(),
        source,
    }
}

/// A running node. Dropping it without [`Node::shutdown`] leaves its threads running.
pub struct Node {
    local_addr: SocketAddr,
    intake_stop: Arc<AtomicBool>,
    /// Set by [`Node::shutdown`]: the intake answers what clients are owed, then ends.
    intake_drain: Arc<AtomicBool>,
    /// Wakes the intake's loop (to see the drain flag at once).
    intake_waker: Option<Arc<dyn Wake>>,
    intake_thread: Option<JoinHandle<()>>,
    /// Set if the intake's thread panicked (see [`Node::failed`]).
    intake_failed: Arc<AtomicBool>,
    controller_stop: Arc<AtomicBool>,
    controller_thread: Option<JoinHandle<()>>,
    /// `/metrics`, when `[metrics] listen` is set.
    metrics: Option<MetricsServer>,
    /// The RESP2 door, when `[redis] listen` is set.
    redis: Option<RedisDoor>,
    /// Pool stages in shutdown order.
    stages: Vec<StageHandle>,
    /// The workers that serve them.
    pool: Option<WorkerPool>,
    /// The background stages' workers.
    background_pool: Option<WorkerPool>,
    logger: Logger,
}

/// What every stage of the node shares.
struct Shared {
    node: NodeId,
    /// Where the node listens (bound: the real port when the config said 0).
    listen: SocketAddr,
    membership: MembershipView,
    seal: ContextSeal,
    latencies: OperationLatencies,
    /// Hints handed off, repair writes, failed operations (for the metrics).
    counters: NodeCounters,
    store: Store,
    router: Router,
    /// Every background stage's rate gate.
    gates: GateRegistry,
    /// Anti-entropy's report, for `admin aae`.
    aae: AaeBoard,
    /// The peers the coordinator's failure detector holds down, for the metrics.
    peers: PeerBoard,
    /// The transfer stage's outgoing transfers, for `admin plan`, `admin ring` and the metrics.
    transfers: TransferBoard,
    logger: Logger,
}

impl Node {
    /// Opens storage, builds the membership, binds the socket and starts every stage.
    pub fn start(config: &Config, logger: &Logger) -> Result<Node, NodeError> {
        config.validate()?;
        let node = NodeId::new(config.node.id.clone());
        let logger = logger.new(o!("node" => node.to_string()));
        let creating = format!("creating data_dir {}", config.node.data_dir.display());
        std::fs::create_dir_all(&config.node.data_dir).map_err(io_error(&creating))?;
        // A node that cannot listen (the port taken, say) fails before its storage open
        // renews the instance file and names a new dot actor for nothing. Only a probe: the
        // socket that serves is bound after the open, since a listening socket accepts
        // connections nobody answers while fjall recovers its journal (peers would wait out
        // a timeout instead of being refused at once).
        let listening = format!("binding listen address {}", config.node.listen);
        if config.node.listen.port() != 0 {
            std::net::TcpListener::bind(config.node.listen).map_err(io_error(&listening))?;
        }
        // Only the engine threads this open starts are ours (other nodes may share the process).
        let engine_threads_before = match storage_nice_steps(config) {
            Some(_) => threads_named(ENGINE_THREAD_NAME).unwrap_or_default(),
            None => Vec::new(),
        };
        // The open replays the engine's journal: seconds for a large one, with nothing else
        // logged meanwhile (a trial's node sat silent 4 s after a clean stop of 99 MB). How
        // many files it found says why a start is slow (`engine.rs`, `JOURNAL_BYTES`).
        let opening = Instant::now();
        info!(logger, "opening storage (replaying its journal)"; "dir" => %config.node.data_dir.display(),
              "journal_files" => journal_files(&config.node.data_dir));
        let store = Store::open(
            &config.node.data_dir,
            &node,
            config.cluster.partitions,
            wall_clock_ms(),
        )
        .map_err(|error| match error {
            locked if locked.is_locked() => {
                NodeError::DataDirInUse(config.node.data_dir.display().to_string())
            }
            other => NodeError::Storage(other),
        })?
        .with_object_cache(config.storage.object_cache_mib << 20);
        // Whether this run's dots continue the last run's actor (storage/store/actor.rs): an
        // operator who restored a backup sees here that the node took a new one.
        info!(logger, "storage open";
              "actor" => %store.actor(), "actor_origin" => %store.actor_origin(),
              "took_ms" => opening.elapsed().as_millis());
        store.check_replicas(config.cluster.n)?;
        lower_storage_priority(config, &engine_threads_before, &logger);
        let socket = IntakeSocket::bind(config.node.listen).map_err(io_error(&listening))?;
        let local_addr = socket.local_addr();
        let initial = starting_membership(config, &store, local_addr, &logger)?;
        let membership = MembershipView::new(initial.clone());
        if config.cluster.secret == DEFAULT_SECRET {
            warn!(
                logger,
                "cluster.secret is the public default: anyone can forge contexts; set your own"
            );
        }
        for (stage, slots, workers) in config.slots_beyond_workers() {
            warn!(logger, "a stage has more slots than its pool has workers: at most the workers serve it at once";
                  "stage" => %stage, "threads" => slots, "pool_workers" => workers);
        }
        for stage in config.ignored_spin_keys() {
            warn!(logger, "stages.{stage}.spin_us is ignored: only the worker pool spins ([pool] spin_us)"; "stage" => %stage);
        }
        let mut pool = WorkerPool::new(config.pool_settings());
        let mut background = pool.beside(config.background_pool_settings());
        let (router, receivers, intake_rx) = queues(config, &socket, &pool, &background);
        let node_id = node.clone();
        let shared = Shared {
            node,
            listen: local_addr,
            membership,
            seal: ContextSeal::new(config.cluster.secret.as_bytes())
                .bound_to_keys(config.cluster.key_bound_contexts),
            latencies: OperationLatencies::default(),
            counters: NodeCounters::default(),
            store,
            router,
            gates: GateRegistry::new(|stage| config.stage_rate(stage), Instant::now()),
            aae: AaeBoard::new(node_id.clone(), config.anti_entropy.enabled),
            peers: PeerBoard::default(),
            transfers: TransferBoard::default(),
            logger: logger.clone(),
        };
        let stages = add_pool_stages(
            config,
            &shared,
            (&mut pool, &mut background),
            receivers,
            initial,
        );
        let mut node = Node {
            local_addr,
            intake_stop: Arc::new(AtomicBool::new(false)),
            intake_drain: Arc::new(AtomicBool::new(false)),
            intake_waker: None,
            intake_thread: None,
            intake_failed: Arc::new(AtomicBool::new(false)),
            controller_stop: Arc::new(AtomicBool::new(false)),
            controller_thread: None,
            metrics: None,
            redis: None,
            stages,
            pool: None,
            background_pool: None,
            logger,
        };
        // From here on threads run: a part that fails to start (an address taken, a thread
        // refused) stops every part started before it, so a process that embeds nodes is not
        // left with a half-started node's workers.
        match node.start_threads(config, &shared, (pool, background), (socket, intake_rx)) {
            Ok(()) => Ok(node),
            Err(e) => {
                node.shutdown();
                Err(e)
            }
        }
    }

    /// Starts the workers, intake, the metrics and Redis doors and the resource controller,
    /// keeping each in `self` as it starts, so that [`Node::shutdown`] stops those that did.
    fn start_threads(
        &mut self,
        config: &Config,
        shared: &Shared,
        (mut pool, mut background): (WorkerPool, WorkerPool),
        (socket, intake_rx): (
            IntakeSocket,
            StageReceiver<shoal_stages::event::IntakeEvent>,
        ),
    ) -> Result<(), NodeError> {
        let logger = self.logger.clone();
        let domain: Vec<&'static str> = config.intake_runs().iter().map(|s| s.name()).collect();
        let domain = (!domain.is_empty()).then(|| pool.domain(&domain));
        // A pool's start is all or nothing (the workers it started stop if one cannot).
        let started = pool.start();
        self.pool = Some(pool);
        started.map_err(io_error("starting the worker pool"))?;
        let started = background.start();
        let nice_failures = background.nice_failures();
        self.background_pool = Some(background);
        started.map_err(io_error("starting the background workers"))?;
        let steps = config.background_pool_settings().nice_steps;
        if steps > 0 {
            match nice_failures {
                0 => info!(logger, "background workers run at a lower CPU priority"; "by" => steps),
                failed => {
                    warn!(logger, "background workers could not lower their CPU priority"; "failed" => failed, "by" => steps)
                }
            }
        }
        let machine = IntakeMachine::new(
            IntakeSettings {
                max_frame_bytes: config.limits.max_frame_bytes,
                max_connections: config.limits.max_connections,
                max_write_buffer_bytes: config.limits.max_write_buffer_bytes,
                max_peer_frame_bytes: config.limits.max_peer_frame_bytes(),
                frame_timeout: Duration::from_millis(config.limits.frame_timeout_ms),
                client_token: config.security.client_token.clone(),
                replicas: config.cluster.n,
            },
            shared.membership.clone(),
            shared.node.clone(),
            shared.seal.clone(),
            random_seed(),
            logger.new(o!("stage" => StageId::Intake.name())),
        );
        let stats = StatsSource {
            node: shared.node.clone(),
            router: shared.router.clone(),
            latencies: shared.latencies.clone(),
            counters: shared.counters.clone(),
            connections: machine.connection_board(),
            intake_failed: Arc::clone(&self.intake_failed),
            gates: shared.gates.clone(),
            aae: shared.aae.clone(),
            storage_failure: {
                let store = shared.store.clone();
                Arc::new(move || store.failure())
            },
        };
        if let Some(listen) = config.metrics.listen {
            self.metrics = Some(
                MetricsServer::start(
                    listen,
                    NodeMetrics {
                        source: stats.clone(),
                        store: shared.store.clone(),
                        membership: shared.membership.clone(),
                        replicas: config.cluster.n,
                        peers: shared.peers.clone(),
                        transfers: shared.transfers.clone(),
                    },
                    config.security.client_token.clone(),
                    logger.new(o!("stage" => "metrics")),
                )
                .map_err(io_error(&format!("binding the metrics address {listen}")))?,
            );
        }
        self.intake_waker = Some(socket.waker());
        let intake = Intake::new(
            socket,
            machine,
            intake_rx,
            stats,
            Arc::clone(&self.intake_stop),
            logger.new(o!("stage" => StageId::Intake.name())),
            domain,
        )
        .with_reply_writer(config.reply_writer_from())
        .map_err(io_error("starting the reply writer"))?
        .with_drain(
            Arc::clone(&self.intake_drain),
            Duration::from_millis(config.node.drain_timeout_ms),
        );
        self.intake_thread = Some(
            std::thread::Builder::new()
                .name(format!("{}-0", StageId::Intake.name()))
                .spawn({
                    let failed = Arc::clone(&self.intake_failed);
                    let logger = logger.clone();
                    move || {
                        // A panic here leaves a process that answers nobody: say so, and let
                        // the node's owner (`shoal node`) stop it rather than linger alive.
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            intake.run()
                        }));
                        if ran.is_err() {
                            failed.store(true, Ordering::Release);
                            crit!(logger, "the intake thread panicked: the node reads and answers no connection, and stops");
                        }
                    }
                })
                .map_err(io_error("starting intake"))?,
        );
        if let Some(listen) = config.redis.listen {
            self.redis = Some(
                RedisDoor::start(
                    listen,
                    DoorSettings {
                        node: self.local_addr,
                        max_connections: config.redis.max_connections,
                        token: config.security.client_token.clone(),
                        frame_timeout: Duration::from_millis(config.limits.frame_timeout_ms),
                        max_value_bytes: config.limits.max_value_bytes,
                        max_key_bytes: config.limits.max_key_bytes,
                    },
                    logger.new(o!("stage" => "redis")),
                )
                .map_err(io_error(&format!("binding the redis address {listen}")))?,
            );
        }
        self.controller_thread = Some(
            ControllerLoop::new(
                config,
                shared.gates.clone(),
                shared.latencies.clone(),
                shared.router.clone(),
                Arc::clone(&self.controller_stop),
            )
            .spawn()
            .map_err(io_error("starting the resource controller"))?,
        );
        let current = shared.membership.current();
        info!(logger, "node started"; "addr" => %self.local_addr, "sync" => %config.storage.sync,
              "partitions" => current.ring().partition_count(), "members" => current.members().count(),
              "n" => config.cluster.n,
              "metrics" => self.metrics.as_ref().map_or("off".to_string(), |m| m.addr().to_string()),
              "redis" => self.redis.as_ref().map_or("off".to_string(), |r| r.addr().to_string()));
        Ok(())
    }

    /// Whether the intake's thread panicked: the node reads and answers no connection, so its
    /// owner should stop it (`shoal node` does, and exits with an error, for a supervisor to
    /// restart it; acknowledged writes are in the journal, as after a kill -9).
    pub fn failed(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.intake_failed)
    }

    /// A flag that, once set, ends a clean stop's drain at once (a second SIGINT or SIGTERM):
    /// requests still owed are cut off, the peers are not told.
    pub fn stop_at_once(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.intake_stop)
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// Where the Redis door listens, if it does.
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.redis.as_ref().map(RedisDoor::addr)
    }

    /// Stops cleanly: first the intake answers every client request it already took and
    /// refuses new ones `ShuttingDown` (for up to `[node] drain_timeout_ms`), then closes the
    /// client connections; then the stages stop in stage-table order (intake, parse,
    /// coordinate, replicate, repair, handoff, anti-entropy, transfer, gossip, background
    /// storage, storage, commit), each after its queue drained; the commit stage flushes the
    /// journal last. First of all the metrics endpoint closes and the Redis door stops
    /// accepting (its open connections are the intake's clients: they drain with the rest).
    ///
    /// Each step's time is logged (`took_ms`): a stop that takes seconds says where they went.
    pub fn shutdown(mut self) {
        let began = Instant::now();
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        if let Some(redis) = self.redis.as_mut() {
            redis.stop_accepting();
        }
        self.controller_stop.store(true, Ordering::Release);
        if let Some(thread) = self.controller_thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        // The intake's loop ends by itself once its drain is over (`Intake::with_drain`).
        self.intake_drain.store(true, Ordering::Release);
        if let Some(waker) = &self.intake_waker {
            waker.wake();
        }
        if let Some(thread) = self.intake_thread.take() {
            let _ = thread.join();
        }
        if let Some(redis) = self.redis.take() {
            redis.stop();
        }
        // The commit stage stops last. Its time is the final journal flush's, the clean
        // close's (both wait for fjall's journal lock, which a memtable flush in progress
        // holds) and fjall's close: its machine is the last holder of the store (once every
        // other stage stopped), and dropping it waits for fjall's flush and compaction workers.
        for stage in self.stages.drain(..) {
            let name = stage.name();
            let started = Instant::now();
            stage.stop_and_join();
            info!(self.logger, "stage stopped"; "stage" => name,
                  "took_ms" => started.elapsed().as_millis() as u64);
        }
        if let Some(pool) = self.pool.take() {
            pool.stop_and_join();
        }
        if let Some(pool) = self.background_pool.take() {
            pool.stop_and_join();
        }
        info!(self.logger, "node stopped"; "took_ms" => began.elapsed().as_millis() as u64);
    }
}

/// The membership a node starts with: the one it saved (the cluster may have changed since
/// the config was written; the config's members are then only seeds), else the config's,
/// saved at once. Why at once: a founder that never saw a change used to deal its ring from
/// the config at every start, so a restart with a member left out of the list dealt another
/// ring, which gossip then spread, and the left-out member dropped its data on every node (a
/// trial's). Members change only through `admin join`, `leave` and `remove`, addresses through
/// `admin move`.
fn starting_membership(
    config: &Config,
    store: &Store,
    local_addr: SocketAddr,
    logger: &Logger,
) -> Result<Membership, NodeError> {
    let from_config = config.membership(local_addr)?;
    let Some(bytes) = store.load_membership()? else {
        if !config.node.await_join {
            let bytes = encode_membership(&from_config)
                .map_err(|e| NodeError::Membership(e.to_string()))?;
            store.save_membership(&bytes)?;
        }
        return Ok(from_config);
    };
    let saved = decode_membership(&bytes).map_err(|e| NodeError::Membership(e.to_string()))?;
    saved
        .check(config.cluster.partitions)
        .map_err(|e| NodeError::Membership(e.to_string()))?;
    info!(logger, "membership loaded"; "version" => saved.version,
          "members" => saved.members().count());
    // Ids and addresses: a member's address, like its weight, is the saved one from the first
    // start on (a node that moved keeps its id: `admin move`). An address a move wrote is not
    // the config's to match: its list is stale as it should be.
    let entries = |m: &Membership, moved_as_ids: bool| -> std::collections::BTreeSet<String> {
        m.members()
            .map(|member| {
                if moved_as_ids && saved.address_rewritten(&member.id) {
                    member.id.to_string()
                } else {
                    format!("{}@{}", member.id, member.addr)
                }
            })
            .collect()
    };
    let differ = entries(&from_config, true) != entries(&saved, true);
    if !config.node.await_join && differ {
        let names = |m: &Membership| {
            let set = entries(m, false);
            set.into_iter().collect::<Vec<_>>().join(",")
        };
        let (config_list, saved_list) = (names(&from_config), names(&saved));
        let what = "the config's [[cluster.members]] differ from the membership this node saved: the saved one stands (the config's list only seeds gossip); members change with `shoal admin join`, `leave` and `remove`, addresses with `admin move`";
        // After a join or leave every config's list is stale, and that is as it should be;
        // before one, a differing list is an edit its author expected to take effect.
        if saved.genesis(&NodeId::new(config.node.id.clone())) == 0 {
            info!(logger, "{}", what; "config" => config_list, "saved" => saved_list);
        } else {
            warn!(logger, "{}", what; "config" => config_list, "saved" => saved_list);
        }
    }
    Ok(saved)
}

/// Steps of nice the storage engine's threads go below the node's: with the controller on
/// and `controller.storage_nice` above 0.
fn storage_nice_steps(config: &Config) -> Option<i32> {
    let steps = config.controller.storage_nice;
    (config.controller.enabled && steps > 0).then_some(steps)
}

/// Lowers the CPU priority of the threads the storage engine just started (the ones not in
/// `before`) by [`storage_nice_steps`], so the flushes and compactions that delivered
/// background writes cause give way to the foreground's threads. Every thread is tried; a
/// failure costs only that protection: it is logged, not fatal.
fn lower_storage_priority(config: &Config, before: &[u32], logger: &Logger) {
    let Some(steps) = storage_nice_steps(config) else {
        return;
    };
    let threads = match threads_named(ENGINE_THREAD_NAME) {
        Ok(threads) => threads,
        Err(e) => {
            warn!(logger, "could not list the storage engine's threads"; "error" => %e);
            return;
        }
    };
    let (mut lowered, mut failed) = (0, 0);
    for tid in threads.into_iter().filter(|tid| !before.contains(tid)) {
        match lower_priority(tid, steps) {
            Ok(()) => lowered += 1,
            Err(e) => {
                failed += 1;
                warn!(logger, "could not lower a storage engine thread's CPU priority"; "thread" => tid, "error" => %e);
            }
        }
    }
    info!(logger, "storage engine threads run at a lower CPU priority"; "lowered" => lowered, "failed" => failed, "by" => steps);
}

/// A seed for the intake's handshake nonces: 16 bytes from the kernel's random source, or, if
/// it cannot be read, two hashes of the clock and the process id under the standard library's
/// randomly keyed hashers (still different for every process).
fn random_seed() -> [u8; 16] {
    use std::io::Read;
    let mut seed = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for half in seed.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.write_u128(clock);
            half.copy_from_slice(&hasher.finish().to_be_bytes());
        }
    }
    seed
}
