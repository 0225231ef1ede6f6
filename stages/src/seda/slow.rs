//! Warnings for stalls an operator should see: a step that took far longer than it should
//! (the intake loop's turn, a journal flush), as etcd warns of a slow fdatasync.
//!
//! A stall worth knowing about tends to come in bursts (a disk busy with a compaction slows
//! every flush for a second), so warnings are rate-limited: at most one per
//! `WARNING_INTERVAL`, saying how many stalls it stands for, the worst of them and what the
//! caller recorded about that worst one.

use std::time::{Duration, Instant};

/// Shortest time between two warnings of one watch.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Stalls seen since the last warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalls<D> {
    /// How many took at least the threshold.
    pub count: u64,
    /// The longest of them.
    pub worst: Duration,
    /// What the caller recorded about the longest (where its time went).
    pub detail: D,
}

/// Watches one step's durations against a threshold.
#[derive(Debug)]
pub struct SlowWatch<D> {
    /// A step at least this long is a stall.
    threshold: Duration,
    /// When the last warning was given.
    last_warned: Option<Instant>,
    /// Stalls not warned of yet (none if `None`).
    pending: Option<Stalls<D>>,
}

impl<D: Copy> SlowWatch<D> {
    /// A watch that counts steps of at least `threshold`.
    pub fn new(threshold: Duration) -> SlowWatch<D> {
        SlowWatch {
            threshold,
            last_warned: None,
            pending: None,
        }
    }

    /// Records a step that took `took`, ending at `now`, with `detail` about it: the stalls to
    /// warn of now, if any. The first stall warns at once; later ones at most once per
    /// `WARNING_INTERVAL`, with the first step after it (a stall or not), so a burst's last
    /// stalls are not held back until the next one.
    pub fn observe(&mut self, took: Duration, now: Instant, detail: D) -> Option<Stalls<D>> {
        if took >= self.threshold {
            let pending = self.pending.get_or_insert(Stalls {
                count: 0,
                worst: took,
                detail,
            });
            pending.count += 1;
            if took >= pending.worst {
                pending.worst = took;
                pending.detail = detail;
            }
        }
        if self.pending.is_none()
            || self
                .last_warned
                .is_some_and(|at| now.saturating_duration_since(at) < WARNING_INTERVAL)
        {
            return None;
        }
        self.last_warned = Some(now);
        self.pending.take()
    }
}

/// Lets a repeated log line through at most once per `WARNING_INTERVAL` (the first at once),
/// counting the ones held back: a fault that fails every request (a journal flush that failed,
/// after which every write is refused) logs a line a second, not one per request.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// When the last line went through.
    last: Option<Instant>,
    /// Occurrences held back since.
    held_back: u64,
}

impl LogLimit {
    /// Whether to log the occurrence at `now`; if so, how many were held back before it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < WARNING_INTERVAL)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A [`LogLimit`] per kind of occurrence (an error's variant, say): a second kind of failure
/// within the second is logged, not counted under the first one's line.
#[derive(Debug)]
pub struct LogLimits<K> {
    /// Few kinds: a list searched in order.
    limits: Vec<(K, LogLimit)>,
}

impl<K> Default for LogLimits<K> {
    fn default() -> Self {
        LogLimits { limits: Vec::new() }
    }
}

impl<K: PartialEq> LogLimits<K> {
    /// Whether to log an occurrence of `kind` at `now`; if so, how many of that kind were
    /// held back before it.
    pub fn admit(&mut self, kind: K, now: Instant) -> Option<u64> {
        if let Some((_, limit)) = self.limits.iter_mut().find(|(k, _)| *k == kind) {
            return limit.admit(now);
        }
        let mut limit = LogLimit::default();
        let admitted = limit.admit(now);
        self.limits.push((kind, limit));
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: kinds are limited apart: a second kind's first line goes through within the
    /// first kind's second, and each counts only its own held-back lines.
    #[test]
    fn each_kind_of_line_has_its_own_limit() {
        let mut limits = LogLimits::default();
        let t0 = Instant::now();
        assert_eq!(limits.admit("flush", t0), Some(0));
        assert_eq!(limits.admit("flush", t0 + 10 * MS), None);
        assert_eq!(limits.admit("key", t0 + 20 * MS), Some(0), "another kind");
        assert_eq!(limits.admit("key", t0 + 30 * MS), None);
        assert_eq!(limits.admit("key", t0 + 40 * MS), None);
        assert_eq!(limits.admit("flush", t0 + WARNING_INTERVAL), Some(1));
        assert_eq!(
            limits.admit("key", t0 + 20 * MS + WARNING_INTERVAL),
            Some(2)
        );
    }

    /// Goal: a repeated line goes through at once, then at most once a second, saying how
    /// many were held back in between.
    #[test]
    fn a_repeated_line_goes_through_once_a_second_with_the_count_held_back() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Some(0));
        for i in 1..=3 {
            assert_eq!(limit.admit(t0 + i * 100 * MS), None);
        }
        assert_eq!(limit.admit(t0 + WARNING_INTERVAL), Some(3));
        assert_eq!(limit.admit(t0 + 5 * WARNING_INTERVAL), Some(0));
    }

    const MS: Duration = Duration::from_millis(1);

    /// Goal: a step under the threshold is no stall, however often it comes.
    #[test]
    fn steps_under_the_threshold_never_warn() {
        let mut watch = SlowWatch::new(20 * MS);
        let t0 = Instant::now();
        assert_eq!(watch.observe(19 * MS, t0, ()), None);
        assert_eq!(watch.observe(19 * MS, t0 + 5 * WARNING_INTERVAL, ()), None);
    }

    /// Goal: the first stall warns at once; a burst after it is counted and warned of once a
    /// second later, by the first step then (stall or not), with its count, its worst and
    /// the worst one's detail (not the detail of the step that happened to report it).
    #[test]
    fn a_burst_of_stalls_warns_once_a_second_with_its_count_and_worst() {
        let mut watch = SlowWatch::new(20 * MS);
        let t0 = Instant::now();
        let first = watch.observe(25 * MS, t0, 'a');
        let stalls = |count, worst, detail| {
            Some(Stalls {
                count,
                worst,
                detail,
            })
        };
        assert_eq!(first, stalls(1, 25 * MS, 'a'));
        assert_eq!(watch.observe(60 * MS, t0 + 100 * MS, 'b'), None);
        assert_eq!(watch.observe(30 * MS, t0 + 500 * MS, 'c'), None);
        assert_eq!(watch.observe(MS, t0 + 900 * MS, 'd'), None);
        let held_back = watch.observe(MS, t0 + WARNING_INTERVAL, 'e');
        assert_eq!(held_back, stalls(2, 60 * MS, 'b'));
        assert_eq!(
            watch.observe(MS, t0 + 3 * WARNING_INTERVAL, 'f'),
            None,
            "nothing pending"
        );
    }
}
