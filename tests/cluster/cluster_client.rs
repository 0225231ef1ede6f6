//! The partition-aware client against real nodes: what clients sharing one view of which
//! nodes failed (`NodeHealth`, the load tool's workers) do when a node comes back.

use super::support::{eventually, TestCluster, CLIENT_TIMEOUT};
use shoal::client::RequestOptions;
use shoal::cluster_client::{ClusterClient, NodeHealth};

/// Goal: after a node restarts, clients that share which nodes failed dial it again rather
/// than fail on their connections to the stopped process one by one. Each such failure held
/// the node off longer (2 s, doubled, up to 16 s): a trial's 8 workers left a restarted node
/// without requests for 110 s. Here one client's failure is the only one: the three others,
/// with connections to the stopped process, have their gets served by the new one (without
/// the fix two of them failed in turn first).
#[test]
fn clients_sharing_health_dial_a_restarted_node_instead_of_failing_on_old_connections() {
    let mut cluster = TestCluster::start(3, 3, 2, 2, "");
    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let health = NodeHealth::default();
    let mut clients: Vec<ClusterClient> = (0..4)
        .map(|_| {
            let mut client = ClusterClient::connect(&addrs, 3, CLIENT_TIMEOUT).expect("connect");
            client.share_health(health.clone());
            client
        })
        .collect();
    // A key n3 coordinates first (N=3: every node is on every list).
    let membership = clients[0].membership();
    let key = (0..)
        .map(|i| format!("restart-{i}").into_bytes())
        .find(|k| membership.ring().preference_list_for_key(k, 3).primaries[0].as_str() == "n3")
        .expect("a key n3 leads");
    let get = RequestOptions::default();
    for client in &mut clients {
        client.get(&key, get).expect("a get through n3");
    }

    let failures_before = health.epoch();
    cluster.stop(2);
    cluster.restart(2);
    // One client finds n3's old process gone (its get moves on to n1).
    clients[0].get(&key, get).expect("the get moves on");
    let served_by_n3 = || {
        let stats = cluster.client(2).stats().expect("stats");
        stats
            .operations
            .iter()
            .find(|o| o.operation == "get")
            .map_or(0, |o| o.count)
    };
    // The others, each with a connection to the stopped process, keep reading.
    let mut others = clients.split_off(1);
    assert!(
        eventually(|| {
            for client in &mut others {
                client.get(&key, get).expect("a get");
            }
            served_by_n3() >= 3
        }),
        "the restarted n3 served {} gets",
        served_by_n3()
    );
    assert_eq!(
        health.epoch() - failures_before,
        1,
        "only the first client found the old process gone"
    );
}
