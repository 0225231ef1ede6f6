//! The `shoal` command line: `node`, `get`, `put`, `delete`, `admin`, `demo` and `sim`.

use crate::client::{Client, ClientError, Context, Durability, RequestOptions};
use crate::config::Config;
use crate::logging;
use crate::node::Node;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use shoal_stages::membership::MemberState;
use shoal_stages::versioning::VersionSet;
use shoal_stages::wire::StatsReply;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// shoal: a Dynamo-style replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Read a key: every sibling value and the context.
    Get(GetArgs),
    /// Write a value; prints the new context.
    Put(PutArgs),
    /// Delete a key (writes a tombstone); prints the new context.
    Delete(DeleteArgs),
    /// Operator commands.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Start a 3-node cluster on loopback, load it, stop and restart a node, report, stop.
    Demo(DemoArgs),
    /// Run the deterministic cluster simulator over seeds (or replay one with --trace).
    Sim(crate::sim_cli::SimArgs),
}

/// `shoal demo`
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of workload (the demo takes a few more).
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Load threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Where to draw the run (SVG; default: shoal-demo.svg in the system's temp directory).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `shoal node`
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Override `node.listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Override `node.data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Where to send a request.
#[derive(Args, Debug)]
pub struct Target {
    /// Node address, host:port.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub node: String,
    /// Seconds to wait for the node.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// `shoal get`
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    target: Target,
    /// The key (UTF-8).
    key: String,
    /// Read quorum for this request.
    #[arg(long)]
    r: Option<u8>,
    /// Print JSON: {"values": [...], "context": "..."}.
    #[arg(long)]
    json: bool,
    /// Show this node's own stored versions (dots, tombstones), with no coordination.
    #[arg(long)]
    local: bool,
}

/// `shoal put`
#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    target: Target,
    /// The key (UTF-8).
    key: String,
    /// The value (UTF-8).
    value: String,
    /// Context from a previous get, to replace the versions it saw.
    #[arg(long)]
    context: Option<String>,
    /// Write quorum for this request.
    #[arg(long)]
    w: Option<u8>,
    /// Durable writes for this request: all, one or none (the cluster's `durable_writes`
    /// when absent). Prints the durable copies to stderr.
    #[arg(long)]
    durable: Option<Durability>,
}

/// `shoal delete`
#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    target: Target,
    /// The key (UTF-8).
    key: String,
    /// Context from a previous get: the versions to delete.
    #[arg(long)]
    context: String,
    /// Write quorum for this request.
    #[arg(long)]
    w: Option<u8>,
    /// Durable writes for this request: all, one or none (the cluster's `durable_writes`
    /// when absent). Prints the durable copies to stderr.
    #[arg(long)]
    durable: Option<Durability>,
}

/// `shoal admin …`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Per-stage statistics, as `nodetool tpstats` shows thread pools.
    Stats(StatsArgs),
    /// The membership and ring: partitions, owners, each node's share.
    Ring(RingArgs),
    /// Members, whether this node holds each up or down, and the hints it keeps for each.
    Members(RingArgs),
    /// The resource controller and every background stage's rate, used rate, backlog and
    /// mode; `--stage NAME --rate N` pins a rate, `--stage NAME --auto` releases it.
    Throttle(crate::throttle_cli::ThrottleArgs),
    /// Anti-entropy: per partition its Merkle tree (root, keys) and, per other replica, the
    /// last exchange and the objects sent and received; totals.
    Aae(RingArgs),
    /// Stage a new node's join (through any member); `admin commit` applies it.
    Join(crate::membership_cli::JoinArgs),
    /// Stage a member's leave: it hands its partitions over, then holds nothing.
    Leave(crate::membership_cli::DepartArgs),
    /// Stage a dead member's removal: its replicas are rebuilt from the others.
    Remove(crate::membership_cli::DepartArgs),
    /// What the staged changes would move, from whom to whom.
    Plan(RingArgs),
    /// Apply the staged changes: the new ring, and the transfers it needs.
    Commit(RingArgs),
}

/// `shoal admin ring`
#[derive(Args, Debug)]
pub struct RingArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `shoal admin stats`
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print again every second until interrupted.
    #[arg(long)]
    watch: bool,
}

/// With `--durable`, says on stderr how many acknowledging replicas had the write on disk
/// (stdout keeps only the context, for scripts).
fn report_durable(asked: Option<Durability>, copies: u8) {
    if let Some(asked) = asked {
        eprintln!("durable copies: {copies} (asked: {asked})");
    }
}

/// Runs a parsed command line; the error is printed by `main`.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Node(args) => run_node(args),
        Command::Sim(args) => Ok(crate::sim_cli::run(args)?),
        Command::Get(args) => run_get(args),
        Command::Put(args) => {
            let mut client = connect(&args.target)?;
            let context = args
                .context
                .as_deref()
                .map(Context::from_base64)
                .transpose()?;
            let options = RequestOptions {
                w: args.w,
                durable: args.durable,
                ..Default::default()
            };
            let result = client.put_full(
                args.key.as_bytes(),
                context.as_ref(),
                args.value.as_bytes(),
                options,
            )?;
            println!("{}", result.context.to_base64());
            report_durable(args.durable, result.durable_copies);
            Ok(())
        }
        Command::Delete(args) => {
            let mut client = connect(&args.target)?;
            let context = Context::from_base64(&args.context)?;
            let options = RequestOptions {
                w: args.w,
                durable: args.durable,
                ..Default::default()
            };
            let result = client.delete_full(args.key.as_bytes(), &context, options)?;
            println!("{}", result.context.to_base64());
            report_durable(args.durable, result.durable_copies);
            Ok(())
        }
        Command::Admin(AdminCommand::Stats(args)) => run_stats(args),
        Command::Demo(args) => {
            if args.duration_secs == 0 || args.duration_secs > 600 || args.threads == 0 {
                return Err("--duration-secs must be in 1..=600 and --threads at least 1".into());
            }
            let options = crate::demo::DemoOptions {
                duration: std::time::Duration::from_secs(args.duration_secs),
                threads: args.threads,
                plot: args
                    .plot
                    .unwrap_or_else(|| std::env::temp_dir().join("shoal-demo.svg")),
            };
            let lost = crate::demo::run_demo(options, &mut std::io::stdout())?;
            if lost > 0 {
                return Err(format!("{lost} acknowledged writes were lost").into());
            }
            Ok(())
        }
        Command::Admin(AdminCommand::Ring(args)) => run_ring(args),
        Command::Admin(AdminCommand::Members(args)) => run_members(args),
        Command::Admin(AdminCommand::Aae(args)) => {
            let mut client = connect(&args.target)?;
            crate::aae_cli::run(&mut client, args.json, &mut std::io::stdout())
        }
        Command::Admin(AdminCommand::Join(args)) => {
            crate::membership_cli::join(args, &mut std::io::stdout())
        }
        Command::Admin(AdminCommand::Leave(args)) => {
            crate::membership_cli::depart(args, false, &mut std::io::stdout())
        }
        Command::Admin(AdminCommand::Remove(args)) => {
            crate::membership_cli::depart(args, true, &mut std::io::stdout())
        }
        Command::Admin(AdminCommand::Plan(args)) => crate::membership_cli::plan_or_commit(
            &args.target,
            false,
            args.json,
            &mut std::io::stdout(),
        ),
        Command::Admin(AdminCommand::Commit(args)) => crate::membership_cli::plan_or_commit(
            &args.target,
            true,
            args.json,
            &mut std::io::stdout(),
        ),
        Command::Admin(AdminCommand::Throttle(args)) => {
            let mut client = connect(&args.target)?;
            crate::throttle_cli::run(args, &mut client)
        }
    }
}

pub(crate) fn connect(target: &Target) -> Result<Client, ClientError> {
    Client::connect(
        &target.node,
        Duration::from_secs(target.timeout_secs.max(1)),
    )
}

fn run_node(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.node.listen = listen;
    }
    if let Some(data) = args.data {
        config.node.data_dir = data;
    }
    let logger = logging::logger(&config.log.level, &config.log.format);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let node = Node::start(&config, &logger)?;
    // Scripts and tests read this line to learn the port when listening on port 0.
    println!(
        "shoal node {} listening on {}",
        config.node.id,
        node.local_addr()
    );
    std::io::stdout().flush()?;
    signals.forever().next();
    node.shutdown();
    Ok(())
}

fn run_get(args: GetArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.target)?;
    if args.local {
        let versions = client.get_local(args.key.as_bytes())?;
        if args.json {
            println!("{}", local_json(&versions));
        } else {
            if versions.is_empty() {
                println!("(no versions stored here)");
            }
            for v in versions.versions() {
                let value = v
                    .value
                    .as_deref()
                    .map_or("(tombstone)".into(), String::from_utf8_lossy);
                println!("{}:{} {value}", v.dot.node, v.dot.counter);
            }
        }
        return Ok(());
    }
    let result = client.get(
        args.key.as_bytes(),
        RequestOptions {
            r: args.r,
            ..Default::default()
        },
    )?;
    if args.json {
        println!("{}", get_json(&result.values, &result.context));
    } else {
        if result.values.is_empty() {
            println!("(not found)");
        }
        for value in &result.values {
            println!("{}", String::from_utf8_lossy(value));
        }
        println!("context: {}", result.context.to_base64());
    }
    Ok(())
}

/// The JSON form of a get: values as strings when all are UTF-8, else base64.
pub fn get_json(values: &[Vec<u8>], context: &Context) -> serde_json::Value {
    let texts: Option<Vec<&str>> = values.iter().map(|v| std::str::from_utf8(v).ok()).collect();
    match texts {
        Some(texts) => serde_json::json!({ "values": texts, "context": context.to_base64() }),
        None => {
            let encoded: Vec<String> = values.iter().map(|v| STANDARD.encode(v)).collect();
            serde_json::json!({ "values_base64": encoded, "context": context.to_base64() })
        }
    }
}

fn run_stats(args: StatsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.target)?;
    let mut stdout = std::io::stdout();
    loop {
        let stats = client.stats()?;
        let text = if args.json {
            format!("{}\n", serde_json::to_string(&stats)?)
        } else {
            stats_table(&stats)
        };
        if !args.watch {
            return Ok(write_out(&mut stdout, &text)?);
        }
        // A closed standard output (`--watch | head`) ends the watch quietly.
        if write_out(&mut stdout, &format!("{text}\n")).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Writes and flushes `text` to standard output; a watcher whose reader went away (`| head`)
/// gets the error back instead of a panic.
pub(crate) fn write_out(out: &mut std::io::Stdout, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// The human form of `admin stats`: one row per stage, then operation latencies.
pub fn stats_table(stats: &StatsReply) -> String {
    let mut out = format!("node {}\n", stats.node);
    if let Some(failure) = &stats.storage_failure {
        out.push_str(&format!("UNHEALTHY: storage refuses writes: {failure}\n"));
    }
    out.push_str(&format!(
        "{:<11} {:<10} {:>7} {:>4} {:>6} {:>8} {:>9} {:>10} {:>10} {:>8} {:>14} {:>14}\n",
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
            "{:<11} {:<10} {:>7} {:>4} {:>6} {:>8} {:>9} {:>10} {:>10} {:>8} {:>14} {:>14}\n",
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

/// The JSON form of `get --local`: every stored version with its dot and causal past.
pub fn local_json(versions: &VersionSet) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = versions
        .versions()
        .iter()
        .map(|v| {
            let past: serde_json::Map<String, serde_json::Value> = v
                .past
                .entries()
                .map(|(node, e)| (node.to_string(), e.counter.into()))
                .collect();
            let value = match &v.value {
                None => serde_json::Value::Null,
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => text.into(),
                    Err(_) => STANDARD.encode(bytes).into(),
                },
            };
            serde_json::json!({
                "node": v.dot.node.to_string(),
                "counter": v.dot.counter,
                "timestamp_ms": v.timestamp_ms,
                "past": past,
                "tombstone": v.is_tombstone(),
                "value": value,
            })
        })
        .collect();
    serde_json::json!({ "versions": rows })
}

fn run_ring(args: RingArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.target)?;
    let membership = client.ring()?;
    // The pending transfers depend on N, which the node knows and the client does not.
    let plan = client.plan(shoal_stages::wire::PlanRequest {
        change: None,
        commit: false,
    })?;
    let ring = membership.ring();
    let q = ring.partition_count();
    let nodes: Vec<serde_json::Value> = membership
        .entries()
        .map(|e| {
            let m = &e.member;
            let owned = ring.partitions_of(&m.id).len();
            let state = match (e.state, ring.contains(&m.id)) {
                (MemberState::Active, true) => "valid",
                (MemberState::Active, false) => "joining",
                (MemberState::Leaving, true) => "leaving",
                (MemberState::Leaving, false) => "left",
                (MemberState::Removed, _) => "removed",
            };
            serde_json::json!({
                "id": m.id.to_string(), "addr": m.addr.to_string(), "weight": m.weight,
                "zone": m.zone, "state": state, "partitions": owned,
                "share": owned as f64 / f64::from(q),
                "sending": plan.pending.iter().filter(|t| t.from.as_ref() == Some(&m.id)).count(),
                "receiving": plan.pending.iter().filter(|t| t.to == m.id).count(),
            })
        })
        .collect();
    // Each sender reports its own transfers' progress: ask every member (one that does not
    // answer is skipped; its transfers show as pending without progress).
    let timeout = std::time::Duration::from_secs(args.target.timeout_secs);
    let progress: Vec<(String, shoal_stages::wire::TransferProgress)> = membership
        .members()
        .filter_map(|m| {
            let mut client = Client::connect(&m.addr.to_string(), timeout).ok()?;
            let reply = client
                .plan(shoal_stages::wire::PlanRequest {
                    change: None,
                    commit: false,
                })
                .ok()?;
            Some((m.id.to_string(), reply.progress))
        })
        .flat_map(|(from, progress)| progress.into_iter().map(move |p| (from.clone(), p)))
        .filter(|(from, p)| {
            plan.pending.iter().any(|t| {
                t.partition == p.partition
                    && t.to == p.to
                    && t.from.as_ref().is_some_and(|f| f.as_str() == from)
            })
        })
        .collect();
    if args.json {
        let owners: Vec<String> = ring.owners().iter().map(|o| o.to_string()).collect();
        let in_flight: Vec<serde_json::Value> = progress
            .iter()
            .map(|(from, p)| {
                serde_json::json!({
                    "partition": p.partition, "from": from, "to": p.to.to_string(),
                    "phase": p.phase, "objects": p.objects, "bytes": p.bytes, "retries": p.retries,
                })
            })
            .collect();
        let out = serde_json::json!({
            "version": membership.version, "partitions": q, "nodes": nodes, "owners": owners,
            "pending_transfers": plan.pending, "in_flight": in_flight,
        });
        println!("{out}");
        return Ok(());
    }
    println!("membership version {}, {q} partitions", membership.version);
    println!(
        "{:<12} {:<22} {:<8} {:>6} {:<8} {:>10} {:>7} {:>8} {:>9}",
        "Node", "Address", "State", "Weight", "Zone", "Partitions", "Share", "Sending", "Receiving"
    );
    for n in &nodes {
        // serde_json values ignore width flags: numbers are printed through strings.
        let text = |field: &str| n[field].to_string();
        println!(
            "{:<12} {:<22} {:<8} {:>6} {:<8} {:>10} {:>6.1}% {:>8} {:>9}",
            n["id"].as_str().unwrap_or(""),
            n["addr"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or(""),
            text("weight"),
            n["zone"].as_str().unwrap_or("-"),
            text("partitions"),
            n["share"].as_f64().unwrap_or(0.0) * 100.0,
            text("sending"),
            text("receiving"),
        );
    }
    println!(
        "pending transfers: {} (partition copies the last commit needs)",
        plan.pending.len()
    );
    for (from, p) in &progress {
        println!(
            "  partition {:>5} {from} -> {}: {}, {} objects, {:.1} MiB, {} retries",
            p.partition,
            p.to,
            p.phase,
            p.objects,
            p.bytes as f64 / 1_048_576.0,
            p.retries
        );
    }
    if !plan.plan.is_empty() {
        println!("staged changes not committed: see `shoal admin plan`");
    }
    Ok(())
}

fn run_members(args: RingArgs) -> Result<(), Box<dyn std::error::Error>> {
    let reply = connect(&args.target)?.members()?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
        return Ok(());
    }
    println!(
        "members as seen by {} (membership version {})",
        reply.node, reply.version
    );
    println!(
        "{:<12} {:<22} {:<6} {:>12} {:>13}",
        "Node", "Address", "State", "Down for", "Hints held"
    );
    for m in &reply.members {
        let state = if m.up { "up" } else { "down" };
        let down = if m.up {
            "-".to_string()
        } else {
            format!("{:.1}s", m.down_for_ms as f64 / 1000.0)
        };
        println!(
            "{:<12} {:<22} {:<6} {:>12} {:>13}",
            m.node, m.addr, state, down, m.hints_pending
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stats_table;
    use shoal_stages::wire::StatsReply;
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
