//! The operator's messages: `admin members`, `ring`, `stats` and `throttle` replies, the
//! client token, and the per-stage figures they carry.

use crate::membership::Membership;
use crate::seda::{ControllerState, StageSnapshot, StageThrottle};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One member as `admin members` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member.
    pub node: NodeId,
    /// Where it listens.
    pub addr: String,
    /// Whether the answering node sends it requests (its failure detector's view).
    pub up: bool,
    /// How long it has been down, milliseconds.
    pub down_for_ms: u64,
    /// Hints the answering node holds for it.
    pub hints_pending: u64,
    /// It has left: it holds no partition under any ring a coordinator may use
    /// (`Membership::has_left`), so no request goes to it and `up` says nothing of it.
    /// Absent from older nodes' replies.
    #[serde(default)]
    pub left: bool,
    /// What marked it down ("silent past the replica timeout", "its link failed", ...);
    /// empty when up. Absent from older nodes' replies.
    #[serde(default)]
    pub why: String,
}

/// Reply to `Members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReply {
    /// The answering node.
    pub node: NodeId,
    /// Membership version.
    pub version: u64,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// `Auth`: the client token a node with `[security] client_token` requires.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// The token.
    pub token: String,
}

impl fmt::Debug for AuthRequest {
    /// Never prints the token (logs and traces show messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthRequest { token: <hidden> }")
    }
}

/// Reply to `Ring`: what a partition-aware client routes by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingReply {
    /// The answering node's membership: members, their addresses and the ring.
    pub membership: Membership,
    /// The cluster's N (replicas per key): the preference-list length to route by.
    pub replicas: u8,
    /// The answering node's default request deadline (`cluster.request_timeout_ms`): every
    /// client request is answered by then, so a client that waits much longer for a node is
    /// waiting for a stalled one (0: a build before it was told).
    #[serde(default)]
    pub request_timeout_ms: u64,
}

/// End-to-end latency of one client operation at this node, measured by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationLatency {
    /// `"get"`, `"put"` or `"delete"`.
    pub operation: String,
    /// Requests answered (successfully or not).
    pub count: u64,
    /// Median, microseconds.
    pub latency_us_p50: u64,
    /// 99th percentile, microseconds.
    pub latency_us_p99: u64,
    /// 99.9th percentile, microseconds.
    pub latency_us_p999: u64,
}

/// Reply to a stats request: the node's live per-stage statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The answering node.
    pub node: NodeId,
    /// One row per stage, in pipeline order.
    pub stages: Vec<StageSnapshot>,
    /// Client operation latencies seen by this node's coordinator.
    pub operations: Vec<OperationLatency>,
    /// The resource controller's state (boxed: every `Message` is as large as its largest
    /// variant, and stats replies are rare).
    #[serde(default)]
    pub controller: Box<ControllerState>,
    /// Every background stage's gate, as `admin throttle` shows it.
    #[serde(default)]
    pub background: Vec<StageThrottle>,
    /// Why the node's storage refuses every write until it restarts (a journal flush
    /// failed), or `None`: such a node still answers reads and stats, so this is where an
    /// operator sees it.
    #[serde(default)]
    pub storage_failure: Option<String>,
}

/// What `admin throttle` changes, if anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThrottleChange {
    /// Only show the state.
    Show,
    /// Pin a background stage's rate (units per second; 0 pauses it).
    Pin {
        /// The stage's name.
        stage: String,
        /// Units per second.
        rate_per_sec: u64,
    },
    /// Hand a background stage back to the controller.
    Auto {
        /// The stage's name.
        stage: String,
    },
}

/// Admin → node: show, pin or release background rates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRequest {
    /// What to change before answering.
    pub change: ThrottleChange,
}

/// Node → admin: the controller's state and every background stage's rate, after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleReply {
    /// The answering node.
    pub node: NodeId,
    /// The resource controller.
    pub controller: ControllerState,
    /// One row per background stage, in stage-table order.
    pub stages: Vec<StageThrottle>,
}
