//! One stage as the pool serves it: its slots (a handler each, behind a lock, at most one
//! worker per slot at a time), the batches and ticks a worker runs on a free slot, and the
//! handle that stops it.

use super::{align_up, PoolShared, Runnable, Stage, IN_BACKGROUND, NEVER};
use crate::seda::{Queued, StageClass, StageReceiver, StageSpec, StageStats};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// One handler of a stage and its batch buffers.
struct Slot<S: Stage> {
    stage: S,
    batch: Vec<S::Event>,
    waits: Vec<Duration>,
}

/// A stage served by the pool.
pub(super) struct PoolStage<S: Stage> {
    epoch: Instant,
    tick_ns: u64,
    batch_max: usize,
    background: bool,
    name: &'static str,
    stats: Arc<StageStats>,
    receiver: Receiver<Queued<S::Event>>,
    /// `None` once stopped.
    slots: Vec<Mutex<Option<Slot<S>>>>,
    /// Each slot's next tick, nanoseconds since the epoch (`NEVER`: idle).
    next_tick: Vec<AtomicU64>,
    /// Slots no worker holds (an estimate for `runnable`; the slot locks decide).
    free: AtomicUsize,
    stop: AtomicBool,
    stopped: AtomicBool,
}

impl<S: Stage> PoolStage<S> {
    /// A stage with one handler per slot (`spec.threads` of them), made by `make(slot)`,
    /// ticked on multiples of its period since the pool's `epoch`.
    pub(super) fn new(
        spec: &StageSpec,
        receiver: StageReceiver<S::Event>,
        epoch: Instant,
        mut make: impl FnMut(usize) -> S,
    ) -> PoolStage<S> {
        let slots = spec.threads.max(1);
        let now = epoch.elapsed().as_nanos() as u64;
        let tick_ns = (spec.tick.as_nanos() as u64).max(1);
        PoolStage {
            epoch,
            tick_ns,
            batch_max: spec.batch_max.max(1),
            background: spec.class == StageClass::Background,
            name: spec.name,
            stats: Arc::clone(&receiver.stats),
            receiver: receiver.receiver,
            slots: (0..slots)
                .map(|index| {
                    Mutex::new(Some(Slot {
                        stage: make(index),
                        batch: Vec::with_capacity(spec.batch_max.max(1)),
                        waits: Vec::with_capacity(spec.batch_max.max(1)),
                    }))
                })
                .collect(),
            next_tick: (0..slots)
                .map(|_| AtomicU64::new(align_up(now + 1, tick_ns)))
                .collect(),
            free: AtomicUsize::new(slots),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self, index: usize) -> Option<MutexGuard<'_, Option<Slot<S>>>> {
        match self.slots[index].try_lock() {
            Ok(guard) => Some(guard),
            // A handler that panicked leaves its slot unusable; the others serve on.
            Err(TryLockError::Poisoned(_)) | Err(TryLockError::WouldBlock) => None,
        }
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn run_slot(&self, index: usize, slot: &mut Slot<S>, shared: &PoolShared) -> bool {
        let started = Instant::now();
        while slot.batch.len() < self.batch_max {
            match self.receiver.try_recv() {
                Ok(queued) => {
                    slot.waits
                        .push(started.saturating_duration_since(queued.enqueued_at));
                    slot.batch.push(queued.event);
                }
                Err(_) => break,
            }
        }
        if slot.batch.is_empty() {
            return false;
        }
        let outer = IN_BACKGROUND.with(|b| b.replace(self.background));
        self.stats.busy_threads.fetch_add(1, Ordering::Relaxed);
        slot.stage.handle_batch(started, &mut slot.batch);
        slot.batch.clear();
        self.stats.on_batch(&slot.waits, started.elapsed());
        self.stats.busy_threads.fetch_sub(1, Ordering::Relaxed);
        slot.waits.clear();
        IN_BACKGROUND.with(|b| b.set(outer));
        // A slot left idle since its last tick is ticked again from now on; the parked
        // timekeeper may be sleeping past that tick, so it is told.
        if self.next_tick[index].load(Ordering::SeqCst) == NEVER {
            let next = align_up(self.since_epoch(Instant::now()) + 1, self.tick_ns);
            self.next_tick[index].store(next, Ordering::SeqCst);
            shared.tick_armed(next);
        }
        true
    }
}

impl<S: Stage> Runnable for PoolStage<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn runnable(&self) -> bool {
        // SeqCst with the updates in `run_batch`, `run_ticks` and `try_finish`: a worker that
        // queued an event and sees no free slot is seen by the slot's holder, which rescans.
        !self.receiver.is_empty() && self.free.load(Ordering::SeqCst) > 0
    }

    fn run_batch(&self, shared: &PoolShared) -> bool {
        for index in 0..self.slots.len() {
            let Some(mut guard) = self.lock(index) else {
                continue;
            };
            let Some(slot) = guard.as_mut() else {
                continue; // this slot has stopped; another may not have yet
            };
            self.free.fetch_sub(1, Ordering::SeqCst);
            let ran = self.run_slot(index, slot, shared);
            self.free.fetch_add(1, Ordering::SeqCst);
            return ran;
        }
        false
    }

    fn run_ticks(&self, now: Instant) {
        let now_ns = self.since_epoch(now);
        for index in 0..self.slots.len() {
            if self.next_tick[index].load(Ordering::Relaxed) > now_ns {
                continue;
            }
            let Some(mut guard) = self.lock(index) else {
                continue;
            };
            let Some(slot) = guard.as_mut() else {
                self.next_tick[index].store(NEVER, Ordering::Relaxed);
                continue;
            };
            if slot.stage.idle() {
                self.next_tick[index].store(NEVER, Ordering::Relaxed);
                continue;
            }
            // Held for a tick: not free, so idle workers park instead of retrying the lock.
            self.free.fetch_sub(1, Ordering::SeqCst);
            slot.stage.on_tick(now);
            self.free.fetch_add(1, Ordering::SeqCst);
            let next = align_up(self.since_epoch(Instant::now()) + 1, self.tick_ns);
            self.next_tick[index].store(next, Ordering::Relaxed);
        }
    }

    fn next_tick(&self) -> u64 {
        self.next_tick
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .min()
            .unwrap_or(NEVER)
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn try_finish(&self) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return true;
        }
        if !self.stop.load(Ordering::SeqCst) {
            return false;
        }
        if self.dead() {
            // No handler is left to answer what waits: it is dropped with the stage, which
            // is better than a queue nobody can ever empty holding the node's stop forever.
            while self.receiver.try_recv().is_ok() {}
        }
        if !self.receiver.is_empty() {
            return false;
        }
        let mut all = true;
        for index in 0..self.slots.len() {
            match self.slots[index].try_lock() {
                Ok(mut guard) => {
                    if let Some(mut slot) = guard.take() {
                        self.free.fetch_sub(1, Ordering::SeqCst); // a stopped slot serves no more
                        slot.stage.on_stop();
                    }
                    self.next_tick[index].store(NEVER, Ordering::Relaxed);
                }
                Err(TryLockError::Poisoned(_)) => {} // its handler panicked: nothing to stop
                Err(TryLockError::WouldBlock) => all = false,
            }
        }
        if all {
            self.stopped.store(true, Ordering::SeqCst);
        }
        all
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn dead(&self) -> bool {
        self.slots.iter().all(Mutex::is_poisoned)
    }
}

/// A stage in the pool, to stop.
pub struct StageHandle {
    name: &'static str,
    stage: Arc<dyn Runnable>,
    shared: Arc<PoolShared>,
}

impl StageHandle {
    pub(super) fn new(
        name: &'static str,
        stage: Arc<dyn Runnable>,
        shared: Arc<PoolShared>,
    ) -> StageHandle {
        StageHandle {
            name,
            stage,
            shared,
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Asks the stage to finish its queued events and stop.
    pub fn request_stop(&self) {
        self.stage.request_stop();
        self.shared.wake_all();
    }

    /// Stops the stage: waits until its queue drained and every slot's `on_stop` ran.
    pub fn stop_and_join(self) {
        self.request_stop();
        while !self.stage.stopped() {
            if self.shared.stages.get().is_none() || self.shared.no_workers_left() {
                // Never started, its start failed or its workers died: nobody else will run
                // it, so what its queue holds is served here (each request gets its answer),
                // then it stops. A thread of the other pool may still hold a slot for a
                // moment (helping a blocked send): then this tries again.
                while self.stage.runnable() && self.stage.run_batch(&self.shared) {}
                if self.stage.try_finish() {
                    break;
                }
            } else {
                self.shared.wake_all();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
