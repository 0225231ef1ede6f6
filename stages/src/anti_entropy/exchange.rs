//! The driver side of an exchange: root, branches and segments compared (confirmed once),
//! then the differing keys' digests, then the objects sent and fetched (see the module above).

use super::*;

/// How soon a pair is tried again when a tree was not ready or an exchange was cut short
/// (jittered, so two replicas that opened one partition at once do not collide again).
const RETRY_SOON: Duration = Duration::from_millis(500);

/// Where an exchange is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    OwnBranches,
    PeerBranches,
    OwnSegments { confirming: bool },
    PeerSegments { confirming: bool },
    WaitConfirm { until: Instant },
    OwnDigests,
    PeerDigests,
    OwnObjects,
    PeerSync,
    MergeBack,
}

/// One exchange under way.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) partition: u32,
    pub(super) peer: NodeId,
    pub(super) started_ms: u64,
    pub(super) step: Step,
    /// The operation the step waits for, and until when.
    pub(super) waiting: Option<(OpId, Instant)>,
    pub(super) root: u64,
    pub(super) own_hashes: Vec<u64>,
    pub(super) branches: Vec<u16>,
    pub(super) first_segments: Vec<u16>,
    pub(super) segments: Vec<u16>,
    pub(super) own_digests: BTreeMap<Vec<u8>, u64>,
    /// Where this node's digest list stopped short, if it did: its last key's place.
    pub(super) own_cut: Option<Place>,
    /// Where the lists begin: after this place, once both lists of the same segments
    /// stopped short with nothing differing before (the exchange goes on from there).
    pub(super) resume: Option<Place>,
    pub(super) theirs_to_fetch: Vec<Vec<u8>>,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) cut_short: bool,
}

/// A key's place in stored order: its segment, then the key.
pub(super) type Place = (u16, Vec<u8>);

/// The differing keys two digest lists show.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Differences {
    /// Keys this node holds differently or alone: to send.
    pub(super) send: Vec<Vec<u8>>,
    /// Keys the peer holds differently or alone: to ask for.
    pub(super) fetch: Vec<Vec<u8>>,
    /// Not every difference of the segments was found or taken: exchange again soon.
    pub(super) cut_short: bool,
    /// Where the comparison stopped: the earlier of the two lists' cuts, if either stopped
    /// short.
    pub(super) boundary: Option<Place>,
}

/// Compares two digest lists of the same segments, each with the place where it stopped
/// short of the segments' end, if it did. A list is complete only up to its cut, so keys
/// are compared up to the earlier cut and the rest left to the next exchange: a key past it
/// is not missing, only not listed (comparing it would send, or ask for, what the other side
/// already holds). At most `max_keys` keys are taken.
pub(super) fn compare_digests(
    (own, own_cut): (&BTreeMap<Vec<u8>, u64>, Option<Place>),
    (theirs, their_cut): (&BTreeMap<Vec<u8>, u64>, Option<Place>),
    place: impl Fn(&[u8]) -> Place,
    max_keys: usize,
) -> Differences {
    let boundary = match (own_cut, their_cut) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut found = Differences {
        send: Vec::new(),
        fetch: Vec::new(),
        cut_short: boundary.is_some(),
        boundary: boundary.clone(),
    };
    let keys: BTreeSet<&Vec<u8>> = own
        .keys()
        .chain(theirs.keys())
        .filter(|key| boundary.as_ref().is_none_or(|b| place(key) <= *b))
        .collect();
    for key in keys {
        let (mine, other) = (own.get(key), theirs.get(key));
        if mine == other {
            continue;
        }
        if found.send.len() + found.fetch.len() >= max_keys {
            found.cut_short = true;
            break;
        }
        if mine.is_some() {
            found.send.push(key.clone());
        }
        if other.is_some() {
            found.fetch.push(key.clone());
        }
    }
    found
}

impl AntiEntropyMachine {
    /// Starts the exchange whose time came first, if any and if the gate allows one.
    pub(super) fn start_exchange(&mut self, now: Instant, out: &mut Outbox) {
        let leases = &self.leases;
        let due = self
            .partitions
            .iter()
            .filter(|(p, s)| s.tree_ready && leases.get(p).is_none_or(|l| l.until <= now))
            .flat_map(|(p, s)| {
                s.peers
                    .iter()
                    .filter(|(_, state)| state.next_exchange <= now)
                    .map(move |(peer, state)| (state.next_exchange, *p, peer.clone()))
            })
            .filter(|(_, p, peer)| !self.copy_pending(*p, peer))
            .min();
        let Some((_, partition, peer)) = due else {
            return;
        };
        if !self.pay_debt(now) {
            return;
        }
        self.debt += 1;
        let op = self.storage(
            StorageRequest::TreeView {
                partition,
                branches: None,
            },
            out,
        );
        self.exchange = Some(Exchange {
            partition,
            peer,
            started_ms: self.wall_ms,
            step: Step::OwnBranches,
            waiting: Some((op, now + STEP_DEADLINE)),
            root: 0,
            own_hashes: Vec::new(),
            branches: Vec::new(),
            first_segments: Vec::new(),
            segments: Vec::new(),
            own_digests: BTreeMap::new(),
            own_cut: None,
            resume: None,
            theirs_to_fetch: Vec::new(),
            sent: 0,
            received: 0,
            cut_short: false,
        });
    }

    /// Ends the exchange. `in_sync` records that the pair held the same data as of its start
    /// (what the purge relies on); `retry` brings the pair's next exchange forward (a tree
    /// was not ready, or the exchange was cut short).
    pub(super) fn finish_exchange(
        &mut self,
        exchange: Exchange,
        now: Instant,
        in_sync: bool,
        retry: bool,
    ) {
        let next = if retry {
            self.jitter(RETRY_SOON)
        } else {
            self.jitter(self.settings.exchange_interval)
        };
        // Before the peer's tree was seen nothing was compared: not an exchange.
        let compared =
            exchange.step != Step::OwnBranches && (in_sync || exchange.step != Step::PeerBranches);
        let Some(peer) = self
            .partitions
            .get_mut(&exchange.partition)
            .and_then(|s| s.peers.get_mut(&exchange.peer))
        else {
            return;
        };
        peer.next_exchange = now + next;
        if !compared {
            return;
        }
        let works_again = self.failing_peers.remove(&exchange.peer);
        peer.report.exchanges += 1;
        peer.report.last_exchange_ms = self.wall_ms;
        peer.report.keys_sent += exchange.sent;
        peer.report.keys_received += exchange.received;
        let found_in_sync = in_sync && !exchange.cut_short;
        if found_in_sync {
            peer.report.in_sync_since_ms = exchange.started_ms;
        }
        self.totals.exchanges += 1;
        self.debt += exchange.sent + exchange.received;
        self.totals.keys_sent += exchange.sent;
        self.totals.keys_received += exchange.received;
        if found_in_sync {
            self.note_catch_up();
        }
        if works_again {
            info!(self.logger, "anti-entropy exchanges work again"; "peer" => %exchange.peer);
            // Its other pairs were put off an interval when it failed (`abandon_exchange`):
            // they come soon, now.
            let soon = now + RETRY_SOON;
            for (p, state) in self.partitions.iter_mut() {
                if *p == exchange.partition {
                    continue;
                }
                if let Some(other) = state.peers.get_mut(&exchange.peer) {
                    other.next_exchange = other.next_exchange.min(soon);
                }
            }
        }
    }

    /// Gives the exchange up (a peer or storage failed, or a step timed out); every pair with
    /// the peer is tried again at its normal interval.
    pub(super) fn abandon_exchange(&mut self, exchange: Exchange, now: Instant, why: &str) {
        if self.failing_peers.insert(exchange.peer.clone()) {
            info!(self.logger, "anti-entropy exchange given up (more with this peer at debug until one completes)";
                "partition" => exchange.partition, "peer" => %exchange.peer, "why" => why);
        } else {
            debug!(self.logger, "anti-entropy exchange given up";
                "partition" => exchange.partition, "peer" => %exchange.peer, "why" => why);
        }
        // Every pair with this peer waits an interval, not only this one: a peer that is down
        // would otherwise fail one exchange per partition in turn, each costing a tree read
        // and a token, and show as a backlog of due pairs that can make no progress (a
        // trial's `admin throttle` with every peer down). The first exchange that works again
        // brings its other pairs forward (`finish_exchange`).
        let interval = self.settings.exchange_interval;
        let mut delays = Vec::new();
        for (p, state) in &self.partitions {
            if state.peers.contains_key(&exchange.peer) {
                delays.push(*p);
            }
        }
        for p in delays {
            let next = now + self.jitter(interval);
            if let Some(peer) = self
                .partitions
                .get_mut(&p)
                .and_then(|s| s.peers.get_mut(&exchange.peer))
            {
                peer.next_exchange = peer.next_exchange.max(next);
            }
        }
    }

    /// Advances the exchange with the answer its step waited for.
    pub(super) fn on_exchange_answer(&mut self, now: Instant, answer: Answer, out: &mut Outbox) {
        let Some(mut exchange) = self.exchange.take() else {
            return;
        };
        exchange.waiting = None;
        let partition = exchange.partition;
        let peer = exchange.peer.clone();
        match (exchange.step.clone(), answer) {
            (Step::OwnBranches, Answer::Storage(StorageOutcome::Tree(view))) => {
                if !view.ready {
                    return self.finish_exchange(exchange, now, false, true);
                }
                exchange.root = view.root;
                exchange.own_hashes = view.hashes;
                let message = Message::AaeTree(AaeTree {
                    partition,
                    branches: None,
                    root: Some(exchange.root),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerBranches;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerBranches, Answer::Peer(Message::AaeTreeReply(reply))) => {
                if !reply.ready {
                    return self.finish_exchange(exchange, now, false, true);
                }
                if reply.root == exchange.root {
                    self.totals.in_sync_exchanges += 1;
                    return self.finish_exchange(exchange, now, true, false);
                }
                exchange.branches = differing(&exchange.own_hashes, &reply.hashes)
                    .into_iter()
                    .filter(|&b| b < self.shape.branches())
                    .map(|b| b as u16)
                    .collect();
                self.ask_own_segments(&mut exchange, false, now, out);
            }
            (Step::OwnSegments { confirming }, Answer::Storage(StorageOutcome::Tree(view))) => {
                exchange.own_hashes = view.hashes;
                let message = Message::AaeTree(AaeTree {
                    partition,
                    branches: Some(exchange.branches.clone()),
                    root: None,
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerSegments { confirming };
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerSegments { confirming }, Answer::Peer(Message::AaeTreeReply(reply))) => {
                let segments: Vec<u16> = exchange
                    .branches
                    .iter()
                    .flat_map(|&b| self.shape.segments_of(b))
                    .collect();
                let found: Vec<u16> = differing(&exchange.own_hashes, &reply.hashes)
                    .into_iter()
                    .filter_map(|i| segments.get(i).copied())
                    .collect();
                if !confirming {
                    exchange.first_segments = found;
                    exchange.step = Step::WaitConfirm {
                        until: now + self.settings.confirm_delay,
                    };
                } else {
                    let first: BTreeSet<u16> = exchange.first_segments.iter().copied().collect();
                    exchange.segments = found.into_iter().filter(|s| first.contains(s)).collect();
                    if exchange.segments.is_empty() {
                        // Every difference was a write in flight, now arrived on both.
                        return self.finish_exchange(exchange, now, true, false);
                    }
                    if exchange.segments.len() > MAX_AAE_ITEMS {
                        exchange.segments.truncate(MAX_AAE_ITEMS);
                        exchange.cut_short = true;
                    }
                    self.ask_own_digests(&mut exchange, now, out);
                }
            }
            (Step::OwnDigests, Answer::Storage(StorageOutcome::Digests(digests))) => {
                let limit = self.digest_limit();
                exchange.own_cut = (digests.len() >= limit)
                    .then(|| digests.last().map(|(key, _)| self.place(key)))
                    .flatten();
                exchange.own_digests = digests.into_iter().collect();
                let message = Message::AaeDigests(AaeDigests {
                    partition,
                    segments: exchange.segments.clone(),
                    limit: limit as u32,
                    after: exchange
                        .resume
                        .as_ref()
                        .map(|(_, key)| Bytes::from(key.clone())),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerDigests;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerDigests, Answer::Peer(Message::AaeDigestsReply(reply))) => {
                let their_cut = (reply.cut || reply.digests.len() >= self.digest_limit())
                    .then(|| reply.digests.last().map(|d| self.place(&d.key)))
                    .flatten();
                self.totals.digests_compared +=
                    (exchange.own_digests.len() + reply.digests.len()) as u64;
                let theirs: BTreeMap<Vec<u8>, u64> = reply
                    .digests
                    .into_iter()
                    .map(|d| (d.key.into_vec(), d.hash))
                    .collect();
                let found = compare_digests(
                    (&exchange.own_digests, exchange.own_cut.take()),
                    (&theirs, their_cut),
                    |key| self.place(key),
                    self.settings.max_keys_per_exchange,
                );
                exchange.cut_short |= found.cut_short;
                let (ours_to_send, theirs_to_fetch) = (found.send, found.fetch);
                if ours_to_send.is_empty() && theirs_to_fetch.is_empty() {
                    // Nothing differs up to where a list stopped short: go on from there
                    // within this exchange (starting again from the segments' start, the
                    // next exchange would stop at the same place for ever).
                    if let Some(boundary) = found.boundary {
                        if exchange.resume.as_ref().is_none_or(|r| boundary > *r) {
                            exchange.segments.retain(|&segment| segment >= boundary.0);
                            exchange.resume = Some(boundary);
                            self.ask_own_digests(&mut exchange, now, out);
                            self.exchange = Some(exchange);
                            return;
                        }
                    }
                }
                if ours_to_send.is_empty() && theirs_to_fetch.is_empty() {
                    let in_sync = !exchange.cut_short;
                    let retry = exchange.cut_short;
                    return self.finish_exchange(exchange, now, in_sync, retry);
                }
                exchange.theirs_to_fetch = theirs_to_fetch;
                let op = self.storage(StorageRequest::sync(Vec::new(), ours_to_send), out);
                exchange.step = Step::OwnObjects;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::OwnObjects, Answer::Storage(StorageOutcome::Objects(mut objects))) => {
                if cap_bytes(&mut objects) {
                    exchange.cut_short = true;
                }
                exchange.sent = objects.len() as u64;
                let message = Message::AaeSync(AaeSync {
                    partition,
                    objects: AaeObject::many(objects),
                    want: exchange
                        .theirs_to_fetch
                        .iter()
                        .map(|k| Bytes::from(k.clone()))
                        .collect(),
                    from: Some(self.settings.node.clone()),
                });
                let op = self.peer(peer, message, now, out);
                exchange.step = Step::PeerSync;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::PeerSync, Answer::Peer(Message::AaeSyncReply(reply))) => {
                exchange.received = reply.objects.len() as u64;
                // The peer leaves out what would not fit one message: more next time.
                exchange.cut_short |= reply.objects.len() < exchange.theirs_to_fetch.len();
                let merge = reply
                    .objects
                    .into_iter()
                    .map(|o| (o.key.into_vec(), o.versions))
                    .collect();
                let op = self.storage(StorageRequest::sync(merge, Vec::new()), out);
                exchange.step = Step::MergeBack;
                exchange.waiting = Some((op, now + STEP_DEADLINE));
            }
            (Step::MergeBack, Answer::Storage(StorageOutcome::Objects(_))) => {
                let cut_short = exchange.cut_short;
                return self.finish_exchange(exchange, now, !cut_short, cut_short);
            }
            (_, Answer::Failed(why)) => {
                return self.abandon_exchange(exchange, now, &why);
            }
            (_, _) => {
                return self.abandon_exchange(
                    exchange,
                    now,
                    "an answer that does not fit the step",
                );
            }
        }
        self.exchange = Some(exchange);
    }

    /// Asks storage for this node's digests of the exchange's segments (after its resume
    /// place, if any), at most [`Self::digest_limit`].
    fn ask_own_digests(&mut self, exchange: &mut Exchange, now: Instant, out: &mut Outbox) {
        let op = self.storage(
            StorageRequest::segment_digests_after(
                exchange.partition,
                exchange.segments.clone(),
                exchange.resume.as_ref().map(|(_, key)| key.clone()),
                self.digest_limit(),
            ),
            out,
        );
        exchange.step = Step::OwnDigests;
        exchange.waiting = Some((op, now + STEP_DEADLINE));
    }

    pub(super) fn ask_own_segments(
        &mut self,
        exchange: &mut Exchange,
        confirming: bool,
        now: Instant,
        out: &mut Outbox,
    ) {
        let op = self.storage(
            StorageRequest::TreeView {
                partition: exchange.partition,
                branches: Some(exchange.branches.clone()),
            },
            out,
        );
        exchange.step = Step::OwnSegments { confirming };
        exchange.waiting = Some((op, now + STEP_DEADLINE));
    }
}
