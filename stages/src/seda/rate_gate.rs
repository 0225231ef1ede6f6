//! The rate gate background stages take tokens from before each unit of work (Dynamo §6.5).
//!
//! A token bucket that may go into debt: `acquire(n)` always takes its tokens and says how long
//! the caller must wait for the balance to be non-negative again. Debt (rather than refusing)
//! makes a batch of `n` cost exactly `n / rate` seconds however it is split. Pure: the caller
//! passes `now`. The rate is the seam the resource controller turns.

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate_per_sec`, holding at most `burst` tokens.
#[derive(Clone, Debug)]
pub struct RateGate {
    /// Tokens added per second; `None` means unlimited.
    rate_per_sec: Option<f64>,
    /// Most tokens that can accumulate while idle, so an idle period does not license a storm.
    burst: f64,
    /// Current balance; negative while in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated_at: Instant,
}

impl RateGate {
    /// A gate allowing `rate_per_sec` units per second (unlimited when `None`) with a burst of
    /// `burst` units.
    pub fn new(rate_per_sec: Option<f64>, burst: f64, now: Instant) -> RateGate {
        RateGate {
            rate_per_sec: rate_per_sec.filter(|r| *r > 0.0),
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            updated_at: now,
        }
    }

    /// The current rate (units per second), `None` when unlimited.
    pub fn rate_per_sec(&self) -> Option<f64> {
        self.rate_per_sec
    }

    /// Changes the rate from now on (the controller's and `admin throttle`'s seam).
    pub fn set_rate(&mut self, rate_per_sec: Option<f64>, now: Instant) {
        self.refill(now);
        self.rate_per_sec = rate_per_sec.filter(|r| *r > 0.0);
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate_per_sec {
            let elapsed = now.saturating_duration_since(self.updated_at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(self.burst);
        }
        self.updated_at = now;
    }

    /// Takes `units` tokens and returns how long to wait before doing the work (zero when the
    /// balance covered it).
    pub fn acquire(&mut self, units: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate_per_sec else {
            return Duration::ZERO;
        };
        self.refill(now);
        self.tokens -= units as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: work beyond the burst is paced at exactly the configured rate.
    #[test]
    fn acquire_beyond_burst_waits_at_the_configured_rate() {
        let start = Instant::now();
        let mut gate = RateGate::new(Some(100.0), 10.0, start);
        assert_eq!(gate.acquire(10, start), Duration::ZERO);
        let wait = gate.acquire(50, start);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }

    /// Goal: idle time refills tokens, but never beyond the burst.
    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let start = Instant::now();
        let mut gate = RateGate::new(Some(100.0), 10.0, start);
        gate.acquire(10, start);
        let later = start + Duration::from_secs(60);
        assert_eq!(gate.acquire(10, later), Duration::ZERO);
        assert!(gate.acquire(1, later) > Duration::ZERO);
    }

    /// Goal: an unlimited gate never asks to wait, and a rate change applies at once.
    #[test]
    fn unlimited_gate_never_waits_and_rate_can_change() {
        let start = Instant::now();
        let mut gate = RateGate::new(None, 1.0, start);
        assert_eq!(gate.acquire(1_000_000, start), Duration::ZERO);
        gate.set_rate(Some(1.0), start);
        assert!(gate.acquire(5, start) >= Duration::from_secs(4));
    }
}
