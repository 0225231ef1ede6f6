//! The store behind the storage stage (SPEC §7): one database per node, with the keyspaces
//! `objects` (key → encoded version set), `hints` (for hinted handoff) and `meta` (the node's
//! identity and format version), kept apart so that scans of one never see the others. The
//! logic lives here once; the bytes live in an [`Engine`]: fjall, or memory for the
//! simulator.

use super::engine::{Engine, FjallEngine, Space};
use crate::event::Hint;
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use crate::wire::{decode_version_set, encode_version_set};
use crate::NodeId;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Longest key fjall accepts (its keys carry a u16 length; longer ones panic inside it).
pub const MAX_STORABLE_KEY_BYTES: usize = u16::MAX as usize;

/// Hints counted per engine scan by `pending_hints`, so counting a large backlog does not
/// load it whole.
const COUNT_CHUNK: usize = 1024;

/// Number of lock stripes guarding read-modify-write of objects. Two storage workers that touch
/// the same key serialise on its stripe; a power of two well above the worker count keeps
/// unrelated keys from waiting on each other.
const LOCK_STRIPES: usize = 256;

/// On-disk format version written to `meta`; a node refuses a data directory of another format.
const FORMAT_VERSION: &[u8] = b"1";
const META_NODE_ID: &str = "node_id";
const META_FORMAT: &str = "format";

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
    locks: Arc<Vec<Mutex<()>>>,
    /// Hints held, kept exact beside the hints keyspace (counted once at open, then changed
    /// under each key's lock as hints are added and deleted) so the handoff stage can report
    /// its backlog without a scan.
    hints_held: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the fjall database in `dir` for `node`, refusing another node's
    /// directory.
    pub fn open(dir: &Path, node: &NodeId) -> Result<Store, StorageError> {
        Store::with_engine(Arc::new(FjallEngine::open(dir)?), node)
    }

    /// A store over `engine` for `node`, refusing an engine that holds another node's data.
    pub fn with_engine(engine: Arc<dyn Engine>, node: &NodeId) -> Result<Store, StorageError> {
        check_identity(engine.as_ref(), node)?;
        engine.persist()?;
        let store = Store {
            engine,
            locks: Arc::new((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect()),
            hints_held: Arc::new(AtomicU64::new(0)),
        };
        let held = store.pending_hints()?.values().sum();
        store.hints_held.store(held, Ordering::Relaxed);
        Ok(store)
    }

    /// The stored versions of `key` (empty if never written).
    pub fn read(&self, key: &[u8]) -> Result<VersionSet, StorageError> {
        check_key(key)?;
        match self.engine.get(Space::Objects, key)? {
            Some(bytes) => Ok(decode_version_set(&bytes)?),
            None => Ok(VersionSet::new()),
        }
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
        check_key(key)?;
        let _guard = self.lock(key);
        let mut set = self.read(key)?;
        let version = set.coordinate_put(node, context, value, now_ms, limits.max_clock_entries)?;
        // Bounded here, at the coordinator, and not on replica merges: a replica must accept
        // what a coordinator accepted, or replicas would diverge.
        if set.len() > limits.max_siblings {
            return Err(StorageError::TooManySiblings {
                count: set.len(),
                max: limits.max_siblings,
            });
        }
        self.write(key, &set)?;
        Ok((set, version))
    }

    /// A replica's write: merges `incoming` into the stored set under the key's lock and stores
    /// the result if it changed. Returns the merged set.
    pub fn merge(&self, key: &[u8], incoming: &VersionSet) -> Result<VersionSet, StorageError> {
        check_key(key)?;
        let _guard = self.lock(key);
        let mut set = self.read(key)?;
        let before = set.clone();
        set.merge(incoming);
        if set != before {
            self.write(key, &set)?;
        }
        Ok(set)
    }

    fn write(&self, key: &[u8], set: &VersionSet) -> Result<(), StorageError> {
        let bytes = encode_version_set(set)?;
        // Pair assertion around the disk: what we write must read back as what we meant.
        debug_assert_eq!(decode_version_set(&bytes).ok().as_ref(), Some(set));
        self.engine.insert(Space::Objects, key, &bytes)
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
        let _guard = self.lock(key);
        let hint_key = hint_key(key, target);
        let (mut set, new) = match self.engine.get(Space::Hints, &hint_key)? {
            Some(bytes) => (decode_version_set(&bytes)?, false),
            None => (VersionSet::new(), true),
        };
        set.merge(incoming);
        self.engine
            .insert(Space::Hints, &hint_key, &encode_version_set(&set)?)?;
        if new {
            self.hints_held.fetch_add(1, Ordering::Relaxed);
        }
        Ok(set)
    }

    /// The versions of `key` this node can serve: its own objects merged with any hints it
    /// holds for other nodes (so a read during a failure sees writes taken by fallbacks).
    pub fn read_with_hints(&self, key: &[u8]) -> Result<VersionSet, StorageError> {
        let mut set = self.read(key)?;
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
        let _guard = self.lock(&hint.key);
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

    /// Hints held in all (exact; no scan).
    pub fn hints_held(&self) -> u64 {
        self.hints_held.load(Ordering::Relaxed)
    }

    /// Hints waiting for delivery, per intended node.
    pub fn pending_hints(&self) -> Result<BTreeMap<NodeId, u64>, StorageError> {
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
        self.engine
            .scan(Space::Objects, &[], None, usize::MAX)?
            .into_iter()
            .map(|(key, bytes)| Ok((key, decode_version_set(&bytes)?)))
            .collect()
    }

    /// Flushes the journal to disk (fdatasync): every write before this call is durable after it.
    pub fn persist(&self) -> Result<(), StorageError> {
        self.engine.persist()
    }

    fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.locks.len();
        // A poisoned stripe only means another worker panicked mid-write; the guarded data
        // lives in the engine, not behind the mutex, so carrying on is safe.
        self.locks[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Stamps a new data directory with the node's id, or checks an existing one.
fn check_identity(engine: &dyn Engine, node: &NodeId) -> Result<(), StorageError> {
    let meta = |key: &str| engine.get(Space::Meta, key.as_bytes());
    match meta(META_NODE_ID)? {
        Some(found) if found != node.as_str().as_bytes() => Err(StorageError::WrongNode {
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: node.to_string(),
        }),
        Some(_) => match meta(META_FORMAT)? {
            Some(format) if format == FORMAT_VERSION => Ok(()),
            other => Err(StorageError::WrongNode {
                found: format!(
                    "format {:?}",
                    other.map(|f| String::from_utf8_lossy(&f).into_owned())
                ),
                expected: format!("format {}", String::from_utf8_lossy(FORMAT_VERSION)),
            }),
        },
        None => {
            engine.insert(
                Space::Meta,
                META_NODE_ID.as_bytes(),
                node.as_str().as_bytes(),
            )?;
            engine.insert(Space::Meta, META_FORMAT.as_bytes(), FORMAT_VERSION)?;
            Ok(())
        }
    }
}
