//! Cleanup: a partition this node no longer holds, and sends no transfer of, is dropped a
//! gated step at a time once `cleanup_delay` has passed, and only after a final sync has sent
//! it once more to the replicas that hold it now: what changed since its transfer when this
//! node remembers the transfer, the whole partition when it does not (it restarted since, or
//! never sent it: a stale coordinator's stray write).

use super::*;
use crate::membership::MemberState;

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
        self.drops_waiting = 0;
        for p in 0..m.ring().partition_count() {
            let held = m.holds(&me, PartitionId(p), self.settings.n)
                || outgoing.iter().any(|(partition, _)| *partition == p);
            if held {
                self.unowned_since.remove(&p);
                self.found_empty.remove(&p);
                self.dropped_so_far.remove(&p);
                self.sync_after.remove(&p);
                if let Some(handed) = self.handed.get_mut(&p) {
                    handed.restart();
                }
                continue;
            }
            let since = *self.unowned_since.entry(p).or_insert(now);
            let waited = since.max(self.started) + delay <= now;
            let checked = self.found_empty.get(&p).copied();
            let empty_lately = checked.is_some_and(|at| at + delay > now);
            // A final sync that failed waits before it is tried again; the others go on.
            let sync_waits = self.sync_after.get(&p).is_some_and(|at| *at > now);
            if checked.is_none() {
                self.drops_waiting += 1;
                if waited {
                    self.drops_due += 1;
                }
            }
            if waited
                && !empty_lately
                && !sync_waits
                && due.is_none_or(|(oldest, _)| checked < oldest)
            {
                due = Some((checked, p));
            }
        }
        self.drops_peak = self.drops_peak.max(self.drops_waiting);
        if self.drops_peak > 0 && self.drops_waiting == 0 {
            // What an operator waits for after a join or a leave, besides `admin ring`'s
            // pending transfers: a trial found no sign of it but the backlog, which reads 0
            // while partitions still wait out the delay. (After a restart, the partitions it
            // does not hold are looked at once too, and found empty.)
            if self.drops_with_objects > 0 {
                info!(self.logger, "every partition this node no longer holds is dropped";
                      "partitions" => self.drops_peak, "with_objects" => self.drops_with_objects);
            } else {
                // A fresh start looks at every partition it does not hold once (a trial read
                // "is dropped" on a cluster where nothing had moved).
                info!(self.logger, "the partitions this node does not hold were looked at: none held anything";
                      "partitions" => self.drops_peak);
            }
            self.drops_peak = 0;
            self.drops_with_objects = 0;
        }
        let Some((_, partition)) = due else {
            return;
        };
        if self.dropping.is_some() {
            return;
        }
        if !self.final_sync(m, partition, now, out) {
            return;
        }
        let tokens = self.gate.available(now);
        if tokens == 0 {
            return;
        }
        let limit = DROP_STEP.min(tokens as usize);
        let op = self.storage(StorageRequest::DropPartition { partition, limit }, out);
        self.dropping = Some((partition, op, now + STORAGE_DEADLINE));
    }

    /// Before a partition is dropped here, it is sent once more to every replica that holds
    /// it now: whatever reached it since its transfer (a hint delivered late, a write whose
    /// copy to the new replica was lost) may be the last copy. Without a remembered transfer
    /// (this node restarted since: the simulator's seed 1006 lost acknowledged writes that
    /// way; or it never held the partition) the whole partition is sent. Starts the sync to
    /// the next replica (the least failed first); true once every replica has it. Its record
    /// stays until a drop empties the partition, so each drop step asks again (a replica a
    /// later commit adds gets it first).
    fn final_sync(
        &mut self,
        m: &Membership,
        partition: u32,
        now: Instant,
        out: &mut Outbox,
    ) -> bool {
        if self.active.is_some() {
            return false;
        }
        let me = &self.settings.node;
        let handed = self.handed.entry(partition).or_default();
        // The replicas that hold the partition now (not the ones it was sent to: a later
        // commit may have moved it again).
        let replicas = m.replicas(PartitionId(partition), self.settings.n);
        let next = replicas
            .list
            .primaries
            .into_iter()
            .chain(replicas.also_write)
            .filter(|node| node != me && !handed.synced_to.contains(node))
            // A removed member's copy is rebuilt from the others; nothing goes to it.
            .filter(|node| m.state_of(node) != Some(MemberState::Removed))
            .min_by_key(|node| handed.failures.get(node).copied().unwrap_or(0));
        let to = match next {
            Some(to) if !handed.empty => to,
            _ => {
                self.sync_after.remove(&partition);
                return true;
            }
        };
        let mut sync = Active::new(partition, to);
        sync.final_sync = true;
        match handed.compared.clone() {
            Some(compared) => {
                sync.baseline = Some(compared);
                sync.phase = Phase::Comparing;
            }
            // The whole partition, in one scan (a tree would change nothing).
            None => {
                sync.phase = Phase::Streaming;
                sync.catch_up = true;
            }
        }
        self.active = Some(sync);
        self.step(now, out);
        false
    }

    pub(super) fn on_dropped(&mut self, now: Instant, done: StorageDone) {
        let Some((partition, _, _)) = self.dropping.take() else {
            return;
        };
        match done.result {
            Ok(StorageOutcome::Dropped { removed, done }) => {
                self.gate.try_take(removed as u64, now);
                if removed > 0 {
                    *self.dropped_so_far.entry(partition).or_default() += removed as u64;
                    debug!(self.logger, "dropped objects of a partition this node no longer holds";
                          "partition" => partition, "objects" => removed, "empty" => done);
                }
                if done {
                    if let Some(total) = self.dropped_so_far.remove(&partition) {
                        info!(self.logger, "dropped a partition this node no longer holds";
                              "partition" => partition, "objects" => total);
                        self.drops_with_objects += 1;
                    }
                    self.found_empty.insert(partition, now);
                    // What reaches the partition from now on is synced again before its drop.
                    self.handed.remove(&partition);
                }
            }
            Ok(other) => warn!(self.logger, "unexpected answer to a drop"; "answer" => ?other),
            Err(error) => {
                warn!(self.logger, "drop failed"; "partition" => partition, "error" => %error)
            }
        }
    }
}
