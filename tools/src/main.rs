//! `shoal-load`: the bundled load tool (SPEC §10). YCSB-style workloads against a shoal
//! cluster (partition-aware) or a Redis server, closed loop or open loop at a fixed rate, with
//! a live line per second, a per-operation report, optional per-stage queue-depth sampling and
//! a JSON report. The engine lives in `shoal::load` (shared with `shoal demo`).

use clap::Parser;
use shoal::client::Durability;
use shoal::load::keys::KeyChoice;
use shoal::load::report::table;
use shoal::load::target::TargetSpec;
use shoal::load::{run, LoadConfig, LoadReport, Workload};
use std::time::Duration;

/// jemalloc instead of glibc's malloc, as the node has (not its one-arena setting: the tool's
/// memory is not measured). Every request allocates (its frame, the reply's decoded versions,
/// the remembered context) from 32 threads at once, and glibc's malloc and free took about
/// 4 % of the tool's CPU at 32 connections (perf). On a 2-core box the tool's CPU is taken
/// from the target it measures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load a shoal cluster (or Redis) with a YCSB-style workload.
#[derive(Parser, Debug)]
#[command(name = "shoal-load", version, about)]
struct Args {
    /// Target: shoal seed nodes HOST:PORT[,HOST:PORT...] (or shoal://...), or redis://HOST:PORT.
    #[arg(long, visible_alias = "node", default_value = "127.0.0.1:7401")]
    target: String,
    /// The shoal cluster's replication factor N (the preference-list length to route by);
    /// by default the one the cluster reports with its ring.
    #[arg(long)]
    replicas: Option<usize>,
    /// Workload: a (50/50 read/update), b (95/5), c (read only), d (read latest, 5% insert),
    /// f (read-modify-write), write-only.
    #[arg(long, value_enum, default_value = "a")]
    workload: Workload,
    /// Key choice (default: latest for d, zipfian otherwise).
    #[arg(long, value_enum)]
    distribution: Option<KeyChoice>,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// What every key name starts with: runs with different prefixes use separate keys.
    #[arg(long, default_value = shoal::load::keys::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Client threads (one connection each).
    #[arg(long, visible_alias = "connections", default_value_t = 4)]
    threads: usize,
    /// Seconds to run (unless --ops is given).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Total operations to run instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop at this many operations per second (latency from each request's intended
    /// start); closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Read quorum per request.
    #[arg(long)]
    r: Option<u8>,
    /// Write quorum per request.
    #[arg(long)]
    w: Option<u8>,
    /// Durable writes per put (shoal only): all (every acknowledging replica flushed), one
    /// (the coordinator flushed, Dynamo's buffered writes) or none; the cluster's
    /// `durable_writes` when absent.
    #[arg(long)]
    durable: Option<Durability>,
    /// Seed of key and operation choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the load phase that fills every key first.
    #[arg(long)]
    no_load: bool,
    /// Write the configuration, results and per-second series as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Draw throughput and p50/p99/p99.9 per second (and, with --stage-stats, every stage's
    /// queue depth over time) to this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Sample every node's per-stage stats once a second and report queue depths and
    /// refusals (a shoal target only).
    #[arg(long)]
    stage_stats: bool,
}

fn config(args: &Args) -> Result<LoadConfig, String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        return Err("--rate must be a positive number of operations per second".into());
    }
    if args.duration_secs == 0 && args.ops.is_none() {
        return Err("--duration-secs must be positive (or give --ops)".into());
    }
    if args.ops == Some(0) {
        return Err("--ops must be positive".into());
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if args.replicas == Some(0) {
        return Err("--replicas must be at least 1".into());
    }
    let workload = args.workload;
    if args.durable.is_some() && args.target.starts_with("redis://") {
        return Err("--durable applies to a shoal target, not to Redis".into());
    }
    if args.stage_stats && args.target.starts_with("redis://") {
        return Err("--stage-stats samples a shoal node's stages; Redis has none".into());
    }
    Ok(LoadConfig {
        target: TargetSpec::parse(&args.target, args.replicas)?,
        workload,
        key_choice: args.distribution.unwrap_or(workload.default_keys()),
        keys: args.keys,
        key_prefix: args.key_prefix.clone(),
        value_bytes: args.value_bytes,
        threads: args.threads,
        duration: Duration::from_secs(args.duration_secs),
        ops: args.ops,
        rate: args.rate,
        r: args.r,
        w: args.w,
        durable: args.durable,
        seed: args.seed,
        load_phase: !args.no_load && workload != Workload::WriteOnly,
        stage_stats: args.stage_stats,
    })
}

fn print_report(report: &LoadReport) {
    let c = &report.config;
    println!(
        "shoal-load: workload {:?}, {:?} keys, {} threads, {:.1} s, {} B values{}",
        c.workload,
        c.key_choice,
        c.threads,
        report.elapsed_secs,
        c.value_bytes,
        c.durable
            .map_or(String::new(), |d| format!(", durable writes {d}"))
    );
    if let Some(load) = &report.load {
        println!(
            "load phase: {} keys written ({} of them absent before), {} already loaded, {} failed in {:.1} s",
            load.written,
            load.absent,
            load.kept,
            load.failed(),
            load.elapsed_secs
        );
        for (kind, n) in &load.errors {
            println!("       error {kind}: {n}");
        }
    }
    print!("{}", table(&report.operations));
    if let Some(target) = report.target_rate {
        // The achieved rate counts failures too (it says whether the schedule was kept): say
        // how much of it failed, so a dead node's run does not read as a full rate.
        let (_, failed) = report.totals();
        let failed_per_sec = failed as f64 / report.elapsed_secs.max(f64::MIN_POSITIVE);
        println!(
            "rate: {:.0} ops/s achieved of {target:.0} targeted (open loop), {failed_per_sec:.0} ops/s of it failed",
            report.achieved_rate
        );
    }
    println!(
        "reads that saw siblings: {} of {} that found a value",
        report.reads_with_siblings, report.reads
    );
    if let Some(stages) = &report.stages {
        print!("{}", stages.table());
    }
}

fn main() {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    // A report that cannot be written is found now, not after the whole run: each output
    // file is opened for writing before the load starts, without truncating one that exists
    // (a run that fails leaves the last report as it was, and removes a file it created).
    let mut created = Vec::new();
    for path in [&args.json, &args.plot].into_iter().flatten() {
        let existed = path.exists();
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path);
        if let Err(e) = opened {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(2);
        }
        if !existed {
            created.push(path.clone());
        }
    }
    let report = match run(&config, &mut std::io::stderr()) {
        Ok(report) => report,
        Err(message) => {
            for path in &created {
                let _ = std::fs::remove_file(path);
            }
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    };
    print_report(&report);
    let (succeeded, failed) = report.totals();
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if let Some(path) = &args.plot {
        match shoal::load::plot::write_svg(&report, path) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
    if succeeded == 0 && failed > 0 {
        // Per-request errors are part of a measurement; a run where nothing at all succeeded
        // measured nothing, and a script must not take its table for a result.
        eprintln!("error: none of the run's {failed} operations succeeded (see the errors above)");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("shoal-load").chain(args.iter().copied()))
    }

    /// Goal: bad arguments are clear errors, not panics: an unknown workload, a zero or
    /// negative rate, zero threads.
    #[test]
    fn bad_arguments_are_clear_errors() {
        let error = parse(&["--workload", "zz"])
            .expect_err("unknown workload")
            .to_string();
        assert!(error.contains("zz"), "{error}");
        let rate = config(&parse(&["--rate", "0"]).expect("parses")).expect_err("rate 0");
        assert!(rate.contains("--rate"), "{rate}");
        let threads = config(&parse(&["--threads", "0"]).expect("parses")).expect_err("no threads");
        assert!(threads.contains("--threads"), "{threads}");
        assert!(config(&parse(&["--target", "redis://"]).expect("parses")).is_err());
    }

    /// Goal: an unreachable node is a clear error naming it, returned before any load.
    #[test]
    fn unreachable_target_is_a_clear_error() {
        let config =
            config(&parse(&["--target", "127.0.0.1:1", "--duration-secs", "1"]).expect("parses"))
                .expect("valid");
        let error = run(&config, &mut std::io::sink()).expect_err("unreachable");
        assert!(error.contains("127.0.0.1:1"), "{error}");
    }

    /// Goal: targets parse as documented.
    #[test]
    fn targets_parse() {
        assert_eq!(
            TargetSpec::parse("redis://127.0.0.1:6379", Some(3)),
            Ok(TargetSpec::Redis {
                addr: "127.0.0.1:6379".into()
            })
        );
        assert_eq!(
            TargetSpec::parse("shoal://a:1,b:2", None),
            Ok(TargetSpec::Shoal {
                seeds: vec!["a:1".into(), "b:2".into()],
                replicas: None
            })
        );
    }
}
