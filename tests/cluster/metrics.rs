//! `/metrics` on a real node: scraped over HTTP and read back with a Prometheus text parser
//! (prometheus-parse), as a Prometheus server would.

use super::support::{TestCluster, TestNode, CLIENT_TIMEOUT};
use prometheus_parse::{Sample, Scrape, Value};
use shoal::client::RequestOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// `GET path` over HTTP/1.0: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

fn sample<'a>(scrape: &'a Scrape, metric: &str, label: (&str, &str)) -> &'a Sample {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get(label.0) == Some(label.1))
        .unwrap_or_else(|| panic!("no sample {metric}{{{}={:?}}}", label.0, label.1))
}

/// A cluster of `nodes` (N, R, W) whose first node serves metrics, and that address.
fn cluster_with_metrics(nodes: usize, n: usize, r: usize, w: usize) -> (TestCluster, SocketAddr) {
    let cluster = TestCluster::start(nodes, n, r, w, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let addr = cluster.nodes[0]
        .as_ref()
        .and_then(|n| n.metrics_addr())
        .expect("metrics are served");
    (cluster, addr)
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("not a number: {other:?}"),
    }
}

/// `GET /metrics` from `addr`, which must answer 200, parsed as Prometheus text; and its body.
fn scrape(addr: SocketAddr) -> (Scrape, String) {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let scrape =
        Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text");
    (scrape, body)
}

/// Goal: with `[metrics] listen` set, `GET /metrics` answers in the Prometheus text format, and
/// what it says follows the traffic: every stage's queue depth and capacity, counters that
/// count the requests just made, the put latency histogram holding them, the controller's
/// target, each background stage's rate, that storage takes writes (and `/health` says ok);
/// another path is a 404 and the node keeps serving.
#[test]
fn metrics_are_scraped_over_http_and_parse_as_prometheus_text() {
    let node = TestNode::start("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let addr = node
        .node
        .as_ref()
        .and_then(|n| n.metrics_addr())
        .expect("metrics are served");
    let mut client = node.client();
    for i in 0..5 {
        let key = format!("k{i}");
        client
            .put(key.as_bytes(), None, b"v", RequestOptions::default())
            .expect("put");
    }

    let (scrape, _) = scrape(addr);

    let capacity = sample(&scrape, "shoal_stage_queue_capacity", ("stage", "storage"));
    assert!(number(&capacity.value) > 0.0);
    sample(&scrape, "shoal_stage_queue_depth", ("stage", "coordinate"));
    let processed = sample(&scrape, "shoal_stage_processed_total", ("stage", "storage"));
    assert!(number(&processed.value) >= 5.0, "{processed:?}");
    let puts = sample(
        &scrape,
        "shoal_request_duration_seconds",
        ("operation", "put"),
    );
    match &puts.value {
        Value::Histogram(buckets) => {
            let all = buckets.last().expect("buckets");
            assert!(
                all.less_than.is_infinite() && all.count >= 5.0,
                "{buckets:?}"
            );
            // Cumulative, as Prometheus reads them: never decreasing, never above the total.
            let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
            assert!(
                counts.windows(2).all(|w| w[0] <= w[1]),
                "buckets not cumulative: {buckets:?}"
            );
        }
        other => panic!("the put latency is not a histogram: {other:?}"),
    }
    let count = scrape
        .samples
        .iter()
        .find(|s| s.metric == "shoal_request_duration_seconds_count")
        .map(|s| number(&s.value));
    assert!(count.is_none_or(|c| c >= 5.0), "count {count:?}");
    let target = scrape
        .samples
        .iter()
        .find(|s| s.metric == "shoal_controller_target_seconds")
        .expect("the controller's target");
    assert!(number(&target.value) > 0.0);
    sample(
        &scrape,
        "shoal_background_rate_limit_per_second",
        ("stage", "handoff"),
    );

    let writable = scrape
        .samples
        .iter()
        .find(|s| s.metric == "shoal_storage_writable")
        .expect("whether storage takes writes");
    assert_eq!(number(&writable.value), 1.0);
    let (status, body) = http_get(addr, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let (status, _) = http_get(addr, "/other");
    assert_eq!(status, 404);
    client
        .get(b"k1", RequestOptions::default())
        .expect("the node still serves");
}

/// Goal: a node whose `/metrics` address is taken fails to start with an error that names
/// that address, and stops what it had already started (its workers hold the data directory's
/// database open): the same data directory then starts again in the same process.
#[test]
fn a_node_that_cannot_bind_its_metrics_address_stops_what_it_started() {
    use super::support::{config, config_text};
    use shoal::logging;
    use shoal::node::Node;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let taken_addr = taken.local_addr().expect("its address");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        dir.path(),
        &format!("[metrics]\nlisten = \"{taken_addr}\"\n"),
    );
    let err = match Node::start(&config(&text), &logging::discard()) {
        Ok(_) => panic!("a node started on a taken metrics address"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("metrics address {taken_addr}")),
        "the error names the metrics address: {err}"
    );

    let text = config_text(dir.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let node = Node::start(&config(&text), &logging::discard())
        .expect("the same data directory starts again");
    let mut client = shoal::client::Client::connect(&node.local_addr().to_string(), CLIENT_TIMEOUT)
        .expect("connect");
    let put = client.put(b"k", None, b"v", RequestOptions::default());
    node.shutdown();
    put.expect("put on the restarted node");
}

/// Goal: `shoal_hints_held` has a series for every other member, 0 while none are held (a
/// trial's alert read the vanished series as "no data", not "all delivered"), and none for
/// the node itself.
#[test]
fn hints_held_reads_zero_for_every_other_member() {
    let (_cluster, addr) = cluster_with_metrics(2, 2, 1, 1);
    let (scrape, body) = scrape(addr);
    let held = sample(&scrape, "shoal_hints_held", ("target", "n2"));
    assert_eq!(number(&held.value), 0.0);
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "shoal_hints_held" && s.labels.get("target") == Some("n1")),
        "{body}"
    );
}

/// Goal: the metrics carry the membership version this node has and the partitions it owns
/// and stores (two nodes with N=2: it stores every partition and owns some, not all).
#[test]
fn the_membership_version_and_the_partitions_held_are_scraped() {
    let (cluster, addr) = cluster_with_metrics(2, 2, 1, 1);
    let membership = cluster.client(0).ring().expect("ring");
    let q = f64::from(membership.ring().partition_count());
    let (scrape, body) = scrape(addr);
    let version = scrape
        .samples
        .iter()
        .find(|s| s.metric == "shoal_membership_version")
        .unwrap_or_else(|| panic!("no shoal_membership_version in {body}"));
    assert_eq!(number(&version.value), membership.version as f64);
    let replica = number(&sample(&scrape, "shoal_partitions", ("role", "replica")).value);
    let owner = number(&sample(&scrape, "shoal_partitions", ("role", "owner")).value);
    assert_eq!(replica, q, "N=2 on two nodes: every partition");
    assert!(owner > 0.0 && owner < q, "{owner} of {q}");
}

/// Goal: `shoal_peer_up` has a series for every other member: 1 while this node's failure
/// detector holds it up, 0 once it holds it down (a stopped peer), 1 again once it is back.
#[test]
fn peer_up_follows_the_failure_detector() {
    let (mut cluster, addr) = cluster_with_metrics(3, 3, 2, 2);
    let up = |peer: &str| {
        let (scrape, _) = scrape(addr);
        number(&sample(&scrape, "shoal_peer_up", ("peer", peer)).value)
    };
    assert_eq!((up("n2"), up("n3")), (1.0, 1.0));
    cluster.stop(2);
    // Gossip's links to it fail, and the detector holds it down.
    assert!(
        super::support::eventually(|| up("n3") == 0.0),
        "n3 still up"
    );
    assert_eq!(up("n2"), 1.0);
    cluster.restart(2);
    assert!(
        super::support::eventually(|| up("n3") == 1.0),
        "n3 not back"
    );
}

/// Goal: the copies a commit still needs show in the metrics, by this node's role, and so do
/// those it parked: a join committed at an address nobody listens at leaves copies this node
/// must send that never finish, and they park (a trial's stuck copies showed only as a
/// background backlog).
#[test]
fn copies_pending_and_parked_are_scraped() {
    use shoal_stages::membership::Member;
    use shoal_stages::wire::{MembershipChange, PlanRequest};
    let (cluster, addr) = cluster_with_metrics(3, 3, 2, 2);
    let gauge = |metric: &str, label: Option<(&str, &str)>| {
        let (scrape, body) = scrape(addr);
        match label {
            Some(label) => number(&sample(&scrape, metric, label).value),
            None => scrape
                .samples
                .iter()
                .find(|s| s.metric == metric)
                .map(|s| number(&s.value))
                .unwrap_or_else(|| panic!("no {metric} in {body}")),
        }
    };
    assert_eq!(
        gauge("shoal_transfers_pending", Some(("role", "sending"))),
        0.0
    );
    assert_eq!(gauge("shoal_transfers_parked", None), 0.0);
    let ghost = Member {
        id: shoal_stages::NodeId::new("n9"),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        weight: 1,
        zone: None,
    };
    // Data in the partitions: an empty partition's copy is done without its receiver.
    let mut client = cluster.client(0);
    for i in 0..400 {
        client
            .put(
                format!("k{i}").as_bytes(),
                None,
                b"v",
                RequestOptions::default(),
            )
            .expect("put");
    }
    // n1, node 0, is the claimant: it commits.
    for (change, commit) in [(Some(MembershipChange::Join(ghost)), false), (None, true)] {
        client
            .plan(PlanRequest { change, commit })
            .expect("staged, then committed");
    }
    assert!(
        super::support::eventually(|| {
            gauge("shoal_transfers_pending", Some(("role", "sending"))) > 0.0
                && gauge("shoal_transfers_parked", None) > 0.0
        }),
        "no copy pending and parked on n1: sending {}, parked {}",
        gauge("shoal_transfers_pending", Some(("role", "sending"))),
        gauge("shoal_transfers_parked", None)
    );
    assert_eq!(
        gauge("shoal_transfers_pending", Some(("role", "receiving"))),
        0.0
    );
}

/// The value of `metric` with `labels` in a scrape of `addr`, or 0 when it has no such series.
fn counted(addr: SocketAddr, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let (scrape, _) = scrape(addr);
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| number(&s.value))
}

/// Goal: a client request answered with an error is counted by operation and kind
/// (`shoal_request_errors_total`), and a read that finds a stale replica counts the repair
/// write it issues (`shoal_read_repair_writes_total`): n3 misses a put while stopped, and a
/// get with R = 3 after its restart repairs it.
#[test]
fn failed_requests_and_read_repairs_are_counted() {
    let (mut cluster, addr) = cluster_with_metrics(3, 3, 2, 2);
    let options = RequestOptions::default();
    let errors = |kind| {
        counted(
            addr,
            "shoal_request_errors_total",
            &[("operation", "put"), ("kind", kind)],
        )
    };
    assert_eq!(errors("ObjectTooLarge"), 0.0);
    let big = vec![1u8; 600 << 10];
    cluster
        .client(0)
        .put(b"big", None, &big, options)
        .expect("one fits");
    cluster
        .client(0)
        .put(b"big", None, &big, options)
        .expect_err("two do not fit a frame");
    assert_eq!(errors("ObjectTooLarge"), 1.0);

    let repairs = || counted(addr, "shoal_read_repair_writes_total", &[]);
    let before = repairs();
    cluster.stop(2);
    cluster
        .client(0)
        .put(b"r", None, b"v", options)
        .expect("W=2 of n1, n2");
    cluster.restart(2);
    let all = RequestOptions {
        r: Some(3),
        ..options
    };
    assert!(
        super::support::eventually(|| {
            // Until n1 holds n3 up again the read fails its R; once it answers, it is stale.
            let _ = cluster.client(0).get(b"r", all);
            repairs() > before
        }),
        "no repair write counted"
    );
}

/// Goal: hints their target acknowledged are counted (`shoal_hints_handed_off_total`): n4 is
/// stopped while keys it replicates are written, n1 keeps some of them as hints, and once n4
/// is back they are handed off and counted, as many as n1 held.
#[test]
fn hints_handed_off_are_counted() {
    let (mut cluster, addr) = cluster_with_metrics(4, 3, 2, 2);
    let options = RequestOptions::default();
    cluster.stop(3);
    for i in 0..64 {
        let key = format!("h{i}");
        cluster
            .client(0)
            .put(key.as_bytes(), None, b"v", options)
            .expect("W=2 with a fallback");
    }
    let held = super::support::hints_on(&cluster, 0, "n4");
    assert!(held > 0, "n1 holds no hint for n4: the test proves nothing");
    assert_eq!(counted(addr, "shoal_hints_handed_off_total", &[]), 0.0);
    cluster.restart(3);
    assert!(
        super::support::eventually(|| super::support::hints_on(&cluster, 0, "n4") == 0),
        "n1's hints for n4 were not handed off"
    );
    assert_eq!(
        counted(addr, "shoal_hints_handed_off_total", &[]),
        held as f64
    );
}

/// Goal: open connections are counted by kind: the clients connected now, and the links
/// between this node and its peers; a closed client is no longer counted.
#[test]
fn open_connections_are_counted_by_kind() {
    let (cluster, addr) = cluster_with_metrics(3, 3, 2, 2);
    let connections = |kind| counted(addr, "shoal_connections", &[("kind", kind)]);
    let mut clients: Vec<_> = (0..3).map(|_| cluster.client(0)).collect();
    for client in &mut clients {
        client
            .members()
            .expect("answered, so the node has the connection");
    }
    assert!(
        super::support::eventually(|| connections("client") == 3.0 && connections("peer") >= 2.0),
        "clients {}, peers {}",
        connections("client"),
        connections("peer")
    );
    drop(clients);
    assert!(
        super::support::eventually(|| connections("client") == 0.0),
        "clients {} after they closed",
        connections("client")
    );
}
