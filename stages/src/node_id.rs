//! The name of a node: the one identity used by the ring, vector clocks, stats and logs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest node name accepted from config or the network. Names travel inside every vector clock
/// entry, so a bound keeps a hostile peer from inflating every stored object.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// A node's stable name (e.g. `"n1"`), chosen by the operator in the node's config.
///
/// Ordered, so that maps keyed by node iterate deterministically (the simulator and the ring
/// assignment depend on that).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// Builds a node id from anything string-like.
    pub fn new(name: impl Into<String>) -> NodeId {
        NodeId(name.into())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is usable: non-empty, at most [`MAX_NODE_ID_BYTES`], printable ASCII
    /// without spaces (so it can appear in logs, stats tables and file names unquoted).
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= MAX_NODE_ID_BYTES
            && self.0.bytes().all(|b| b.is_ascii_graphic())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0) // honours width and alignment, so node ids line up in tables
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> NodeId {
        NodeId(name.to_string())
    }
}
