//! `shoal admin stats`: every stage's queue depth, counts of events enqueued, processed and
//! rejected, and latencies, the operations' latencies, the controller's state and the node's
//! health, as a table or JSON.

use crate::cli::{ask_and_watch, StatsArgs};
use crate::client::Client;
use shoal_stages::wire::StatsReply;
use std::time::Duration;

/// `shoal admin stats`: once, or every second with `--watch` (which outlives the node's
/// restart: [`ask_and_watch`]).
pub fn run_stats(args: StatsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let every = args.watch.then_some(Duration::from_secs(1));
    ask_and_watch(&args.target, every, Client::stats, |stats| {
        Ok(match (args.json, args.watch) {
            // One object per line, each with the wall-clock time it was taken (as `admin
            // throttle --json --watch-ms`): JSON Lines for scripts and plots. A trial's
            // line-by-line parse broke on the blank line between objects.
            (true, true) => {
                let mut json = serde_json::to_value(&stats)?;
                json["at_ms"] = shoal_stages::event::wall_clock_ms().into();
                format!("{json}\n")
            }
            (true, false) => format!("{}\n", serde_json::to_string(&stats)?),
            (false, true) => format!("{}\n", stats_table(&stats)),
            (false, false) => stats_table(&stats),
        })
    })
}

/// The human form of `admin stats`: one row per stage, then operation latencies, then the
/// controller's and the background stages' throttles.
pub fn stats_table(stats: &StatsReply) -> String {
    let mut out = format!("node {}\n", stats.node);
    if let Some(failure) = &stats.storage_failure {
        out.push_str(&format!("UNHEALTHY: storage refuses writes: {failure}\n"));
    }
    // As wide as the longest stage name (`background_storage`), so the columns line up.
    let width = stats
        .stages
        .iter()
        .map(|s| s.name.len())
        .chain(["Stage".len()])
        .max()
        .unwrap_or_default();
    out.push_str(&format!(
        "{:<width$} {:<10} {:>7} {:>4} {:>6} {:>8} {:>9} {:>10} {:>10} {:>8} {:>14} {:>14}\n",
        "Stage",
        "Class",
        "Slots",
        "Busy",
        "Depth",
        "Capacity",
        "HighWater",
        "Enqueued",
        "Processed",
        "Rejected",
        "Wait p50/p99",
        "Svc p50/p99"
    ));
    for s in &stats.stages {
        out.push_str(&format!(
            "{:<width$} {:<10} {:>7} {:>4} {:>6} {:>8} {:>9} {:>10} {:>10} {:>8} {:>14} {:>14}\n",
            s.name,
            s.class,
            s.threads,
            s.busy_threads,
            s.queue_depth,
            s.queue_capacity,
            s.queue_high_water,
            s.enqueued,
            s.processed,
            s.rejected,
            format!("{}/{}us", s.wait_us_p50, s.wait_us_p99),
            format!("{}/{}us", s.service_us_p50, s.service_us_p99),
        ));
    }
    for op in &stats.operations {
        out.push_str(&format!(
            "{:<7} count {:>10}  p50 {:>7}us  p99 {:>7}us  p99.9 {:>7}us\n",
            op.operation, op.count, op.latency_us_p50, op.latency_us_p99, op.latency_us_p999
        ));
    }
    out.push_str(&crate::throttle_cli::throttle_table(
        &stats.controller,
        &stats.background,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_stages::NodeId;

    /// Goal: `admin stats` of a node whose storage refuses writes says so, with the reason,
    /// right under the node's name; a healthy node's table has no such line.
    #[test]
    fn stats_of_a_node_whose_storage_refuses_writes_say_unhealthy_and_why() {
        let mut stats = StatsReply {
            node: NodeId::new("n1"),
            stages: Vec::new(),
            operations: Vec::new(),
            controller: Box::default(),
            background: Vec::new(),
            storage_failure: None,
        };
        assert!(!stats_table(&stats).contains("UNHEALTHY"));
        stats.storage_failure = Some("journal 7.jnl: Input/output error".into());
        let table = stats_table(&stats);
        let second = table.lines().nth(1).unwrap_or_default();
        assert!(second.starts_with("UNHEALTHY"), "{table}");
        assert!(second.contains("7.jnl: Input/output error"), "{table}");
    }
}
