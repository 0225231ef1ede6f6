//! Hints (Dynamo §4.6, sloppy quorum): kept by the fallback apart from its own objects, under
//! `[key length][key][target]`, read with the objects, handed back and deleted once delivered.

use super::*;

/// Hints counted per engine scan by `count_hints`, so counting a large backlog does not
/// load it whole.
const COUNT_CHUNK: usize = 1024;

impl Store {
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

    /// Whether this node keeps a hint for `key` (for anyone): a purge must wait for it, or
    /// its delivery would bring back what the tombstone deleted.
    pub fn holds_hint_for(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(!self
            .engine
            .scan(Space::Hints, &hint_prefix(key), None, 1)?
            .is_empty())
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
