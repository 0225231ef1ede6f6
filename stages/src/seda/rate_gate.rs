//! The token bucket every background stage takes tokens from before each unit of work (Dynamo
//! §6.5).
//!
//! Taking never waits: [`RateGate::try_take`] grants the tokens when the balance covers them
//! and refuses otherwise, and the machine that asked leaves the rest of its work for its next
//! tick. A worker therefore never sleeps on a gate: a stop request or a new rate takes effect
//! at once. Pure: the caller passes `now`.

use crate::event::StageId;
use std::time::{Duration, Instant};

/// How much work a gate lets accumulate while idle: this long at its rate. Two handoff ticks
/// (the slowest background tick, 200 ms), so a stage that works once per tick still reaches
/// its rate when its ticks come late, and an idle stage cannot save up a storm.
pub const BURST_WINDOW: Duration = Duration::from_millis(2 * StageId::Handoff.row().tick_ms);

/// A token bucket refilled at `rate_per_sec`, holding at most [`BURST_WINDOW`] of it (at least
/// one token, so any rate above zero makes progress; none when paused).
#[derive(Clone, Debug)]
pub struct RateGate {
    /// Tokens added per second; `None` means unlimited, `Some(0)` paused.
    rate_per_sec: Option<u64>,
    /// Current balance, never above the burst.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated_at: Instant,
}

impl RateGate {
    /// A gate allowing `rate_per_sec` units per second (`None`: unlimited), starting full.
    pub fn new(rate_per_sec: Option<u64>, now: Instant) -> RateGate {
        let mut gate = RateGate {
            rate_per_sec,
            tokens: 0.0,
            updated_at: now,
        };
        gate.tokens = gate.burst();
        gate
    }

    /// The current rate (units per second), `None` when unlimited.
    pub fn rate_per_sec(&self) -> Option<u64> {
        self.rate_per_sec
    }

    /// Most tokens the balance holds at this rate.
    fn burst(&self) -> f64 {
        match self.rate_per_sec {
            Some(0) => 0.0,
            Some(rate) => (rate as f64 * BURST_WINDOW.as_secs_f64()).max(1.0),
            None => f64::INFINITY,
        }
    }

    /// Changes the rate from now on: tokens earned so far at the old rate are kept (up to the
    /// new burst), the new rate applies to the time after `now`.
    pub fn set_rate(&mut self, rate_per_sec: Option<u64>, now: Instant) {
        self.refill(now);
        self.rate_per_sec = rate_per_sec;
        // Also brings an unlimited gate's infinite balance down to the new burst.
        self.tokens = self.tokens.min(self.burst());
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated_at).as_secs_f64();
        self.updated_at = self.updated_at.max(now);
        if let Some(rate) = self.rate_per_sec {
            self.tokens = (self.tokens + elapsed * rate as f64).min(self.burst());
        }
    }

    /// Whole tokens the balance holds now (`u64::MAX` when unlimited).
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.rate_per_sec.is_none() {
            return u64::MAX;
        }
        self.refill(now);
        (self.tokens + f64::EPSILON).floor().max(0.0) as u64
    }

    /// Returns `units` tokens taken for work that did not happen (up to the burst).
    pub fn give_back(&mut self, units: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + units as f64).min(self.burst());
    }

    /// Takes `units` tokens if the balance covers them; `false` (and nothing taken) otherwise.
    pub fn try_take(&mut self, units: u64, now: Instant) -> bool {
        if self.rate_per_sec.is_none() {
            return true;
        }
        self.refill(now);
        if self.tokens + f64::EPSILON >= units as f64 {
            self.tokens -= units as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer that takes one token whenever it can, every millisecond, for `millis`.
    fn greedy(gate: &mut RateGate, start: Instant, millis: u64) -> u64 {
        (0..millis)
            .filter(|ms| gate.try_take(1, start + Duration::from_millis(*ms)))
            .count() as u64
    }

    /// Goal: a greedy consumer gets exactly the burst plus the rate times the time it ran.
    #[test]
    fn greedy_consumer_gets_exactly_the_configured_rate() {
        let start = Instant::now();
        let mut gate = RateGate::new(Some(100), start);
        // 40 tokens of burst (400 ms at 100/s), then 100/s over 10 s.
        let granted = greedy(&mut gate, start, 10_000);
        assert!((1039..=1041).contains(&granted), "{granted}");
    }

    /// Goal: idle time refills tokens, but never beyond the burst window.
    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let start = Instant::now();
        let mut gate = RateGate::new(Some(100), start);
        assert!(gate.try_take(40, start));
        assert!(!gate.try_take(1, start));
        let later = start + Duration::from_secs(60);
        assert!(gate.try_take(40, later));
        assert!(!gate.try_take(1, later));
    }

    /// Goal: an unlimited gate always grants, a paused one never, and a rate change applies
    /// from the moment it is made.
    #[test]
    fn unlimited_paused_and_changed_rates() {
        let start = Instant::now();
        let mut gate = RateGate::new(None, start);
        assert!(gate.try_take(1_000_000, start));
        gate.set_rate(Some(0), start);
        assert!(!gate.try_take(1, start + Duration::from_secs(10)));
        gate.set_rate(Some(10), start + Duration::from_secs(10));
        assert!(!gate.try_take(1, start + Duration::from_secs(10)));
        assert!(gate.try_take(1, start + Duration::from_millis(10_100)));
    }
}
