//! `[security] client_token` on real nodes: every client and admin request needs it (native,
//! the Redis door, `/metrics`); a wrong or missing one is refused and the node keeps serving
//! the clients that sent it; peers are not affected.

use super::metrics::http_get_with;
use super::support::{TestCluster, TestNode, CLIENT_TIMEOUT};
use shoal::client::{Client, ClientError, RequestOptions};
use shoal_stages::ServiceError;
use std::process::Command;

const TOKEN: &str = "test-client-token-0123456789";

fn unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Service(ServiceError::Unauthorized { .. }))
    )
}

/// Goal: with a client token set, a client that sent none is refused `Unauthorized` on data
/// and admin requests alike; a wrong token is refused and its connection closed; a client
/// with the right token is served throughout; `/metrics` wants `Authorization: Bearer`; the
/// Redis door wants `AUTH`.
#[test]
fn a_missing_or_wrong_client_token_is_refused_and_the_right_one_served() {
    let node = TestNode::start(&format!(
        "[security]\nclient_token = \"{TOKEN}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [redis]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let running = node.node.as_ref().expect("running");
    let mut good = Client::connect(&node.addr, CLIENT_TIMEOUT).expect("connect");
    good.auth(TOKEN).expect("the right token");
    good.put(b"k", None, b"v", RequestOptions::default())
        .expect("served with the token");

    let mut anonymous = Client::connect(&node.addr, CLIENT_TIMEOUT).expect("connect");
    assert!(unauthorized(anonymous.get(b"k", RequestOptions::default())));
    assert!(unauthorized(anonymous.put(
        b"k",
        None,
        b"x",
        RequestOptions::default()
    )));
    assert!(unauthorized(anonymous.stats()), "admin requests too");

    let mut wrong = Client::connect(&node.addr, CLIENT_TIMEOUT).expect("connect");
    assert!(unauthorized(wrong.auth("not-the-token-at-all")));
    assert!(
        wrong.get(b"k", RequestOptions::default()).is_err(),
        "a wrong token closes the connection"
    );

    let read = good
        .get(b"k", RequestOptions::default())
        .expect("the authorized client is still served");
    assert_eq!(read.values, vec![b"v".to_vec()]);
    good.stats().expect("admin with the token");

    let metrics = running.metrics_addr().expect("metrics");
    assert_eq!(http_get_with(metrics, "/metrics", "").0, 401);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(http_get_with(metrics, "/metrics", &bearer).0, 200);

    if Command::new("redis-cli").arg("--version").output().is_ok() {
        let port = running.redis_addr().expect("door").port().to_string();
        let cli = |args: &[&str]| {
            let output = Command::new("redis-cli")
                .args(["-p", &port, "--no-auth-warning"])
                .args(args)
                .output()
                .expect("redis-cli");
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            format!("{stderr}{}", stdout.trim())
        };
        assert!(cli(&["get", "k"]).contains("NOAUTH"));
        let refused = cli(&["-a", "wrong-token-here", "get", "k"]);
        assert!(
            refused.contains("WRONGPASS") && refused.contains("NOAUTH"),
            "{refused}"
        );
        assert_eq!(cli(&["-a", TOKEN, "get", "k"]), "v");
    }
}

/// Goal: the client token guards clients only: in a 3-node cluster with a token, a put with
/// W = 3 (every replica) succeeds, so peers still replicate to each other.
#[test]
fn peers_replicate_in_a_cluster_with_a_client_token() {
    let cluster = TestCluster::start(
        3,
        3,
        2,
        2,
        &format!("[security]\nclient_token = \"{TOKEN}\"\n"),
    );
    let mut client = Client::connect(&cluster.addr(0), CLIENT_TIMEOUT).expect("connect");
    client.auth(TOKEN).expect("the token");
    let all = RequestOptions {
        w: Some(3),
        r: Some(3),
        ..RequestOptions::default()
    };
    client
        .put(b"replicated", None, b"v", all)
        .expect("every replica acknowledged");
    let read = client
        .get(b"replicated", all)
        .expect("every replica answered");
    assert_eq!(read.values, vec![b"v".to_vec()]);
}
