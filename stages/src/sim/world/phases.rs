//! The phases of a run — faults during the workload, the heal, the final reads — and the
//! judgement at its end.

use super::*;
use crate::event::{GossipEvent, GossipServe, Origin};
use crate::membership::MemberState;
use crate::wire::{MembershipChange, PlanRequest};

/// Tries of the operator's commit after a join or leave: a commit is refused while the
/// previous one's transfers are pending, so it is retried until the ring shows the change.
const COMMIT_ATTEMPTS: u32 = 60;
/// Longest a simulated clean stop drains (the real default is 5 s; the simulated clients'
/// requests end well within this).
const SIM_DRAIN_US: u64 = 2_000_000;

impl World {
    /// Draws the seed's crashes, pauses and partition inside the workload window.
    pub(super) fn plan_faults(&mut self) {
        let count = self.nodes.len();
        let (start, end) = (300_000, self.workload_end.saturating_sub(500_000));
        if end <= start {
            return;
        }
        // Where every acknowledged write is flushed first, any number of machines may lose
        // power; otherwise one may (W = 2 machines hold every acknowledged write, in their OS
        // buffers at least), and its power loss takes writes of its own that other replicas
        // still hold (the case a crash's new dot actor is for: `storage/store/actor.rs`).
        let mut power_losses = if self.acked_flushed { usize::MAX } else { 1 };
        let mut plan = Vec::new();
        if self.faults.restore && self.plan_restore(&mut plan) && !self.acked_flushed_twice {
            // The restore is this run's one loss of a machine's writes (`plan_restore`).
            power_losses = 0;
        }
        let rng = &mut self.sched.rng;
        if self.faults.crash {
            for _ in 0..rng.range(1, 3) {
                let node = rng.index(count);
                let at = rng.range(start, end);
                let back = (at + rng.range(200_000, 2_000_000)).min(self.workload_end);
                // A process crash keeps what reached the OS (storage writes a batch out
                // before its answers); half the crashes are the machine's power instead,
                // losing what was never flushed, while power losses are left.
                let crash = if power_losses > 0 && rng.index(2) == 0 {
                    power_losses -= 1;
                    Fault::PowerLoss(node)
                } else {
                    Fault::Crash(node)
                };
                plan.push((at, crash));
                plan.push((back, Fault::Restart(node)));
            }
        }
        if self.faults.power {
            // Every node at once (a data centre's power): only flushed writes survive.
            let at = rng.range(start, end);
            let back = (at + rng.range(200_000, 1_000_000)).min(self.workload_end);
            for node in 0..count {
                plan.push((at, Fault::PowerLoss(node)));
                plan.push((back, Fault::Restart(node)));
            }
        }
        if self.faults.pause {
            for _ in 0..rng.range(1, 3) {
                plan.push((
                    rng.range(start, end),
                    Fault::Pause(rng.index(count), rng.range(50_000, 1_500_000)),
                ));
            }
        }
        if self.faults.flush {
            for _ in 0..rng.range(1, 4) {
                let failures = rng.range(1, 4) as u32;
                let node = rng.index(count);
                let at = rng.range(start, end);
                plan.push((at, Fault::FailFlushes(node, failures)));
                // The first failure poisons the node (every write refused, as fjall's engine
                // does); its operator restarts it a little later.
                let restart = (at + rng.range(200_000, 1_000_000)).min(self.workload_end);
                plan.push((restart, Fault::Crash(node)));
                plan.push((restart + 50_000, Fault::Restart(node)));
            }
        }
        if let Some(joiner) = self.joiner {
            // The join early enough that the leave after it is still in the window.
            let join_at = rng.range(start, (start + end) / 2);
            if rng.percent(50) {
                // Half the runs commit a join at a dead address with it, and remove it later.
                plan.push((join_at.saturating_sub(1), Fault::GhostJoin));
                let remove_at = join_at + rng.range(300_000, 2_000_000);
                let attempts = COMMIT_ATTEMPTS;
                plan.push((remove_at, Fault::RemoveGhost { attempts }));
            }
            plan.push((join_at, Fault::Join(joiner)));
            let leave_at = (join_at + rng.range(1_000_000, 3_000_000)).min(end);
            plan.push((leave_at, Fault::Leave(rng.index(joiner))));
            if self.faults.moves && rng.percent(50) {
                // Half the runs move a member to another address: stopped, restarted there,
                // and the move staged before or after its restart (it may be the leaver).
                let node = rng.index(joiner);
                let at = rng.range(start, end);
                let back = (at + rng.range(100_000, 1_000_000)).min(self.workload_end);
                plan.push((at, Fault::Crash(node)));
                plan.push((back, Fault::Relisten(node)));
                plan.push((back + 1, Fault::Restart(node)));
                let move_at = if rng.percent(50) {
                    at + 10_000
                } else {
                    back + rng.range(10_000, 500_000)
                };
                let attempts = COMMIT_ATTEMPTS;
                plan.push((move_at, Fault::Move { node, attempts }));
            }
        }
        if self.faults.partition && count > 1 {
            let side: BTreeSet<usize> = (0..count).filter(|_| rng.percent(50)).collect();
            if !side.is_empty() && side.len() < count {
                let at = rng.range(start, end);
                plan.push((at, Fault::Partition(side)));
                plan.push((at + rng.range(300_000, 3_000_000), Fault::EndPartition));
            }
        }
        for (at, fault) in plan {
            self.sched.at(at, Job::Fault(fault));
        }
    }

    /// The restore fault's plan: an operator stops a member, copies its data and starts it
    /// again (it keeps its dot actor); later its disk dies and the copy is restored. The copy
    /// lacks the writes the node took since, which W = 2 machines held: unless both copies
    /// were flushed, a power loss could take the other, so then the run has no power loss
    /// beside it (the caller draws none; with the power fault this is left out, and says so:
    /// the answer is whether it was).
    ///
    /// Not excluded, and never seen in the sweeps: with the membership fault, a write whose
    /// other copy was a hint the restored node held, while a leave moved the key's partition
    /// to that node, would have both copies there; restoring it would lose the write.
    fn plan_restore(&mut self, plan: &mut Vec<(u64, Fault)>) -> bool {
        if self.faults.power && !self.acked_flushed_twice {
            let time = self.sched.time;
            self.record(format!(
                "{time:>10} restore left out: power losses without two flushed copies"
            ));
            return false;
        }
        let (start, end) = (300_000, self.workload_end.saturating_sub(500_000));
        let rng = &mut self.sched.rng;
        // A member of the first ring (the joiner, outside it until it joins, holds nothing).
        let node = rng.index(self.joiner.unwrap_or(self.nodes.len()));
        let backup_at = rng.range(start, (start + end) / 2);
        let back_at = backup_at + rng.range(50_000, 500_000);
        let restore_at = (back_at + rng.range(300_000, 2_000_000)).min(end);
        let restored_at = (restore_at + rng.range(200_000, 1_000_000)).min(self.workload_end);
        plan.push((backup_at, Fault::Backup(node)));
        plan.push((back_at, Fault::Restart(node)));
        plan.push((restore_at, Fault::Restore(node)));
        plan.push((restored_at, Fault::Restart(node)));
        true
    }

    /// Schedules the operator's commit of the change staged through `node`, `after` from now.
    fn commit_later(&mut self, node: usize, joining: bool, attempts: u32, after: u64) {
        let commit = Fault::Commit {
            node,
            joining,
            attempts,
        };
        self.sched.after(after, Job::Fault(commit));
    }

    pub(super) fn fault(&mut self, fault: Fault) {
        self.record(format!("{:>10} fault {fault:?}", self.sched.time));
        match fault {
            Fault::Join(node) => {
                let join = MembershipChange::Join(self.joiner_member(node));
                self.operator(Some(join), false, node);
                self.commit_later(node, true, COMMIT_ATTEMPTS, 100_000);
            }
            Fault::GhostJoin => {
                let ghost = MembershipChange::Join(self.ghost_member());
                self.operator(Some(ghost), false, usize::MAX);
            }
            Fault::RemoveGhost { attempts } => {
                // Looked at until the attempts run out, not only until it seems gone: a
                // staging held by a member that was down when looked at may come back with it.
                let ghost = self.ghost_member().id;
                let view = self.final_view();
                match view.state_of(&ghost) {
                    // Staged out but still in the ring: commit (again).
                    Some(MemberState::Removed) if view.ring().contains(&ghost) => {
                        self.operator(None, true, usize::MAX)
                    }
                    Some(MemberState::Removed) | None => {} // out, or not seen (yet)
                    Some(_) => {
                        let change = MembershipChange::Remove(ghost);
                        self.operator(Some(change), true, usize::MAX)
                    }
                }
                if attempts > 0 {
                    let next = Fault::RemoveGhost {
                        attempts: attempts - 1,
                    };
                    self.sched.after(500_000, Job::Fault(next));
                }
            }
            Fault::Leave(node) => {
                let id = self.nodes[node].id.clone();
                self.operator(Some(MembershipChange::Leave(id)), false, node);
                self.commit_later(node, false, COMMIT_ATTEMPTS, 100_000);
            }
            Fault::Commit {
                node,
                joining,
                attempts,
            } => {
                let id = self.nodes[node].id.clone();
                let done = self.final_view().ring().contains(&id) == joining;
                if !done && attempts > 0 {
                    // The join goes with every commit: the first may have been lost with the
                    // member it was sent to (paused, then crashed before it staged it), and
                    // staging a join again at the same address changes nothing. It cannot undo
                    // a leave: the run's leave is always another node's (`plan_faults`).
                    let change = joining.then(|| MembershipChange::Join(self.joiner_member(node)));
                    self.operator(change, true, node);
                    self.commit_later(node, joining, attempts - 1, 500_000);
                }
            }
            Fault::Relisten(node) => {
                self.addrs.retain(|_, n| *n != node);
                self.addrs.insert(super::moved_addr(node), node);
            }
            Fault::Move { node, attempts } => {
                let (id, to) = (self.nodes[node].id.clone(), super::moved_addr(node));
                if self.final_view().addr_of(&id) != Some(to) {
                    let change = MembershipChange::Move { node: id, addr: to };
                    self.operator(Some(change), false, node);
                }
                if attempts > 0 {
                    let next = Fault::Move {
                        node,
                        attempts: attempts - 1,
                    };
                    self.sched.after(500_000, Job::Fault(next));
                }
            }
            Fault::Crash(node) => self.crash(node, false),
            Fault::PowerLoss(node) => self.crash(node, true),
            Fault::Backup(node) => {
                if self.nodes[node].machines.is_some() {
                    // Stopped as an operator stops it, drain first; backed up at its end.
                    let (incarnation, since) = (self.nodes[node].incarnation, self.sched.time);
                    self.drain_step(node, incarnation, since);
                } else {
                    self.nodes[node].backup = Some(self.nodes[node].engine.backup());
                }
            }
            Fault::Restore(node) => {
                // Its disk died (a crash), and the operator restores the copy over it.
                self.crash(node, false);
                if let Some(backup) = &self.nodes[node].backup {
                    self.nodes[node].engine.restore(backup);
                }
            }
            Fault::Restart(node) => {
                if self.nodes[node].machines.is_none() {
                    // A disk still failing its flushes keeps the node down (as a real one
                    // would refuse to start); the heal brings it up once the fault ends.
                    if let Err(error) = self.try_start_node(node) {
                        let time = self.sched.time;
                        self.record(format!("{time:>10} n{} stays down: {error}", node + 1));
                    }
                }
            }
            Fault::Pause(node, length) => {
                let until = self.sched.time + length;
                let paused = &mut self.nodes[node].paused_until;
                *paused = (*paused).max(until);
            }
            Fault::FailFlushes(node, count) => self.nodes[node].engine.fail_flushes(count),
            Fault::Partition(side) => self.net.partition = Some(side),
            Fault::EndPartition => self.net.partition = None,
        }
    }

    /// The ghost of `Fault::GhostJoin`: the next id, at an address no simulated node has.
    fn ghost_member(&self) -> Member {
        Member {
            id: NodeId::new(format!("n{}", self.nodes.len() + 1)),
            addr: SocketAddr::from(([10, 0, 0, 250], 7400)),
            weight: 1,
            zone: None,
        }
    }

    /// The member a joining node is staged as.
    fn joiner_member(&self, node: usize) -> Member {
        Member {
            id: self.nodes[node].id.clone(),
            addr: joiner_addr(node),
            weight: 1,
            zone: None,
        }
    }

    /// An operator's plan request (a change to stage, and whether to commit) sent to the gossip
    /// stage of a running member other than `about` (the answer goes nowhere: the operator
    /// looks at the ring instead).
    fn operator(&mut self, change: Option<MembershipChange>, commit: bool, about: usize) {
        let view = self.final_view();
        let claimant = view.claimant().cloned();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|n| *n != about && self.nodes[*n].machines.is_some())
            .filter(|n| view.member(&self.nodes[*n].id).is_some())
            // Commits go to the claimant (as `shoal admin commit` sends them).
            .filter(|n| !commit || claimant.as_ref() == Some(&self.nodes[*n].id))
            .collect();
        if running.is_empty() {
            return;
        }
        let through = running[self.sched.rng.index(running.len())];
        self.record(format!(
            "{:>10} operator via n{}: {change:?} commit {commit}",
            self.sched.time,
            through + 1
        ));
        let request = GossipServe::Plan(Box::new(PlanRequest { change, commit }));
        let event = Event::Gossip(GossipEvent::Serve {
            origin: Origin {
                conn: ConnId(u64::MAX),
                request_id: 0,
            },
            request,
        });
        let incarnation = self.nodes[through].incarnation;
        self.sched.after(
            0,
            Job::Deliver {
                node: through,
                incarnation,
                event,
            },
        );
    }

    /// The newest membership any node holds (gossip makes them equal after the heal).
    pub(super) fn final_view(&self) -> std::sync::Arc<Membership> {
        self.nodes
            .iter()
            .map(|n| n.membership.current())
            .max_by_key(|m| m.version)
            .unwrap_or_else(|| unreachable!("a world has nodes"))
    }

    /// The node's process dies (with `power`, its machine: its unflushed writes are lost
    /// too): its machines are gone and its connections reset (peers and clients hear of it
    /// after a network delay).
    fn crash(&mut self, node: usize, power: bool) {
        if self.nodes[node].machines.is_none() {
            return;
        }
        self.nodes[node].crash(power);
        self.reset_links(node);
    }

    /// A clean stop's drain, a step every millisecond as the real loop's turns go: the node
    /// answers what its clients are owed and refuses the rest, closes their connections, then
    /// (at once when none is left, or after [`SIM_DRAIN_US`]) tells its peers it stopped and
    /// stops a millisecond later, so that word goes out before its links close. A crash
    /// meanwhile ends it (a later incarnation ignores the steps left).
    pub(super) fn drain_step(&mut self, node: usize, incarnation: u32, since: u64) {
        if !self.current(node, incarnation) {
            return;
        }
        let timed_out = self.sched.time >= since + SIM_DRAIN_US;
        let mut announced = false;
        self.with_machines(node, |machines, now, post| {
            announced = machines.drain(now, timed_out, post);
        });
        if announced {
            self.sched.after(1_000, Job::DrainEnd { node, incarnation });
        } else {
            self.sched.after(
                1_000,
                Job::DrainStep {
                    node,
                    incarnation,
                    since,
                },
            );
        }
    }

    /// The node stops as an operator stops it, its drain done (see `SimNode::stop_cleanly`);
    /// its connections close as a crash's do.
    pub(super) fn stop_cleanly(&mut self, node: usize) {
        if self.nodes[node].machines.is_none() {
            return;
        }
        self.nodes[node].stop_cleanly();
        self.reset_links(node);
    }

    /// The connections of a node that stopped close (peers and clients hear of it after a
    /// network delay).
    fn reset_links(&mut self, node: usize) {
        for link in self.net.links_of(node) {
            let delay = self.sched.rng.range(50, 500);
            self.sched.after(delay, Job::Closed { link });
        }
    }

    /// Every fault ends: crashed nodes restart, pauses end, the partition heals, frames are
    /// no longer lost or duplicated. Clients finish their tasks and start no new ones.
    pub(super) fn heal(&mut self) {
        self.record(format!("{:>10} heal", self.sched.time));
        self.working = false;
        self.noisy = false;
        self.net.partition = None;
        for node in 0..self.nodes.len() {
            self.nodes[node].paused_until = 0;
            self.nodes[node].engine.fail_flushes(0);
            // A node whose flush failed refuses every write until restarted: its operator
            // restarts it.
            if self.nodes[node].engine.poisoned() {
                self.crash(node, false);
            }
            if self.nodes[node].machines.is_none() {
                self.start_node(node);
            }
        }
        self.net.sweep();
    }

    /// Every key any client touched is read from all N replicas (R = N), round-robin over the
    /// clients; the reads also repair stale replicas.
    pub(super) fn final_reads(&mut self) {
        self.check_replicated();
        self.record(format!("{:>10} final reads", self.sched.time));
        self.final_start = Some(self.sched.time);
        let keys: Vec<String> = self.history.keys().into_iter().collect();
        let clients = self.clients.len();
        for (i, key) in keys.into_iter().enumerate() {
            self.clients[i % clients].client.read_finally([key]);
        }
        for client in 0..clients {
            self.sched.after(0, Job::ClientStart { client });
        }
    }

    pub(super) fn watchdog(&mut self) {
        self.check_patience();
        if let Some(start) = self.final_start {
            let done = self.clients.iter().all(|c| c.client.idle());
            if done || self.sched.time.saturating_sub(start) > FINAL_LIMIT_US {
                self.final_start = None;
                self.sched.after(SETTLE_US, Job::Stop);
                return;
            }
        }
        self.sched.after(WATCHDOG_US, Job::Watchdog);
    }

    /// Judges the run: the history's checkers, then convergence of every replica.
    pub(super) fn finish(mut self) -> SimReport {
        self.check_convergence();
        let keys = self.history.keys();
        let acked_adds = self.history.acked_add_count();
        let refused_adds = self.history.refused_add_count();
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(std::mem::take(&mut self.history).finish());
        let digest = self.digest.clone().finalize();
        let _ = keys;
        SimReport {
            seed: self.seed,
            nodes: self.nodes.len(),
            violations,
            digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
            trace: self.trace.take().unwrap_or_default(),
            events: self.jobs,
            requests_ok: self.requests_ok,
            requests_failed: self.requests_failed,
            acked_adds,
            refused_adds,
            simulated_ms: self.sched.time / 1000,
        }
    }

    /// Before the final reads repair anything: every acknowledged add is on at least W of its
    /// key's primaries. W replicas acknowledged it (fallbacks among them, holding hints that
    /// the quiet period handed off), every acknowledged write was flushed first, and no later
    /// write to a set key drops an element it read; so fewer copies means a write or a hint
    /// was lost (a hint deleted before its target acknowledged it, say). A restored backup
    /// takes one copy of the writes since the copy: anti-entropy brings it back within the
    /// quiet period, or this fires.
    fn check_replicated(&mut self) {
        let acked = self.history.acked_adds().clone();
        for (key, elements) in acked {
            let primaries = self
                .final_view()
                .replicas_for_key(key.as_bytes(), N)
                .list
                .primaries;
            let holdings: Vec<(NodeId, BTreeSet<u64>)> = primaries
                .iter()
                .filter_map(|p| self.nodes.iter().find(|n| n.id == *p))
                .filter_map(|node| {
                    let set = node.store.as_ref()?.read(key.as_bytes()).ok()?;
                    let elements = set.live_values().filter_map(decode_set).flatten().collect();
                    Some((node.id.clone(), elements))
                })
                .collect();
            for element in elements {
                let holders: Vec<&NodeId> = holdings
                    .iter()
                    .filter(|(_, h)| h.contains(&element))
                    .map(|(id, _)| id)
                    .collect();
                if holders.len() < W {
                    self.violations.push(Violation {
                        checker: checker::REPLICATED,
                        detail: format!(
                            "{key}: acknowledged add {element} is on {} of its primaries {primaries:?} ({holders:?}) after the quiet period (W = {W})",
                            holders.len()
                        ),
                    });
                }
            }
        }
    }

    /// After heal and quiet, every primary replica of every key holds the same version set,
    /// and no node holds a hint.
    fn check_convergence(&mut self) {
        for key in self.history.keys() {
            let primaries = self
                .final_view()
                .replicas_for_key(key.as_bytes(), N)
                .list
                .primaries;
            let mut sets = Vec::new();
            for primary in &primaries {
                let Some(node) = self.nodes.iter().find(|n| n.id == *primary) else {
                    continue;
                };
                match node.store.as_ref().map(|s| s.read(key.as_bytes())) {
                    Some(Ok(set)) => sets.push((primary.clone(), set)),
                    Some(Err(error)) => self.violations.push(Violation {
                        checker: checker::CONVERGENCE,
                        detail: format!("{primary} cannot read {key}: {error}"),
                    }),
                    None => self.violations.push(Violation {
                        checker: checker::CONVERGENCE,
                        detail: format!("{primary} is not running at the end"),
                    }),
                }
            }
            if let Some((first, reference)) = sets.first() {
                for (other, set) in &sets[1..] {
                    if set != reference {
                        self.violations.push(Violation {
                            checker: checker::CONVERGENCE,
                            detail: format!(
                                "{key}: {first} holds {reference}, {other} holds {set}"
                            ),
                        });
                    }
                }
            }
        }
        self.check_roots();
        let pending = self.final_view().pending_transfers(N);
        if !pending.is_empty() {
            self.violations.push(Violation {
                checker: checker::CONVERGENCE,
                detail: format!(
                    "{} ownership transfers still pending after the quiet period: {:?}",
                    pending.len(),
                    pending.iter().take(4).collect::<Vec<_>>()
                ),
            });
        }
        for node in &self.nodes {
            // A scan, not the kept count: the count is what the product trusts to skip
            // scans, so it is checked against the engine here.
            let pending = node
                .store
                .as_ref()
                .map(|s| (s.count_hints(), s.hints_held()));
            if let Some((Ok(pending), kept)) = pending {
                let held: u64 = pending.values().sum();
                if held != kept {
                    self.violations.push(Violation {
                        checker: checker::CONVERGENCE,
                        detail: format!(
                            "{} holds {held} hints but counts {kept} after the quiet period",
                            node.id
                        ),
                    });
                }
                if held > 0 {
                    self.violations.push(Violation {
                        checker: checker::CONVERGENCE,
                        detail: format!(
                            "{} still holds {held} hints after the quiet period",
                            node.id
                        ),
                    });
                }
            }
        }
    }

    /// After heal and quiet, anti-entropy has rebuilt every tree and the replicas of each
    /// partition agree on its Merkle root (SPEC §5: identical roots once faults heal).
    fn check_roots(&mut self) {
        let membership = self.final_view();
        let ring = membership.ring();
        for partition in 0..ring.partition_count() {
            let replicas = membership
                .replicas(crate::ring::PartitionId(partition), N)
                .list
                .primaries;
            let mut roots = Vec::new();
            for replica in &replicas {
                let Some(store) = self
                    .nodes
                    .iter()
                    .find(|n| n.id == *replica)
                    .and_then(|n| n.store.as_ref())
                else {
                    continue; // reported by the per-key check
                };
                let view = store.tree_view(partition, Some(&[]));
                if !view.ready {
                    self.violations.push(Violation {
                        checker: checker::CONVERGENCE,
                        detail: format!(
                            "{replica} has no Merkle tree for partition {partition} after the quiet period"
                        ),
                    });
                    continue;
                }
                roots.push((replica.clone(), view.root, view.keys));
            }
            if let Some((first, root, keys)) = roots.first().cloned() {
                for (other, other_root, other_keys) in &roots[1..] {
                    if *other_root != root {
                        self.violations.push(Violation {
                            checker: checker::CONVERGENCE,
                            detail: format!(
                                "partition {partition}: {first} has root {root:016x} ({keys} keys), {other} {other_root:016x} ({other_keys} keys)"
                            ),
                        });
                    }
                }
            }
        }
    }
}
