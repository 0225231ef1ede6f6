//! The stage table wired into a node: every stage's queue (the `Router` and the receiving
//! ends), and each pool stage's machines added to the foreground or the background pool with
//! the settings the config gives them. `Node::start` (in `node.rs`) calls these two, then
//! starts the threads.

use super::{Shared, REPLICA_VERSIONS_PER_SIBLING};
use crate::config::Config;
use shoal_stages::anti_entropy::{AntiEntropyMachine, AntiEntropySettings};
use shoal_stages::coordinate::{Coordinator, CoordinatorSettings};
use shoal_stages::event::StageId;
use shoal_stages::gossip::{GossipMachine, GossipSettings};
use shoal_stages::handoff::{HandoffMachine, DEFAULT_BATCH_BYTES};
use shoal_stages::intake::IntakeSocket;
use shoal_stages::membership::Membership;
use shoal_stages::parse::{ParseMachine, ParseSettings};
use shoal_stages::repair::RepairMachine;
use shoal_stages::replicate::ReplicateMachine;
use shoal_stages::seda::{
    stage_queue, Driven, Gate, Machine, Router, StageHandle, StageReceiver, WorkerPool,
};
use shoal_stages::storage::{CommitMachine, StorageMachine, StorageSettings, VersionLimits};
use shoal_stages::transfer::{TransferMachine, TransferSettings};
use slog::o;
use std::time::{Duration, Instant};

/// The receiving ends of every pool stage's queue, each handed to its stage's workers.
pub(super) struct Receivers {
    parse: StageReceiver<shoal_stages::event::ParseEvent>,
    coordinate: StageReceiver<shoal_stages::event::CoordinateEvent>,
    replicate: StageReceiver<shoal_stages::event::ReplicateEvent>,
    repair: StageReceiver<shoal_stages::event::RepairEvent>,
    handoff: StageReceiver<shoal_stages::event::HandoffEvent>,
    anti_entropy: StageReceiver<shoal_stages::event::AntiEntropyEvent>,
    transfer: StageReceiver<shoal_stages::event::TransferEvent>,
    gossip: StageReceiver<shoal_stages::event::GossipEvent>,
    background_storage: StageReceiver<shoal_stages::event::StorageEvent>,
    storage: StageReceiver<shoal_stages::event::StorageEvent>,
    commit: StageReceiver<shoal_stages::event::CommitEvent>,
}

/// Every stage's queue, from the stage table and the config's tuning.
pub(super) fn queues(
    config: &Config,
    socket: &IntakeSocket,
    pool: &WorkerPool,
    background: &WorkerPool,
) -> (
    Router,
    Receivers,
    StageReceiver<shoal_stages::event::IntakeEvent>,
) {
    let (intake, intake_rx) =
        stage_queue(&config.stage_spec(StageId::Intake), Some(socket.waker()));
    let (parse, parse_rx) = pool_queue(config, pool, StageId::Parse);
    let (coordinate, coordinate_rx) = pool_queue(config, pool, StageId::Coordinate);
    let (replicate, replicate_rx) = pool_queue(config, pool, StageId::Replicate);
    let (repair, repair_rx) = pool_queue(config, background, StageId::Repair);
    let (handoff, handoff_rx) = pool_queue(config, background, StageId::Handoff);
    let (anti_entropy, anti_entropy_rx) = pool_queue(config, background, StageId::AntiEntropy);
    let (transfer, transfer_rx) = pool_queue(config, background, StageId::Transfer);
    let (gossip, gossip_rx) = pool_queue(config, pool, StageId::Gossip);
    let (background_storage, background_storage_rx) =
        pool_queue(config, background, StageId::BackgroundStorage);
    let (storage, storage_rx) = pool_queue(config, pool, StageId::Storage);
    let (commit, commit_rx) = pool_queue(config, pool, StageId::Commit);
    let router = Router {
        intake,
        parse,
        coordinate,
        replicate,
        repair,
        handoff,
        anti_entropy,
        transfer,
        gossip,
        background_storage,
        storage,
        commit,
    };
    let receivers = Receivers {
        parse: parse_rx,
        coordinate: coordinate_rx,
        replicate: replicate_rx,
        repair: repair_rx,
        handoff: handoff_rx,
        anti_entropy: anti_entropy_rx,
        transfer: transfer_rx,
        gossip: gossip_rx,
        background_storage: background_storage_rx,
        storage: storage_rx,
        commit: commit_rx,
    };
    (router, receivers, intake_rx)
}

/// A pool stage's queue, which wakes the pool.
fn pool_queue<E>(
    config: &Config,
    pool: &WorkerPool,
    stage: StageId,
) -> (shoal_stages::seda::StageSender<E>, StageReceiver<E>) {
    let spec = config.stage_spec(stage);
    stage_queue(&spec, Some(pool.waker(&spec)))
}

/// Adds `stage` to the pool with one machine per slot from `make`, delivering through the
/// router.
fn spawn<M: Machine>(
    config: &Config,
    shared: &Shared,
    pool: &mut WorkerPool,
    stage: StageId,
    receiver: StageReceiver<M::Input>,
    mut make: impl FnMut(usize) -> M,
) -> StageHandle {
    let driven = |index| {
        let stats = (shared.latencies.clone(), shared.counters.clone());
        Driven::new(make(index), shared.router.clone(), stats)
    };
    pool.add_stage(&config.stage_spec(stage), receiver, driven)
}

/// Adds every pool stage; returns them in shutdown (stage-table) order. Workers serve the
/// stages in the order they are added: the end of the pipeline first (storage, then the
/// stages that answer), so a worker finishes requests before it takes new ones. Background
/// stages go to the background pool, whose workers serve only them.
pub(super) fn add_pool_stages(
    config: &Config,
    shared: &Shared,
    (pool, background): (&mut WorkerPool, &mut WorkerPool),
    receivers: Receivers,
    membership: Membership,
) -> Vec<StageHandle> {
    let storage_settings = StorageSettings {
        node: shared.node.clone(),
        sync: config.storage.sync,
        limits: VersionLimits {
            max_clock_entries: config.cluster.vclock_max_entries,
            max_siblings: config.limits.max_siblings,
            max_frame_bytes: config.limits.max_frame_bytes,
        },
        ownership: Some((shared.membership.clone(), config.cluster.n)),
    };
    let storage_logger = shared.logger.new(o!("stage" => StageId::Storage.name()));
    let storage = spawn(
        config,
        shared,
        pool,
        StageId::Storage,
        receivers.storage,
        |index| {
            StorageMachine::new(
                index,
                shared.store.clone(),
                storage_settings.clone(),
                storage_logger.clone(),
            )
        },
    );
    let background_storage_logger = shared
        .logger
        .new(o!("stage" => StageId::BackgroundStorage.name()));
    let background_storage = spawn(
        config,
        shared,
        background,
        StageId::BackgroundStorage,
        receivers.background_storage,
        |index| {
            // Never index 0: the foreground lane's first worker asks for the periodic flush.
            StorageMachine::new(
                index + 1,
                shared.store.clone(),
                storage_settings.clone(),
                background_storage_logger.clone(),
            )
        },
    );
    let commit_logger = shared.logger.new(o!("stage" => StageId::Commit.name()));
    let commit = spawn(
        config,
        shared,
        pool,
        StageId::Commit,
        receivers.commit,
        |_| CommitMachine::new(shared.store.clone(), commit_logger.clone()),
    );
    let handoff = spawn(
        config,
        shared,
        background,
        StageId::Handoff,
        receivers.handoff,
        |_| {
            HandoffMachine::new(
                gate(shared, StageId::Handoff),
                shared.logger.new(o!("stage" => StageId::Handoff.name())),
            )
            .retargeting(
                shared.membership.clone(),
                shared.node.clone(),
                config.cluster.n,
            )
            .batch_bytes(DEFAULT_BATCH_BYTES.min(config.limits.max_frame_bytes / 2))
        },
    );
    let aae = &config.anti_entropy;
    let anti_entropy_settings = AntiEntropySettings {
        node: shared.node.clone(),
        n: config.cluster.n,
        enabled: aae.enabled,
        exchange_interval: Duration::from_millis(aae.exchange_interval_ms),
        rebuild_interval: Duration::from_millis(aae.rebuild_interval_ms),
        confirm_delay: Duration::from_millis(aae.confirm_delay_ms),
        max_keys_per_exchange: aae.max_keys_per_exchange,
        tombstone_grace: Duration::from_millis(aae.tombstone_grace_ms),
    };
    let anti_entropy = spawn(
        config,
        shared,
        background,
        StageId::AntiEntropy,
        receivers.anti_entropy,
        |_| {
            AntiEntropyMachine::new(
                anti_entropy_settings.clone(),
                shared.membership.clone(),
                gate(shared, StageId::AntiEntropy),
                shared.aae.clone(),
                shared
                    .logger
                    .new(o!("stage" => StageId::AntiEntropy.name())),
            )
        },
    );
    let gossip_settings = GossipSettings {
        node: shared.node.clone(),
        n: config.cluster.n,
        partitions: config.cluster.partitions,
        interval: Duration::from_millis(config.gossip.interval_ms),
        seeds: config.seeds(),
        listen: Some(shared.listen),
    };
    let board = shared.transfers.clone();
    let gossip = spawn(
        config,
        shared,
        pool,
        StageId::Gossip,
        receivers.gossip,
        |_| {
            GossipMachine::new(
                gossip_settings.clone(),
                membership.clone(),
                shared.membership.clone(),
                board.clone(),
                Instant::now(),
                shared.logger.new(o!("stage" => StageId::Gossip.name())),
            )
        },
    );
    let t = &config.transfer;
    let transfer_settings = TransferSettings {
        node: shared.node.clone(),
        n: config.cluster.n,
        batch_keys: t.batch_keys,
        // A batch must fit a frame, with room for the one object that may cross the bound.
        batch_bytes: t.batch_bytes.min(config.limits.max_frame_bytes / 2),
        settle: Duration::from_millis(t.settle_ms),
        cleanup_delay: Duration::from_millis(t.cleanup_delay_ms),
        ack_timeout: Duration::from_millis(t.ack_timeout_ms),
    };
    let transfer = spawn(
        config,
        shared,
        background,
        StageId::Transfer,
        receivers.transfer,
        |_| {
            TransferMachine::new(
                transfer_settings.clone(),
                shared.membership.clone(),
                gate(shared, StageId::Transfer),
                board.clone(),
                Instant::now(),
                shared.logger.new(o!("stage" => StageId::Transfer.name())),
            )
        },
    );
    let repair = spawn(
        config,
        shared,
        background,
        StageId::Repair,
        receivers.repair,
        |_| RepairMachine::new(shared.node.clone(), gate(shared, StageId::Repair)),
    );
    // Peers take frames this large from each other (the intake's `take_peer_frames`).
    let max_frame = config.limits.max_peer_frame_bytes();
    let replicate = spawn(
        config,
        shared,
        pool,
        StageId::Replicate,
        receivers.replicate,
        |_| ReplicateMachine::new(max_frame),
    );
    let coordinator_settings = CoordinatorSettings {
        node: shared.node.clone(),
        n: config.cluster.n,
        r: config.cluster.r,
        w: config.cluster.w,
        request_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
        seal: shared.seal.clone(),
        probe_interval: Duration::from_millis(config.cluster.probe_interval_ms),
        replica_timeout: Duration::from_millis(config.cluster.replica_timeout_ms),
        durable_writes: config.cluster.durable_writes,
    };
    // The stage table makes coordinate single-threaded (validated), so one coordinator.
    let coordinate = spawn(
        config,
        shared,
        pool,
        StageId::Coordinate,
        receivers.coordinate,
        |_| {
            Coordinator::new(coordinator_settings.clone(), shared.membership.clone())
                .with_logger(shared.logger.new(o!("stage" => StageId::Coordinate.name())))
                .with_peer_board(shared.peers.clone())
        },
    );
    let parse_settings = ParseSettings {
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        seal: shared.seal.clone(),
        max_replica_versions: config.limits.max_siblings * REPLICA_VERSIONS_PER_SIBLING,
        replicas: config.cluster.n,
        request_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
    };
    let parse = spawn(
        config,
        shared,
        pool,
        StageId::Parse,
        receivers.parse,
        |_| ParseMachine::new(parse_settings.clone(), shared.membership.clone()),
    );
    vec![
        parse,
        coordinate,
        replicate,
        repair,
        handoff,
        anti_entropy,
        transfer,
        gossip,
        background_storage,
        storage,
        commit,
    ]
}

/// A background stage's gate from the registry (every background stage of the table has one).
fn gate(shared: &Shared, stage: StageId) -> Gate {
    match shared.gates.gate(stage) {
        Some(gate) => gate.clone(),
        // The registry holds a gate for every background stage of the table; only a
        // foreground stage has none, and no foreground machine asks.
        None => unreachable!("{stage} is not a background stage"),
    }
}
