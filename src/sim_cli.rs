//! `shoal sim`: runs the deterministic cluster simulator (`shoal_stages::sim`) over many seeds
//! and reports the ones that break a property, each with the command that replays it; or
//! replays one seed with its trace.

use clap::Args;
use shoal_stages::sim::{self, Faults, SimConfig, SimReport};
use shoal_stages::storage::SyncMode;
use shoal_stages::Durability;
use std::time::Instant;

/// `shoal sim`
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Run this many seeds (from --first-seed on).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Run this one seed only (with --trace: print its events).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes in the simulated cluster (default: the seed picks 3, 4 or 5).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Faults to inject: all, none, or a list of delay,drop,duplicate,reorder,partition,crash,
    /// power,pause,flush,membership,restore.
    #[arg(long, default_value = "all")]
    pub faults: Faults,
    /// Every node's `sync`: always (every write flushed before its ack), periodic or none.
    #[arg(long, value_enum, default_value = "always")]
    pub sync: SimSync,
    /// The cluster's `durable_writes`: all, one or none (matters when --sync is not always).
    #[arg(long, default_value = "none")]
    pub durable: Durability,
    /// Print the run's events, then `trace <digest>`.
    #[arg(long)]
    pub trace: bool,
    /// Threads running seeds side by side (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// `--sync` of `shoal sim` (the node setting, as a command-line value).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimSync {
    /// Every write flushed before its acknowledgement.
    Always,
    /// Flushed on the storage stage's tick.
    Periodic,
    /// Flushed only when a request asks (`--durable`).
    None,
}

impl SimSync {
    fn mode(self) -> SyncMode {
        match self {
            SimSync::Always => SyncMode::Always,
            SimSync::Periodic => SyncMode::Periodic,
            SimSync::None => SyncMode::None,
        }
    }
}

/// Why `shoal sim` failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Some seeds broke a property.
    #[error("{violating} of {seeds} seeds broke a property")]
    Violations {
        /// Seeds that broke one.
        violating: u64,
        /// Seeds run.
        seeds: u64,
    },
}

/// Runs the command.
pub fn run(args: SimArgs) -> Result<(), SimError> {
    let config = SimConfig {
        nodes: args.nodes,
        faults: args.faults,
        trace: args.trace,
        sync: args.sync.mode(),
        durable_writes: args.durable,
        ..SimConfig::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let reports = run_seeds(&seeds, &config, jobs);
    let elapsed = started.elapsed().as_secs_f64();
    let mut violating = 0;
    for report in &reports {
        if args.trace {
            for line in &report.trace {
                println!("{line}");
            }
        }
        if !report.violations.is_empty() {
            violating += 1;
            print_violations(report, &args);
        }
        // One seed's digest is the last line (below); in a traced sweep, each seed's follows
        // its events.
        if args.trace && args.seed.is_none() {
            println!("trace {}", report.digest);
        }
    }
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let refused: u64 = reports.iter().map(|r| r.refused_adds).sum();
    eprintln!(
        "{} seeds in {elapsed:.1} s ({:.1} seeds/s, {events} events), faults {}; puts refused by a stopping node: {refused}",
        reports.len(),
        reports.len() as f64 / elapsed.max(f64::MIN_POSITIVE),
        config.faults
    );
    println!("seeds {} violations {violating}", reports.len());
    if let (true, Some(_), Some(report)) = (args.trace, args.seed, reports.first()) {
        println!("trace {}", report.digest);
    }
    if violating > 0 {
        return Err(SimError::Violations {
            violating,
            seeds: reports.len() as u64,
        });
    }
    Ok(())
}

/// Violations printed per seed in a sweep (all of them when one seed runs).
const VIOLATIONS_SHOWN_PER_SEED: usize = 3;

fn print_violations(report: &SimReport, args: &SimArgs) {
    let nodes = args
        .nodes
        .map_or(String::new(), |n| format!(" --nodes {n}"));
    let faults = if args.faults == Faults::ALL {
        String::new()
    } else {
        format!(" --faults {}", args.faults)
    };
    let durability = if args.sync == SimSync::Always && args.durable == Durability::None {
        String::new()
    } else {
        let sync = format!("{:?}", args.sync).to_lowercase();
        format!(" --sync {sync} --durable {}", args.durable)
    };
    println!(
        "seed {} ({} nodes): {} violation(s); replay: shoal sim --seed {}{nodes}{faults}{durability} --trace",
        report.seed,
        report.nodes,
        report.violations.len(),
        report.seed
    );
    // The first few say what broke; a sweep of a lossy setting can find a thousand per seed,
    // and the replay (with --trace, or a one-seed run) prints them all.
    let shown = if args.seed.is_some() {
        report.violations.len()
    } else {
        VIOLATIONS_SHOWN_PER_SEED
    };
    for violation in report.violations.iter().take(shown) {
        println!("  {violation}");
    }
    if report.violations.len() > shown {
        println!(
            "  ... and {} more (run the seed alone to see them all)",
            report.violations.len() - shown
        );
    }
}

/// Runs every seed, `jobs` at a time; reports come back in seed order.
pub fn run_seeds(seeds: &[u64], config: &SimConfig, jobs: usize) -> Vec<SimReport> {
    let chunks: Vec<Vec<u64>> = (0..jobs)
        .map(|j| seeds.iter().skip(j).step_by(jobs).copied().collect())
        .collect();
    let mut reports: Vec<SimReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|s| sim::run(s, config))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}
