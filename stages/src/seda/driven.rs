//! The threaded runtime's side of a machine: [`Router`] holds the sending end of every stage's
//! queue, [`deliver`] carries out an outbox through it, and [`Driven`] runs a machine as a
//! stage of the worker pool. The simulator has its own driver; the machines are the same.

use super::machine::{Delivery, Effect, Machine, Outbox};
use super::{ExportedHistogram, OperationLatencies, SendError, Stage, StageSender, StageSnapshot};
use crate::event::{
    wall_clock_ms, AntiEntropyEvent, CommitEvent, CoordinateEvent, Event, GossipEvent,
    HandoffEvent, IntakeEvent, Now, Operation, ParseEvent, Refusal, RepairEvent, ReplicateEvent,
    SocketCommand, StageId, StorageEvent, TransferEvent,
};
use std::time::{Duration, Instant};

/// Rounds of delivery per outbox: a refused request makes its machine write an answer, which
/// is delivered in the next round. Answers are never refused back, so two rounds suffice;
/// the bound only guards against a machine that answers a refusal with another request.
const MAX_DELIVERY_ROUNDS: usize = 8;

/// The sending end of every stage's queue of a node.
#[derive(Clone)]
pub struct Router {
    /// The intake's outgoing frames (wakes the mio loop).
    pub intake: StageSender<IntakeEvent>,
    /// Request parsing.
    pub parse: StageSender<ParseEvent>,
    /// Coordination.
    pub coordinate: StageSender<CoordinateEvent>,
    /// Replication fan-out.
    pub replicate: StageSender<ReplicateEvent>,
    /// Read repair.
    pub repair: StageSender<RepairEvent>,
    /// Hinted handoff.
    pub handoff: StageSender<HandoffEvent>,
    /// Anti-entropy.
    pub anti_entropy: StageSender<AntiEntropyEvent>,
    /// Ownership transfer.
    pub transfer: StageSender<TransferEvent>,
    /// Gossip.
    pub gossip: StageSender<GossipEvent>,
    /// Storage's background lane: storage requests of background stages.
    pub background_storage: StageSender<StorageEvent>,
    /// Storage.
    pub storage: StageSender<StorageEvent>,
    /// The journal flush (group commit).
    pub commit: StageSender<CommitEvent>,
}

/// Sends through one typed sender, giving the event back as an [`Event`] when refused. `$e`
/// names the event inside each arm's sender expression (storage picks its lane by it).
macro_rules! route {
    ($event:ident, $method:ident, $e:ident, [$($variant:ident => $sender:expr),*]) => {
        match $event {
            $(Event::$variant($e) => $sender.$method($e).map_err(|refused| match refused {
                SendError::Full(e) => (Refusal::Full, Event::$variant(e)),
                SendError::Closed(e) => (Refusal::Closed, Event::$variant(e)),
            }),)*
        }
    };
}

// The refused event comes back by value so its sender can answer for it; it is moved, not
// copied, and refusal is the rare path, so the size of the error does not matter here.
#[allow(clippy::result_large_err)]
impl Router {
    /// Queues an event if its stage has room; otherwise gives it back with the reason.
    pub fn try_send(&self, event: Event) -> Result<(), (Refusal, Event)> {
        route!(event, try_send, e, [Intake => self.intake, Parse => self.parse,
            Coordinate => self.coordinate, Replicate => self.replicate, Repair => self.repair,
            Handoff => self.handoff, AntiEntropy => self.anti_entropy, Transfer => self.transfer,
            Gossip => self.gossip, Storage => self.storage_lane(&e), Commit => self.commit])
    }

    /// Queues an event, waiting for room; gives it back only if the stage stopped.
    pub fn send(&self, event: Event) -> Result<(), (Refusal, Event)> {
        route!(event, send, e, [Intake => self.intake, Parse => self.parse,
            Coordinate => self.coordinate, Replicate => self.replicate, Repair => self.repair,
            Handoff => self.handoff, AntiEntropy => self.anti_entropy, Transfer => self.transfer,
            Gossip => self.gossip, Storage => self.storage_lane(&e), Commit => self.commit])
    }

    /// The storage queue a request goes to: the background lane if a background stage asked
    /// (the same rule as [`Event::stage`]).
    fn storage_lane(&self, event: &StorageEvent) -> &StageSender<StorageEvent> {
        if event.reply_to.background() {
            &self.background_storage
        } else {
            &self.storage
        }
    }

    /// Events waiting in a stage's queue now.
    pub fn depth(&self, stage: StageId) -> usize {
        match stage {
            StageId::Intake => self.intake.depth(),
            StageId::Parse => self.parse.depth(),
            StageId::Coordinate => self.coordinate.depth(),
            StageId::Replicate => self.replicate.depth(),
            StageId::Repair => self.repair.depth(),
            StageId::Handoff => self.handoff.depth(),
            StageId::AntiEntropy => self.anti_entropy.depth(),
            StageId::Transfer => self.transfer.depth(),
            StageId::Gossip => self.gossip.depth(),
            StageId::BackgroundStorage => self.background_storage.depth(),
            StageId::Storage => self.storage.depth(),
            StageId::Commit => self.commit.depth(),
        }
    }

    /// Every stage's queue-wait and service-time histograms, in stage-table order.
    pub fn exported(&self) -> Vec<(StageId, ExportedHistogram, ExportedHistogram)> {
        StageId::ALL
            .into_iter()
            .map(|stage| {
                let (wait, service) = match stage {
                    StageId::Intake => self.intake.exported(),
                    StageId::Parse => self.parse.exported(),
                    StageId::Coordinate => self.coordinate.exported(),
                    StageId::Replicate => self.replicate.exported(),
                    StageId::Repair => self.repair.exported(),
                    StageId::Handoff => self.handoff.exported(),
                    StageId::AntiEntropy => self.anti_entropy.exported(),
                    StageId::Transfer => self.transfer.exported(),
                    StageId::Gossip => self.gossip.exported(),
                    StageId::BackgroundStorage => self.background_storage.exported(),
                    StageId::Storage => self.storage.exported(),
                    StageId::Commit => self.commit.exported(),
                };
                (stage, wait, service)
            })
            .collect()
    }

    /// Every stage's statistics now, in stage-table order.
    pub fn snapshots(&self) -> Vec<StageSnapshot> {
        StageId::ALL
            .into_iter()
            .map(|stage| match stage {
                StageId::Intake => self.intake.snapshot(),
                StageId::Parse => self.parse.snapshot(),
                StageId::Coordinate => self.coordinate.snapshot(),
                StageId::Replicate => self.replicate.snapshot(),
                StageId::Repair => self.repair.snapshot(),
                StageId::Handoff => self.handoff.snapshot(),
                StageId::AntiEntropy => self.anti_entropy.snapshot(),
                StageId::Transfer => self.transfer.snapshot(),
                StageId::Gossip => self.gossip.snapshot(),
                StageId::BackgroundStorage => self.background_storage.snapshot(),
                StageId::Storage => self.storage.snapshot(),
                StageId::Commit => self.commit.snapshot(),
            })
            .collect()
    }
}

/// Where a driver puts what a machine's outbox holds: the threaded runtime's queues
/// ([`Threads`]) or the simulator's scheduler.
// A refused event comes back by value (moved, on the rare path): see `Router`.
#[allow(clippy::result_large_err)]
pub trait Post {
    /// Queues an event if its stage has room; otherwise gives it back with the reason.
    fn try_send(&mut self, event: Event) -> Result<(), (Refusal, Event)>;

    /// Queues an answer, waiting for room if need be (it is never refused, only lost when
    /// its stage has stopped).
    fn send(&mut self, event: Event);

    /// Records a finished client operation's latency.
    fn latency(&mut self, operation: Operation, latency: Duration);

    /// Adds to the node's counts.
    fn count(&mut self, count: super::Count);

    /// Carries out a socket command (the intake's machine only).
    fn socket(&mut self, command: SocketCommand);
}

/// Carries out `outbox`: events go to their stages as their delivery says, and a refused
/// request goes back to `machine` (which answers for it; that answer is delivered in the
/// next round). The one place that decides what each delivery means, for every driver.
pub fn deliver<M: Machine>(machine: &mut M, now: Now, outbox: &mut Outbox, post: &mut impl Post) {
    for _ in 0..MAX_DELIVERY_ROUNDS {
        if outbox.is_empty() {
            return;
        }
        for effect in outbox.take() {
            match effect {
                Effect::Send {
                    delivery: Delivery::Request,
                    event,
                } => {
                    if let Err((refusal, event)) = post.try_send(event) {
                        let error = refusal.error(event.stage());
                        machine.on_refused(now, event, error, outbox);
                    }
                }
                Effect::Send {
                    delivery: Delivery::Reply,
                    event,
                } => post.send(event),
                // Dropped when full, and counted as rejected by the queue.
                Effect::Send {
                    delivery: Delivery::Offer,
                    event,
                } => {
                    let _ = post.try_send(event);
                }
                Effect::Latency { operation, latency } => post.latency(operation, latency),
                Effect::Count(count) => post.count(count),
                Effect::Socket(command) => post.socket(command),
            }
        }
    }
    debug_assert!(
        outbox.is_empty(),
        "a machine kept answering refusals with requests"
    );
}

/// The threaded runtime's [`Post`]: every stage's queue, the node's latency statistics, and
/// what to do with socket commands (the intake's loop carries them out; pool stages have
/// none).
pub struct Threads<'a, S: FnMut(SocketCommand)> {
    /// Every stage's queue.
    pub router: &'a Router,
    /// The node's client latencies.
    pub latencies: &'a OperationLatencies,
    /// The node's counts.
    pub counters: &'a super::NodeCounters,
    /// Socket commands.
    pub sockets: S,
}

impl<S: FnMut(SocketCommand)> Post for Threads<'_, S> {
    fn try_send(&mut self, event: Event) -> Result<(), (Refusal, Event)> {
        self.router.try_send(event)
    }

    // A closed queue means the node is stopping: the answer has nobody to reach.
    fn send(&mut self, event: Event) {
        let _ = self.router.send(event);
    }

    fn latency(&mut self, operation: Operation, latency: Duration) {
        self.latencies.record(operation, latency);
    }

    fn count(&mut self, count: super::Count) {
        self.counters.add(count);
    }

    fn socket(&mut self, command: SocketCommand) {
        (self.sockets)(command);
    }
}

/// A machine run as a stage of the threaded runtime.
pub struct Driven<M: Machine> {
    machine: M,
    router: Router,
    latencies: OperationLatencies,
    counters: super::NodeCounters,
    outbox: Outbox,
}

impl<M: Machine> Driven<M> {
    /// Runs `machine`, delivering its outbox through `router`.
    pub fn new(
        machine: M,
        router: Router,
        (latencies, counters): (OperationLatencies, super::NodeCounters),
    ) -> Driven<M> {
        Driven {
            machine,
            router,
            latencies,
            counters,
            outbox: Outbox::new(),
        }
    }

    fn deliver(&mut self, now: Now) {
        let mut post = Threads {
            router: &self.router,
            latencies: &self.latencies,
            counters: &self.counters,
            // Pool stages have no sockets; a socket command from one is a wiring bug.
            sockets: |command| debug_assert!(false, "socket command from a pool stage: {command}"),
        };
        deliver(&mut self.machine, now, &mut self.outbox, &mut post);
    }
}

fn now_at(instant: Instant) -> Now {
    Now {
        instant,
        wall_ms: wall_clock_ms(),
    }
}

impl<M: Machine> Stage for Driven<M> {
    type Event = M::Input;

    fn handle_batch(&mut self, now: Instant, batch: &mut Vec<M::Input>) {
        let now = now_at(now);
        self.machine.on_batch(now, batch, &mut self.outbox);
        self.deliver(now);
    }

    fn on_tick(&mut self, now: Instant) {
        let now = now_at(now);
        self.machine.on_tick(now, &mut self.outbox);
        self.deliver(now);
    }

    fn idle(&self) -> bool {
        self.machine.idle()
    }

    fn on_stop(&mut self) {
        self.machine.on_stop(&mut self.outbox);
        self.deliver(Now::real());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{OpId, ReplyTo, StorageRequest};
    use crate::seda::{stage_queue, StageReceiver, StageSpec};

    fn queue<E>(stage: StageId) -> (StageSender<E>, StageReceiver<E>) {
        let row = stage.row();
        let spec = StageSpec {
            name: row.name,
            class: row.class,
            threads: row.threads,
            queue_capacity: row.queue_capacity,
            batch_max: row.batch_max,
            tick: Duration::from_millis(row.tick_ms),
        };
        stage_queue(&spec, None)
    }

    fn storage_request(reply_to: ReplyTo) -> Event {
        Event::Storage(StorageEvent {
            op: OpId(1),
            reply_to,
            request: StorageRequest::PendingHints,
        })
    }

    /// Goal: a storage request from a background stage (handoff, anti-entropy, transfer, or
    /// a read repair nobody waits for) lands in storage's background lane, the one the intake's
    /// loop never runs; a client's or gossip's lands in storage's own queue. `Event::stage`
    /// names the queue the router uses (the simulator routes by it).
    #[test]
    fn background_stages_storage_requests_go_to_storages_background_lane() {
        let (background_storage, background_rx) = queue(StageId::BackgroundStorage);
        let (storage, storage_rx) = queue(StageId::Storage);
        let router = Router {
            intake: queue(StageId::Intake).0,
            parse: queue(StageId::Parse).0,
            coordinate: queue(StageId::Coordinate).0,
            replicate: queue(StageId::Replicate).0,
            repair: queue(StageId::Repair).0,
            handoff: queue(StageId::Handoff).0,
            anti_entropy: queue(StageId::AntiEntropy).0,
            transfer: queue(StageId::Transfer).0,
            gossip: queue(StageId::Gossip).0,
            background_storage,
            storage,
            commit: queue(StageId::Commit).0,
        };
        let background = [
            ReplyTo::Handoff,
            ReplyTo::AntiEntropy,
            ReplyTo::Transfer,
            ReplyTo::Nobody,
        ];
        for reply_to in background {
            let event = storage_request(reply_to);
            assert_eq!(event.stage(), StageId::BackgroundStorage, "{reply_to}");
            assert!(router.try_send(event).is_ok());
        }
        for reply_to in [ReplyTo::Coordinate, ReplyTo::Gossip] {
            let event = storage_request(reply_to);
            assert_eq!(event.stage(), StageId::Storage, "{reply_to}");
            assert!(router.send(event).is_ok());
        }
        assert_eq!(router.depth(StageId::BackgroundStorage), background.len());
        assert_eq!(router.depth(StageId::Storage), 2);
        drop((background_rx, storage_rx));
    }
}
