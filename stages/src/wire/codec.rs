//! Encodings that are not frames: the opaque client context and the stored version set. They
//! live here because `wire` is the only module that knows MessagePack.

use super::message::{from_body, WireError};
use crate::error::ServiceError;
use crate::vclock::VClock;
use crate::versioning::VersionSet;

/// Most entries a client context may carry. A store that keeps clock entries from preference-list
/// nodes only sees a handful; the bound exists so a crafted context cannot make the coordinator
/// store and compare thousands of entries per version.
pub const MAX_CONTEXT_ENTRIES: usize = 256;

/// Pseudo-kind used in decode errors of contexts (they travel inside other messages).
const CONTEXT_KIND: u16 = 0;
/// Pseudo-kind used in decode errors of stored objects.
const STORED_KIND: u16 = 0;

/// Encodes a context for a client. Empty clocks encode too, so every reply has a context.
pub fn encode_context(clock: &VClock) -> Vec<u8> {
    // A VClock is a map of strings to pairs of integers; serializing it cannot fail.
    rmp_serde::to_vec(clock).unwrap_or_default()
}

/// Decodes a context a client sent back, bounded by [`MAX_CONTEXT_ENTRIES`].
pub fn decode_context(bytes: &[u8]) -> Result<VClock, ServiceError> {
    if bytes.is_empty() {
        return Ok(VClock::new());
    }
    let clock: VClock = from_body(CONTEXT_KIND, bytes).map_err(|e| ServiceError::BadContext {
        reason: e.to_string(),
    })?;
    if clock.len() > MAX_CONTEXT_ENTRIES {
        return Err(ServiceError::BadContext {
            reason: format!(
                "{} clock entries exceed the maximum of {MAX_CONTEXT_ENTRIES}",
                clock.len()
            ),
        });
    }
    if let Some((node, _)) = clock.entries().find(|(node, _)| !node.is_valid()) {
        return Err(ServiceError::BadContext {
            reason: format!("invalid node name {:?} in context", node.as_str()),
        });
    }
    Ok(clock)
}

/// Why a stored object could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored object is corrupt: {reason}")]
pub struct CorruptObject {
    /// The decoder's complaint.
    pub reason: String,
}

/// Encodes a version set for storage: positional (no field names), since it is written for
/// every object and read back only by this code.
pub fn encode_version_set(set: &VersionSet) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec(set).map_err(|e| WireError::Encode {
        reason: e.to_string(),
    })
}

/// Decodes a stored version set.
pub fn decode_version_set(bytes: &[u8]) -> Result<VersionSet, CorruptObject> {
    from_body(STORED_KIND, bytes).map_err(|e| CorruptObject {
        reason: e.to_string(),
    })
}
