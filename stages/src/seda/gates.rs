//! The gate registry: one [`Gate`] per background stage, the only pacing there is.
//!
//! A background machine takes a token from its stage's gate before each unit of work (a hint
//! delivered, a repair write sent) and, refused, leaves the rest for its next tick; it never
//! sleeps. It also reports its backlog to the gate. The resource controller reads every gate
//! once a period (rate, tokens granted, backlog, mode) and sets the rates of the gates it
//! controls; `admin throttle` pins a gate's rate, or hands it back to the controller.
//!
//! A gate is the one piece of state a background machine shares with others, and only through
//! these calls: the machine's decisions depend on what `try_take` answers, which depends only
//! on the rate and the `now` passed in, so the simulator still replays a seed exactly.

use super::rate_gate::RateGate;
use crate::event::StageId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Who sets a gate's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    /// The resource controller (or, when it is disabled, the stage's configured rate).
    Auto,
    /// An operator, with `admin throttle --stage NAME --rate N`; the controller leaves it be.
    Pinned,
}

impl fmt::Display for GateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            GateMode::Auto => "auto",
            GateMode::Pinned => "pinned",
        })
    }
}

/// A gate at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateReading {
    /// Units per second allowed now; `None`: unlimited.
    pub rate_per_sec: Option<u64>,
    /// Tokens granted since the gate was made, less those given back (the controller
    /// differences it per period, saturating: a give-back after the period that granted the
    /// tokens can make one period's use read low).
    pub granted: u64,
    /// Work the stage reported waiting for tokens or for its next round.
    pub backlog: u64,
    /// Who sets the rate.
    pub mode: GateMode,
    /// Units per second used over the controller's last period.
    pub used_per_sec: u64,
    /// Units of work the stage dropped because too much was waiting (redone later by other
    /// means: a read, anti-entropy).
    pub dropped: u64,
}

/// The most units per second any rate may be (config, controller or pin): far beyond what a
/// stage can do, and small enough that no token arithmetic overflows.
pub const MAX_RATE_PER_SEC: u64 = 100_000_000;

struct GateState {
    /// The token bucket: the rate in force and the balance.
    bucket: RateGate,
    /// Who sets the rate.
    mode: GateMode,
    /// The rate the config gave, restored when a pin is released if the controller never
    /// set one.
    configured: Option<u64>,
    /// The controller's last rate (`None`: it has set none; `Some(None)`: unlimited), so a
    /// release goes back to it at once rather than to `configured` until the controller's
    /// next period (which showed the configured 1000/s for a moment after `--auto`).
    controller_rate: Option<Option<u64>>,
    /// Tokens granted since the gate was made, less those given back.
    granted: u64,
    /// The stage's own count of waiting work.
    backlog: u64,
    /// Units per second used over the controller's last period.
    used_per_sec: u64,
    /// Units of work dropped so far (the stage's own count).
    dropped: u64,
}

/// One background stage's gate. Cheap to clone; clones share the bucket.
#[derive(Clone)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
}

impl Gate {
    /// A gate at `rate_per_sec` (`None`: unlimited), in auto mode.
    pub fn new(rate_per_sec: Option<u64>, now: Instant) -> Gate {
        Gate {
            state: Arc::new(Mutex::new(GateState {
                bucket: RateGate::new(rate_per_sec, now),
                mode: GateMode::Auto,
                configured: rate_per_sec,
                controller_rate: None,
                granted: 0,
                backlog: 0,
                used_per_sec: 0,
                dropped: 0,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        // Every update leaves the state whole, so a panic elsewhere under the lock is harmless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `units` tokens if the rate allows them now; never waits.
    pub fn try_take(&self, units: u64, now: Instant) -> bool {
        let mut state = self.state();
        let granted = state.bucket.try_take(units, now);
        if granted {
            state.granted += units;
        }
        granted
    }

    /// Returns `units` tokens taken for work that did not happen (a batch the receiver
    /// refused as busy): they are not counted as used.
    pub fn give_back(&self, units: u64, now: Instant) {
        let mut state = self.state();
        state.bucket.give_back(units, now);
        state.granted = state.granted.saturating_sub(units);
    }

    /// Pays what the gate grants now towards `owed` tokens (work charged after it was done,
    /// or taken in on credit); whether nothing is owed any more.
    pub fn pay(&self, owed: &mut u64, now: Instant) -> bool {
        if *owed > 0 {
            let paying = self.available(now).min(*owed);
            if paying > 0 && self.try_take(paying, now) {
                *owed -= paying;
            }
        }
        *owed == 0
    }

    /// Whole tokens `try_take` would grant now (`u64::MAX` when unlimited); takes none.
    pub fn available(&self, now: Instant) -> u64 {
        self.state().bucket.available(now)
    }

    /// The stage's own count of work waiting (hints held, repairs pending).
    pub fn report_backlog(&self, backlog: u64) {
        self.state().backlog = backlog;
    }

    /// The stage's count of work it dropped because too much was waiting.
    pub fn report_dropped(&self, dropped: u64) {
        self.state().dropped = dropped;
    }

    /// The controller's rate: applied unless an operator pinned the gate.
    pub fn set_auto_rate(&self, rate_per_sec: Option<u64>, now: Instant) {
        let mut state = self.state();
        state.controller_rate = Some(rate_per_sec);
        if state.mode == GateMode::Auto {
            state.bucket.set_rate(rate_per_sec, now);
        }
    }

    /// An operator's rate (at most [`MAX_RATE_PER_SEC`]), obeyed until [`Gate::release`].
    pub fn pin(&self, rate_per_sec: u64, now: Instant) {
        let mut state = self.state();
        state.mode = GateMode::Pinned;
        state
            .bucket
            .set_rate(Some(rate_per_sec.min(MAX_RATE_PER_SEC)), now);
    }

    /// Hands the gate back: the controller's last rate applies again (the configured one if
    /// the controller never set one) until it sets the next.
    pub fn release(&self, now: Instant) {
        let mut state = self.state();
        state.mode = GateMode::Auto;
        let rate = state.controller_rate.unwrap_or(state.configured);
        state.bucket.set_rate(rate, now);
    }

    /// What the controller measured the stage used over its last period.
    pub fn record_use(&self, used_per_sec: u64) {
        self.state().used_per_sec = used_per_sec;
    }

    /// The gate now.
    pub fn reading(&self) -> GateReading {
        let state = self.state();
        GateReading {
            rate_per_sec: state.bucket.rate_per_sec(),
            granted: state.granted,
            backlog: state.backlog,
            mode: state.mode,
            used_per_sec: state.used_per_sec,
            dropped: state.dropped,
        }
    }
}

/// The controller's state as `admin throttle` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerState {
    /// Whether the controller sets the rates (otherwise they stay as configured).
    pub enabled: bool,
    /// The foreground latency percentile it watches (e.g. 99.9), in thousandths of a percent
    /// so the reply stays exact (99.9 → 99900).
    pub target_percentile_milli: u64,
    /// The SLA target for that percentile, milliseconds.
    pub target_ms: u64,
    /// The percentile over the recent window, microseconds (0 when the window is empty).
    pub signal_us: u64,
    /// Foreground requests in the window.
    pub window_requests: u64,
    /// The total background budget, units per second.
    pub budget_per_sec: u64,
    /// How often the controller decides, milliseconds.
    pub period_ms: u64,
    /// What the last period decided: `increase`, `climb`, `recover`, `hold`, `watch`,
    /// `decrease`, `idle`, `resume` or `off`
    /// (`starting` before the first period).
    pub last_step: String,
    /// The foreground's own level: the signal over the last window whose background work
    /// stayed at the floor, microseconds (0: none recent). The target in force is the higher
    /// of `target_ms` and 1.2 × this, at most 3 × `target_ms`
    /// (`controller::target_in_force_us`). Absent from an older node: 0.
    #[serde(default)]
    pub quiet_us: u64,
}

/// One background stage as `admin throttle` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageThrottle {
    /// The stage's name.
    pub name: String,
    /// Units per second allowed now; `None` (JSON null): unlimited.
    pub rate_per_sec: Option<u64>,
    /// Units per second used over the controller's last period.
    pub used_per_sec: u64,
    /// Work waiting: the stage's own count plus its queue.
    pub backlog: u64,
    /// `auto` or `pinned`.
    pub mode: GateMode,
    /// Work dropped because too much was waiting (redone later by a read or anti-entropy).
    #[serde(default)]
    pub dropped: u64,
}

/// Every background stage's gate, and the controller's last published state. Cheap to clone.
#[derive(Clone)]
pub struct GateRegistry {
    gates: Arc<BTreeMap<StageId, Gate>>,
    controller: Arc<Mutex<ControllerState>>,
}

impl GateRegistry {
    /// A gate for every paced background stage of the table ([`StageId::paced`]), at the rate
    /// `rate_of` gives it.
    pub fn new(rate_of: impl Fn(StageId) -> Option<u64>, now: Instant) -> GateRegistry {
        let gates = StageId::ALL
            .into_iter()
            .filter(|stage| stage.paced())
            .map(|stage| (stage, Gate::new(rate_of(stage), now)))
            .collect();
        GateRegistry {
            gates: Arc::new(gates),
            controller: Arc::new(Mutex::new(ControllerState::default())),
        }
    }

    /// The gate of a background stage; `None` for a foreground one.
    pub fn gate(&self, stage: StageId) -> Option<&Gate> {
        self.gates.get(&stage)
    }

    /// Every gate, in stage-table order.
    pub fn gates(&self) -> impl Iterator<Item = (StageId, &Gate)> {
        self.gates.iter().map(|(stage, gate)| (*stage, gate))
    }

    /// Publishes the controller's state (the controller's loop, once a period).
    pub fn publish(&self, state: ControllerState) {
        *self.controller.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// The controller's last published state.
    pub fn controller(&self) -> ControllerState {
        self.controller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every background stage's throttle; `queue_depth` adds each stage's queued events to the
    /// backlog its machine reported.
    pub fn stages(&self, queue_depth: impl Fn(StageId) -> u64) -> Vec<StageThrottle> {
        self.gates()
            .map(|(stage, gate)| {
                let reading = gate.reading();
                StageThrottle {
                    name: stage.name().to_string(),
                    rate_per_sec: reading.rate_per_sec,
                    used_per_sec: reading.used_per_sec,
                    backlog: reading.backlog + queue_depth(stage),
                    mode: reading.mode,
                    dropped: reading.dropped,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Goal: a pinned rate is obeyed whatever the controller says, and release hands the gate
    /// back at the controller's last rate (the configured one if it never set one). Method:
    /// the controller sets a rate while pinned (ignored until the release), then after it.
    #[test]
    fn pinned_rate_ignores_the_controller_until_released() {
        let start = Instant::now();
        let registry = GateRegistry::new(|_| Some(1000), start);
        let gate = registry
            .gate(StageId::Handoff)
            .expect("handoff is background");
        assert!(
            registry.gate(StageId::Storage).is_none(),
            "storage is foreground"
        );
        // The controller sets a rate, then the operator pins (the controller skips pinned
        // gates; a rate it sets meanwhile is ignored too).
        gate.set_auto_rate(Some(5000), start);
        gate.pin(10, start);
        gate.set_auto_rate(Some(5000), start);
        assert_eq!(gate.reading().rate_per_sec, Some(10));
        assert_eq!(gate.reading().mode, GateMode::Pinned);
        let granted = (0..10_000u64)
            .filter(|ms| gate.try_take(1, start + Duration::from_millis(*ms)))
            .count();
        // The burst shrinks with the rate (400 ms at 10/s: 4 tokens), then 10/s for 10 s.
        assert!((100..=105).contains(&granted), "{granted}");
        gate.release(start);
        assert_eq!(
            gate.reading().rate_per_sec,
            Some(5000),
            "the controller's last rate again, not the configured one"
        );
        assert_eq!(gate.reading().mode, GateMode::Auto);
        gate.set_auto_rate(Some(300), start);
        assert_eq!(gate.reading().rate_per_sec, Some(300));
        // A gate the controller never set goes back to the configured rate.
        let repair = registry
            .gate(StageId::Repair)
            .expect("repair is background");
        repair.pin(0, start);
        repair.release(start);
        assert_eq!(repair.reading().rate_per_sec, Some(1000));
    }
}
