//! The errors a client can receive: one enum, carried in an `ErrorReply`, so every failure that
//! crosses the wire is typed and names its cause.

use serde::{Deserialize, Serialize};

/// Why a request was not served. Every variant is a normal operating condition of a store
/// under load or attack, not a bug; the node keeps serving other requests after each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServiceError {
    /// A stage's queue was full; the request was refused at once rather than queued without
    /// bound (SEDA's fail-fast admission). Retry later or elsewhere.
    #[error("overloaded: the {stage} stage's queue is full")]
    Overloaded {
        /// The stage that refused the request.
        stage: String,
    },
    /// The frame's header declared more bytes than the node accepts; the connection is closed.
    #[error("frame of {declared} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Declared frame length.
        declared: u64,
        /// The node's `limits.max_frame_bytes`.
        max: u64,
    },
    /// The frame is unreadable: bad header, undecodable body, or trailing bytes.
    #[error("malformed frame: {reason}")]
    MalformedFrame {
        /// What the decoder found wrong.
        reason: String,
    },
    /// The frame's kind is not a message this node knows.
    #[error("unknown message type {kind}")]
    UnknownMessageType {
        /// The unknown kind number.
        kind: u16,
    },
    /// The message is of a known type but is not a request a client may send.
    #[error("message type {kind} is not a request")]
    NotARequest {
        /// The kind number.
        kind: u16,
    },
    /// The key is empty or longer than the limit; nothing was stored.
    #[error("key of {size} bytes is outside 1..={max}")]
    InvalidKey {
        /// Key length in bytes.
        size: u64,
        /// The node's `limits.max_key_bytes`.
        max: u64,
    },
    /// The value is longer than the limit; nothing was stored.
    #[error("value of {size} bytes exceeds the maximum of {max}")]
    ValueTooLarge {
        /// Value length in bytes.
        size: u64,
        /// The node's `limits.max_value_bytes`.
        max: u64,
    },
    /// A per-request quorum is outside `1..=N`.
    #[error("{name} = {value} is outside 1..={n}")]
    InvalidQuorum {
        /// `"r"` or `"w"`.
        name: String,
        /// The requested value.
        value: u64,
        /// The cluster's replication factor.
        n: u64,
    },
    /// The context is not one this store produced, or exceeds the clock bound.
    #[error("bad context: {reason}")]
    BadContext {
        /// What is wrong with it.
        reason: String,
    },
    /// Fewer than the needed replicas answered before the deadline.
    #[error(
        "{operation} quorum not reached: {acked} of {needed} needed {} ({asked} asked, {failed} failed{}{}{})",
        // A read's replicas answer; a write's acknowledge (a trial read "acknowledged" on a
        // get as a sign the read had written something). By the operation's name: it is a
        // string on the wire, from older nodes too.
        if operation == "get" { "answered" } else { "acknowledged" },
        // Asked replicas with no answer: silent at the deadline (named in `missing`), or still
        // out when too few were left to reach the quorum.
        match asked.saturating_sub(acked + failed) { 0 => String::new(), n => format!(", {n} not answered") },
        .first_failure.as_ref().map(|cause| format!("; first: {cause}")).unwrap_or_default(),
        if missing.is_empty() { String::new() } else { format!("; missing: {}", missing.join(", ")) }
    )]
    Quorum {
        /// `"get"`, `"put"` or `"delete"`.
        operation: String,
        /// R or W of the request.
        needed: u64,
        /// Replicas that answered successfully in time.
        acked: u64,
        /// Replicas the coordinator asked.
        asked: u64,
        /// Replicas that answered with an error.
        failed: u64,
        /// The first failed replica and its error (`None` when none failed: the others were
        /// still silent at the deadline). Absent in frames from older nodes.
        #[serde(default)]
        first_failure: Option<String>,
        /// The replicas that never answered, and why: "n2 (not asked: held down 3.2 s, its
        /// link failed, 4 failures)" for a primary the failure detector holds down
        /// (for how long, what marked it down, failures since) and no fallback stood in for, "n3
        /// (silent)" for one asked that had not answered at the deadline. Absent in frames
        /// from older nodes.
        #[serde(default)]
        missing: Vec<String>,
    },
    /// The put would leave more siblings than the limit; nothing was stored. Read the key and
    /// put with its context to reconcile the siblings first.
    #[error("too many siblings: the put would leave {count}, the limit is {max}; reconcile with a get's context")]
    TooManySiblings {
        /// Siblings the put would leave.
        count: u64,
        /// The node's `limits.max_siblings`.
        max: u64,
    },
    /// The local storage engine failed; the write was not acknowledged.
    #[error("storage error: {reason}")]
    Storage {
        /// The engine's message.
        reason: String,
    },
    /// A peer could not be reached (connection refused, or backing off after a failure): the
    /// request was never delivered to it.
    #[error("peer {node} is unreachable{}", why.as_ref().map_or(String::new(), |w| format!(" ({w})")))]
    PeerUnreachable {
        /// The peer's node id.
        node: String,
        /// Why, when the peer said so: it refused this node's handshake (a different cluster
        /// secret, say). Absent from older nodes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// The connection to a peer broke while the request was outstanding: the peer may or may
    /// not have acted on it. For a put forwarded to a preference-list node, the put may have
    /// been applied; it is not forwarded to another node, which would apply it a second time
    /// (a second version with its own dot, that a later reconciling put would not cover).
    #[error("the link to peer {node} broke before it answered: the request may or may not have been applied")]
    PeerLost {
        /// The peer's node id.
        node: String,
    },
    /// The request is for peers only and this connection has not proven it knows the cluster
    /// secret (SPEC §11), or its proof was wrong.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// What is missing or wrong.
        reason: String,
    },
    /// The node is shutting down and accepts no more work: the request was refused before
    /// anything was done with it.
    #[error("node is shutting down: the request was not applied; send it to another node")]
    ShuttingDown,
    /// Every other member refuses this node's handshake (another secret, Q or build), so it
    /// can reach no other replica: a client's request was refused before anything was done
    /// with it.
    #[error("this node's peers all refuse its handshake ({reason}): the request was not applied; send it to another node")]
    CutOff {
        /// The first peer's refusal.
        reason: String,
    },
    /// `admin throttle --rate N` asked for more than any rate may be.
    #[error("a rate of {rate} per second is above the most any rate may be, {max}")]
    RateTooHigh {
        /// The rate asked for.
        rate: u64,
        /// The bound.
        max: u64,
    },
    /// `admin throttle --stage NAME` named no background stage (only background stages have a
    /// rate to pin).
    #[error("no background stage is called {name:?}; the background stages are {known}")]
    NotABackgroundStage {
        /// The name given.
        name: String,
        /// The background stages, comma-separated.
        known: String,
    },
    /// A replica write, a forwarded put, a hint batch or a transfer batch reached a node
    /// that holds no copy of its key's partition in its membership view (the sender's view
    /// is newer or older than this node's). Nothing of it is stored: a node drops the partitions it does not hold, so a copy
    /// kept there could be the one a write's quorum counted on, and be lost.
    #[error(
        "{node} is not a replica of partition {partition} in its membership (version {version})"
    )]
    NotAReplica {
        /// The node that refused.
        node: String,
        /// The partition.
        partition: u32,
        /// The version of the node's membership.
        version: u64,
    },
    /// A membership change (`admin join|leave|remove|commit|move`) was refused.
    #[error("membership change refused: {reason}")]
    MembershipRefused {
        /// Why, naming the member or the pending transfers.
        reason: String,
    },
    /// The put would leave the key's versions together larger than one frame carries, so no
    /// get, replica write or transfer could move them; nothing was stored. Read the key and
    /// put with its context: that replaces the versions the context covers.
    #[error("object too large: the put would leave {versions} versions of {bytes} bytes together, over the {max} bytes one frame carries for this key ([limits] max_frame_bytes); reconcile with a get's context")]
    ObjectTooLarge {
        /// Encoded bytes of the versions the put would leave.
        bytes: u64,
        /// How many versions (siblings) that is.
        versions: u64,
        /// The most this key's versions may take (`max_frame_bytes` less the key and the
        /// frame's fields).
        max: u64,
    },
    /// A reply larger than half of `[limits] max_write_buffer_bytes` (at least
    /// `max_frame_bytes`: `LimitsSection::max_peer_frame_bytes`) was not sent (it might not be
    /// queued, and its reader would close the connection): this error went in its place, so
    /// the connection, and every request on it, stays up. Only a key whose versions together
    /// grew that large through replica merges gets it.
    #[error("reply of {bytes} bytes exceeds the most a reply may take, {max} bytes (half of [limits] max_write_buffer_bytes): not sent")]
    ReplyTooLarge {
        /// The reply frame's length.
        bytes: u64,
        /// The node's `max_peer_frame_bytes`.
        max: u64,
    },
    /// Made by the reader: the answer was an error this build cannot read, most likely one a
    /// newer node added (the protocol grows errors: `CutOff`, `ObjectTooLarge` and
    /// `ReplyTooLarge` came after clients already in use). The request failed with it, and
    /// the connection stays up, rather than the whole frame being rejected as malformed. A
    /// coordinator that forwarded a put passes on what it read: this error, naming the same
    /// kind. The name is cut to 64 bytes.
    #[error("the node answered with an error this build cannot read: {kind} (from a newer node? upgrade this client)")]
    Unreadable {
        /// The error's name as sent.
        kind: String,
    },
}

/// An unknown error's name, at most 64 bytes (cut at a character boundary): it comes from
/// the network and ends up in logs and error messages.
fn cut_name(mut name: String) -> String {
    const MAX_NAME_BYTES: usize = 64;
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The name of an error as sent (an enum is its variant's name, alone for a unit variant or
/// as the one key of a map), read without knowing the variant.
pub(crate) struct ErrorName(pub(crate) String);

impl<'de> serde::Deserialize<'de> for ErrorName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ErrorName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an error's name, or a map of one entry keyed by it")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ErrorName, E> {
                Ok(ErrorName(cut_name(name.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ErrorName, A::Error> {
                use serde::de::{Error, IgnoredAny};
                let Some((name, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? else {
                    return Err(A::Error::custom("an empty map names no error"));
                };
                if map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom("an error is a map of one entry"));
                }
                Ok(ErrorName(cut_name(name)))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

impl ServiceError {
    /// The variant's name, for counting errors by kind (load reports, stats) without reading a
    /// `Debug` string.
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Overloaded { .. } => "Overloaded",
            ServiceError::FrameTooLarge { .. } => "FrameTooLarge",
            ServiceError::MalformedFrame { .. } => "MalformedFrame",
            ServiceError::UnknownMessageType { .. } => "UnknownMessageType",
            ServiceError::NotARequest { .. } => "NotARequest",
            ServiceError::InvalidKey { .. } => "InvalidKey",
            ServiceError::ValueTooLarge { .. } => "ValueTooLarge",
            ServiceError::InvalidQuorum { .. } => "InvalidQuorum",
            ServiceError::BadContext { .. } => "BadContext",
            ServiceError::Quorum { .. } => "Quorum",
            ServiceError::TooManySiblings { .. } => "TooManySiblings",
            ServiceError::Storage { .. } => "Storage",
            ServiceError::PeerUnreachable { .. } => "PeerUnreachable",
            ServiceError::PeerLost { .. } => "PeerLost",
            ServiceError::Unauthorized { .. } => "Unauthorized",
            ServiceError::ShuttingDown => "ShuttingDown",
            ServiceError::CutOff { .. } => "CutOff",
            ServiceError::NotABackgroundStage { .. } => "NotABackgroundStage",
            ServiceError::RateTooHigh { .. } => "RateTooHigh",
            ServiceError::MembershipRefused { .. } => "MembershipRefused",
            ServiceError::NotAReplica { .. } => "NotAReplica",
            ServiceError::ObjectTooLarge { .. } => "ObjectTooLarge",
            ServiceError::ReplyTooLarge { .. } => "ReplyTooLarge",
            ServiceError::Unreadable { .. } => "Unreadable",
        }
    }
}
