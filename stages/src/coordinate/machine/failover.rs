//! The coordinator when nodes fail or sit outside the preference list: sloppy quorum's choice
//! of replicas (Dynamo §4.6), retries on spare fallbacks, rerouting replicas that miss their
//! deadline, the failure detector (§4.8.3: verdicts, probes, other stages' failed links),
//! and forwarding a put to a preference-list node.
//! A child of `machine`, so it works on the same private state.

use super::*;

impl Coordinator {
    /// A request to `peer` failed (`why`): the detector counts it, and a peer it marks down
    /// is logged, once per outage.
    pub(super) fn peer_failed(&mut self, peer: &NodeId, now: Instant, why: &'static str) {
        if self.detector.failed(peer, now, why) {
            info!(self.logger, "peer marked down"; "peer" => %peer, "why" => why);
        }
    }

    /// `peer` answered: it is up. If that brings it back, hinted handoff is told, so hints
    /// for it do not wait out the pause their failed deliveries started (offered: a full
    /// handoff queue only means the pause runs out as before).
    pub(super) fn heard_from(&mut self, peer: &NodeId, out: &mut Outbox) {
        if self.detector.succeeded(peer) {
            self.back_up(peer, out);
        }
    }

    /// A probe of `peer` was answered: up again, even one that said it stopped.
    fn probe_answered(&mut self, peer: &NodeId, out: &mut Outbox) {
        if self.detector.probe_answered(peer) {
            self.back_up(peer, out);
        }
    }

    fn back_up(&mut self, peer: &NodeId, out: &mut Outbox) {
        info!(self.logger, "peer up again"; "peer" => %peer);
        out.offer(HandoffEvent::PeerUp { peer: peer.clone() });
    }

    /// Another stage's link to `peer` failed: a member that may still hold data is suspected
    /// down. Not one that left or was removed: nothing is sent to it, a stopped leaver would
    /// be probed for ever, and the coordinator would never be idle. `refused`: its handshake
    /// was refused ([`Coordinator::handshake_refused`]).
    pub(super) fn link_failed(&mut self, peer: &NodeId, now: Instant, refused: bool) {
        if refused {
            return self.handshake_refused(peer, now);
        }
        let why = "a link to it failed under background traffic";
        if self.serving(peer) && self.detector.suspect(peer, now, why) {
            info!(self.logger, "peer marked down"; "peer" => %peer, "why" => why);
        }
    }

    /// A handshake with `peer` failed (either side refused): held down with that reason,
    /// whatever held it down before (`FailureDetector::refused`).
    fn handshake_refused(&mut self, peer: &NodeId, now: Instant) {
        if self.serving(peer) && self.detector.refused(peer, now) {
            let why = crate::failure_detector::REFUSED_HANDSHAKE;
            info!(self.logger, "peer marked down"; "peer" => %peer, "why" => why);
        }
    }

    /// `peer` said it stopped cleanly: a member that may still hold data is held down at
    /// once, before any request to it fails, until a probe finds it back
    /// (`FailureDetector::said_stopped`).
    pub(super) fn peer_stopped(&mut self, peer: &NodeId, now: Instant) {
        // A probe already out may be answered by the node before it stopped.
        self.probes.retain(|_, (probed, _)| probed != peer);
        if self.serving(peer) && self.detector.said_stopped(peer, now) {
            info!(self.logger, "peer marked down"; "peer" => %peer, "why" => crate::failure_detector::SAID_STOPPED);
        }
    }

    /// Whether `peer` is a member requests may still go to (active, or leaving and still
    /// holding partitions).
    fn serving(&self, peer: &NodeId) -> bool {
        let membership = self.membership.current();
        match membership.state_of(peer) {
            Some(MemberState::Active) => true,
            Some(MemberState::Leaving) => !membership.has_left(peer, self.settings.n),
            Some(MemberState::Removed) | None => false,
        }
    }

    /// A remote replica of a read or write that has not answered within `replica_timeout`
    /// counts as failed: its node is marked down and its replica is re-sent to the next spare
    /// fallback (with a hint, for writes) within the same request. Its late answer, if any, is
    /// ignored. Forwarded puts are not rerouted: the list node works to the same deadline.
    pub(super) fn reroute_silent_replicas(&mut self, now: Instant, out: &mut Outbox) {
        let me = self.settings.node.clone();
        let timeout = self.settings.replica_timeout;
        let mut silent = Vec::new();
        for (op, info) in self.operations.iter_mut() {
            if info.node == me || info.timed_out {
                continue;
            }
            let seen = *info.seen.get_or_insert(now);
            if now.saturating_duration_since(seen) >= timeout {
                info.timed_out = true;
                silent.push((*op, info.clone()));
            }
        }
        for (op, info) in silent {
            let reroutable = self
                .requests
                .get(&info.request)
                .is_some_and(|p| matches!(p.work, Work::Read { .. } | Work::Write { .. }));
            if !reroutable {
                continue;
            }
            self.peer_failed(&info.node, now, "silent past the replica timeout");
            if self.retry_on_spare(&info, out) {
                self.operations.remove(&op);
                // Named if the quorum fails after all: it did not answer.
                if let Some(pending) = self.requests.get_mut(&info.request) {
                    pending
                        .tracker
                        .missing(info.node.as_str(), "silent, sent to a spare");
                }
            }
        }
    }

    /// Sends a `Ping` to every down peer whose probe is due; expired probes count as failures.
    pub(super) fn probe_down_peers(&mut self, now: Instant, out: &mut Outbox) {
        let expired: Vec<OpId> = self
            .probes
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            if let Some((peer, _)) = self.probes.remove(&op) {
                self.peer_failed(&peer, now, "a probe went unanswered");
            }
        }
        let due = self.detector.due_probes(now);
        if !due.is_empty() {
            // At most once per probe interval: name the members that have stayed down.
            for still in self.detector.still_down(now, STILL_DOWN_EVERY) {
                if self.serving(&still.node) {
                    info!(self.logger, "peer still down"; "peer" => %still.node,
                          "for_s" => still.down_for.as_secs(), "why" => still.why);
                }
            }
        }
        for peer in due {
            let op = OpId(self.new_id());
            let deadline = now + PROBE_TIMEOUT;
            self.probes.insert(op, (peer.clone(), deadline));
            out.request(to_peer(peer, op, Message::Ping, deadline));
        }
    }

    /// The replicas of a key (sloppy quorum): each primary that is up (this node always is),
    /// or else the next healthy fallback standing in for it; and the healthy fallbacks left.
    /// While the key's partition moves, the primaries are its old replicas.
    pub(super) fn targets(&self, list: crate::ring::PreferenceList) -> (Vec<Target>, Vec<NodeId>) {
        let me = &self.settings.node;
        let mut spares: Vec<NodeId> = list
            .fallbacks
            .into_iter()
            .filter(|f| f == me || self.detector.is_up(f))
            .collect();
        let mut targets = Vec::new();
        for primary in list.primaries {
            if primary == *me || self.detector.is_up(&primary) {
                targets.push(Target {
                    node: primary,
                    hint: None,
                });
            } else if !spares.is_empty() {
                targets.push(Target {
                    node: spares.remove(0),
                    hint: Some(primary),
                });
            }
        }
        (targets, spares)
    }

    /// Re-sends a failed replica operation to the next healthy fallback, standing in for the
    /// node the failed one stood for. Returns false when no fallback is left.
    pub(super) fn retry_on_spare(&mut self, failed: &OpInfo, out: &mut Outbox) -> bool {
        let Some(pending) = self.requests.get_mut(&failed.request) else {
            return false;
        };
        let deadline = pending.deadline;
        let key = pending.key.clone();
        match &mut pending.work {
            Work::Read { spares, .. } if !spares.is_empty() => {
                let spare = spares.remove(0);
                self.send_read(failed.request, &spare, &key, deadline, out);
                true
            }
            Work::Write {
                written: Some(versions),
                spares,
                durability,
                ..
            } if !spares.is_empty() => {
                let spare = spares.remove(0);
                let versions = versions.clone();
                let durable = durability.replicas_flush();
                let hint = Some(failed.hint.clone().unwrap_or_else(|| failed.node.clone()));
                self.send_write(
                    failed.request,
                    Target { node: spare, hint },
                    &key,
                    &versions,
                    (deadline, durable),
                    out,
                );
                true
            }
            _ => false,
        }
    }

    /// Sends a forwarded put to the next untried preference-list node, or fails the request.
    pub(super) fn forward_next(&mut self, now: Instant, key: RequestKey, out: &mut Outbox) {
        let Some(pending) = self.requests.get_mut(&key) else {
            return;
        };
        let Work::Forward { message, untried } = &mut pending.work else {
            return;
        };
        if untried.is_empty() {
            if let Some(mut pending) = self.requests.remove(&key) {
                self.deadlines.remove(&(pending.deadline, key));
                let error = pending.tracker.error(pending.operation.name());
                self.reply(now, &mut pending, Message::Error(error), out);
            }
            return;
        }
        let peer = untried.remove(0);
        let (message, deadline) = (message.clone(), pending.deadline);
        pending.tracker.ask_one_more();
        let op = self.new_op(key, &peer, None);
        out.request(to_peer(peer, op, message, deadline));
    }

    pub(super) fn on_peer_answer(&mut self, now: Instant, done: PeerDone, out: &mut Outbox) {
        // The detector learns only from the peer itself: any answer (an error reply included)
        // shows it alive; only an unreachable or lost peer counts as a failure. A locally
        // refused send (our own queue full, shutting down) says nothing about the peer.
        let link_failed = matches!(
            done.result,
            Err(ServiceError::PeerUnreachable { .. } | ServiceError::PeerLost { .. })
        );
        let probe = self.probes.remove(&done.op).is_some();
        match &done.result {
            Ok(_) if probe => self.probe_answered(&done.peer, out),
            Ok(_) => self.heard_from(&done.peer, out),
            Err(ServiceError::PeerUnreachable { why: Some(_), .. }) => {
                self.handshake_refused(&done.peer, now);
            }
            Err(_) if link_failed => {
                self.peer_failed(&done.peer, now, "its link failed");
            }
            Err(_) => {}
        }
        if probe {
            return;
        }
        let forwarding = self
            .operations
            .get(&done.op)
            .and_then(|op| self.requests.get(&op.request))
            .is_some_and(|p| matches!(p.work, Work::Forward { .. }));
        if !forwarding {
            // Only a replica whose link failed, or that does not hold the key in its view, is
            // retried on a spare (replica reads and writes are idempotent, so one that may
            // have arrived costs nothing); one that answered with another error has spoken.
            let not_a_replica = matches!(
                done.result,
                Ok(Message::Error(ServiceError::NotAReplica { .. }))
            );
            if link_failed || not_a_replica {
                if let Some(info) = self.operations.get(&done.op).cloned() {
                    if self.retry_on_spare(&info, out) {
                        self.operations.remove(&done.op);
                        return;
                    }
                }
            }
            let mut durable = false;
            let result = done.result.and_then(|message| match message {
                Message::ReplicaReply(reply) => {
                    durable = reply.durable;
                    Ok(StorageOutcome::Versions(reply.versions))
                }
                Message::Error(error) => Err(error),
                other => Err(ServiceError::MalformedFrame {
                    reason: format!("unexpected replica answer: {other}"),
                }),
            });
            return self.on_answer(now, done.op, result, durable, out);
        }
        let Some(OpInfo {
            request: key, node, ..
        }) = self.operations.remove(&done.op)
        else {
            return;
        };
        match done.result {
            // It holds no copy of the key in its view, or is stopping, and applied nothing: the
            // next one.
            Ok(Message::Error(
                error @ (ServiceError::NotAReplica { .. } | ServiceError::ShuttingDown),
            )) => {
                if let Some(pending) = self.requests.get_mut(&key) {
                    pending.tracker.fail(node.as_str(), &error);
                }
                self.forward_next(now, key, out);
            }
            // The preference-list node answered: its answer is the client's, error or not.
            Ok(message) => {
                if let Some(mut pending) = self.requests.remove(&key) {
                    self.deadlines.remove(&(pending.deadline, key));
                    self.reply(now, &mut pending, message, out);
                }
            }
            // The link broke after the put was sent: the node may have applied it. Sending it to
            // the next node would apply it a second time under another dot, a version that a
            // reconciling put covering what the client saw would not cover (the simulator found
            // this). The client hears that the outcome is unknown.
            Err(error @ ServiceError::PeerLost { .. }) => {
                if let Some(mut pending) = self.requests.remove(&key) {
                    self.deadlines.remove(&(pending.deadline, key));
                    self.reply(now, &mut pending, Message::Error(error), out);
                }
            }
            // Never delivered (unreachable, or refused by our own queue): try the next
            // preference-list node.
            Err(error) => {
                if let Some(pending) = self.requests.get_mut(&key) {
                    pending.tracker.fail(node.as_str(), &error);
                }
                self.forward_next(now, key, out);
            }
        }
    }
}

/// The put or delete to send to a preference-list node, marked forwarded.
pub(super) fn forwarded_message(
    seal: &ContextSeal,
    key: &[u8],
    context: &VClock,
    value: Option<Vec<u8>>,
    (w, timeout, durable, overwrite): (Option<usize>, Option<Duration>, Option<Durability>, bool),
) -> Message {
    let key = Bytes::from(key.to_vec());
    // Unbound: this node checked the client's context against the key already, and a list
    // node of an earlier build (mid-upgrade) reads only unbound contexts.
    let context = Bytes::from(seal.encode_unbound(context));
    let w = w.map(|w| w.min(u8::MAX as usize) as u8);
    let timeout_ms = timeout.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
    match value {
        Some(value) => Message::Put(PutRequest {
            key,
            context: Some(context),
            value: Bytes::from(value),
            w,
            timeout_ms,
            forwarded: true,
            durable,
            overwrite,
        }),
        None => Message::Delete(DeleteRequest {
            key,
            context,
            w,
            timeout_ms,
            forwarded: true,
            durable,
        }),
    }
}
