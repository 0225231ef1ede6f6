//! Cleanup: a partition this node no longer holds, and sends no transfer of, is dropped a
//! gated step at a time once `cleanup_delay` has passed; one it sent is first synced once more
//! to the replicas that hold it now (the final sync).

use super::*;

/// Most objects removed per drop step.
const DROP_STEP: usize = 1024;

impl TransferMachine {
    /// Drops the due partition this node no longer replicates, a step at a time (see above).
    pub(super) fn cleanup(
        &mut self,
        m: &Membership,
        outgoing: &BTreeSet<(u32, NodeId)>,
        now: Instant,
        out: &mut Outbox,
    ) {
        let me = self.settings.node.clone();
        let delay = self.settings.cleanup_delay;
        // The due partition looked at longest ago (never first), so partitions found empty
        // and due again cannot starve the others.
        let mut due: Option<(Option<Instant>, u32)> = None;
        self.drops_due = 0;
        for p in 0..m.ring().partition_count() {
            let held = m.holds(&me, PartitionId(p), self.settings.n)
                || outgoing.iter().any(|(partition, _)| *partition == p);
            if held {
                self.unowned_since.remove(&p);
                self.found_empty.remove(&p);
                continue;
            }
            let since = *self.unowned_since.entry(p).or_insert(now);
            let waited = since.max(self.started) + delay <= now;
            let checked = self.found_empty.get(&p).copied();
            let empty_lately = checked.is_some_and(|at| at + delay > now);
            if waited && checked.is_none() {
                self.drops_due += 1;
            }
            if waited && !empty_lately && due.is_none_or(|(oldest, _)| checked < oldest) {
                due = Some((checked, p));
            }
        }
        let Some((_, partition)) = due else {
            return;
        };
        if self.dropping.is_some() {
            return;
        }
        // Before a partition this node sent is dropped, whatever reached it since (a hint
        // delivered late, a write whose copy to the new replica was lost) is sent once more.
        if let Some(Handed { compared, left }) = self.handed.get_mut(&partition) {
            if self.active.is_some() || now < self.final_sync_after {
                return;
            }
            // To every replica that holds the partition now (not the ones it was sent to: a
            // later commit may have moved it again).
            let left = left.get_or_insert_with(|| {
                let replicas = m.replicas(PartitionId(partition), self.settings.n);
                replicas
                    .list
                    .primaries
                    .into_iter()
                    .chain(replicas.also_write)
                    .filter(|node| *node != me)
                    .collect()
            });
            match left.pop_front() {
                Some(to) => {
                    let mut sync = Active::new(partition, to);
                    sync.final_sync = true;
                    sync.baseline = compared.clone();
                    sync.phase = Phase::Comparing;
                    self.active = Some(sync);
                    self.step(now, out);
                    return;
                }
                None => {
                    self.handed.remove(&partition);
                }
            }
        }
        let tokens = self.gate.available(now);
        if tokens == 0 {
            return;
        }
        let limit = DROP_STEP.min(tokens as usize);
        let op = self.storage(StorageRequest::DropPartition { partition, limit }, out);
        self.dropping = Some((partition, op, now + STORAGE_DEADLINE));
    }

    pub(super) fn on_dropped(&mut self, now: Instant, done: StorageDone) {
        let Some((partition, _, _)) = self.dropping.take() else {
            return;
        };
        match done.result {
            Ok(StorageOutcome::Dropped { removed, done }) => {
                self.gate.try_take(removed as u64, now);
                if removed > 0 {
                    info!(self.logger, "dropped objects of a partition this node no longer holds";
                          "partition" => partition, "objects" => removed, "empty" => done);
                }
                if done {
                    self.found_empty.insert(partition, now);
                }
            }
            Ok(other) => warn!(self.logger, "unexpected answer to a drop"; "answer" => ?other),
            Err(error) => {
                warn!(self.logger, "drop failed"; "partition" => partition, "error" => %error)
            }
        }
    }
}
