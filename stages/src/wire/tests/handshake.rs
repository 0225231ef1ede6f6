//! The handshake's and the ring reply's fields added since the first builds: what an older
//! build's encoding reads as.

use super::*;

/// Goal: a hello and a challenge from a build before the peer protocol was named (no
/// `protocol` or `partitions` field) read as version 1 and an untold Q, so a rolling upgrade
/// from such a build keeps its links (`intake/handshake.rs` tests the refusals).
#[test]
fn a_handshake_without_a_protocol_version_reads_as_the_first() {
    #[derive(serde::Serialize)]
    struct OldHello {
        node: crate::NodeId,
        nonce: Bytes,
    }
    #[derive(serde::Serialize)]
    struct OldChallenge {
        node: crate::NodeId,
        nonce: Bytes,
        mac: Bytes,
    }
    let node = crate::NodeId::new("n1");
    let old = OldHello {
        node: node.clone(),
        nonce: Bytes::from(vec![1; NONCE_BYTES]),
    };
    let hello: PeerHello =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).expect("encode")).expect("decode");
    assert_eq!((hello.protocol, hello.partitions), (1, 0));
    let old = OldChallenge {
        node,
        nonce: Bytes::from(vec![2; NONCE_BYTES]),
        mac: Bytes::from(vec![3; 16]),
    };
    let challenge: PeerChallenge =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).expect("encode")).expect("decode");
    assert_eq!((challenge.protocol, challenge.partitions), (1, 0));
}

/// Goal: a ring reply from a node before it told its request timeout reads as 0 (not told),
/// so a partition-aware client falls back to its own timeout.
#[test]
fn a_ring_reply_without_a_request_timeout_reads_as_not_told() {
    #[derive(serde::Serialize)]
    struct OldRingReply {
        membership: crate::membership::Membership,
        replicas: u8,
    }
    let members = vec![crate::membership::Member::loopback("n1", 1)];
    let old = OldRingReply {
        membership: crate::membership::Membership::new(1, 8, members).expect("membership"),
        replicas: 1,
    };
    let reply: crate::wire::RingReply =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).expect("encode")).expect("decode");
    assert_eq!(reply.request_timeout_ms, 0);
}
