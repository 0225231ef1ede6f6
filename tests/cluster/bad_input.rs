//! Bad input gets a typed error and the node keeps serving everyone else (TESTING.md §4).

use super::support::{replies_to_a_client_that_never_reads, values, TestNode, SLOW_READER_LIMITS};
use shoal::client::{Client, ClientError, RequestOptions};
use shoal_stages::wire::{
    encode_frame, handshake_bytes, Bytes, ContextSeal, Message, PeerChallenge, PeerHello,
    PeerProof, PutRequest, PEER_PROTOCOL,
};
use shoal_stages::{NodeId, ServiceError};
use std::time::Duration;

const DEFAULT: RequestOptions = RequestOptions {
    r: None,
    w: None,
    timeout_ms: None,
    durable: None,
};

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
fn assert_still_serving(node: &TestNode) {
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

/// Goal: peer-only requests need a connection that completed the challenge–response handshake
/// (SPEC §11): a plain client's ReplicaWrite or Ping is refused as Unauthorized; a hello from a
/// non-member, a proof made with another secret, the node's own challenge MAC sent back as a
/// proof (reflection), a proof without a hello and a second hello are refused and the
/// connection closed; the node's challenge proves it knows the secret; a
/// correct proof makes the same requests work.
#[test]
fn peer_requests_need_the_challenge_response_handshake() {
    let node = TestNode::start("");
    let secret = shoal::config::DEFAULT_SECRET.as_bytes();
    let unauthorized = |result: Result<Message, ClientError>| {
        matches!(
            result,
            Err(ClientError::Service(ServiceError::Unauthorized { .. }))
        )
    };
    let mut plain = node.client();
    assert!(
        unauthorized(plain.call(&replica_write())),
        "a plain client's replica write"
    );
    assert!(
        unauthorized(plain.call(&Message::Ping)),
        "a plain client's ping"
    );

    let mut stranger = node.client();
    let refusal = stranger.call(&hello("n9", [9; 16]));
    assert!(unauthorized(refusal), "a non-member's hello");
    assert_closed(&mut stranger, "a non-member's hello");

    let mut forger = node.client();
    let challenge = challenge_of(forger.call(&hello("n1", [1; 16])));
    let forged = proof(b"not-the-cluster-secret", "n1", [1; 16], &challenge);
    forger.send(&forged).expect("send the forged proof");
    assert_unauthorized(&mut forger, "the forged proof");
    assert_closed(&mut forger, "a forged proof");

    let mut reflector = node.client();
    let challenge = challenge_of(reflector.call(&hello("n1", [4; 16])));
    let reflected = Message::PeerProof(PeerProof {
        mac: challenge.mac.clone(),
    });
    reflector
        .send(&reflected)
        .expect("send the node's own MAC back");
    assert_unauthorized(
        &mut reflector,
        "a reflected challenge (its MAC is no proof)",
    );
    assert_closed(&mut reflector, "a reflected challenge");

    let mut early = node.client();
    early
        .send(&proof(secret, "n1", [1; 16], &challenge))
        .expect("send");
    assert_unauthorized(&mut early, "a proof without a hello");

    let mut peer = node.client();
    let challenge = challenge_of(peer.call(&hello("n1", [2; 16])));
    let signed = handshake_bytes(
        PeerChallenge::LABEL,
        &NodeId::new("n1"),
        &challenge.node,
        &[2; 16],
        &challenge.nonce,
    );
    assert!(
        ContextSeal::new(secret).verify(&signed, &challenge.mac),
        "the node's challenge proves it knows the cluster secret"
    );
    peer.send(&proof(secret, "n1", [2; 16], &challenge))
        .expect("send the proof");
    assert!(
        matches!(peer.call(&replica_write()), Ok(Message::ReplicaReply(_))),
        "a proven peer's replica write is served"
    );
    assert!(matches!(peer.call(&Message::Ping), Ok(Message::Pong)));
    let second = peer.call(&hello("n1", [3; 16]));
    assert!(unauthorized(second), "a second hello on a proven link");
    assert_closed(&mut peer, "a second hello");
    assert_still_serving(&node);
}

/// Goal: a recorded handshake cannot be replayed (issue 13): the node challenges every
/// connection with a fresh nonce, so the hello and proof bytes of an accepted handshake, sent
/// again on a new connection, are refused `Unauthorized`, the connection is closed before its
/// replica write is acted on, and the node keeps serving others.
#[test]
fn a_replayed_peer_handshake_is_refused() {
    let node = TestNode::start("");
    let secret = shoal::config::DEFAULT_SECRET.as_bytes();
    let mut genuine = node.client();
    let recorded_hello = hello("n1", [7; 16]);
    let first = challenge_of(genuine.call(&recorded_hello));
    let recorded_proof = proof(secret, "n1", [7; 16], &first);
    genuine.send(&recorded_proof).expect("send the proof");
    assert!(
        matches!(genuine.call(&Message::Ping), Ok(Message::Pong)),
        "the genuine handshake is accepted"
    );

    let mut replayer = node.client();
    let second = challenge_of(replayer.call(&recorded_hello));
    assert_ne!(
        first.nonce, second.nonce,
        "every connection is challenged with a fresh nonce"
    );
    replayer.send(&recorded_proof).expect("replay the proof");
    replayer
        .send(&replica_write())
        .expect("a replica write behind it");
    assert_unauthorized(&mut replayer, "the replayed proof");
    assert_closed(&mut replayer, "a replayed handshake");
    assert!(
        matches!(genuine.call(&Message::Ping), Ok(Message::Pong)),
        "the genuine link still works"
    );
    assert_still_serving(&node);
}

/// Goal: a member whose build speaks another peer protocol is refused at its hello, with
/// both versions named (a cluster of mixed builds fails at its links, not at a misread
/// frame), its connection closed before its replica write is acted on, and the node keeps
/// serving others.
#[test]
fn a_peer_speaking_another_protocol_is_refused_naming_both_versions() {
    let node = TestNode::start("");
    let reason = refused_hello(
        &node,
        PeerHello {
            protocol: PEER_PROTOCOL + 1,
            ..plain_hello("n1")
        },
    );
    assert!(
        reason.contains(&format!("peer protocol {}", PEER_PROTOCOL + 1))
            && reason.contains(&format!("this node {PEER_PROTOCOL}")),
        "{reason}"
    );
}

/// Goal: a member's name on a node started with another Q (a trial's impostor: an empty
/// directory, `partitions = 128` in a cluster of 64, taken for the member, handed its hints,
/// answering reads by its own ring) is refused at its hello with both rings named.
#[test]
fn a_peer_with_another_number_of_partitions_is_refused_naming_both() {
    let node = TestNode::start("");
    let reason = refused_hello(
        &node,
        PeerHello {
            partitions: 128,
            ..plain_hello("n1")
        },
    );
    assert!(
        reason.contains("n1 has a ring of 128 partitions and this node 64"),
        "{reason}"
    );
}

/// Sends `hello` and a replica write behind it: the hello must be refused `Unauthorized`
/// (its reason returned), the connection closed, and the node still serving others.
fn refused_hello(node: &TestNode, hello: PeerHello) -> String {
    let mut dialer = node.client();
    dialer
        .send(&Message::PeerHello(hello))
        .expect("send the hello");
    dialer
        .send(&replica_write())
        .expect("a replica write behind it");
    let (_, reply) = dialer.receive().expect("an answer to the hello");
    let reason = match reply {
        Message::Error(ServiceError::Unauthorized { reason }) => reason,
        other => panic!("the hello is refused as Unauthorized, got {other}"),
    };
    assert_closed(&mut dialer, "a refused hello");
    assert_still_serving(node);
    reason
}

fn replica_write() -> Message {
    use shoal_stages::versioning::VersionSet;
    use shoal_stages::wire::ReplicaWrite;
    Message::ReplicaWrite(ReplicaWrite {
        key: Bytes::from(b"k".to_vec()),
        versions: VersionSet::new(),
        hint: None,
        durable: false,
    })
}

fn hello(node: &str, nonce: [u8; 16]) -> Message {
    Message::PeerHello(PeerHello {
        nonce: Bytes::from(nonce.to_vec()),
        ..plain_hello(node)
    })
}

/// A hello as this build sends it, from a node of the test nodes' Q (64).
fn plain_hello(node: &str) -> PeerHello {
    PeerHello {
        node: NodeId::new(node),
        nonce: Bytes::from(vec![9; 16]),
        protocol: PEER_PROTOCOL,
        partitions: 64,
    }
}

fn challenge_of(reply: Result<Message, ClientError>) -> PeerChallenge {
    match reply {
        Ok(Message::PeerChallenge(challenge)) => challenge,
        other => panic!("expected a challenge to the hello, got {other:?}"),
    }
}

/// The dialer's proof for `challenge`, made with `secret`.
fn proof(secret: &[u8], dialer: &str, nonce: [u8; 16], challenge: &PeerChallenge) -> Message {
    let signed = handshake_bytes(
        PeerProof::LABEL,
        &NodeId::new(dialer),
        &challenge.node,
        &nonce,
        &challenge.nonce,
    );
    Message::PeerProof(PeerProof {
        mac: Bytes::from(ContextSeal::new(secret).sign(&signed)),
    })
}

/// The node's next answer on `client` refuses `what` as Unauthorized.
fn assert_unauthorized(client: &mut Client, what: &str) {
    let (_, reply) = client
        .receive()
        .unwrap_or_else(|e| panic!("an answer to {what}: {e:?}"));
    assert!(
        matches!(reply, Message::Error(ServiceError::Unauthorized { .. })),
        "{what} is refused as Unauthorized: {reply}"
    );
}

/// The node closed `client`'s connection (EOF, or a reset).
fn assert_closed(client: &mut Client, after: &str) {
    assert!(
        matches!(
            client.receive(),
            Err(ClientError::Closed { .. }) | Err(ClientError::Io(_))
        ),
        "connection closed after {after}"
    );
}
