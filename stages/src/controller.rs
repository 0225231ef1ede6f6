//! The resource controller (Dynamo §6.5; Welsh & Culler 2003's AIMD on a latency percentile):
//! once a period it compares the foreground's recent latency with the SLA target and sets the
//! total rate background work may spend, split over the background stages.
//!
//! Pure: the driver hands it each period's histograms and every gate's reading, and carries
//! out the rates it returns; it reads no clock and touches no gate itself. The law:
//! - **signal**: the target percentile of every client request's end-to-end latency at this
//!   node's coordinator over the last `window_periods` periods, or of the storage queue wait
//!   if that is higher (storage is where background writes meet foreground ones);
//! - **idle foreground** (fewer than `idle_requests` requests in the window): the budget goes
//!   straight to `max_rate` — nothing to protect, so background work runs at full speed;
//! - **foreground back from idle**: the budget goes back to what it was before the idle spell
//!   (at a node's start, the one it started with: the configured rates' sum, where an
//!   unlimited stage counts as `max_rate`). The idle ceiling is no measure of what a
//!   busy foreground tolerates: kept, it let a backlog run at full speed until the first
//!   missed target, and those periods were the worst of the foreground's tail. The floor is
//!   no measure either: a node restarted with hints waiting for it (issue 9's benchmark) spent
//!   the first 10-15 s of its drain climbing from 20 units/s to the 2-4k its foreground
//!   tolerated;
//! - **target missed** (over the window, and still in the newest period, so one slow period
//!   that lingers in the window is cut for once): the rate the stages actually used (or the
//!   budget, if lower) × the target / the newest period's signal, but at least × `decrease_factor`
//!   (multiplicative decrease of what is really spent, graded by the miss: a miss of 2× the
//!   target at the default factor halves it, one of 1.2× cuts a sixth). A fixed halving for
//!   every miss sawed a returning node's budget from 4-5k units/s down to 200-500 on signals
//!   of 19-20 ms against a 17 ms target, and its drain averaged half of the rate the target
//!   held at (issue 9's benchmark); a big miss, a step up in load, is still halved at once.
//!   But only when the miss is more than [`MISS_AT_ONCE`] × the target or the period before
//!   missed too. A first miss by less **holds** the budget for a period (`watch`): at a target
//!   near the foreground's own noise a single 250 ms period (a couple of hundred requests, so
//!   its p99 is its second-worst) crossed it often with no background to blame, and each such
//!   crossing halved the budget (issue 9's benchmark: a returning node pacing its hints on a
//!   21 ms target whose own signal wandered 10-30 ms took 113 s to drain what unthrottled took
//!   in 5). A real step up in load is still halved within two periods;
//! - **target held**: budget + `increase_per_period` (additive increase), but only while the
//!   stages used at least [`GROW_WHEN_USED`] of it (CockroachDB's rule: a budget nobody uses
//!   must not pile up into a burst later);
//! - **target held with room** (the signal, the higher of the window's and the newest
//!   period's, below the target): the budget grows to a factor × itself if that is more than
//!   the step, the factor `headroom_factor` at or below [`HEADROOM`] of the target and falling
//!   in a straight line to 1 at the target (TCP's slow start, graded; on the same use rule).
//!   Additive alone climbed 80 units/s per second at the defaults: a backlog that drains at
//!   19k/s unthrottled took 7.5-9.6× as long under the controller while the foreground sat at
//!   a third of its target, and with the full factor only below half the target a node whose
//!   foreground sat at 55-75 % of it still crawled (issue 9's benchmark). The newest period
//!   counts because the window lags: judged on the window alone, two nodes climbed from 1k to
//!   12-16k units/s in the 2 s it took their own load to show in it, and the whole cluster's
//!   tail paid (the benchmark at 300k keys). Near the target the factor nears 1 and the
//!   additive step is what is left, so the probing there is gentle (but see recovery);
//! - **recovery after a miss** (target held over the window and in the newest period, budget
//!   below [`RECOVER_TO`] of the rate spent when the target was last missed): the budget grows
//!   by the whole `headroom_factor` up to that mark, however close the signal is to the target
//!   (BIC-TCP's search back towards the last rate that failed); whichever rule grows it most
//!   applies. With the additive step alone, a node cut from 3.7k to 0.7k units/s needed 30 s
//!   to earn back half of it, and its backlog, the largest, set the drain time of the whole
//!   cluster;
//! - **the foreground's own level** (the target in force): a window in which every period's
//!   background work stayed at the floor (at most `min_rate` per stage) measures what the
//!   foreground costs alone, the *quiet signal*; for the next [`QUIET_FOR_PERIODS`] periods
//!   the target in force is the higher of `target_ms` and [`QUIET_MARGIN`] × that. A miss
//!   the foreground makes by itself is not background's to pay: cutting the background
//!   cannot fix it, and it starved the backlog. In issue 9's benchmark, after the work left
//!   the intake's loop, every node's signal sat at 10-17 ms against an 8 ms target with the
//!   budgets at the floor (20-40 units/s) and almost nothing running, and the drain took 13×
//!   its unthrottled time; background work still may not lift the signal more than the
//!   margin above the foreground's own level. The target in force is at most
//!   [`QUIET_CEILING`] × `target_ms`: a foreground that misses by more than that alone is
//!   overloaded, and background work stays at the floor (also the bound on any ratchet, a
//!   quiet window that still carried the cost of earlier background work);
//! - **split**: stages with a backlog share the budget by their configured shares; every
//!   stage gets at least `min_rate` (the floor, so a backlog always drains, however loaded
//!   the foreground); a pinned stage is left alone and outside the budget.

use crate::event::StageId;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// A stage's share of the budget when `[controller.shares]` does not name it: 3 for hinted
/// handoff, 1 for the others. When a node returns, handoff and anti-entropy both have a
/// backlog and both move the writes it missed: handoff knows exactly which (one cheap merge
/// per hint, batched), anti-entropy finds them by walking trees and digests, at a higher cost
/// per key. With equal shares each got half the budget, and the hints drained at half speed
/// while anti-entropy moved the same keys (issue 9's benchmark); handoff first makes the node
/// whole by the cheap path, and anti-entropy still gets a quarter and the floor.
pub fn default_share(stage: StageId) -> u32 {
    match stage {
        StageId::Handoff => 3,
        _ => 1,
    }
}

/// Fraction of the budget the stages must have used for it to grow.
pub const GROW_WHEN_USED: f64 = 0.5;

/// A signal at or below this fraction of the target has full headroom: a used budget may grow
/// by the whole `headroom_factor` (above it, by less: see `room_factor`).
pub const HEADROOM: f64 = 0.5;

/// After a miss, the budget may grow by `headroom_factor` (rather than by the step) while it
/// is below this fraction of the rate that was being spent when the target was missed.
pub const RECOVER_TO: f64 = 0.8;

/// A miss of the newest period by more than this many times the target is cut at once; by
/// less, only if the period before missed too.
pub const MISS_AT_ONCE: u64 = 2;

/// How far above the foreground's own level (the quiet signal) background work may lift the
/// signal when that level is above the target: the must-hold's own margin (issue 9).
pub const QUIET_MARGIN: f64 = 1.2;

/// Periods a quiet signal stands for (30 s at the default period): the foreground's own level
/// moves with its load, so it is measured again whenever the budget sits at the floor for a
/// window, and forgotten after this long without one.
pub const QUIET_FOR_PERIODS: u64 = 120;

/// The most the foreground's own level raises the target in force: this many × `target_ms`.
pub const QUIET_CEILING: u64 = 3;

/// The controller's knobs: the `[controller]` section of the node's config, read as it is
/// (the config validates it). Once a period the controller compares the foreground's recent
/// latency percentile with `target_ms` and sets the total rate of background work: additive
/// increase while the target holds (multiplicative while the signal is below it, by up to
/// `headroom_factor` at half the target or less), multiplicative decrease graded by the miss
/// (down to `decrease_factor`) when it is missed,
/// split over the background stages by `shares`, each at least `min_rate`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSettings {
    /// Whether it sets rates at all (off: each stage keeps its `rate_per_sec`; it still
    /// measures, for `admin throttle`).
    pub enabled: bool,
    /// The foreground latency percentile the SLA is about, in (0, 100].
    pub target_percentile: f64,
    /// The SLA: that percentile of client requests at or below this many milliseconds.
    pub target_ms: u64,
    /// How often the controller decides, milliseconds.
    pub period_ms: u64,
    /// How many periods the latency window spans.
    pub window_periods: usize,
    /// Units per second the budget grows per period while the target holds.
    pub increase_per_period: u64,
    /// What the budget is multiplied by per period while the signal is at most half the
    /// target (less, down to 1, as it nears the target), and after a miss until it is back at
    /// [`RECOVER_TO`] of the rate then spent; only if that grows it more than the step; in
    /// [1, 2]; 1: additive only.
    pub headroom_factor: f64,
    /// The deepest cut of a missed target, in (0, 1): the budget is multiplied by the target
    /// over the newest period's signal, but never by less than this.
    pub decrease_factor: f64,
    /// The floor of every background stage, units per second: a backlog always drains.
    pub min_rate: u64,
    /// The ceiling of the total budget, units per second; the budget when the foreground
    /// idles.
    pub max_rate: u64,
    /// Fewer client requests than this in the window means the foreground idles.
    pub idle_requests: u64,
    /// Relative share of the budget per background stage (default [`default_share`]).
    pub shares: BTreeMap<StageId, u32>,
    /// How many steps of nice (0..=19) the storage engine's flush and compaction threads run
    /// below the node's own priority while the controller is enabled (0: none; capped at
    /// nice 19): the cost of delivered background writes that no gate paces (see
    /// [`crate::storage::cpu_priority`]).
    pub storage_nice: i32,
    /// How many steps of nice (0..=19) the background workers (`[pool] background_workers`:
    /// the threads that run hinted handoff, anti-entropy, transfers, read repair and storage's
    /// background lane) run below the node's own priority while the controller is enabled
    /// (default 0: none). A waking foreground thread then takes the core at once, but the
    /// background lane takes the same key-stripe and partition-tree locks as the foreground's
    /// storage, and a low-priority thread preempted while holding one stalls the foreground
    /// behind it: at 10, every node's signal in issue 9's benchmark sat at three times the
    /// baseline's while almost no background work ran, and a 1M-key rebuild's worst
    /// foreground p99.9 went from 12 to 162 ms (one run each).
    pub background_nice: i32,
}

impl Default for ControllerSettings {
    fn default() -> ControllerSettings {
        ControllerSettings {
            enabled: true,
            target_percentile: 99.9,
            target_ms: 50,
            period_ms: 250,
            window_periods: 8,
            increase_per_period: 20,
            headroom_factor: 1.25,
            decrease_factor: 0.5,
            min_rate: 20,
            max_rate: 50_000,
            idle_requests: 100,
            shares: BTreeMap::new(),
            storage_nice: 10,
            background_nice: 0,
        }
    }
}

impl ControllerSettings {
    /// How often the controller decides.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

/// One background stage at the end of a period, as the driver read it from its gate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageObservation {
    /// Work waiting (the stage's own count plus its queue).
    pub backlog: u64,
    /// Tokens the stage took during the period.
    pub used: u64,
    /// Whether an operator pinned its rate.
    pub pinned: bool,
}

/// What one period gave the controller.
pub struct Observation {
    /// How long the period really lasted (the loop can be late on a loaded machine).
    pub elapsed: Duration,
    /// End-to-end latency of the client requests answered during the period, microseconds.
    pub foreground_us: Histogram<u64>,
    /// Storage queue waits during the period, microseconds.
    pub storage_wait_us: Histogram<u64>,
    /// Every background stage.
    pub stages: BTreeMap<StageId, StageObservation>,
}

/// What the last period decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The controller is disabled: rates stay as configured.
    Off,
    /// The foreground idled: the budget went to its ceiling.
    Idle,
    /// The foreground came back after idling: the budget went back to what it was before.
    Resume,
    /// The target held and the budget was used: it grew by the step.
    Increase,
    /// The target held with room and the budget was used: it grew by a factor graded by the
    /// room (up to `headroom_factor`).
    Climb,
    /// The target held, the budget was used and is below [`RECOVER_TO`] of the rate spent at
    /// the last miss: it grew by the whole factor towards that.
    Recover,
    /// The target held but the budget was not used: it stayed.
    Hold,
    /// The target was missed: the budget shrank.
    Decrease,
    /// The target was missed for one period, by less than [`MISS_AT_ONCE`] × itself: the
    /// budget stays until the next period says whether the miss persists.
    Watch,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Step::Off => "off",
            Step::Idle => "idle",
            Step::Resume => "resume",
            Step::Increase => "increase",
            Step::Climb => "climb",
            Step::Recover => "recover",
            Step::Hold => "hold",
            Step::Decrease => "decrease",
            Step::Watch => "watch",
        })
    }
}

/// A period's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What was decided.
    pub step: Step,
    /// The signal: the target percentile over the window, microseconds (0 if empty).
    pub signal_us: u64,
    /// Requests in the window.
    pub window_requests: u64,
    /// The total budget now, units per second.
    pub budget_per_sec: u64,
    /// The rate of every unpinned background stage (empty when disabled).
    pub rates: BTreeMap<StageId, u64>,
    /// Units per second each stage used over the period.
    pub used_per_sec: BTreeMap<StageId, u64>,
    /// The foreground's own level: the signal over the last window in which background work
    /// stayed at the floor, if one ended within [`QUIET_FOR_PERIODS`] (0: none).
    pub quiet_us: u64,
}

/// The controller's state between periods.
pub struct ResourceController {
    settings: ControllerSettings,
    /// The last `window_periods` periods' foreground latencies, oldest first.
    foreground: VecDeque<Histogram<u64>>,
    /// The same for the storage queue wait.
    storage_wait: VecDeque<Histogram<u64>>,
    /// The total background budget, units per second.
    budget: f64,
    /// Whether the last period found the foreground idle.
    idle: bool,
    /// The budget before the foreground last went idle (at first, the one the controller
    /// started with): where a foreground back from idle resumes.
    before_idle: f64,
    /// The rate the stages were spending when the target was last missed (0: no miss since
    /// the controller started or the foreground last idled).
    missed_at: f64,
    /// Whether the last period missed the target (over the window and in its own
    /// percentile, as a cut needs).
    missed_last_period: bool,
    /// Units per second the unpinned stages used in each period of the window, oldest first.
    used_window: VecDeque<u64>,
    /// The foreground's own level (see [`QUIET_MARGIN`]), microseconds; 0: none known.
    quiet_us: u64,
    /// Periods since the quiet signal was measured.
    quiet_age: u64,
}

impl ResourceController {
    /// A controller starting at `initial_budget` units per second.
    pub fn new(settings: ControllerSettings, initial_budget: u64) -> ResourceController {
        let budget = (initial_budget as f64).clamp(1.0, settings.max_rate.max(1) as f64);
        ResourceController {
            settings,
            foreground: VecDeque::new(),
            storage_wait: VecDeque::new(),
            budget,
            idle: false,
            before_idle: budget,
            missed_at: 0.0,
            missed_last_period: false,
            used_window: VecDeque::new(),
            quiet_us: 0,
            quiet_age: 0,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    /// One period: takes its observation, returns the rates to set.
    pub fn on_period(&mut self, observation: Observation) -> Decision {
        let window = self.settings.window_periods.max(1);
        let newest_us = newest_percentile(&observation, self.settings.target_percentile);
        push_window(&mut self.foreground, observation.foreground_us, window);
        push_window(&mut self.storage_wait, observation.storage_wait_us, window);
        let (window_requests, foreground_us) =
            percentile(&self.foreground, self.settings.target_percentile);
        let (_, storage_wait_us) = percentile(&self.storage_wait, self.settings.target_percentile);
        let signal_us = foreground_us.max(storage_wait_us);
        let period_secs = observation.elapsed.as_secs_f64().max(1e-3);
        let used_per_sec: BTreeMap<StageId, u64> = observation
            .stages
            .iter()
            .map(|(stage, o)| (*stage, (o.used as f64 / period_secs).round() as u64))
            .collect();
        // What the stages the controller sets used, units per second, and the least they
        // can be held to (the floor each).
        let unpinned: Vec<StageId> = observation
            .stages
            .iter()
            .filter(|(_, o)| !o.pinned)
            .map(|(stage, _)| *stage)
            .collect();
        let used: u64 = unpinned
            .iter()
            .map(|stage| used_per_sec.get(stage).copied().unwrap_or(0))
            .sum();
        let floor_use = self.settings.min_rate.saturating_mul(unpinned.len() as u64);
        self.measure_quiet(signal_us, window_requests, used, floor_use);
        let step = self.adjust_budget(signal_us, newest_us, window_requests, used);
        let rates = if step == Step::Off {
            BTreeMap::new()
        } else {
            self.split(&observation.stages)
        };
        Decision {
            step,
            signal_us,
            window_requests,
            budget_per_sec: if step == Step::Off {
                0
            } else {
                self.budget.round() as u64
            },
            rates,
            used_per_sec,
            quiet_us: self.quiet_us,
        }
    }

    /// Keeps the window's background use per period, and takes the signal as the
    /// foreground's own level when every period of a busy window held background work at the
    /// floor (the least the controller can make it).
    fn measure_quiet(&mut self, signal_us: u64, window_requests: u64, used: u64, floor_use: u64) {
        let window = self.settings.window_periods.max(1);
        self.used_window.push_back(used);
        while self.used_window.len() > window {
            self.used_window.pop_front();
        }
        self.quiet_age = self.quiet_age.saturating_add(1);
        let quiet = self.used_window.len() == window
            && self.used_window.iter().all(|&u| u <= floor_use)
            && window_requests >= self.settings.idle_requests;
        if quiet {
            self.quiet_us = signal_us;
            self.quiet_age = 0;
        } else if self.quiet_age > QUIET_FOR_PERIODS {
            self.quiet_us = 0;
        }
    }

    /// The target the law holds the signal to: the configured one, or [`QUIET_MARGIN`] above
    /// the foreground's own level if that is higher, at most [`QUIET_CEILING`] × the
    /// configured one.
    fn target_in_force_us(&self) -> u64 {
        target_in_force_us(self.settings.target_ms, self.quiet_us)
    }

    /// The AIMD law on the total budget. `signal_us` is the window's percentile, `newest_us`
    /// the newest period's: a miss needs both, room to climb is judged on the higher (one fast
    /// period after slow ones is little room; nor is a fast window whose newest period is
    /// slow).
    fn adjust_budget(
        &mut self,
        signal_us: u64,
        newest_us: u64,
        window_requests: u64,
        used: u64,
    ) -> Step {
        let settings = &self.settings;
        if !settings.enabled {
            return Step::Off;
        }
        let floor = settings.min_rate as f64;
        let ceiling = (settings.max_rate as f64).max(floor);
        // No hysteresis around `idle_requests`: a foreground at the threshold swings between
        // the ceiling and the budget it had before, but the ceiling only ever serves a window
        // of fewer than `idle_requests` requests, so few requests meet it, and a miss they
        // see cuts the budget the next busy period.
        let was_idle = std::mem::replace(&mut self.idle, window_requests < settings.idle_requests);
        let target_us = self.target_in_force_us();
        let missed = signal_us.min(newest_us) > target_us;
        let persists =
            self.missed_last_period || newest_us > target_us.saturating_mul(MISS_AT_ONCE);
        self.missed_last_period = missed;
        let step = if self.idle {
            if !was_idle {
                self.before_idle = self.budget;
            }
            self.budget = ceiling;
            self.missed_at = 0.0;
            Step::Idle
        } else if was_idle {
            self.budget = self.before_idle;
            Step::Resume
        } else if missed && !persists {
            Step::Watch
        } else if missed {
            // Cut what is actually being spent, not an allowance nobody uses: a budget held
            // while the stages used a fraction of it would take many halvings to bite.
            let spent = self.budget.min((used as f64).max(floor));
            self.missed_at = spent;
            // Graded by the newest period, the one the budget now in force shaped: a step
            // up in load that the window has not caught up with yet is still halved.
            let graded = target_us as f64 / newest_us as f64;
            self.budget = spent * graded.max(settings.decrease_factor);
            Step::Decrease
        } else if (used as f64) < GROW_WHEN_USED * self.budget {
            Step::Hold
        } else {
            let step = settings.increase_per_period as f64;
            let worst_us = signal_us.max(newest_us);
            let room = room_factor(worst_us, target_us, settings.headroom_factor);
            // The largest growth any rule allows: more room never means slower growth.
            let increased = self.budget + step;
            let climbed = self.budget * room;
            // Recovery waits until the window, not only the newest period, is back under
            // the target: the periods that missed are still in it.
            let recovered = if worst_us <= target_us {
                (self.budget * settings.headroom_factor).min(RECOVER_TO * self.missed_at)
            } else {
                0.0
            };
            if recovered > increased && recovered > climbed {
                self.budget = recovered;
                Step::Recover
            } else if climbed > increased {
                self.budget = climbed;
                Step::Climb
            } else {
                self.budget = increased;
                Step::Increase
            }
        };
        self.budget = self.budget.clamp(floor.max(1.0), ceiling.max(1.0));
        step
    }

    /// Splits the budget over the unpinned stages: those with a backlog by share, each at
    /// least the floor; those without one get the floor, so work arriving is started at once
    /// and claims its share at the next period.
    fn split(&self, stages: &BTreeMap<StageId, StageObservation>) -> BTreeMap<StageId, u64> {
        let share = |stage: &StageId| {
            self.settings
                .shares
                .get(stage)
                .copied()
                .unwrap_or_else(|| default_share(*stage))
        };
        let busy_shares: u64 = stages
            .iter()
            .filter(|(_, o)| !o.pinned && o.backlog > 0)
            .map(|(stage, _)| u64::from(share(stage)))
            .sum();
        stages
            .iter()
            .filter(|(_, o)| !o.pinned)
            .map(|(stage, o)| {
                let part = if o.backlog > 0 && busy_shares > 0 {
                    self.budget * f64::from(share(stage)) / busy_shares as f64
                } else {
                    0.0
                };
                (*stage, (part.round() as u64).max(self.settings.min_rate))
            })
            .collect()
    }
}

/// The target in force for a configured `target_ms` and a quiet signal (see
/// [`QUIET_MARGIN`], [`QUIET_CEILING`]), microseconds.
pub fn target_in_force_us(target_ms: u64, quiet_us: u64) -> u64 {
    let target_us = target_ms.saturating_mul(1000);
    let own_level = (quiet_us as f64 * QUIET_MARGIN) as u64;
    target_us.max(own_level.min(target_us.saturating_mul(QUIET_CEILING)))
}

/// What a used budget may be multiplied by this period, given the signal (the higher of the
/// window's and the newest period's) and the target: `headroom_factor` at or below
/// [`HEADROOM`] of the target, falling in a straight line to 1 at the target. A step from the
/// full factor to none at half the target left a node whose foreground sat at 55-75 % of its
/// target with no background at all (the benchmark's target is 1.2× the baseline's own
/// signal) on the additive step for its whole backlog, drained at a tenth of the unthrottled
/// speed while the target held in all but five periods of the run.
fn room_factor(signal_us: u64, target_us: u64, headroom_factor: f64) -> f64 {
    if target_us == 0 {
        return 1.0;
    }
    let load = signal_us as f64 / target_us as f64;
    let room = ((1.0 - load) / (1.0 - HEADROOM)).clamp(0.0, 1.0);
    1.0 + (headroom_factor - 1.0) * room
}

/// The newest period's own percentile (foreground or storage wait, the higher). The window's
/// signal says whether the target is missed; this says whether it is still being missed, so
/// one slow period that stays in the window for `window_periods` periods is cut for once, not
/// once per period.
fn newest_percentile(observation: &Observation, percentile: f64) -> u64 {
    let of = |histogram: &Histogram<u64>| {
        if histogram.is_empty() {
            0
        } else {
            histogram.value_at_quantile((percentile / 100.0).clamp(0.0, 1.0))
        }
    };
    of(&observation.foreground_us).max(of(&observation.storage_wait_us))
}

fn push_window(window: &mut VecDeque<Histogram<u64>>, period: Histogram<u64>, periods: usize) {
    window.push_back(period);
    while window.len() > periods {
        window.pop_front();
    }
}

/// Samples in the window and its `percentile` (0 when empty).
fn percentile(window: &VecDeque<Histogram<u64>>, percentile: f64) -> (u64, u64) {
    let mut merged = crate::seda::new_latency_histogram();
    for period in window {
        // Both come from `new_latency_histogram`, so their bounds agree and adding cannot fail.
        let _ = merged.add(period);
    }
    if merged.is_empty() {
        (0, 0)
    } else {
        (
            merged.len(),
            merged.value_at_quantile((percentile / 100.0).clamp(0.0, 1.0)),
        )
    }
}

#[cfg(test)]
mod tests;
