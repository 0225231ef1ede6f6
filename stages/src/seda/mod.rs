//! The SEDA runtime (Welsh et al., SOSP 2001): a stage is a bounded queue of typed events, a
//! handler with a concurrency limit that the shared worker pool runs on batches of them, a
//! class, and live statistics.
//!
//! - Admission: requests enter a stage with [`StageSender::try_send`]; a full queue hands the
//!   event straight back ([`SendError::Full`]) so the caller can answer `Overloaded` at once.
//!   Replies travel back with [`StageSender::send`], which waits for room: a reply must not be
//!   dropped, and the blocking edges never form a cycle (see ARCHITECTURE.md).
//! - Threads: one [`WorkerPool`] serves every stage's queue but the intake's (`runtime.rs`
//!   says how): a hop between stages costs a queue push, not a thread wake-up, and a stage's
//!   `threads` is the most workers that serve it at once.
//! - Batching: a worker takes up to `batch_max` queued events of a stage at a time, so one
//!   pass over a stage is shared by every event that queued meanwhile.
//! - Background machines take a token from their stage's [`Gate`] before each unit of work and
//!   never wait for one (refused, they carry on at their next tick); the [`GateRegistry`] is
//!   where the resource controller and `admin throttle` set the rates.
//! - Machines: a stage's logic is a [`Machine`] that writes effects to an [`Outbox`];
//!   [`Driven`] runs one in the worker pool and [`deliver`]s its outbox through the
//!   [`Router`] (every stage's queue).

mod counters;
mod driven;
mod gates;
mod machine;
mod rate_gate;
mod runtime;
mod slow;
mod stats;

pub use crate::event::StageClass;
pub use counters::{Count, NodeCounters};
pub use driven::{deliver, Driven, Post, Router, Threads};
pub use gates::{
    ControllerState, Gate, GateMode, GateReading, GateRegistry, StageThrottle, MAX_RATE_PER_SEC,
};
pub use machine::{Delivery, Effect, Machine, Outbox};
pub use rate_gate::{RateGate, BURST_WINDOW};
pub use runtime::{Domain, PoolSettings, SlowestBatch, Stage, StageHandle, WorkerPool};
pub use slow::{LogLimit, LogLimits, SlowWatch, Stalls};
pub use stats::{
    micros, new_latency_histogram, ExportedHistogram, OperationLatencies, StageSnapshot,
    StageStats, EXPORT_BOUNDS_US,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tunable shape of a stage: one row of the stage table.
#[derive(Clone, Debug)]
pub struct StageSpec {
    /// Name used in config keys, stats and logs.
    pub name: &'static str,
    /// Foreground or background.
    pub class: StageClass,
    /// The most pool workers that serve the stage at once (its slots).
    pub threads: usize,
    /// Queue bound.
    pub queue_capacity: usize,
    /// Most events a worker takes from the queue at a time.
    pub batch_max: usize,
    /// How often `on_tick` runs when no events arrive (deadlines, periodic work).
    pub tick: Duration,
}

/// An event waiting in a queue, stamped so the queue wait can be measured.
pub struct Queued<E> {
    /// The event.
    pub event: E,
    /// When it entered the queue.
    pub enqueued_at: Instant,
}

/// Something to poke after an event is queued: the worker pool (`WorkerPool::waker`) or the
/// intake's mio loop (a `mio::Waker`).
pub trait Wake: Send + Sync {
    /// Wakes the consumer.
    fn wake(&self);

    /// A blocking send found the queue full: what the sending thread should do. A pool worker
    /// runs a batch of the full stage itself, since the workers that would drain it may all be
    /// waiting the same way.
    fn help(&self) -> Help {
        Help::Block
    }

    /// Whether the stage has stopped (a send is then refused as `Closed`).
    fn closed(&self) -> bool {
        false
    }
}

/// What [`Wake::help`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Help {
    /// Nothing: wait on the queue (a thread outside the pool).
    Block,
    /// Ran a batch of the stage: try again.
    Ran,
    /// Every slot of the stage is busy: try again shortly.
    Busy,
    /// The stage has stopped.
    Closed,
}

/// Why an event was not queued; the event comes back so the caller can answer for it.
#[derive(Debug)]
pub enum SendError<E> {
    /// The queue is at capacity.
    Full(E),
    /// The stage has stopped.
    Closed(E),
}

impl<E> SendError<E> {
    /// The event that was not queued.
    pub fn into_event(self) -> E {
        match self {
            SendError::Full(event) | SendError::Closed(event) => event,
        }
    }
}

/// The sending side of a stage's queue. Cheap to clone; every clone counts into the same stats.
pub struct StageSender<E> {
    sender: Sender<Queued<E>>,
    stats: Arc<StageStats>,
    wake: Option<Arc<dyn Wake>>,
}

impl<E> Clone for StageSender<E> {
    fn clone(&self) -> Self {
        StageSender {
            sender: self.sender.clone(),
            stats: Arc::clone(&self.stats),
            wake: self.wake.clone(),
        }
    }
}

impl<E> StageSender<E> {
    /// Queues an event if there is room; otherwise gives it back at once (and counts it).
    pub fn try_send(&self, event: E) -> Result<(), SendError<E>> {
        if self.wake.as_ref().is_some_and(|wake| wake.closed()) {
            return Err(SendError::Closed(event));
        }
        let queued = Queued {
            event,
            enqueued_at: Instant::now(),
        };
        match self.sender.try_send(queued) {
            Ok(()) => {
                self.after_send();
                Ok(())
            }
            Err(TrySendError::Full(q)) => {
                self.stats.on_rejected();
                Err(SendError::Full(q.event))
            }
            Err(TrySendError::Disconnected(q)) => Err(SendError::Closed(q.event)),
        }
    }

    /// Queues an event, waiting for room (for replies, which must not be dropped). On a pool
    /// worker, waiting means running the full stage's batches until there is room.
    pub fn send(&self, event: E) -> Result<(), SendError<E>> {
        let mut queued = Queued {
            event,
            enqueued_at: Instant::now(),
        };
        if let Some(wake) = &self.wake {
            if wake.closed() {
                return Err(SendError::Closed(queued.event));
            }
            loop {
                match self.sender.try_send(queued) {
                    Ok(()) => {
                        self.after_send();
                        return Ok(());
                    }
                    Err(TrySendError::Disconnected(q)) => return Err(SendError::Closed(q.event)),
                    Err(TrySendError::Full(q)) => queued = q,
                }
                match wake.help() {
                    Help::Block => break,
                    Help::Ran => {}
                    Help::Busy => std::thread::yield_now(),
                    Help::Closed => return Err(SendError::Closed(queued.event)),
                }
            }
        }
        match self.sender.send(queued) {
            Ok(()) => {
                self.after_send();
                Ok(())
            }
            Err(err) => Err(SendError::Closed(err.into_inner().event)),
        }
    }

    fn after_send(&self) {
        self.stats.on_enqueued(self.sender.len());
        if let Some(wake) = &self.wake {
            wake.wake();
        }
    }

    /// Events waiting now.
    pub fn depth(&self) -> usize {
        self.sender.len()
    }

    /// The stage's statistics.
    pub fn stats(&self) -> &Arc<StageStats> {
        &self.stats
    }

    /// A snapshot of the stage's statistics with its current depth.
    pub fn snapshot(&self) -> StageSnapshot {
        self.stats.snapshot(self.depth())
    }

    /// The stage's queue-wait and service-time histograms, for export.
    pub fn exported(&self) -> (ExportedHistogram, ExportedHistogram) {
        self.stats.exported()
    }
}

/// The receiving side of a stage's queue, handed to the worker pool with the stage.
pub struct StageReceiver<E> {
    pub(crate) receiver: Receiver<Queued<E>>,
    pub(crate) stats: Arc<StageStats>,
}

impl<E> StageReceiver<E> {
    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.receiver.len()
    }

    /// Takes one event if any is waiting (for stages that drive their own loop, like intake).
    pub fn try_recv(&self) -> Option<Queued<E>> {
        self.receiver.try_recv().ok()
    }

    /// The stage's statistics.
    pub fn stats(&self) -> &Arc<StageStats> {
        &self.stats
    }
}

/// Creates a stage's bounded queue. `wake` is poked after each send (for the intake loop).
pub fn stage_queue<E>(
    spec: &StageSpec,
    wake: Option<Arc<dyn Wake>>,
) -> (StageSender<E>, StageReceiver<E>) {
    let (sender, receiver) = crossbeam_channel::bounded(spec.queue_capacity.max(1));
    let stats = Arc::new(StageStats::new(
        spec.name,
        spec.class,
        spec.threads,
        spec.queue_capacity.max(1),
    ));
    (
        StageSender {
            sender,
            stats: Arc::clone(&stats),
            wake,
        },
        StageReceiver { receiver, stats },
    )
}
