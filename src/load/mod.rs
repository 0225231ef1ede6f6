//! The load tool's engine (SPEC §10), shared by `shoal-load` and `shoal demo`: YCSB-style
//! workloads against a shoal cluster or a Redis server, closed loop or open loop at a fixed rate
//! (latency from each request's intended start), a live line per second, a final report per
//! operation, and optionally the per-stage queue depths of every node sampled during the run.

pub mod keys;
pub mod report;
pub mod schedule;
pub mod stage_sampler;
pub mod target;

use crate::client::{Context, RequestOptions};
use keys::{key_name, KeyChoice, KeyChooser, Rng};
use report::{summarize, OpSummary, Recorder};
use schedule::Schedule;
use serde::Serialize;
use stage_sampler::{StageSampler, StageSummary};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use target::{Connection, TargetSpec};

/// Contexts a worker remembers (one per key it touched) so its updates supersede what it saw
/// instead of piling up siblings; bounded, cleared when full.
const CONTEXT_CACHE_KEYS: usize = 100_000;

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
    /// p99 of that second, microseconds.
    pub p99_us: u64,
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
}

/// Runs the load phase and then the workload; writes a live line per second to `live`.
pub fn run(config: &LoadConfig, live: &mut (dyn Write + Send)) -> Result<LoadReport, String> {
    let options = RequestOptions {
        r: config.r,
        w: config.w,
        timeout_ms: None,
    };
    // Fail early and clearly when the target is unreachable.
    drop(Connection::open(&config.target, options)?);
    if config.load_phase && config.keys > 0 {
        load_phase(config, options)?;
    }
    let sampler = match (&config.target, config.stage_stats) {
        (TargetSpec::Shoal { seeds, .. }, true) => Some(StageSampler::start(seeds.clone())?),
        _ => None,
    };
    let shared = Shared {
        interval: Mutex::new(Recorder::default()),
        stop: AtomicBool::new(false),
        inserted: AtomicU64::new(config.keys.saturating_sub(1)),
        remaining: AtomicU64::new(config.ops.unwrap_or(u64::MAX)),
    };
    let shared = Arc::new(shared);
    let start = Instant::now();
    let workers: Vec<_> = (0..config.threads.max(1))
        .map(|index| {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            std::thread::spawn(move || worker(&config, options, index, start, &shared))
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
        let second = Second {
            t: series.len() as u64 + 1,
            ops: ok,
            errors,
            p99_us: interval.p99_us(),
        };
        let _ = writeln!(
            live,
            "[{:>3}s] {:>8} ops/s {:>6} errors  p99 {:>7}us",
            second.t, second.ops, second.errors, second.p99_us
        );
        series.push(second);
    }
}

/// Blind puts of every key, split over the threads.
fn load_phase(config: &LoadConfig, options: RequestOptions) -> Result<(), String> {
    let threads = config.threads.max(1) as u64;
    let per_thread = config.keys.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut connection = Connection::open(&config.target, options)?;
                let value = vec![b'x'; config.value_bytes];
                for k in (t * per_thread)..((t + 1) * per_thread).min(config.keys) {
                    connection
                        .put(key_name(k).as_bytes(), None, &value)
                        .map_err(|e| format!("load phase put failed: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| "a load thread panicked".to_string())??;
    }
    Ok(())
}

/// One client thread of the run.
fn worker(
    config: &LoadConfig,
    options: RequestOptions,
    index: usize,
    start: Instant,
    shared: &Shared,
) -> Result<Recorder, String> {
    let mut connection = Connection::open(&config.target, options)?;
    let mut recorder = Recorder::default();
    let mut rng = Rng::new(config.seed.wrapping_add(index as u64));
    let chooser = KeyChooser::new(config.key_choice, config.keys);
    let schedule = config
        .rate
        .map(|rate| Schedule::new(start, rate / config.threads.max(1) as f64));
    let mut contexts: HashMap<u64, Context> = HashMap::new();
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
            &chooser,
            newest,
            shared,
            &mut contexts,
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
                Err(kind) => r.error(op, kind),
            }
        }
    }
    Ok(recorder)
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
    contexts: &mut HashMap<u64, Context>,
    value: &[u8],
) -> (&'static str, Result<Option<usize>, String>) {
    if contexts.len() >= CONTEXT_CACHE_KEYS {
        contexts.clear();
    }
    let read = rng.next_f64() < config.workload.read_fraction();
    if config.workload == Workload::D && !read {
        let key = shared.inserted.fetch_add(1, Ordering::Relaxed) + 1;
        return (
            "insert",
            connection
                .put(key_name(key).as_bytes(), None, value)
                .map(|_| None),
        );
    }
    let key = chooser.next(rng, newest);
    let name = key_name(key);
    if read {
        let result = connection.get(name.as_bytes()).map(|r| {
            if let Some(context) = r.context {
                contexts.insert(key, context);
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
    let mut result = connection.put(name.as_bytes(), contexts.get(&key), value);
    if matches!(&result, Err(kind) if kind == "TooManySiblings") {
        // What a real client does, as the error says: read to get a context covering every
        // sibling, and write again with it (which replaces them all). One operation.
        result = connection
            .get(name.as_bytes())
            .and_then(|read| connection.put(name.as_bytes(), read.context.as_ref(), value));
    }
    let result = result.map(|context| {
        if let Some(context) = context {
            contexts.insert(key, context);
        }
        None
    });
    ("put", result)
}
