//! The worker pools that serve the stages' queues (issue 12): a node's foreground pool and
//! its background pool, one family.
//!
//! A stage keeps what SEDA gives it: its own bounded queue, statistics, class and `Overloaded`
//! answer. What changed is who runs it. One stage per thread made every hop a thread wake-up
//! (~50 µs on these VMs), and seven threads spinning before they parked fought over two cores.
//! Now one pool of workers serves all the queues (Cassandra's shared executor pool; Welsh's
//! thread domains):
//!
//! - **A stage is a set of slots**: `threads` of the stage table is now its concurrency limit,
//!   one slot (one handler value behind a lock) per worker that may serve it at once.
//!   Single-threaded stages have one slot, so their handler still sees one event at a time.
//! - **A hop inside the pool wakes nobody.** A worker that queues an event for another stage
//!   runs that stage's batch itself on its next pass, so parse → coordinate → storage →
//!   coordinate runs on one thread without a wake-up. Before it runs a batch while other
//!   work waits and nobody spins, it wakes one parked worker to help.
//! - **At most one worker spins**, and only after a pass that handled events: an idle node,
//!   whose passes run only ticks, parks at once.
//! - **Ticks are aligned** to multiples of their period since the pool started, so one wake-up
//!   runs every stage's 100 ms tick; a stage whose handler says it is idle is not ticked.
//! - **Blocking edges cannot deadlock the pool.** A reply sent to a full queue (a blocking
//!   send) from a worker runs a batch of the full stage on the sending worker instead of
//!   waiting for a worker that may never come (see [`Wake::help`]). The blocking edges form no
//!   cycle (ARCHITECTURE.md), so this nests at most as deep as the pipeline.
//! - **Pools of one family.** A node runs two pools: the foreground's, and a small one for the
//!   background stages whose threads run at a lower CPU priority ([`WorkerPool::beside`]).
//!   Each pool's workers serve only its own stages, but a blocked send helps across the family
//!   (a worker of either pool, or the intake's loop, runs the full stage of the other), so
//!   splitting the stages over two pools adds no way to deadlock.

use super::{StageReceiver, StageSpec, Wake};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The last family number given out (see [`WorkerPool::beside`]); 0 means "no family".
static FAMILIES: AtomicUsize = AtomicUsize::new(0);
/// Longest a parked worker sleeps with no tick due (a safety net: an event queued from outside
/// the pool and every stop request unpark a worker; an event a worker queues is run by that
/// worker on its next pass).
const MAX_PARK: Duration = Duration::from_secs(1);
/// A tick deadline meaning "not ticked until its next batch" (an idle handler).
const NEVER: u64 = u64::MAX;

/// A stage's logic. One value per slot; it sees only its events and the clock the driver
/// passes in, so the same logic can be driven by a simulator.
pub trait Stage: Send + 'static {
    /// The closed set of events the stage takes.
    type Event: Send + 'static;

    /// Handles a batch of events (the handler drains `batch`). `now` is when the batch started.
    fn handle_batch(&mut self, now: Instant, batch: &mut Vec<Self::Event>);

    /// Runs every `tick` of the spec while the stage is not idle.
    fn on_tick(&mut self, _now: Instant) {}

    /// Whether a tick would do nothing until the next event arrives (then it is not ticked,
    /// so an idle node wakes no thread for it).
    fn idle(&self) -> bool {
        false
    }

    /// Runs once when the stage stops, after its queue drained.
    fn on_stop(&mut self) {}
}

/// The pool's shape: `[pool]` in the config.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Worker threads serving the pool's stages.
    pub workers: usize,
    /// The workers' thread names: this, a dash and the worker's index.
    pub thread_name: &'static str,
    /// Steps of nice (0..=19) the workers run below the process's priority (0: none): each
    /// worker lowers itself as it starts (the background pool's, while the controller is on).
    pub nice_steps: i32,
    /// How long the one spinning worker polls for work after a pass that handled events,
    /// before it parks.
    pub spin: Duration,
}

impl PoolSettings {
    /// One worker per core plus one, so a worker waiting on an fsync leaves every core busy.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
    }
}

thread_local! {
    /// The pool this thread works for (its address), 0 on other threads.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
    /// The family of that pool (see [`WorkerPool::beside`]), 0 on other threads.
    static FAMILY_OF: Cell<usize> = const { Cell::new(0) };
    /// The stages of the domain this thread runs (see [`Domain`]), if it is not a worker.
    static DOMAIN_STAGES: RefCell<Option<Vec<&'static str>>> = const { RefCell::new(None) };
    /// Whether this worker is running a background stage's batch: its sends then wake a
    /// worker, so foreground work does not wait for a long background batch to end.
    static IN_BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// What a worker can do with a stage, whatever its event type.
trait Runnable: Send + Sync {
    fn name(&self) -> &'static str;
    /// Events wait and a slot is free to take them.
    fn runnable(&self) -> bool;
    /// Runs one batch on a free slot; false if there was nothing to run or no free slot.
    fn run_batch(&self, shared: &PoolShared) -> bool;
    /// Runs the ticks that are due on free slots.
    fn run_ticks(&self, now: Instant);
    /// The earliest tick deadline of its slots (nanoseconds since the pool's epoch).
    fn next_tick(&self) -> u64;
    /// Asks the stage to stop once its queue is empty.
    fn request_stop(&self);
    /// Stops the slots it can if a stop was asked and the queue is empty; whether stopped.
    /// A stage whose every handler panicked stops with what its queue holds dropped.
    fn try_finish(&self) -> bool;
    fn stopped(&self) -> bool;
    /// Every slot's handler panicked: nothing can run it any more.
    fn dead(&self) -> bool;
}

/// What a pool's workers share.
struct PoolShared {
    /// The pools whose blocked sends help each other (see [`WorkerPool::beside`]).
    family: usize,
    epoch: Instant,
    spin: Duration,
    stages: OnceLock<Vec<Arc<dyn Runnable>>>,
    /// Workers spinning now (at most one).
    spinning: AtomicUsize,
    /// Parked workers, to unpark.
    idle: Mutex<Vec<(usize, Thread)>>,
    idle_count: AtomicUsize,
    /// Until when the timekeeper sleeps: the one parked worker that sleeps only until the
    /// next tick, while the others sleep until unparked, so an idle pool wakes one thread per
    /// tick, not all of them. Nanoseconds since the epoch; `NEVER`: no worker keeps time,
    /// `NEVER - 1`: one is working out how long. With its thread, to unpark it when a tick is
    /// armed earlier than that.
    keeper_until: AtomicU64,
    keeper: Mutex<Option<Thread>>,
    shutdown: AtomicBool,
    /// Workers that have started (and tried to lower their priority).
    started: AtomicUsize,
    /// Workers whose thread was spawned (set before spawning, so no worker can be seen to
    /// exit before it is counted; lowered to those spawned when a spawn fails).
    spawned: AtomicUsize,
    /// Workers that have returned: after a shutdown, or unwinding from a panic.
    exited: AtomicUsize,
    /// Workers that could not lower their priority.
    nice_failures: AtomicUsize,
}

impl PoolShared {
    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// Whether the pool was started and every worker it spawned has returned (a shutdown, a
    /// start that failed part-way, or panics): nobody is left to run its stages.
    fn no_workers_left(&self) -> bool {
        self.stages.get().is_some()
            && self.exited.load(Ordering::SeqCst) >= self.spawned.load(Ordering::SeqCst)
    }

    fn stages(&self) -> &[Arc<dyn Runnable>] {
        self.stages.get().map_or(&[], Vec::as_slice)
    }

    fn idle_list(&self) -> MutexGuard<'_, Vec<(usize, Thread)>> {
        // The list is only pushed to and popped from; a panic cannot leave it half-changed.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn runnable_count(&self) -> usize {
        self.stages().iter().filter(|s| s.runnable()).count()
    }

    /// Wakes a parked worker unless one spins (it will find the work) or none is parked.
    fn notify(&self) {
        // Pairs with the fence in `park`: either this sees the worker listed as idle, or the
        // worker's re-check after listing itself sees the event just queued.
        fence(Ordering::SeqCst);
        if self.spinning.load(Ordering::SeqCst) > 0 || self.idle_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.wake_one();
    }

    fn wake_one(&self) {
        let woken = {
            let mut idle = self.idle_list();
            let woken = idle.pop();
            if woken.is_some() {
                self.idle_count.fetch_sub(1, Ordering::SeqCst);
            }
            woken
        };
        if let Some((_, thread)) = woken {
            thread.unpark();
        }
    }

    fn keeper_lock(&self) -> MutexGuard<'_, Option<Thread>> {
        // Only ever replaced whole; a panic cannot leave it half-changed.
        self.keeper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot's tick was armed at `at` (it had been idle): unparks the timekeeper if it
    /// sleeps past it, so an idle-then-busy coordinator's 5 ms deadlines are not late.
    fn tick_armed(&self, at: u64) {
        let until = self.keeper_until.load(Ordering::SeqCst);
        if until != NEVER && at < until {
            if let Some(thread) = self.keeper_lock().clone() {
                thread.unpark();
            }
        }
    }

    /// Called before a batch: if other work waits and nobody spins, wake a worker to take
    /// it rather than let it wait for this batch to end.
    fn wake_helper(&self) {
        if self.spinning.load(Ordering::SeqCst) == 0
            && self.idle_count.load(Ordering::SeqCst) > 0
            && self.runnable_count() > 1
        {
            self.wake_one();
        }
    }

    fn wake_all(&self) {
        let woken: Vec<(usize, Thread)> = {
            let mut idle = self.idle_list();
            self.idle_count.store(0, Ordering::SeqCst);
            std::mem::take(&mut *idle)
        };
        for (_, thread) in woken {
            thread.unpark();
        }
    }

    /// Polls for work for `spin` if no other worker spins; whether work turned up.
    fn spin_for_work(&self) -> bool {
        if self.spin.is_zero()
            || self
                .spinning
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        let until = Instant::now() + self.spin;
        let found = loop {
            if self.runnable_count() > 0 {
                break true;
            }
            if Instant::now() >= until || self.shutdown.load(Ordering::Relaxed) {
                break false;
            }
            // Yield rather than burn: on two cores the client may need this one.
            std::thread::yield_now();
        };
        self.spinning.store(0, Ordering::SeqCst);
        found
    }

    /// Parks until unparked or the next tick is due.
    fn park(&self, index: usize) {
        {
            let mut idle = self.idle_list();
            idle.push((index, std::thread::current()));
            self.idle_count.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        // Claimed and announced before the ticks are read: a tick armed from here on unparks
        // us (an unpark before the park makes the park return at once).
        let keeps_time = self
            .keeper_until
            .compare_exchange(NEVER, NEVER - 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        let wait = if keeps_time {
            *self.keeper_lock() = Some(std::thread::current());
            let next_tick = self.stages().iter().map(|s| s.next_tick()).min();
            let now = self.epoch.elapsed().as_nanos() as u64;
            match next_tick {
                Some(tick) if tick != NEVER => Duration::from_nanos(tick.saturating_sub(now)),
                _ => MAX_PARK,
            }
            .min(MAX_PARK)
        } else {
            MAX_PARK
        };
        if keeps_time {
            let until = self.epoch.elapsed().as_nanos() as u64 + wait.as_nanos() as u64;
            // Only lowers the announcement: a tick armed meanwhile has already unparked us.
            let _ = self.keeper_until.compare_exchange(
                NEVER - 1,
                until,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        let stop_pending = self.stages().iter().any(|s| !s.stopped() && s.try_finish());
        if self.runnable_count() == 0
            && !stop_pending
            && !wait.is_zero()
            && !self.shutdown.load(Ordering::SeqCst)
        {
            std::thread::park_timeout(wait);
        } else {
            // Work seemed to be waiting; yield rather than come straight back to a slot lock
            // another thread holds.
            std::thread::yield_now();
        }
        if keeps_time {
            self.keeper_until.store(NEVER, Ordering::SeqCst);
        }
        let mut idle = self.idle_list();
        if let Some(at) = idle.iter().position(|(i, _)| *i == index) {
            idle.swap_remove(at);
            self.idle_count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The pool: built with its stages, then started.
pub struct WorkerPool {
    shared: Arc<PoolShared>,
    settings: PoolSettings,
    stages: Vec<Arc<dyn Runnable>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// A pool not yet started: queues take its [`WorkerPool::waker`], stages are added with
    /// [`WorkerPool::add_stage`], then [`WorkerPool::start`] starts the workers.
    pub fn new(settings: PoolSettings) -> WorkerPool {
        let family = FAMILIES.fetch_add(1, Ordering::Relaxed) + 1;
        WorkerPool::in_family(settings, family, Instant::now())
    }

    /// A second pool of the same family: its workers serve only the stages added to it (a
    /// node's background stages, on threads it runs at a lower CPU priority), and a send
    /// blocked on a full queue of either pool, from a worker of either or from a domain,
    /// runs a batch of the full stage itself, as inside one pool (see [`Wake::help`]). Its
    /// ticks keep this pool's epoch.
    pub fn beside(&self, settings: PoolSettings) -> WorkerPool {
        WorkerPool::in_family(settings, self.shared.family, self.shared.epoch)
    }

    fn in_family(settings: PoolSettings, family: usize, epoch: Instant) -> WorkerPool {
        WorkerPool {
            shared: Arc::new(PoolShared {
                family,
                epoch,
                spin: settings.spin,
                stages: OnceLock::new(),
                spinning: AtomicUsize::new(0),
                idle: Mutex::new(Vec::new()),
                idle_count: AtomicUsize::new(0),
                keeper_until: AtomicU64::new(NEVER),
                keeper: Mutex::new(None),
                shutdown: AtomicBool::new(false),
                started: AtomicUsize::new(0),
                spawned: AtomicUsize::new(0),
                exited: AtomicUsize::new(0),
                nice_failures: AtomicUsize::new(0),
            }),
            settings,
            stages: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// What a stage's queue pokes after a send: it wakes a worker when needed, and lets a
    /// worker blocked on that full queue run the stage itself.
    pub fn waker(&self, spec: &StageSpec) -> Arc<dyn Wake> {
        Arc::new(PoolWake {
            shared: Arc::clone(&self.shared),
            stage: spec.name,
            target: OnceLock::new(),
        })
    }

    /// Adds a stage with one handler per slot (`spec.threads` of them), made by `make(slot)`.
    /// Its queue must have been made with this pool's [`WorkerPool::waker`].
    pub fn add_stage<S: Stage>(
        &mut self,
        spec: &StageSpec,
        receiver: StageReceiver<S::Event>,
        make: impl FnMut(usize) -> S,
    ) -> StageHandle {
        let stage = Arc::new(PoolStage::new(spec, receiver, self.shared.epoch, make));
        self.stages.push(Arc::clone(&stage) as Arc<dyn Runnable>);
        StageHandle::new(spec.name, stage, Arc::clone(&self.shared))
    }

    /// A thread domain for a thread outside the pool (the intake's loop): it may run batches
    /// of the named stages between its own work, so a request whose stages all run there
    /// needs no thread wake-up at all (Welsh's thread domains; Redis's single loop).
    pub fn domain(&self, stages: &[&'static str]) -> Domain {
        Domain {
            shared: Arc::clone(&self.shared),
            names: stages.to_vec(),
            stages: OnceLock::new(),
        }
    }

    /// Starts the workers and returns once each has started (and, with `nice_steps`, tried
    /// to lower its priority: see [`WorkerPool::nice_failures`]). Stages are served in the
    /// order they were added.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.shared.stages.get().is_some() {
            return Ok(()); // already started
        }
        // Counted before the stages are published, so `no_workers_left` never sees a started
        // pool with no worker counted yet.
        let workers = self.settings.workers.max(1);
        self.shared.spawned.store(workers, Ordering::SeqCst);
        let stages = std::mem::take(&mut self.stages);
        if self.shared.stages.set(stages).is_err() {
            return Ok(());
        }
        for index in 0..workers {
            let shared = Arc::clone(&self.shared);
            let nice_steps = self.settings.nice_steps;
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{index}", self.settings.thread_name))
                .spawn(move || {
                    // Counted on the way out however the worker leaves: a machine that
                    // panics unwinds through here, and a stage whose pool has no worker left
                    // must then finish itself (`no_workers_left`) rather than wait for it.
                    let _exit = CountsExit(&shared.exited);
                    if nice_steps > 0 && lower_own_priority(nice_steps).is_err() {
                        shared.nice_failures.fetch_add(1, Ordering::SeqCst);
                    }
                    shared.started.fetch_add(1, Ordering::SeqCst);
                    work(&shared, index);
                });
            match spawned {
                Ok(thread) => self.threads.push(thread),
                Err(e) => {
                    // All or nothing: the workers already running stop, so that stopping a
                    // stage (`StageHandle::stop_and_join`) runs its end itself rather than
                    // waiting for workers that will never come.
                    self.shared.spawned.store(index, Ordering::SeqCst);
                    self.shared.shutdown.store(true, Ordering::SeqCst);
                    self.shared.wake_all();
                    for thread in self.threads.drain(..) {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        // A thread starts within microseconds; the bound only keeps a wedged box from
        // hanging the node's start.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.started.load(Ordering::SeqCst) < workers && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Workers that could not lower their priority by `nice_steps` (they run at the
    /// process's own).
    pub fn nice_failures(&self) -> usize {
        self.shared.nice_failures.load(Ordering::SeqCst)
    }

    /// Stops the workers (stop the stages first, with their handles, in shutdown order).
    pub fn stop_and_join(mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake_all();
        for thread in self.threads.drain(..) {
            // A worker that panicked has already reported through the panic hook.
            let _ = thread.join();
        }
    }
}

/// Counts a worker as exited when dropped, which a panic's unwinding does too.
struct CountsExit<'a>(&'a AtomicUsize);

impl Drop for CountsExit<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A worker's life: passes over every stage until the pool shuts down.
fn work(shared: &Arc<PoolShared>, index: usize) {
    WORKER_OF.with(|w| w.set(shared.id()));
    FAMILY_OF.with(|f| f.set(shared.family));
    loop {
        let mut handled_events = false;
        let now = Instant::now();
        for stage in shared.stages() {
            stage.run_ticks(now);
            if stage.runnable() {
                shared.wake_helper();
                handled_events |= stage.run_batch(shared);
            }
            stage.try_finish();
        }
        if handled_events {
            continue;
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if !shared.spin_for_work() {
            shared.park(index);
        }
    }
}

/// Lowers the calling thread's priority by `steps` of nice below its own (capped at 19:
/// raising nice needs no privilege): `PRIO_PROCESS` with no id names the calling thread on
/// Linux, which keeps a nice value per thread.
#[cfg(target_os = "linux")]
fn lower_own_priority(steps: i32) -> std::io::Result<()> {
    let nice = rustix::process::getpriority_process(None)?;
    Ok(rustix::process::setpriority_process(
        None,
        (nice + steps).min(19),
    )?)
}

/// Lowers the calling thread's priority (not on this platform: does nothing).
#[cfg(not(target_os = "linux"))]
fn lower_own_priority(_steps: i32) -> std::io::Result<()> {
    Ok(())
}

fn align_up(ns: u64, period: u64) -> u64 {
    let period = period.max(1);
    ns.div_ceil(period).saturating_mul(period)
}

mod domain;
mod stage;
use domain::PoolWake;
pub use domain::{Domain, SlowestBatch};
use stage::PoolStage;
pub use stage::StageHandle;

#[cfg(test)]
mod tests;
