//! The peer handshake's pieces (SPEC §11): nonces, the three frames, and their checks. Pure:
//! the intake machine decides when each is sent and what a failure does to the connection.
//!
//! Why a challenge–response: a hello signed over a timestamp could be recorded and replayed
//! within its window by anyone on the path. Here each side's MAC covers a nonce the *other*
//! side chose for this connection, so a recorded proof fails on any other connection, and
//! the receiver's MAC proves to the dialer that whoever answered knows the cluster secret.
//! What it does not do: bind the frames after it to the handshake. Someone who can read and
//! inject bytes on the path can relay a real handshake and then speak on the link; only
//! encryption (TLS) closes that, and shoal has none yet (SPEC §11 asks for proof of the
//! secret, not a secure channel).

use crate::wire::{
    handshake_bytes, Bytes, ContextSeal, Message, Nonce, PeerChallenge, PeerHello, PeerProof,
    NONCE_BYTES, PEER_PROTOCOL,
};
use crate::NodeId;
use std::time::Instant;

/// Why a peer handshake failed, by kind. Each kind is counted on its own for the log's 1st,
/// 10th, 100th... warning (`Repeats`), so a node refused for its Q and then, restarted, for
/// its secret is warned of again: a trial found the second cause silent on the healthy
/// nodes, whose one count per peer had passed its 10th refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The dialer names no member of this node's view.
    NotAMember {
        /// The node it names.
        node: NodeId,
    },
    /// The peer speaks another peer protocol (`wire::PEER_PROTOCOL`).
    Protocol {
        /// The peer.
        peer: NodeId,
        /// Its protocol version.
        theirs: u32,
    },
    /// The peer's ring has another number of partitions.
    Partitions {
        /// The peer.
        peer: NodeId,
        /// Its Q.
        theirs: u32,
        /// This node's Q.
        ours: u32,
    },
    /// The peer keeps another number of replicas of each key.
    Replicas {
        /// The peer.
        peer: NodeId,
        /// Its N.
        theirs: u32,
        /// This node's N.
        ours: u32,
    },
    /// The peer founded the cluster from another member list (another initial ring).
    Genesis {
        /// The peer.
        peer: NodeId,
    },
    /// DIALER SIDE: the challenge's MAC is not the cluster secret's.
    ChallengeNotSigned,
    /// RECEIVER SIDE: the proof does not answer this connection's challenge.
    ProofNotAnswering,
    /// Another node than the one dialled answered the hello.
    WrongPeer {
        /// The node dialled.
        dialled: NodeId,
        /// The node that answered.
        answered: NodeId,
    },
    /// DIALER SIDE: the peer refused this node's hello; its error says why.
    ByPeer {
        /// The peer's error, as it wrote it.
        error: String,
    },
    /// A frame that is no step of the handshake, or not in its order.
    Malformed {
        /// What was wrong with it.
        what: String,
    },
}

impl Refusal {
    /// The kind, to count refusals by and to log: `secret` for both sides' MAC failures.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotAMember { .. } => "not-a-member",
            Refusal::Protocol { .. } => "protocol",
            Refusal::Partitions { .. } => "partitions",
            Refusal::Replicas { .. } => "replicas",
            Refusal::Genesis { .. } => "genesis",
            Refusal::ChallengeNotSigned | Refusal::ProofNotAnswering => "secret",
            Refusal::WrongPeer { .. } => "wrong-peer",
            Refusal::ByPeer { .. } => "refused-by-peer",
            Refusal::Malformed { .. } => "malformed",
        }
    }

    /// Whether the peer's ring contradicts this node's (Q, N or the initial ring): a
    /// misconfiguration on one side, where serving would let the two rings diverge.
    pub fn is_terms(&self) -> bool {
        matches!(
            self,
            Refusal::Partitions { .. } | Refusal::Replicas { .. } | Refusal::Genesis { .. }
        )
    }

    /// A malformed step: `what` was wrong.
    pub(crate) fn malformed(what: &str) -> Refusal {
        Refusal::Malformed {
            what: what.to_string(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAMember { node } => write!(f, "{node} is not a member"),
            Refusal::Protocol { peer, theirs } => write!(
                f,
                "{peer} speaks peer protocol {theirs} and this node {PEER_PROTOCOL}: the nodes of \
                 one cluster must all run builds of one protocol (upgrade or roll back one of them)"
            ),
            Refusal::Partitions { peer, theirs, ours } => write!(
                f,
                "{peer} has a ring of {theirs} partitions and this node {ours}: Q is fixed for a \
                 cluster's life (cluster.partitions), so one of them was started with another; \
                 fix its config and start it on an empty data directory"
            ),
            Refusal::Replicas { peer, theirs, ours } => write!(
                f,
                "{peer} keeps {theirs} replicas of each key and this node {ours}: N is fixed for \
                 a cluster's life (cluster.n), and a node with another would drop or miss the \
                 copies the others count on; fix its config"
            ),
            Refusal::Genesis { peer } => write!(
                f,
                "{peer} dealt its initial ring from another member list than this node: every \
                 founder of a cluster must list the same [[cluster.members]] (a node that joins \
                 later sets node.await_join and is added with `shoal admin join`); fix the list \
                 of whichever differs, and start it again on an empty data directory (a node \
                 keeps the list it first started with)"
            ),
            Refusal::ChallengeNotSigned => {
                write!(f, "challenge not signed with this cluster's secret")
            }
            Refusal::ProofNotAnswering => write!(
                f,
                "proof does not answer this connection's challenge (a replay, or another \
                 cluster's secret)"
            ),
            Refusal::WrongPeer { dialled, answered } => {
                write!(f, "dialled {dialled} but {answered} answered the hello")
            }
            Refusal::ByPeer { error } => write!(f, "the peer refused the hello: {error}"),
            Refusal::Malformed { what } => write!(f, "{what}"),
        }
    }
}

/// Why a peer of `theirs` is refused, or `None` when it speaks this build's protocol.
pub fn protocol_mismatch(peer: &NodeId, theirs: u32) -> Option<Refusal> {
    (theirs != PEER_PROTOCOL).then(|| Refusal::Protocol {
        peer: peer.clone(),
        theirs,
    })
}

/// What two nodes' rings must agree on to be one cluster, as each names it in the handshake.
/// 0 in any field: not named (a build before it was, or no initial ring to compare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingTerms {
    /// Q, the ring's partitions.
    pub partitions: u32,
    /// N, the replicas of each key.
    pub replicas: u32,
    /// The initial ring's digest while no commit replaced it (`Membership::genesis`).
    pub genesis: u64,
}

/// Why a peer naming `theirs` is refused by a node of `ours`, or `None` when they agree.
/// - Q is fixed for a cluster's life: a node started with another (on an empty data
///   directory, so its own storage does not refuse it) would otherwise be taken for the
///   member at its address, given that member's hints, and would answer reads and exchange
///   trees by a ring the others do not have.
/// - So is N: a node with a smaller one drops the partitions it thinks it no longer holds
///   (a trial's did, silently leaving a third of the keys with two copies).
/// - Founders that dealt their first ring from different member lists would each route by
///   their own (a trial restarted a node with a member left out of its list, and the left-out
///   member dropped its data on every node).
pub fn terms_mismatch(peer: &NodeId, theirs: RingTerms, ours: RingTerms) -> Option<Refusal> {
    let differ = |a: u64, b: u64| a != 0 && b != 0 && a != b;
    let peer = peer.clone();
    if differ(theirs.partitions.into(), ours.partitions.into()) {
        let (theirs, ours) = (theirs.partitions, ours.partitions);
        return Some(Refusal::Partitions { peer, theirs, ours });
    }
    if differ(theirs.replicas.into(), ours.replicas.into()) {
        let (theirs, ours) = (theirs.replicas, ours.replicas);
        return Some(Refusal::Replicas { peer, theirs, ours });
    }
    differ(theirs.genesis, ours.genesis).then_some(Refusal::Genesis { peer })
}

/// Fresh nonces: the MAC, under the cluster secret, of a per-process random seed and a
/// counter. Unique because the counter never repeats within a process and the seed differs
/// between processes; unpredictable to anyone without the secret. Deterministic given the
/// seed, so the simulator replays a seed exactly.
pub struct NonceSource {
    seed: [u8; NONCE_BYTES],
    counter: u64,
}

impl NonceSource {
    /// A source seeded with `seed` (random for a real node; in the simulator, derived from
    /// the node and its incarnation).
    pub fn new(seed: [u8; NONCE_BYTES]) -> NonceSource {
        NonceSource { seed, counter: 0 }
    }

    /// The next nonce.
    pub fn next(&mut self, seal: &ContextSeal) -> Nonce {
        self.counter += 1;
        let mut input = b"shoal-nonce".to_vec();
        input.extend_from_slice(&self.seed);
        input.extend_from_slice(&self.counter.to_be_bytes());
        let mut nonce = [0u8; NONCE_BYTES];
        for (to, from) in nonce.iter_mut().zip(seal.sign(&input)) {
            *to = from;
        }
        nonce
    }
}

/// DIALER SIDE: a link waiting for the receiver's challenge. Frames for the peer are held
/// here, in order, and written right after the proof.
pub struct Dialing {
    /// The nonce sent in the hello.
    pub nonce: Nonce,
    /// When the link was opened (the handshake must finish within `HANDSHAKE_TIMEOUT`).
    pub started: Instant,
    /// Encoded frames waiting for the proof.
    pub held: Vec<Vec<u8>>,
    /// Their total size, bounded by the per-connection write buffer.
    pub held_bytes: usize,
}

/// RECEIVER SIDE: a connection that sent a hello and was challenged.
pub struct Challenged {
    /// Who the hello said it is.
    pub dialer: NodeId,
    /// The nonce of its hello.
    pub dialer_nonce: Nonce,
    /// The nonce of the challenge, which its proof must cover.
    pub nonce: Nonce,
}

/// Step 1, the dialer's hello, from a node of `terms`.
pub fn hello(node: &NodeId, nonce: &Nonce, terms: RingTerms) -> Message {
    Message::PeerHello(PeerHello {
        node: node.clone(),
        nonce: Bytes::from(nonce.to_vec()),
        protocol: PEER_PROTOCOL,
        partitions: terms.partitions,
        replicas: terms.replicas,
        genesis: terms.genesis,
    })
}

/// A nonce from the wire, if it has the right length.
pub fn nonce_of(bytes: &[u8]) -> Option<Nonce> {
    bytes.try_into().ok()
}

/// Step 2, the receiver's challenge to `hello`'s sender, from a node of `terms`.
pub fn challenge(
    seal: &ContextSeal,
    receiver: &NodeId,
    of: &Challenged,
    terms: RingTerms,
) -> Message {
    let mac = seal.sign(&handshake_bytes(
        PeerChallenge::LABEL,
        &of.dialer,
        receiver,
        &of.dialer_nonce,
        &of.nonce,
    ));
    Message::PeerChallenge(PeerChallenge {
        node: receiver.clone(),
        nonce: Bytes::from(of.nonce.to_vec()),
        mac: Bytes::from(mac),
        protocol: PEER_PROTOCOL,
        partitions: terms.partitions,
        replicas: terms.replicas,
        genesis: terms.genesis,
    })
}

impl From<&PeerHello> for RingTerms {
    fn from(hello: &PeerHello) -> RingTerms {
        RingTerms {
            partitions: hello.partitions,
            replicas: hello.replicas,
            genesis: hello.genesis,
        }
    }
}

impl From<&PeerChallenge> for RingTerms {
    fn from(challenge: &PeerChallenge) -> RingTerms {
        RingTerms {
            partitions: challenge.partitions,
            replicas: challenge.replicas,
            genesis: challenge.genesis,
        }
    }
}

/// DIALER SIDE: checks the challenge from the link to `peer` that sent `nonce`, for a dialer
/// of `terms`; its proof on success, the reason otherwise.
pub fn answer(
    seal: &ContextSeal,
    dialer: &NodeId,
    peer: &NodeId,
    nonce: &Nonce,
    challenge: &PeerChallenge,
    terms: RingTerms,
) -> Result<Message, Refusal> {
    if &challenge.node != peer {
        return Err(Refusal::WrongPeer {
            dialled: peer.clone(),
            answered: challenge.node.clone(),
        });
    }
    // The version first (another may sign differently), then the MAC: what the answerer
    // says of its ring counts only once it is known to be of this cluster.
    if let Some(reason) = protocol_mismatch(peer, challenge.protocol) {
        return Err(reason);
    }
    let receiver_nonce = nonce_of(&challenge.nonce)
        .ok_or_else(|| Refusal::malformed("challenge nonce of the wrong length"))?;
    let signed = handshake_bytes(PeerChallenge::LABEL, dialer, peer, nonce, &receiver_nonce);
    if !seal.verify(&signed, &challenge.mac) {
        return Err(Refusal::ChallengeNotSigned);
    }
    if let Some(reason) = terms_mismatch(peer, RingTerms::from(challenge), terms) {
        return Err(reason);
    }
    let proof = seal.sign(&handshake_bytes(
        PeerProof::LABEL,
        dialer,
        peer,
        nonce,
        &receiver_nonce,
    ));
    Ok(Message::PeerProof(PeerProof {
        mac: Bytes::from(proof),
    }))
}

/// RECEIVER SIDE: whether `proof` answers the challenge this node sent.
pub fn proven(seal: &ContextSeal, receiver: &NodeId, of: &Challenged, proof: &PeerProof) -> bool {
    let signed = handshake_bytes(
        PeerProof::LABEL,
        &of.dialer,
        receiver,
        &of.dialer_nonce,
        &of.nonce,
    );
    seal.verify(&signed, &proof.mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a dialer refuses a challenge from a node of another peer protocol or another
    /// Q, naming both, before it sends its proof or any frame it holds.
    #[test]
    fn a_challenge_of_another_protocol_or_ring_is_refused_naming_both() {
        let seal = ContextSeal::new(b"a-cluster-secret-of-16-bytes");
        let (dialer, peer) = (NodeId::new("n1"), NodeId::new("n2"));
        let nonce = [1; NONCE_BYTES];
        let challenged = Challenged {
            dialer: dialer.clone(),
            dialer_nonce: nonce,
            nonce: [2; NONCE_BYTES],
        };
        let q = |partitions| RingTerms {
            partitions,
            replicas: 3,
            genesis: 7,
        };
        let Message::PeerChallenge(mut challenge) = challenge(&seal, &peer, &challenged, q(64))
        else {
            panic!("challenge() builds a challenge");
        };
        assert!(answer(&seal, &dialer, &peer, &nonce, &challenge, q(64)).is_ok());
        let refused = answer(&seal, &dialer, &peer, &nonce, &challenge, q(128)).err();
        let refused = refused.map(|r| r.to_string()).unwrap_or_default();
        assert!(
            refused.contains("n2 has a ring of 64 partitions and this node 128"),
            "{refused}"
        );
        challenge.protocol = PEER_PROTOCOL + 1;
        let refused = answer(&seal, &dialer, &peer, &nonce, &challenge, q(64)).err();
        let refused = refused.map(|r| r.to_string()).unwrap_or_default();
        assert!(
            refused.contains(&format!("n2 speaks peer protocol {}", PEER_PROTOCOL + 1))
                && refused.contains(&format!("this node {PEER_PROTOCOL}")),
            "{refused}"
        );
    }

    /// Goal: a peer of this build's protocol is not refused, another is with both versions
    /// named; an untold Q (0, an earlier build) is not checked, another Q is refused.
    #[test]
    fn another_protocol_or_q_is_refused_and_an_untold_q_is_not() {
        let node = NodeId::new("n1");
        assert!(protocol_mismatch(&node, PEER_PROTOCOL).is_none());
        let other = PEER_PROTOCOL + 1;
        let refusal = protocol_mismatch(&node, other).map(|r| r.to_string());
        let refusal = refusal.unwrap_or_default();
        assert!(
            refusal.contains(&format!(
                "n1 speaks peer protocol {other} and this node {PEER_PROTOCOL}"
            )),
            "{refusal}"
        );
        // No Q told (0) is not checked; another is refused.
        let q = |partitions| RingTerms {
            partitions,
            ..RingTerms::default()
        };
        assert!(terms_mismatch(&node, q(0), q(64)).is_none());
        assert!(terms_mismatch(&node, q(128), q(64)).is_some());
    }

    /// Goal: a peer keeping another N, or founded from another member list (another initial
    /// ring), is refused naming why; an untold N or initial ring (0: an earlier build, a
    /// joiner, a ring some commit replaced) is not checked.
    #[test]
    fn another_n_or_another_initial_ring_is_refused_and_an_untold_one_is_not() {
        let node = NodeId::new("n3");
        let terms = |replicas, genesis| RingTerms {
            partitions: 64,
            replicas,
            genesis,
        };
        let ours = terms(3, 11);
        assert_eq!(terms_mismatch(&node, terms(3, 11), ours), None);
        let refused = terms_mismatch(&node, terms(2, 11), ours).map(|r| r.to_string());
        let refused = refused.unwrap_or_default();
        assert!(
            refused.contains("n3 keeps 2 replicas of each key and this node 3"),
            "{refused}"
        );
        let refused = terms_mismatch(&node, terms(3, 12), ours).map(|r| r.to_string());
        let refused = refused.unwrap_or_default();
        assert!(
            refused.contains("n3 dealt its initial ring from another member list"),
            "{refused}"
        );
        assert_eq!(terms_mismatch(&node, terms(0, 0), ours), None);
        assert_eq!(terms_mismatch(&node, terms(3, 12), terms(3, 0)), None);
    }
}
