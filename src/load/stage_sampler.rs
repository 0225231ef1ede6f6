//! Samples every node's per-stage statistics once a second during a load run, so a person can
//! see which stage the pipeline backs up in: per stage, the peak and mean queue depth over the
//! run, and the stage with the highest queue wait.

use crate::client::Client;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often every node is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One stage of one node over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageDepth {
    /// Node id.
    pub node: String,
    /// Stage name.
    pub stage: String,
    /// `foreground` or `background`.
    pub class: String,
    /// Highest queue depth seen.
    pub peak_depth: u64,
    /// Mean queue depth over the samples.
    pub mean_depth: f64,
    /// Highest queue-wait p99 seen, microseconds.
    pub wait_us_p99: u64,
    samples: u64,
    depth_sum: u64,
}

/// The sampler's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageSummary {
    /// Per node and stage.
    pub stages: Vec<StageDepth>,
    /// The node and foreground stage with the highest queue wait: where the pipeline backs up.
    pub bottleneck: Option<String>,
}

impl StageSummary {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:<11} {:>10} {:>10} {:>13}\n",
            "node", "stage", "peak depth", "mean depth", "wait p99 us"
        );
        for s in &self.stages {
            out.push_str(&format!(
                "{:<8} {:<11} {:>10} {:>10.1} {:>13}\n",
                s.node, s.stage, s.peak_depth, s.mean_depth, s.wait_us_p99
            ));
        }
        if let Some(bottleneck) = &self.bottleneck {
            out.push_str(&format!("highest foreground queue wait: {bottleneck}\n"));
        }
        out
    }
}

/// The running sampler.
pub struct StageSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<(String, String), StageDepth>>,
}

impl StageSampler {
    /// Starts sampling every member of the cluster that `seeds` belong to.
    pub fn start(seeds: Vec<String>) -> Result<StageSampler, String> {
        let membership = seeds
            .iter()
            .find_map(|s| Client::connect(s, Duration::from_secs(5)).ok()?.ring().ok())
            .ok_or("cannot fetch the ring to sample stages")?;
        let addrs: Vec<String> = membership.members().map(|m| m.addr.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || sample_until(&addrs, &flag));
        Ok(StageSampler { stop, thread })
    }

    /// Stops sampling and summarises.
    pub fn finish(self) -> StageSummary {
        self.stop.store(true, Ordering::Relaxed);
        let stages: Vec<StageDepth> = self
            .thread
            .join()
            .unwrap_or_default()
            .into_values()
            .map(|mut s| {
                s.mean_depth = s.depth_sum as f64 / s.samples.max(1) as f64;
                s
            })
            .collect();
        // Background stages wait by design (their rate gate); the question is where the
        // request pipeline backs up, so only foreground stages compete.
        let bottleneck = stages
            .iter()
            .filter(|s| s.class == "foreground")
            .max_by_key(|s| s.wait_us_p99)
            .filter(|s| s.wait_us_p99 > 0)
            .map(|s| format!("{} on {} (p99 {} us)", s.stage, s.node, s.wait_us_p99));
        StageSummary { stages, bottleneck }
    }
}

fn sample_until(addrs: &[String], stop: &AtomicBool) -> BTreeMap<(String, String), StageDepth> {
    let mut stages: BTreeMap<(String, String), StageDepth> = BTreeMap::new();
    let mut clients: Vec<Option<Client>> = addrs.iter().map(|_| None).collect();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += SAMPLE_EVERY;
            for (addr, slot) in addrs.iter().zip(clients.iter_mut()) {
                if slot.is_none() {
                    *slot = Client::connect(addr, Duration::from_secs(1)).ok();
                }
                let Some(client) = slot else { continue };
                let Ok(stats) = client.stats() else {
                    *slot = None; // a stopped node: try again next second
                    continue;
                };
                for s in stats.stages {
                    let entry = stages
                        .entry((stats.node.to_string(), s.name.clone()))
                        .or_insert_with(|| StageDepth {
                            node: stats.node.to_string(),
                            stage: s.name.clone(),
                            class: s.class.clone(),
                            ..StageDepth::default()
                        });
                    entry.peak_depth = entry.peak_depth.max(s.queue_depth);
                    entry.depth_sum += s.queue_depth;
                    entry.samples += 1;
                    entry.wait_us_p99 = entry.wait_us_p99.max(s.wait_us_p99);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stages
}
