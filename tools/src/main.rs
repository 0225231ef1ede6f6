//! `shoal-load`: drives a closed-loop get/put load against a shoal node and reports throughput
//! and latency percentiles per operation.
//!
//! This is the first cut: closed loop, uniform keys, a read fraction, per-request r/w, one
//! partition-aware client per thread (each request goes straight to a node of the key's
//! preference list). Workloads, key distributions, open loop and the per-stage sampling come
//! with the load-tool issue.

use clap::Parser;
use hdrhistogram::Histogram;
use shoal::client::{ClientError, RequestOptions};
use shoal::cluster_client::ClusterClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Closed-loop load against one shoal node.
#[derive(Parser, Debug, Clone)]
#[command(name = "shoal-load", version, about)]
struct Args {
    /// Seed nodes, host:port[,host:port...]; the ring is fetched from the first that answers.
    #[arg(long, default_value = "127.0.0.1:7401")]
    node: String,
    /// The cluster's replication factor N (the preference list length to route by).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Read quorum per request (the node's default when absent).
    #[arg(long)]
    r: Option<u8>,
    /// Write quorum per request (the node's default when absent).
    #[arg(long)]
    w: Option<u8>,
    /// Client threads, one connection each.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Fraction of operations that are gets (0.0 = write-only, 1.0 = read-only).
    #[arg(long, default_value_t = 0.5)]
    read_fraction: f64,
    /// Distinct keys (loaded before the run when reads are part of the mix).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One thread's results.
struct ThreadReport {
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("constant bounds"))
}

/// xorshift64*: a tiny seeded generator, so runs are reproducible without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Service(e) => format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("service")
            .to_string(),
        ClientError::Io(_) => "io".into(),
        other => other.to_string(),
    }
}

fn connect(args: &Args) -> Result<ClusterClient, ClientError> {
    let seeds: Vec<String> = args.node.split(',').map(|s| s.trim().to_string()).collect();
    ClusterClient::connect(&seeds, args.replicas, Duration::from_secs(10))
}

fn run_thread(args: Args, index: usize, deadline: Instant) -> Result<ThreadReport, ClientError> {
    let mut client = connect(&args)?;
    let options = RequestOptions {
        r: args.r,
        w: args.w,
        timeout_ms: None,
    };
    let mut report = ThreadReport {
        histograms: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    let value = vec![b'x'; args.value_bytes];
    let mut state = args
        .seed
        .wrapping_add(index as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    while Instant::now() < deadline {
        let key = format!("key{:012}", next_random(&mut state) % args.keys.max(1));
        let read = (next_random(&mut state) % 10_000) as f64 / 10_000.0 < args.read_fraction;
        let start = Instant::now();
        let (operation, result) = if read {
            ("get", client.get(key.as_bytes(), options).map(|_| ()))
        } else {
            (
                "put",
                client
                    .put(key.as_bytes(), None, &value, options)
                    .map(|_| ()),
            )
        };
        let micros = start.elapsed().as_micros() as u64;
        match result {
            Ok(()) => report
                .histograms
                .entry(operation)
                .or_insert_with(histogram)
                .saturating_record(micros),
            Err(e) => {
                *report
                    .errors
                    .entry(format!("{operation}:{}", error_kind(&e)))
                    .or_default() += 1
            }
        }
    }
    Ok(report)
}

/// Writes every key once so reads find values (blind puts; siblings do not matter here).
fn load_phase(args: &Args) -> Result<(), ClientError> {
    let per_thread = args.keys.div_ceil(args.threads as u64);
    let handles: Vec<_> = (0..args.threads as u64)
        .map(|t| {
            let args = args.clone();
            std::thread::spawn(move || -> Result<(), ClientError> {
                let mut client = connect(&args)?;
                let value = vec![b'x'; args.value_bytes];
                for k in (t * per_thread)..((t + 1) * per_thread).min(args.keys) {
                    client.put(
                        format!("key{k:012}").as_bytes(),
                        None,
                        &value,
                        RequestOptions::default(),
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| ClientError::Usage("load thread panicked".into()))??;
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if args.threads == 0 || !(0.0..=1.0).contains(&args.read_fraction) || args.duration_secs == 0 {
        eprintln!(
            "error: --threads and --duration-secs must be positive, --read-fraction within 0..=1"
        );
        std::process::exit(2);
    }
    if args.read_fraction > 0.0 {
        if let Err(e) = load_phase(&args) {
            eprintln!("error: load phase failed: {e}");
            std::process::exit(1);
        }
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_secs);
    let handles: Vec<_> = (0..args.threads)
        .map(|i| {
            let args = args.clone();
            std::thread::spawn(move || run_thread(args, i, deadline))
        })
        .collect();
    let mut totals: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(report)) => {
                for (op, h) in report.histograms {
                    let _ = totals.entry(op).or_insert_with(histogram).add(&h);
                }
                for (kind, n) in report.errors {
                    *errors.entry(kind).or_default() += n;
                }
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("error: a load thread panicked");
                std::process::exit(1);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "shoal-load: {} threads, {:.1} s, read fraction {}, {} keys, {} B values",
        args.threads, elapsed, args.read_fraction, args.keys, args.value_bytes
    );
    println!(
        "{:<5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "op", "count", "ops/s", "p50us", "p90us", "p99us", "p99.9us", "p99.99us", "maxus"
    );
    for (op, h) in &totals {
        println!(
            "{:<5} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            op,
            h.len(),
            h.len() as f64 / elapsed,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.value_at_quantile(0.9999),
            h.max()
        );
    }
    for (kind, n) in &errors {
        println!("errors {kind}: {n}");
    }
}
