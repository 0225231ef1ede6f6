//! Live statistics of one stage, updated by its queue and workers and read by `admin stats`.

use super::StageClass;
use crate::event::Operation;
use crate::wire::OperationLatency;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Largest latency a histogram records (60 s); longer samples are clamped to it.
const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Significant decimal digits the histograms keep (0.1% resolution).
const HISTOGRAM_DIGITS: u8 = 3;

/// A latency histogram in microseconds.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure here would be a programming
    // error caught by every test that builds a stage.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Upper bounds, in µs, of the buckets a latency histogram is exported with (Prometheus's
/// `le`): a 1-2.5-5 series from 50 µs to 10 s, enough to tell a queue hop from a flush from a
/// stall.
pub const EXPORT_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram in the shape Prometheus reads: cumulative counts at fixed bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedHistogram {
    /// Sum of the recorded values, µs. HDR histograms keep no exact sum: this is count × mean,
    /// exact to the histogram's 0.1 % resolution.
    pub sum_us: f64,
    /// Values recorded.
    pub count: u64,
    /// For each of [`EXPORT_BOUNDS_US`]: the bound and how many values are at most it.
    pub buckets: Vec<(u64, u64)>,
}

impl ExportedHistogram {
    /// The export of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> ExportedHistogram {
        let count = histogram.len();
        let buckets = EXPORT_BOUNDS_US
            .iter()
            .map(|&bound| {
                let at_most = if count == 0 {
                    0
                } else {
                    histogram.count_between(0, bound)
                };
                (bound, at_most)
            })
            .collect();
        ExportedHistogram {
            sum_us: histogram.mean() * count as f64,
            count,
            buckets,
        }
    }

    /// The export of a shared histogram (empty if its lock was poisoned).
    fn of_shared(histogram: &Mutex<Histogram<u64>>) -> ExportedHistogram {
        match histogram.lock() {
            Ok(h) => ExportedHistogram::of(&h),
            Err(_) => ExportedHistogram::of(&new_latency_histogram()),
        }
    }
}

/// Microseconds of a duration, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Counters and histograms of one stage. Counters are relaxed atomics: they are statistics,
/// nothing synchronises through them.
pub struct StageStats {
    /// The stage's name, as in the stage table.
    pub name: &'static str,
    /// Foreground or background.
    pub class: StageClass,
    /// Slots: the most pool workers that serve the stage at once (`threads` in the config).
    pub threads: usize,
    /// Queue bound.
    pub queue_capacity: usize,
    pub(crate) enqueued: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) high_water: AtomicUsize,
    pub(crate) busy_threads: AtomicUsize,
    /// Time events spent queued before a worker took them.
    pub(crate) wait_us: Mutex<Histogram<u64>>,
    /// Handling time per event (a batch's time divided by its size).
    pub(crate) service_us: Mutex<Histogram<u64>>,
    /// Queue wait since the resource controller last took it: its recent-latency signal
    /// (the lifetime histogram above is for display).
    pub(crate) recent_wait_us: Mutex<Histogram<u64>>,
}

/// A copy of a stage's statistics at one moment, as `admin stats --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSnapshot {
    /// Stage name.
    pub name: String,
    /// `"foreground"` or `"background"`.
    pub class: String,
    /// Slots: the most pool workers that serve the stage at once (`threads` in the config).
    pub threads: u64,
    /// Events waiting now.
    pub queue_depth: u64,
    /// Queue bound.
    pub queue_capacity: u64,
    /// Most events ever waiting at once.
    pub queue_high_water: u64,
    /// Events accepted into the queue.
    pub enqueued: u64,
    /// Events handled.
    pub processed: u64,
    /// Events refused because the queue was full.
    pub rejected: u64,
    /// Workers handling a batch now.
    pub busy_threads: u64,
    /// Queue wait, median, microseconds.
    pub wait_us_p50: u64,
    /// Queue wait, 99th percentile, microseconds.
    pub wait_us_p99: u64,
    /// Service time per event, median, microseconds.
    pub service_us_p50: u64,
    /// Service time per event, 99th percentile, microseconds.
    pub service_us_p99: u64,
}

impl StageStats {
    /// Fresh statistics for a stage.
    pub fn new(
        name: &'static str,
        class: StageClass,
        threads: usize,
        queue_capacity: usize,
    ) -> StageStats {
        StageStats {
            name,
            class,
            threads,
            queue_capacity,
            enqueued: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            high_water: AtomicUsize::new(0),
            busy_threads: AtomicUsize::new(0),
            wait_us: Mutex::new(new_latency_histogram()),
            service_us: Mutex::new(new_latency_histogram()),
            recent_wait_us: Mutex::new(new_latency_histogram()),
        }
    }

    /// Counts an accepted event and the queue depth it found.
    pub(crate) fn on_enqueued(&self, depth_after: usize) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.high_water.fetch_max(depth_after, Ordering::Relaxed);
    }

    /// Counts a refused event.
    pub(crate) fn on_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Events refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Events handled so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Records one handled batch: each event's queue wait, and the batch's service time.
    pub(crate) fn on_batch(&self, waits: &[Duration], service: Duration) {
        if waits.is_empty() {
            return;
        }
        for histogram in [&self.wait_us, &self.recent_wait_us] {
            if let Ok(mut histogram) = histogram.lock() {
                for wait in waits {
                    histogram.saturating_record(micros(*wait));
                }
            }
        }
        let per_event = micros(service) / waits.len() as u64;
        if let Ok(mut histogram) = self.service_us.lock() {
            histogram.saturating_record_n(per_event, waits.len() as u64);
        }
        self.processed
            .fetch_add(waits.len() as u64, Ordering::Relaxed);
    }

    /// The queue waits recorded since the last call (the controller takes them once a period).
    pub fn take_recent_wait(&self) -> Histogram<u64> {
        take(&self.recent_wait_us)
    }

    /// The lifetime queue-wait and service-time histograms, for export.
    pub fn exported(&self) -> (ExportedHistogram, ExportedHistogram) {
        (
            ExportedHistogram::of_shared(&self.wait_us),
            ExportedHistogram::of_shared(&self.service_us),
        )
    }

    /// A snapshot, given the current queue depth (which only the queue knows).
    pub fn snapshot(&self, queue_depth: usize) -> StageSnapshot {
        let (wait_p50, wait_p99) = percentiles(&self.wait_us);
        let (service_p50, service_p99) = percentiles(&self.service_us);
        StageSnapshot {
            name: self.name.to_string(),
            class: self.class.to_string(),
            threads: self.threads as u64,
            queue_depth: queue_depth as u64,
            queue_capacity: self.queue_capacity as u64,
            queue_high_water: self.high_water.load(Ordering::Relaxed) as u64,
            enqueued: self.enqueued.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            busy_threads: self.busy_threads.load(Ordering::Relaxed) as u64,
            wait_us_p50: wait_p50,
            wait_us_p99: wait_p99,
            service_us_p50: service_p50,
            service_us_p99: service_p99,
        }
    }
}

/// p50 and p99 of a shared histogram (zeros if it is empty or its lock was poisoned).
fn percentiles(histogram: &Mutex<Histogram<u64>>) -> (u64, u64) {
    match histogram.lock() {
        Ok(h) if !h.is_empty() => (h.value_at_quantile(0.5), h.value_at_quantile(0.99)),
        _ => (0, 0),
    }
}

/// Empties a shared histogram and returns what it held.
fn take(histogram: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    match histogram.lock() {
        Ok(mut h) => std::mem::replace(&mut *h, new_latency_histogram()),
        Err(_) => new_latency_histogram(),
    }
}

/// Latency per client operation, in operation order.
type LatencyMap = std::collections::BTreeMap<Operation, Histogram<u64>>;

/// End-to-end latency histograms of client operations: the coordinator's machine reports each
/// answered request as an effect, the driver records it here, and `admin stats` reads it. Two
/// views: per operation since the start (for display), and every operation since the resource
/// controller last took them (its signal: a recent window, never the lifetime).
#[derive(Clone)]
pub struct OperationLatencies {
    histograms: std::sync::Arc<Mutex<LatencyMap>>,
    recent: std::sync::Arc<Mutex<Histogram<u64>>>,
}

impl Default for OperationLatencies {
    fn default() -> OperationLatencies {
        OperationLatencies {
            histograms: Default::default(),
            recent: std::sync::Arc::new(Mutex::new(new_latency_histogram())),
        }
    }
}

impl OperationLatencies {
    /// Records one answered request.
    pub fn record(&self, operation: Operation, latency: Duration) {
        let micros = micros(latency);
        if let Ok(mut map) = self.histograms.lock() {
            map.entry(operation)
                .or_insert_with(new_latency_histogram)
                .saturating_record(micros);
        }
        if let Ok(mut recent) = self.recent.lock() {
            recent.saturating_record(micros);
        }
    }

    /// Every operation's latency recorded since the last call.
    pub fn take_recent(&self) -> Histogram<u64> {
        take(&self.recent)
    }

    /// Each operation's lifetime latency histogram, for export, in operation order.
    pub fn exported(&self) -> Vec<(&'static str, ExportedHistogram)> {
        let Ok(map) = self.histograms.lock() else {
            return Vec::new();
        };
        map.iter()
            .map(|(operation, h)| (operation.name(), ExportedHistogram::of(h)))
            .collect()
    }

    /// Percentiles per operation.
    pub fn snapshot(&self) -> Vec<OperationLatency> {
        let Ok(map) = self.histograms.lock() else {
            return Vec::new();
        };
        map.iter()
            .map(|(operation, h)| OperationLatency {
                operation: operation.name().to_string(),
                count: h.len(),
                latency_us_p50: h.value_at_quantile(0.5),
                latency_us_p99: h.value_at_quantile(0.99),
                latency_us_p999: h.value_at_quantile(0.999),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an exported histogram counts, at each bound, the values at most that bound (what
    /// Prometheus's `le` means), with the total count and sum.
    #[test]
    fn exported_buckets_count_the_values_at_most_each_bound() {
        let mut histogram = new_latency_histogram();
        for value in [10, 200, 3_000, 20_000_000] {
            histogram.record(value).expect("in range");
        }
        let exported = ExportedHistogram::of(&histogram);
        let at = |bound: u64| {
            exported
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map(|(_, n)| *n)
        };
        assert_eq!(at(50), Some(1));
        assert_eq!(at(250), Some(2));
        assert_eq!(at(5_000), Some(3));
        assert_eq!(at(10_000_000), Some(3), "20 s is above every bound");
        assert_eq!(exported.count, 4);
        let sum = 10.0 + 200.0 + 3_000.0 + 20_000_000.0;
        assert!(
            (exported.sum_us - sum).abs() / sum < 0.01,
            "{}",
            exported.sum_us
        );
        assert_eq!(ExportedHistogram::of(&new_latency_histogram()).count, 0);
    }
}
