//! The resource controller's loop: the thin driver of `shoal_stages::controller`. Once a
//! period it takes what the period measured (client latencies at the coordinator, storage's
//! queue waits, every background gate's tokens and backlog), hands it to the pure
//! `ResourceController`, sets the rates it returns on the gates it does not find pinned, and
//! publishes its state for `admin throttle` and `admin stats`.
//!
//! It runs even when `[controller] enabled = false`: then it only measures (the signal and
//! each stage's use are still shown) and leaves every rate as configured.

use crate::config::Config;
use shoal_stages::controller::{Decision, Observation, ResourceController, StageObservation, Step};
use shoal_stages::event::StageId;
use shoal_stages::seda::{ControllerState, GateMode, GateRegistry, OperationLatencies, Router};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest the loop sleeps before re-checking its stop flag; `Node::shutdown` also unparks
/// it, so this only bounds a missed unpark. Not shorter: an idle node should not wake for it.
const STOP_CHECK: Duration = Duration::from_secs(1);

/// What the loop reads and writes.
pub struct ControllerLoop {
    controller: ResourceController,
    gates: GateRegistry,
    latencies: OperationLatencies,
    router: Router,
    /// Each gate's granted count at the last period, to difference.
    granted: BTreeMap<StageId, u64>,
    /// When the last period ended.
    last_period: Instant,
    stop: Arc<AtomicBool>,
}

impl ControllerLoop {
    /// A loop over the node's gates and statistics.
    pub fn new(
        config: &Config,
        gates: GateRegistry,
        latencies: OperationLatencies,
        router: Router,
        stop: Arc<AtomicBool>,
    ) -> ControllerLoop {
        // Start from what the stages are configured to (the sum of their rates), so turning
        // the controller on does not begin with a burst.
        let initial: u64 = gates
            .gates()
            .map(|(stage, _)| {
                config
                    .stage_rate(stage)
                    .unwrap_or(config.controller.max_rate)
            })
            .sum();
        let granted = gates
            .gates()
            .map(|(stage, gate)| (stage, gate.reading().granted))
            .collect();
        let controller_loop = ControllerLoop {
            controller: ResourceController::new(config.controller.clone(), initial),
            gates,
            latencies,
            router,
            granted,
            last_period: Instant::now(),
            stop,
        };
        // Shown until the first period ends, so `admin throttle` never shows a blank state.
        let starting = Decision {
            step: Step::Hold,
            signal_us: 0,
            window_requests: 0,
            budget_per_sec: initial,
            rates: BTreeMap::new(),
            used_per_sec: BTreeMap::new(),
            quiet_us: 0,
        };
        let mut state = controller_loop.state(&starting);
        state.last_step = "starting".into();
        controller_loop.gates.publish(state);
        controller_loop
    }

    /// Starts the loop on its own thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let period = self.controller.settings().period();
        let mut next = Instant::now() + period;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now < next {
                std::thread::park_timeout(next.saturating_duration_since(now).min(STOP_CHECK));
                continue;
            }
            next += period;
            if next < now {
                next = now + period; // fell behind (a stalled VM): do not decide in a burst
            }
            self.period(now);
        }
    }

    /// One period: observe, decide, apply, publish.
    fn period(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_period);
        self.last_period = now;
        let observation = self.observe(elapsed);
        let decision = self.controller.on_period(observation);
        for (stage, gate) in self.gates.gates() {
            if let Some(rate) = decision.rates.get(&stage) {
                gate.set_auto_rate(Some(*rate), now);
            }
            gate.record_use(decision.used_per_sec.get(&stage).copied().unwrap_or(0));
        }
        self.gates.publish(self.state(&decision));
    }

    fn observe(&mut self, elapsed: Duration) -> Observation {
        let mut stages = BTreeMap::new();
        for (stage, gate) in self.gates.gates() {
            let reading = gate.reading();
            let before = self.granted.insert(stage, reading.granted).unwrap_or(0);
            let queued = self.router.depth(stage) as u64;
            stages.insert(
                stage,
                StageObservation {
                    backlog: reading.backlog + queued,
                    used: reading.granted.saturating_sub(before),
                    pinned: reading.mode == GateMode::Pinned,
                },
            );
        }
        Observation {
            elapsed,
            foreground_us: self.latencies.take_recent(),
            storage_wait_us: self.router.storage.stats().take_recent_wait(),
            stages,
        }
    }

    fn state(&self, decision: &Decision) -> ControllerState {
        let settings = self.controller.settings();
        ControllerState {
            enabled: settings.enabled,
            target_percentile_milli: (settings.target_percentile * 1000.0).round() as u64,
            target_ms: settings.target_ms,
            signal_us: decision.signal_us,
            window_requests: decision.window_requests,
            budget_per_sec: decision.budget_per_sec,
            period_ms: settings.period_ms,
            last_step: decision.step.to_string(),
            quiet_us: decision.quiet_us,
        }
    }
}
