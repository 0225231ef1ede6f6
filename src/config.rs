//! The node's configuration: a TOML file with every knob (SPEC §9), validated before a node
//! starts. Unknown keys and bad values are errors that name the key.

use serde::{Deserialize, Serialize};
use shoal_stages::controller::ControllerSettings;
use shoal_stages::event::{StageClass, StageId};
use shoal_stages::membership::{Member, Membership};
use shoal_stages::ring::NodeSpec;
use shoal_stages::seda::{PoolSettings, StageSpec};
use shoal_stages::storage::{SyncMode, DEFAULT_OBJECT_CACHE_BYTES, MAX_STORABLE_KEY_BYTES};
use shoal_stages::wire::FRAME_OVERHEAD_BYTES;
use shoal_stages::Durability;
use shoal_stages::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster secret used when the config sets none. Public, hence only for trying shoal out.
pub const DEFAULT_SECRET: &str = "shoal-insecure-default-secret";

/// Upper bounds on config values, so no value can overflow time arithmetic or allocate
/// absurdly at start (each is far beyond any sensible setting).
const MAX_INTERVAL_MS: u64 = 3_600_000;
/// See [`MAX_INTERVAL_MS`].
const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// See [`MAX_INTERVAL_MS`].
const MAX_BATCH: usize = 4096;
/// See [`MAX_INTERVAL_MS`].
const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;
/// See [`MAX_INTERVAL_MS`].
const MAX_VALUE_LIMIT_BYTES: usize = 256 * 1024 * 1024;
/// See [`MAX_INTERVAL_MS`].
const MAX_SIBLINGS_LIMIT: usize = 1024;
/// Upper bound of `storage.object_cache_mib` (64 GiB): past that a typo, not a plan.
const MAX_OBJECT_CACHE_MIB: usize = 65_536;
/// A background rate's bound (units per second), shared with `admin throttle`'s pins.
use shoal_stages::seda::MAX_RATE_PER_SEC;

/// Bytes a frame needs beyond its key and value (field names, context, quorum fields). A put
/// with a maximal key and value must fit in a frame, so `max_frame_bytes` is checked against it.
const FRAME_SLACK_BYTES: usize = 16 * 1024;

/// A config that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type); toml's message
    /// names the key and line.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `cluster.w`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's identity and addresses.
    pub node: NodeSection,
    /// Replication and partitioning, the same on every node.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Request size and connection bounds.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Durability.
    #[serde(default)]
    pub storage: StorageSection,
    /// The worker pool that serves every stage but the intake.
    #[serde(default)]
    pub pool: PoolSection,
    /// Per-stage concurrency and queues, by stage name (`[stages.storage]`); a name that is not
    /// in the stage table is an error naming the stages that are.
    #[serde(default)]
    pub stages: BTreeMap<StageId, StageTuning>,
    /// The resource controller that sets background stages' rates (Dynamo §6.5).
    #[serde(default)]
    pub controller: ControllerSettings,
    /// Merkle-tree anti-entropy and tombstone purge (Dynamo §4.7).
    #[serde(default)]
    pub anti_entropy: AntiEntropySection,
    /// Gossip of the membership (Dynamo §4.8).
    #[serde(default)]
    pub gossip: GossipSection,
    /// Ownership transfer after a membership change.
    #[serde(default)]
    pub transfer: TransferSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The Redis-protocol door.
    #[serde(default)]
    pub redis: RedisSection,
    /// Client authentication.
    #[serde(default)]
    pub security: SecuritySection,
}

/// `[security]`
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// When set, every client and admin request (native, Redis door, `/metrics`) must carry
    /// this token; a wrong one is refused `Unauthorized`. Peers prove the cluster secret.
    pub client_token: Option<String>,
}

impl std::fmt::Debug for SecuritySection {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.client_token.as_ref().map(|_| "<hidden>");
        f.debug_struct("SecuritySection")
            .field("client_token", &token)
            .finish()
    }
}

/// `[redis]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// Where RESP2 clients (redis-cli, redis-benchmark) connect; absent: no door.
    pub listen: Option<SocketAddr>,
    /// Most Redis connections at once (each has a thread).
    pub max_connections: usize,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            listen: None,
            max_connections: 256,
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where `/metrics` is served (Prometheus text format); absent: not served.
    pub listen: Option<SocketAddr>,
}

/// `[node]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Stable node name, unique in the cluster.
    pub id: String,
    /// Address clients and peers connect to.
    pub listen: SocketAddr,
    /// fjall data directory.
    pub data_dir: PathBuf,
    /// Relative capacity: partitions are assigned in proportion to it.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure zone (rack, data centre); preference lists prefer distinct zones.
    #[serde(default)]
    pub zone: Option<String>,
    /// This node is not in the initial ring: `cluster.members` are only its seeds, and it
    /// joins when an operator runs `shoal admin join` through any member.
    #[serde(default)]
    pub await_join: bool,
    /// A clean stop (SIGINT, SIGTERM) answers the client requests the node already took for up
    /// to this long, refusing new ones `ShuttingDown`, before it closes client connections and
    /// stops its stages; 0 stops at once, unanswered requests cut off.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_weight() -> u32 {
    1
}

/// Longer than a client request's default deadline (`request_timeout_ms`), so a drain
/// normally ends because everything was answered.
fn default_drain_timeout_ms() -> u64 {
    5000
}

/// `[cluster]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Q, the number of equal partitions of the ring (a power of two, fixed for life).
    pub partitions: u32,
    /// Replicas per key.
    pub n: usize,
    /// Default read quorum.
    pub r: usize,
    /// Default write quorum.
    pub w: usize,
    /// Default durable writes (Dynamo §6.1): how many replicas flush a put before the reply.
    /// A request may override it.
    pub durable_writes: Durability,
    /// Default deadline of a client request.
    pub request_timeout_ms: u64,
    /// Vector clock entries kept before the oldest are truncated.
    pub vclock_max_entries: usize,
    /// The members of the initial ring: one list, the same on every node, this node among
    /// them (a node that awaits a join: its seeds, itself not needed). Empty: a one-node
    /// cluster.
    pub members: Vec<MemberSection>,
    /// How often a peer the failure detector holds down is probed (Dynamo §4.8.3).
    pub probe_interval_ms: u64,
    /// How long a replica may stay silent before its replica goes to a fallback (§4.6).
    pub replica_timeout_ms: u64,
    /// Shared by every node of the cluster: seals client contexts (and later authenticates
    /// peers). The default is public, so a node using it warns at start.
    pub secret: String,
    /// Whether the contexts this node gives clients are bound to their key (another key's is
    /// then refused). Every build since takes both kinds; builds before take only unbound
    /// ones, so a rolling upgrade from one sets this false on every node until all run the
    /// new build, then true.
    pub key_bound_contexts: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            partitions: 64,
            n: 1,
            r: 1,
            w: 1,
            durable_writes: Durability::None,
            request_timeout_ms: 2000,
            vclock_max_entries: 10,
            members: Vec::new(),
            secret: DEFAULT_SECRET.to_string(),
            key_bound_contexts: true,
            probe_interval_ms: 1000,
            replica_timeout_ms: 500,
        }
    }
}

/// `[[cluster.members]]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// The member's node id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Its zone.
    #[serde(default)]
    pub zone: Option<String>,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Longest key (at most `MAX_STORABLE_KEY_BYTES`, 65469: fjall's key bound less what
    /// storage adds to a key).
    pub max_key_bytes: usize,
    /// Longest value.
    pub max_value_bytes: usize,
    /// Longest frame; must hold a maximal key and value.
    pub max_frame_bytes: usize,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most unsent reply bytes per connection before it is dropped as a slow reader.
    pub max_write_buffer_bytes: usize,
    /// Most siblings a key may have after a put; more is a `TooManySiblings` error.
    pub max_siblings: usize,
    /// Longest a connection may take to complete a frame it started (slowloris defence).
    pub frame_timeout_ms: u64,
}

impl LimitsSection {
    /// The largest frame between nodes (once a link's handshake is done) and the largest
    /// reply: half of `max_write_buffer_bytes`, so one always fits beside what is still
    /// unsent, and never below `max_frame_bytes`. Larger than a client's requests may be
    /// because a key's versions can outgrow `max_frame_bytes` through replica merges of
    /// concurrent puts, and every node must still carry them.
    pub fn max_peer_frame_bytes(&self) -> usize {
        (self.max_write_buffer_bytes / 2).max(self.max_frame_bytes)
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_key_bytes: MAX_STORABLE_KEY_BYTES,
            max_value_bytes: 1024 * 1024,
            max_frame_bytes: 1024 * 1024
                + MAX_STORABLE_KEY_BYTES
                + FRAME_OVERHEAD_BYTES
                + FRAME_SLACK_BYTES,
            max_connections: 1024,
            max_write_buffer_bytes: 16 * 1024 * 1024,
            max_siblings: 32,
            frame_timeout_ms: 30_000,
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `"none"`, `"periodic"` or `"always"` (group commit).
    pub sync: SyncMode,
    /// Flush interval of `"periodic"`.
    pub sync_interval_ms: u64,
    /// MiB of decoded objects kept in memory beside the engine (0: none), so a hot key's
    /// gets and read-before-write skip the engine's lookup.
    pub object_cache_mib: usize,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            sync: SyncMode::Always,
            sync_interval_ms: 100,
            object_cache_mib: DEFAULT_OBJECT_CACHE_BYTES >> 20,
        }
    }
}

/// `[anti_entropy]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiEntropySection {
    /// Whether replicas exchange trees and purge tombstones (trees are kept either way).
    pub enabled: bool,
    /// Mean time between exchanges of one partition with one other replica (jittered ±50 %).
    pub exchange_interval_ms: u64,
    /// Mean time between rot checks (full rebuilds) of one partition's tree (jittered).
    pub rebuild_interval_ms: u64,
    /// Pause before differing segments are compared again, so writes in flight settle.
    pub confirm_delay_ms: u64,
    /// Most differing keys one exchange moves (more wait for the next, which comes soon).
    pub max_keys_per_exchange: usize,
    /// How long a tombstone stays at least, once every replica holds it. Longer than any
    /// outage after which you would still expect a replica to come back with old data.
    pub tombstone_grace_ms: u64,
}

impl Default for AntiEntropySection {
    fn default() -> Self {
        AntiEntropySection {
            enabled: true,
            exchange_interval_ms: 60_000,
            rebuild_interval_ms: 24 * 3600 * 1000,
            confirm_delay_ms: 500,
            max_keys_per_exchange: 1000,
            tombstone_grace_ms: 24 * 3600 * 1000,
        }
    }
}

/// `[gossip]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipSection {
    /// Time between rounds: each exchanges digests with a random member and a seed.
    pub interval_ms: u64,
}

impl Default for GossipSection {
    fn default() -> Self {
        GossipSection { interval_ms: 1000 }
    }
}

/// `[transfer]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSection {
    /// Most objects per batch.
    pub batch_keys: usize,
    /// A batch stops growing at this many bytes (at most half of `limits.max_frame_bytes`).
    pub batch_bytes: usize,
    /// Wait after a commit before the catch-up pass (longer than gossip takes to reach every
    /// node plus a request's deadline).
    pub settle_ms: u64,
    /// How long a partition this node no longer holds is kept before it is dropped.
    pub cleanup_delay_ms: u64,
    /// How long a batch may wait for its acknowledgement.
    pub ack_timeout_ms: u64,
}

impl Default for TransferSection {
    fn default() -> Self {
        TransferSection {
            batch_keys: 512,
            batch_bytes: 256 * 1024,
            settle_ms: 5000,
            cleanup_delay_ms: 30_000,
            ack_timeout_ms: 10_000,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `"debug"`, `"info"`, `"warning"` or `"error"`.
    pub level: String,
    /// `"text"` or `"json"`.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The membership this config describes (version 1): this node, at `self_addr` unless
    /// `cluster.members` lists it with the address its peers should use, plus the members;
    /// without this node if it awaits a join. Every node of a new cluster derives the same.
    pub fn membership(&self, self_addr: SocketAddr) -> Result<Membership, ConfigError> {
        let mut specs = self.ring_members()?;
        if self.node.await_join {
            specs.retain(|spec| spec.id.as_str() != self.node.id);
        }
        let members = specs
            .into_iter()
            .map(|spec| {
                let listed = self
                    .cluster
                    .members
                    .iter()
                    .find(|m| m.id == spec.id.as_str());
                let addr = listed.map_or(self_addr, |m| m.addr);
                Member {
                    id: spec.id,
                    addr,
                    weight: spec.weight,
                    zone: spec.zone,
                }
            })
            .collect();
        Membership::new(1, self.cluster.partitions, members)
            .map_err(|e| invalid("cluster.members", e.to_string()))
    }

    /// The seeds gossip asks every round: the members the config lists, but this node.
    pub fn seeds(&self) -> Vec<NodeId> {
        self.cluster
            .members
            .iter()
            .filter(|m| m.id != self.node.id)
            .map(|m| NodeId::new(m.id.clone()))
            .collect()
    }

    /// The ring's members: this node plus `cluster.members`, checked for duplicates.
    pub fn ring_members(&self) -> Result<Vec<NodeSpec>, ConfigError> {
        let mut members = vec![NodeSpec {
            id: NodeId::new(self.node.id.clone()),
            weight: self.node.weight,
            zone: self.node.zone.clone(),
        }];
        let mut listed_self = false;
        for (i, m) in self.cluster.members.iter().enumerate() {
            let key = format!("cluster.members[{i}]");
            if !NodeId::new(m.id.clone()).is_valid() {
                return Err(invalid(
                    &format!("{key}.id"),
                    "must be 1..=64 printable ASCII characters without spaces",
                ));
            }
            if m.weight == 0 {
                return Err(invalid(&format!("{key}.weight"), "must be at least 1"));
            }
            if m.id == self.node.id && !listed_self {
                listed_self = true;
                // Listing oneself is allowed (one shared list), but the others deal the
                // initial ring from this entry: it must say what this node says of itself, or
                // their rings differ from its own and they refuse it.
                if m.weight != self.node.weight || m.zone != self.node.zone {
                    return Err(invalid(
                        &format!("{key}.weight"),
                        format!(
                            "this node's entry (weight {}, zone {:?}) differs from node.weight \
                             {} and node.zone {:?}: the other nodes deal the initial ring from \
                             the list, so make them the same",
                            m.weight, m.zone, self.node.weight, self.node.zone
                        ),
                    ));
                }
                continue;
            }
            // `members` starts with this node: a second listing of it is caught here too.
            if members.iter().any(|existing| existing.id.as_str() == m.id) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("{:?} is listed twice", m.id),
                ));
            }
            members.push(NodeSpec {
                id: NodeId::new(m.id.clone()),
                weight: m.weight,
                zone: m.zone.clone(),
            });
        }
        // The list is the initial ring, the same on every node: one that names others but not
        // this node gives it a ring of its own the others refuse (it serves nobody), or, for a
        // node meant to join a running cluster, lacks `await_join`.
        if members.len() > 1 && !listed_self && !self.node.await_join {
            return Err(invalid(
                "cluster.members",
                format!(
                    "lists other nodes but not this one ({id:?}): the list is the initial ring, \
                     the same on every node, so add {id:?} to it on every node; or, for a node \
                     that joins a running cluster (or joined one: keep it after the join), \
                     set node.await_join = true (and run `shoal admin join`)",
                    id = self.node.id
                ),
            ));
        }
        Ok(members)
    }
}

mod stages;
mod validate;

pub use stages::{PoolSection, StageTuning, BACKGROUND_THREAD_NAME};

#[cfg(test)]
mod tests;
