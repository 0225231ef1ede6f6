//! Hints whose intended node no longer holds their key (it left, was removed, or the partition
//! moved away after the hint was written): sent to the key's current replicas, one
//! `ReplicaWrite` each (this node's own copy merged here), and deleted only once every one of
//! them acknowledged (see the module above).

use super::*;

/// A hint sent to several current replicas (its intended node no longer holds its key).
pub(super) struct Fanout {
    /// Answers still awaited.
    remaining: usize,
    /// Whether one of them failed (then the hint stays for the next round).
    failed: bool,
}

/// Hints sent to their key's current replicas, by the node they were for, logged once per
/// node a round and only at its 1st, 10th, 100th... such round: per hint, a removal of a node
/// holding 1,400 hints logged 1,439 lines in 12 s, and a hint whose fan-out keeps failing (a
/// current replica down) is fanned out again every round.
#[derive(Debug, Default)]
pub(super) struct Retargeted {
    /// This round's count by intended node.
    round: BTreeMap<NodeId, u64>,
    /// Rounds with any, by intended node.
    rounds: crate::repeats::Repeats,
}

impl Retargeted {
    /// One hint for `intended` went to the current replicas.
    pub(super) fn note(&mut self, intended: &NodeId) {
        *self.round.entry(intended.clone()).or_insert(0) += 1;
    }

    /// The round ended: a line per intended node, at its 1st, 10th, 100th... round.
    pub(super) fn end_round(&mut self, logger: &Logger) {
        for (intended, hints) in std::mem::take(&mut self.round) {
            let rounds = self.rounds.note(intended.as_str());
            if let Some(rounds) = rounds {
                info!(logger, "hints for a node that no longer holds their keys went to the current replicas";
                      "intended" => %intended, "hints_this_round" => hints, "rounds" => rounds);
            }
        }
    }
}

impl HandoffMachine {
    /// `None` while the hint's intended node still holds its key (it goes there); else the
    /// key's current replicas but this node, and whether this node is one too.
    pub(super) fn retarget(&self, hint: &Hint) -> Option<(Vec<NodeId>, bool)> {
        let (view, me, n) = self.membership.as_ref()?;
        let m = view.current();
        let partition = m.ring().partition_of(&hint.key);
        if m.holds(&hint.target, partition, *n) {
            return None;
        }
        let replicas = m.replicas(partition, *n);
        let mut nodes: Vec<NodeId> = replicas
            .list
            .primaries
            .into_iter()
            .chain(replicas.also_write)
            .collect();
        let local = nodes.contains(me);
        nodes.retain(|node| node != me);
        Some((nodes, local))
    }

    /// This node's own copy of a fanned-out hint was merged (`merged`) or not: one answer.
    pub(super) fn local_merge_answered(&mut self, hint: &Hint, merged: bool, out: &mut Outbox) {
        if merged {
            self.round_acked += 1;
        } else {
            self.round_failed += 1;
        }
        self.fanout_answer(hint, merged, out);
    }

    /// Counts one answer of a fanned-out hint; deletes it once all acknowledged.
    pub(super) fn fanout_answer(&mut self, hint: &Hint, acked: bool, out: &mut Outbox) {
        let Some(fanout) = self.fanout.get_mut(&hint.hint_key) else {
            return;
        };
        fanout.remaining = fanout.remaining.saturating_sub(1);
        fanout.failed |= !acked;
        if fanout.remaining == 0 {
            let failed = fanout.failed;
            self.fanout.remove(&hint.hint_key);
            if !failed {
                let hints = vec![hint.clone()];
                let delete = self.storage(StorageRequest::DeleteHints { hints });
                out.request(delete);
            }
        }
    }

    /// Sends a hint whose intended node no longer holds its key to each current replica
    /// (`local`: this node is one too, and merges its copy here).
    pub(super) fn fan_out(
        &mut self,
        hint: Hint,
        destinations: Vec<NodeId>,
        local: bool,
        deadline: Instant,
        out: &mut Outbox,
    ) {
        let count = destinations.len() + usize::from(local);
        if count == 0 {
            return; // no replica at all in this view: the hint waits
        }
        debug!(self.logger, "hint for a node that no longer holds its key goes to the current replicas";
              "intended" => %hint.target, "replicas" => count);
        self.retargeted.note(&hint.target);
        let fanout = Fanout {
            remaining: count,
            failed: false,
        };
        self.fanout.insert(hint.hint_key.clone(), fanout);
        if local {
            // This node is a current replica too: its copy is merged here, and counts as
            // one acknowledgement once storage has it.
            let merge = self.storage(StorageRequest::Merge {
                key: hint.key.clone(),
                versions: hint.versions.clone(),
                durable: false,
            });
            self.local_merges.insert(merge.op, hint.clone());
            out.request(merge);
        }
        for peer in destinations {
            let op = self.new_op();
            let message = Message::ReplicaWrite(ReplicaWrite {
                key: Bytes::from(hint.key.clone()),
                versions: hint.versions.clone(),
                hint: None,
                durable: false,
            });
            out.request(ReplicateEvent::Send {
                peer,
                op,
                message,
                deadline,
                reply_to: ReplyTo::Handoff,
            });
            let delivery = Delivery {
                hints: vec![hint.clone()],
                fanout: true,
                deadline,
            };
            self.in_flight.insert(op, delivery);
        }
    }
}
