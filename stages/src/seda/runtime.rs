//! The thin driver that runs a stage's handler on a pool of named threads.

use super::{Queued, StageReceiver, StageSpec, StageStats};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a parked worker sleeps before re-checking its stop flag, so shutdown is prompt even
/// for a stage with a long tick.
const MAX_PARK: Duration = Duration::from_millis(50);

/// A stage's logic. One value per worker thread; it sees only its events and the clock the
/// driver passes in, so the same logic can be driven by a simulator.
pub trait Stage: Send + 'static {
    /// The closed set of events the stage takes.
    type Event: Send + 'static;

    /// Handles a batch of events (the handler drains `batch`). `now` is when the batch started.
    fn handle_batch(&mut self, now: Instant, batch: &mut Vec<Self::Event>);

    /// Runs every `tick` of the spec, and whenever a batch ends past the next tick.
    fn on_tick(&mut self, _now: Instant) {}

    /// Runs once when the worker stops, after its queue drained.
    fn on_stop(&mut self) {}
}

/// The running threads of a stage.
pub struct StageHandle {
    name: &'static str,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StageHandle {
    /// The stage's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Asks the workers to finish the queued events and exit.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops the stage and waits for its workers.
    pub fn stop_and_join(self) {
        self.request_stop();
        for thread in self.threads {
            // A worker that panicked has already reported through the panic hook; shutdown
            // goes on with the other stages.
            let _ = thread.join();
        }
    }
}

/// Starts `spec.threads` workers, each running the handler `make(thread_index)` returns.
/// (Background machines pace themselves with their stage's `Gate`; the runtime never sleeps
/// on their behalf.)
pub fn spawn_stage<S: Stage>(
    spec: &StageSpec,
    receiver: StageReceiver<S::Event>,
    mut make: impl FnMut(usize) -> S,
) -> std::io::Result<StageHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(spec.threads);
    for index in 0..spec.threads.max(1) {
        let worker = Worker {
            stage: make(index),
            receiver: receiver.receiver.clone(),
            stats: Arc::clone(&receiver.stats),
            spec: spec.clone(),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name(format!("{}-{index}", spec.name))
            .spawn(move || worker.run())?;
        threads.push(thread);
    }
    Ok(StageHandle {
        name: spec.name,
        stop,
        threads,
    })
}

struct Worker<S: Stage> {
    stage: S,
    receiver: Receiver<Queued<S::Event>>,
    stats: Arc<StageStats>,
    spec: StageSpec,
    stop: Arc<AtomicBool>,
}

/// What waiting for the next event gave.
enum Next<E> {
    Event(Queued<E>),
    Idle,
    Closed,
}

impl<S: Stage> Worker<S> {
    fn run(mut self) {
        let batch_max = self.spec.batch_max.max(1);
        let mut batch = Vec::with_capacity(batch_max);
        let mut waits = Vec::with_capacity(batch_max);
        let mut next_tick = Instant::now() + self.spec.tick;
        loop {
            match self.next_event(next_tick) {
                Next::Event(first) => {
                    self.collect_batch(first, batch_max, &mut batch, &mut waits);
                    self.handle(&mut batch, &mut waits);
                }
                Next::Idle => {}
                Next::Closed => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.stage.on_tick(now);
                next_tick = now + self.spec.tick;
            }
            if self.stop.load(Ordering::Acquire) && self.receiver.is_empty() {
                break;
            }
        }
        self.stage.on_stop();
    }

    /// Polls for `spin`, then parks until an event, the next tick, or `MAX_PARK`.
    fn next_event(&self, next_tick: Instant) -> Next<S::Event> {
        let spin_until = Instant::now() + self.spec.spin;
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Next::Event(event),
                Err(TryRecvError::Disconnected) => return Next::Closed,
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= spin_until || self.stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::yield_now();
        }
        let park = next_tick
            .saturating_duration_since(Instant::now())
            .min(MAX_PARK);
        match self.receiver.recv_timeout(park) {
            Ok(event) => Next::Event(event),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    fn collect_batch(
        &self,
        first: Queued<S::Event>,
        batch_max: usize,
        batch: &mut Vec<S::Event>,
        waits: &mut Vec<Duration>,
    ) {
        let now = Instant::now();
        waits.push(now.saturating_duration_since(first.enqueued_at));
        batch.push(first.event);
        while batch.len() < batch_max {
            match self.receiver.try_recv() {
                Ok(queued) => {
                    waits.push(now.saturating_duration_since(queued.enqueued_at));
                    batch.push(queued.event);
                }
                Err(_) => break,
            }
        }
    }

    fn handle(&mut self, batch: &mut Vec<S::Event>, waits: &mut Vec<Duration>) {
        self.stats.busy_threads.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.stage.handle_batch(started, batch);
        batch.clear();
        self.stats.on_batch(waits, started.elapsed());
        self.stats.busy_threads.fetch_sub(1, Ordering::Relaxed);
        waits.clear();
    }
}

#[cfg(test)]
mod tests;
