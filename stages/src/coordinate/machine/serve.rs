//! What this node's coordinator serves to others rather than coordinates: a peer's replica
//! read or write and an operator's `get --local`, answered from the local store, and `admin
//! members` (the membership with the hints held for each member).

use super::*;
use crate::membership::MemberState;

impl Coordinator {
    /// Serves a request from the local store alone: a peer's `ReplicaRead`/`ReplicaWrite` or
    /// an operator's `get --local`.
    pub(super) fn start_serve(
        &mut self,
        origin: Origin,
        request: ServeRequest,
        received_at: Instant,
        out: &mut Outbox,
    ) {
        let (kind, item, request) = match request {
            // `get --local`: the node's own objects, not the hints it keeps for others.
            ServeRequest::Local { key: k } => (
                ServeKind::Local,
                k.clone(),
                StorageRequest::Read {
                    key: k,
                    with_hints: false,
                },
            ),
            ServeRequest::ReplicaRead { key: k } => (
                ServeKind::Replica,
                k.clone(),
                StorageRequest::Read {
                    key: k,
                    with_hints: true,
                },
            ),
            // Sloppy quorum: a fallback keeps versions meant for another node as a hint.
            ServeRequest::ReplicaWrite {
                key: k,
                versions,
                hint: Some(target),
                durable,
            } if target != self.settings.node => (
                ServeKind::Replica,
                k.clone(),
                StorageRequest::StoreHint {
                    target,
                    key: k,
                    versions,
                    durable,
                },
            ),
            ServeRequest::ReplicaWrite {
                key: k,
                versions,
                durable,
                ..
            } => {
                if let Some(error) = self.not_a_replica(&k) {
                    return out.reply(IntakeEvent::reply(origin, &Message::Error(error)));
                }
                (
                    ServeKind::Replica,
                    k.clone(),
                    StorageRequest::Merge {
                        key: k,
                        versions,
                        durable,
                    },
                )
            }
        };
        let work = Work::Serve { request: kind };
        self.start_local(origin, received_at, item, request, work, out);
    }

    /// Why this node refuses to store a replica write or a forwarded put of `key`
    /// ([`MembershipView::not_a_replica`]): a coordinator then asks a spare fallback (sloppy
    /// quorum) whose hint keeps the write, and a forwarding node the next list node.
    pub(super) fn not_a_replica(&self, key: &[u8]) -> Option<ServiceError> {
        self.membership
            .not_a_replica(&self.settings.node, key, self.settings.n)
    }

    /// `admin members`: asks storage for the hints held; the reply (see `answers.rs`) adds
    /// the failure detector's view of every member.
    pub(super) fn start_members(&mut self, origin: Origin, received_at: Instant, out: &mut Outbox) {
        let request = StorageRequest::PendingHints;
        self.start_local(origin, received_at, Vec::new(), request, Work::Members, out);
    }

    /// Registers a request that one local storage answer completes (its deadline, a quorum of
    /// one) and asks storage for it.
    fn start_local(
        &mut self,
        origin: Origin,
        received_at: Instant,
        item: Vec<u8>,
        request: StorageRequest,
        work: Work,
        out: &mut Outbox,
    ) {
        let key = self.new_id();
        let me = self.settings.node.clone();
        let op = self.new_op(key, &me, None);
        let deadline = received_at + self.settings.request_timeout;
        out.request(storage(op, request));
        self.deadlines.insert((deadline, key));
        self.requests.insert(
            key,
            Box::new(Pending {
                origin,
                operation: Operation::Get,
                key: item,
                received_at,
                deadline,
                tracker: QuorumTracker::new(1, 1),
                replied: false,
                work,
            }),
        );
    }

    /// Every member with this node's view of its health and the hints held for it.
    pub(super) fn members_reply(
        &self,
        now: Instant,
        pending_hints: &BTreeMap<NodeId, u64>,
    ) -> Message {
        let membership = self.membership.current();
        let statuses = self.detector.statuses(now);
        let members = membership
            .entries()
            .filter(|e| e.state != MemberState::Removed)
            .map(|e| {
                let m = &e.member;
                let status = statuses.iter().find(|s| s.node == m.id);
                MemberStatus {
                    node: m.id.clone(),
                    addr: m.addr.to_string(),
                    up: status.is_none_or(|s| s.up),
                    down_for_ms: status.map_or(0, |s| s.down_for_ms),
                    hints_pending: pending_hints.get(&m.id).copied().unwrap_or(0),
                    left: membership.has_left(&m.id, self.settings.n),
                    why: status.map_or_else(String::new, |s| s.why.clone()),
                }
            })
            .collect();
        Message::MembersReply(MembersReply {
            node: self.settings.node.clone(),
            version: membership.version,
            members,
        })
    }
}
