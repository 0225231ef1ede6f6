//! The answering side: a peer's tree, digest, sync and purge requests, answered from storage;
//! the lease that keeps one exchange per partition at a time (see the module above).

use super::*;

/// A request of a peer this node is answering, waiting for storage.
#[derive(Debug)]
pub(super) enum Serving {
    /// A tree level; the asker's root if it sent one (and whether it opened an exchange).
    Tree {
        partition: u32,
        root: Option<u64>,
    },
    /// A peer's digests, at most `limit` keys.
    Digests {
        limit: usize,
    },
    /// A peer's sync; `objects` were charged to this node's debt when it arrived, behind
    /// `ahead` tokens (counted in `retired`) charged before them.
    Sync {
        partition: u32,
        objects: u64,
        ahead: u64,
        from: Option<NodeId>,
    },
    Purge,
}

/// A peer's exchange holding one of this node's partitions.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lease {
    pub(super) conn: ConnId,
    pub(super) until: Instant,
}

impl AntiEntropyMachine {
    /// Answers a peer's request (through storage; a busy partition at once).
    pub(super) fn serve(
        &mut self,
        now: Instant,
        origin: Origin,
        request: AaeRequest,
        out: &mut Outbox,
    ) {
        let (serving, storage_request) = match request {
            AaeRequest::Tree {
                partition,
                branches,
                root,
            } => {
                // Branches past the shape name no segments (a peer of another Q, or a bug).
                let branches = branches.map(|list| {
                    let count = self.shape.branches();
                    list.into_iter()
                        .filter(|&b| usize::from(b) < count)
                        .collect::<Vec<_>>()
                });
                if branches.is_none() {
                    // The opening of an exchange: one per partition at a time on this node.
                    let mine = self
                        .exchange
                        .as_ref()
                        .is_some_and(|e| e.partition == partition);
                    let other = self
                        .leases
                        .get(&partition)
                        .is_some_and(|l| l.conn != origin.conn && l.until > now);
                    if mine || other || !self.pay_debt(now) {
                        let busy = Message::AaeTreeReply(AaeTreeReply {
                            ready: false,
                            root: 0,
                            keys: 0,
                            hashes: Vec::new(),
                        });
                        return out.reply(IntakeEvent::reply(origin, &busy));
                    }
                }
                self.lease(partition, origin.conn, now);
                (
                    Serving::Tree { partition, root },
                    StorageRequest::TreeView {
                        partition,
                        branches,
                    },
                )
            }
            AaeRequest::Digests {
                partition,
                segments,
                limit,
                after,
            } => {
                self.lease(partition, origin.conn, now);
                (
                    Serving::Digests { limit },
                    StorageRequest::segment_digests_after(partition, segments, after, limit),
                )
            }
            AaeRequest::Sync {
                partition,
                objects,
                want,
                from,
            } => {
                // Merging them is this node's work: charged like its own (see the module's
                // Pacing), so it opens no exchange for a peer until they are paid for.
                let charged = objects.len() as u64;
                let ahead = self.retired + self.debt;
                self.debt += charged;
                (
                    Serving::Sync {
                        partition,
                        objects: charged,
                        ahead,
                        from,
                    },
                    StorageRequest::sync(objects, want),
                )
            }
            AaeRequest::Purge {
                partition,
                phase,
                replica,
                objects,
            } => {
                let request = match phase {
                    // A replica (in the leader's view or this node's) must hold exactly the
                    // tombstones; any member, no hint for the keys and no other version.
                    PurgePhase::Check => StorageRequest::PurgeCheck {
                        objects,
                        replica: replica || self.partitions.contains_key(&partition),
                    },
                    PurgePhase::Commit => StorageRequest::PurgeCommit { objects },
                };
                (Serving::Purge, request)
            }
        };
        let op = self.storage(storage_request, out);
        self.serving.insert(op, (origin, serving));
    }

    pub(super) fn lease(&mut self, partition: u32, conn: ConnId, now: Instant) {
        self.leases.insert(
            partition,
            Lease {
                conn,
                until: now + LEASE,
            },
        );
    }

    /// Storage answered a peer's request: reply to the peer.
    pub(super) fn on_served(
        &mut self,
        origin: Origin,
        serving: Serving,
        outcome: StorageOutcome,
        out: &mut Outbox,
    ) {
        let message = match (serving, outcome) {
            (Serving::Tree { partition, root }, StorageOutcome::Tree(view)) => {
                let same = root == Some(view.root) && view.ready;
                if same || !view.ready {
                    self.release(partition, origin.conn);
                }
                Message::AaeTreeReply(AaeTreeReply {
                    ready: view.ready,
                    root: view.root,
                    keys: view.keys,
                    hashes: if same { Vec::new() } else { view.hashes },
                })
            }
            (Serving::Digests { limit }, StorageOutcome::Digests(mut digests)) => {
                let cut = digests.len() >= limit;
                let mut bytes = 0;
                let fits = digests
                    .iter()
                    .take_while(|(key, _)| {
                        bytes += key.len() + 16;
                        bytes <= MAX_AAE_BATCH_BYTES
                    })
                    .count();
                let cut = cut || fits < digests.len();
                digests.truncate(fits);
                Message::AaeDigestsReply(AaeDigestsReply {
                    digests: digests
                        .into_iter()
                        .map(|(key, hash)| KeyDigest {
                            key: Bytes::from(key),
                            hash,
                        })
                        .collect(),
                    cut,
                })
            }
            (
                Serving::Sync {
                    partition,
                    objects: merged,
                    from,
                    ..
                },
                StorageOutcome::Objects(mut objects),
            ) => {
                self.release(partition, origin.conn);
                cap_bytes(&mut objects);
                self.count_served_sync(partition, from.as_ref(), merged, objects.len() as u64);
                Message::AaeSyncReply(AaeSyncReply {
                    objects: AaeObject::many(objects),
                })
            }
            (Serving::Purge, StorageOutcome::Keys(keys)) => Message::AaePurgeReply(AaePurgeReply {
                keys: keys.into_iter().map(Bytes::from).collect(),
            }),
            (_, other) => Message::Error(ServiceError::Storage {
                reason: format!("storage answered an anti-entropy request with {other:?}"),
            }),
        };
        out.reply(IntakeEvent::reply(origin, &message));
    }

    /// Storage refused (a full queue) or failed a peer's request: the peer hears the error
    /// as it is (`Overloaded` stays `Overloaded`, so it can tell a busy node from a broken
    /// one), the partition's lease is released at once rather than when it runs out, and a
    /// sync's charge is forgiven.
    pub(super) fn not_served(
        &mut self,
        origin: Origin,
        serving: Serving,
        error: ServiceError,
        out: &mut Outbox,
    ) {
        self.forgive(&serving);
        if let Serving::Tree { partition, .. } | Serving::Sync { partition, .. } = serving {
            self.release(partition, origin.conn);
        }
        out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
    }

    /// A peer's sync that storage refused or failed merged nothing this node must pay for
    /// (as hinted handoff does for a refused batch): the part of its charge not yet paid
    /// comes off the debt. Debts are paid in the order they were charged, and a sync's steps
    /// span ticks that pay, so by the time it fails some of its charge may be paid: only the
    /// rest is forgiven, never debt owed for other work. (After another charge was forgiven
    /// meanwhile this errs towards forgiving less.) A sync that failed after some of its
    /// steps went in is forgiven the same; it is rare (a full queue, a failing disk) and the
    /// next exchange finds what it left.
    pub(super) fn forgive(&mut self, serving: &Serving) {
        if let Serving::Sync { objects, ahead, .. } = serving {
            let paid = self.retired.saturating_sub(*ahead).min(*objects);
            let unpaid = (objects - paid).min(self.debt);
            self.debt -= unpaid;
            self.retired += unpaid;
        }
    }

    /// Counts a peer's sync this node answered: the objects it merged as received and those
    /// it answered with as sent, in its totals and its report of that peer. Before, only the
    /// node that started an exchange counted it, so a wiped node's report showed a third of
    /// what it got back (its two peers started the other exchanges).
    fn count_served_sync(&mut self, partition: u32, from: Option<&NodeId>, merged: u64, sent: u64) {
        self.totals.keys_received += merged;
        self.totals.keys_sent += sent;
        let report = from.and_then(|peer| {
            self.partitions
                .get_mut(&partition)
                .and_then(|state| state.peers.get_mut(peer))
        });
        if let Some(peer) = report {
            peer.report.keys_received += merged;
            peer.report.keys_sent += sent;
        }
    }

    fn release(&mut self, partition: u32, conn: ConnId) {
        if self.leases.get(&partition).is_some_and(|l| l.conn == conn) {
            self.leases.remove(&partition);
        }
    }
}
