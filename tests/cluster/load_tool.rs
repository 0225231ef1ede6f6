//! The load tool's engine run again and again against one store: its load phase is idempotent
//! (it reconciles keys that already hold siblings instead of adding one), and per-key errors
//! are counted rather than ending the run. Every benchmark runs `shoal-load` more than once
//! against one cluster, so this is what makes their figures honest.

use super::support::{free_ports, TestCluster, TestNode, CLIENT_TIMEOUT};
use shoal::client::RequestOptions;
use shoal::load::keys::KeyChoice;
use shoal::load::target::TargetSpec;
use shoal::load::{run, LoadConfig, LoadReport, Workload};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Few keys and a low sibling limit, so that the first run's blind puts leave hot keys at the
/// limit: the state in which a second run's load phase used to fail with `TooManySiblings`.
const KEYS: u64 = 40;
const NODE_LIMITS: &str = "[limits]\nmax_siblings = 4\n";

fn load_config(target: &TargetSpec, threads: usize, ops: u64) -> LoadConfig {
    LoadConfig {
        target: target.clone(),
        workload: Workload::A,
        key_choice: KeyChoice::Zipfian,
        keys: KEYS,
        key_prefix: shoal::load::keys::DEFAULT_KEY_PREFIX.into(),
        value_bytes: 64,
        threads,
        duration: Duration::from_secs(30),
        ops: Some(ops),
        rate: None,
        r: None,
        w: None,
        durable: None,
        seed: 7,
        load_phase: true,
        stage_stats: false,
    }
}

fn run_ok(config: &LoadConfig) -> LoadReport {
    run(config, &mut std::io::sink()).expect("the run proceeds")
}

/// Asserts a run had no error at all, in its load phase or its operations.
fn assert_no_errors(report: &LoadReport, which: &str) {
    let load = report.load.as_ref().expect("the load phase ran");
    assert!(
        load.errors.is_empty(),
        "{which} run's load phase: {:?}",
        load.errors
    );
    assert_eq!(
        load.written + load.kept,
        KEYS,
        "{which} run's load phase covers every key"
    );
    for op in &report.operations {
        assert!(
            op.errors_by_kind.is_empty(),
            "{which} run, {}: {:?}",
            op.op,
            op.errors_by_kind
        );
    }
    assert!(report.totals().0 > 0, "{which} run did some work");
}

/// The behaviour the issue asks for, against any target: two runs of 8 threads on a few hot
/// keys both complete without errors; then two single-threaded runs (deterministic: one
/// seeded sequence of operations) show the second's reads seeing no more siblings than the
/// first's, because each load phase left every key with one value.
fn two_runs_complete_and_siblings_do_not_grow(target: &TargetSpec) {
    let hot = load_config(target, 8, 2_000);
    let first = run_ok(&hot);
    assert_no_errors(&first, "first");
    let second = run_ok(&hot);
    assert_no_errors(&second, "second");

    let single = load_config(target, 1, 400);
    let third = run_ok(&single);
    assert_no_errors(&third, "third");
    let fourth = run_ok(&single);
    assert_no_errors(&fourth, "fourth");
    assert!(
        fourth.reads_with_siblings <= third.reads_with_siblings,
        "siblings grew from run to run: {} then {}",
        third.reads_with_siblings,
        fourth.reads_with_siblings
    );
    let fourth_load = fourth.load.as_ref().expect("load phase");
    assert_eq!(
        fourth_load.kept + fourth_load.written,
        KEYS,
        "the load phase read every key"
    );
}

/// Goal: the load engine can run again against the node it already loaded (issue 15: the
/// second run used to exit at once with `TooManySiblings`). Method: a real node with
/// `max_siblings = 4`; hot-key runs that push keys to the limit, run twice; then two
/// single-threaded runs compare sibling counts.
#[test]
fn load_runs_twice_against_one_node_without_errors() {
    let node = TestNode::start(NODE_LIMITS);
    let target = TargetSpec::Shoal {
        seeds: vec![node.addr.clone()],
        replicas: Some(1),
    };
    two_runs_complete_and_siblings_do_not_grow(&target);
}

/// Goal: the same on a 3-node cluster (N=3, R=2, W=2) through the partition-aware client.
#[test]
fn load_runs_twice_against_a_three_node_cluster_without_errors() {
    let cluster = TestCluster::start(3, 3, 2, 2, NODE_LIMITS);
    let target = TargetSpec::Shoal {
        seeds: vec![cluster.addr(0), cluster.addr(1)],
        replicas: None, // learned from the ring
    };
    two_runs_complete_and_siblings_do_not_grow(&target);
}

/// Goal: one client thread never makes a sibling, in its first run or a later one against
/// the same keys: the load phase leaves each key's context for the run's first update, which
/// then supersedes the stored value (it wrote blind before, so a run of one thread saw
/// siblings in a tenth of its reads, and a rerun in more). Method: a 3-node cluster (N=3,
/// R=2, W=2), two single-threaded runs of workload A.
#[test]
fn a_single_client_thread_makes_no_siblings_run_after_run() {
    let cluster = TestCluster::start(3, 3, 2, 2, "");
    let target = TargetSpec::Shoal {
        seeds: vec![cluster.addr(0)],
        replicas: None,
    };
    let single = load_config(&target, 1, 400);
    for run in ["first", "second"] {
        let report = run_ok(&single);
        assert_no_errors(&report, run);
        assert_eq!(report.reads_with_siblings, 0, "{run} run saw siblings");
    }
}

/// Goal: a closed-loop run whose only node stops midway counts the failures as what they are,
/// the I/O errors and the stopping node's `ShuttingDown` refusals (not "usage"), and pauses
/// after each rather than spinning (it failed a
/// hundred thousand requests a second, taking the cores a restarting node needs). Method: a
/// real node stopped 300 ms into a 1.5 s run of 2 threads; at 20 ms a pause, at most about
/// 120 failures.
#[test]
fn a_run_whose_node_stops_counts_io_errors_and_does_not_spin() {
    let mut node = TestNode::start("");
    let target = TargetSpec::Shoal {
        seeds: vec![node.addr.clone()],
        replicas: Some(1),
    };
    let mut config = load_config(&target, 2, 0);
    config.ops = None;
    config.duration = Duration::from_millis(1500);
    let report = std::thread::scope(|scope| {
        let running = scope.spawn(|| run_ok(&config));
        std::thread::sleep(Duration::from_millis(300));
        if let Some(running_node) = node.node.take() {
            running_node.shutdown();
        }
        running.join().expect("the run ends")
    });
    let errors: BTreeMap<&str, u64> = report
        .operations
        .iter()
        .flat_map(|op| op.errors_by_kind.iter())
        .fold(BTreeMap::new(), |mut all, (kind, n)| {
            *all.entry(kind.as_str()).or_default() += n;
            all
        });
    assert!(
        errors
            .keys()
            .all(|kind| kind.starts_with("io:") || ["closed", "ShuttingDown"].contains(kind)),
        "every failure is the I/O failure or refusal it was: {errors:?}"
    );
    let failed: u64 = errors.values().sum();
    assert!(failed > 0, "the stop was noticed: {errors:?}");
    assert!(failed <= 400, "a closed loop spun: {errors:?}");
}

/// Goal: a run asking for quorums the cluster's N cannot meet is refused before it starts,
/// saying why (it ran its whole duration with every request refused `InvalidQuorum`).
#[test]
fn a_quorum_beyond_n_is_refused_before_the_run() {
    let node = TestNode::start("");
    let target = TargetSpec::Shoal {
        seeds: vec![node.addr.clone()],
        replicas: None,
    };
    let mut config = load_config(&target, 1, 10);
    config.r = Some(2);
    let error = run(&config, &mut std::io::sink()).expect_err("refused");
    assert!(error.contains("--r 2 is outside 1..=1"), "{error}");
}

/// Goal: a partition-aware client given no N routes by the N the cluster reports with its
/// ring (3 here), and an explicit N still wins.
#[test]
fn cluster_client_learns_n_from_the_ring() {
    use shoal::cluster_client::ClusterClient;
    let cluster = TestCluster::start(3, 3, 2, 2, "");
    let seeds = vec![cluster.addr(1)];
    let learned =
        ClusterClient::connect_with(&seeds, None, Duration::from_secs(5)).expect("connects");
    assert_eq!(learned.replicas(), 3);
    let told =
        ClusterClient::connect_with(&seeds, Some(2), Duration::from_secs(5)).expect("connects");
    assert_eq!(told.replicas(), 2);
}

/// Goal: the load phase leaves alone a key that already holds one value of the run's size,
/// writes (reconciling) only the others, and counts apart those it found absent (what a
/// restart lost). Method: a first run's load phase writes every key, all absent; a second,
/// load-only run (no operations) writes none; after a blind put makes siblings of one key,
/// a third writes that one, found present.
#[test]
fn load_phase_keeps_keys_already_loaded() {
    let node = TestNode::start("");
    let target = TargetSpec::Shoal {
        seeds: vec![node.addr.clone()],
        replicas: Some(1),
    };
    let mut config = load_config(&target, 2, 0);
    config.ops = Some(0);
    let first = run_ok(&config);
    let second = run_ok(&config);
    let (first, second) = (first.load.expect("ran"), second.load.expect("ran"));
    assert_eq!((first.written, first.absent, first.kept), (KEYS, KEYS, 0));
    assert_eq!((second.written, second.absent, second.kept), (0, 0, KEYS));
    let key = shoal::load::keys::key_name(shoal::load::keys::DEFAULT_KEY_PREFIX, 3);
    node.client()
        .put(
            key.as_bytes(),
            None,
            b"a sibling",
            RequestOptions::default(),
        )
        .expect("blind put");
    let third = run_ok(&config).load.expect("ran");
    assert_eq!((third.written, third.absent, third.kept), (1, 0, KEYS - 1));
}

/// A `redis-server` on a free loopback port, persistence off, stopped on drop.
struct RedisServer {
    child: Child,
    addr: String,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_ports(1)[0];
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (tools/test-deps.sh installs it from Debian)");
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < CLIENT_TIMEOUT,
                "redis-server did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, addr }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Goal: the same holds for `--target redis://` (the baseline of every side-by-side
/// benchmark). Method: a real redis-server; two runs, both without errors.
#[test]
fn load_runs_twice_against_redis_without_errors() {
    let redis = RedisServer::start();
    let target = TargetSpec::parse(&format!("redis://{}", redis.addr), None).expect("parses");
    let config = load_config(&target, 4, 1_000);
    assert_no_errors(&run_ok(&config), "first");
    assert_no_errors(&run_ok(&config), "second");
}
