//! The coordinator's handling of replica answers: counting them against the quorum, starting
//! replication once the local write created the version, the reply at R or W, and read
//! repair once a read has every answer it will get (Dynamo §4.5). A child of `machine`.

use super::*;

impl Coordinator {
    /// One replica's answer (local storage or a peer) to a read, write or served request.
    pub(super) fn on_answer(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<StorageOutcome, ServiceError>,
        durable: bool,
        out: &mut Outbox,
    ) {
        if let Ok(StorageOutcome::Applied { set, version }) = result {
            // The local write is applied and its flush runs: replicate it meanwhile. The
            // operation stays: its flush answers it.
            let Some(key) = self.operations.get(&op).map(|info| info.request) else {
                return;
            };
            if let Some(mut pending) = self.requests.remove(&key) {
                self.replicate_write(key, &mut pending, (set, version, true), out);
                self.requests.insert(key, pending);
            }
            return;
        }
        let Some(OpInfo {
            request: key,
            node: replica,
            ..
        }) = self.operations.remove(&op)
        else {
            return; // the request already ended; a late answer changes nothing
        };
        let Some(mut pending) = self.requests.remove(&key) else {
            return;
        };
        let local = replica == self.settings.node;
        if let Work::Write {
            awaiting_local_flush,
            ..
        } = &mut pending.work
        {
            if local {
                *awaiting_local_flush = false;
            }
        }
        match result {
            Ok(outcome) => {
                let answer = (replica, outcome, durable);
                self.on_success(now, key, &mut pending, answer, out)
            }
            Err(error) => {
                // With "one" the coordinator's copy is the durable one: a put whose local flush
                // failed has none, whatever the other replicas say.
                let local_write_failed = matches!(
                    pending.work,
                    Work::Write { written: None, .. } | Work::Serve { .. } | Work::Members
                ) || (local
                    && matches!(
                        pending.work,
                        Work::Write {
                            durability: Durability::One,
                            ..
                        }
                    ));
                let state = pending.tracker.fail(replica.as_str(), &error);
                // Without its local write the coordinator has no version to replicate: that
                // failure is the answer. Otherwise the answer says how many of how many.
                if !pending.replied && (local_write_failed || state == QuorumState::Unreachable) {
                    let error = if local_write_failed {
                        error
                    } else {
                        // Given up before every replica answered: name the ones still out (a
                        // trial's error said "1 not answered" and not which).
                        for info in self.operations.values().filter(|i| i.request == key) {
                            pending
                                .tracker
                                .missing(info.node.as_str(), "not answered yet");
                        }
                        pending.tracker.error(pending.operation.name())
                    };
                    self.reply(now, &mut pending, Message::Error(error), out);
                    if local_write_failed {
                        self.deadlines.remove(&(pending.deadline, key));
                        return;
                    }
                }
            }
        }
        if pending.tracker.all_answered() {
            // Every request ends with a reply: if the last answer left the quorum short (fewer
            // healthy replicas than needed were asked), say so now rather than at the deadline.
            if !pending.replied {
                let error = pending.tracker.error(pending.operation.name());
                self.reply(now, &mut pending, Message::Error(error), out);
            }
            self.deadlines.remove(&(pending.deadline, key));
            repair_if_read(&pending, out);
        } else {
            self.requests.insert(key, pending);
        }
    }

    pub(super) fn on_success(
        &mut self,
        now: Instant,
        key: RequestKey,
        pending: &mut Pending,
        (replica, outcome, durable): (NodeId, StorageOutcome, bool),
        out: &mut Outbox,
    ) {
        let state = pending.tracker.ack();
        if let Work::Write { durable_copies, .. } = &mut pending.work {
            *durable_copies = durable_copies.saturating_add(u8::from(durable));
        }
        match (&mut pending.work, outcome) {
            (
                Work::Read {
                    replies, merged, ..
                },
                StorageOutcome::Versions(set),
            ) => {
                merged.merge(&set);
                replies.insert(replica, set);
            }
            (Work::Write { .. }, StorageOutcome::Written { set, version }) => {
                self.replicate_write(key, pending, (set, version, false), out);
            }
            (Work::Members, StorageOutcome::PendingHints(counts)) => {
                let message = self.members_reply(now, &counts);
                self.reply(now, pending, message, out);
                return;
            }
            (Work::Serve { request }, outcome) => {
                let message = match (*request, outcome) {
                    (ServeKind::Local, StorageOutcome::Versions(versions)) => {
                        Message::LocalReply(LocalReply { versions })
                    }
                    (ServeKind::Replica, StorageOutcome::Versions(versions)) => {
                        Message::ReplicaReply(ReplicaReply { versions, durable })
                    }
                    (_, other) => Message::Error(ServiceError::Storage {
                        reason: format!("storage answered a served request with {other:?}"),
                    }),
                };
                self.reply(now, pending, message, out);
                return;
            }
            // A replica acknowledging a write, or an outcome that does not fit the request
            // (which only counts as the acknowledgement it is).
            _ => {}
        }
        // With "one", W acknowledgements are not enough without the coordinator's flushed copy.
        let awaiting = matches!(
            pending.work,
            Work::Write {
                awaiting_local_flush: true,
                ..
            }
        );
        if state == QuorumState::Reached && !pending.replied && !awaiting {
            let message = self.success_reply(pending);
            self.reply(now, pending, message, out);
        }
    }

    /// The local write created the version (it is applied, and with `flush_pending` its flush
    /// still runs): sends the resulting set to the other replicas.
    fn replicate_write(
        &mut self,
        key: RequestKey,
        pending: &mut Pending,
        (set, version, flush_pending): (VersionSet, crate::versioning::Version, bool),
        out: &mut Outbox,
    ) {
        let Work::Write {
            context,
            written,
            remotes,
            also_write,
            durability,
            awaiting_local_flush,
            ..
        } = &mut pending.work
        else {
            return;
        };
        if written.is_some() {
            return; // replicated already (a repeated answer)
        }
        *context = Some(set.write_context(&version));
        *written = Some(set.clone());
        *awaiting_local_flush = flush_pending && *durability == Durability::One;
        let remotes = remotes.clone();
        let also_write = std::mem::take(also_write);
        let durable = durability.replicas_flush();
        for remote in remotes {
            let deadline = (pending.deadline, durable);
            self.send_write(key, remote, &pending.key, &set, deadline, out);
        }
        // Untracked: their answers find no operation and are dropped; a lost one is
        // covered by the transfer that is filling the new replica.
        for node in also_write {
            let op = OpId(self.new_id());
            let message = Message::ReplicaWrite(ReplicaWrite {
                key: Bytes::from(pending.key.clone()),
                versions: set.clone(),
                hint: None,
                durable,
            });
            out.request(to_peer(node, op, message, pending.deadline));
        }
    }

    /// The reply to a request whose quorum was reached.
    pub(super) fn success_reply(&self, pending: &Pending) -> Message {
        let seal = &self.settings.seal;
        let membership_version = self.membership.current().version;
        match &pending.work {
            Work::Read { merged, .. } => Message::GetReply(GetReply {
                values: merged
                    .live_values()
                    .map(|v| Bytes::from(v.to_vec()))
                    .collect(),
                context: Bytes::from(seal.encode(&pending.key, &merged.context())),
                membership_version,
            }),
            // See `VersionSet::write_context`: the writer's context plus its own write, unless
            // that would also cover a sibling the writer never saw.
            Work::Write {
                context,
                durable_copies,
                ..
            } => Message::PutReply(PutReply {
                context: Bytes::from(
                    seal.encode(&pending.key, &context.clone().unwrap_or_default()),
                ),
                membership_version,
                durable: *durable_copies,
            }),
            Work::Forward { .. } | Work::Serve { .. } | Work::Members => {
                Message::Error(ServiceError::MalformedFrame {
                    reason: "no success reply for this request".into(),
                })
            }
        }
    }
}

/// Read repair (Dynamo §4.5): once a read has every answer it will get, replicas whose set
/// differs from the merge get the merge. Replicas that never answered are left to anti-entropy.
pub(super) fn repair_if_read(pending: &Pending, out: &mut Outbox) {
    if let Work::Read {
        replies,
        merged,
        primaries,
        ..
    } = &pending.work
    {
        let targets: Vec<NodeId> = replies
            .iter()
            .filter(|(node, set)| primaries.contains(node) && *set != merged)
            .map(|(node, _)| node.clone())
            .collect();
        if !targets.is_empty() {
            // Best effort: a full repair queue drops the work (counted as rejected), and a
            // later read or anti-entropy repairs what this did not.
            out.offer(RepairEvent {
                key: pending.key.clone(),
                versions: merged.clone(),
                targets,
            });
        }
    }
}
