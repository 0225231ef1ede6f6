//! The bounds on what storage keeps: how long a client's key may be (fjall's own bound less
//! what storage adds to it) and how large a coordinated put may leave a key's versions.

use super::StorageError;

/// Longest client key storage can keep: fjall's bound on its own keys (they carry a u16
/// length; a longer one panics inside it) less what storage puts around a client's key. A
/// hint's key adds the most: the key's length (2 bytes) and the intended node's id (up to
/// `MAX_NODE_ID_BYTES`); an object's, its partition and segment (`LOCATION_BYTES` in `store.rs`). The
/// bound was once fjall's own 65535, and a get of a key of 65530 bytes panicked the intake
/// thread that served it (a trial took a 3-node cluster down with three requests).
pub const MAX_STORABLE_KEY_BYTES: usize = u16::MAX as usize - HINT_KEY_OVERHEAD;

/// Bytes a hint's stored key adds to the client's key (see [`MAX_STORABLE_KEY_BYTES`]).
const HINT_KEY_OVERHEAD: usize = 2 + crate::node_id::MAX_NODE_ID_BYTES;

const _: () = assert!(
    super::LOCATION_BYTES <= HINT_KEY_OVERHEAD,
    "a hint key adds the most"
);

/// Bounds on the versions a coordinated put may create.
#[derive(Clone, Copy, Debug)]
pub struct VersionLimits {
    /// Clock entries kept in a new version's past (truncation beyond).
    pub max_clock_entries: usize,
    /// Siblings a key may have after a coordinated put. Why: every blind put adds a sibling,
    /// every get returns them all, and a reply must fit in a frame a client accepts.
    pub max_siblings: usize,
    /// `limits.max_frame_bytes` (the same on every node): a coordinated put may not leave a
    /// key's versions larger than a frame carries (two blind puts of 600 KiB once made a key
    /// nobody could read, reconcile or move). Replica merges of concurrent puts can still
    /// pass it; nodes carry those in frames up to `max_peer_frame_bytes`.
    pub max_frame_bytes: usize,
}

/// Bytes a frame spends on a message's fields besides the key and the versions it carries
/// (a replica write's op and hint target, a get answer's fields): a bound, not a count.
const MESSAGE_FIELDS_BYTES: usize = 4096;

impl VersionLimits {
    /// The most encoded bytes `key`'s versions may take after a coordinated put: what a frame
    /// carries with the key, the frame's header and a message's fields. At least the
    /// largest value and its clock with the configured limits (config validation keeps
    /// `max_frame_bytes` 16 KiB above a maximal key and value).
    pub fn max_object_bytes(&self, key: &[u8]) -> usize {
        self.max_frame_bytes
            .saturating_sub(key.len() + crate::wire::FRAME_OVERHEAD_BYTES + MESSAGE_FIELDS_BYTES)
    }
}

/// Refuses a key longer than storage can keep: callers validate against the configured
/// `max_key_bytes` first; this is the backstop on every path (reads, puts, merges, hints).
pub(super) fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > MAX_STORABLE_KEY_BYTES {
        return Err(StorageError::KeyTooLong { size: key.len() });
    }
    Ok(())
}
