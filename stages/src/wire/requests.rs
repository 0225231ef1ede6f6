//! The data path's messages: clients' get, put and delete and their replies, and the
//! replica reads, writes and handoff batches between nodes.

use super::aae::AaeObject;
use super::message::Bytes;
use crate::durability::Durability;
use crate::versioning::VersionSet;
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// `get(key)`: the reconciled versions of a key from R replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The key.
    pub key: Bytes,
    /// Read quorum for this request; the node's default when absent.
    pub r: Option<u8>,
    /// Deadline for this request; the node's default when absent.
    pub timeout_ms: Option<u32>,
}

/// `put(key, context, value)`; a context of `None` is a blind write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    pub key: Bytes,
    /// The context of the get this put reconciles, as returned by that get.
    pub context: Option<Bytes>,
    /// The new value.
    pub value: Bytes,
    /// Write quorum for this request; the node's default when absent.
    pub w: Option<u8>,
    /// Deadline for this request; the node's default when absent.
    pub timeout_ms: Option<u32>,
    /// Set by a node that forwarded the put to a preference-list node (SPEC §3). The receiver
    /// coordinates it even if its own view disagrees, so forwarding never loops.
    #[serde(default)]
    pub forwarded: bool,
    /// Durable writes for this request (Dynamo §6.1); the cluster's `durable_writes` when
    /// absent.
    #[serde(default)]
    pub durable: Option<Durability>,
    /// Supersede every version the coordinator holds, not only what `context` covers (last
    /// writer wins at the coordinator: the Redis door's `SET`).
    #[serde(default)]
    pub overwrite: bool,
}

/// `delete(key, context)`: writes a tombstone that supersedes what the context covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// The key.
    pub key: Bytes,
    /// The context of the get that saw the versions to delete.
    pub context: Bytes,
    /// Write quorum for this request; the node's default when absent.
    pub w: Option<u8>,
    /// Deadline for this request; the node's default when absent.
    pub timeout_ms: Option<u32>,
    /// See [`PutRequest::forwarded`].
    #[serde(default)]
    pub forwarded: bool,
    /// See [`PutRequest::durable`].
    #[serde(default)]
    pub durable: Option<Durability>,
}

/// An operator's read of one node's own stored versions of a key, with no coordination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetLocalRequest {
    /// The key.
    pub key: Bytes,
}

/// Reply to [`GetLocalRequest`]: every stored version, tombstones and dots included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReply {
    /// The node's stored versions.
    pub versions: VersionSet,
}

/// Coordinator → replica: send me your versions of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRead {
    /// The key.
    pub key: Bytes,
}

/// Coordinator or repairer → replica: merge these versions of a key into yours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaWrite {
    /// The key.
    pub key: Bytes,
    /// The versions to merge.
    pub versions: VersionSet,
    /// Sloppy quorum (Dynamo §4.6): the preference-list node these versions are meant for,
    /// when the receiver is a fallback standing in for it. The receiver keeps them as a hint.
    #[serde(default)]
    pub hint: Option<NodeId>,
    /// Flush before acknowledging (the coordinator's `durable_writes` asked every replica to).
    #[serde(default)]
    pub durable: bool,
}

/// Hinted handoff (Dynamo §4.6), fallback → intended node: merge these objects, which were
/// kept here as hints while you were down. One frame carries many hints, merged by one storage
/// operation (one flush under `sync = "always"`), so a returning node is not sent one replica
/// write per hint while it also serves the foreground.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffBatch {
    /// The hinted keys and their versions.
    pub objects: Vec<AaeObject>,
}

/// The answer to [`HandoffBatch`]: every object is merged (as durable as the receiver's
/// `sync` makes any replica write). The sender may now delete those hints. A receiver still
/// paying its gate for the last batch it took in answers `Overloaded` instead, unmerged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffAck {
    /// Objects merged.
    pub merged: u32,
}

/// Replica → coordinator: the replica's versions of the key (after the merge, for a write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReply {
    /// The replica's versions.
    pub versions: VersionSet,
    /// The answer to a write: its copy was on disk when this was sent.
    #[serde(default)]
    pub durable: bool,
}

/// Reply to a get: the live sibling values and a context covering all of them (tombstones
/// included, so a put with it also supersedes a delete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// Sibling values; empty when the key is absent or deleted.
    pub values: Vec<Bytes>,
    /// Opaque encoded context.
    pub context: Bytes,
    /// The answering node's membership version: a client holding an older ring refreshes it.
    #[serde(default)]
    pub membership_version: u64,
}

/// Reply to a put or delete: the context of the version just written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    /// Opaque encoded context.
    pub context: Bytes,
    /// See [`GetReply::membership_version`].
    #[serde(default)]
    pub membership_version: u64,
    /// How many of the acknowledging replicas had the write on disk (Dynamo §6.1): at least
    /// one with `durable_writes = "one"`, all of them with `"all"`.
    #[serde(default)]
    pub durable: u8,
}
