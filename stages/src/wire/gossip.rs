//! The membership messages (Dynamo §4.8, SPEC §6): gossip between nodes, and the operator's
//! plan-first changes (`shoal admin join|leave|remove|plan|commit`) and a member's new
//! address (`shoal admin move`).

use crate::membership::{Member, Membership, Plan, Transfer};
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// Node → node, once a gossip round: my digest, and (the second message of a round, when the
/// answer showed the asker knew something the answerer did not) my whole value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipRequest {
    /// The digest of the asker's membership.
    pub digest: u64,
    /// The asker's membership, to merge.
    pub membership: Option<Membership>,
}

/// The answer to [`GossipRequest`]: the answerer's value, unless the digests were equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipReply {
    /// The answerer's membership after merging the asker's, if it differs from the asker's.
    pub membership: Option<Membership>,
}

/// Admin → node: stage a change to the membership (applied by the next commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// A new node (or a member's new weight or zone).
    Join(Member),
    /// A member hands its partitions over and leaves.
    Leave(NodeId),
    /// A dead member is taken out; its replicas are rebuilt from the others.
    Remove(NodeId),
    /// A member now listens at another address (it moved, keeping its id and data): in
    /// effect at once, no commit. Builds before it read this request as a malformed frame.
    Move {
        /// The member.
        node: NodeId,
        /// Where it listens now.
        addr: std::net::SocketAddr,
    },
}

/// Admin → node: what to do with the staged changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// A change to stage first, if any.
    pub change: Option<MembershipChange>,
    /// Whether to commit the staged changes.
    pub commit: bool,
}

/// Node → admin: the staged changes and what they would move, or what a commit started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReply {
    /// The answering node.
    pub node: NodeId,
    /// Its membership's version after the request.
    pub version: u64,
    /// Whether this request committed the plan.
    pub committed: bool,
    /// The staged changes and what they would move (after a commit: what it started).
    pub plan: Plan,
    /// Transfers of the last commit not yet done.
    pub pending: Vec<Transfer>,
    /// The answering node's own outgoing transfers, with their progress.
    #[serde(default)]
    pub progress: Vec<TransferProgress>,
    /// Partitions the answering node no longer holds and has not dropped yet, those waiting
    /// out `cleanup_delay_ms` included. Absent from older nodes' replies.
    #[serde(default)]
    pub drops_waiting: u64,
}

/// The membership as this node keeps it on disk (in storage's `meta`).
pub fn encode_membership(membership: &Membership) -> Result<Vec<u8>, super::WireError> {
    rmp_serde::to_vec_named(membership).map_err(|e| super::WireError::Encode {
        reason: e.to_string(),
    })
}

/// Reads back what [`encode_membership`] wrote.
pub fn decode_membership(bytes: &[u8]) -> Result<Membership, super::WireError> {
    rmp_serde::from_slice(bytes).map_err(|e| super::WireError::Malformed {
        kind: super::kind::GOSSIP,
        reason: format!("stored membership: {e}"),
    })
}

/// Old replica → new replica (ownership transfer): merge these objects of `partition`, one
/// acknowledged batch of a stream that resumes after the last acknowledged key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBatch {
    /// The partition being handed over.
    pub partition: u32,
    /// Its objects, in stored order.
    pub objects: Vec<super::AaeObject>,
}

/// The answer to [`TransferBatch`]: the objects are merged (and as durable as the receiver's
/// `sync` makes any replica write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAck {
    /// Objects merged.
    pub merged: u32,
}

/// One outgoing transfer as its sender reports it (`admin ring`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// The partition.
    pub partition: u32,
    /// The receiving node.
    pub to: NodeId,
    /// Where the transfer is: `snapshot`, `streaming`, `settling`, `catching_up`, `done`, or
    /// [`TransferProgress::PARKED`].
    pub phase: String,
    /// Objects acknowledged so far.
    pub objects: u64,
    /// Bytes of those objects.
    pub bytes: u64,
    /// Attempts that failed and were resumed.
    pub retries: u64,
    /// Why the last attempt failed (empty: none failed, or a build before it was told): what
    /// holds a parked transfer.
    #[serde(default)]
    pub last_error: String,
}

impl TransferProgress {
    /// The phase of a transfer that keeps failing and waits to be tried again (every later
    /// `admin commit` waits for it; `/metrics` counts them).
    pub const PARKED: &'static str = "parked";
}
