//! The open-loop schedule (as wrk2 does it): requests are due at fixed intervals whatever the
//! server does, and each request's latency is measured from when it was *due*, not from when
//! it was sent. A closed loop (or an open loop that measured from the send) would stop sending
//! while the server stalls and so never record the stall's cost to the requests that would
//! have arrived meanwhile: coordinated omission. Pure: times are passed in.

use std::time::{Duration, Instant};

/// When each request of one thread is due.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    /// Thread `index`'s share of `threads` threads sending `rate_per_sec` in all: every
    /// `threads / rate` seconds, the first `index / rate` after `start`, so the threads' due
    /// times interleave into one request every `1 / rate`. Starting every thread at `start`
    /// sent them in bursts of `threads` at once (64 requests every 64 ms at 1000/s), which
    /// queued each burst behind itself: a p99 of 20–35 ms where 8 threads measured 3–8 ms.
    pub fn for_thread(start: Instant, rate_per_sec: f64, threads: usize, index: usize) -> Schedule {
        let threads = threads.max(1);
        debug_assert!(index < threads, "thread {index} of {threads}");
        let rate = rate_per_sec.max(f64::MIN_POSITIVE);
        Schedule {
            start: start + Duration::from_secs_f64(index as f64 / rate),
            interval: Duration::from_secs_f64(threads as f64 / rate),
        }
    }

    /// When request `index` (0-based) is due.
    pub fn due(&self, index: u64) -> Instant {
        self.start + self.interval.mul_f64(index as f64)
    }

    /// How long to wait at `now` before sending request `index` (zero when it is late).
    pub fn wait(&self, index: u64, now: Instant) -> Duration {
        self.due(index).saturating_duration_since(now)
    }

    /// The latency to record for request `index` completed at `done`: from when it was due.
    pub fn latency(&self, index: u64, done: Instant) -> Duration {
        done.saturating_duration_since(self.due(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: threads sharing a rate interleave: together their requests fall due one every
    /// `1 / rate`, not in bursts of one per thread.
    #[test]
    fn threads_sharing_a_rate_are_due_evenly_spaced() {
        let start = Instant::now();
        let threads = 4;
        let mut due: Vec<Instant> = (0..threads)
            .flat_map(|index| {
                let schedule = Schedule::for_thread(start, 1000.0, threads, index);
                (0..3).map(move |request| schedule.due(request))
            })
            .collect();
        due.sort();
        let gaps: Vec<Duration> = due.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert_eq!(due.len(), 12);
        assert_eq!(due[0], start);
        for gap in gaps {
            let micros = gap.as_micros();
            assert!((999..=1001).contains(&micros), "gap {gap:?}");
        }
    }

    /// Goal: when the server stalls, the requests that fell due during the stall are charged
    /// the time they waited for it (coordinated-omission correction), not just the one that hit it.
    #[test]
    fn a_stall_is_charged_to_every_request_due_during_it() {
        let start = Instant::now();
        let schedule = Schedule::for_thread(start, 1000.0, 1, 0); // one request per ms
                                                                  // Request 0 is sent on time and stalls 100 ms; requests 1..=99 fell due meanwhile and
                                                                  // are sent right after, each completing 1 ms after the previous one.
        let done0 = start + Duration::from_millis(100);
        assert_eq!(schedule.latency(0, done0), Duration::from_millis(100));
        let done50 = done0 + Duration::from_millis(50);
        assert_eq!(
            schedule.wait(50, done0),
            Duration::ZERO,
            "late requests go at once"
        );
        assert_eq!(
            schedule.latency(50, done50),
            Duration::from_millis(100),
            "charged from when it was due"
        );
        assert_eq!(
            schedule.wait(200, done50),
            Duration::from_millis(50),
            "early requests wait for their slot"
        );
    }

    /// Goal: the schedule spaces requests exactly at the rate.
    #[test]
    fn requests_are_due_at_the_rate() {
        let start = Instant::now();
        let schedule = Schedule::for_thread(start, 250.0, 1, 0);
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.due(250), start + Duration::from_secs(1));
    }
}
