//! Tombstone purge, led by the smallest-id replica of a partition once every peer was found in
//! sync: candidates, a check by every member, then the commit (see the module above).

use super::*;

/// Keys looked at per purge step.
const PURGE_SCAN: usize = 1024;

/// A purge under way.
#[derive(Debug)]
pub(super) struct Purge {
    pub(super) partition: u32,
    pub(super) step: PurgeStep,
    pub(super) objects: Vec<(Vec<u8>, VersionSet)>,
    /// Members still to answer the current phase.
    pub(super) waiting: BTreeSet<OpId>,
    pub(super) deadline: Instant,
    /// Keys every answer so far agreed to.
    pub(super) agreed: Option<BTreeSet<Vec<u8>>>,
    pub(super) failed: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PurgeStep {
    Candidates,
    Check,
    Commit,
}

impl AntiEntropyMachine {
    /// Starts a purge step for a partition this node leads whose every peer was found in
    /// sync, if one is due.
    pub(super) fn start_purge(&mut self, now: Instant, out: &mut Outbox) {
        let grace_ms = self.settings.tombstone_grace.as_millis() as u64;
        let wall = self.wall_ms;
        // The due partition whose turn came first (the first due in partition order would
        // starve the later ones).
        let due = self
            .partitions
            .iter()
            .filter_map(|(p, s)| {
                if !s.purge_leader || s.next_purge > now || s.peers.is_empty() {
                    return None;
                }
                let synced = s
                    .peers
                    .values()
                    .map(|peer| peer.report.in_sync_since_ms)
                    .min()?;
                if synced == 0 {
                    return None;
                }
                Some((
                    s.next_purge,
                    *p,
                    synced.min(wall.saturating_sub(grace_ms)),
                    s.purge_cursor.clone(),
                ))
            })
            .min()
            .map(|(_, p, before, after)| (p, before, after));
        let Some((partition, before_ms, after)) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        let scan_limit = PURGE_SCAN;
        let op = self.storage(
            StorageRequest::PurgeCandidates {
                partition,
                after,
                scan_limit,
                before_ms,
            },
            out,
        );
        self.purge = Some(Purge {
            partition,
            step: PurgeStep::Candidates,
            objects: Vec::new(),
            waiting: BTreeSet::from([op]),
            deadline: now + STEP_DEADLINE,
            agreed: None,
            failed: false,
        });
    }

    pub(super) fn on_purge_answer(
        &mut self,
        now: Instant,
        op: OpId,
        answer: Answer,
        out: &mut Outbox,
    ) {
        let Some(mut purge) = self.purge.take() else {
            return;
        };
        purge.waiting.remove(&op);
        match (&purge.step, answer) {
            (
                PurgeStep::Candidates,
                Answer::Storage(StorageOutcome::PurgeCandidates {
                    objects,
                    resume,
                    scanned,
                }),
            ) => {
                self.debt += scanned as u64;
                let interval = self.jitter(self.settings.exchange_interval);
                if let Some(state) = self.partitions.get_mut(&purge.partition) {
                    state.purge_cursor = resume.clone();
                    if resume.is_none() {
                        state.next_purge = now + interval;
                    }
                }
                if objects.is_empty() {
                    return;
                }
                let mut objects = objects;
                cap_bytes(&mut objects);
                purge.objects = objects;
                purge.step = PurgeStep::Check;
                purge.deadline = now + STEP_DEADLINE;
                self.broadcast_purge(&mut purge, PurgePhase::Check, now, out);
                let op = self.storage(
                    StorageRequest::PurgeCheck {
                        objects: purge.objects.clone(),
                        replica: true,
                    },
                    out,
                );
                purge.waiting.insert(op);
            }
            (PurgeStep::Check, answer) => {
                match keys_of(answer) {
                    Some(keys) => {
                        let keys: BTreeSet<Vec<u8>> = keys.into_iter().collect();
                        purge.agreed = Some(match purge.agreed.take() {
                            Some(agreed) => agreed.intersection(&keys).cloned().collect(),
                            None => keys,
                        });
                    }
                    None => purge.failed = true,
                }
                if purge.waiting.is_empty() {
                    let agreed = purge.agreed.take().unwrap_or_default();
                    if purge.failed || agreed.is_empty() {
                        return; // a member did not answer: the keys wait for a later pass
                    }
                    purge.objects.retain(|(key, _)| agreed.contains(key));
                    purge.step = PurgeStep::Commit;
                    purge.deadline = now + STEP_DEADLINE;
                    self.broadcast_purge(&mut purge, PurgePhase::Commit, now, out);
                    let op = self.storage(
                        StorageRequest::PurgeCommit {
                            objects: purge.objects.clone(),
                        },
                        out,
                    );
                    purge.waiting.insert(op);
                    purge.agreed = None;
                }
            }
            (PurgeStep::Commit, answer) => {
                if let Answer::Storage(StorageOutcome::Keys(keys)) = &answer {
                    self.totals.tombstones_purged += keys.len() as u64;
                }
                if purge.waiting.is_empty() {
                    return;
                }
            }
            (PurgeStep::Candidates, _) => {
                // The look failed (an object that does not decode, say): try this partition
                // again later rather than every tick.
                let interval = self.jitter(self.settings.exchange_interval);
                if let Some(state) = self.partitions.get_mut(&purge.partition) {
                    state.next_purge = now + interval.max(FAILURE_PAUSE);
                }
                return;
            }
        }
        self.purge = Some(purge);
    }

    /// Sends a purge phase: the check to every other member (anyone may hold a hint), the
    /// commit to the other replicas.
    fn broadcast_purge(
        &mut self,
        purge: &mut Purge,
        phase: PurgePhase,
        now: Instant,
        out: &mut Outbox,
    ) {
        let me = self.settings.node.clone();
        let targets: Vec<NodeId> = match phase {
            PurgePhase::Check => self
                .membership
                .current()
                .members()
                .map(|m| m.id.clone())
                .filter(|id| *id != me)
                .collect(),
            PurgePhase::Commit => self
                .partitions
                .get(&purge.partition)
                .map(|s| s.peers.keys().cloned().collect())
                .unwrap_or_default(),
        };
        let objects = AaeObject::many(purge.objects.clone());
        for target in targets {
            // Whether the target replicates the partition, in this (the leader's) view: a
            // member whose view lags must still be checked as the replica it may be.
            let replica = self
                .partitions
                .get(&purge.partition)
                .is_some_and(|s| s.peers.contains_key(&target));
            let message = Message::AaePurge(AaePurge {
                partition: purge.partition,
                phase,
                replica,
                objects: objects.clone(),
            });
            let op = self.peer(target, message, now, out);
            purge.waiting.insert(op);
        }
    }
}
