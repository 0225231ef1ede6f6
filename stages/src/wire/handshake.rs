//! The peer handshake's messages (SPEC §11): hello, challenge and proof, and the bytes each
//! MAC covers.

use super::message::Bytes;
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// The peer protocol this build speaks: every frame nodes send each other, and how each is
/// encoded. Raise it with any change a node of the last version would misread or refuse (a
/// message or field removed or renamed, a meaning changed; a field added with a default is
/// not one). Each side of a handshake refuses a peer that names another version, and both
/// say which two met, so a cluster of mixed builds fails at its links, plainly, instead of
/// at its first misread frame. A hello or challenge without it is from a build before it was
/// named, which speaks version 1.
pub const PEER_PROTOCOL: u32 = 1;

/// What a hello or challenge without a protocol version speaks (see [`PEER_PROTOCOL`]).
fn first_protocol() -> u32 {
    1
}

/// The length of a handshake nonce.
pub const NONCE_BYTES: usize = 16;

/// A handshake nonce: fresh per connection, so a proof made for one connection is worthless on
/// any other (a recorded handshake cannot be replayed).
pub type Nonce = [u8; NONCE_BYTES];

/// The peer handshake (SPEC §11), a challenge–response in three frames on each link a node
/// opens, all before any peer request:
///
/// 1. dialer → receiver [`PeerHello`]: who it is, and a fresh nonce;
/// 2. receiver → dialer [`PeerChallenge`]: who answers, a fresh nonce of its own, and a MAC over
///    both nonces and both names, which proves to the dialer that whoever answered knows the
///    cluster secret (so a stranger listening on a member's address gets no replica writes);
/// 3. dialer → receiver [`PeerProof`]: a MAC over the same, under another label, proving the
///    dialer knows the cluster secret.
///
/// The dialer holds its requests until it has the challenge and wrote its proof; the receiver
/// acts on peer-only requests only after a valid proof. Each MAC has a label of its own, so
/// no answer one side gives can be reflected as the other's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// The dialling node.
    pub node: NodeId,
    /// The dialler's nonce.
    pub nonce: Bytes,
    /// The peer protocol the dialler speaks ([`PEER_PROTOCOL`]).
    #[serde(default = "first_protocol")]
    pub protocol: u32,
    /// The dialler's Q, its ring's partitions (`intake::handshake::terms_mismatch`; 0 from
    /// earlier builds).
    #[serde(default)]
    pub partitions: u32,
    /// The dialler's N (0 from earlier builds).
    #[serde(default)]
    pub replicas: u32,
    /// The dialler's initial ring (`Membership::genesis`; 0: none to compare).
    #[serde(default)]
    pub genesis: u64,
}

/// Step 2 of the handshake (see [`PeerHello`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerChallenge {
    /// The answering node.
    pub node: NodeId,
    /// The receiver's nonce, which the dialer's proof must cover.
    pub nonce: Bytes,
    /// HMAC of [`handshake_bytes`] with [`PeerChallenge::LABEL`] under the cluster secret.
    pub mac: Bytes,
    /// The peer protocol the receiver speaks ([`PEER_PROTOCOL`]).
    #[serde(default = "first_protocol")]
    pub protocol: u32,
    /// The receiver's Q (`intake::handshake::terms_mismatch`; 0 from
    /// earlier builds).
    #[serde(default)]
    pub partitions: u32,
    /// The receiver's N (0 from earlier builds).
    #[serde(default)]
    pub replicas: u32,
    /// The receiver's initial ring (`Membership::genesis`; 0: none to compare).
    #[serde(default)]
    pub genesis: u64,
}

impl PeerChallenge {
    /// What the receiver's MAC is labelled with.
    pub const LABEL: &'static [u8] = b"shoal-peer-challenge";
}

/// Step 3 of the handshake (see [`PeerHello`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProof {
    /// HMAC of [`handshake_bytes`] with [`PeerProof::LABEL`] under the cluster secret.
    pub mac: Bytes,
}

impl PeerProof {
    /// What the dialer's MAC is labelled with.
    pub const LABEL: &'static [u8] = b"shoal-peer-proof";
}

/// The bytes a handshake MAC covers: its label, both nodes and both nonces, each
/// length-prefixed so no two different handshakes give the same bytes.
pub fn handshake_bytes(
    label: &[u8],
    dialer: &NodeId,
    receiver: &NodeId,
    dialer_nonce: &[u8],
    receiver_nonce: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for part in [
        label,
        dialer.as_str().as_bytes(),
        receiver.as_str().as_bytes(),
        dialer_nonce,
        receiver_nonce,
    ] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}
