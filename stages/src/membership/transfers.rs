//! Which replicas serve a partition while it moves (Dynamo §4.8: reads stay on the old ones
//! until its copies are done, writes reach old and new), and the copies a commit needs.

use super::*;

impl Membership {
    /// The replicas of `key` for a coordinator (see [`Replicas`]).
    pub fn replicas_for_key(&self, key: &[u8], n: usize) -> Replicas {
        self.replicas(self.ring().partition_of(key), n)
    }

    /// The replicas of a partition for a coordinator (see [`Replicas`]).
    pub fn replicas(&self, partition: PartitionId, n: usize) -> Replicas {
        let list = self.ring().preference_list(partition, n);
        let Some(old) = self.old_list(partition, n) else {
            return Replicas {
                list,
                also_write: Vec::new(),
            };
        };
        // Each list is walked once: this runs for every client request.
        let moving = self
            .partition_transfers(&old.primaries, &list.primaries, partition, false)
            .iter()
            .any(|t| !self.is_done(t));
        if !moving {
            return Replicas {
                list,
                also_write: Vec::new(),
            };
        }
        let also_write = list
            .primaries
            .iter()
            .filter(|to| !old.primaries.contains(to))
            .cloned()
            .collect();
        // Old replicas that were removed cannot answer; keep them listed so sloppy quorum
        // stands a fallback in for them, as for any down primary.
        Replicas {
            list: old,
            also_write,
        }
    }

    /// The replicas a partition is read and written on now (counted toward R and W): where
    /// the next commit copies it from.
    pub(super) fn serving(&self, partition: PartitionId, n: usize) -> Vec<NodeId> {
        self.replicas(partition, n).list.primaries
    }

    /// A partition's replicas before the last commit (`None`: the initial ring), with the
    /// fallbacks of the ring before it: its list in `previous`, or the list the commit kept
    /// in `old_replicas`.
    fn old_list(&self, partition: PartitionId, n: usize) -> Option<PreferenceList> {
        let previous = self.assignment.previous.as_ref()?;
        let mut list = previous.preference_list(partition, n);
        if let Some(kept) = self.assignment.old_replicas.get(&partition.0) {
            let walk = list.primaries.into_iter().chain(list.fallbacks);
            list.fallbacks = walk.filter(|node| !kept.contains(node)).collect();
            list.primaries = kept.clone();
        }
        Some(list)
    }

    /// Every transfer of the last commit not yet done, in partition order.
    pub fn pending_transfers(&self, n: usize) -> Vec<Transfer> {
        if self.assignment.previous.is_none() {
            return Vec::new();
        }
        let old = |p: PartitionId| self.old_list(p, n).map(|l| l.primaries).unwrap_or_default();
        self.transfers_between(old, self.ring(), n, false)
            .into_iter()
            .filter(|t| !self.is_done(t))
            .collect()
    }

    /// Whether a transfer's receiver was since staged for removal: the operator said it is
    /// dead, so the copy is never tried and the next commit lets it go.
    pub fn goes_to_removed(&self, t: &Transfer) -> bool {
        self.state_of(&t.to) == Some(MemberState::Removed)
    }

    /// A transfer with no sender is done at once (nothing can be copied; waiting would keep
    /// reads on dead replicas and refuse every later commit).
    fn is_done(&self, t: &Transfer) -> bool {
        t.from.is_none()
            || self
                .assignment
                .done
                .contains(&(t.partition, t.from.clone(), t.to.clone()))
    }

    /// Whether this node is still a replica of `partition` under any ring a coordinator may
    /// use (the committed one, or the one it replaced while the partition is moving).
    /// (While a partition moves, the committed ring's replicas are the old ones it keeps plus
    /// `also_write`, so `replicas` covers both rings.)
    pub fn holds(&self, node: &NodeId, partition: PartitionId, n: usize) -> bool {
        self.replicas(partition, n).includes(node)
    }

    /// Whether `node` has left: it is leaving and holds no partition under any ring a
    /// coordinator may use (while a partition it held waits for any of its copies, reads
    /// and writes still reach it). Its final sync and drop come `cleanup_delay_ms` later.
    pub fn has_left(&self, node: &NodeId, n: usize) -> bool {
        self.state_of(node) == Some(MemberState::Leaving)
            && (0..self.ring().partition_count()).all(|p| !self.holds(node, PartitionId(p), n))
    }

    /// The copies that moving each partition from its replicas `old` gives to its list in
    /// `new` needs, partition by partition. `planning`: for the next commit, under which no
    /// copy is done yet (the done marks are the last commit's); otherwise the last commit's.
    pub(super) fn transfers_between(
        &self,
        old: impl Fn(PartitionId) -> Vec<NodeId>,
        new: &Ring,
        n: usize,
        planning: bool,
    ) -> Vec<Transfer> {
        (0..new.partition_count())
            .flat_map(|p| {
                let partition = PartitionId(p);
                let after = new.preference_list(partition, n).primaries;
                self.partition_transfers(&old(partition), &after, partition, planning)
            })
            .collect()
    }

    /// The copies one partition needs: each new replica gets the data of every old replica
    /// that leaves the list (so no write is lost when a leaver drops its copy: a write on W old
    /// replicas is then on W of the new ones). A copy no leaver can give (none leaves because a
    /// cluster smaller than N grew, or a leaver was removed as dead before its copy was done)
    /// is given by a stand-in: an old replica whose copy is done, else the first alive one
    /// not already sending. What only a removed node held is gone; anti-entropy reconciles the
    /// rest. A copy finished before its sender was removed stays the copy (done): removing a
    /// node that has left must not start its copies over. `planning`: see
    /// `transfers_between`.
    fn partition_transfers(
        &self,
        before: &[NodeId],
        after: &[NodeId],
        partition: PartitionId,
        planning: bool,
    ) -> Vec<Transfer> {
        let alive = |node: &&NodeId| self.state_of(node) != Some(MemberState::Removed);
        let done = |t: &Transfer| !planning && self.is_done(t);
        let leaving: Vec<&NodeId> = before.iter().filter(|b| !after.contains(b)).collect();
        let mut transfers = Vec::new();
        if !leaving.is_empty() && after.iter().all(|to| before.contains(to)) {
            // A leave that brings no new replica into the list (the cluster falls below N):
            // each replica that stays gets the leaver's data. It was assumed to hold it already
            // (a write on W old replicas), but one may have lost writes since (a backup
            // restored, a disk replaced) and another never had them, and the leaver drops its
            // copy once its transfers are done: the simulator lost acknowledged writes this
            // way (seed 2602 of every fault with power). A removed leaver gives nothing.
            for to in after {
                for leaver in &leaving {
                    let t = Transfer {
                        partition: partition.0,
                        from: Some((*leaver).clone()),
                        to: to.clone(),
                    };
                    if alive(leaver) || done(&t) {
                        transfers.push(t);
                    }
                }
            }
            return transfers;
        }
        for to in after.iter().filter(|to| !before.contains(to)) {
            let copy = |from: Option<&NodeId>| Transfer {
                partition: partition.0,
                from: from.cloned(),
                to: to.clone(),
            };
            let mut sources = Vec::new();
            // A copy no leaver gives: none leaves, or one was removed before its copy was done.
            let mut lost = leaving.is_empty();
            for leaver in &leaving {
                let t = copy(Some(leaver));
                if alive(leaver) || done(&t) {
                    sources.push(t);
                } else {
                    lost = true;
                }
            }
            if lost {
                // Done first: once a stand-in finished, its removal must not move the copy to
                // the next replica. A leaver that still sends is no stand-in (it already is a
                // source): the next alive old replica is, so a write on the removed leaver and
                // that replica keeps its second copy.
                let stand_in = before
                    .iter()
                    .map(|node| copy(Some(node)))
                    .find(|t| done(t) && !sources.contains(t))
                    .or_else(|| {
                        before
                            .iter()
                            .filter(alive)
                            .map(|node| copy(Some(node)))
                            .find(|t| !sources.contains(t))
                    });
                match stand_in {
                    Some(t) => sources.push(t),
                    // No old replica alive: nothing can be copied (done at once).
                    None if sources.is_empty() => sources.push(copy(None)),
                    None => {} // every alive old replica sends already
                }
            }
            transfers.extend(sources);
        }
        transfers
    }
}
