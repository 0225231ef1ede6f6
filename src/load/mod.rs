//! The load tool's engine (SPEC §10), shared by `shoal-load` and `shoal demo`: YCSB-style
//! workloads against a shoal cluster or a Redis server, closed loop or open loop at a fixed rate
//! (latency from each request's intended start), a live line per second, a final report per
//! operation, and optionally the per-stage queue depths of every node sampled during the run.

pub mod contexts;
pub mod keys;
pub mod phase;
pub mod plot;
pub mod report;
pub mod schedule;
pub mod stage_sampler;
pub mod target;

use crate::client::{Durability, RequestOptions};
use crate::cluster_client::NodeHealth;
use contexts::Contexts;
use keys::{key_name, KeyChoice, KeyChooser, Rng};
use phase::{load_phase, LoadPhaseReport};
use report::{summarize, OpSummary, Recorder};
use schedule::Schedule;
use serde::Serialize;
use shoal_stages::error::ServiceError;
use stage_sampler::{StageSampler, StageSummary};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use target::{Connection, OpError, OpenError, TargetSpec};

/// Read-then-write attempts of a put refused with `TooManySiblings` or `ObjectTooLarge` (both
/// say: reconcile first) before it counts as failed.
const RECONCILE_ATTEMPTS: u32 = 4;

/// Pause between a worker's attempts to connect.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// How long a closed-loop worker waits after a request no node could be reached for.
const UNREACHABLE_PAUSE: Duration = Duration::from_millis(20);

/// The YCSB core workloads, and write-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Workload {
    /// 50% read, 50% update.
    A,
    /// 95% read, 5% update.
    B,
    /// 100% read.
    C,
    /// 95% read of the latest keys, 5% insert of new keys.
    D,
    /// 50% read, 50% read-modify-write (get, then put with its context).
    F,
    /// 100% update.
    #[value(name = "write-only")]
    WriteOnly,
}

impl Workload {
    /// The key choice YCSB pairs with the workload.
    pub fn default_keys(self) -> KeyChoice {
        if self == Workload::D {
            KeyChoice::Latest
        } else {
            KeyChoice::Zipfian
        }
    }

    /// Fraction of operations that are reads.
    fn read_fraction(self) -> f64 {
        match self {
            Workload::A | Workload::F => 0.5,
            Workload::B | Workload::D => 0.95,
            Workload::C => 1.0,
            Workload::WriteOnly => 0.0,
        }
    }
}

/// A load run's configuration (also written to the JSON report).
#[derive(Clone, Debug, Serialize)]
pub struct LoadConfig {
    /// Where the load goes.
    pub target: TargetSpec,
    /// The operation mix.
    pub workload: Workload,
    /// How keys are chosen.
    pub key_choice: KeyChoice,
    /// Keys loaded before the run (and chosen from).
    pub keys: u64,
    /// What every key name starts with (so two runs can use separate key spaces).
    pub key_prefix: String,
    /// Value size.
    pub value_bytes: usize,
    /// Client threads, one connection each.
    pub threads: usize,
    /// Run length (ignored when `ops` is set).
    pub duration: Duration,
    /// Total operations, instead of a duration.
    pub ops: Option<u64>,
    /// Open loop at this many operations per second (all threads together); closed when None.
    pub rate: Option<f64>,
    /// Per-request read quorum.
    pub r: Option<u8>,
    /// Per-request write quorum.
    pub w: Option<u8>,
    /// Per-request durable writes (how many replicas flush a put before the reply).
    pub durable: Option<Durability>,
    /// Seed of key and operation choice.
    pub seed: u64,
    /// Fill every key before the run.
    pub load_phase: bool,
    /// Sample every node's per-stage stats once a second (shoal only).
    pub stage_stats: bool,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Successful operations in that second.
    pub ops: u64,
    /// Failed operations in that second.
    pub errors: u64,
    /// p50 of that second, microseconds.
    pub p50_us: u64,
    /// p99 of that second, microseconds.
    pub p99_us: u64,
    /// p99.9 of that second, microseconds.
    pub p999_us: u64,
}

/// A finished run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// What ran.
    pub config: LoadConfig,
    /// Measured time.
    pub elapsed_secs: f64,
    /// Per operation.
    pub operations: Vec<OpSummary>,
    /// Reads that returned a value.
    pub reads: u64,
    /// Reads that saw more than one sibling.
    pub reads_with_siblings: u64,
    /// Target rate (open loop).
    pub target_rate: Option<f64>,
    /// Achieved rate: successful and failed operations per second.
    pub achieved_rate: f64,
    /// Per second.
    pub series: Vec<Second>,
    /// Per-stage queue depths sampled during the run.
    pub stages: Option<StageSummary>,
    /// What the load phase did (None when it was skipped).
    pub load: Option<LoadPhaseReport>,
}

impl LoadReport {
    /// Operations of the run (not the load phase) that succeeded and that failed.
    pub fn totals(&self) -> (u64, u64) {
        self.operations.iter().fold((0, 0), |(ok, failed), op| {
            (ok + op.count, failed + op.errors)
        })
    }
}

/// Runs the load phase and then the workload; writes a live line per second to `live`.
pub fn run(config: &LoadConfig, live: &mut (dyn Write + Send)) -> Result<LoadReport, String> {
    let options = RequestOptions {
        r: config.r,
        w: config.w,
        timeout_ms: None,
        durable: config.durable,
    };
    // Fail early and clearly when the target is unreachable, or when the quorums asked for
    // cannot be met by the cluster's N (every request would be refused `InvalidQuorum`).
    Connection::open(&config.target, options)?.check_quorums(config.r, config.w)?;
    // The load phase's reads and writes leave each key's context here, so the run's first
    // update of a key supersedes what is stored instead of adding a sibling beside it.
    let contexts = Arc::new(Contexts::default());
    let load = if config.load_phase && config.keys > 0 {
        Some(load_phase(config, options, &contexts)?)
    } else {
        None
    };
    let sampler = match (&config.target, config.stage_stats) {
        (TargetSpec::Shoal { seeds, .. }, true) => Some(StageSampler::start(seeds.clone())?),
        _ => None,
    };
    let shared = Shared {
        interval: Mutex::new(Recorder::default()),
        stop: AtomicBool::new(false),
        inserted: AtomicU64::new(config.keys.saturating_sub(1)),
        remaining: AtomicU64::new(config.ops.unwrap_or(u64::MAX)),
        contexts,
        health: NodeHealth::default(),
    };
    let shared = Arc::new(shared);
    let health = &shared.health;
    // Every worker connects before the clock starts: an open loop's schedule counts from
    // `start`, and 64 workers fetching the ring and dialling at once took hundreds of ms on a
    // loaded machine, which their first requests then reported as latency (a p99.9 of 600 ms
    // over a 30 s run). A worker whose connection failed here retries on its own.
    let connections: Vec<Option<Connection>> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..config.threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = Connection::open(&config.target, options).ok()?;
                    connection.share_health(health);
                    connection.dial_all();
                    Some(connection)
                })
            })
            .collect();
        opening
            .into_iter()
            .map(|thread| thread.join().ok().flatten())
            .collect()
    });
    // Built once, before the clock: a Zipfian chooser sums a term per key (zeta), about 30 ms
    // at 1M keys. Each of 64 workers building its own after the start cost two cores a
    // second or more, which the first requests reported as latency (anti_entropy.sh's
    // baseline p99.9 of 600-760 ms at 1M keys, 14 ms at 20k).
    let chooser = KeyChooser::new(config.key_choice, config.keys);
    let start = Instant::now();
    let workers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(index, connection)| {
            let (config, shared, chooser) = (config.clone(), Arc::clone(&shared), chooser.clone());
            std::thread::spawn(move || {
                worker(
                    &config, options, index, start, &shared, &chooser, connection,
                )
            })
        })
        .collect();
    let series = live_lines(config, &shared, start, live);
    let mut total = Recorder::default();
    for worker in workers {
        total.merge(
            &worker
                .join()
                .map_err(|_| "a load thread panicked".to_string())??,
        );
    }
    let elapsed = start.elapsed();
    let (ok, failed) = total.totals();
    Ok(LoadReport {
        config: config.clone(),
        elapsed_secs: elapsed.as_secs_f64(),
        operations: summarize(&total, elapsed),
        reads: total.reads,
        reads_with_siblings: total.reads_with_siblings,
        target_rate: config.rate,
        achieved_rate: (ok + failed) as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        series,
        stages: sampler.map(StageSampler::finish),
        load,
    })
}

/// State the workers and the live-line loop share.
struct Shared {
    /// What happened since the last live line.
    interval: Mutex<Recorder>,
    stop: AtomicBool,
    /// Highest key index inserted so far (workload D inserts above the loaded keys).
    inserted: AtomicU64,
    /// Operations left when the run is bounded by a count.
    remaining: AtomicU64,
    /// The last context any worker got per key.
    contexts: Arc<Contexts>,
    /// Which nodes failed lately, for every worker: one of them tries a failed node again.
    health: NodeHealth,
}

/// Prints a line per second until the workers are done (duration or op budget); returns the
/// per-second series.
fn live_lines(
    config: &LoadConfig,
    shared: &Shared,
    start: Instant,
    live: &mut (dyn Write + Send),
) -> Vec<Second> {
    let mut series = Vec::new();
    let deadline = start + config.duration;
    let mut next = start + Duration::from_secs(1);
    loop {
        let done = if config.ops.is_some() {
            shared.remaining.load(Ordering::Relaxed) == 0
        } else {
            Instant::now() >= deadline
        };
        if done {
            shared.stop.store(true, Ordering::Relaxed);
            return series;
        }
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(1);
        let interval = shared
            .interval
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let (ok, errors) = interval.totals();
        let (p50_us, p99_us, p999_us) = interval.quantiles_us();
        let second = Second {
            t: series.len() as u64 + 1,
            ops: ok,
            errors,
            p50_us,
            p99_us,
            p999_us,
        };
        let _ = writeln!(
            live,
            "[{:>3}s] {:>8} ops/s {:>6} errors  p99 {:>7}us",
            second.t, second.ops, second.errors, second.p99_us
        );
        series.push(second);
    }
}

/// One client thread of the run: thread `index` of the run's schedule from `start`, drawing
/// keys with the `chooser` built for all, over `connection` (opened before the clock; `None`
/// if that failed, and it dials itself).
fn worker(
    config: &LoadConfig,
    options: RequestOptions,
    index: usize,
    start: Instant,
    shared: &Shared,
    chooser: &KeyChooser,
    connection: Option<Connection>,
) -> Result<Recorder, String> {
    let mut recorder = Recorder::default();
    let connection = connection.or_else(|| connect_worker(config, options, shared, &mut recorder));
    let Some(mut connection) = connection else {
        return Ok(recorder);
    };
    let mut rng = Rng::new(config.seed.wrapping_add(index as u64));
    let schedule = config
        .rate
        .map(|rate| Schedule::for_thread(start, rate, config.threads, index));
    let value = vec![b'v'; config.value_bytes];
    let mut sent: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if config.ops.is_some()
            && shared
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let due = schedule.map(|s| {
            std::thread::sleep(s.wait(sent, Instant::now()));
            s.due(sent)
        });
        sent += 1;
        let began = due.unwrap_or_else(Instant::now);
        let newest = shared.inserted.load(Ordering::Relaxed);
        let (op, result) = one_operation(
            config,
            &mut connection,
            &mut rng,
            chooser,
            newest,
            shared,
            &value,
        );
        let latency = began.elapsed();
        let mut interval = shared.interval.lock().unwrap_or_else(|p| p.into_inner());
        for r in [&mut recorder, &mut *interval] {
            match &result {
                Ok(siblings) => {
                    r.ok(op, latency);
                    if let Some(siblings) = siblings {
                        r.read(*siblings);
                    }
                }
                Err(error) => r.error(op, &error.kind()),
            }
        }
        drop(interval);
        if schedule.is_none() && matches!(result, Err(OpError::Unreachable(_))) {
            // A closed loop whose every candidate node refused the connection would spin,
            // failing a hundred thousand requests a second and taking the cores a restarting
            // node needs (an open loop keeps its schedule; a Redis target never pauses).
            std::thread::sleep(UNREACHABLE_PAUSE);
        }
    }
    Ok(recorder)
}

/// Opens a worker's connection, retrying (each failure counted as a `connect` error) until it
/// opens or the run stops, so one unreachable moment does not end the whole run.
fn connect_worker(
    config: &LoadConfig,
    options: RequestOptions,
    shared: &Shared,
    recorder: &mut Recorder,
) -> Option<Connection> {
    if shared.stop.load(Ordering::Relaxed) {
        return None;
    }
    let mut connection = open_retrying(config, options, |error| {
        recorder.error("connect", &error.kind);
        !shared.stop.load(Ordering::Relaxed)
    })
    .ok()?;
    connection.share_health(&shared.health);
    Some(connection)
}

/// Opens a connection, trying again `CONNECT_RETRY` later after each failure for as long as
/// `again` says; the last failure otherwise.
pub(crate) fn open_retrying(
    config: &LoadConfig,
    options: RequestOptions,
    mut again: impl FnMut(&OpenError) -> bool,
) -> Result<Connection, OpenError> {
    loop {
        match Connection::open(&config.target, options) {
            Ok(connection) => return Ok(connection),
            Err(error) if again(&error) => std::thread::sleep(CONNECT_RETRY),
            Err(error) => return Err(error),
        }
    }
}

/// Chooses and performs one operation; returns its name and, for reads, the sibling count.
#[allow(clippy::too_many_arguments)]
fn one_operation(
    config: &LoadConfig,
    connection: &mut Connection,
    rng: &mut Rng,
    chooser: &KeyChooser,
    newest: u64,
    shared: &Shared,
    value: &[u8],
) -> (&'static str, Result<Option<usize>, OpError>) {
    let contexts = &shared.contexts;
    let read = rng.next_f64() < config.workload.read_fraction();
    if config.workload == Workload::D && !read {
        let key = shared.inserted.fetch_add(1, Ordering::Relaxed) + 1;
        let name = key_name(&config.key_prefix, key);
        let result = connection.put(name.as_bytes(), contexts.get(key).as_ref(), value);
        return (
            "insert",
            result.map(|context| {
                if let Some(context) = context {
                    contexts.remember(key, context);
                }
                None
            }),
        );
    }
    let key = chooser.next(rng, newest);
    let name = key_name(&config.key_prefix, key);
    if read {
        let result = connection.get(name.as_bytes()).map(|r| {
            if let Some(context) = r.context {
                contexts.remember(key, context);
            }
            Some(r.siblings)
        });
        return ("get", result);
    }
    if config.workload == Workload::F {
        // Read-modify-write: the put carries the context of its own read.
        let result = connection.get(name.as_bytes()).and_then(|r| {
            let context = r.context;
            connection
                .put(name.as_bytes(), context.as_ref(), value)
                .map(|_| None)
        });
        return ("rmw", result);
    }
    let mut result = connection.put(name.as_bytes(), contexts.get(key).as_ref(), value);
    let mut attempts = 0;
    while attempts < RECONCILE_ATTEMPTS
        && matches!(
            &result,
            Err(OpError::Service(
                ServiceError::TooManySiblings { .. } | ServiceError::ObjectTooLarge { .. }
            ))
        )
    {
        // What a real client does, as the error says: read to get a context covering every
        // sibling, and write again with it (which replaces them all). Still one operation.
        // Other writers of a hot key can refill it between the read and the write, so a few
        // attempts are allowed.
        attempts += 1;
        result = connection
            .get(name.as_bytes())
            .and_then(|read| connection.put(name.as_bytes(), read.context.as_ref(), value));
    }
    let result = result.map(|context| {
        if let Some(context) = context {
            contexts.remember(key, context);
        }
        None
    });
    ("put", result)
}
