//! The resource controller on real nodes: `admin throttle` shows it, pins a background
//! stage's rate and hands it back; a pinned rate holds a real backlog back, and `--auto`
//! lets it drain. Reference: Dynamo §6.5 (admission control for background tasks).

use super::support::{eventually, hints_for, hints_on, TestCluster, TestNode};
use shoal::client::RequestOptions;
use shoal_stages::storage::cpu_priority::{thread_nice, threads_of};
use shoal_stages::NodeId;
use std::process::Command;
use std::time::Duration;

/// A short controller period, so tests see several decisions quickly.
const FAST_CONTROLLER: &str = "[controller]\nperiod_ms = 50\n";

fn throttle(addr: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "throttle", "--node", addr, "--json"])
        .args(extra)
        .output()
        .expect("run shoal");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        output.status.success(),
        json,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stage<'a>(reply: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    reply["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {reply}"))
}

/// Goal: `admin throttle --json` shows the controller (enabled, target, signal, period) and
/// every background stage (rate, used, backlog, mode); `--stage handoff --rate 7` pins the
/// rate and the controller leaves it there period after period; `--auto` hands it back, and
/// the controller sets it again; a foreground or unknown stage is refused with an error
/// naming the background stages, and so are a rate above the bound and a watch too fast.
#[test]
fn admin_throttle_pins_a_rate_and_auto_hands_it_back() {
    let node = TestNode::start(FAST_CONTROLLER);
    let addr = node.addr.as_str();
    let (ok, shown, stderr) = throttle(addr, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(shown["controller"]["enabled"], true);
    assert_eq!(shown["controller"]["target_ms"], 50);
    assert_eq!(shown["controller"]["period_ms"], 50);
    assert!(shown["controller"]["signal_ms"].is_number(), "{shown}");
    for name in ["repair", "handoff"] {
        let row = stage(&shown, name);
        assert_eq!(row["mode"], "auto", "{row}");
        for field in ["rate_per_sec", "used_per_sec", "backlog", "dropped"] {
            assert!(row[field].is_number(), "{field} in {row}");
        }
    }

    let (ok, pinned, stderr) = throttle(addr, &["--stage", "handoff", "--rate", "7"]);
    assert!(ok, "{stderr}");
    assert_eq!(stage(&pinned, "handoff")["rate_per_sec"], 7);
    assert_eq!(stage(&pinned, "handoff")["mode"], "pinned");
    std::thread::sleep(Duration::from_millis(300)); // six controller periods
    let (_, later, _) = throttle(addr, &[]);
    assert_eq!(stage(&later, "handoff")["rate_per_sec"], 7, "{later}");
    assert_ne!(stage(&later, "repair")["mode"], "pinned");

    let (ok, released, stderr) = throttle(addr, &["--stage", "handoff", "--auto"]);
    assert!(ok, "{stderr}");
    assert_eq!(stage(&released, "handoff")["mode"], "auto");
    // Released, it has the configured rate (1000) until the controller's next period gives
    // an idle node's stage without a backlog the floor (`min_rate`, 20).
    assert!(
        eventually(|| stage(&throttle(addr, &[]).1, "handoff")["rate_per_sec"] == 20),
        "the controller takes the rate back"
    );

    let (ok, _, stderr) = throttle(
        addr,
        &["--stage", "handoff", "--rate", "18446744073709551615"],
    );
    assert!(!ok && stderr.contains("above the most"), "{stderr}");
    let (ok, _, stderr) = throttle(addr, &["--watch-ms", "0"]);
    assert!(!ok && stderr.contains("--watch-ms"), "{stderr}");
    for wrong in ["storage", "handof"] {
        let (ok, _, stderr) = throttle(addr, &["--stage", wrong, "--rate", "5"]);
        assert!(!ok, "{wrong} accepted");
        assert!(
            stderr.contains("repair") && stderr.contains("handoff"),
            "{stderr}"
        );
    }
}

/// Goal: a pinned rate holds a real backlog back while an unpinned node delivers: with
/// handoff pinned at 0 on every node but one, the one hands all its hints for the returning
/// node over (so delivery was possible) while the pinned ones still hold every one of theirs;
/// `--auto` hands the stage back to the controller, and every hint drains. Method: 5 nodes
/// N=3 W=2, one stopped while keys it replicates are written, then restarted.
#[test]
fn pinned_handoff_holds_hints_back_until_auto() {
    let mut cluster = TestCluster::start(5, 3, 2, 2, FAST_CONTROLLER);
    let membership = cluster.client(0).ring().expect("ring");
    let target = NodeId::new("n3");
    let keys: Vec<String> = (0..4000)
        .map(|i| format!("key{i}"))
        .filter(|key| {
            membership
                .ring()
                .preference_list_for_key(key.as_bytes(), 3)
                .primaries
                .contains(&target)
        })
        .take(80)
        .collect();
    cluster.stop(2);
    let options = RequestOptions::default();
    for (i, key) in keys.iter().enumerate() {
        // Coordinated by every live node in turn, so the hints spread over the fallbacks.
        let coordinator = [0, 1, 3, 4][i % 4];
        cluster
            .client(coordinator)
            .put(key.as_bytes(), None, b"v", options)
            .expect("sloppy W=2 put");
    }
    let live = [0, 1, 3, 4];
    let held: Vec<u64> = live.iter().map(|i| hints_on(&cluster, *i, "n3")).collect();
    // The control: the live node holding the most hints stays unpinned.
    let control = live[(0..live.len()).max_by_key(|k| held[*k]).unwrap_or(0)];
    let pinned: Vec<usize> = live.iter().copied().filter(|i| *i != control).collect();
    assert!(hints_on(&cluster, control, "n3") > 0, "held: {held:?}");
    assert!(
        pinned.iter().any(|i| hints_on(&cluster, *i, "n3") > 0),
        "a pinned node must hold hints too: {held:?}"
    );
    for i in &pinned {
        let (ok, _, stderr) = throttle(&cluster.addr(*i), &["--stage", "handoff", "--rate", "0"]);
        assert!(ok, "{stderr}");
    }
    cluster.restart(2);
    assert!(
        eventually(|| hints_on(&cluster, control, "n3") == 0),
        "the unpinned node delivers its hints"
    );
    for (k, i) in live.iter().enumerate() {
        if *i != control {
            assert_eq!(
                hints_on(&cluster, *i, "n3"),
                held[k],
                "pinned at 0: n{}",
                i + 1
            );
        }
    }
    for i in &pinned {
        let (ok, _, stderr) = throttle(&cluster.addr(*i), &["--stage", "handoff", "--auto"]);
        assert!(ok, "{stderr}");
    }
    assert!(
        eventually(|| hints_for(&cluster, "n3") == 0),
        "hints drain once the controller has the stage back"
    );
}

/// The name and nice value of each thread of process `pid`.
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    threads_of(pid)
        .expect("threads listed")
        .into_iter()
        // A thread that ended meanwhile has no nice value left to read.
        .filter_map(|(tid, name)| Some((name, i64::from(thread_nice(tid).ok()?))))
        .collect()
}

/// The nice value this test process runs at (the node inherits it).
fn own_nice() -> i64 {
    i64::from(thread_nice(std::process::id()).expect("own nice"))
}

/// Goal: with the controller on, the storage engine's flush and compaction threads run
/// `controller.storage_nice` steps below the node's priority, the background workers
/// `controller.background_nice` steps below it, and every other thread of the node at it;
/// with the controller off, every thread keeps the node's priority. Method: a real node
/// process each way, its threads read from /proc; the node's priority is the one this test
/// runs at.
#[test]
fn the_controller_lowers_the_storage_engine_and_background_workers_priority_and_only_those() {
    use super::support::{config_text, write_config, NodeProcess};
    let base = own_nice();
    for (extra, engine_step, background_step) in [
        (
            "[controller]\nstorage_nice = 5\nbackground_nice = 3\n",
            5,
            3,
        ),
        (
            "[controller]\nenabled = false\nstorage_nice = 5\nbackground_nice = 3\n",
            0,
            0,
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_config(dir.path(), &config_text(dir.path(), extra));
        let node = NodeProcess::start(&path);
        let threads = thread_nices(node.child.id());
        let of = |prefix: &str| -> Vec<i64> {
            threads
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(_, nice)| *nice)
                .collect()
        };
        for (prefix, step) in [
            ("fjall:worker", engine_step),
            ("background-", background_step),
        ] {
            let found = of(prefix);
            assert!(!found.is_empty(), "{prefix} threads are found by name");
            let expected = (base + step).min(19);
            assert!(
                found.iter().all(|&nice| nice == expected),
                "{extra}: {prefix} threads {found:?}, expected {expected}"
            );
        }
        for (name, nice) in threads.iter().filter(|(name, _)| {
            !name.starts_with("fjall:worker") && !name.starts_with("background-")
        }) {
            assert_eq!(
                *nice, base,
                "{extra}: thread {name} keeps the node's priority"
            );
        }
        node.kill();
    }
}
