//! The operator's changes (Dynamo §4.8.1: explicit join and leave): staged by any member, planned
//! into a new ring with the transfers it needs, committed by the claimant, and each transfer
//! marked done as the partition arrives. A member's new address (`admin move`) is not a ring
//! change: written through any member, it takes effect as gossip spreads it.

use super::*;

impl Membership {
    /// The next stamp a change written by `me` carries.
    fn next_stamp(&mut self, me: &NodeId) -> Stamp {
        self.version += 1;
        Stamp {
            counter: self.version,
            node: me.clone(),
        }
    }

    /// Stages a join of `member` (written by `me`). Joining again at the same address is a
    /// no-op; a node that is leaving may be asked to stay by joining again.
    pub fn stage_join(&mut self, me: &NodeId, member: Member) -> Result<(), MembershipError> {
        if let Some(entry) = self.members.get(&member.id) {
            match entry.state {
                MemberState::Removed => {
                    return Err(MembershipError::WasRemoved { node: member.id })
                }
                MemberState::Active if entry.member.addr != member.addr => {
                    return Err(MembershipError::AlreadyMember {
                        node: member.id,
                        addr: entry.member.addr,
                    })
                }
                MemberState::Active if entry.member == member => return Ok(()),
                _ => {}
            }
        }
        // Its id, weight and zone make a valid ring.
        Ring::new(self.ring().partition_count(), &[member.spec()])?;
        self.check_address(member.addr, &member.id)?;
        let stamp = self.next_stamp(me);
        // The address register is written only if the address changes (a leaving member
        // asked to stay keeps the one a move may have given it meanwhile).
        let addr_written = match self.members.get(&member.id) {
            Some(entry) if entry.member.addr == member.addr => entry.addr_written().clone(),
            _ => stamp.clone(),
        };
        let entry = MemberEntry::new(member, MemberState::Active, stamp, addr_written);
        self.members.insert(entry.member.id.clone(), entry);
        Ok(())
    }

    /// Records that member `node` now listens at `addr` (written by `me`): a node that moved
    /// to another host keeps its id, its data and its partitions. Its id, weight and zone make
    /// the ring, its address does not, so nothing is planned or moved and no commit is
    /// needed: the register spreads by gossip, and each node dials `addr` from then on.
    /// Moving to the address it has is a no-op; one another member listens at is refused, as
    /// for a join.
    pub fn stage_move(
        &mut self,
        me: &NodeId,
        node: &NodeId,
        addr: SocketAddr,
    ) -> Result<(), MembershipError> {
        let entry = self.changeable(node)?;
        if entry.member.addr == addr {
            return Ok(());
        }
        let (mut moved, state) = (entry.member.clone(), entry.state);
        self.check_address(addr, node)?;
        moved.addr = addr;
        let role_written = entry.role_written().clone();
        let stamp = self.next_stamp(me);
        let entry = MemberEntry::new(moved, state, role_written, stamp);
        self.members.insert(node.clone(), entry);
        Ok(())
    }

    /// Refuses `addr` for member `node` (a join or a move) when peers cannot dial it (port 0,
    /// or an unspecified IP such as 0.0.0.0, which every peer would dial as itself: a trial's
    /// move to 127.0.0.1:0 was taken) or another member listens there (peers would reach one
    /// node under two names).
    fn check_address(&self, addr: SocketAddr, node: &NodeId) -> Result<(), MembershipError> {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(MembershipError::NotDialable { addr });
        }
        match self.listening_at(addr, node) {
            Some(other) => Err(MembershipError::AddressTaken {
                addr,
                node: other.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The member other than `except` that listens at `addr`, if any. A node that was
    /// removed frees its address; one leaving may still serve and send while it is in the
    /// committed ring, the ring before it (its copies may wait) or a list kept in
    /// `old_replicas`, so it keeps it until the next commit (or its removal) takes it out.
    fn listening_at(&self, addr: SocketAddr, except: &NodeId) -> Option<&NodeId> {
        let a = &self.assignment;
        let serving = |id: &NodeId| {
            a.ring.contains(id)
                || a.previous.as_ref().is_some_and(|ring| ring.contains(id))
                || a.old_replicas.values().any(|list| list.contains(id))
        };
        let listening = |e: &MemberEntry| match e.state {
            MemberState::Active => true,
            MemberState::Leaving => serving(&e.member.id),
            MemberState::Removed => false,
        };
        self.members
            .values()
            .find(|e| listening(e) && e.member.addr == addr && &e.member.id != except)
            .map(|e| &e.member.id)
    }

    /// Member `node`'s entry, if a leave, remove or move may change it: it is a member and
    /// was not removed.
    fn changeable(&self, node: &NodeId) -> Result<&MemberEntry, MembershipError> {
        match self.members.get(node) {
            None => Err(MembershipError::UnknownMember { node: node.clone() }),
            Some(entry) if entry.state == MemberState::Removed => {
                Err(MembershipError::WasRemoved { node: node.clone() })
            }
            Some(entry) => Ok(entry),
        }
    }

    /// Stages a leave (`Leaving`: it hands its data over) or a remove (`Removed`: it is dead).
    pub fn stage_departure(
        &mut self,
        me: &NodeId,
        node: &NodeId,
        state: MemberState,
    ) -> Result<(), MembershipError> {
        let entry = self.changeable(node)?;
        let staying = self
            .members
            .values()
            .filter(|e| e.state == MemberState::Active && &e.member.id != node)
            .count();
        if staying == 0 {
            return Err(MembershipError::LastMember { node: node.clone() });
        }
        let (member, addr_written) = (entry.member.clone(), entry.addr_written().clone());
        let stamp = self.next_stamp(me);
        let entry = MemberEntry::new(member, state, stamp, addr_written);
        self.members.insert(node.clone(), entry);
        Ok(())
    }

    /// The ring the staged changes would give, and what it would move: from the committed
    /// ring, or from the one before it when the commit will undo the last one (see
    /// `undone_by_next_commit`).
    pub fn plan(&self, n: usize) -> Result<(Plan, Ring), MembershipError> {
        self.plan_from(self.undone_by_next_commit(n).ok().flatten(), n)
    }

    /// Where the next commit starts: `None` from the committed ring, refused while the last
    /// commit's copies are pending. But a copy to a node that never comes up (a join at a
    /// wrong address) never finishes, so its removal could never commit and membership
    /// would be stuck for good. So a commit passes when every pending copy goes to a node
    /// since staged for removal. Each partition's data then moves from the replicas it is
    /// read and written on now ([`Membership::replicas`]: the old ones while its copies wait),
    /// which the commit keeps in `old_replicas` where they are not its list in the ring it
    /// starts from. Where none of the last commit's copies has arrived, it starts from the
    /// ring before the last one (`Some`): the partitions that commit moved were never served
    /// anywhere else, so the last commit is undone, and only what the staged changes (or lists
    /// kept from a commit before) need moves. Once some arrived, from the committed ring: the
    /// removed node's partitions are dealt out again.
    fn undone_by_next_commit(&self, n: usize) -> Result<Option<&Ring>, MembershipError> {
        let pending = self.pending_transfers(n);
        if pending.is_empty() {
            return Ok(None);
        }
        if !pending.iter().all(|t| self.goes_to_removed(t)) {
            return Err(MembershipError::TransfersPending {
                pending: pending.len(),
            });
        }
        // Also a copy with no sender, done at the commit: its partition was served from the
        // new ring at once, so the ring before is not whole for it.
        let arrived = !self.assignment.done.is_empty();
        Ok(self.assignment.previous.as_ref().filter(|_| !arrived))
    }

    /// The replicas each partition is served from now where they are not its list in `base`
    /// (the ring the next commit starts from): that commit's `old_replicas`.
    fn served_apart_from(&self, base: &Ring, n: usize) -> BTreeMap<u32, Vec<NodeId>> {
        (0..base.partition_count())
            .map(PartitionId)
            .filter_map(|partition| {
                let serving = self.serving(partition, n);
                (serving != base.preference_list(partition, n).primaries)
                    .then_some((partition.0, serving))
            })
            .collect()
    }

    /// `plan` from the committed ring, or from `undone` (the ring before it), whose members
    /// the undone commit brought in then leave with it.
    fn plan_from(&self, undone: Option<&Ring>, n: usize) -> Result<(Plan, Ring), MembershipError> {
        let ring = undone.unwrap_or(self.ring());
        let (mut plan, next) = self.plan_on(ring, n)?;
        if let Some(undone) = undone {
            let brought_in = self.ring().nodes().map(|spec| &spec.id);
            plan.removed
                .extend(brought_in.filter(|id| !undone.contains(id)).cloned());
            if plan.transfers.is_empty() {
                // Nothing else staged, yet partitions served from lists kept by the last
                // commit still move back to their lists in the ring before it.
                let serving = |partition| self.serving(partition, n);
                plan.transfers = self.transfers_between(serving, &next, n, true);
            }
        }
        Ok((plan, next))
    }

    /// The staged changes applied to `ring`, and what they would move.
    fn plan_on(&self, ring: &Ring, n: usize) -> Result<(Plan, Ring), MembershipError> {
        let wanted: Vec<NodeSpec> = self
            .members
            .values()
            .filter(|e| e.state == MemberState::Active)
            .map(|e| e.member.spec())
            .collect();
        let in_ring = |id: &NodeId| ring.contains(id);
        let mut plan = Plan {
            joining: Vec::new(),
            leaving: Vec::new(),
            removed: Vec::new(),
            owners_changed: 0,
            transfers: Vec::new(),
        };
        for entry in self.members.values() {
            let id = &entry.member.id;
            match entry.state {
                MemberState::Active if !in_ring(id) => plan.joining.push(id.clone()),
                // A member whose weight or zone changed is re-joined.
                MemberState::Active if ring.node(id) != Some(&entry.member.spec()) => {
                    plan.joining.push(id.clone())
                }
                MemberState::Leaving if in_ring(id) => plan.leaving.push(id.clone()),
                MemberState::Removed if in_ring(id) => plan.removed.push(id.clone()),
                _ => {}
            }
        }
        if plan.is_empty() {
            return Ok((plan, ring.clone()));
        }
        let next = ring.rebalance(&wanted, n)?;
        plan.owners_changed = ring.moved_partitions(&next).len() as u32;
        // From the replicas that serve each partition now: its list in `ring`, unless its
        // copies of the last commit still wait (see `undone_by_next_commit`).
        let serving = |partition| self.serving(partition, n);
        plan.transfers = self.transfers_between(serving, &next, n, true);
        Ok((plan, next))
    }

    /// The one node that commits (riak's claimant): the ring member with the smallest id that
    /// was not removed. Commits from one node never race, and the claimant's assignment is
    /// always the newest (every commit came from it), so a commit is never computed from a
    /// stale ring. A dead claimant is removed (staged through any node) and the next one
    /// commits.
    pub fn claimant(&self) -> Option<&NodeId> {
        self.ring()
            .nodes()
            .map(|spec| &spec.id)
            .find(|id| self.state_of(id) != Some(MemberState::Removed))
    }

    /// Applies the staged changes (written by `me`, the claimant): the planned ring becomes
    /// the committed one and its transfers start. Refused while the previous commit's
    /// transfers are pending, unless they all wait for nodes since removed (see
    /// `undone_by_next_commit`).
    pub fn commit(&mut self, me: &NodeId, n: usize) -> Result<Plan, MembershipError> {
        if let Some(claimant) = self.claimant() {
            if claimant != me {
                return Err(MembershipError::NotClaimant {
                    me: me.clone(),
                    claimant: claimant.clone(),
                });
            }
        }
        let undone = self.undone_by_next_commit(n)?.cloned();
        let (plan, next) = self.plan_from(undone.as_ref(), n)?;
        if plan.is_empty() {
            return Err(MembershipError::NothingStaged);
        }
        let base = undone.as_ref().unwrap_or(self.ring());
        let old_replicas = self.served_apart_from(base, n);
        let stamp = self.next_stamp(me);
        let replaced = std::mem::replace(&mut self.assignment.ring, next);
        self.assignment.previous = Some(undone.unwrap_or(replaced));
        self.assignment.old_replicas = old_replicas;
        self.assignment.stamp = stamp;
        // Transfers that have no old replica to copy from are done at once: nothing can be
        // copied (every old replica was removed), and waiting would block reads forever.
        self.assignment.done = plan
            .transfers
            .iter()
            .filter(|t| t.from.is_none())
            .map(|t| (t.partition, None, t.to.clone()))
            .collect();
        Ok(plan)
    }

    /// Records that `to` holds all of `partition` (written by `me`, the sender). Returns
    /// whether that was news.
    pub fn mark_transferred(&mut self, me: &NodeId, partition: u32, to: &NodeId) -> bool {
        let fresh = self
            .assignment
            .done
            .insert((partition, Some(me.clone()), to.clone()));
        if fresh {
            self.next_stamp(me);
        }
        fresh
    }
}
