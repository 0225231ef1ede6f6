//! Bad input gets a typed error and the node keeps serving everyone else (TESTING.md §4).

use super::support::{replies_to_a_client_that_never_reads, values, TestNode, SLOW_READER_LIMITS};
use shoal::client::{ClientError, RequestOptions};
use shoal_stages::wire::{encode_frame, Bytes, Message, PutRequest};
use shoal_stages::ServiceError;
use std::time::Duration;

const DEFAULT: RequestOptions = RequestOptions::DEFAULT;

/// Asserts `error` is the node's refusal of a frame over its 100,000-byte limit.
fn assert_refused_over_the_frame_limit(error: &ClientError) {
    assert!(
        matches!(
            error,
            ClientError::Refused(ServiceError::FrameTooLarge { max: 100_000, .. })
        ),
        "{error}"
    );
}

/// Proves the node still serves a fresh connection.
pub fn assert_still_serving(node: &TestNode) {
    let mut client = node.client();
    client
        .put(b"alive", None, b"yes", DEFAULT)
        .expect("node still serves puts");
    assert!(values(&mut client, "alive").contains(&"yes".to_string()));
}

/// Goal: a frame over the node's frame limit is refused with the node's reason (a refusal,
/// not a mismatched reply), and the partition-aware client does not reuse the connection the
/// node closed: its next request goes through.
#[test]
fn a_frame_over_the_limit_is_refused_and_the_cluster_client_goes_on() {
    let node = TestNode::start("[limits]\nmax_value_bytes = 1000\nmax_frame_bytes = 100000\n");
    let seeds = vec![node.addr.clone()];
    let mut client =
        shoal::cluster_client::ClusterClient::connect(&seeds, 1, Duration::from_secs(5))
            .expect("connect");
    let error = client
        .put(b"huge", None, &[7u8; 200_000], DEFAULT)
        .expect_err("too large a frame");
    assert_refused_over_the_frame_limit(&error);
    client
        .put(b"small", None, b"v", DEFAULT)
        .expect("the next request goes through");
}

/// Goal: a frame far over the limit, still being sent when the node refuses it, reaches the
/// client as the node's refusal followed by a clean end of stream, not a reset: the node
/// reads and throws away the rest before it closes (closing with input unread resets the
/// stream, which fails the client's send before it reads why). Past the node's bound for
/// that (64 MiB) it does reset, and the client still reports the refusal that came first.
/// Method: an 8 MB frame sent raw (no client fallback), then a 100 MB put.
#[test]
fn a_frame_still_being_sent_when_refused_gets_the_refusal_not_a_reset() {
    let node = TestNode::start("[limits]\nmax_value_bytes = 1000\nmax_frame_bytes = 100000\n");
    let mut client = node.client();
    client
        .send_raw(&encode_frame(1, 9, &vec![7u8; 8_000_000]))
        .expect("the node reads the whole frame");
    let (request_id, reply) = client.receive().expect("the refusal");
    assert_eq!(request_id, 0);
    assert!(
        matches!(
            reply,
            Message::Error(ServiceError::FrameTooLarge { max: 100_000, .. })
        ),
        "{reply}"
    );
    let end = client.receive().expect_err("the node closed");
    assert!(
        matches!(end, ClientError::Closed { .. }),
        "a clean close: {end}"
    );

    let error = node
        .client()
        .put(b"huge", None, &vec![7u8; 100_000_000], DEFAULT)
        .expect_err("too large a frame");
    assert_refused_over_the_frame_limit(&error);
    assert_still_serving(&node);
}

/// Goal: a value over the limit is refused with ValueTooLarge and nothing is stored.
#[test]
fn value_over_the_limit_is_refused_and_nothing_is_stored() {
    let node = TestNode::start("[limits]\nmax_value_bytes = 1000\nmax_frame_bytes = 100000\n");
    let mut client = node.client();
    let error = client
        .put(b"big", None, &[7u8; 1001], DEFAULT)
        .expect_err("too large");
    assert!(
        matches!(
            error,
            ClientError::Service(ServiceError::ValueTooLarge {
                size: 1001,
                max: 1000
            })
        ),
        "{error}"
    );
    assert!(values(&mut client, "big").is_empty(), "nothing stored");
    client
        .put(b"ok", None, &[7u8; 1000], DEFAULT)
        .expect("at the limit is fine");
}

/// Goal: a frame header claiming 4 GiB gets FrameTooLarge and its connection is closed;
/// other connections are unaffected.
#[test]
fn oversized_frame_header_gets_frame_too_large_and_the_connection_closes() {
    let node = TestNode::start("");
    let mut client = node.client();
    client.send_raw(&u32::MAX.to_be_bytes()).expect("send");
    let (_, reply) = client.receive().expect("an error reply before the close");
    assert!(
        matches!(reply, Message::Error(ServiceError::FrameTooLarge { declared, .. }) if declared == u32::MAX as u64),
        "{reply}"
    );
    assert!(matches!(
        client.receive(),
        Err(ClientError::Closed { .. }) | Err(ClientError::Io(_))
    ));
    assert_still_serving(&node);
}

/// Goal: a truncated frame followed by a hang-up costs the node nothing.
#[test]
fn truncated_frame_then_hang_up_leaves_the_node_serving() {
    let node = TestNode::start("");
    let mut client = node.client();
    let frame = Message::Stats.encode(1).expect("encode");
    client.send_raw(&frame[..frame.len() / 2]).expect("send");
    drop(client);
    assert_still_serving(&node);
}

/// Goal: an unknown message type gets UnknownMessageType naming the kind, on a connection
/// that stays usable.
#[test]
fn unknown_message_type_gets_a_typed_error_and_the_connection_stays_open() {
    let node = TestNode::start("");
    let mut client = node.client();
    client
        .send_raw(&encode_frame(4242, 9, b"\x90"))
        .expect("send");
    let (id, reply) = client.receive().expect("reply");
    assert_eq!(id, 9);
    assert_eq!(
        reply,
        Message::Error(ServiceError::UnknownMessageType { kind: 4242 })
    );
    client
        .put(b"same-connection", None, b"ok", DEFAULT)
        .expect("connection still usable");
}

/// Goal: a known kind with a garbage body gets MalformedFrame; a reply kind sent as a request
/// gets NotARequest.
#[test]
fn garbage_bodies_and_replies_sent_as_requests_get_typed_errors() {
    let node = TestNode::start("");
    let mut client = node.client();
    client
        .send_raw(&encode_frame(
            shoal_stages::wire::kind::PUT,
            3,
            b"\xc1\xff\x00",
        ))
        .expect("send");
    let (_, reply) = client.receive().expect("reply");
    assert!(
        matches!(reply, Message::Error(ServiceError::MalformedFrame { .. })),
        "{reply}"
    );
    let reply_as_request = Message::PutReply(shoal_stages::wire::PutReply {
        context: Bytes::from(vec![]),
        membership_version: 0,
        durable: 0,
    });
    let error = client.call(&reply_as_request).expect_err("not a request");
    assert!(
        matches!(
            error,
            ClientError::Service(ServiceError::NotARequest { .. })
        ),
        "{error}"
    );
}

/// Goal: frames with valid headers but random kinds and bodies get typed errors on a
/// connection that stays open, and raw random bytes get a typed error or a close; the node
/// serves everyone else throughout.
#[test]
fn random_frames_and_bytes_get_typed_errors_and_the_node_keeps_serving() {
    let node = TestNode::start("");
    let mut seed: u64 = 0x5eed_1234;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut client = node.client();
    for id in 1..=200u64 {
        // Kinds near the real ones (1..=12, 99..=112) and beyond; bodies of random bytes.
        let kind = [next() % 13, 99 + next() % 14, next() % 65536][(next() % 3) as usize] as u16;
        let body: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
        if kind == shoal_stages::wire::kind::STATS && body == [0xc0] {
            continue; // nil is the Stats request's valid body
        }
        client
            .send_raw(&encode_frame(kind, id, &body))
            .expect("send");
        let (reply_id, reply) = client.receive().expect("a reply for every frame");
        assert_eq!(reply_id, id);
        assert!(
            matches!(reply, Message::Error(_)),
            "kind {kind} body {body:?} produced {reply}"
        );
    }
    for _ in 0..10 {
        let mut raw = node.client();
        let bytes: Vec<u8> = (0..512).map(|_| next() as u8).collect();
        raw.send_raw(&bytes).expect("send");
        while let Ok((_, reply)) = raw.receive() {
            assert!(
                matches!(reply, Message::Error(_)),
                "random bytes produced {reply}"
            );
        }
    }
    assert_still_serving(&node);
}

/// Goal: per-request quorums outside 1..=N and forged contexts get typed errors.
#[test]
fn invalid_quorum_and_bad_context_get_typed_errors() {
    let node = TestNode::start("");
    let mut client = node.client();
    let error = client
        .get(
            b"k",
            RequestOptions {
                r: Some(2),
                ..DEFAULT
            },
        )
        .expect_err("r > n");
    assert!(
        matches!(error, ClientError::Service(ServiceError::InvalidQuorum { ref name, value: 2, n: 1 }) if name == "r"),
        "{error}"
    );
    let forged = Message::Put(PutRequest {
        key: Bytes::from(b"k".to_vec()),
        context: Some(Bytes::from(vec![0xde, 0xad])),
        value: Bytes::from(b"v".to_vec()),
        w: None,
        timeout_ms: None,
        forwarded: false,
        durable: None,
        overwrite: false,
    });
    let error = client.call(&forged).expect_err("bad context");
    assert!(
        matches!(error, ClientError::Service(ServiceError::BadContext { .. })),
        "{error}"
    );
    let error = client.put(b"", None, b"v", DEFAULT).expect_err("empty key");
    assert!(
        matches!(
            error,
            ClientError::Service(ServiceError::InvalidKey { size: 0, .. })
        ),
        "{error}"
    );
}

/// Goal: a client that sends requests but never reads is disconnected once its unsent
/// replies exceed the bound, and the node keeps serving others.
#[test]
fn client_that_never_reads_is_dropped_and_others_are_served() {
    let node = TestNode::start(SLOW_READER_LIMITS);
    // Each reply is ~90 KB: 400 unread replies (36 MB) overflow the socket buffers and then
    // the node's 200 KB bound, so the node must cut the hog off before sending them all.
    let requests = 400;
    let received = replies_to_a_client_that_never_reads(&node, 90_000, requests, Duration::ZERO);
    assert!(
        received < requests,
        "the hog received all {received} replies: it was never dropped"
    );
}

/// Goal: blind puts cannot grow a key past the sibling limit (a get must stay readable); the
/// put over the limit stores nothing, and a put with a get's context reconciles.
#[test]
fn blind_puts_beyond_the_sibling_limit_are_refused_and_reconciling_works() {
    let node = TestNode::start("[limits]\nmax_siblings = 3\n");
    let mut client = node.client();
    for value in ["a", "b", "c"] {
        client
            .put(b"k", None, value.as_bytes(), DEFAULT)
            .expect("within the limit");
    }
    let error = client
        .put(b"k", None, b"d", DEFAULT)
        .expect_err("over the limit");
    assert!(
        matches!(
            error,
            ClientError::Service(ServiceError::TooManySiblings { count: 4, max: 3 })
        ),
        "{error}"
    );
    assert_eq!(
        values(&mut client, "k"),
        vec!["a", "b", "c"],
        "nothing stored"
    );
    let context = client.get(b"k", DEFAULT).expect("get").context;
    client
        .put(b"k", Some(&context), b"merged", DEFAULT)
        .expect("reconcile");
    assert_eq!(values(&mut client, "k"), vec!["merged"]);
}

/// Goal: a client that starts a frame and never finishes it (slowloris) is disconnected once
/// the frame timeout passes, while a client that completes its frames stays served.
#[test]
fn a_frame_left_half_sent_is_cut_off_at_the_frame_timeout() {
    let node = TestNode::start("[limits]\nframe_timeout_ms = 200\n");
    let mut slow = node.client();
    let frame = Message::Stats.encode(1).expect("encode");
    slow.send_raw(&frame[..frame.len() - 1])
        .expect("send most of a frame");
    // The node closes the stream (EOF); the client's own 10 s read timeout would surface as an
    // I/O error instead, so `Closed` proves the node acted.
    let outcome = slow.receive();
    assert!(
        matches!(outcome, Err(ClientError::Closed { .. })),
        "expected the node to close the stream, got {outcome:?}"
    );
    assert_still_serving(&node);
}

/// Goal: on a node with the default limits, a key of the longest allowed length is stored and
/// read back, and one byte more is refused with `InvalidKey` naming the limit; the node keeps
/// serving. A trial's get of a 65530-byte key (then allowed) panicked the node's intake
/// inside fjall.
#[test]
fn a_key_of_the_longest_allowed_length_is_stored_and_one_longer_refused() {
    use shoal_stages::storage::MAX_STORABLE_KEY_BYTES;
    let node = TestNode::start("");
    let mut client = node.client();
    let key = vec![b'k'; MAX_STORABLE_KEY_BYTES];
    client
        .put(&key, None, b"v", DEFAULT)
        .expect("the longest key");
    let read = client.get(&key, DEFAULT).expect("read back");
    assert_eq!(read.values, vec![b"v".to_vec()]);
    let longer = vec![b'k'; MAX_STORABLE_KEY_BYTES + 1];
    let error = client.get(&longer, DEFAULT).expect_err("one byte too long");
    assert!(
        matches!(
            error,
            ClientError::Service(ServiceError::InvalidKey { max, .. }) if max as usize == MAX_STORABLE_KEY_BYTES
        ),
        "{error}"
    );
    assert_still_serving(&node);
}
