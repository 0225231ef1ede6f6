//! The `shoal` command line: `node`, `get`, `put`, `delete`, `admin`, `demo` and `sim`.

use crate::client::{Client, ClientError, Context, Durability, RequestOptions};
use crate::config::Config;
use crate::logging;
use crate::node::Node;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use shoal_stages::versioning::VersionSet;
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
    /// Seconds to wait for the node (at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
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
    /// The value (UTF-8); or give --value-file.
    #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
    value: Option<String>,
    /// Read the value from this file, any bytes (`-`: standard input): for values too large
    /// or too binary for an argument.
    #[arg(long)]
    value_file: Option<std::path::PathBuf>,
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
    /// Record a member's new address (it moved, keeping its id and data): in effect at once,
    /// no commit, nothing moved.
    Move(crate::membership_cli::MoveArgs),
    /// What the staged changes would move, from whom to whom.
    Plan(RingArgs),
    /// Apply the staged changes: the new ring, and the transfers it needs.
    Commit(RingArgs),
}

/// `shoal admin ring`
#[derive(Args, Debug)]
pub struct RingArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `shoal admin stats`
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print again every second until interrupted.
    #[arg(long)]
    pub(crate) watch: bool,
}

/// With `--durable`, says on stderr how many acknowledging replicas had the write on disk
/// (stdout keeps only the context, for scripts).
fn report_durable(asked: Option<Durability>, copies: u8) {
    if let Some(asked) = asked {
        eprintln!("durable copies: {copies} (asked: {asked})");
    }
}

/// A put's value from a file, or from standard input for `-`.
fn read_value(path: &std::path::Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let read = if path.as_os_str() == "-" {
        let mut value = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut value).map(|_| value)
    } else {
        std::fs::read(path)
    };
    Ok(read.map_err(|e| format!("reading the value from {}: {e}", path.display()))?)
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
            let value = match (&args.value, &args.value_file) {
                (Some(value), _) => value.as_bytes().to_vec(),
                (None, Some(path)) => read_value(path)?,
                (None, None) => return Err("give a value or --value-file".into()),
            };
            let result = client.put_full(args.key.as_bytes(), context.as_ref(), &value, options)?;
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
        Command::Admin(AdminCommand::Stats(args)) => crate::stats_cli::run_stats(args),
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
        Command::Admin(AdminCommand::Ring(args)) => crate::ring_cli::run_ring(args),
        Command::Admin(AdminCommand::Members(args)) => crate::ring_cli::run_members(args),
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
        Command::Admin(AdminCommand::Move(args)) => {
            crate::membership_cli::move_member(args, &mut std::io::stdout())
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
        Command::Admin(AdminCommand::Throttle(args)) => crate::throttle_cli::run(args),
    }
}

pub(crate) fn connect(target: &Target) -> Result<Client, ClientError> {
    Client::connect(&target.node, Duration::from_secs(target.timeout_secs))
}

/// Asks the node at `target` with `ask` and prints what `show` makes of the answer: once when
/// `every` is `None`, else again after each interval until interrupted. A watch outlives its
/// node's restart (a trial's ended at the first failure): when the node stops answering it
/// says so once on stderr and asks again every second on a new connection, and says when it
/// answers again. Only a node that is gone is waited for; any other error ends the watch. A
/// closed standard output (`--watch | head`) ends it quietly.
pub(crate) fn ask_and_watch<T>(
    target: &Target,
    every: Option<Duration>,
    mut ask: impl FnMut(&mut Client) -> Result<T, ClientError>,
    mut show: impl FnMut(T) -> Result<String, Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(target)?;
    let mut stdout = std::io::stdout();
    let mut gone = false;
    loop {
        let answer = match ask(&mut client) {
            Ok(answer) => answer,
            Err(error) if every.is_some() && node_gone(&error) => {
                if !gone {
                    eprintln!("the node does not answer ({error}); asking again every second");
                    gone = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(again) = connect(target) {
                    client = again;
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if std::mem::take(&mut gone) {
            eprintln!("the node answers again");
        }
        let text = show(answer)?;
        let Some(every) = every else {
            return Ok(write_out(&mut stdout, &text)?);
        };
        if write_out(&mut stdout, &text).is_err() {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

/// Whether `error` means the node is not there to answer (stopped, restarting, unreachable),
/// rather than that it answered no.
fn node_gone(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Io(_)
            | ClientError::Closed { .. }
            | ClientError::Service(shoal_stages::ServiceError::ShuttingDown)
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
    // Dropped last (declared first): every queued line is written before the process ends.
    let (logger, _log_guard) = logging::logger_with_guard(&config.log.level, &config.log.format);
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
    // A node whose intake thread failed answers nobody: it stops as if signalled, and the
    // process exits with an error for its supervisor (a trial's stayed alive, deaf).
    let failed = node.failed();
    // It signals this process, so the stop is the usual one: a second and third signal still
    // end the drain, then the process.
    let watch_failure = {
        let (failed, logger) = (std::sync::Arc::clone(&failed), logger.clone());
        move || loop {
            if failed.load(std::sync::atomic::Ordering::Acquire) {
                slog::crit!(logger, "stopping: the intake thread failed");
                if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGTERM) {
                    slog::crit!(logger, "cannot signal this process to stop: stop it by hand"; "error" => %e);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Detached: it ends with the process (a normal stop leaves it polling until then).
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(watch_failure)?;
    signals.forever().next();
    // A second signal while the drain runs ends it at once (the stages still stop in order);
    // a third ends the process, as an operator pressing Ctrl-C again means.
    let (at_once, second_logger) = (node.stop_at_once(), logger.clone());
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut more = signals.forever();
            if more.next().is_some() {
                slog::warn!(
                    second_logger,
                    "a second signal: ending the drain at once (a third ends the process)"
                );
                at_once.store(true, std::sync::atomic::Ordering::Release);
            }
            if more.next().is_some() {
                std::process::exit(130);
            }
        });
    if let Err(e) = watcher {
        slog::warn!(logger, "cannot watch for a second signal: the drain runs to its end"; "error" => %e);
    }
    node.shutdown();
    if failed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(
            "the node stopped because its intake thread failed (the log above says where)".into(),
        );
    }
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
                let value = v.value.as_deref().map_or("(tombstone)".into(), shown);
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
            println!("{}", shown(value));
        }
        println!("context: {}", result.context.to_base64());
    }
    Ok(())
}

/// A value as `get` prints it: its text, or, for bytes that are not UTF-8, what they are and
/// where to find them (a terminal would show them garbled, and a lossy copy is not the value).
fn shown(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => text.into(),
        Err(_) => format!(
            "({} bytes, not UTF-8: --json gives them in base64)",
            value.len()
        )
        .into(),
    }
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

/// Writes and flushes `text` to standard output; a watcher whose reader went away (`| head`)
/// gets the error back instead of a panic.
pub(crate) fn write_out(out: &mut std::io::Stdout, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
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
