//! `shoal admin throttle`: the resource controller's state and every background stage's rate,
//! and the operator's two levers: pin a stage's rate, or give it back to the controller.
//! `admin stats` prints the same block under its stage table.

use crate::client::Client;
use clap::Args;
use shoal_stages::controller::target_in_force_us;
use shoal_stages::seda::{ControllerState, StageThrottle};
use shoal_stages::wire::{ThrottleChange, ThrottleReply};
use std::fmt::Write;

/// `shoal admin throttle`
#[derive(Args, Debug)]
pub struct ThrottleArgs {
    #[command(flatten)]
    pub(crate) target: crate::cli::Target,
    /// The background stage to pin or release (with `--rate` or `--auto`).
    #[arg(long, requires = "lever")]
    stage: Option<String>,
    /// Pin the stage's rate to this many units per second (0 pauses it; in the config file a
    /// stage's rate_per_sec of 0 means unlimited instead); the controller
    /// leaves it alone until `--auto`.
    #[arg(long, group = "lever", requires = "stage")]
    rate: Option<u64>,
    /// Give the stage back to the controller.
    #[arg(long, group = "lever", requires = "stage")]
    auto: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print again every this many milliseconds until interrupted (with `--json`, one line
    /// per sample, each with the wall-clock `at_ms` it was taken: for scripts and plots).
    #[arg(long)]
    watch_ms: Option<u64>,
}

impl ThrottleArgs {
    /// The change the arguments ask for.
    fn change(&self) -> ThrottleChange {
        match (&self.stage, self.rate, self.auto) {
            (Some(stage), Some(rate_per_sec), _) => ThrottleChange::Pin {
                stage: stage.clone(),
                rate_per_sec,
            },
            (Some(stage), None, true) => ThrottleChange::Auto {
                stage: stage.clone(),
            },
            _ => ThrottleChange::Show,
        }
    }
}

/// Shortest `--watch-ms`: a watcher is a script's sampler, not a load generator.
const MIN_WATCH_MS: u64 = 50;

/// Runs `admin throttle`: once, or every `--watch-ms` (which outlives the node's restart:
/// [`crate::cli::ask_and_watch`]). A pin or release is made once, by the first answer (a pin
/// lasts until the node stops: a watch does not make it again after a restart).
pub fn run(args: ThrottleArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.watch_ms.is_some_and(|ms| ms < MIN_WATCH_MS) {
        return Err(format!("--watch-ms must be at least {MIN_WATCH_MS}").into());
    }
    let mut change = args.change();
    let every = args.watch_ms.map(std::time::Duration::from_millis);
    let ask = |client: &mut Client| {
        let reply = client.throttle(change.clone())?;
        change = ThrottleChange::Show;
        Ok(reply)
    };
    crate::cli::ask_and_watch(&args.target, every, ask, |reply| {
        Ok(if args.json {
            let mut json = throttle_json(&reply);
            if args.watch_ms.is_some() {
                json["at_ms"] = shoal_stages::event::wall_clock_ms().into();
            }
            format!("{json}\n")
        } else {
            let table = throttle_table(&reply.controller, &reply.stages);
            let separator = if args.watch_ms.is_some() { "\n" } else { "" };
            format!("node {}\n{table}{separator}", reply.node)
        })
    })
}

/// A stage's mode as the table and the JSON say it: not pinned, with the controller off, the
/// configured rate holds (`config`; a trial read `auto` on every row of a node whose
/// controller was disabled).
fn mode_text(mode: shoal_stages::seda::GateMode, controller_on: bool) -> String {
    match mode {
        shoal_stages::seda::GateMode::Auto if !controller_on => "config".to_string(),
        mode => mode.to_string(),
    }
}

/// The JSON form: `{"controller":{…},"stages":[{…}]}` (times in milliseconds).
pub fn throttle_json(reply: &ThrottleReply) -> serde_json::Value {
    let c = &reply.controller;
    serde_json::json!({
        "node": reply.node.to_string(),
        "controller": {
            "enabled": c.enabled,
            "target_percentile": c.target_percentile_milli as f64 / 1000.0,
            "target_ms": c.target_ms,
            "signal_ms": c.signal_us as f64 / 1000.0,
            "period_ms": c.period_ms,
            "window_requests": c.window_requests,
            "budget_per_sec": c.budget_per_sec,
            "last_step": c.last_step,
            "quiet_ms": c.quiet_us as f64 / 1000.0,
        },
        "stages": reply.stages.iter().map(|s| serde_json::json!({
            "name": s.name,
            "rate_per_sec": s.rate_per_sec,
            "used_per_sec": s.used_per_sec,
            "backlog": s.backlog,
            "mode": mode_text(s.mode, c.enabled),
            "dropped": s.dropped,
        })).collect::<Vec<_>>(),
    })
}

/// The human form: the controller's line, then one row per background stage.
pub fn throttle_table(controller: &ControllerState, stages: &[StageThrottle]) -> String {
    let c = controller;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "controller {}: p{} target {} ms, signal {:.2} ms over {} requests, budget {}/s, \
         last step {}, period {} ms",
        if c.enabled { "on" } else { "off" },
        c.target_percentile_milli as f64 / 1000.0,
        c.target_ms,
        c.signal_us as f64 / 1000.0,
        c.window_requests,
        c.budget_per_sec,
        if c.last_step.is_empty() {
            "-"
        } else {
            &c.last_step
        },
        c.period_ms,
    );
    if c.quiet_us > 0 {
        let quiet_ms = c.quiet_us as f64 / 1000.0;
        let _ = writeln!(
            out,
            "foreground's own level {quiet_ms:.2} ms (background at the floor): target in force \
             {:.2} ms",
            target_in_force_us(c.target_ms, c.quiet_us) as f64 / 1000.0,
        );
    }
    // As wide as the longest stage name (anti_entropy is wider than the header), so every
    // row's columns sit under their header.
    let name_width = stages
        .iter()
        .map(|s| s.name.len())
        .fold("Background".len(), usize::max);
    let _ = writeln!(
        out,
        "{:<name_width$} {:>10} {:>10} {:>10} {:>7} {:>8}",
        "Background", "Rate/s", "Used/s", "Backlog", "Mode", "Dropped"
    );
    for s in stages {
        let rate = s
            .rate_per_sec
            .map_or_else(|| "unlimited".to_string(), |r| r.to_string());
        let mode = mode_text(s.mode, c.enabled);
        let _ = writeln!(
            out,
            "{:<name_width$} {:>10} {:>10} {:>10} {:>7} {:>8}",
            s.name, rate, s.used_per_sec, s.backlog, mode, s.dropped
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_stages::seda::GateMode;

    /// Goal: each background stage's row lines up under the header, whatever the length of
    /// its name (a new-user trial saw the anti_entropy row one column right of the others).
    #[test]
    fn every_background_row_lines_up_under_the_header() {
        let stage = |name: &str| StageThrottle {
            name: name.into(),
            rate_per_sec: Some(1000),
            used_per_sec: 12,
            backlog: 3,
            mode: GateMode::Auto,
            dropped: 0,
        };
        let stages = [stage("repair"), stage("anti_entropy"), stage("transfer")];
        let table = throttle_table(&ControllerState::default(), &stages);
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|line| !line.starts_with("Background"))
            .collect();
        assert_eq!(rows.len(), 4, "{table}");
        // The last column is right-aligned: rows of one length have their columns in line.
        assert!(rows.iter().all(|row| row.len() == rows[0].len()), "{table}");
    }

    /// Goal: with the controller off, a stage nobody pinned shows mode `config` (its
    /// configured rate holds), a pinned one `pinned`; with it on, `auto`.
    #[test]
    fn the_mode_says_config_when_the_controller_is_off() {
        let stage = |mode| StageThrottle {
            name: "repair".into(),
            rate_per_sec: Some(20),
            used_per_sec: 0,
            backlog: 0,
            mode,
            dropped: 0,
        };
        let modes = |enabled| {
            let controller = ControllerState {
                enabled,
                ..ControllerState::default()
            };
            let table = throttle_table(
                &controller,
                &[stage(GateMode::Auto), stage(GateMode::Pinned)],
            );
            let rows: Vec<String> = table
                .lines()
                .filter(|line| line.starts_with("repair"))
                .map(|line| {
                    line.split_whitespace()
                        .nth(4)
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            rows
        };
        assert_eq!(modes(false), vec!["config", "pinned"]);
        assert_eq!(modes(true), vec!["auto", "pinned"]);
        // The JSON says the same (a trial's said auto beside "enabled": false).
        let reply = ThrottleReply {
            node: shoal_stages::NodeId::new("n1"),
            controller: ControllerState::default(),
            stages: vec![stage(GateMode::Auto)],
        };
        assert_eq!(throttle_json(&reply)["stages"][0]["mode"], "config");
    }
}
