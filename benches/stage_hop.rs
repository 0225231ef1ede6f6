//! What a stage hop costs in the worker pool, and how batching and the one spinner amortize
//! the wake-up that starts a chain.
//!
//! Run: `cargo bench --bench stage_hop`. Builds chains of real SEDA stages in one worker pool
//! (the runtime the node uses: bounded crossbeam queues, shared workers, stats) where each
//! stage forwards its event to the next, and measures:
//! 1. latency: one event at a time through the idle chain, per hop, for pool spin 0 / 50 /
//!    200 µs (the first hop wakes a parked or spinning worker; the others run on it);
//! 2. throughput: a stream of events pushed as fast as the first queue takes them, for
//!    batch_max 1 / 64 and spin 0 / 50 µs.
//!
//! Each figure is the median of `RUNS` runs. A raw two-thread crossbeam ping-pong is the
//! baseline measured in the same run.

use crossbeam_channel::{bounded, Receiver, Sender};
use shoal_stages::seda::{
    stage_queue, PoolSettings, Stage, StageClass, StageHandle, StageSender, StageSpec, WorkerPool,
};
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const LATENCY_EVENTS: usize = 2_000;
const THROUGHPUT_EVENTS: usize = 200_000;
const HOPS: usize = 3;

/// Forwards each event to the next stage, or reports it done.
struct Relay {
    next: Option<StageSender<u64>>,
    done: Sender<u64>,
}

impl Stage for Relay {
    type Event = u64;
    fn handle_batch(&mut self, _now: Instant, batch: &mut Vec<u64>) {
        for event in batch.drain(..) {
            match &self.next {
                Some(next) => {
                    let _ = next.send(event);
                }
                None => {
                    let _ = self.done.send(event);
                }
            }
        }
    }
}

const NAMES: [&str; HOPS] = ["relay-0", "relay-1", "relay-2"];

fn spec(name: &'static str, batch_max: usize) -> StageSpec {
    StageSpec {
        name,
        class: StageClass::Foreground,
        threads: 1,
        queue_capacity: 1024,
        batch_max,
        tick: Duration::from_millis(100),
    }
}

/// A running chain: its entry, its exit, its stages and the pool.
struct Chain {
    entry: StageSender<u64>,
    exit: Receiver<u64>,
    handles: Vec<StageHandle>,
    pool: WorkerPool,
}

/// Builds a chain of `HOPS` stages in a pool of two workers.
fn chain(batch_max: usize, spin_us: u64) -> Chain {
    let (done_tx, done_rx) = bounded(THROUGHPUT_EVENTS);
    let mut pool = WorkerPool::new(PoolSettings {
        workers: 2,
        spin: Duration::from_micros(spin_us),
        thread_name: "worker",
        nice_steps: 0,
    });
    let mut next: Option<StageSender<u64>> = None;
    let mut handles = Vec::new();
    for name in NAMES {
        let spec = spec(name, batch_max);
        let (tx, rx) = stage_queue::<u64>(&spec, Some(pool.waker(&spec)));
        let relay_next = next.clone();
        let done = done_tx.clone();
        handles.push(pool.add_stage(&spec, rx, move |_| Relay {
            next: relay_next.clone(),
            done: done.clone(),
        }));
        next = Some(tx);
    }
    pool.start().expect("start the pool");
    // The last stage added is the entry: stop it first.
    handles.reverse();
    Chain {
        entry: next.expect("at least one hop"),
        exit: done_rx,
        handles,
        pool,
    }
}

fn stop(chain: Chain) {
    for h in chain.handles {
        h.stop_and_join();
    }
    chain.pool.stop_and_join();
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median one-way latency per hop, microseconds.
fn latency_per_hop_us(spin_us: u64) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let chain = chain(64, spin_us);
            let mut samples = Vec::with_capacity(LATENCY_EVENTS);
            for i in 0..LATENCY_EVENTS as u64 {
                // A short pause lets every worker go idle, as between sparse requests.
                std::thread::sleep(Duration::from_micros(300));
                let start = Instant::now();
                chain.entry.send(i).expect("send");
                chain.exit.recv().expect("recv");
                samples.push(start.elapsed().as_secs_f64() * 1e6 / HOPS as f64);
            }
            stop(chain);
            median(samples)
        })
        .collect();
    median(runs)
}

/// Median events per second through the whole chain.
fn throughput_per_sec(batch_max: usize, spin_us: u64) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let chain = chain(batch_max, spin_us);
            let start = Instant::now();
            let entry = chain.entry.clone();
            let feeder = std::thread::spawn(move || {
                for i in 0..THROUGHPUT_EVENTS as u64 {
                    entry.send(i).expect("send");
                }
            });
            for _ in 0..THROUGHPUT_EVENTS {
                chain.exit.recv().expect("recv");
            }
            let elapsed = start.elapsed().as_secs_f64();
            feeder.join().expect("feeder");
            stop(chain);
            THROUGHPUT_EVENTS as f64 / elapsed
        })
        .collect();
    median(runs)
}

/// Baseline: raw crossbeam ping-pong between two threads, one-way microseconds.
fn raw_ping_pong_us() -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let (ping_tx, ping_rx) = bounded::<u64>(1);
            let (pong_tx, pong_rx) = bounded::<u64>(1);
            let echo = std::thread::spawn(move || {
                while let Ok(x) = ping_rx.recv() {
                    if pong_tx.send(x).is_err() {
                        break;
                    }
                }
            });
            let mut samples = Vec::new();
            for i in 0..LATENCY_EVENTS as u64 {
                std::thread::sleep(Duration::from_micros(300));
                let start = Instant::now();
                ping_tx.send(i).expect("ping");
                pong_rx.recv().expect("pong");
                samples.push(start.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
            drop(ping_tx);
            echo.join().expect("echo");
            median(samples)
        })
        .collect();
    median(runs)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list themselves
    }
    println!("stage hop benchmark: chains of {HOPS} stages, median of {RUNS} runs");
    println!(
        "baseline raw crossbeam wake-up, one way: {:.1} us",
        raw_ping_pong_us()
    );
    println!("\nlatency of one event per hop (idle pipeline):");
    for spin in [0, 50, 200] {
        println!(
            "  spin {spin:>3} us: {:>7.1} us/hop",
            latency_per_hop_us(spin)
        );
    }
    println!("\nthroughput of a stream through {HOPS} hops:");
    for (batch, spin) in [(1, 0), (64, 0), (1, 50), (64, 50)] {
        println!(
            "  batch_max {batch:>2}, spin {spin:>2} us: {:>10.0} events/s",
            throughput_per_sec(batch, spin)
        );
    }
}
