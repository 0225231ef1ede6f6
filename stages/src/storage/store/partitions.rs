//! Whole-partition work for the background stages: Merkle tree views and digests and rebuild
//! steps (anti-entropy), tombstone purge, and the batches and drops of ownership transfer.

use super::*;

impl Store {
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
    /// (`None`: the partition's end) and how many keys it looked at: none, when a look from
    /// the partition's start finds no tombstone written since the last clean pass began
    /// (see [`TombstoneWatch`]).
    pub fn purge_candidates(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        scan_limit: usize,
        before_ms: u64,
    ) -> Result<PurgeLook, StorageError> {
        // A pass starts at the partition's first key: if no write has put a tombstone in it
        // since the last clean pass began, there is nothing to look at.
        if after.is_none() {
            let clean = self.watch_tombstones(partition, |watch| {
                let clean = watch.clean_as_of == Some(watch.writes);
                if !clean {
                    watch.pass = Some((watch.writes, false));
                }
                clean
            });
            if clean == Some(true) {
                return Ok(PurgeLook::default());
            }
        }
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
        let mut met_tombstones = false;
        for (stored, bytes) in entries {
            let set = decode_version_set(&bytes)?;
            let tombstones_only =
                !set.is_empty() && set.versions().iter().all(Version::is_tombstone);
            // Young or old, the next pass must look at it again.
            met_tombstones |= tombstones_only;
            let all_old_tombstones =
                tombstones_only && set.versions().iter().all(|v| v.timestamp_ms < before_ms);
            if all_old_tombstones {
                let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
                candidates.push((key, set));
            }
        }
        self.watch_tombstones(partition, |watch| {
            if let Some((_, met)) = &mut watch.pass {
                *met |= met_tombstones;
            }
            // The pass reached the end: clean as of its start if it met no tombstone.
            if resume.is_none() {
                if let Some((began, met)) = watch.pass.take() {
                    watch.clean_as_of = (!met).then_some(began);
                }
            }
        });
        Ok(PurgeLook {
            candidates,
            resume,
            scanned,
        })
    }

    /// The next objects of `partition` (of one `segment` of it, if given) after the stored key
    /// `after`, for an ownership transfer: at most `max_keys`, and at most `max_bytes` of
    /// encoded objects, except that the first object is taken whatever its size (one object
    /// alone always goes). Returns the objects, their bytes and the stored key to resume
    /// after (`None` when the scan reached the end).
    ///
    /// Why the bound holds before an object, not after it: the batch travels in one peer
    /// frame, and `max_bytes` is at most half the frame limit so that one object of the
    /// largest value still fits beside the rest. Cut only after the object that crossed it, a
    /// batch of 255 KiB plus a 1 MiB value passed the frame limit; the replicate stage refused
    /// it (`FrameTooLarge`) and the transfer retried the same batch for ever, holding every
    /// later membership change (a trial's join and leave, with 1 MiB values stored).
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
        // A partition handed away and found empty since its last write: a final sync's scan
        // would read only the engine's tombstones of what the drop removed.
        if after.is_none() && self.empty_watch.known_empty(partition) {
            return Ok(TransferRead::default());
        }
        let limit = max_keys.max(1);
        let entries = self.engine.scan(Space::Objects, &prefix, after, limit)?;
        let full = entries.len() == limit;
        let mut read = TransferRead::default();
        let mut last = None;
        for (stored, bytes) in entries {
            // The key travels too (up to 64 KiB of it); what the wire's encoding adds beyond
            // these is covered by `max_bytes` being half the frame, and a batch the frame
            // still refuses is read again smaller (`transfer::answers`).
            let size = (stored.len() + bytes.len()) as u64;
            if !read.objects.is_empty() && read.bytes + size > max_bytes as u64 {
                // This one starts the next batch.
                read.resume = last;
                return Ok(read);
            }
            read.bytes += size;
            let key = stored.get(LOCATION_BYTES..).unwrap_or_default().to_vec();
            read.objects.push((key, decode_version_set(&bytes)?));
            last = Some(stored);
        }
        read.resume = if full { last } else { None };
        Ok(read)
    }

    /// Removes up to `limit` objects of a partition this node no longer holds (each under its
    /// key's lock, its tree updated), checking `unowned` before each, from where the last step
    /// of the pass stopped. Returns how many, and whether the partition is empty now (false if
    /// `unowned` stopped it, or if something was written to it during the pass: the next step
    /// starts a pass from its first key).
    pub fn drop_partition(
        &self,
        partition: u32,
        limit: usize,
        unowned: impl Fn() -> bool,
    ) -> Result<(usize, bool), StorageError> {
        // Looked at again every cleanup delay for a stray write: while none was written since
        // a scan found it empty, it still is (see [`EmptyWatch`]).
        if self.empty_watch.known_empty(partition) {
            return Ok((0, true));
        }
        let limit = limit.max(1);
        // A step resumes where the last one stopped, not past the tombstones of every step
        // before it; a write behind it keeps the pass from calling the partition empty.
        let pass = self.empty_watch.drop_pass(partition);
        let entries = self.engine.scan(
            Space::Objects,
            &partition.to_be_bytes(),
            pass.after.as_deref(),
            limit,
        )?;
        let at_end = entries.len() < limit;
        let last = entries.last().map(|(stored, _)| stored.clone());
        let mut removed = 0;
        let mut kept = false;
        for (stored, bytes) in entries {
            if !unowned() {
                self.empty_watch.drop_stopped(partition);
                return Ok((removed, false));
            }
            let key = stored.get(LOCATION_BYTES..).unwrap_or_default();
            // A write that lands between the scan and the removal keeps its key for the next
            // step (it no longer matches), so nothing is removed blindly. The actor is renewed
            // first if the set holds its counters (needlessly, if such a write lands: harmless).
            let set = decode_version_set(&bytes)?;
            self.before_drop(&set)?;
            if self.purge_if_unchanged(key, &set)? {
                removed += 1;
            } else {
                // Changed since the scan (the count moved too) or already gone (a purge): this
                // pass proves nothing, the next looks again.
                kept = true;
            }
        }
        match (at_end, last) {
            (false, Some(last)) => {
                self.empty_watch.drop_went_to(partition, &pass, last);
                Ok((removed, false))
            }
            _ => Ok((
                removed,
                self.empty_watch.drop_ended(partition, &pass, !kept),
            )),
        }
    }

    /// Runs `act` on `partition`'s tombstone watch, under its lock (never held across a
    /// scan); `None` for a partition number past Q, which is then never skipped.
    pub(super) fn watch_tombstones<T>(
        &self,
        partition: u32,
        act: impl FnOnce(&mut TombstoneWatch) -> T,
    ) -> Option<T> {
        let watch = self.tombstone_watch.get(partition as usize)?;
        // Only counters and flags: a panic cannot leave them half-changed.
        let mut guard = watch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(act(&mut guard))
    }

    /// Removes `key` if it still holds exactly `set` (a purge's commit, a drop's step),
    /// updating its tree. Returns whether it was removed.
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
}
