//! What a load run measured: per operation an HdrHistogram of latencies and errors by kind,
//! plus how many reads saw siblings (the paper's divergent-version figure, Dynamo §6.3).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies of one operation kind and its errors.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Successful requests' latencies, microseconds.
    pub histogram: Histogram<u64>,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            histogram: shoal_stages::seda::new_latency_histogram(),
            errors: BTreeMap::new(),
        }
    }
}

/// Everything one worker (or a whole run, once merged) recorded.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// By operation name (`get`, `put`, `insert`, `rmw`).
    pub ops: BTreeMap<&'static str, OpStats>,
    /// Reads that returned a value.
    pub reads: u64,
    /// Reads that returned more than one sibling.
    pub reads_with_siblings: u64,
}

impl Recorder {
    /// A successful request of `op` that took `latency`.
    pub fn ok(&mut self, op: &'static str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.ops
            .entry(op)
            .or_default()
            .histogram
            .saturating_record(micros);
    }

    /// A failed request of `op`.
    pub fn error(&mut self, op: &'static str, kind: &str) {
        *self
            .ops
            .entry(op)
            .or_default()
            .errors
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// A read that returned `siblings` values.
    pub fn read(&mut self, siblings: usize) {
        if siblings > 0 {
            self.reads += 1;
        }
        if siblings > 1 {
            self.reads_with_siblings += 1;
        }
    }

    /// Adds another recorder's counts into this one.
    pub fn merge(&mut self, other: &Recorder) {
        for (op, stats) in &other.ops {
            let mine = self.ops.entry(op).or_default();
            let _ = mine.histogram.add(&stats.histogram);
            for (kind, n) in &stats.errors {
                *mine.errors.entry(kind.clone()).or_default() += n;
            }
        }
        self.reads += other.reads;
        self.reads_with_siblings += other.reads_with_siblings;
    }

    /// Successful and failed requests of every operation.
    pub fn totals(&self) -> (u64, u64) {
        self.ops.values().fold((0, 0), |(ok, failed), s| {
            (
                ok + s.histogram.len(),
                failed + s.errors.values().sum::<u64>(),
            )
        })
    }

    /// The p50, p99 and p99.9 of every operation together, microseconds (for the live line
    /// and the plot); zeros when nothing succeeded.
    pub fn quantiles_us(&self) -> (u64, u64, u64) {
        let mut all = shoal_stages::seda::new_latency_histogram();
        for stats in self.ops.values() {
            let _ = all.add(&stats.histogram);
        }
        if all.is_empty() {
            (0, 0, 0)
        } else {
            (
                all.value_at_quantile(0.5),
                all.value_at_quantile(0.99),
                all.value_at_quantile(0.999),
            )
        }
    }
}

/// One operation's results, as the final table and the JSON show them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpSummary {
    /// Operation name.
    pub op: String,
    /// Successful requests.
    pub count: u64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest latency.
    pub max_us: u64,
}

/// Per-operation summaries of a run that lasted `elapsed`.
pub fn summarize(recorder: &Recorder, elapsed: Duration) -> Vec<OpSummary> {
    let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    recorder
        .ops
        .iter()
        .map(|(op, stats)| {
            let h = &stats.histogram;
            let q = |quantile: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(quantile)
                }
            };
            OpSummary {
                op: op.to_string(),
                count: h.len(),
                throughput: h.len() as f64 / seconds,
                errors: stats.errors.values().sum(),
                errors_by_kind: stats.errors.clone(),
                p50_us: q(0.5),
                p90_us: q(0.9),
                p99_us: q(0.99),
                p999_us: q(0.999),
                p9999_us: q(0.9999),
                max_us: if h.is_empty() { 0 } else { h.max() },
            }
        })
        .collect()
}

/// The human-readable table of a run.
pub fn table(summaries: &[OpSummary]) -> String {
    let mut out = format!(
        "{:<6} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
        "op", "count", "ops/s", "errors", "p50us", "p90us", "p99us", "p99.9us", "p99.99us", "maxus"
    );
    for s in summaries {
        out.push_str(&format!(
            "{:<6} {:>9} {:>9.0} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
            s.op,
            s.count,
            s.throughput,
            s.errors,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            s.p9999_us,
            s.max_us
        ));
        for (kind, n) in &s.errors_by_kind {
            out.push_str(&format!("       error {kind}: {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the report's percentiles are those of the recorded latencies. Method: record
    /// 1..=10000 µs once each (a known histogram) and check each percentile within HDR's
    /// 0.1% precision.
    #[test]
    fn report_percentiles_match_a_known_histogram() {
        let mut recorder = Recorder::default();
        for micros in 1..=10_000u64 {
            recorder.ok("get", Duration::from_micros(micros));
        }
        recorder.error("get", "Quorum");
        let summary = &summarize(&recorder, Duration::from_secs(2))[0];
        let near = |value: u64, expected: u64| {
            (value as f64 - expected as f64).abs() <= expected as f64 * 0.001 + 1.0
        };
        assert_eq!(summary.count, 10_000);
        assert_eq!(summary.throughput, 5_000.0);
        assert!(near(summary.p50_us, 5_000), "{}", summary.p50_us);
        assert!(near(summary.p90_us, 9_000), "{}", summary.p90_us);
        assert!(near(summary.p99_us, 9_900), "{}", summary.p99_us);
        assert!(near(summary.p999_us, 9_990), "{}", summary.p999_us);
        assert!(near(summary.max_us, 10_000), "{}", summary.max_us);
        assert_eq!(summary.errors_by_kind.get("Quorum"), Some(&1));
    }

    /// Goal: merging workers' recorders adds their counts.
    #[test]
    fn merged_recorders_add_up() {
        let (mut a, mut b) = (Recorder::default(), Recorder::default());
        a.ok("put", Duration::from_micros(10));
        b.ok("put", Duration::from_micros(20));
        b.read(2);
        a.merge(&b);
        assert_eq!(a.totals(), (2, 0));
        assert_eq!((a.reads, a.reads_with_siblings), (1, 1));
    }
}
