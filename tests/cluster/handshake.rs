//! The peer handshake on a real node (SPEC §11): peer-only requests need the
//! challenge-response, a recorded one cannot be replayed, and a peer of another protocol or Q
//! is refused naming both; each time the node keeps serving everyone else.

use super::bad_input::assert_still_serving;
use super::support::TestNode;
use shoal::client::{Client, ClientError};
use shoal_stages::wire::{
    handshake_bytes, Bytes, ContextSeal, Message, PeerChallenge, PeerHello, PeerProof,
    PEER_PROTOCOL,
};
use shoal_stages::{NodeId, ServiceError};

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

/// A hello as this build sends it, from a node of the test nodes' Q (64), naming no N or
/// initial ring (as a build before they were named).
fn plain_hello(node: &str) -> PeerHello {
    PeerHello {
        node: NodeId::new(node),
        nonce: Bytes::from(vec![9; 16]),
        protocol: PEER_PROTOCOL,
        partitions: 64,
        replicas: 0,
        genesis: 0,
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
