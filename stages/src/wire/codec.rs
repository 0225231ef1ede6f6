//! Encodings that are not frames: the opaque client context and the stored version set. They
//! live here because `wire` is the only module that knows MessagePack.

use super::message::{from_body, WireError};
use crate::error::ServiceError;
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use md5::{Digest, Md5};

/// Most entries a client context may carry. A store that keeps clock entries from preference-list
/// nodes only sees a handful; the bound exists so a crafted context cannot make the coordinator
/// store and compare thousands of entries per version.
pub const MAX_CONTEXT_ENTRIES: usize = 256;

/// Pseudo-kinds for decode errors of encodings that are not frames (they travel inside other
/// messages or on disk); outside the frame kinds' range so errors tell them apart.
const CONTEXT_KIND: u16 = u16::MAX;
/// See [`CONTEXT_KIND`].
const STORED_KIND: u16 = u16::MAX - 1;

/// Bytes of the MAC that seals a context.
const SEAL_BYTES: usize = 16;
/// HMAC block size of MD5.
const HMAC_BLOCK_BYTES: usize = 64;

/// Whether two secrets (tokens, MACs) are equal, in time that depends only on their lengths,
/// so a guesser learns nothing from how fast a wrong one is refused.
pub fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// Seals contexts so that clients cannot forge them.
///
/// Why: a context's counters decide which versions a put removes and which counter the
/// coordinator uses next. A forged context could delete versions its client never saw, or push
/// a node's counter to `u64::MAX` and make the key unwritable for good. So every context leaves
/// a node with an HMAC (RFC 2104, over MD5) keyed by the cluster secret, and one that comes
/// back without a valid MAC is refused. Every node of a cluster shares the secret, so any node
/// accepts a context any other produced. HMAC-MD5 remains a sound MAC (MD5's collision
/// weakness does not carry over to HMAC); it is used because MD5 is already our ring hash.
///
/// The two keyed pads are one MD5 block each, absorbed once here: every MAC starts from a clone
/// of those states, which saves two of the four MD5 compressions a MAC of a context costs (a
/// put verifies one and every reply seals one).
#[derive(Clone)]
pub struct ContextSeal {
    /// MD5 after absorbing the key XOR ipad.
    inner: Md5,
    /// MD5 after absorbing the key XOR opad.
    outer: Md5,
    /// Whether [`ContextSeal::encode`] binds a context to its key (`cluster.key_bound_contexts`).
    bind: bool,
}

impl std::fmt::Debug for ContextSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextSeal(..)") // never print key material
    }
}

impl ContextSeal {
    /// A seal keyed by the cluster secret.
    pub fn new(secret: &[u8]) -> ContextSeal {
        let mut key = [0u8; HMAC_BLOCK_BYTES];
        if secret.len() > HMAC_BLOCK_BYTES {
            key[..16].copy_from_slice(&Md5::digest(secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        ContextSeal {
            inner: Md5::new().chain_update(key.map(|b| b ^ 0x36)),
            outer: Md5::new().chain_update(key.map(|b| b ^ 0x5c)),
            bind: true,
        }
    }

    /// This seal, giving key-bound contexts or (`false`, for a rolling upgrade from a build
    /// that reads only unbound ones) unbound ones. Both kinds are taken either way.
    pub fn bound_to_keys(mut self, bind: bool) -> ContextSeal {
        self.bind = bind;
        self
    }

    #[cfg(test)]
    pub(crate) fn mac_for_test(&self, message: &[u8]) -> [u8; SEAL_BYTES] {
        self.mac(message)
    }

    /// The MAC of `message` under the cluster key. The same key signs the peer handshake
    /// (`wire::handshake_bytes`), whose bytes begin with a length prefix (a 0 byte) and a
    /// label, which no encoded context (a msgpack array or map) begins with, so a context's
    /// MAC can never pass as a handshake's or the reverse.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.mac(message).to_vec()
    }

    /// Whether `mac` is the MAC of `message` (compared in constant time).
    pub fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
        same_secret(&self.mac(message), mac)
    }

    fn mac(&self, message: &[u8]) -> [u8; SEAL_BYTES] {
        let inner = self.inner.clone().chain_update(message).finalize();
        self.outer.clone().chain_update(inner).finalize().into()
    }

    /// The MAC of a context `body` bound to `key`. Its input starts with a label, so it is
    /// neither a handshake's (a 0 byte first) nor an unbound context's (a msgpack map or
    /// array first), whatever key a client picks.
    fn key_mac(&self, key: &[u8], body: &[u8]) -> [u8; SEAL_BYTES] {
        let length = u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes();
        let inner = (self.inner.clone())
            .chain_update(KEY_BOUND_LABEL)
            .chain_update(length)
            .chain_update(key)
            .chain_update(body)
            .finalize();
        self.outer.clone().chain_update(inner).finalize().into()
    }

    /// Encodes and seals the context of `key` for a client: [`KEY_BOUND`], the clock, and a MAC
    /// over the key and the clock, so the context is good for this key alone. Why: dot
    /// counters are a node's, shared by its keys, so another key's later context covers this
    /// key's versions, and a client that mixed two keys' contexts replaced a value it never
    /// read (a trial's). Empty clocks encode too, so every reply has a context.
    /// Unless the seal is set unbound ([`ContextSeal::bound_to_keys`]).
    pub fn encode(&self, key: &[u8], clock: &VClock) -> Vec<u8> {
        if !self.bind {
            return self.encode_unbound(clock);
        }
        sealed(&[KEY_BOUND], clock, |body| self.key_mac(key, body))
    }

    /// Encodes and seals a context bound to no key, as builds before key-bound contexts did
    /// (and as every build reads): for a put or delete a node forwards to another, whose key
    /// the forwarding node has already checked the client's context against, so a node of an
    /// earlier build in a rolling upgrade takes it.
    pub fn encode_unbound(&self, clock: &VClock) -> Vec<u8> {
        sealed(&[], clock, |body| self.mac(body))
    }

    /// Checks the seal of a context a client sent back with a request for `key` and decodes
    /// it, bounded by [`MAX_CONTEXT_ENTRIES`]. Empty bytes are the empty context (a blind
    /// write). A context sealed by a build before contexts were bound to keys (no
    /// [`KEY_BOUND`] first) is still taken, its seal checked without the key, so a rolling
    /// upgrade does not void the contexts clients hold.
    pub fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<VClock, ServiceError> {
        if bytes.is_empty() {
            return Ok(VClock::new());
        }
        let Some(split) = bytes.len().checked_sub(SEAL_BYTES) else {
            return Err(bad_context("too short to carry its seal"));
        };
        let (sealed, mac) = bytes.split_at(split);
        // Compared without an early exit so the time taken does not tell how much matched.
        let (body, good) = match sealed.split_first() {
            Some((&KEY_BOUND, body)) => (body, same_secret(&self.key_mac(key, body), mac)),
            _ => (sealed, same_secret(&self.mac(sealed), mac)),
        };
        if !good {
            return Err(bad_context(
                "seal does not match: not a context this cluster gave for this key (a \
                 context is good only for the key whose get or put returned it)",
            ));
        }
        decode_context_body(body)
    }
}

/// `marker`, the encoded `clock` (its body) and `mac` of the body: a sealed context.
fn sealed(marker: &[u8], clock: &VClock, mac: impl FnOnce(&[u8]) -> [u8; SEAL_BYTES]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(marker.len() + clock.encoded_size_hint() + SEAL_BYTES);
    bytes.extend_from_slice(marker);
    // A VClock is a map of strings to pairs of integers; serializing it cannot fail.
    if rmp_serde::encode::write(&mut bytes, clock).is_err() {
        bytes.truncate(marker.len());
    }
    let mac = mac(&bytes[marker.len()..]);
    bytes.extend_from_slice(&mac);
    bytes
}

/// The first byte of a context bound to its key: 0xc1, which msgpack never uses, so no
/// context of an earlier build (a msgpack value first) begins with it.
const KEY_BOUND: u8 = 0xc1;

/// What a key-bound context's MAC input starts with.
const KEY_BOUND_LABEL: &[u8] = b"shoal-context-of-key";

fn bad_context(reason: &str) -> ServiceError {
    ServiceError::BadContext {
        reason: reason.to_string(),
    }
}

/// Decodes an unsealed context body, bounded by [`MAX_CONTEXT_ENTRIES`].
fn decode_context_body(bytes: &[u8]) -> Result<VClock, ServiceError> {
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
    if let Some((node, _)) = clock.entries().find(|(node, _)| !node.is_valid_actor()) {
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
    // Sized up front: grown from empty, the buffer was reallocated five or six times per
    // stored write (2 % of the intake loop under load).
    let mut bytes = Vec::with_capacity(set.encoded_size_hint());
    rmp_serde::encode::write(&mut bytes, set).map_err(|e| WireError::Encode {
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// Decodes a stored version set.
pub fn decode_version_set(bytes: &[u8]) -> Result<VersionSet, CorruptObject> {
    from_body(STORED_KIND, bytes).map_err(|e| CorruptObject {
        reason: e.to_string(),
    })
}
