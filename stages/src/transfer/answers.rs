//! Storage's and the peer's answers to the active transfer's steps (snapshot and comparison,
//! batches read and streamed, acknowledgements), and what a scan's end leads to (the next
//! segment, the settle, or the finish); storage's answers to a receiver's merge and to a drop
//! step pass through here too.

use super::*;

impl TransferMachine {
    /// Storage answered: a receiver's merge (its acknowledgement goes back), a cleanup drop
    /// step, or a step of the active transfer.
    pub(super) fn on_storage(&mut self, now: Instant, done: StorageDone, out: &mut Outbox) {
        if let Some((origin, count)) = self.serving.remove(&done.op) {
            let message = match done.result {
                Ok(_) => Message::TransferAck(TransferAck { merged: count }),
                Err(error) => Message::Error(error),
            };
            return out.reply(IntakeEvent::reply(origin, &message));
        }
        if self
            .dropping
            .as_ref()
            .is_some_and(|(_, op, _)| *op == done.op)
        {
            return self.on_dropped(now, done);
        }
        let Some(active) = &mut self.active else {
            return;
        };
        match &active.waiting {
            Some(Waiting::Storage { op, .. }) if *op == done.op => active.waiting = None,
            _ => return,
        }
        let outcome = match done.result {
            Ok(outcome) => outcome,
            Err(error) => {
                warn!(self.logger, "transfer step failed in storage"; "partition" => active.partition, "error" => %error);
                return self.failed(now, format!("storage: {error}"));
            }
        };
        match (active.phase, outcome) {
            (Phase::Snapshot, StorageOutcome::Tree(view)) => {
                active.baseline = view.ready.then_some(view.hashes);
                active.phase = Phase::Streaming;
            }
            (Phase::Comparing, StorageOutcome::Tree(view)) => {
                let changed = match (&active.baseline, view.ready) {
                    (Some(baseline), true) if baseline.len() == view.hashes.len() => Some(
                        differing(baseline, &view.hashes)
                            .into_iter()
                            .map(|s| s as u16)
                            .collect::<VecDeque<u16>>(),
                    ),
                    _ => None,
                };
                active.compared = view.ready.then_some(view.hashes);
                if changed.as_ref().is_some_and(VecDeque::is_empty) {
                    return self.finish(out);
                }
                debug!(self.logger, "transfer catches up"; "partition" => active.partition,
                       "segments" => changed.as_ref().map_or(-1, |c| c.len() as i64));
                active.catch_up = true;
                active.segments = changed;
                active.cursor = None;
                active.phase = Phase::Streaming;
            }
            (
                Phase::Streaming,
                StorageOutcome::Batch {
                    objects,
                    bytes,
                    resume,
                },
            ) => {
                if objects.is_empty() {
                    // A final sync's whole-partition scan found nothing: no replica needs it.
                    if active.final_sync && active.segments.is_none() && active.cursor.is_none() {
                        let partition = active.partition;
                        if let Some(handed) = self.handed.get_mut(&partition) {
                            handed.empty = true;
                        }
                    }
                    return self.end_of_scan(now, out);
                }
                let count = objects.len() as u64;
                // Paid now that the count is known; `step` asked for no more than was there.
                self.gate.try_take(count, now);
                let op = self.new_op();
                let deadline = now + self.settings.ack_timeout;
                let Some(active) = &mut self.active else {
                    return;
                };
                out.request(ReplicateEvent::Send {
                    peer: active.to.clone(),
                    op,
                    message: Message::TransferBatch(TransferBatch {
                        partition: active.partition,
                        objects: AaeObject::many(objects),
                    }),
                    deadline,
                    reply_to: ReplyTo::Transfer,
                });
                active.waiting = Some(Waiting::Peer {
                    op,
                    deadline,
                    resume,
                    objects: count,
                    bytes,
                });
                return;
            }
            (phase, outcome) => {
                warn!(self.logger, "transfer got an unexpected storage answer";
                      "phase" => ?phase, "answer" => ?outcome);
                return self.failed(now, "an unexpected storage answer".into());
            }
        }
        self.step(now, out);
    }

    pub(super) fn on_peer(&mut self, now: Instant, done: PeerDone, out: &mut Outbox) {
        let Some(active) = &mut self.active else {
            return;
        };
        let (resume, objects, bytes) = match &mut active.waiting {
            Some(Waiting::Peer {
                op,
                resume,
                objects,
                bytes,
                ..
            }) if *op == done.op => (resume.take(), *objects, *bytes),
            _ => return,
        };
        active.waiting = None;
        match done.result {
            Ok(Message::TransferAck(_)) => {
                active.objects += objects;
                active.bytes += bytes;
                active.failures = 0;
                active.last_error = None;
                match resume {
                    Some(cursor) => active.cursor = Some(cursor),
                    None => return self.end_of_scan(now, out),
                }
            }
            Ok(other) => {
                debug!(self.logger, "transfer batch refused"; "partition" => active.partition,
                       "to" => %active.to, "answer" => %other);
                return self.failed(now, format!("the receiver answered {other}"));
            }
            Err(error) => {
                debug!(self.logger, "transfer batch failed"; "partition" => active.partition,
                       "to" => %active.to, "error" => %error);
                if matches!(error, ServiceError::FrameTooLarge { .. }) {
                    // Encoded larger than its byte count said (long keys, many small clocks):
                    // the same batch would be refused for ever, so the next ones are smaller.
                    active.keys_cap = Some((objects as usize / 2).max(1));
                }
                return self.failed(now, error.to_string());
            }
        }
        self.step(now, out);
    }

    /// A step failed (`why`): retry after a pause from the last acknowledged key; park the
    /// transfer after repeated failures, saying why.
    pub(super) fn failed(&mut self, now: Instant, why: String) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        active.last_error = Some(why);
        if active.final_sync {
            // Tried again after a pause that doubles per failure of this target, the least
            // failed replica first, among those that hold the partition then (a dead target
            // removed meanwhile is no longer asked); the replicas it reached keep their sync.
            let failures = self.handed.get_mut(&active.partition).map_or(1, |handed| {
                let failures = handed.failures.entry(active.to.clone()).or_insert(0);
                *failures += 1;
                *failures
            });
            if failures == 1 {
                info!(self.logger, "final sync failed; the partition's drop waits for it";
                      "partition" => active.partition, "to" => %active.to);
            } else {
                debug!(self.logger, "final sync failed again"; "partition" => active.partition,
                       "to" => %active.to, "failures" => failures);
            }
            let pause = MIN_RETRY_PAUSE
                .saturating_mul(1 << failures.min(9))
                .min(MAX_SYNC_PAUSE);
            self.sync_after.insert(active.partition, now + pause);
            return;
        }
        active.waiting = None;
        active.failures += 1;
        active.retries += 1;
        if active.failures >= FAILURES_BEFORE_PARKING {
            let error = active.last_error.as_deref().unwrap_or_default();
            // A parked copy holds every later commit: its first parking is a warning (a trial
            // missed it at INFO); it parks again after each pause, told at INFO.
            active.parks += 1;
            if active.parks == 1 {
                warn!(self.logger, "transfer parked after failures: every later commit waits for it";
                      "partition" => active.partition, "to" => %active.to,
                      "objects" => active.objects, "error" => error);
            } else {
                info!(self.logger, "transfer parked again"; "partition" => active.partition,
                      "to" => %active.to, "objects" => active.objects, "retries" => active.retries,
                      "error" => error);
            }
            let key = (active.partition, active.to.clone());
            self.parked.insert(key, (active, now + PARK_PAUSE));
            return;
        }
        let pause = MIN_RETRY_PAUSE
            .saturating_mul(1 << active.failures.min(8))
            .min(MAX_RETRY_PAUSE);
        active.retry_at = Some(now + pause);
        self.active = Some(active);
    }

    /// The current scan reached its end: the next segment of the pass, or the pass's end.
    fn end_of_scan(&mut self, now: Instant, out: &mut Outbox) {
        let settle_until = self
            .commit_seen
            .as_ref()
            .map_or(now, |(_, seen)| *seen + self.settings.settle)
            .max(now);
        let Some(active) = &mut self.active else {
            return;
        };
        active.cursor = None;
        if let Some(segments) = &mut active.segments {
            segments.pop_front();
            if !segments.is_empty() {
                return self.step(now, out);
            }
        }
        if active.catch_up {
            return self.finish(out);
        }
        active.phase = Phase::Settling {
            until: settle_until,
        };
        self.step(now, out);
    }
}
