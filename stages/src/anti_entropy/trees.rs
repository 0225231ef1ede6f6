//! The partitions' Merkle trees as this stage keeps them, rebuilt from storage in chunks after
//! a start and again on a slow jittered schedule to catch rot; and the stage's report (`shoal
//! admin aae`): each partition's tree and peers, and the totals.

use super::*;

/// Keys folded per rebuild step (the partition's writers wait for one step at most).
const REBUILD_CHUNK: usize = 256;

impl AntiEntropyMachine {
    /// Starts the next rebuild step: a partition without a tree first, else one due for its
    /// rot check.
    pub(super) fn start_rebuild(&mut self, now: Instant, out: &mut Outbox) {
        // Missing trees first, then rot checks; a partition whose step failed waits its
        // `next_rebuild` so it cannot hold every later partition back.
        let due = self
            .partitions
            .iter()
            .filter(|(_, s)| s.next_rebuild <= now)
            .min_by_key(|(_, s)| s.tree_ready)
            .map(|(p, _)| *p);
        let Some(partition) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        let limit = REBUILD_CHUNK;
        let op = self.storage(StorageRequest::RebuildTree { partition, limit }, out);
        self.rebuild = Some((partition, op, now + STEP_DEADLINE));
    }

    pub(super) fn on_rebuilt(&mut self, now: Instant, partition: u32, outcome: StorageOutcome) {
        let StorageOutcome::Rebuilt(step) = outcome else {
            return;
        };
        self.debt += step.folded as u64;
        if !step.done {
            return; // the next tick folds the next chunk
        }
        self.totals.rebuilds += 1;
        if step.rot {
            self.totals.rot_found += 1;
            warn!(self.logger, "a partition's Merkle tree differed from its data; rebuilt";
                "partition" => partition);
        }
        let interval = self.jitter(self.settings.rebuild_interval);
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.tree_ready = true;
            state.next_rebuild = now + interval;
        }
    }

    pub(super) fn publish(&mut self, summaries: Vec<TreeSummary>) {
        for summary in summaries {
            if let Some(state) = self.partitions.get_mut(&summary.partition) {
                state.summary = Some(summary);
            }
        }
        let partitions = self
            .partitions
            .iter()
            .map(|(p, s)| AaePartitionReport {
                partition: *p,
                tree: s
                    .summary
                    .as_ref()
                    .map_or("missing", |t| t.state)
                    .to_string(),
                root: s.summary.as_ref().map_or(0, |t| t.root),
                keys: s.summary.as_ref().map_or(0, |t| t.keys),
                peers: s.peers.values().map(|peer| peer.report.clone()).collect(),
            })
            .collect();
        let t = self.totals;
        self.board.publish(AaeReport {
            node: self.settings.node.clone(),
            enabled: self.settings.enabled,
            partitions,
            exchanges: t.exchanges,
            in_sync_exchanges: t.in_sync_exchanges,
            keys_sent: t.keys_sent,
            keys_received: t.keys_received,
            digests_compared: t.digests_compared,
            bytes_exchanged: t.bytes_exchanged,
            rebuilds: t.rebuilds,
            rot_found: t.rot_found,
            tombstones_purged: t.tombstones_purged,
        });
    }
}
