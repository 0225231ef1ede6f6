//! `shoal demo`: README's main job in one command. Starts a 3-node cluster (N=3, R=2, W=2) on
//! loopback with fresh fjall data directories, runs a mixed workload with the load tool's
//! engine and, beside it, a set workload whose every acknowledged add is checked at the end;
//! stops one node midway and brings it back; prints the latency report, where the pipeline
//! backed up, and each node's per-stage table; shuts everything down. Bounded in time.

use crate::client::{Client, RequestOptions};
use crate::cluster_client::ClusterClient;
use crate::config::Config;
use crate::load::report::table;
use crate::load::target::TargetSpec;
use crate::load::{keys::KeyChoice, run, LoadConfig, Workload};
use crate::logging;
use crate::node::Node;
use crate::stats_cli::stats_table;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Keys the set workload adds integers to.
const SET_KEYS: [&str; 3] = ["demo-set-0", "demo-set-1", "demo-set-2"];

/// How long the demo runs its workload, and with how many threads.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Workload duration; the whole demo takes a few seconds more.
    pub duration: Duration,
    /// Load threads.
    pub threads: usize,
    /// Where the run's plot goes (SVG).
    pub plot: std::path::PathBuf,
}

/// Runs the demo, printing to `out`; returns how many acknowledged adds were lost (0 is the
/// only correct answer).
pub fn run_demo(options: DemoOptions, out: &mut dyn Write) -> Result<usize, String> {
    let dir = tempfile_dir()?;
    let configs = cluster_configs(&dir)?;
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for config in &configs {
        nodes.push(Some(
            Node::start(config, &logging::discard()).map_err(|e| e.to_string())?,
        ));
    }
    let seeds: Vec<String> = configs.iter().map(|c| c.node.listen.to_string()).collect();
    w(
        out,
        &format!(
            "== 3 nodes (N=3, R=2, W=2) on {} with data in {}",
            seeds.join(", "),
            dir.display()
        ),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let set_writer = {
        let (seeds, stop) = (seeds.clone(), Arc::clone(&stop));
        std::thread::spawn(move || set_workload(&seeds, &stop))
    };
    let load = LoadConfig {
        target: TargetSpec::Shoal {
            seeds: seeds.clone(),
            replicas: None,
        },
        workload: Workload::A,
        key_choice: KeyChoice::Zipfian,
        keys: 2_000,
        key_prefix: crate::load::keys::DEFAULT_KEY_PREFIX.into(),
        value_bytes: 100,
        threads: options.threads,
        duration: options.duration,
        ops: None,
        rate: None,
        r: None,
        w: None,
        durable: None,
        seed: 1,
        load_phase: true,
        stage_stats: true,
    };
    w(out, &format!("== workload A (50% get / 50% put, zipfian) for {} s; n3 stops at 35% and returns at 65%", options.duration.as_secs()))?;
    let loader = std::thread::spawn(move || run(&load, &mut std::io::stdout()));
    std::thread::sleep(options.duration.mul_f64(0.35) + Duration::from_millis(300));
    if let Some(node) = nodes[2].take() {
        node.shutdown();
    }
    w(out, "   n3 stopped")?;
    std::thread::sleep(options.duration.mul_f64(0.30));
    nodes[2] = Some(Node::start(&configs[2], &logging::discard()).map_err(|e| e.to_string())?);
    w(out, "   n3 back")?;
    let report = loader
        .join()
        .map_err(|_| "the load thread panicked".to_string())??;
    stop.store(true, Ordering::Relaxed);
    let acked = set_writer
        .join()
        .map_err(|_| "the set writer panicked".to_string())?;

    w(out, "== latency report")?;
    write!(out, "{}", table(&report.operations)).map_err(|e| e.to_string())?;
    w(
        out,
        &format!(
            "reads that saw siblings: {} of {} that found a value",
            report.reads_with_siblings, report.reads
        ),
    )?;
    if let Some(stages) = &report.stages {
        w(
            out,
            "== where the pipeline backed up (sampled every second)",
        )?;
        write!(out, "{}", stages.table()).map_err(|e| e.to_string())?;
    }
    crate::load::plot::write_svg(&report, &options.plot)?;
    w(
        out,
        &format!(
            "== plot of the run (throughput, latency percentiles, queue depths): {}",
            options.plot.display()
        ),
    )?;
    for seed in &seeds {
        let stats = Client::connect(seed, Duration::from_secs(5))
            .and_then(|mut c| c.stats())
            .map_err(|e| e.to_string())?;
        write!(out, "== per-stage statistics\n{}", stats_table(&stats))
            .map_err(|e| e.to_string())?;
    }
    let lost = check_set(&seeds, &acked)?;
    w(
        out,
        &format!(
            "lost acknowledged writes: {lost} of {} (set workload, read back with R=2)",
            acked.len()
        ),
    )?;
    for node in nodes.into_iter().flatten() {
        node.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    w(out, "== all nodes stopped cleanly")?;
    Ok(lost)
}

fn w(out: &mut dyn Write, line: &str) -> Result<(), String> {
    writeln!(out, "{line}").map_err(|e| e.to_string())
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Three configs on free loopback ports.
fn cluster_configs(dir: &std::path::Path) -> Result<Vec<Config>, String> {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("no free port: {e}"))?;
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[cluster.members]]\nid = \"n{}\"\naddr = \"127.0.0.1:{p}\"\n",
                i + 1
            )
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let text = format!(
                "[node]\nid = \"n{}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n[storage]\nsync = \"always\"\n\
                 [cluster]\nn = 3\nr = 2\nw = 2\nprobe_interval_ms = 200\nsecret = \"shoal-demo-cluster-secret\"\n{members}",
                i + 1,
                dir.join(format!("n{}", i + 1)).display().to_string()
            );
            let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())?;
            Ok(config)
        })
        .collect()
}

/// Adds unique integers to the set keys (get → union of siblings ∪ {x} → put with the
/// context) until stopped; returns the acknowledged ones.
fn set_workload(seeds: &[String], stop: &AtomicBool) -> BTreeSet<u64> {
    let mut acked = BTreeSet::new();
    let Ok(mut client) = ClusterClient::connect(seeds, 3, Duration::from_secs(5)) else {
        return acked;
    };
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x += 1;
        let key = SET_KEYS[(x % 3) as usize].as_bytes();
        let Ok(read) = client.get(key, RequestOptions::default()) else {
            continue;
        };
        let mut set: BTreeSet<u64> = read.values.iter().flat_map(|v| parse_set(v)).collect();
        set.insert(x);
        let value = set.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        if client
            .put(
                key,
                Some(&read.context),
                value.as_bytes(),
                RequestOptions::default(),
            )
            .is_ok()
        {
            acked.insert(x);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    acked
}

fn parse_set(value: &[u8]) -> BTreeSet<u64> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// lost = acked − final, reading every set key with R=2.
fn check_set(seeds: &[String], acked: &BTreeSet<u64>) -> Result<usize, String> {
    let mut client =
        ClusterClient::connect(seeds, 3, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut final_set = BTreeSet::new();
    for key in SET_KEYS {
        let read = client
            .get(key.as_bytes(), RequestOptions::default())
            .map_err(|e| e.to_string())?;
        final_set.extend(read.values.iter().flat_map(|v| parse_set(v)));
    }
    Ok(acked.difference(&final_set).count())
}
