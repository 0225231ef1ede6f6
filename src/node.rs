//! A running node: the stages of the stage table, wired by their queues.
//!
//! ```text
//!                 ┌──────────────── replies (send) ─────────────────┐
//! socket → intake ─try_send→ parse ─try_send→ coordinate ─try_send→ storage (fjall)
//!   ↑  ↑                      │                 │  ↑  ↑                 │
//!   │  │ peer answers (send)  └→ replicate ←────┘  │  └──── send ───────┘
//!   │  └──────── frames to peers (send) ─┘  └─send─┘
//!   │                          coordinate ─try_send→ repair (background) ─try_send→ storage/replicate
//! ```
//! Requests move forward with `try_send` (a full queue answers `Overloaded`); replies move back
//! with a blocking `send`. The blocking edges (storage→coordinate, coordinate→intake,
//! parse→intake, parse→replicate, replicate→intake, replicate→coordinate, replicate→handoff)
//! form no cycle: coordinate, repair and handoff reach replicate only with `try_send`, and the
//! intake never blocks.

use crate::config::{Config, ConfigError, DEFAULT_SECRET};
use shoal_stages::coordinate::{
    CoordinateEvent, CoordinateStage, Coordinator, CoordinatorSettings, OperationLatencies,
    PeerBoard,
};
use shoal_stages::handoff::{HandoffEvent, HandoffStage};
use shoal_stages::intake::{
    Intake, IntakeEvent, IntakeRoutes, IntakeSettings, IntakeSocket, StageProbe, StatsSource,
};
use shoal_stages::membership::MembershipView;
use shoal_stages::parse::{MembersSource, ParseEvent, ParseSettings, ParseStage};
use shoal_stages::repair::{RepairStage, RepairStageEvent};
use shoal_stages::replicate::{ReplicateEvent, ReplicateStage};
use shoal_stages::ring::RingError;
use shoal_stages::seda::{
    spawn_stage, stage_queue, RateGate, StageHandle, StageReceiver, StageSender,
};
use shoal_stages::storage::{
    StorageError, StorageEvent, StorageSettings, StorageStage, Store, VersionLimits,
};
use shoal_stages::wire::ContextSeal;
use shoal_stages::NodeId;
use slog::{info, o, warn, Logger};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The ring could not be built from the members.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
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
    intake_thread: Option<JoinHandle<()>>,
    /// Pool stages in shutdown order.
    stages: Vec<StageHandle>,
    logger: Logger,
}

/// The sending ends of every queue: what stages hold to talk to each other.
#[derive(Clone)]
struct Queues {
    intake: StageSender<IntakeEvent>,
    parse: StageSender<ParseEvent>,
    coordinate: StageSender<CoordinateEvent>,
    replicate: StageSender<ReplicateEvent>,
    repair: StageSender<RepairStageEvent>,
    handoff: StageSender<HandoffEvent>,
    storage: StageSender<StorageEvent>,
}

/// The receiving ends, each handed to its stage's workers.
struct Receivers {
    intake: StageReceiver<IntakeEvent>,
    parse: StageReceiver<ParseEvent>,
    coordinate: StageReceiver<CoordinateEvent>,
    replicate: StageReceiver<ReplicateEvent>,
    repair: StageReceiver<RepairStageEvent>,
    handoff: StageReceiver<HandoffEvent>,
    storage: StageReceiver<StorageEvent>,
}

/// What every stage of the node shares.
struct Shared {
    node: NodeId,
    membership: MembershipView,
    seal: ContextSeal,
    latencies: OperationLatencies,
    board: PeerBoard,
    store: Store,
    logger: Logger,
}

impl Node {
    /// Opens storage, builds the membership, binds the socket and starts every stage.
    pub fn start(config: &Config, logger: &Logger) -> Result<Node, NodeError> {
        config.validate()?;
        let node = NodeId::new(config.node.id.clone());
        let logger = logger.new(o!("node" => node.to_string()));
        std::fs::create_dir_all(&config.node.data_dir).map_err(io_error("creating data_dir"))?;
        let store = Store::open(&config.node.data_dir, &node)?;
        let socket =
            IntakeSocket::bind(config.node.listen).map_err(io_error("binding listen address"))?;
        let local_addr = socket.local_addr();
        let membership = MembershipView::new(config.membership(local_addr)?);
        if config.cluster.secret == DEFAULT_SECRET {
            warn!(
                logger,
                "cluster.secret is the public default: anyone can forge contexts; set your own"
            );
        }
        let shared = Shared {
            node,
            membership,
            seal: ContextSeal::new(config.cluster.secret.as_bytes()),
            latencies: OperationLatencies::default(),
            board: PeerBoard::default(),
            store,
            logger: logger.clone(),
        };
        let (queues, receivers) = queues(config, &socket);
        let stats = StatsSource {
            node: shared.node.clone(),
            stages: vec![
                probe(&queues.intake),
                probe(&queues.parse),
                probe(&queues.coordinate),
                probe(&queues.replicate),
                probe(&queues.repair),
                probe(&queues.handoff),
                probe(&queues.storage),
            ],
            latencies: shared.latencies.clone(),
        };
        let Receivers {
            intake,
            parse,
            coordinate,
            replicate,
            repair,
            handoff,
            storage,
        } = receivers;
        // Consumers before producers; they stop in the reverse order, after the intake.
        let mut stages = vec![
            spawn_storage(config, &shared, &queues, storage)?,
            spawn_handoff(config, &shared, &queues, handoff)?,
            spawn_repair(config, &shared, &queues, repair)?,
            spawn_replicate(config, &queues, replicate)?,
            spawn_coordinate(config, &shared, &queues, coordinate)?,
            spawn_parse(config, &shared, &queues, parse)?,
        ];
        stages.reverse();
        let intake_stop = Arc::new(AtomicBool::new(false));
        let intake = Intake::new(
            socket,
            IntakeSettings {
                max_frame_bytes: config.limits.max_frame_bytes,
                max_connections: config.limits.max_connections,
                max_write_buffer_bytes: config.limits.max_write_buffer_bytes,
                frame_timeout: Duration::from_millis(config.limits.frame_timeout_ms),
            },
            intake,
            IntakeRoutes {
                parse: queues.parse.clone(),
                replicate: queues.replicate.clone(),
                membership: shared.membership.clone(),
                stats,
                node: shared.node.clone(),
                seal: shared.seal.clone(),
            },
            Arc::clone(&intake_stop),
            logger.new(o!("stage" => "intake")),
        );
        let intake_thread = std::thread::Builder::new()
            .name("intake-0".into())
            .spawn(move || intake.run())
            .map_err(io_error("starting intake"))?;
        let current = shared.membership.current();
        info!(logger, "node started"; "addr" => %local_addr, "sync" => %config.storage.sync,
              "partitions" => current.ring().partition_count(), "members" => current.members().count(),
              "n" => config.cluster.n);
        Ok(Node {
            local_addr,
            intake_stop,
            intake_thread: Some(intake_thread),
            stages,
            logger,
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the stages in order (intake, parse, coordinate, replicate, repair, storage), each
    /// after its queue drained; storage flushes its journal last.
    pub fn shutdown(mut self) {
        self.intake_stop.store(true, Ordering::Release);
        if let Some(thread) = self.intake_thread.take() {
            let _ = thread.join();
        }
        for stage in self.stages.drain(..) {
            let name = stage.name();
            stage.stop_and_join();
            info!(self.logger, "stage stopped"; "stage" => name);
        }
        info!(self.logger, "node stopped");
    }
}

fn queues(config: &Config, socket: &IntakeSocket) -> (Queues, Receivers) {
    let (intake, intake_rx) = stage_queue(&config.stage_spec("intake"), Some(socket.waker()));
    let (parse, parse_rx) = stage_queue(&config.stage_spec("parse"), None);
    let (coordinate, coordinate_rx) = stage_queue(&config.stage_spec("coordinate"), None);
    let (replicate, replicate_rx) = stage_queue(&config.stage_spec("replicate"), None);
    let (repair, repair_rx) = stage_queue(&config.stage_spec("repair"), None);
    let (handoff, handoff_rx) = stage_queue(&config.stage_spec("handoff"), None);
    let (storage, storage_rx) = stage_queue(&config.stage_spec("storage"), None);
    (
        Queues {
            intake,
            parse,
            coordinate,
            replicate,
            repair,
            handoff,
            storage,
        },
        Receivers {
            intake: intake_rx,
            parse: parse_rx,
            coordinate: coordinate_rx,
            replicate: replicate_rx,
            repair: repair_rx,
            handoff: handoff_rx,
            storage: storage_rx,
        },
    )
}

fn spawn_storage(
    config: &Config,
    shared: &Shared,
    queues: &Queues,
    rx: StageReceiver<StorageEvent>,
) -> Result<StageHandle, NodeError> {
    let settings = StorageSettings {
        node: shared.node.clone(),
        sync: config.storage.sync,
        limits: VersionLimits {
            max_clock_entries: config.cluster.vclock_max_entries,
            max_siblings: config.limits.max_siblings,
        },
    };
    let logger = shared.logger.new(o!("stage" => "storage"));
    let (store, replies) = (shared.store.clone(), queues.coordinate.clone());
    let make = |index| {
        StorageStage::new(
            index,
            store.clone(),
            settings.clone(),
            replies.clone(),
            logger.clone(),
        )
    };
    spawn_stage(&config.stage_spec("storage"), rx, make, None).map_err(io_error("starting storage"))
}

fn spawn_repair(
    config: &Config,
    shared: &Shared,
    queues: &Queues,
    rx: StageReceiver<RepairStageEvent>,
) -> Result<StageHandle, NodeError> {
    let spec = config.stage_spec("repair");
    let rate = config.stage_rate("repair");
    let gate = Arc::new(Mutex::new(RateGate::new(
        rate,
        spec.batch_max as f64,
        Instant::now(),
    )));
    let make = |_| {
        RepairStage::new(
            shared.node.clone(),
            queues.storage.clone(),
            queues.replicate.clone(),
        )
    };
    spawn_stage(&spec, rx, make, Some(gate)).map_err(io_error("starting repair"))
}

fn spawn_handoff(
    config: &Config,
    shared: &Shared,
    queues: &Queues,
    rx: StageReceiver<HandoffEvent>,
) -> Result<StageHandle, NodeError> {
    let spec = config.stage_spec("handoff");
    // The stage takes a token per hint it sends (on its tick), so the gate is its own, not the
    // runtime's (which would only pace the acknowledgements).
    let rate = config.stage_rate("handoff");
    // The burst holds a tick's worth of tokens, so the stage can reach its rate when it only
    // sends once per tick.
    let burst = rate.map_or(spec.batch_max as f64, |r| {
        (r * spec.tick.as_secs_f64()).max(spec.batch_max as f64)
    });
    let gate = Arc::new(Mutex::new(RateGate::new(rate, burst, Instant::now())));
    let logger = shared.logger.new(o!("stage" => "handoff"));
    let make = |_| {
        HandoffStage::new(
            shared.store.clone(),
            queues.replicate.clone(),
            Arc::clone(&gate),
            logger.clone(),
        )
    };
    spawn_stage(&spec, rx, make, None).map_err(io_error("starting handoff"))
}

fn spawn_replicate(
    config: &Config,
    queues: &Queues,
    rx: StageReceiver<ReplicateEvent>,
) -> Result<StageHandle, NodeError> {
    let max_frame = config.limits.max_frame_bytes;
    let make = |_| {
        ReplicateStage::new(
            queues.intake.clone(),
            queues.coordinate.clone(),
            queues.handoff.clone(),
            max_frame,
        )
    };
    spawn_stage(&config.stage_spec("replicate"), rx, make, None)
        .map_err(io_error("starting replicate"))
}

fn spawn_coordinate(
    config: &Config,
    shared: &Shared,
    queues: &Queues,
    rx: StageReceiver<CoordinateEvent>,
) -> Result<StageHandle, NodeError> {
    let settings = CoordinatorSettings {
        node: shared.node.clone(),
        n: config.cluster.n,
        r: config.cluster.r,
        w: config.cluster.w,
        request_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
        seal: shared.seal.clone(),
        probe_interval: Duration::from_millis(config.cluster.probe_interval_ms),
        replica_timeout: Duration::from_millis(config.cluster.replica_timeout_ms),
    };
    let machine = Coordinator::new(
        settings,
        shared.membership.clone(),
        shared.latencies.clone(),
        shared.board.clone(),
    );
    let mut machine = Some(machine);
    let make = |_| {
        // The spec has exactly one thread (validated), so the coordinator is taken once.
        let machine = machine
            .take()
            .unwrap_or_else(|| unreachable!("coordinate has one thread"));
        let q = queues.clone();
        CoordinateStage::new(machine, q.storage, q.intake, q.replicate, q.repair)
    };
    spawn_stage(&config.stage_spec("coordinate"), rx, make, None)
        .map_err(io_error("starting coordinate"))
}

fn spawn_parse(
    config: &Config,
    shared: &Shared,
    queues: &Queues,
    rx: StageReceiver<ParseEvent>,
) -> Result<StageHandle, NodeError> {
    let settings = ParseSettings {
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        seal: shared.seal.clone(),
        max_replica_versions: config.limits.max_siblings * REPLICA_VERSIONS_PER_SIBLING,
    };
    let make = |_| {
        let q = queues.clone();
        let members = MembersSource {
            node: shared.node.clone(),
            board: shared.board.clone(),
            store: shared.store.clone(),
        };
        ParseStage::new(
            settings.clone(),
            q.coordinate,
            q.intake,
            q.replicate,
            shared.membership.clone(),
            members,
        )
    };
    spawn_stage(&config.stage_spec("parse"), rx, make, None).map_err(io_error("starting parse"))
}

fn probe<E: Send + 'static>(sender: &StageSender<E>) -> StageProbe {
    let sender = sender.clone();
    Arc::new(move || sender.snapshot())
}
