//! Where the store's bytes live: the [`Engine`] trait, and fjall behind it (the product). The
//! simulator's engine is in `memory.rs`. Both pass one shared test suite (`tests.rs`).

use super::StorageError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::ops::Bound;
use std::path::Path;

/// Key-value pairs of a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The store's keyspaces, kept apart so a scan of one never sees another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// `[partition: u32][segment: u16][key]` → encoded version set (format 2): one partition is
    /// one range scan, one Merkle segment of it another.
    Objects,
    /// `[key length][key][target]` → encoded version set (hinted handoff).
    Hints,
    /// The node's identity, format version and Q.
    Meta,
    /// Key → encoded version set: format 1's objects, read once to migrate them and then
    /// empty.
    LegacyObjects,
}

impl Space {
    /// Every keyspace.
    pub const ALL: [Space; 4] = [
        Space::Objects,
        Space::Hints,
        Space::Meta,
        Space::LegacyObjects,
    ];

    /// The keyspace's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Objects => "partitioned_objects",
            Space::Hints => "hints",
            Space::Meta => "meta",
            Space::LegacyObjects => "objects",
        }
    }
}

/// An ordered key-value engine with a journal: writes are visible at once and durable after
/// [`Engine::persist`]. Shared by the storage workers (the store serialises read-modify-write
/// of one key with its own locks).
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Sets `key` to `value`.
    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError>;

    /// Removes `key` (nothing if absent).
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError>;

    /// Up to `limit` entries whose keys start with `prefix`, in key order, after the key
    /// `after` when given.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError>;

    /// Makes every write so far durable (fdatasync of the journal).
    fn persist(&self) -> Result<(), StorageError>;
}

/// fjall: one database per node, one keyspace per [`Space`].
pub struct FjallEngine {
    db: Database,
    /// In [`Space::ALL`] order.
    keyspaces: [Keyspace; 4],
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<FjallEngine, StorageError> {
        let db = Database::builder(dir).open()?;
        let open = |space: Space| db.keyspace(space.name(), KeyspaceCreateOptions::default);
        let keyspaces = [
            open(Space::Objects)?,
            open(Space::Hints)?,
            open(Space::Meta)?,
            open(Space::LegacyObjects)?,
        ];
        Ok(FjallEngine { db, keyspaces })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space as usize]
    }
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.keyspace(space).get(key)?.map(|value| value.to_vec()))
    }

    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        Ok(self.keyspace(space).insert(key, value)?)
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        Ok(self.keyspace(space).remove(key)?)
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let keyspace = self.keyspace(space);
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match after {
            Some(after) => {
                Box::new(keyspace.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)))
            }
            None => Box::new(keyspace.prefix(prefix)),
        };
        let mut out = Vec::new();
        for guard in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = guard.into_inner()?;
            if !key.starts_with(prefix) {
                // Keys are ordered: past the prefix, nothing later matches.
                if key.as_ref() > prefix {
                    break;
                }
                continue;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn persist(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }
}
