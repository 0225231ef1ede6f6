//! Versioning through a real node: siblings, reconciliation, the same-context case, deletes.
//! Reference: Dynamo §4.4; SPEC §3.

use super::support::{values, TestCluster, TestNode};
use shoal::client::{ClientError, RequestOptions};
use shoal_stages::ServiceError;

const DEFAULT: RequestOptions = RequestOptions::DEFAULT;

/// Goal: blind puts (no context) never overwrite each other; a put with the context of a get
/// that saw them all replaces them all.
#[test]
fn blind_puts_become_siblings_and_a_put_with_their_context_replaces_them() {
    let node = TestNode::start("");
    let mut client = node.client();
    for value in ["a", "b", "c"] {
        client
            .put(b"k", None, value.as_bytes(), DEFAULT)
            .expect("put");
    }
    assert_eq!(values(&mut client, "k"), vec!["a", "b", "c"]);
    let context = client.get(b"k", DEFAULT).expect("get").context;
    client
        .put(b"k", Some(&context), b"merged", DEFAULT)
        .expect("put");
    assert_eq!(values(&mut client, "k"), vec!["merged"]);
}

/// Goal: a put or delete with another key's context is refused `BadContext` and the key
/// keeps its value; a trial's mixed-up contexts silently replaced (or deleted) a value its
/// client never read, since a node's dot counters are shared by its keys.
#[test]
fn another_keys_context_is_refused_and_the_value_stays() {
    let node = TestNode::start("");
    let mut client = node.client();
    client
        .put(b"bob", None, b"bob-100", DEFAULT)
        .expect("put bob");
    let alices = client
        .put(b"alice", None, b"alice-1", DEFAULT)
        .expect("put alice");
    let refused = client.put(b"bob", Some(&alices), b"oops", DEFAULT);
    assert!(
        matches!(
            refused,
            Err(ClientError::Service(ServiceError::BadContext { .. }))
        ),
        "{refused:?}"
    );
    let deleted = client.delete(b"bob", &alices, DEFAULT);
    assert!(
        matches!(
            deleted,
            Err(ClientError::Service(ServiceError::BadContext { .. }))
        ),
        "{deleted:?}"
    );
    assert_eq!(values(&mut client, "bob"), vec!["bob-100"]);
    let own = client.get(b"bob", DEFAULT).expect("get").context;
    client
        .put(b"bob", Some(&own), b"bob-90", DEFAULT)
        .expect("own context");
    assert_eq!(values(&mut client, "bob"), vec!["bob-90"]);
}

/// Goal: two puts through the same coordinator carrying the same older context both survive
/// as siblings (plain server-side vector clocks lose one; riak_kv#746).
#[test]
fn two_puts_with_the_same_context_both_survive() {
    let node = TestNode::start("");
    let (mut first, mut second) = (node.client(), node.client());
    first.put(b"k", None, b"v0", DEFAULT).expect("put");
    let context = first.get(b"k", DEFAULT).expect("get").context;
    first
        .put(b"k", Some(&context), b"x", DEFAULT)
        .expect("put x");
    second
        .put(b"k", Some(&context), b"y", DEFAULT)
        .expect("put y");
    assert_eq!(values(&mut first, "k"), vec!["x", "y"]);
}

/// Goal: a put's returned context covers only what its writer saw plus its own write, so a
/// follow-up put with it keeps a concurrent sibling instead of silently replacing it. The
/// dangerous case is a gap: Bob's write took counter 2 of the coordinator between Alice's
/// writes 1 and 3, so a plain clock {n1:3} would cover Bob's (n1,2).
#[test]
fn put_context_does_not_cover_siblings_the_writer_never_saw() {
    let node = TestNode::start("");
    let (mut alice, mut bob) = (node.client(), node.client());
    let first = alice.put(b"k", None, b"alice-1", DEFAULT).expect("put");
    bob.put(b"k", None, b"bob", DEFAULT).expect("put");
    let second = alice
        .put(b"k", Some(&first), b"alice-2", DEFAULT)
        .expect("put");
    assert_eq!(values(&mut alice, "k"), vec!["alice-2", "bob"]);
    alice
        .put(b"k", Some(&second), b"alice-3", DEFAULT)
        .expect("put");
    let after = values(&mut alice, "k");
    assert!(
        after.contains(&"bob".to_string()),
        "Bob's acknowledged write was lost: {after:?}"
    );
    assert!(after.contains(&"alice-3".to_string()), "{after:?}");
}

/// Goal: a delete hides the key; a later put with the delete's context brings it back.
#[test]
fn delete_hides_the_key_and_a_later_put_revives_it() {
    let node = TestNode::start("");
    let mut client = node.client();
    client.put(b"k", None, b"v1", DEFAULT).expect("put");
    let context = client.get(b"k", DEFAULT).expect("get").context;
    let tombstone_context = client.delete(b"k", &context, DEFAULT).expect("delete");
    let after = client.get(b"k", DEFAULT).expect("get");
    assert!(
        after.values.is_empty(),
        "deleted key still shows {:?}",
        after.values
    );
    let never_written = client.get(b"never-written", DEFAULT).expect("get").context;
    assert_ne!(
        after.context, never_written,
        "a deleted key's context carries the tombstone"
    );
    client
        .put(b"k", Some(&tombstone_context), b"v2", DEFAULT)
        .expect("put");
    assert_eq!(values(&mut client, "k"), vec!["v2"]);
}

/// Goal: a key never written reads as absent with an empty context.
#[test]
fn absent_key_reads_as_no_versions() {
    let node = TestNode::start("");
    let result = node.client().get(b"never", DEFAULT).expect("get");
    assert!(result.values.is_empty());
}

/// Goal: in a 3-node cluster, a blind put that would leave a key's versions larger than one
/// frame carries is refused with `ObjectTooLarge` whichever node takes it, and stores nothing
/// anywhere: every node still reads the one value (R = 3, so all three answer), and a put with
/// the read's context replaces it. Before the bound, two blind puts of 600 KiB left siblings
/// no replica's answer could carry: reads lost that replica and its link to the coordinator.
#[test]
fn a_blind_put_past_what_a_frame_carries_is_refused_on_every_node() {
    let cluster = TestCluster::start(3, 3, 2, 2, "");
    let first = vec![1u8; 600 << 10];
    cluster
        .client(0)
        .put(b"big", None, &first, DEFAULT)
        .expect("one value fits");
    for i in 0..3 {
        let error = cluster
            .client(i)
            .put(b"big", None, &vec![2u8; 600 << 10], DEFAULT)
            .expect_err("two such versions do not fit a frame");
        assert!(
            matches!(
                error,
                ClientError::Service(ServiceError::ObjectTooLarge { versions: 2, .. })
            ),
            "node {i}: {error}"
        );
    }
    let all = RequestOptions {
        r: Some(3),
        ..DEFAULT
    };
    for i in 0..3 {
        let read = cluster
            .client(i)
            .get(b"big", all)
            .expect("every node reads it");
        assert_eq!(read.values, vec![first.clone()], "node {i}: nothing stored");
    }
    let context = cluster.client(1).get(b"big", all).expect("get").context;
    let second = vec![3u8; 600 << 10];
    cluster
        .client(1)
        .put(b"big", Some(&context), &second, DEFAULT)
        .expect("a reconciling put fits");
    for i in 0..3 {
        let read = cluster.client(i).get(b"big", all).expect("get");
        assert_eq!(read.values, vec![second.clone()], "node {i}");
    }
}

/// Goal: when replicas merge siblings each took alone (concurrent blind puts, each within the
/// bound where its coordinator checked it) into versions larger than a client's frame, every
/// node still reads them whole, and a put with that read's context replaces them. Method: A
/// (600 KiB) is written while n3 is stopped, then B (600 KiB) through n3 while n1 is stopped,
/// for a key whose preference list n3 leads once n1 is out: n3 coordinates with nothing
/// stored, and n2 merges B into A. A trial's concurrent puts made such a key: no get, repair
/// or transfer could carry it (the answers were refused as over the frame limit).
#[test]
fn siblings_merged_past_a_frame_are_read_whole_and_reconciled() {
    let mut cluster = TestCluster::start(3, 3, 2, 2, "");
    let membership = cluster.client(0).ring().expect("ring");
    let key = (0..1000)
        .map(|i| format!("big{i}"))
        .find(|key| {
            let list = membership.ring().preference_list_for_key(key.as_bytes(), 3);
            let order: Vec<&str> = list.primaries.iter().map(|id| id.as_str()).collect();
            order == ["n1", "n3", "n2"]
                || order == ["n3", "n1", "n2"]
                || order == ["n3", "n2", "n1"]
        })
        .expect("a key that n3 coordinates while n1 is out");
    let (a, b) = (vec![1u8; 600 << 10], vec![2u8; 600 << 10]);
    cluster.stop(2);
    cluster
        .client(0)
        .put(key.as_bytes(), None, &a, DEFAULT)
        .expect("A on n1 and n2");
    cluster.restart(2);
    cluster.stop(0);
    // Once n3 holds n2 up (a read of another, absent key with two answers: reading this one
    // would repair A onto n3), B goes through n3 once: a retried put that had reached n2
    // would be refused as too large.
    let two = RequestOptions {
        r: Some(2),
        ..DEFAULT
    };
    assert!(
        super::support::eventually(|| cluster.client(2).get(b"absent", two).is_ok()),
        "n3 never read through n2"
    );
    cluster
        .client(2)
        .put(key.as_bytes(), None, &b, DEFAULT)
        .expect("B through n3");
    cluster.restart(0);
    let all = RequestOptions {
        r: Some(3),
        ..DEFAULT
    };
    let mut read = None;
    assert!(
        super::support::eventually(|| {
            read = cluster.client(0).get(key.as_bytes(), all).ok();
            read.as_ref().is_some_and(|r| r.values.len() == 2)
        }),
        "A and B read whole through n1: {:?}",
        read.as_ref().map(|r| r.values.len())
    );
    let context = read.expect("read").context;
    let c = vec![3u8; 600 << 10];
    cluster
        .client(1)
        .put(key.as_bytes(), Some(&context), &c, DEFAULT)
        .expect("the reconciling put");
    for i in 0..3 {
        // Every node answers R = 3 once its detector holds the restarted n1 up again.
        assert!(
            super::support::eventually(|| cluster
                .client(i)
                .get(key.as_bytes(), all)
                .is_ok_and(|read| read.values == vec![c.clone()])),
            "node {i} does not read C alone"
        );
    }
}
