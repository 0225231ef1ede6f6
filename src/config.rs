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
}

fn default_weight() -> u32 {
    1
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
    /// The other members (this node is always a member). Empty: a one-node cluster.
    pub members: Vec<MemberSection>,
    /// How often a peer the failure detector holds down is probed (Dynamo §4.8.3).
    pub probe_interval_ms: u64,
    /// How long a replica may stay silent before its replica goes to a fallback (§4.6).
    pub replica_timeout_ms: u64,
    /// Shared by every node of the cluster: seals client contexts (and later authenticates
    /// peers). The default is public, so a node using it warns at start.
    pub secret: String,
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
    /// Longest key (at most 65535: fjall's key bound).
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

/// `[pool]`: the worker pool that serves every stage's queue but the intake's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Worker threads of the foreground stages; 0 means one per core plus one.
    pub workers: usize,
    /// Worker threads of the background stages (repair, handoff, anti-entropy, transfer and
    /// storage's background lane): these serve them (a send blocked on a full background
    /// queue also runs a batch of it), at `controller.background_nice` below the node's
    /// priority while the controller is on.
    pub background_workers: usize,
    /// Microseconds the one spinning worker polls for work after handling events, before it
    /// parks (0: never spin).
    pub spin_us: u64,
    /// Stages the intake's loop also runs between its turns (its thread domain): a request
    /// whose stages are all here is served on that one thread, with no wake-up. Workers
    /// still run them too when the loop is busy. Absent: parse, coordinate, replicate and
    /// storage. Never the commit stage: it waits for the disk, and the loop would stop
    /// reading meanwhile.
    pub intake_runs: Option<Vec<StageId>>,
    /// A turn of the intake's loop with at least this many connections to write hands their
    /// output to the reply-writer thread and goes on reading (quieter turns write inline: a
    /// hand-off costs a wake-up). 0: no writer thread. Absent: see
    /// [`Config::reply_writer_from`].
    pub reply_writer_from: Option<usize>,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            workers: 0,
            background_workers: DEFAULT_BACKGROUND_WORKERS,
            spin_us: DEFAULT_SPIN_US,
            intake_runs: None,
            reply_writer_from: None,
        }
    }
}

/// `[stages.NAME]`: every field optional; absent ones take the stage's default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageTuning {
    /// The most pool workers that serve the stage at once.
    pub threads: Option<usize>,
    /// Queue bound.
    pub queue_capacity: Option<usize>,
    /// Events a worker takes from the queue at a time.
    pub batch_max: Option<usize>,
    /// No longer used: spinning is the pool's (`[pool] spin_us`). Still accepted, so an older
    /// config loads; the node warns that it is ignored.
    pub spin_us: Option<u64>,
    /// Units of work per second a background stage may do (its rate gate); absent or 0 means
    /// unlimited. Only background stages take it. With the controller enabled it is only the
    /// starting rate: the controller sets the rate from its first period on.
    pub rate_per_sec: Option<u64>,
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

/// Default rate of a background stage (repair: keys repaired; handoff: hints delivered, per
/// second), so a burst of stale reads or a returning node does not turn into a burst of writes
/// that competes with foreground requests. The resource controller will adjust it.
const DEFAULT_BACKGROUND_RATE_PER_SEC: u64 = 1000;

/// Default microseconds the pool's one spinner polls (yielding) before parking. Waking a
/// parked thread costs ~50 µs on these VMs (benches/stage_hop.rs), about the gap between a
/// client's reply and its next request on loopback, so a short spin catches the next request
/// without a wake-up. Only one worker spins, and only after handling events: an idle node
/// does not spin.
const DEFAULT_SPIN_US: u64 = 200;
/// One background worker: on two cores a second would only take more CPU from the
/// foreground, and the background stages' gates pace their work anyway.
const DEFAULT_BACKGROUND_WORKERS: usize = 1;
/// The background workers' thread names (`background-0`, ...), as `ps -L` and the tests see
/// them.
pub const BACKGROUND_THREAD_NAME: &str = "background";
/// Connections to write in one loop turn before the reply writer takes them, when no write
/// waits for the disk (see [`Config::reply_writer_from`]).
const DEFAULT_REPLY_WRITER_FROM: usize = 4;

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

    /// The tuning given for a stage (all defaults when its section is absent).
    pub fn tuning(&self, stage: StageId) -> StageTuning {
        self.stages.get(&stage).cloned().unwrap_or_default()
    }

    /// The rate of a background stage's gate (`None`: unlimited, or a foreground stage).
    pub fn stage_rate(&self, stage: StageId) -> Option<u64> {
        if !stage.paced() {
            return None;
        }
        match self.tuning(stage).rate_per_sec {
            Some(rate) if rate > 0 => Some(rate),
            Some(_) => None,
            None => Some(DEFAULT_BACKGROUND_RATE_PER_SEC),
        }
    }

    /// The resolved spec of a stage: its row of the stage table, with the config's tuning.
    pub fn stage_spec(&self, stage: StageId) -> StageSpec {
        let row = stage.row();
        let tuning = self.tuning(stage);
        let tick = if stage == StageId::Storage && self.storage.sync == SyncMode::Periodic {
            Duration::from_millis(self.storage.sync_interval_ms)
        } else {
            Duration::from_millis(row.tick_ms)
        };
        StageSpec {
            name: row.name,
            class: row.class,
            threads: tuning.threads.unwrap_or(row.threads),
            queue_capacity: tuning.queue_capacity.unwrap_or(row.queue_capacity),
            batch_max: tuning.batch_max.unwrap_or(row.batch_max),
            tick,
        }
    }

    /// The worker pool's shape.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            workers: match self.pool.workers {
                0 => PoolSettings::default_workers(),
                n => n,
            },
            spin: Duration::from_micros(self.pool.spin_us),
            thread_name: "worker",
            nice_steps: 0,
        }
    }

    /// The background pool's shape: its own workers, which never spin (background work can
    /// wait a wake-up).
    pub fn background_pool_settings(&self) -> PoolSettings {
        PoolSettings {
            workers: self.pool.background_workers,
            spin: Duration::ZERO,
            thread_name: BACKGROUND_THREAD_NAME,
            nice_steps: if self.controller.enabled {
                self.controller.background_nice
            } else {
                0
            },
        }
    }

    /// The stages the intake's loop runs (`[pool] intake_runs`, or its default).
    pub fn intake_runs(&self) -> Vec<StageId> {
        match &self.pool.intake_runs {
            Some(stages) => stages.clone(),
            // Storage never waits for the disk (the commit stage flushes), so it joins the loop
            // whatever `sync` is; the commit stage never does.
            None => vec![
                StageId::Parse,
                StageId::Coordinate,
                StageId::Replicate,
                StageId::Storage,
            ],
        }
    }

    /// When the intake hands a turn's output to the reply writer (`[pool] reply_writer_from`,
    /// or its default): from 4 connections when no write waits for the disk (`sync = "none"`,
    /// `durable_writes = "none"`), where the loop is the bottleneck and the writer gave +16-24 %
    /// at 32 connections on 2 cores; otherwise never (0), because while writes wait for the
    /// commit stage the loop has time to spare, and the writer's wake-ups cost one node
    /// 31k against 39k ops/s with `sync = "always"`.
    pub fn reply_writer_from(&self) -> usize {
        self.pool.reply_writer_from.unwrap_or(
            if self.storage.sync == SyncMode::None
                && self.cluster.durable_writes == Durability::None
            {
                DEFAULT_REPLY_WRITER_FROM
            } else {
                0
            },
        )
    }

    /// Stages whose section still sets `spin_us`, which the pool no longer reads.
    pub fn ignored_spin_keys(&self) -> Vec<StageId> {
        self.stages
            .iter()
            .filter(|(_, tuning)| tuning.spin_us.is_some())
            .map(|(stage, _)| *stage)
            .collect()
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
            if m.id == self.node.id {
                continue; // listing oneself among the members is allowed (one shared list)
            }
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
        Ok(members)
    }
}

mod validate;

#[cfg(test)]
mod tests;
