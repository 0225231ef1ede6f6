//! Samples every node's per-stage statistics once a second during a load run, so a person can
//! see which stage the pipeline backs up in: per stage, the peak and mean queue depth over the
//! run and the requests it refused, and the request path's stage that refused the most, else
//! queued the deepest.

use crate::client::Client;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often every node is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The table's node and stage columns are at least as wide as their headings.
const MIN_NODE_WIDTH: usize = 8;
const MIN_STAGE_WIDTH: usize = 11;
/// The stages a client's request waits in (the bottleneck line names the worst of them).
const REQUEST_PATH: [&str; 6] = [
    "intake",
    "parse",
    "coordinate",
    "replicate",
    "storage",
    "commit",
];

/// One stage of one node over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageDepth {
    /// Node id.
    pub node: String,
    /// Stage name.
    pub stage: String,
    /// `foreground` or `background`.
    pub class: String,
    /// Highest queue depth during the run: the highest sample, or the stage's high-water mark
    /// where that rose during the run (a peak between two samples).
    pub peak_depth: u64,
    /// Mean queue depth over the samples.
    pub mean_depth: f64,
    /// Highest queue-wait p99 seen, microseconds. The node's since it started (its histogram
    /// is not reset by a run), so it can tell of load before this run; the bottleneck is
    /// judged by `rejected` and `peak_depth` instead.
    pub wait_us_p99: u64,
    /// Requests the stage refused during the run (`Overloaded`: its queue was full).
    pub rejected: u64,
    /// A background stage's lowest and highest rate limit seen (units/s; `None`: unlimited
    /// or foreground), as the resource controller moved it.
    pub rate_per_sec_range: Option<(Option<u64>, Option<u64>)>,
    /// A background stage's mean used rate over the samples, units/s.
    pub mean_used_per_sec: f64,
    /// A background stage's largest backlog seen.
    pub peak_backlog: u64,
    /// Every sample: seconds since sampling started, and the queue depth then.
    pub depths: Vec<(f64, u64)>,
    samples: u64,
    depth_sum: u64,
    used_sum: u64,
    /// The previous sample's high-water mark and refusals, which the next one's are counted
    /// from.
    last_high_water: u64,
    last_rejected: u64,
}

/// The lower and higher of two rate limits, where `None` (unlimited) is the highest.
fn widen(
    range: Option<(Option<u64>, Option<u64>)>,
    rate: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let unlimited_last = |r: Option<u64>| r.unwrap_or(u64::MAX);
    match range {
        None => (rate, rate),
        Some((low, high)) => (
            if unlimited_last(rate) < unlimited_last(low) {
                rate
            } else {
                low
            },
            if unlimited_last(rate) > unlimited_last(high) {
                rate
            } else {
                high
            },
        ),
    }
}

fn rate_text(rate: Option<u64>) -> String {
    rate.map_or_else(|| "unlimited".into(), |r| r.to_string())
}

/// The sampler's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageSummary {
    /// Per node and stage.
    pub stages: Vec<StageDepth>,
    /// Where the request path backs up: the stage that refused the most requests during the
    /// run, else the one that queued the deepest.
    pub bottleneck: Option<String>,
    /// Members that did not answer some of the once-a-second samples (stopped, unreachable).
    /// Their rows cover only the samples they answered, and a member that never answered has
    /// none.
    pub missed: Vec<MissedSamples>,
}

/// A member that did not answer some of the samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MissedSamples {
    /// Its id, as the table's rows name it.
    pub node: String,
    /// Its address.
    pub addr: String,
    /// Samples it did not answer.
    pub missed: u64,
    /// Samples tried.
    pub tried: u64,
}

impl StageSummary {
    /// The human-readable table.
    pub fn table(&self) -> String {
        // As wide as the longest name (background_storage), so every row's columns line up.
        let node_width = self
            .stages
            .iter()
            .map(|s| s.node.len())
            .fold(MIN_NODE_WIDTH, usize::max);
        let stage_width = self
            .stages
            .iter()
            .map(|s| s.stage.len())
            .fold(MIN_STAGE_WIDTH, usize::max);
        let mut out = format!(
            "{:<node_width$}  {:<stage_width$}  {:>12}  {:>12}  {:>8}  {:>15}  {:>21}  {:>13}  {:>14}\n",
            "node",
            "stage",
            "depth (peak)",
            "depth (mean)",
            "rejected",
            "wait p99 us (*)",
            "rate/s (min..max)",
            "used/s (mean)",
            "backlog (peak)"
        );
        for s in &self.stages {
            let (rate, used, backlog) = match s.rate_per_sec_range {
                Some((low, high)) => (
                    format!("{}..{}", rate_text(low), rate_text(high)),
                    format!("{:.0}", s.mean_used_per_sec),
                    s.peak_backlog.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{:<node_width$}  {:<stage_width$}  {:>12}  {:>12.1}  {:>8}  {:>15}  {:>21}  {:>13}  {:>14}\n",
                s.node, s.stage, s.peak_depth, s.mean_depth, s.rejected, s.wait_us_p99, rate, used, backlog
            ));
        }
        if !self.stages.is_empty() {
            out.push_str("(*) since the node started, not this run alone\n");
        }
        if let Some(bottleneck) = &self.bottleneck {
            out.push_str(&format!("where the request path backs up: {bottleneck}\n"));
        }
        for m in &self.missed {
            let how = if m.missed < m.tried {
                "partly sampled"
            } else {
                "not sampled"
            };
            out.push_str(&format!(
                "{how}: {} ({}) did not answer {} of {} samples (stopped or unreachable)\n",
                m.node, m.addr, m.missed, m.tried
            ));
        }
        out
    }
}

/// The running sampler.
pub struct StageSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Sampled>,
}

/// What the sampling thread gathered: per node and stage, and per member (by address) the
/// samples it missed and tried, and its id.
#[derive(Default)]
struct Sampled {
    stages: BTreeMap<(String, String), StageDepth>,
    tries: BTreeMap<String, (u64, u64)>,
    ids: BTreeMap<String, String>,
}

impl StageSampler {
    /// Starts sampling every member of the cluster that `seeds` belong to.
    pub fn start(seeds: Vec<String>) -> Result<StageSampler, String> {
        let membership = seeds
            .iter()
            .find_map(|s| Client::connect(s, Duration::from_secs(5)).ok()?.ring().ok())
            .ok_or("cannot fetch the ring to sample stages")?;
        let members: Vec<(String, String)> = membership
            .members()
            .map(|m| (m.addr.to_string(), m.id.to_string()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || sample_until(members, &flag));
        Ok(StageSampler { stop, thread })
    }

    /// Stops sampling and summarises.
    pub fn finish(self) -> StageSummary {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.thread.join().unwrap_or_default();
        let ids = &sampled.ids;
        let missed = sampled
            .tries
            .iter()
            .filter(|(_, (missed, _))| *missed > 0)
            .map(|(addr, &(missed, tried))| MissedSamples {
                node: ids.get(addr).cloned().unwrap_or_else(|| "?".into()),
                addr: addr.clone(),
                missed,
                tried,
            })
            .collect();
        let stages: Vec<StageDepth> = sampled
            .stages
            .into_values()
            .map(|mut s| {
                s.mean_depth = s.depth_sum as f64 / s.samples.max(1) as f64;
                s.mean_used_per_sec = s.used_sum as f64 / s.samples.max(1) as f64;
                s
            })
            .collect();
        StageSummary {
            bottleneck: bottleneck(&stages),
            stages,
            missed,
        }
    }
}

/// The node and stage of the request path that refused the most requests during the run,
/// else that queued the deepest. Background stages wait by design (their gate), and gossip is
/// foreground (so membership converges under load) but no request waits in its queue: the
/// question is where the request pipeline backs up. Judged by what happened during the run:
/// a node's wait percentiles are since it started (a trial was pointed at a departed node's
/// old commit wait), and a queue that filled and refused between two samples showed depth 0.
fn bottleneck(stages: &[StageDepth]) -> Option<String> {
    let path = || {
        stages
            .iter()
            .filter(|s| REQUEST_PATH.contains(&s.stage.as_str()))
    };
    if let Some(s) = path().filter(|s| s.rejected > 0).max_by_key(|s| s.rejected) {
        return Some(format!(
            "{} on {} (refused {} requests: its queue was full)",
            s.stage, s.node, s.rejected
        ));
    }
    path()
        .filter(|s| s.peak_depth > 0)
        .max_by_key(|s| s.peak_depth)
        .map(|s| format!("{} on {} (queued up to {})", s.stage, s.node, s.peak_depth))
}

/// Samples the members of the ring a sampled node reports now: a node that joins during the
/// run is sampled from its join on (before, the list was fixed at the start, and a joined
/// node that took a quarter of the traffic was missing from the table and the plot), and one
/// no longer a member is no longer dialled (what it showed stays in the summary).
fn follow_the_ring(
    clients: &mut BTreeMap<String, Option<Client>>,
    ids: &mut BTreeMap<String, String>,
) {
    let ring = clients
        .values_mut()
        .flatten()
        .find_map(|client| client.ring().ok());
    if let Some(membership) = ring {
        let members: Vec<String> = membership.members().map(|m| m.addr.to_string()).collect();
        clients.retain(|addr, _| members.contains(addr));
        for m in membership.members() {
            ids.insert(m.addr.to_string(), m.id.to_string());
        }
        for addr in members {
            clients.entry(addr).or_insert(None);
        }
    }
}

/// Samples `members` (address, id) and those the ring adds, until `stop`.
fn sample_until(members: Vec<(String, String)>, stop: &AtomicBool) -> Sampled {
    let mut stages: BTreeMap<(String, String), StageDepth> = BTreeMap::new();
    let mut tries: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut ids: BTreeMap<String, String> = members.iter().cloned().collect();
    let mut clients: BTreeMap<String, Option<Client>> =
        members.into_iter().map(|(addr, _)| (addr, None)).collect();
    let started = Instant::now();
    let mut next = started;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += SAMPLE_EVERY;
            follow_the_ring(&mut clients, &mut ids);
            for (addr, slot) in clients.iter_mut() {
                if slot.is_none() {
                    *slot = Client::connect(addr, Duration::from_secs(1)).ok();
                }
                let (missed, tried) = tries.entry(addr.clone()).or_default();
                *tried += 1;
                let Some(stats) = slot.as_mut().and_then(|client| client.stats().ok()) else {
                    *missed += 1;
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
                            last_high_water: s.queue_high_water,
                            last_rejected: s.rejected,
                            ..StageDepth::default()
                        });
                    entry.peak_depth = entry.peak_depth.max(s.queue_depth);
                    // Counted from the previous sample; a count that fell is a node that
                    // restarted during the run and counts from zero again (a counter reset).
                    entry.rejected += match s.rejected.checked_sub(entry.last_rejected) {
                        Some(since) => since,
                        None => s.rejected,
                    };
                    // A high-water mark that moved (rose, or began again after a restart) is
                    // a peak of this run's, perhaps between two samples.
                    if s.queue_high_water != entry.last_high_water {
                        entry.peak_depth = entry.peak_depth.max(s.queue_high_water);
                    }
                    (entry.last_rejected, entry.last_high_water) = (s.rejected, s.queue_high_water);
                    let t = started.elapsed().as_secs_f64();
                    entry.depths.push((t, s.queue_depth));
                    entry.depth_sum += s.queue_depth;
                    entry.samples += 1;
                    entry.wait_us_p99 = entry.wait_us_p99.max(s.wait_us_p99);
                }
                for b in stats.background {
                    if let Some(entry) = stages.get_mut(&(stats.node.to_string(), b.name)) {
                        entry.rate_per_sec_range =
                            Some(widen(entry.rate_per_sec_range, b.rate_per_sec));
                        entry.used_sum += b.used_per_sec;
                        entry.peak_backlog = entry.peak_backlog.max(b.backlog);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Sampled { stages, tries, ids }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the bottleneck line names the request path's stage that refused the most during
    /// the run, else the one that queued deepest, never gossip's (a new-user trial was told
    /// "gossip on n1"), and never by a node's lifetime wait (another was pointed at a departed
    /// node's commit stage while storage refused 18685 requests).
    #[test]
    fn the_bottleneck_is_the_request_paths_refusals_then_its_deepest_queue() {
        let stage = |name: &str, peak_depth, rejected, wait_us_p99| StageDepth {
            node: "n1".into(),
            stage: name.into(),
            class: "foreground".into(),
            peak_depth,
            rejected,
            wait_us_p99,
            ..StageDepth::default()
        };
        let stages = [
            stage("gossip", 50, 0, 2353),
            stage("commit", 0, 0, 5535),
            stage("parse", 3, 0, 90),
            stage("storage", 0, 18685, 120),
        ];
        assert_eq!(
            bottleneck(&stages).as_deref(),
            Some("storage on n1 (refused 18685 requests: its queue was full)")
        );
        assert_eq!(
            bottleneck(&stages[..3]).as_deref(),
            Some("parse on n1 (queued up to 3)")
        );
        assert_eq!(bottleneck(&stages[..2]), None, "nothing queued on the path");
    }

    /// Goal: the table's columns line up whatever the stage names' lengths (a new-user trial
    /// saw background_storage push every later column of its rows out of line).
    #[test]
    fn the_stage_table_lines_up_with_the_longest_stage_name() {
        let stage = |name: &str, rate| StageDepth {
            node: "n1".into(),
            stage: name.into(),
            peak_depth: 3,
            rate_per_sec_range: rate,
            ..StageDepth::default()
        };
        let summary = StageSummary {
            stages: vec![
                stage("intake", None),
                stage("background_storage", Some((Some(20), None))),
            ],
            ..StageSummary::default()
        };
        let table = summary.table();
        // Every column has a fixed width and the last is right-aligned: rows of one length
        // are rows whose columns line up.
        let rows: Vec<&str> = table
            .lines()
            .take_while(|l| !l.starts_with("(*)"))
            .collect();
        let widths: Vec<usize> = rows.iter().map(|l| l.len()).collect();
        assert_eq!(widths.len(), 3, "{table}");
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
    }

    /// Goal: a member that missed samples (stopped, unreachable) is named under the table
    /// with how many it missed, not silently left out (a new-user trial's stopped node was
    /// simply absent from the table).
    #[test]
    fn a_member_that_missed_samples_is_named_under_the_table() {
        let summary = StageSummary {
            missed: vec![
                MissedSamples {
                    node: "n3".into(),
                    addr: "127.0.0.1:7403".into(),
                    missed: 12,
                    tried: 30,
                },
                MissedSamples {
                    node: "n4".into(),
                    addr: "127.0.0.1:7404".into(),
                    missed: 30,
                    tried: 30,
                },
            ],
            ..StageSummary::default()
        };
        let table = summary.table();
        assert!(
            table.contains("partly sampled: n3 (127.0.0.1:7403) did not answer 12 of 30 samples"),
            "{table}"
        );
        assert!(
            table.contains("not sampled: n4 (127.0.0.1:7404) did not answer 30 of 30 samples"),
            "{table}"
        );
    }
}
