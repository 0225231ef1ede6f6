//! Warnings for stalls an operator should see: a step that took far longer than it should
//! (the intake loop's turn, a journal flush), as etcd warns of a slow fdatasync.
//!
//! A stall worth knowing about tends to come in bursts (a disk busy with a compaction slows
//! every flush for a second), so warnings are rate-limited: at most one per `EVERY`, saying
//! how many stalls it stands for and the worst of them.

use std::time::{Duration, Instant};

/// Shortest time between two warnings of one watch.
const EVERY: Duration = Duration::from_secs(1);

/// Stalls seen since the last warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalls {
    /// How many took at least the threshold.
    pub count: u64,
    /// The longest of them.
    pub worst: Duration,
}

/// Watches one step's durations against a threshold.
#[derive(Debug)]
pub struct SlowWatch {
    /// A step at least this long is a stall.
    threshold: Duration,
    /// When the last warning was given.
    last_warned: Option<Instant>,
    /// Stalls not warned of yet.
    pending: Stalls,
}

impl SlowWatch {
    /// A watch that counts steps of at least `threshold`.
    pub fn new(threshold: Duration) -> SlowWatch {
        SlowWatch {
            threshold,
            last_warned: None,
            pending: Stalls {
                count: 0,
                worst: Duration::ZERO,
            },
        }
    }

    /// Records a step that took `took`, ending at `now`: the stalls to warn of now, if any.
    /// The first stall warns at once; later ones at most once per `EVERY`, with the first
    /// step after it (a stall or not), so a burst's last stalls are not held back until the
    /// next one.
    pub fn observe(&mut self, took: Duration, now: Instant) -> Option<Stalls> {
        if took >= self.threshold {
            self.pending.count += 1;
            self.pending.worst = self.pending.worst.max(took);
        }
        if self.pending.count == 0
            || self
                .last_warned
                .is_some_and(|at| now.saturating_duration_since(at) < EVERY)
        {
            return None;
        }
        self.last_warned = Some(now);
        let stalls = self.pending;
        self.pending = Stalls {
            count: 0,
            worst: Duration::ZERO,
        };
        Some(stalls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Goal: a step under the threshold is no stall, however often it comes.
    #[test]
    fn steps_under_the_threshold_never_warn() {
        let mut watch = SlowWatch::new(20 * MS);
        let t0 = Instant::now();
        assert_eq!(watch.observe(19 * MS, t0), None);
        assert_eq!(watch.observe(19 * MS, t0 + 5 * EVERY), None);
    }

    /// Goal: the first stall warns at once; a burst after it is counted and warned of once a
    /// second later with its count and its worst, by the first step then, stall or not.
    #[test]
    fn a_burst_of_stalls_warns_once_a_second_with_its_count_and_worst() {
        let mut watch = SlowWatch::new(20 * MS);
        let t0 = Instant::now();
        let first = watch.observe(25 * MS, t0);
        assert_eq!(
            first,
            Some(Stalls {
                count: 1,
                worst: 25 * MS
            })
        );
        assert_eq!(watch.observe(60 * MS, t0 + 100 * MS), None);
        assert_eq!(watch.observe(30 * MS, t0 + 500 * MS), None);
        assert_eq!(watch.observe(MS, t0 + 900 * MS), None);
        let held_back = watch.observe(MS, t0 + EVERY);
        assert_eq!(
            held_back,
            Some(Stalls {
                count: 2,
                worst: 60 * MS
            })
        );
        assert_eq!(watch.observe(MS, t0 + 3 * EVERY), None, "nothing pending");
    }
}
