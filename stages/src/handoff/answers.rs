//! What a delivery's answer does to its hints (deleted once acknowledged, kept for the next
//! round otherwise, a busy target's batch counted apart) and how a round ends (its pause).

use super::*;

impl HandoffMachine {
    /// A peer answered a delivery (or it failed): the hints it carried are deleted once
    /// acknowledged, or stay for the next round.
    pub(super) fn delivery_answered(
        &mut self,
        now: Instant,
        delivery: Delivery,
        done: PeerDone,
        out: &mut Outbox,
    ) {
        let acked = match &done.result {
            Ok(Message::ReplicaReply(_)) => delivery.fanout,
            Ok(Message::HandoffAck(ack)) => {
                !delivery.fanout && ack.merged as usize == delivery.hints.len()
            }
            _ => false,
        };
        if !acked {
            if !delivery.fanout
                && matches!(
                    &done.result,
                    Ok(Message::Error(ServiceError::Overloaded { .. }))
                )
            {
                // The target is pacing what it takes in (or its queue is full): its hints
                // stay, and go again in a later round of this pass or the next. Their tokens
                // come back: nothing was delivered, so a busy receiver does not halve the
                // rate this node hands off at once it takes batches again.
                self.round_busy += delivery.hints.len() as u64;
                self.gate.give_back(delivery.hints.len() as u64, now);
                return;
            }
            let refusal = match &done.result {
                Ok(Message::Error(error))
                    if !matches!(
                        error,
                        ServiceError::Overloaded { .. } | ServiceError::ShuttingDown
                    ) =>
                {
                    Some(error)
                }
                _ => None,
            };
            if let Some(ServiceError::NotAReplica { partition, .. }) = refusal {
                // The target does not hold that partition in its view (one of the two views
                // is behind): its hints go alone, so they do not hold back the rest of a
                // batch, until the views agree (then it takes them, or this node's view
                // retargets them). Not a warning: it passes once gossip catches up.
                let partition = *partition;
                debug!(self.logger, "hints refused: the target does not hold their partition";
                       "target" => %done.peer, "partition" => partition);
                let of_partition = |h: &&Hint| self.partition_of(&h.key) == Some(partition);
                let held_back: Vec<Vec<u8>> = delivery
                    .hints
                    .iter()
                    .filter(of_partition)
                    .map(|h| h.hint_key.clone())
                    .collect();
                self.solo.extend(held_back);
            } else if let Some(error) =
                refusal.filter(|_| !delivery.fanout && delivery.hints.len() > 1)
            {
                warn!(self.logger, "a hint batch was refused; its hints go one by one next";
                      "target" => %done.peer, "hints" => delivery.hints.len(), "error" => %error);
                self.solo
                    .extend(delivery.hints.iter().map(|h| h.hint_key.clone()));
            }
            return self.delivery_failed(delivery, out);
        }
        self.round_acked += delivery.hints.len() as u64;
        out.count(crate::seda::Count::HintsHandedOff(
            delivery.hints.len() as u64
        ));
        if delivery.fanout {
            for hint in &delivery.hints {
                self.fanout_answer(hint, true, out);
            }
        } else {
            let delete = self.storage(StorageRequest::DeleteHints {
                hints: delivery.hints,
            });
            out.request(delete);
        }
    }

    /// A round ended (nothing in flight): if every delivery failed, pause the next rounds,
    /// longer each time; one success ends the pause. A round nobody acknowledged in which a
    /// target refused as busy pauses the shortest pause, never longer: the busy node is up
    /// and takes batches again once it has paid for the last, but each batch it refuses
    /// costs it the reading of one, so offering one every tick would spend its time on them.
    pub(super) fn end_round(&mut self, now: Instant) {
        if self.round_acked == 0 && self.round_busy > 0 {
            self.paused_until = Some(now + MIN_ROUND_BACKOFF);
        } else if self.round_acked == 0 && self.round_failed > 0 {
            self.backoff = (self.backoff * 2).clamp(MIN_ROUND_BACKOFF, MAX_ROUND_BACKOFF);
            self.paused_until = Some(now + self.backoff);
        } else if self.round_acked > 0 {
            self.backoff = Duration::ZERO;
            self.paused_until = None;
        }
        self.round_acked = 0;
        self.round_failed = 0;
        self.round_busy = 0;
        self.retargeted.end_round(&self.logger);
    }
}
