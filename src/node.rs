//! A running node: the stages of the stage table, wired by their queues.
//!
//! ```text
//! socket → intake ─try_send→ parse ─try_send→ coordinate ─try_send→ storage (fjall)
//!            ↑                  │                 ↑   │                 │
//!            └──────send────────┴──────send───────┘   └←────send────────┘
//! ```
//! Requests move forward with `try_send` (a full queue answers `Overloaded`); replies move back
//! with a blocking `send`. The blocking edges (storage→coordinate, coordinate→intake,
//! parse→intake) form no cycle, and the intake never blocks, so the pipeline cannot deadlock.

use crate::config::{Config, ConfigError, DEFAULT_SECRET};
use shoal_stages::coordinate::{
    CoordinateEvent, CoordinateStage, Coordinator, CoordinatorSettings, OperationLatencies,
};
use shoal_stages::intake::{Intake, IntakeEvent, IntakeSettings, IntakeSocket};
use shoal_stages::parse::{ParseEvent, ParseSettings, ParseStage, StageProbe, StatsSource};
use shoal_stages::ring::{Ring, RingError};
use shoal_stages::seda::{spawn_stage, stage_queue, StageHandle, StageSender};
use shoal_stages::storage::{
    StorageError, StorageEvent, StorageSettings, StorageStage, Store, VersionLimits,
};
use shoal_stages::wire::ContextSeal;
use shoal_stages::NodeId;
use slog::{info, o, warn, Logger};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

impl Node {
    /// Opens storage, builds the ring, binds the socket and starts every stage.
    pub fn start(config: &Config, logger: &Logger) -> Result<Node, NodeError> {
        config.validate()?;
        let node = NodeId::new(config.node.id.clone());
        let logger = logger.new(o!("node" => node.to_string()));
        std::fs::create_dir_all(&config.node.data_dir).map_err(io_error("creating data_dir"))?;
        let store = Store::open(&config.node.data_dir, &node)?;
        let ring = Arc::new(Ring::new(
            config.cluster.partitions,
            &config.ring_members()?,
        )?);
        if config.cluster.secret == DEFAULT_SECRET {
            warn!(
                logger,
                "cluster.secret is the public default: anyone can forge contexts; set your own"
            );
        }
        let seal = ContextSeal::new(config.cluster.secret.as_bytes());

        let socket =
            IntakeSocket::bind(config.node.listen).map_err(io_error("binding listen address"))?;
        let local_addr = socket.local_addr();
        let intake_spec = config.stage_spec("intake");
        let parse_spec = config.stage_spec("parse");
        let coordinate_spec = config.stage_spec("coordinate");
        let storage_spec = config.stage_spec("storage");
        let (intake_tx, intake_rx) = stage_queue::<IntakeEvent>(&intake_spec, Some(socket.waker()));
        let (parse_tx, parse_rx) = stage_queue::<ParseEvent>(&parse_spec, None);
        let (coordinate_tx, coordinate_rx) = stage_queue::<CoordinateEvent>(&coordinate_spec, None);
        let (storage_tx, storage_rx) = stage_queue::<StorageEvent>(&storage_spec, None);

        let latencies = OperationLatencies::default();
        let stats = StatsSource {
            node: node.clone(),
            stages: vec![
                probe(&intake_tx),
                probe(&parse_tx),
                probe(&coordinate_tx),
                probe(&storage_tx),
            ],
            latencies: latencies.clone(),
        };

        let mut stages = Vec::new();
        let storage_settings = StorageSettings {
            node: node.clone(),
            sync: config.storage.sync,
            limits: VersionLimits {
                max_clock_entries: config.cluster.vclock_max_entries,
                max_siblings: config.limits.max_siblings,
            },
        };
        let storage_logger = logger.new(o!("stage" => "storage"));
        stages.push(
            spawn_stage(
                &storage_spec,
                storage_rx,
                |index| {
                    StorageStage::new(
                        index,
                        store.clone(),
                        storage_settings.clone(),
                        coordinate_tx.clone(),
                        storage_logger.clone(),
                    )
                },
                None,
            )
            .map_err(io_error("starting storage"))?,
        );

        let settings = CoordinatorSettings {
            node: node.clone(),
            n: config.cluster.n,
            r: config.cluster.r,
            w: config.cluster.w,
            request_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
            seal: seal.clone(),
        };
        let coordinator = Coordinator::new(settings, Arc::clone(&ring), latencies);
        let mut coordinator = Some(coordinator);
        stages.push(
            spawn_stage(
                &coordinate_spec,
                coordinate_rx,
                |_| {
                    // The spec has exactly one thread (validated), so the coordinator is taken once.
                    let machine = coordinator
                        .take()
                        .unwrap_or_else(|| unreachable!("coordinate has one thread"));
                    CoordinateStage::new(machine, storage_tx.clone(), intake_tx.clone())
                },
                None,
            )
            .map_err(io_error("starting coordinate"))?,
        );

        let parse_settings = ParseSettings {
            max_key_bytes: config.limits.max_key_bytes,
            max_value_bytes: config.limits.max_value_bytes,
            seal,
        };
        stages.push(
            spawn_stage(
                &parse_spec,
                parse_rx,
                |_| {
                    ParseStage::new(
                        parse_settings.clone(),
                        coordinate_tx.clone(),
                        intake_tx.clone(),
                    )
                },
                None,
            )
            .map_err(io_error("starting parse"))?,
        );

        let intake_stop = Arc::new(AtomicBool::new(false));
        let intake = Intake::new(
            socket,
            IntakeSettings {
                max_frame_bytes: config.limits.max_frame_bytes,
                max_connections: config.limits.max_connections,
                max_write_buffer_bytes: config.limits.max_write_buffer_bytes,
            },
            intake_rx,
            parse_tx,
            stats,
            Arc::clone(&intake_stop),
            logger.new(o!("stage" => "intake")),
        );
        let intake_thread = std::thread::Builder::new()
            .name("intake-0".into())
            .spawn(move || intake.run())
            .map_err(io_error("starting intake"))?;
        // Pool stages were started storage-first (consumers before producers); they stop
        // producers-first, after the intake.
        stages.reverse();
        info!(logger, "node started"; "addr" => %local_addr, "sync" => %config.storage.sync,
              "partitions" => ring.partition_count(), "n" => config.cluster.n);
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

    /// Stops the stages in order (intake, parse, coordinate, storage), each after its queue
    /// drained; storage flushes its journal last.
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

fn probe<E: Send + 'static>(sender: &StageSender<E>) -> StageProbe {
    let sender = sender.clone();
    Arc::new(move || sender.snapshot())
}
