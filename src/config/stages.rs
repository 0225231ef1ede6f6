//! `[pool]` and `[stages.NAME]`: how threads serve the stages (the worker pools, the intake's
//! thread domain, the reply writer) and each stage's tuning, turned into the runtime's settings.

use super::*;

/// `[pool]`: the worker pool that serves every stage's queue but the intake's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Worker threads of the foreground stages; 0 means one per core plus one.
    pub workers: usize,
    /// Worker threads of the background stages (repair, handoff, anti-entropy, transfer and
    /// storage's background lane): these serve them (a send blocked on a full background
    /// queue also runs a batch of it), at `controller.background_nice` below the node's
    /// priority while the controller is on.
    pub background_workers: usize,
    /// Microseconds the one spinning worker polls for work after handling events, before it
    /// parks (0: never spin). Absent: see [`Config::spin_us`].
    pub spin_us: Option<u64>,
    /// Stages the intake's loop also runs between its turns (its thread domain): a request
    /// whose stages are all here is served on that one thread, with no wake-up. Workers
    /// still run them too when the loop is busy. Absent: parse, coordinate, replicate and
    /// storage. Never the commit stage: it waits for the disk, and the loop would stop
    /// reading meanwhile.
    pub intake_runs: Option<Vec<StageId>>,
    /// A turn of the intake's loop with at least this many connections to write hands their
    /// output to the reply-writer thread and goes on reading (quieter turns write inline: a
    /// hand-off costs a wake-up). 0: no writer thread. Absent: see
    /// [`Config::reply_writer_from`].
    pub reply_writer_from: Option<usize>,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            workers: 0,
            background_workers: DEFAULT_BACKGROUND_WORKERS,
            spin_us: None,
            intake_runs: None,
            reply_writer_from: None,
        }
    }
}

/// `[stages.NAME]`: every field optional; absent ones take the stage's default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageTuning {
    /// The most pool workers that serve the stage at once.
    pub threads: Option<usize>,
    /// Queue bound.
    pub queue_capacity: Option<usize>,
    /// Events a worker takes from the queue at a time.
    pub batch_max: Option<usize>,
    /// No longer used: spinning is the pool's (`[pool] spin_us`). Still accepted, so an older
    /// config loads; the node warns that it is ignored.
    pub spin_us: Option<u64>,
    /// Units of work per second a background stage may do (its rate gate); absent or 0 means
    /// unlimited. Only background stages take it. With the controller enabled it is only the
    /// starting rate: the controller sets the rate from its first period on.
    pub rate_per_sec: Option<u64>,
}

/// Default rate of a background stage (repair: keys repaired; handoff: hints delivered, per
/// second), so a burst of stale reads or a returning node does not turn into a burst of writes
/// that competes with foreground requests. The resource controller will adjust it.
const DEFAULT_BACKGROUND_RATE_PER_SEC: u64 = 1000;
/// Microseconds the pool's one spinner polls (yielding) before parking, by default while
/// writes wait for the disk ([`Config::spin_us`]). Waking a parked thread costs ~50 µs on these
/// VMs (benches/stage_hop.rs), about the gap between a client's reply and its next request on
/// loopback, so a short spin catches the next event without a wake-up. Only one worker spins,
/// and only after handling events: an idle node does not spin.
const DEFAULT_SPIN_US: u64 = 200;
/// One background worker: on two cores a second would only take more CPU from the
/// foreground, and the background stages' gates pace their work anyway.
const DEFAULT_BACKGROUND_WORKERS: usize = 1;
/// The background workers' thread names (`background-0`, ...), as `ps -L` and the tests see
/// them.
pub const BACKGROUND_THREAD_NAME: &str = "background";
/// Connections to write in one loop turn before the reply writer takes them, when no write
/// waits for the disk (see [`Config::reply_writer_from`]).
const DEFAULT_REPLY_WRITER_FROM: usize = 4;

impl Config {
    /// The tuning given for a stage (all defaults when its section is absent).
    pub fn tuning(&self, stage: StageId) -> StageTuning {
        self.stages.get(&stage).cloned().unwrap_or_default()
    }

    /// The rate of a background stage's gate (`None`: unlimited, or a foreground stage).
    pub fn stage_rate(&self, stage: StageId) -> Option<u64> {
        if !stage.paced() {
            return None;
        }
        match self.tuning(stage).rate_per_sec {
            Some(rate) if rate > 0 => Some(rate),
            Some(_) => None,
            None => Some(DEFAULT_BACKGROUND_RATE_PER_SEC),
        }
    }

    /// The resolved spec of a stage: its row of the stage table, with the config's tuning.
    pub fn stage_spec(&self, stage: StageId) -> StageSpec {
        let row = stage.row();
        let tuning = self.tuning(stage);
        let tick = if stage == StageId::Storage && self.storage.sync == SyncMode::Periodic {
            Duration::from_millis(self.storage.sync_interval_ms)
        } else {
            Duration::from_millis(row.tick_ms)
        };
        StageSpec {
            name: row.name,
            class: row.class,
            threads: tuning.threads.unwrap_or(row.threads),
            queue_capacity: tuning.queue_capacity.unwrap_or(row.queue_capacity),
            batch_max: tuning.batch_max.unwrap_or(row.batch_max),
            tick,
        }
    }

    /// The worker pool's shape.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            workers: match self.pool.workers {
                0 => PoolSettings::default_workers(),
                n => n,
            },
            spin: Duration::from_micros(self.spin_us()),
            thread_name: "worker",
            nice_steps: 0,
        }
    }

    /// The background pool's shape: its own workers, which never spin (background work can
    /// wait a wake-up).
    pub fn background_pool_settings(&self) -> PoolSettings {
        PoolSettings {
            workers: self.pool.background_workers,
            spin: Duration::ZERO,
            thread_name: BACKGROUND_THREAD_NAME,
            nice_steps: if self.controller.enabled {
                self.controller.background_nice
            } else {
                0
            },
        }
    }

    /// The stages the intake's loop runs (`[pool] intake_runs`, or its default).
    pub fn intake_runs(&self) -> Vec<StageId> {
        match &self.pool.intake_runs {
            Some(stages) => stages.clone(),
            // Storage never waits for the disk (the commit stage flushes), so it joins the loop
            // whatever `sync` is; the commit stage never does.
            None => vec![
                StageId::Parse,
                StageId::Coordinate,
                StageId::Replicate,
                StageId::Storage,
            ],
        }
    }

    /// When the intake hands a turn's output to the reply writer (`[pool] reply_writer_from`,
    /// or its default): from 4 connections when no write waits for the disk (`sync = "none"`,
    /// `durable_writes = "none"`), where the loop is the bottleneck and the writer gave +16-24 %
    /// at 32 connections on 2 cores; otherwise never (0), because while writes wait for the
    /// commit stage the loop has time to spare, and the writer's wake-ups cost one node
    /// 31k against 39k ops/s with `sync = "always"`.
    pub fn reply_writer_from(&self) -> usize {
        self.pool
            .reply_writer_from
            .unwrap_or(if self.writes_wait_for_disk() {
                0
            } else {
                DEFAULT_REPLY_WRITER_FROM
            })
    }

    /// How long the pool's one spinner polls before parking (`[pool] spin_us`, or its
    /// default): 200 µs when writes wait for the disk, otherwise none. While writes wait, the
    /// commit stage's flushes run on a worker, and a spinning worker takes each flush's answers
    /// and the next batch without a wake-up (a 3-node loopback cluster with `sync = "always"`:
    /// 12 % fewer ops/s without the spin). When nothing waits for the disk, every stage of a
    /// request runs on the intake's loop, so a spinner finds little and takes the core the loop
    /// (or, with nodes sharing a machine, another node) needs: the same cluster with `sync =
    /// "none"` did 8-12 % more ops/s without it, one node the same within noise (5 interleaved
    /// runs, `benches/results/spin-2026-12-04.txt`).
    pub fn spin_us(&self) -> u64 {
        self.pool.spin_us.unwrap_or(if self.writes_wait_for_disk() {
            DEFAULT_SPIN_US
        } else {
            0
        })
    }

    /// Whether the commit stage flushes beside the requests: `sync = "always"` (every write
    /// waits for it) or `"periodic"` (a flush every interval), or `durable_writes` other than
    /// `"none"` (the writes that ask wait for it).
    fn writes_wait_for_disk(&self) -> bool {
        self.storage.sync != SyncMode::None || self.cluster.durable_writes != Durability::None
    }

    /// Stages given more slots (`threads`) than the pool that serves them has workers: the
    /// slots past the workers are never used at once (a trial read `Slots 3` for a background
    /// stage served by 2 workers and took it for 3 threads), with the pool's worker count.
    pub fn slots_beyond_workers(&self) -> Vec<(StageId, usize, usize)> {
        let workers = |stage: StageId| match stage.class() {
            shoal_stages::event::StageClass::Background => self.pool.background_workers,
            shoal_stages::event::StageClass::Foreground => self.pool_settings().workers,
        };
        self.stages
            .iter()
            .filter_map(|(stage, tuning)| {
                let slots = tuning.threads?;
                (*stage != StageId::Intake && slots > workers(*stage))
                    .then(|| (*stage, slots, workers(*stage)))
            })
            .collect()
    }

    /// Stages whose section still sets `spin_us`, which the pool no longer reads.
    pub fn ignored_spin_keys(&self) -> Vec<StageId> {
        self.stages
            .iter()
            .filter(|(_, tuning)| tuning.spin_us.is_some())
            .map(|(stage, _)| *stage)
            .collect()
    }
}
