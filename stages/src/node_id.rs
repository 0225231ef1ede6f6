//! The name of a node: the one identity used by the ring, vector clocks, stats and logs.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Longest node name accepted from config or the network. Names travel inside every vector clock
/// entry, so a bound keeps a hostile peer from inflating every stored object.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Longest actor name (a dot's or clock entry's: a node's name, `@` and its epoch, up to 20
/// digits; `Store::actor`).
pub const MAX_ACTOR_BYTES: usize = MAX_NODE_ID_BYTES + 21;

/// A node's stable name (e.g. `"n1"`), chosen by the operator in the node's config.
///
/// Ordered, so that maps keyed by node iterate deterministically (the simulator and the ring
/// assignment depend on that).
///
/// Shared, not copied: a node's actor (its id, `@`, its epoch: `Store::actor`, a `NodeId`
/// too) sits in every dot and clock entry of every version, and is decoded and cloned several
/// times per request. An `Arc<str>` makes a clone a reference count, and decoding looks the
/// name up among the names already seen (see [`intern`]), so neither allocates (with `String`
/// they were about a tenth of a node's CPU under load).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

/// Names a decode may add for reuse. Bounded: decoded names can come from any client's admin
/// request, and those must not grow the set without end (past the bound a decoded name is
/// simply allocated). Names made by [`NodeId::new`] (config, stored hints, this node's own
/// actors) are always kept, so the members' names are shared however full the set is. Other
/// nodes' actors are decoded names: each node has a new one after every crash and every
/// partition it drops (`Store::actor`), so a cluster's actors take thousands of such events to
/// fill the set; past it, only their decodes allocate.
const MAX_DECODED_NAMES: usize = 4096;

/// The shared copy of `name`, from the names seen before when possible; a new name is kept
/// if `always_keep`, or if the set is below its bound and the name could be an actor's (no
/// longer than [`MAX_ACTOR_BYTES`]): a decoded name may come from anyone (a stranger's hello,
/// a client's admin request) and be as long as a frame, and 4096 names of a megabyte each
/// would be held for the life of the process.
fn intern(name: &str, always_keep: bool) -> Arc<str> {
    static NAMES: OnceLock<Mutex<BTreeSet<Arc<str>>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(BTreeSet::new()));
    // The set is only inserted into; a panic elsewhere cannot leave it half-changed.
    let mut names = names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return Arc::clone(known);
    }
    let shared: Arc<str> = Arc::from(name);
    if always_keep || (names.len() < MAX_DECODED_NAMES && name.len() <= MAX_ACTOR_BYTES) {
        names.insert(Arc::clone(&shared));
    }
    shared
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<NodeId, E> {
                Ok(NodeId(intern(name, false)))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl NodeId {
    /// Builds a node id from anything string-like.
    pub fn new(name: impl Into<String>) -> NodeId {
        NodeId(intern(&name.into(), true))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is usable: non-empty, at most [`MAX_NODE_ID_BYTES`], printable ASCII
    /// without spaces (so it can appear in logs, stats tables and file names unquoted).
    pub fn is_valid(&self) -> bool {
        self.0.len() <= MAX_NODE_ID_BYTES && self.is_valid_actor()
    }

    /// Whether the name is usable as an actor, the name a dot or a clock entry carries: as
    /// [`NodeId::is_valid`], at most [`MAX_ACTOR_BYTES`].
    pub fn is_valid_actor(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= MAX_ACTOR_BYTES
            && self.0.bytes().all(|b| b.is_ascii_graphic())
    }

    /// Whether both hold the one shared copy of their name (for tests of decoding).
    #[cfg(test)]
    pub(crate) fn shares_copy_with(&self, other: &NodeId) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0) // honours width and alignment, so node ids line up in tables
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> NodeId {
        NodeId(intern(name, true))
    }
}
