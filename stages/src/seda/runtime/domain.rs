//! Threads that send to pool stages: a thread domain outside the pool (the intake's loop runs
//! some stages between its turns) and the [`Wake`] every pool stage's queue pokes, which
//! decides whether a send wakes a worker and what a blocked send does instead of waiting.

use super::{PoolShared, Runnable, DOMAIN_STAGES, FAMILY_OF, IN_BACKGROUND, WORKER_OF};
use crate::seda::{Help, Wake};
use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The longest batch a domain's thread ran over some passes, and its stage's name: what a
/// slow turn of the loop went to.
pub type SlowestBatch = Option<(&'static str, Duration)>;

/// Some stages of a pool, run by a thread outside it (see [`WorkerPool::domain`]).
pub struct Domain {
    pub(super) shared: Arc<PoolShared>,
    pub(super) names: Vec<&'static str>,
    pub(super) stages: OnceLock<Vec<Arc<dyn Runnable>>>,
}

impl Domain {
    /// Makes the calling thread count as one of the pool's workers: its sends to pool stages
    /// wake nobody (it runs them itself), and a blocking send to a full queue runs that
    /// stage. Call once, on the thread that will call [`Domain::run_pass`].
    pub fn enter(&self) {
        WORKER_OF.with(|w| w.set(self.shared.id()));
        FAMILY_OF.with(|f| f.set(self.shared.family));
        DOMAIN_STAGES.with(|d| *d.borrow_mut() = Some(self.names.clone()));
    }

    fn stages(&self) -> &[Arc<dyn Runnable>] {
        match self.shared.stages.get() {
            Some(all) => self.stages.get_or_init(|| {
                all.iter()
                    .filter(|s| self.names.contains(&s.name()))
                    .cloned()
                    .collect()
            }),
            None => &[], // not started yet
        }
    }

    /// Whether one of its stages has work a slot is free for.
    pub fn runnable(&self) -> bool {
        self.stages().iter().any(|s| s.runnable())
    }

    /// One batch of each of its stages that has work; whether any ran. `slowest` keeps the
    /// longest batch so far.
    ///
    /// Unlike a worker it wakes no helper for the work that waits: the loop runs its domain's
    /// stages itself between its turns, and helpers only fought it for the same slots (a
    /// 3-node cluster on two cores served 14 % more without them, one node the same).
    pub fn run_pass(&self, slowest: &mut SlowestBatch) -> bool {
        let mut ran = false;
        for stage in self.stages() {
            if stage.runnable() && !stage.stopped() {
                let started = Instant::now();
                ran |= stage.run_batch(&self.shared);
                let took = started.elapsed();
                if slowest.is_none_or(|(_, longest)| took > longest) {
                    *slowest = Some((stage.name(), took));
                }
            }
        }
        ran
    }
}

/// A pool stage's queue's [`Wake`].
pub(super) struct PoolWake {
    pub(super) shared: Arc<PoolShared>,
    pub(super) stage: &'static str,
    /// The stage itself, found by name once the pool has started (`closed` is asked on
    /// every send, so it must not search the stages each time).
    pub(super) target: OnceLock<Arc<dyn Runnable>>,
}

impl PoolWake {
    fn on_worker(&self) -> bool {
        WORKER_OF.with(|w| w.get()) == self.shared.id()
    }

    /// Whether this thread runs the stage on its next pass: a worker runs every stage, a
    /// domain's thread only its own.
    fn runs_here(&self) -> bool {
        DOMAIN_STAGES.with(|d| match &*d.borrow() {
            None => true,
            Some(domain) => domain.contains(&self.stage),
        })
    }

    fn target(&self) -> Option<&Arc<dyn Runnable>> {
        if let Some(stage) = self.target.get() {
            return Some(stage);
        }
        let found = self
            .shared
            .stages()
            .iter()
            .find(|s| s.name() == self.stage)?;
        Some(self.target.get_or_init(|| Arc::clone(found)))
    }
}

impl Wake for PoolWake {
    fn wake(&self) {
        // A worker runs what it queued on its next pass; a wake-up would only hand the event
        // to another thread at the cost of a context switch. Not so from a background batch,
        // which may run long while a foreground event waits.
        if self.on_worker() && !IN_BACKGROUND.with(Cell::get) && self.runs_here() {
            return;
        }
        self.shared.notify();
    }

    fn help(&self) -> Help {
        // Any thread of the family runs the full stage: a background worker blocked on a
        // foreground queue, or the loop on a background one, must not wait for a worker of
        // the other pool that may itself wait for it. So does any other thread once the
        // stage's pool has no worker left (they panicked, or its start failed): a stage
        // stopped then is drained on the stopping thread (`StageHandle::stop_and_join`),
        // and its replies must not wait for workers that will never come.
        if FAMILY_OF.with(|f| f.get()) != self.shared.family && !self.shared.no_workers_left() {
            return Help::Block;
        }
        match self.target() {
            None => Help::Block, // not started yet: the caller waits as before
            // A stage whose every handler panicked will never take the event: the sender
            // hears it is closed rather than spinning on a queue nobody empties.
            Some(stage) if stage.stopped() || stage.dead() => Help::Closed,
            Some(stage) if stage.run_batch(&self.shared) => Help::Ran,
            Some(_) => Help::Busy,
        }
    }

    fn closed(&self) -> bool {
        self.target().is_some_and(|s| s.stopped() || s.dead())
    }
}
