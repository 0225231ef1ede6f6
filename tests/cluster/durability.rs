//! Durability: what a node acknowledged is on disk. Reference: Dynamo §6.1; SPEC §7.

use super::support::{
    client_of, config_text, values, write_config, NodeProcess, ProcessCluster, TestCluster,
    TestNode, CLIENT_TIMEOUT,
};
use shoal::client::RequestOptions;
use shoal_stages::storage::actor_node;
use shoal_stages::NodeId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Goal: with sync = "always", every acknowledged put survives kill -9 of the node process.
#[test]
fn acknowledged_puts_survive_kill_9_with_sync_always() {
    acknowledged_puts_survive_kill_9("always");
}

/// Goal: with sync = "none" too, every acknowledged put survives kill -9 (a process crash,
/// not a power loss): a write reaches the OS's buffers before it is acknowledged, whatever the
/// engine buffers in the process. Reference: SPEC §7, `[storage] sync`.
#[test]
fn acknowledged_puts_survive_kill_9_with_sync_none() {
    acknowledged_puts_survive_kill_9("none");
}

/// Method: a real `shoal node` process with `sync`; two client threads put distinct keys as
/// fast as they can; SIGKILL arrives while they are still writing; restart on the same data
/// directory; every put that was acknowledged before the kill must read back (lost = acked −
/// final).
fn acknowledged_puts_survive_kill_9(sync: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), &format!("[storage]\nsync = \"{sync}\"\n")),
    );
    let node = NodeProcess::start(&path);
    let acked_count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let mut client = node.client();
            let acked_count = Arc::clone(&acked_count);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                // Bounded: the kill comes long before; the bound only guards a broken kill.
                for i in 0..100_000 {
                    let key = format!("w{writer}-{i}");
                    match client.put(
                        key.as_bytes(),
                        None,
                        key.as_bytes(),
                        RequestOptions::default(),
                    ) {
                        Ok(_) => {
                            acked.push(key);
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break, // the node is gone
                    }
                }
                acked
            })
        })
        .collect();
    let waited = Instant::now();
    while acked_count.load(Ordering::Relaxed) < 300 && waited.elapsed() < CLIENT_TIMEOUT {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill(); // while both writers are mid-stream
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        acked.len() >= 300,
        "writers made progress before the kill ({})",
        acked.len()
    );

    let restarted = NodeProcess::start(&path);
    let mut client = restarted.client();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|key| values(&mut client, key) != vec![key.to_string()])
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} of {} acknowledged puts: {lost:?}",
        lost.len(),
        acked.len()
    );
}

/// Goal: a graceful shutdown flushes storage whatever the sync mode, so a restart on the
/// same directory sees every write.
#[test]
fn graceful_shutdown_flushes_writes_with_sync_none() {
    let mut node = TestNode::start("[storage]\nsync = \"none\"\n");
    let mut client = node.client();
    for i in 0..50 {
        let key = format!("k{i}");
        client
            .put(key.as_bytes(), None, b"v", RequestOptions::default())
            .expect("put");
    }
    drop(client);
    if let Some(running) = node.node.take() {
        running.shutdown();
    }
    let config = super::support::config(&config_text(
        node.dir.path(),
        "[storage]\nsync = \"none\"\n",
    ));
    let restarted = shoal::node::Node::start(&config, &shoal::logging::discard()).expect("restart");
    let mut client = shoal::client::Client::connect(
        &restarted.local_addr().to_string(),
        super::support::CLIENT_TIMEOUT,
    )
    .expect("connect");
    for i in 0..50 {
        assert_eq!(values(&mut client, &format!("k{i}")), vec!["v"]);
    }
    restarted.shutdown();
}

/// Goal: a node refuses a data directory that belongs to another node, with an error naming both.
#[test]
fn node_refuses_another_nodes_data_directory() {
    let mut node = TestNode::start("");
    let data = node.dir.path().join("data");
    let text = format!(
        "[node]\nid = \"n2\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
        data.display().to_string()
    );
    if let Some(running) = node.node.take() {
        running.shutdown(); // releases the directory, which the TempDir keeps until the end
    }
    let error =
        shoal::node::Node::start(&super::support::config(&text), &shoal::logging::discard())
            .err()
            .expect("must refuse")
            .to_string();
    assert!(error.contains("n1") && error.contains("n2"), "{error}");
}

/// Goal: the reply of a put says how many durable copies it had (Dynamo §6.1), for the
/// cluster's default and for each per-request override, on nodes that never flush on their
/// own (`sync = "none"`): `all` counts every acknowledgement (W = 2), `one` exactly the
/// coordinator's, `none` zero; a delete says the same. Method: 3 real nodes, N=3 R=2 W=2,
/// `durable_writes = "one"`.
#[test]
fn put_reply_counts_the_durable_copies_each_mode_asked_for() {
    use super::support::TestCluster;
    use shoal::client::Durability;
    let cluster = TestCluster::start_with(
        3,
        3,
        2,
        2,
        "durable_writes = \"one\"\n",
        "[storage]\nsync = \"none\"\n",
    );
    let mut client = cluster.client(0);
    let mut copies = |key: &str, durable: Option<Durability>| {
        let options = RequestOptions {
            durable,
            ..RequestOptions::default()
        };
        client
            .put_full(key.as_bytes(), None, b"v", options)
            .expect("put")
            .durable_copies
    };
    assert_eq!(copies("default", None), 1, "the cluster default is one");
    assert_eq!(copies("all", Some(Durability::All)), 2);
    assert_eq!(copies("one", Some(Durability::One)), 1);
    assert_eq!(copies("none", Some(Durability::None)), 0);

    let read = client
        .get(b"all", RequestOptions::default())
        .expect("read back");
    let options = RequestOptions {
        durable: Some(Durability::All),
        ..RequestOptions::default()
    };
    let deleted = client
        .delete_full(b"all", &read.context, options)
        .expect("delete");
    assert_eq!(deleted.durable_copies, 2);
}

/// Goal: a node's dots name an actor that a graceful restart keeps and a kill -9 replaces: a
/// crash may have taken writes that other replicas hold, and a new dot of the old actor would
/// make every context the node hands out cover them. The write from before the kill is still
/// read (kill -9 loses nothing acknowledged). Reference: `Store::actor`.
#[test]
fn a_graceful_restart_keeps_the_dot_actor_and_a_kill_9_names_a_new_one() {
    fn actor_of(mut client: shoal::client::Client, key: &[u8]) -> NodeId {
        let set = client.get_local(key).expect("local read");
        assert_eq!(set.len(), 1, "one version of {key:?}");
        set.versions()[0].dot.node.clone()
    }
    let put = |mut client: shoal::client::Client, key: &[u8]| {
        client
            .put(key, None, b"v", RequestOptions::default())
            .expect("put");
    };
    let mut cluster = TestCluster::start(1, 1, 1, 1, "");
    put(cluster.client(0), b"a");
    let first = actor_of(cluster.client(0), b"a");
    assert_eq!(actor_node(&first), "n1");
    cluster.stop(0);
    cluster.restart(0);
    put(cluster.client(0), b"b");
    assert_eq!(
        actor_of(cluster.client(0), b"b"),
        first,
        "kept over a graceful restart"
    );

    let mut processes = ProcessCluster::start(1, 1, 1, 1);
    put(client_of(&processes.addrs[0]), b"a");
    let first = actor_of(client_of(&processes.addrs[0]), b"a");
    processes.kill(0);
    processes.restart(0);
    put(client_of(&processes.addrs[0]), b"b");
    let second = actor_of(client_of(&processes.addrs[0]), b"b");
    assert_ne!(second, first, "a kill -9 ends the actor");
    assert_eq!(actor_node(&second), "n1");
    assert_eq!(
        actor_of(client_of(&processes.addrs[0]), b"a"),
        first,
        "the write survived the kill"
    );
}
