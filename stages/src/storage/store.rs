//! The store behind the storage stage (SPEC §7): one database per node, with the keyspaces
//! `partitioned_objects` (`[partition][segment][key]` → encoded version set), `hints` (for
//! hinted handoff) and `meta` (the node's identity, format version and Q), kept apart so that
//! scans of one never see the others. Every write also updates its partition's Merkle tree
//! (SPEC §5, `trees.rs`). The logic lives here once; the bytes live in an [`Engine`]: fjall,
//! or memory for the simulator.

use super::cache::CacheStripe;
use super::engine::{Engine, FjallEngine, Space};
use super::trees::{record_write, TreeState, Trees};
use crate::event::{Hint, RebuildStep, TreeSummary, TreeView};
use crate::merkle::{object_hash, MerkleTree};
use crate::ring::{key_position, partition_of_position};
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use crate::wire::{decode_version_set, encode_version_set};
use crate::NodeId;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

mod actor;
mod empty;
mod hints;
mod identity;
mod limits;
mod partitions;

pub use actor::{actor_node, ActorOrigin};
use actor::{lock_actor, Actor};
use empty::EmptyWatch;
use limits::check_key;
pub use limits::{VersionLimits, MAX_STORABLE_KEY_BYTES};

use identity::{check_identity, Format};

/// Number of lock stripes guarding read-modify-write of objects. Two storage workers that touch
/// the same key serialise on its stripe; a power of two well above the worker count keeps
/// unrelated keys from waiting on each other.
const LOCK_STRIPES: usize = 256;

/// The object cache's budget unless the node sets one ([`Store::with_object_cache`]).
pub const DEFAULT_OBJECT_CACHE_BYTES: usize = 8 << 20;

/// The membership as gossip last saved it (encoded by `wire`; storage only keeps the bytes).
const META_MEMBERSHIP: &str = "membership";

/// Bytes before the key in a stored object key: partition (u32) and segment (u16).
const LOCATION_BYTES: usize = 6;

/// Why the store failed. Wrapped as `ServiceError::Storage` for clients.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// fjall reported an I/O or corruption error.
    #[error("fjall: {0}")]
    Engine(#[from] fjall::Error),
    /// The simulator's memory engine failed on purpose (an injected fault).
    #[error("simulated fault: {what}")]
    Simulated {
        /// What failed.
        what: &'static str,
    },
    /// A stored object did not decode.
    #[error("{0}")]
    Corrupt(#[from] crate::wire::CorruptObject),
    /// A version set did not encode (a bug: our own types always encode).
    #[error("{0}")]
    Encode(#[from] crate::wire::WireError),
    /// Version arithmetic refused the write (counter overflow).
    #[error("{0}")]
    Version(#[from] crate::versioning::VersionError),
    /// The data directory belongs to another node or another format.
    #[error("data directory belongs to {found}, not to this node ({expected})")]
    WrongNode {
        /// What `meta` says.
        found: String,
        /// This node's id.
        expected: String,
    },
    /// A coordinated put would leave the key's versions larger than one frame carries.
    #[error("the put would leave {versions} versions of {bytes} bytes together, over the {max} bytes a frame carries for this key")]
    ObjectTooLarge {
        /// Encoded bytes of the versions.
        bytes: usize,
        /// How many versions.
        versions: usize,
        /// The bound for this key (`VersionLimits::max_object_bytes`).
        max: usize,
    },
    /// A coordinated put would leave more siblings than allowed.
    #[error("the put would leave {count} siblings, the limit is {max}")]
    TooManySiblings {
        /// Siblings the put would leave.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The data directory was laid out for another Q.
    #[error("the data directory was laid out for {stored} partitions, the config says {configured}: Q is fixed for a cluster's life; set cluster.partitions = {stored} or start from an empty data directory")]
    PartitionsChanged {
        /// Q in `meta`.
        stored: u32,
        /// Q in the config.
        configured: u32,
    },
    /// The data directory was written with another N.
    #[error("the data directory was written with n = {stored} replicas, the config says {configured}: N is fixed for a cluster's life (a node with another would drop or miss copies the others count on); set cluster.n = {stored} or start from an empty data directory")]
    ReplicasChanged {
        /// N in `meta`.
        stored: u32,
        /// N in the config.
        configured: u32,
    },
    /// The data directory has a format this build does not read.
    #[error("the data directory has format {found:?}; this build reads formats 1 (migrated when opened) and 2")]
    UnknownFormat {
        /// The format `meta` names.
        found: String,
    },
    /// The journal file could not be found, opened or flushed.
    #[error("journal {path}: {error}")]
    Journal {
        /// The journal file, or the data directory searched for one.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The file that names this copy of the data directory (`instance.rs`) could not be read
    /// or replaced.
    #[error("the data directory's instance file, at {path}: {error}")]
    Instance {
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// An earlier journal flush failed: writes since may not be on disk behind it, so the
    /// node refuses writes and flushes until it restarts.
    #[error("an earlier journal flush failed ({reason}): writes and flushes are refused until the node restarts (fjall then recovers its journal up to the last whole batch)")]
    JournalFailed {
        /// The first failure.
        reason: String,
    },
    /// The key is longer than fjall can store (callers validate first; this is the backstop).
    #[error("key of {size} bytes exceeds the storable maximum of {MAX_STORABLE_KEY_BYTES}")]
    KeyTooLong {
        /// Key length.
        size: usize,
    },
}

impl StorageError {
    /// Whether the engine refused to open the directory because another process holds it.
    pub fn is_locked(&self) -> bool {
        matches!(self, StorageError::Engine(fjall::Error::Locked))
    }
}

/// The node's store: the object, hint and meta logic of shoal over an [`Engine`] (fjall in the
/// product, memory in the simulator and fast tests). Cheap to clone: every clone shares the
/// engine and the locks.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    /// The key locks, each with its stripe of the object cache (see `cache.rs`).
    locks: Arc<Vec<Mutex<CacheStripe>>>,
    /// Hints held, kept exact beside the hints keyspace (counted once at open, then changed
    /// under each key's lock as hints are added and deleted) so the handoff stage can report
    /// its backlog without a scan.
    hints_held: Arc<AtomicU64>,
    /// Q: objects are stored under their partition.
    partitions: u32,
    /// One Merkle tree per partition, updated by every write.
    trees: Arc<Trees>,
    /// Per partition, what lets the tombstone purge's pass (every key of every partition it
    /// leads, once per exchange interval) skip a partition that cannot hold a tombstone-only
    /// key (see [`TombstoneWatch`]). Why: with no deletes, that pass was most of a node's
    /// background reading, and it doubled a loaded cluster's p99 (1.0 against 0.6 ms with
    /// anti-entropy off; stop 44's note).
    tombstone_watch: Arc<Vec<Mutex<TombstoneWatch>>>,
    /// Per partition, whether a drop found it empty and nothing was written since, and where
    /// its drop pass is (see [`EmptyWatch`]): the cleanup's looks at a partition handed away
    /// answer from it, and each drop step resumes where the last stopped.
    empty_watch: Arc<EmptyWatch>,
    /// This node.
    node: NodeId,
    /// The actor that names this node's new dots and their counters' floor, shared by every
    /// clone (a removal may renew it: see `actor.rs`).
    actor: Arc<Mutex<Actor>>,
    /// Why the open kept the actor or named a new one (logged by the node at start).
    actor_origin: ActorOrigin,
}

/// What [`Store::transfer_batch`] read.
#[derive(Debug, Default)]
pub struct TransferRead {
    /// Keys with their versions, in stored order.
    pub objects: Vec<(Vec<u8>, VersionSet)>,
    /// Their encoded size.
    pub bytes: u64,
    /// The stored key to resume after (`None`: the scan is complete).
    pub resume: Option<Vec<u8>>,
}

/// One partition's tombstone writes and purge passes, for the purge to skip a partition no
/// tombstone reached. A pass that began at the partition's first key and ran to its end
/// meeting no tombstone-only key leaves the partition clean as of the tombstone writes
/// counted when it began; a later pass skips it while no tombstone write has been counted
/// since. A pass cut short, or one that met a tombstone (not yet old enough, or kept by a
/// member's check), leaves it to be looked at again. Nothing is known at open.
#[derive(Debug, Default)]
pub(super) struct TombstoneWatch {
    /// Writes whose versions included a tombstone, since open.
    pub(super) writes: u64,
    /// `writes` when the last clean pass began (`None`: none yet).
    pub(super) clean_as_of: Option<u64>,
    /// The pass under way: `writes` when it began, and whether it met a tombstone-only key.
    pub(super) pass: Option<(u64, bool)>,
}

/// What one look for purge candidates found.
#[derive(Debug, Default)]
pub struct PurgeLook {
    /// Tombstone-only keys old enough, with their sets.
    pub candidates: Vec<(Vec<u8>, VersionSet)>,
    /// Where the next look resumes (`None`: the partition's end).
    pub resume: Option<Vec<u8>>,
    /// Keys looked at.
    pub scanned: usize,
}

/// Whether a read from the engine enters the object cache: the foreground's reads and
/// writes do; background passes over many keys (anti-entropy's reads, purges, dropping a
/// partition) do not, or they would push the hot keys out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    No,
}

/// Where an object lives: its partition and segment, and its key in the objects keyspace.
struct Location {
    partition: u32,
    segment: u16,
    stored: Vec<u8>,
}

impl Store {
    /// Opens (or creates) the fjall database in `dir` for `node` with Q = `partitions`,
    /// refusing another node's directory or another Q, and migrating a format-1 directory.
    /// `now_ms` (the wall clock) raises the node's epoch (and names a new actor, if one is due).
    pub fn open(
        dir: &Path,
        node: &NodeId,
        partitions: u32,
        now_ms: u64,
    ) -> Result<Store, StorageError> {
        Store::with_engine(Arc::new(FjallEngine::open(dir)?), node, partitions, now_ms)
    }

    /// A store over `engine` for `node` with Q = `partitions`, refusing an engine that holds
    /// another node's data or was laid out for another Q. Trees start missing (anti-entropy has
    /// them rebuilt).
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        node: &NodeId,
        partitions: u32,
        now_ms: u64,
    ) -> Result<Store, StorageError> {
        let mut store = Store {
            engine,
            locks: stripes(DEFAULT_OBJECT_CACHE_BYTES),
            hints_held: Arc::new(AtomicU64::new(0)),
            partitions: partitions.max(1),
            trees: Arc::new(Trees::new(partitions.max(1))),
            tombstone_watch: Arc::new(
                (0..partitions.max(1))
                    .map(|_| Mutex::new(TombstoneWatch::default()))
                    .collect(),
            ),
            empty_watch: Arc::new(EmptyWatch::new(partitions.max(1))),
            node: node.clone(),
            actor: Arc::new(Mutex::new(Actor {
                name: node.clone(),
                floor: 0,
            })),
            actor_origin: ActorOrigin::NewDirectory,
        };
        if check_identity(store.engine.as_ref(), node, store.partitions)? == Format::Legacy {
            store.migrate_legacy()?;
        }
        let (actor, origin) = store.open_actor(now_ms)?;
        *lock_actor(&store.actor) = actor;
        store.actor_origin = origin;
        store.engine.persist()?;
        let held = store.count_hints()?.values().sum();
        store.hints_held.store(held, Ordering::Relaxed);
        Ok(store)
    }

    /// This store with an object cache of `bytes` (0: none) instead of the default. Before
    /// the store is shared: clones made earlier keep the old cache and locks.
    pub fn with_object_cache(mut self, bytes: usize) -> Store {
        self.locks = stripes(bytes);
        self
    }

    /// Bytes the object cache holds now.
    pub fn object_cache_bytes(&self) -> usize {
        self.locks
            .iter()
            .map(|lock| lock_stripe(lock).bytes())
            .sum()
    }

    fn locate(&self, key: &[u8]) -> Location {
        let position = key_position(key);
        let partition = partition_of_position(self.partitions, position).0;
        let segment = self.trees.shape().segment_of_position(position);
        let mut stored = Vec::with_capacity(LOCATION_BYTES + key.len());
        stored.extend_from_slice(&partition.to_be_bytes());
        stored.extend_from_slice(&segment.to_be_bytes());
        stored.extend_from_slice(key);
        Location {
            partition,
            segment,
            stored,
        }
    }

    /// The stored versions of `key` (empty if never written).
    pub fn read(&self, key: &[u8]) -> Result<VersionSet, StorageError> {
        self.read_admitting(key, Admit::Yes)
    }

    fn read_admitting(&self, key: &[u8], admit: Admit) -> Result<VersionSet, StorageError> {
        check_key(key)?;
        let mut stripe = self.lock(key);
        let location = self.locate(key);
        Ok(self.load(&mut stripe, key, &location, admit)?.0)
    }

    /// The stored set of the key at `location` and the hash of its stored bytes (`None` if
    /// absent), from the cache or the engine (then cached if `admit`). The caller holds the
    /// key's lock (`stripe`), so the cache and the engine cannot disagree meanwhile.
    fn load(
        &self,
        stripe: &mut CacheStripe,
        key: &[u8],
        location: &Location,
        admit: Admit,
    ) -> Result<(VersionSet, Option<u64>), StorageError> {
        if let Some(cached) = stripe.get(&location.stored) {
            return Ok((cached.set.clone(), Some(cached.hash)));
        }
        let Some(bytes) = self.engine.get(Space::Objects, &location.stored)? else {
            return Ok((VersionSet::new(), None));
        };
        let set = decode_version_set(&bytes)?;
        let hash = object_hash(key, &bytes);
        if admit == Admit::Yes {
            stripe.insert(&location.stored, set.clone(), hash, bytes.len());
        }
        Ok((set, Some(hash)))
    }

    /// The stored set of the key at `location` for a write under its lock (`stripe`): moved
    /// out of the cache, not copied (the entry stays, emptied, and the caller refreshes,
    /// restores or removes it before the lock goes), or read from the engine (and cached);
    /// its hash, and whether it came from the cache.
    fn take_or_load(
        &self,
        stripe: &mut CacheStripe,
        key: &[u8],
        location: &Location,
    ) -> Result<(VersionSet, Option<u64>, bool), StorageError> {
        if let Some((set, hash)) = stripe.take(&location.stored) {
            return Ok((set, Some(hash), true));
        }
        let (set, hash) = self.load(stripe, key, location, Admit::Yes)?;
        Ok((set, hash, false))
    }

    /// The coordinator's write (SPEC §4): under the key's lock, reads the stored set, creates
    /// the new version with a dot of this node's actor ([`Store::actor`]), and stores the
    /// result. Returns the set after the write and the new version. Durable only after
    /// [`Store::persist`].
    pub fn coordinate_put(
        &self,
        key: &[u8],
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        self.coordinate(key, (context, false), value, now_ms, limits)
    }

    /// [`Store::coordinate_put`] that supersedes every version this node holds for the key,
    /// whatever the context covers (the Redis door's `SET`: last writer wins here; versions
    /// only other replicas hold stay siblings). Under the key's lock, so concurrent overwrites
    /// through this node never make siblings.
    pub fn coordinate_overwrite(
        &self,
        key: &[u8],
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        self.coordinate(key, (context, true), value, now_ms, limits)
    }

    fn coordinate(
        &self,
        key: &[u8],
        (context, overwrite): (&VClock, bool),
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        check_key(key)?;
        let mut stripe = self.lock(key);
        let location = self.locate(key);
        // The entry is refreshed by the write or removed if anything before it fails (the
        // engine still holds the old set).
        let (mut set, old_hash, _) = self.take_or_load(&mut stripe, key, &location)?;
        let written = || -> Result<Version, StorageError> {
            let covering;
            let context = if overwrite {
                let mut all = context.clone();
                all.merge(&set.context());
                covering = all;
                &covering
            } else {
                context
            };
            // Read under the key's lock: a drop of this key renewed the actor (`before_drop`)
            // before it removed the key under the same lock.
            let actor = self.current_actor();
            let version = set.coordinate_put_above(
                &actor.name,
                context,
                value,
                now_ms,
                limits.max_clock_entries,
                actor.floor,
            )?;
            self.made_dot(version.dot.counter);
            // Bounded here, at the coordinator, and not on replica merges: a replica must
            // accept what a coordinator accepted, or replicas would diverge.
            if set.len() > limits.max_siblings {
                return Err(StorageError::TooManySiblings {
                    count: set.len(),
                    max: limits.max_siblings,
                });
            }
            let bytes = encode_version_set(&set)?;
            // Bounded here for the same reason: replicas, hints and transfers carry what a
            // coordinator accepted, whole.
            let max = limits.max_object_bytes(key);
            if bytes.len() > max {
                return Err(StorageError::ObjectTooLarge {
                    bytes: bytes.len(),
                    versions: set.len(),
                    max,
                });
            }
            self.write_encoded(&mut stripe, key, &location, old_hash, &set, bytes)?;
            Ok(version)
        };
        match written() {
            Ok(version) => Ok((set, version)),
            Err(error) => {
                stripe.remove(&location.stored);
                Err(error)
            }
        }
    }

    /// A replica's write: merges `incoming` into the stored set under the key's lock and stores
    /// the result if it changed. Returns the merged set.
    pub fn merge(&self, key: &[u8], incoming: &VersionSet) -> Result<VersionSet, StorageError> {
        Ok(self.merge_changed(key, incoming)?.0)
    }

    /// [`Store::merge`], also saying whether the stored set changed.
    fn merge_changed(
        &self,
        key: &[u8],
        incoming: &VersionSet,
    ) -> Result<(VersionSet, bool), StorageError> {
        check_key(key)?;
        let mut stripe = self.lock(key);
        let location = self.locate(key);
        // Put back or refreshed before the lock goes; removed if the write fails.
        let (mut set, old_hash, was_cached) = self.take_or_load(&mut stripe, key, &location)?;
        let changed = set.merge(incoming);
        if !changed {
            // (A set `load` just read was cached by it, unmoved.)
            if was_cached {
                stripe.restore(&location.stored, set.clone());
            }
        } else if let Err(error) = self.write(&mut stripe, key, &location, old_hash, &set) {
            stripe.remove(&location.stored);
            return Err(error);
        }
        Ok((set, changed))
    }

    /// Stores `set` for `key` (whose stored bytes hashed to `old_hash`, read under the key's
    /// lock that the caller holds as `stripe`), updates the partition's tree in the same
    /// critical section, and refreshes the cached set once the engine took it.
    fn write(
        &self,
        stripe: &mut CacheStripe,
        key: &[u8],
        location: &Location,
        old_hash: Option<u64>,
        set: &VersionSet,
    ) -> Result<(), StorageError> {
        let bytes = encode_version_set(set)?;
        self.write_encoded(stripe, key, location, old_hash, set, bytes)
    }

    /// [`Store::write`] of a set already encoded as `bytes`.
    fn write_encoded(
        &self,
        stripe: &mut CacheStripe,
        key: &[u8],
        location: &Location,
        old_hash: Option<u64>,
        set: &VersionSet,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        // Pair assertion around the disk: what we write must read back as what we meant.
        debug_assert_eq!(decode_version_set(&bytes).ok().as_ref(), Some(set));
        let new_hash = object_hash(key, &bytes);
        let mut tree = self.trees.lock(location.partition);
        self.engine
            .insert(Space::Objects, &location.stored, &bytes)?;
        if let Some(tree) = tree.as_deref_mut() {
            record_write(
                tree,
                location.segment,
                &location.stored,
                old_hash,
                Some(new_hash),
            );
        }
        if set.versions().iter().any(Version::is_tombstone) {
            self.watch_tombstones(location.partition, |watch| watch.writes += 1);
        }
        // After the engine took it: a scan for a drop that begins from here on sees it.
        self.empty_watch.wrote(location.partition);
        stripe.refresh(&location.stored, set.clone(), new_hash, bytes.len());
        Ok(())
    }

    /// Keeps the encoded membership, durably.
    pub fn save_membership(&self, bytes: &[u8]) -> Result<(), StorageError> {
        self.engine
            .insert(Space::Meta, META_MEMBERSHIP.as_bytes(), bytes)?;
        // A membership change must survive a crash whatever `sync` says: a node that forgot
        // a commit would route by a ring the others left.
        self.engine.persist().map(drop)
    }

    /// The membership gossip last saved, if any.
    pub fn load_membership(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(Space::Meta, META_MEMBERSHIP.as_bytes())
    }

    /// Hands the writes this process still buffers to the OS (see [`Engine::write_out`]):
    /// after it they survive the process's death.
    pub fn write_out(&self) -> Result<(), StorageError> {
        self.engine.write_out()
    }

    /// Flushes the journal to disk (fdatasync): every write before this call is durable after
    /// it. How long the disk took.
    pub fn persist(&self) -> Result<Duration, StorageError> {
        self.engine.persist()
    }

    /// Starts writing the journal out without waiting for the disk (`sync = "none"`): makes
    /// nothing durable, but keeps the engine's own syncs, which writers wait for, short. Its
    /// failure is final when it is a sync's (see [`Engine::write_back`]'s fjall engine).
    pub fn write_back(&self) -> Result<(), StorageError> {
        self.engine.write_back()
    }

    /// Why this store refuses every write until the node restarts, or `None` while it
    /// takes them (see [`Engine::failure`]).
    pub fn failure(&self) -> Option<String> {
        self.engine.failure()
    }

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, CacheStripe> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.locks.len();
        lock_stripe(&self.locks[stripe])
    }
}

/// Takes one key-lock stripe. A poisoned stripe means another worker panicked mid-write: the
/// data lives in the engine, so carrying on is safe once the stripe's cache, which may no
/// longer match it, is emptied.
fn lock_stripe(lock: &Mutex<CacheStripe>) -> MutexGuard<'_, CacheStripe> {
    lock.lock().unwrap_or_else(|poisoned| {
        let mut stripe = poisoned.into_inner();
        stripe.clear();
        lock.clear_poison();
        stripe
    })
}

/// The key-lock stripes, sharing `cache_bytes` of object cache between them.
fn stripes(cache_bytes: usize) -> Arc<Vec<Mutex<CacheStripe>>> {
    let per_stripe = cache_bytes / LOCK_STRIPES;
    Arc::new(
        (0..LOCK_STRIPES)
            .map(|_| Mutex::new(CacheStripe::new(per_stripe)))
            .collect(),
    )
}
