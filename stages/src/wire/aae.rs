//! The anti-entropy messages (Dynamo §4.7, SPEC §5): one replica of a partition compares its
//! Merkle tree with another's and they exchange the keys that differ; the purge of tombstones
//! every replica holds; and the operator's report (`shoal admin aae`).

use super::message::Bytes;
use crate::versioning::VersionSet;
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// Most segments, branches, digests or objects one anti-entropy message may carry. Bounds what
/// a peer can make this node scan or merge per message; an exchange with more differences
/// finishes in later exchanges.
pub const MAX_AAE_ITEMS: usize = 4096;

/// Replica → replica: your tree of `partition` at one level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeTree {
    /// The partition.
    pub partition: u32,
    /// `None`: the root and every branch hash; else the segment hashes under these branches.
    pub branches: Option<Vec<u16>>,
    /// The asker's root: if it equals the answerer's, the answer leaves the hashes out (a
    /// partition in sync costs one small round trip).
    pub root: Option<u64>,
}

/// The answer to [`AaeTree`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeTreeReply {
    /// Whether the answerer has a tree for the partition (not while it first builds one).
    pub ready: bool,
    /// Its root.
    pub root: u64,
    /// Keys under it.
    pub keys: u64,
    /// The hashes asked for (empty when the roots agreed).
    pub hashes: Vec<u64>,
}

/// Replica → replica: the keys of these segments of `partition`, with their object hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeDigests {
    /// The partition.
    pub partition: u32,
    /// The segments.
    pub segments: Vec<u16>,
    /// Most keys to list (at most [`MAX_AAE_ITEMS`]; absent from an older node: that).
    #[serde(default = "max_aae_items")]
    pub limit: u32,
    /// Only the first segment's keys after this one: the exchange goes on past where both
    /// lists last stopped short (absent from an older node: from the start).
    #[serde(default)]
    pub after: Option<Bytes>,
}

fn max_aae_items() -> u32 {
    MAX_AAE_ITEMS as u32
}

/// One key and the hash of its stored version set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDigest {
    /// The key.
    pub key: Bytes,
    /// Its object hash (the tree's leaf contribution).
    pub hash: u64,
}

/// The answer to [`AaeDigests`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeDigestsReply {
    /// The keys, in stored order (at most the limit asked for).
    pub digests: Vec<KeyDigest>,
    /// The list stopped short of the segments' end (the limit, or the message's byte cap):
    /// it is complete only up to its last key. Absent from an older node: false (the asker
    /// then also takes a full list as cut).
    #[serde(default)]
    pub cut: bool,
}

/// A key and its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeObject {
    /// The key.
    pub key: Bytes,
    /// Its versions.
    pub versions: VersionSet,
}

impl AaeObject {
    /// Keys and their versions as the wire carries them.
    pub fn many(objects: Vec<(Vec<u8>, VersionSet)>) -> Vec<AaeObject> {
        objects
            .into_iter()
            .map(|(key, versions)| AaeObject {
                key: Bytes::from(key),
                versions,
            })
            .collect()
    }
}

/// Replica → replica: merge these objects and send me your versions of `want`, as they were
/// before the merge (a key in both comes back as the answerer held it; the asker merging
/// that ends with the same union as the answerer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeSync {
    /// The partition (for logs and stats).
    pub partition: u32,
    /// The asker's versions of the differing keys it holds.
    pub objects: Vec<AaeObject>,
    /// Differing keys the answerer holds.
    pub want: Vec<Bytes>,
    /// The asker, so the answerer counts what it took and gave in its report of that peer
    /// too (for stats only; `None` from nodes before it was sent).
    #[serde(default)]
    pub from: Option<NodeId>,
}

/// The answer to [`AaeSync`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeSyncReply {
    /// The answerer's versions of the wanted keys.
    pub objects: Vec<AaeObject>,
}

/// The two phases of a tombstone purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgePhase {
    /// Would you let these go? (a replica: it holds exactly this tombstone set; anyone: it
    /// keeps no hint for the key that could bring an older version back)
    Check,
    /// Delete these if you still hold exactly this set.
    Commit,
}

/// Replica → every member: the purge of tombstones every replica holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaePurge {
    /// The partition of every key (the answerer checks whether it replicates it).
    pub partition: u32,
    /// Which phase.
    pub phase: PurgePhase,
    /// Whether the sender counts the answerer among the partition's replicas (then it must
    /// hold exactly each tombstone set, whatever its own view says).
    #[serde(default)]
    pub replica: bool,
    /// The keys with the tombstone sets to purge.
    pub objects: Vec<AaeObject>,
}

/// The answer to [`AaePurge`]: the keys the answerer agreed to (check) or deleted (commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaePurgeReply {
    /// The keys.
    pub keys: Vec<Bytes>,
}

/// One peer of one partition, as this node's anti-entropy saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaePeerReport {
    /// The peer.
    pub peer: NodeId,
    /// Wall-clock ms when the last exchange with it completed (0: never).
    pub last_exchange_ms: u64,
    /// Wall-clock ms when the last exchange that left the two in sync started (0: never).
    pub in_sync_since_ms: u64,
    /// Exchanges completed.
    pub exchanges: u64,
    /// Objects this node sent the peer.
    pub keys_sent: u64,
    /// Objects this node received from the peer.
    pub keys_received: u64,
}

/// One partition this node replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaePartitionReport {
    /// The partition.
    pub partition: u32,
    /// `missing`, `building` or `ready`.
    pub tree: String,
    /// The root digest.
    pub root: u64,
    /// Keys under the tree.
    pub keys: u64,
    /// The other replicas.
    pub peers: Vec<AaePeerReport>,
}

/// `shoal admin aae`: per partition this node replicates, its tree and its exchanges; totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AaeReport {
    /// The answering node.
    pub node: NodeId,
    /// Whether anti-entropy runs.
    pub enabled: bool,
    /// Per partition, in partition order.
    pub partitions: Vec<AaePartitionReport>,
    /// Exchanges completed.
    pub exchanges: u64,
    /// Exchanges that found the roots equal at once.
    pub in_sync_exchanges: u64,
    /// Objects sent to peers.
    pub keys_sent: u64,
    /// Objects received from peers.
    pub keys_received: u64,
    /// Key digests compared (keys of differing segments).
    pub digests_compared: u64,
    /// Bytes of anti-entropy messages this node sent and received as initiator.
    pub bytes_exchanged: u64,
    /// Tree rebuilds completed.
    pub rebuilds: u64,
    /// Rebuilds that found a tree differing from its data (rot).
    pub rot_found: u64,
    /// Tombstones purged here.
    pub tombstones_purged: u64,
}
