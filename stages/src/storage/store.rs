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

/// Longest key fjall accepts (its keys carry a u16 length; longer ones panic inside it).
pub const MAX_STORABLE_KEY_BYTES: usize = u16::MAX as usize;

/// Hints counted per engine scan by `count_hints`, so counting a large backlog does not
/// load it whole.
const COUNT_CHUNK: usize = 1024;

/// Number of lock stripes guarding read-modify-write of objects. Two storage workers that touch
/// the same key serialise on its stripe; a power of two well above the worker count keeps
/// unrelated keys from waiting on each other.
const LOCK_STRIPES: usize = 256;

/// The object cache's budget unless the node sets one ([`Store::with_object_cache`]).
pub const DEFAULT_OBJECT_CACHE_BYTES: usize = 8 << 20;

/// On-disk format version written to `meta`. Format 1 kept objects by key alone; a format-1
/// directory is migrated when opened. A node refuses any other format.
const FORMAT_VERSION: &[u8] = b"2";
const LEGACY_FORMAT: &[u8] = b"1";
const META_NODE_ID: &str = "node_id";
const META_FORMAT: &str = "format";
/// Q, which the layout depends on (objects are stored under their partition).
const META_PARTITIONS: &str = "partitions";
/// The node's epoch in this directory: the floor of its new dots' counters, set from the wall
/// clock (µs) when the directory is created, so a node that lost its data never reuses a dot
/// that lives on in other replicas (two writes with one dot would never converge).
const META_EPOCH: &str = "epoch";
/// The membership as gossip last saved it (encoded by `wire`; storage only keeps the bytes).
const META_MEMBERSHIP: &str = "membership";

/// Bytes before the key in a stored object key: partition (u32) and segment (u16).
const LOCATION_BYTES: usize = 6;

/// Objects moved per step of a format-1 migration (each step is flushed before the next).
const MIGRATION_CHUNK: usize = 1024;

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

/// Bounds on the versions a coordinated put may create.
#[derive(Clone, Copy, Debug)]
pub struct VersionLimits {
    /// Clock entries kept in a new version's past (truncation beyond).
    pub max_clock_entries: usize,
    /// Siblings a key may have after a coordinated put. Why: every blind put adds a sibling,
    /// every get returns them all, and a reply must fit in a frame a client accepts.
    pub max_siblings: usize,
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
    /// New dots' counters start above this (see `META_EPOCH`).
    counter_floor: u64,
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

/// What one look for purge candidates found.
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
    /// `now_ms` (the wall clock) sets the node's epoch if the directory is new.
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
            counter_floor: 0,
        };
        if check_identity(store.engine.as_ref(), node, store.partitions)? == Format::Legacy {
            store.migrate_legacy()?;
        }
        store.counter_floor = match store.engine.get(Space::Meta, META_EPOCH.as_bytes())? {
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::UnknownFormat {
                    found: "2 with an unreadable epoch".to_string(),
                })?,
            // A directory from before epochs, or one whose creation crashed before its epoch
            // was flushed: stamp one now (raising the floor is always safe).
            None => {
                let epoch = now_ms.saturating_mul(1000);
                store
                    .engine
                    .insert(Space::Meta, META_EPOCH.as_bytes(), &epoch.to_be_bytes())?;
                epoch
            }
        };
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

    /// Moves format 1's objects (keyed by key alone) under their partition and segment, a
    /// flushed chunk at a time, then stamps format 2. A crash midway leaves format 1 with the
    /// objects not yet moved, and the next open carries on (moving an object twice writes the
    /// same bytes).
    fn migrate_legacy(&self) -> Result<(), StorageError> {
        loop {
            let chunk = self
                .engine
                .scan(Space::LegacyObjects, &[], None, MIGRATION_CHUNK)?;
            if chunk.is_empty() {
                break;
            }
            for (key, bytes) in &chunk {
                let location = self.locate(key);
                self.engine
                    .insert(Space::Objects, &location.stored, bytes)?;
                self.engine.remove(Space::LegacyObjects, key)?;
            }
            self.engine.persist()?;
        }
        self.engine
            .insert(Space::Meta, META_FORMAT.as_bytes(), FORMAT_VERSION)?;
        Ok(())
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

    /// The coordinator's write (SPEC §4): under the key's lock, reads the stored set, creates
    /// the new version with a dot of `node`, and stores the result. Returns the set after the
    /// write and the new version. Durable only after [`Store::persist`].
    pub fn coordinate_put(
        &self,
        key: &[u8],
        node: &NodeId,
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        self.coordinate(key, node, (context, false), value, now_ms, limits)
    }

    /// [`Store::coordinate_put`] that supersedes every version this node holds for the key,
    /// whatever the context covers (the Redis door's `SET`: last writer wins here; versions
    /// only other replicas hold stay siblings). Under the key's lock, so concurrent overwrites
    /// through this node never make siblings.
    pub fn coordinate_overwrite(
        &self,
        key: &[u8],
        node: &NodeId,
        context: &VClock,
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        self.coordinate(key, node, (context, true), value, now_ms, limits)
    }

    fn coordinate(
        &self,
        key: &[u8],
        node: &NodeId,
        (context, overwrite): (&VClock, bool),
        value: Option<Vec<u8>>,
        now_ms: u64,
        limits: &VersionLimits,
    ) -> Result<(VersionSet, Version), StorageError> {
        check_key(key)?;
        let mut stripe = self.lock(key);
        let location = self.locate(key);
        let (mut set, old_hash) = self.load(&mut stripe, key, &location, Admit::Yes)?;
        let covering;
        let context = if overwrite {
            let mut all = context.clone();
            all.merge(&set.context());
            covering = all;
            &covering
        } else {
            context
        };
        let version = set.coordinate_put_above(
            node,
            context,
            value,
            now_ms,
            limits.max_clock_entries,
            self.counter_floor,
        )?;
        // Bounded here, at the coordinator, and not on replica merges: a replica must accept
        // what a coordinator accepted, or replicas would diverge.
        if set.len() > limits.max_siblings {
            return Err(StorageError::TooManySiblings {
                count: set.len(),
                max: limits.max_siblings,
            });
        }
        self.write(&mut stripe, key, &location, old_hash, &set)?;
        Ok((set, version))
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
        let (mut set, old_hash) = self.load(&mut stripe, key, &location, Admit::Yes)?;
        let before = set.clone();
        set.merge(incoming);
        let changed = set != before;
        if changed {
            self.write(&mut stripe, key, &location, old_hash, &set)?;
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
        stripe.refresh(&location.stored, set.clone(), new_hash, bytes.len());
        Ok(())
    }

    /// The fallback's side of sloppy quorum (Dynamo §4.6): merges `incoming` into the hint
    /// kept for `target` (the node the replica was meant for), apart from this node's own
    /// objects. Durable like any write (group commit). Returns the hint's versions.
    pub fn store_hint(
        &self,
        target: &NodeId,
        key: &[u8],
        incoming: &VersionSet,
    ) -> Result<VersionSet, StorageError> {
        check_key(key)?;
        let _stripe = self.lock(key);
        let hint_key = hint_key(key, target);
        let (mut set, new) = match self.engine.get(Space::Hints, &hint_key)? {
            Some(bytes) => (decode_version_set(&bytes)?, false),
            None => (VersionSet::new(), true),
        };
        set.merge(incoming);
        self.engine
            .insert(Space::Hints, &hint_key, &encode_version_set(&set)?)?;
        if new {
            self.hints_held.fetch_add(1, Ordering::Release);
        }
        Ok(set)
    }

    /// The versions of `key` this node can serve: its own objects merged with any hints it
    /// holds for other nodes (so a read during a failure sees writes taken by fallbacks).
    pub fn read_with_hints(&self, key: &[u8]) -> Result<VersionSet, StorageError> {
        let mut set = self.read(key)?;
        // Almost always no hint is held: skip the range scan (an iterator over every level of
        // the hints keyspace, a fifth of a read's cost) when the exact count says so. A hint
        // counted only after its insert is one written concurrently with this read.
        if self.holds_no_hints() {
            return Ok(set);
        }
        for (_, bytes) in self
            .engine
            .scan(Space::Hints, &hint_prefix(key), None, usize::MAX)?
        {
            set.merge(&decode_version_set(&bytes)?);
        }
        Ok(set)
    }

    /// Up to `limit` hints, in key order, starting after `after` (a hint key from an earlier
    /// batch, so a scan makes progress past hints it cannot deliver yet).
    pub fn hints_batch(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let mut out = Vec::new();
        if self.holds_no_hints() {
            // Handoff asks every tick. Once a backlog is delivered, the hints keyspace holds
            // a tombstone per hint until fjall compacts them, and a scan from the start walks
            // them all: 15k on each sender after issue 9's benchmark, five times a second on
            // the storage stage, ahead of foreground reads, for minutes. The exact count
            // says there is nothing to find.
            return Ok(out);
        }
        for (hint_key, bytes) in self.engine.scan(Space::Hints, &[], after, limit)? {
            let Some((key, target)) = split_hint_key(&hint_key) else {
                continue;
            };
            // A hint that does not decode is skipped (and kept for inspection) rather than
            // stopping every later hint from being delivered.
            let Ok(versions) = decode_version_set(&bytes) else {
                continue;
            };
            out.push(Hint {
                hint_key,
                target,
                key,
                versions,
            });
        }
        Ok(out)
    }

    /// Deletes a delivered hint, but only if it still holds exactly what was delivered (a
    /// write that arrived meanwhile must be delivered too). Returns whether it was deleted.
    pub fn delete_hint_if_unchanged(&self, hint: &Hint) -> Result<bool, StorageError> {
        let _stripe = self.lock(&hint.key);
        match self.engine.get(Space::Hints, &hint.hint_key)? {
            Some(bytes) if decode_version_set(&bytes)? == hint.versions => {
                self.engine.remove(Space::Hints, &hint.hint_key)?;
                // Only this path removes hints, under the key's lock, after seeing it there.
                let _ = self
                    .hints_held
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether no hint is held (exact): reads and scans of the hints keyspace can be skipped.
    /// A hint counted only after its insert is one written concurrently with the caller.
    fn holds_no_hints(&self) -> bool {
        self.hints_held.load(Ordering::Acquire) == 0
    }

    /// Hints held in all (exact; no scan).
    pub fn hints_held(&self) -> u64 {
        self.hints_held.load(Ordering::Relaxed)
    }

    /// Hints waiting for delivery, per intended node (no scan when none is held: see
    /// [`Store::hints_batch`]).
    pub fn pending_hints(&self) -> Result<BTreeMap<NodeId, u64>, StorageError> {
        if self.holds_no_hints() {
            return Ok(BTreeMap::new());
        }
        self.count_hints()
    }

    /// Counts the hints per intended node by a scan of the hints keyspace (at open, and the
    /// simulator's check that the kept count agrees).
    pub fn count_hints(&self) -> Result<BTreeMap<NodeId, u64>, StorageError> {
        let mut counts = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self
                .engine
                .scan(Space::Hints, &[], after.as_deref(), COUNT_CHUNK)?;
            let done = chunk.len() < COUNT_CHUNK;
            for (hint_key, _) in &chunk {
                if let Some((_, target)) = split_hint_key(hint_key) {
                    *counts.entry(target).or_insert(0) += 1;
                }
            }
            after = chunk.into_iter().last().map(|(key, _)| key);
            if done || after.is_none() {
                return Ok(counts);
            }
        }
    }

    /// Every object, in key order (the simulator's convergence check; not for the product's
    /// request path).
    pub fn objects(&self) -> Result<Vec<(Vec<u8>, VersionSet)>, StorageError> {
        let mut objects = self
            .engine
            .scan(Space::Objects, &[], None, usize::MAX)?
            .into_iter()
            .map(|(stored, bytes)| {
                let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
                Ok((key, decode_version_set(&bytes)?))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(objects)
    }

    /// The tree anti-entropy compares for `partition`: its root and key count, with the branch
    /// hashes (`branches` = `None`) or the segment hashes under the branches listed. Not ready
    /// while the partition's first tree is being built.
    pub fn tree_view(&self, partition: u32, branches: Option<&[u16]>) -> TreeView {
        let Some(state) = self.trees.lock(partition) else {
            return TreeView::missing();
        };
        let Some(tree) = state.serving() else {
            return TreeView::missing();
        };
        let hashes = match branches {
            None => tree.branch_hashes().to_vec(),
            Some(branches) => branches
                .iter()
                .flat_map(|&b| tree.segment_hashes(b).iter().copied())
                .collect(),
        };
        TreeView {
            ready: true,
            root: tree.root(),
            keys: tree.keys(),
            hashes,
        }
    }

    /// About how many keys one segment of `partition` holds: its tree's key count over its
    /// segments, rounded up, at least 1 (1 while no tree serves). Storage sizes a digest
    /// scan's steps with it.
    pub fn keys_per_segment(&self, partition: u32) -> usize {
        let segments = self.trees.shape().segments() as u64;
        let keys = self
            .trees
            .lock(partition)
            .and_then(|state| state.serving().map(MerkleTree::keys))
            .unwrap_or(0);
        usize::try_from(keys.div_ceil(segments.max(1)))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// The keys of `partition` in `segments`, each with its object hash (what the tree was
    /// built from), in stored order; at most `limit`.
    pub fn segment_digests(
        &self,
        partition: u32,
        segments: &[u16],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        self.segment_digests_after(partition, segments, None, limit)
    }

    /// [`Store::segment_digests`], the first segment's keys only after the key `after`
    /// (an exchange going on past where its last lists stopped short).
    pub fn segment_digests_after(
        &self,
        partition: u32,
        segments: &[u16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let mut out = Vec::new();
        for (i, &segment) in segments.iter().enumerate() {
            let mut prefix = partition.to_be_bytes().to_vec();
            prefix.extend_from_slice(&segment.to_be_bytes());
            let start = match after {
                Some(key) if i == 0 => {
                    let mut stored = prefix.clone();
                    stored.extend_from_slice(key);
                    Some(stored)
                }
                _ => None,
            };
            let left = limit.saturating_sub(out.len());
            for (stored, bytes) in
                self.engine
                    .scan(Space::Objects, &prefix, start.as_deref(), left)?
            {
                let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
                let hash = object_hash(&key, &bytes);
                out.push((key, hash));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The stored versions of each of `keys` that has any, in the order given.
    pub fn read_many(&self, keys: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, VersionSet)>, StorageError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            // Anti-entropy's reads: a pass over a partition must not push out the hot keys.
            let set = self.read_admitting(key, Admit::No)?;
            if !set.is_empty() {
                out.push((key.clone(), set));
            }
        }
        Ok(out)
    }

    /// Merges each object like a replica write. Returns how many changed what was stored.
    pub fn merge_many(&self, objects: &[(Vec<u8>, VersionSet)]) -> Result<usize, StorageError> {
        let mut changed = 0;
        for (key, set) in objects {
            if self.merge_changed(key, set)?.1 {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// One step of rebuilding `partition`'s tree: folds up to `limit` more keys (starting a
    /// rebuild if none is under way; a ready tree keeps serving until its replacement is done,
    /// and is compared with it then). Holds the partition's lock for the step (see `trees.rs`).
    pub fn rebuild_step(&self, partition: u32, limit: usize) -> Result<RebuildStep, StorageError> {
        let shape = self.trees.shape();
        let Some(mut state) = self.trees.lock(partition) else {
            return Ok(RebuildStep {
                folded: 0,
                done: true,
                rot: false,
            });
        };
        if !matches!(*state, TreeState::Building { .. }) {
            let previous = match std::mem::replace(&mut *state, TreeState::Missing) {
                TreeState::Ready(tree) => Some(tree),
                _ => None,
            };
            *state = TreeState::Building {
                tree: MerkleTree::new(shape),
                cursor: None,
                previous,
            };
        }
        let TreeState::Building { tree, cursor, .. } = &mut *state else {
            unreachable!("the state was made Building above");
        };
        let entries = self.engine.scan(
            Space::Objects,
            &partition.to_be_bytes(),
            cursor.as_deref(),
            limit,
        )?;
        let folded = entries.len();
        for (stored, bytes) in entries {
            let key = stored.get(LOCATION_BYTES..).unwrap_or_default();
            let segment = stored
                .get(4..LOCATION_BYTES)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            tree.update(segment, None, Some(object_hash(key, &bytes)));
            *cursor = Some(stored);
        }
        let done = folded < limit;
        let mut rot = false;
        if done {
            if let TreeState::Building { tree, previous, .. } =
                std::mem::replace(&mut *state, TreeState::Missing)
            {
                rot = previous.is_some_and(|previous| previous != tree);
                *state = TreeState::Ready(tree);
            }
        }
        Ok(RebuildStep { folded, done, rot })
    }

    /// Keys of `partition` after the stored key `after` whose versions are all tombstones,
    /// each older than `before_ms` (so every replica has had the grace period to receive it);
    /// looks at most `scan_limit` keys. Returns the candidates, where the next look resumes
    /// (`None`: the partition's end) and how many keys it looked at.
    pub fn purge_candidates(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        scan_limit: usize,
        before_ms: u64,
    ) -> Result<PurgeLook, StorageError> {
        let entries =
            self.engine
                .scan(Space::Objects, &partition.to_be_bytes(), after, scan_limit)?;
        let scanned = entries.len();
        let resume = if entries.len() < scan_limit {
            None
        } else {
            entries.last().map(|(stored, _)| stored.clone())
        };
        let mut candidates = Vec::new();
        for (stored, bytes) in entries {
            let set = decode_version_set(&bytes)?;
            let all_old_tombstones = !set.is_empty()
                && set
                    .versions()
                    .iter()
                    .all(|v| v.is_tombstone() && v.timestamp_ms < before_ms);
            if all_old_tombstones {
                let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
                candidates.push((key, set));
            }
        }
        Ok(PurgeLook {
            candidates,
            resume,
            scanned,
        })
    }

    /// The next objects of `partition` (of one `segment` of it, if given) after the stored key
    /// `after`, for an ownership transfer: at most `max_keys`, stopping once `max_bytes` of
    /// encoded objects are in. Returns the objects, their bytes and the stored key to resume
    /// after (`None` when the scan reached the end).
    pub fn transfer_batch(
        &self,
        partition: u32,
        segment: Option<u16>,
        after: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<TransferRead, StorageError> {
        let mut prefix = partition.to_be_bytes().to_vec();
        if let Some(segment) = segment {
            prefix.extend_from_slice(&segment.to_be_bytes());
        }
        let limit = max_keys.max(1);
        let entries = self.engine.scan(Space::Objects, &prefix, after, limit)?;
        let full = entries.len() == limit;
        let mut read = TransferRead::default();
        let mut last = None;
        let total = entries.len();
        for (i, (stored, bytes)) in entries.into_iter().enumerate() {
            read.bytes += bytes.len() as u64;
            let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
            read.objects.push((key, decode_version_set(&bytes)?));
            let cut = read.bytes >= max_bytes as u64 && i + 1 < total;
            last = Some(stored);
            if cut {
                read.resume = last;
                return Ok(read);
            }
        }
        read.resume = if full { last } else { None };
        Ok(read)
    }

    /// Removes up to `limit` objects of a partition this node no longer holds (each under its
    /// key's lock, its tree updated), checking `unowned` before each. Returns how many, and
    /// whether the partition is empty (false if `unowned` stopped it).
    pub fn drop_partition(
        &self,
        partition: u32,
        limit: usize,
        unowned: impl Fn() -> bool,
    ) -> Result<(usize, bool), StorageError> {
        let limit = limit.max(1);
        let entries = self
            .engine
            .scan(Space::Objects, &partition.to_be_bytes(), None, limit)?;
        let done = entries.len() < limit;
        let mut removed = 0;
        for (stored, bytes) in entries {
            if !unowned() {
                return Ok((removed, false));
            }
            let key = stored.get(LOCATION_BYTES..).unwrap_or_default();
            // A write that lands between the scan and the removal keeps its key for the next
            // step (it no longer matches), so nothing is removed blindly.
            if self.purge_if_unchanged(key, &decode_version_set(&bytes)?)? {
                removed += 1;
            }
        }
        Ok((removed, done))
    }

    /// Whether this node keeps a hint for `key` (for anyone): a purge must wait for it, or
    /// its delivery would bring back what the tombstone deleted.
    pub fn holds_hint_for(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(!self
            .engine
            .scan(Space::Hints, &hint_prefix(key), None, 1)?
            .is_empty())
    }

    /// Removes `key` if it still holds exactly `set` (a purge's commit), updating its tree.
    /// Returns whether it was removed.
    pub fn purge_if_unchanged(&self, key: &[u8], set: &VersionSet) -> Result<bool, StorageError> {
        check_key(key)?;
        let mut stripe = self.lock(key);
        let location = self.locate(key);
        let (stored, Some(old_hash)) = self.load(&mut stripe, key, &location, Admit::No)? else {
            return Ok(false);
        };
        if &stored != set {
            return Ok(false);
        }
        let mut tree = self.trees.lock(location.partition);
        self.engine.remove(Space::Objects, &location.stored)?;
        stripe.remove(&location.stored);
        if let Some(tree) = tree.as_deref_mut() {
            record_write(
                tree,
                location.segment,
                &location.stored,
                Some(old_hash),
                None,
            );
        }
        Ok(true)
    }

    /// Every partition's tree state, root and key count.
    pub fn tree_summaries(&self) -> Vec<TreeSummary> {
        (0..self.trees.count())
            .filter_map(|partition| {
                let state = self.trees.lock(partition)?;
                let (name, serving) = match &*state {
                    TreeState::Missing => ("missing", None),
                    TreeState::Building { previous, .. } => ("building", previous.as_ref()),
                    TreeState::Ready(tree) => ("ready", Some(tree)),
                };
                Some(TreeSummary {
                    partition,
                    state: name,
                    root: serving.map_or(0, MerkleTree::root),
                    keys: serving.map_or(0, MerkleTree::keys),
                })
            })
            .collect()
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

/// Hints are keyed `[key length: u16][key][target]`, so all hints of one key share a prefix
/// (for reads) whatever bytes the key holds.
fn hint_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn hint_key(key: &[u8], target: &NodeId) -> Vec<u8> {
    let mut out = hint_prefix(key);
    out.extend_from_slice(target.as_str().as_bytes());
    out
}

fn split_hint_key(hint_key: &[u8]) -> Option<(Vec<u8>, NodeId)> {
    let (length, rest) = hint_key.split_first_chunk::<2>()?;
    let length = u16::from_be_bytes(*length) as usize;
    let key = rest.get(..length)?.to_vec();
    let target = std::str::from_utf8(rest.get(length..)?).ok()?;
    Some((key, NodeId::new(target)))
}

fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_STORABLE_KEY_BYTES {
        return Err(StorageError::KeyTooLong { size: key.len() });
    }
    Ok(())
}

/// What a data directory's `meta` says about its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Format 2 (or a new directory, now stamped).
    Current,
    /// Format 1: objects to migrate.
    Legacy,
}

/// Stamps a new data directory with the node's id, format and Q, or checks an existing one.
fn check_identity(
    engine: &dyn Engine,
    node: &NodeId,
    partitions: u32,
) -> Result<Format, StorageError> {
    let meta = |key: &str| engine.get(Space::Meta, key.as_bytes());
    let stamp_partitions = || {
        engine.insert(
            Space::Meta,
            META_PARTITIONS.as_bytes(),
            &partitions.to_be_bytes(),
        )
    };
    match meta(META_NODE_ID)? {
        Some(found) if found != node.as_str().as_bytes() => Err(StorageError::WrongNode {
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: node.to_string(),
        }),
        Some(_) => {
            let format = meta(META_FORMAT)?;
            let legacy = match format.as_deref() {
                Some(f) if f == FORMAT_VERSION => false,
                Some(f) if f == LEGACY_FORMAT => true,
                other => {
                    return Err(StorageError::UnknownFormat {
                        found: other.map_or_else(
                            || "none".to_string(),
                            |f| String::from_utf8_lossy(f).into_owned(),
                        ),
                    })
                }
            };
            match meta(META_PARTITIONS)? {
                Some(bytes) => {
                    let stored = <[u8; 4]>::try_from(bytes.as_slice())
                        .map(u32::from_be_bytes)
                        .map_err(|_| StorageError::UnknownFormat {
                            found: "2 with an unreadable partition count".to_string(),
                        })?;
                    if stored != partitions {
                        return Err(StorageError::PartitionsChanged {
                            stored,
                            configured: partitions,
                        });
                    }
                }
                // Format 1 did not depend on Q: the migration lays it out for this one.
                None => stamp_partitions()?,
            }
            Ok(if legacy {
                Format::Legacy
            } else {
                Format::Current
            })
        }
        None => {
            engine.insert(
                Space::Meta,
                META_NODE_ID.as_bytes(),
                node.as_str().as_bytes(),
            )?;
            engine.insert(Space::Meta, META_FORMAT.as_bytes(), FORMAT_VERSION)?;
            stamp_partitions()?;
            Ok(Format::Current)
        }
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
