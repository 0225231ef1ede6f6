//! A data directory's identity in `meta` (node id, format version, Q): stamped when it is
//! created, checked when it is opened, and format 1 migrated to the partitioned layout.

use super::*;

/// On-disk format version written to `meta`. Format 1 kept objects by key alone; a format-1
/// directory is migrated when opened. A node refuses any other format.
const FORMAT_VERSION: &[u8] = b"2";
const LEGACY_FORMAT: &[u8] = b"1";
const META_NODE_ID: &str = "node_id";
const META_FORMAT: &str = "format";

/// Q, which the layout depends on (objects are stored under their partition).
const META_PARTITIONS: &str = "partitions";

/// N, which what the node holds depends on (a node with a smaller one drops partitions).
const META_REPLICAS: &str = "replicas";

/// Objects moved per step of a format-1 migration (each step is flushed before the next).
const MIGRATION_CHUNK: usize = 1024;

impl Store {
    /// Stamps N on a data directory that has none (a new one, or one from a build before N
    /// was kept), or refuses another: a trial restarted a node with `cluster.n = 2` in a
    /// cluster of 3, and it dropped the partitions it no longer counted itself a replica of,
    /// silently leaving a third of the keys with two copies.
    pub fn check_replicas(&self, replicas: usize) -> Result<(), StorageError> {
        let configured = u32::try_from(replicas).unwrap_or(u32::MAX);
        match self.engine.get(Space::Meta, META_REPLICAS.as_bytes())? {
            Some(bytes) => {
                let stored = meta_count(&bytes, "replica")?;
                if stored != configured {
                    return Err(StorageError::ReplicasChanged { stored, configured });
                }
                Ok(())
            }
            None => {
                let bytes = configured.to_be_bytes();
                self.engine
                    .insert(Space::Meta, META_REPLICAS.as_bytes(), &bytes)?;
                self.engine.persist().map(|_| ())
            }
        }
    }

    /// Moves format 1's objects (keyed by key alone) under their partition and segment, a
    /// flushed chunk at a time, then stamps format 2. A crash midway leaves format 1 with the
    /// objects not yet moved, and the next open carries on (moving an object twice writes the
    /// same bytes).
    pub(super) fn migrate_legacy(&self) -> Result<(), StorageError> {
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
}

/// A count `meta` keeps (Q, N) as 4 big-endian bytes; `what` names it if it is unreadable.
fn meta_count(bytes: &[u8], what: &str) -> Result<u32, StorageError> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| StorageError::UnknownFormat {
            found: format!("2 with an unreadable {what} count"),
        })
}

/// What a data directory's `meta` says about its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Format 2 (or a new directory, now stamped).
    Current,
    /// Format 1: objects to migrate.
    Legacy,
}

/// Stamps a new data directory with the node's id, format and Q, or checks an existing one.
pub(super) fn check_identity(
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
                    let stored = meta_count(&bytes, "partition")?;
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
