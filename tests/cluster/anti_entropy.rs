//! Merkle anti-entropy on real nodes (Dynamo §4.7, SPEC §5): replicas converge without any
//! client read, a wiped replica is rebuilt from the others, and a tombstone outlives a replica
//! that missed it, then goes away everywhere.

use super::support::TestCluster;
use shoal::client::RequestOptions;
use shoal_stages::wire::{AaeReport, Bytes, Message, PutRequest};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Exchanges every ~200 ms per partition pair, so a test sees many passes; writes go to the OS
/// without fsync (the tests are about convergence, and CI disks are slow).
const FAST_AAE: &str = "[anti_entropy]\nexchange_interval_ms = 200\nconfirm_delay_ms = 50\n\
                        max_keys_per_exchange = 4096\n[storage]\nsync = \"none\"\n";

/// How long convergence may take in a debug build on two cores.
const CONVERGE: Duration = Duration::from_secs(90);

fn key(i: usize) -> Vec<u8> {
    format!("aae-{i:06}").into_bytes()
}

/// Writes `count` keys through node 0, pipelined (many requests in flight on one connection).
/// A put that fails (a W=3 put fails when one replica is slow past its timeout or refuses with
/// `Overloaded`, which a loaded CI machine does now and then) is sent again, a few times at
/// most: these tests are about anti-entropy, and every key must be written before it starts.
fn write_keys(cluster: &TestCluster, count: usize, w: u8) {
    const ATTEMPTS: u32 = 5;
    let mut client = cluster.client(0);
    let window = 64;
    // request id -> (key index, attempts so far)
    let mut in_flight: HashMap<u64, (usize, u32)> = HashMap::new();
    let mut next = 0;
    while next < count || !in_flight.is_empty() {
        while next < count && in_flight.len() < window {
            let id = client.send(&put(next, w)).expect("send put");
            in_flight.insert(id, (next, 1));
            next += 1;
        }
        let (id, reply) = client.receive().expect("put reply");
        let (i, attempts) = in_flight.remove(&id).expect("a reply to a request sent");
        if !matches!(reply, Message::PutReply(_)) {
            assert!(
                attempts < ATTEMPTS,
                "put of key {i} failed {attempts} times, last: {reply}"
            );
            eprintln!("put of key {i} failed (attempt {attempts}), sending it again: {reply}");
            // A full queue or a stalled replica needs a moment, not an instant retry.
            std::thread::sleep(Duration::from_millis(50 * u64::from(attempts)));
            let id = client.send(&put(i, w)).expect("send put");
            in_flight.insert(id, (i, attempts + 1));
        }
    }
}

fn put(i: usize, w: u8) -> Message {
    Message::Put(PutRequest {
        key: Bytes::from(key(i)),
        context: None,
        value: Bytes::from(format!("value-{i}").into_bytes()),
        w: Some(w),
        timeout_ms: None,
        forwarded: false,
        durable: None,
        overwrite: false,
    })
}

fn report(cluster: &TestCluster, i: usize) -> Option<AaeReport> {
    cluster.client(i).aae().ok()
}

/// Per partition, the (root, keys) of each node's report, when every node's tree is ready.
fn roots(cluster: &TestCluster) -> Option<Vec<BTreeMap<u32, (u64, u64)>>> {
    (0..cluster.nodes.len())
        .map(|i| {
            let report = report(cluster, i)?;
            report
                .partitions
                .iter()
                .map(|p| (p.tree == "ready").then_some((p.partition, (p.root, p.keys))))
                .collect::<Option<BTreeMap<_, _>>>()
        })
        .collect()
}

/// Waits until every node reports ready trees with equal roots and `keys` keys in all;
/// returns the last roots seen either way.
fn wait_for_equal_roots(cluster: &TestCluster, keys: u64) -> (bool, String) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < CONVERGE {
        if let Some(roots) = roots(cluster) {
            let totals: Vec<u64> = roots
                .iter()
                .map(|r| r.values().map(|(_, k)| k).sum())
                .collect();
            last = format!("keys per node {totals:?}");
            if roots.windows(2).all(|w| w[0] == w[1]) && totals.iter().all(|t| *t == keys) {
                return (true, last);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (false, last)
}

fn has_value(cluster: &TestCluster, i: usize, k: &[u8], value: &str) -> bool {
    cluster
        .client(i)
        .get_local(k)
        .expect("get --local")
        .live_values()
        .any(|v| v == value.as_bytes())
}

/// Goal (issue must-hold): wipe one replica's data directory in a 3-node N=3 cluster holding
/// 20k keys, restart it, send no client reads: every key is back on it and the three nodes'
/// roots agree, partition by partition. Reads here are `get --local`, which read one store and
/// repair nothing.
#[test]
fn a_wiped_replica_gets_every_key_back_without_reads() {
    let mut cluster = TestCluster::start(3, 3, 2, 3, FAST_AAE);
    let count = 20_000;
    write_keys(&cluster, count, 3);
    cluster.stop(2);
    std::fs::remove_dir_all(&cluster.configs[2].node.data_dir).expect("wipe n3");
    cluster.restart(2);
    let (equal, last) = wait_for_equal_roots(&cluster, count as u64);
    assert!(equal, "roots never agreed: {last}");
    for i in (0..count).step_by(97) {
        assert!(
            has_value(&cluster, 2, &key(i), &format!("value-{i}")),
            "key {i} is not back on the wiped replica"
        );
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "aae", "--node", &cluster.addr(2), "--json"])
        .output()
        .expect("run shoal admin aae");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("aae json");
    assert_eq!(
        json["partitions"].as_array().map(Vec::len),
        Some(64),
        "{json}"
    );
    for field in ["partition", "tree", "root", "keys", "peers"] {
        assert!(
            json["partitions"][0].get(field).is_some(),
            "no {field} in {json}"
        );
    }
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["admin", "aae", "--node", &cluster.addr(2)])
        .output()
        .expect("run shoal admin aae");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("Last exchange") && table.contains("tombstones purged"),
        "{table}"
    );
    let wiped = report(&cluster, 2).expect("report");
    assert_eq!(
        wiped.partitions.iter().map(|p| p.keys).sum::<u64>(),
        count as u64
    );
    // Both sides of an exchange count what went each way, whichever node started it: the
    // wiped node received every missing key, about once (before, only the initiator counted,
    // and the wiped node's report showed the third it fetched itself). Reports are published
    // once a second: wait for the last.
    let received = || report(&cluster, 2).map_or(0, |r| r.keys_received);
    super::support::eventually(|| received() >= count as u64);
    std::thread::sleep(Duration::from_millis(1200));
    let received = received();
    assert!(
        received >= count as u64 && received <= count as u64 * 12 / 10,
        "the wiped node received {received} objects for {count} missing keys"
    );
}

/// Goal: a replica that missed writes while it was stopped (no hints: N equals the node count,
/// so there is no fallback) holds them after it returns, without any read, and the roots agree.
#[test]
fn replicas_that_missed_writes_converge_after_heal_without_reads() {
    let mut cluster = TestCluster::start(3, 3, 2, 2, FAST_AAE);
    write_keys(&cluster, 200, 3);
    cluster.stop(2);
    let mut client = cluster.client(0);
    for i in 0..300 {
        client
            .put(
                &key(i),
                None,
                b"while-away",
                RequestOptions {
                    w: Some(2),
                    ..Default::default()
                },
            )
            .expect("W=2 put with one replica down");
    }
    assert_eq!(
        cluster
            .client(0)
            .members()
            .expect("members")
            .members
            .iter()
            .map(|m| m.hints_pending)
            .sum::<u64>(),
        0,
        "no fallback, so no hints"
    );
    cluster.restart(2);
    let (equal, last) = wait_for_equal_roots(&cluster, 300);
    assert!(equal, "roots never agreed: {last}");
    for i in (0..300).step_by(7) {
        assert!(
            has_value(&cluster, 2, &key(i), "while-away"),
            "key {i} missing on n3"
        );
    }
}

/// Goal (issue must-hold): a tombstone outlives a replica that was down when it was written
/// (past the grace period, the others still hold it), reaches that replica when it returns,
/// and then disappears from every replica; the key reads as absent throughout.
#[test]
fn a_tombstone_outlives_a_down_replica_then_is_purged_everywhere() {
    let grace = "tombstone_grace_ms = 1000\n";
    let mut cluster = TestCluster::start(
        3,
        3,
        2,
        2,
        &FAST_AAE.replace("[storage]", &format!("{grace}[storage]")),
    );
    let mut client = cluster.client(0);
    let all = RequestOptions {
        w: Some(3),
        ..Default::default()
    };
    let context = client.put(b"doomed", None, b"v", all).expect("put");
    cluster.stop(2);
    let mut client = cluster.client(0);
    client
        .delete(
            b"doomed",
            &context,
            RequestOptions {
                w: Some(2),
                ..Default::default()
            },
        )
        .expect("delete with n3 down");
    std::thread::sleep(Duration::from_millis(2500)); // well past the grace period
    for i in 0..2 {
        let set = cluster.client(i).get_local(b"doomed").expect("local");
        assert!(
            set.is_deleted() && !set.is_empty(),
            "n{} purged the tombstone while n3 was down: {set}",
            i + 1
        );
    }
    cluster.restart(2);
    let start = Instant::now();
    let purged = loop {
        let sets: Vec<_> = (0..3)
            .map(|i| cluster.client(i).get_local(b"doomed").expect("local"))
            .collect();
        // n3 holds the old value until an exchange brings it the tombstone; the others never
        // hold it again.
        assert!(
            sets[..2].iter().all(|s| s.live_values().next().is_none()),
            "the deleted value came back: {sets:?}"
        );
        if sets.iter().all(|s| s.is_empty()) {
            break true;
        }
        if start.elapsed() > CONVERGE {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        purged,
        "the tombstone was never purged everywhere; n1 saw: {:?}",
        report(&cluster, 0).map(|r| (
            r.tombstones_purged,
            r.partitions
                .iter()
                .map(|p| p.peers.iter().map(|x| x.in_sync_since_ms).min())
                .collect::<Vec<_>>()
        ))
    );
    let got = cluster
        .client(0)
        .get(b"doomed", RequestOptions::default())
        .expect("get");
    assert!(
        got.values.is_empty(),
        "the key reads as absent after the purge"
    );
    let counted = super::support::eventually(|| {
        (0..3)
            .filter_map(|i| report(&cluster, i))
            .map(|r| r.tombstones_purged)
            .sum::<u64>()
            >= 1
    });
    assert!(counted, "admin aae counts the purge");
}
