use super::*;

fn three() -> Membership {
    Membership::new(
        1,
        64,
        vec![
            Member::loopback("n1", 1),
            Member::loopback("n2", 2),
            Member::loopback("n3", 3),
        ],
    )
    .expect("valid")
}

fn four() -> Membership {
    Membership::new(
        1,
        64,
        (1..=4)
            .map(|i| Member::loopback(&format!("n{i}"), i))
            .collect(),
    )
    .expect("valid")
}

/// Two nodes, Q = 8, N = 3 (smaller than N), and n3's join committed: with no leaver, each
/// partition is copied from its first old replica.
fn two_grown_to_three() -> (Membership, Plan) {
    let mut small = Membership::new(
        1,
        8,
        vec![Member::loopback("n1", 1), Member::loopback("n2", 2)],
    )
    .expect("valid");
    small
        .stage_join(&id("n1"), Member::loopback("n3", 3))
        .expect("join");
    let plan = small.commit(&id("n1"), 3).expect("commit");
    (small, plan)
}

/// Stages n4's join through n1 and commits it (n = 3): the plan the next tests inspect.
fn join_n4_and_commit(m: &mut Membership) -> Plan {
    m.stage_join(&id("n1"), Member::loopback("n4", 4))
        .expect("join");
    m.commit(&id("n1"), 3).expect("commit")
}

fn id(name: &str) -> NodeId {
    NodeId::new(name)
}

/// Goal: nodes given the same members in any order derive the same membership and ring.
#[test]
fn same_members_in_any_order_give_the_same_ring() {
    let a = three();
    let b = Membership::new(
        1,
        64,
        vec![
            Member::loopback("n3", 3),
            Member::loopback("n1", 1),
            Member::loopback("n2", 2),
        ],
    )
    .expect("valid");
    assert_eq!(a, b);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(
        a.addr_of(&id("n2")),
        Some(SocketAddr::from(([127, 0, 0, 1], 2)))
    );
}

/// Goal: a join staged through one node and a leave staged through another at the same time
/// both survive the merge, in either order, and merging again changes nothing.
#[test]
fn concurrent_changes_through_different_nodes_merge() {
    let mut via_n1 = three();
    let mut via_n2 = three();
    via_n1
        .stage_join(&id("n1"), Member::loopback("n4", 4))
        .expect("join");
    via_n2
        .stage_departure(&id("n2"), &id("n3"), MemberState::Leaving)
        .expect("leave");
    let mut a = via_n1.clone();
    assert!(a.merge(&via_n2));
    let mut b = via_n2.clone();
    assert!(b.merge(&via_n1));
    assert_eq!(a, b, "merge is commutative");
    assert!(!a.merge(&via_n2), "and idempotent");
    assert_eq!(a.state_of(&id("n4")), Some(MemberState::Active));
    assert_eq!(a.state_of(&id("n3")), Some(MemberState::Leaving));
    let (plan, _) = a.plan(3).expect("plan");
    assert_eq!(plan.joining, vec![id("n4")]);
    assert_eq!(plan.leaving, vec![id("n3")]);
}

/// Goal: the same member changed through two nodes at once ends the same everywhere (the
/// later stamp wins, ties broken by the writer's id).
#[test]
fn the_same_member_changed_twice_at_once_ends_the_same_everywhere() {
    let mut a = three();
    let mut b = three();
    a.stage_departure(&id("n1"), &id("n3"), MemberState::Leaving)
        .expect("leave");
    b.stage_departure(&id("n2"), &id("n3"), MemberState::Removed)
        .expect("remove");
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, ba);
    assert_eq!(
        ab.state_of(&id("n3")),
        Some(MemberState::Removed),
        "n2 > n1"
    );
}

/// Goal: a join's plan moves partitions only to the joiner, about Q/S of them, and commits
/// into transfers; until a partition's transfers are done its reads stay on the old replicas
/// and its writes also reach the new one.
#[test]
fn a_committed_join_moves_reads_only_after_the_transfer() {
    let mut m = three();
    m.stage_join(&id("n1"), Member::loopback("n4", 4))
        .expect("join");
    let (plan, next) = m.plan(3).expect("plan");
    assert_eq!(plan.joining, vec![id("n4")]);
    assert!(plan.owners_changed as f64 <= 1.05 * 64.0 / 4.0, "{plan:?}");
    assert!(plan.transfers.iter().all(|t| t.to == id("n4")));
    assert!(next.contains(&id("n4")));
    let committed = m.commit(&id("n1"), 3).expect("commit");
    assert_eq!(committed, plan);
    assert_eq!(m.pending_transfers(3), plan.transfers);
    assert_eq!(
        m.commit(&id("n1"), 3),
        Err(MembershipError::TransfersPending {
            pending: plan.transfers.len()
        })
    );
    let moving = &plan.transfers[0];
    let replicas = m.replicas(PartitionId(moving.partition), 3);
    assert!(!replicas.list.primaries.contains(&id("n4")));
    assert_eq!(replicas.also_write, vec![id("n4")]);
    let from = moving.from.clone().expect("a source");
    assert!(m.mark_transferred(&from, moving.partition, &id("n4")));
    assert!(!m.mark_transferred(&from, moving.partition, &id("n4")));
    let replicas = m.replicas(PartitionId(moving.partition), 3);
    assert!(replicas.list.primaries.contains(&id("n4")));
    assert!(replicas.also_write.is_empty());
    for t in plan.transfers.iter().skip(1) {
        m.mark_transferred(t.from.as_ref().expect("a source"), t.partition, &t.to);
    }
    assert!(m.pending_transfers(3).is_empty());
    assert_eq!(m.commit(&id("n1"), 3), Err(MembershipError::NothingStaged));
}

/// Goal: a removed node is never a transfer's source, and it cannot rejoin under its id.
#[test]
fn a_removed_node_is_never_copied_from_and_cannot_rejoin() {
    let mut m = four();
    m.stage_departure(&id("n1"), &id("n4"), MemberState::Removed)
        .expect("remove");
    let plan = m.commit(&id("n1"), 3).expect("commit");
    assert_eq!(plan.removed, vec![id("n4")]);
    assert!(!plan.transfers.is_empty());
    assert!(plan
        .transfers
        .iter()
        .all(|t| t.from.as_ref().is_some_and(|f| f != &id("n4"))));
    assert!(m.member(&id("n4")).is_none());
    assert_eq!(
        m.stage_join(&id("n1"), Member::loopback("n4", 4)),
        Err(MembershipError::WasRemoved { node: id("n4") })
    );
}

/// Goal: only the claimant commits, so two commits never race: a commit through another node
/// is refused and names the claimant; a join staged elsewhere is committed by the claimant
/// once gossip brought it; a removed claimant hands the role to the next member.
#[test]
fn only_the_claimant_commits() {
    let mut a = three();
    let mut b = three();
    b.stage_join(&id("n2"), Member::loopback("n5", 5))
        .expect("join");
    assert_eq!(
        b.commit(&id("n2"), 3),
        Err(MembershipError::NotClaimant {
            me: id("n2"),
            claimant: id("n1")
        })
    );
    a.merge(&b);
    let plan = a.commit(&id("n1"), 3).expect("the claimant commits");
    assert_eq!(plan.joining, vec![id("n5")]);
    let mut c = three();
    c.stage_departure(&id("n2"), &id("n1"), MemberState::Removed)
        .expect("remove");
    assert_eq!(c.claimant(), Some(&id("n2")));
    assert!(c.commit(&id("n2"), 3).is_ok());
}

/// Goal: transfers marked done through different nodes merge by union.
#[test]
fn transfers_done_through_different_nodes_merge() {
    let mut m = three();
    let plan = join_n4_and_commit(&mut m);
    let mut a = m.clone();
    let mut b = m.clone();
    let (first, second) = (&plan.transfers[0], &plan.transfers[1]);
    a.mark_transferred(
        first.from.as_ref().expect("a source"),
        first.partition,
        &first.to,
    );
    b.mark_transferred(
        second.from.as_ref().expect("a source"),
        second.partition,
        &second.to,
    );
    a.merge(&b);
    assert_eq!(a.pending_transfers(3).len(), plan.transfers.len() - 2);
}

/// Goal: a value from another cluster layout (another Q) is refused before it is merged, with
/// an error that names the partition counts.
#[test]
fn values_of_another_layout_are_refused() {
    let m = three();
    assert!(m.check(64).is_ok());
    let error = m.check(128).expect_err("another Q");
    assert!(error.to_string().contains("64 partitions"), "{error}");
}

/// Goal: the last active member cannot leave, and leave of a stranger names it.
#[test]
fn departures_that_would_empty_the_ring_or_name_strangers_are_refused() {
    let mut m = Membership::new(1, 8, vec![Member::loopback("n1", 1)]).expect("valid");
    assert_eq!(
        m.stage_departure(&id("n1"), &id("n1"), MemberState::Leaving),
        Err(MembershipError::LastMember { node: id("n1") })
    );
    assert_eq!(
        m.stage_departure(&id("n1"), &id("n9"), MemberState::Leaving),
        Err(MembershipError::UnknownMember { node: id("n9") })
    );
}

/// Goal: every old replica that leaves a partition's list sends it to each new replica (a
/// write acknowledged by W old replicas is then on W new ones, whichever W they were); a
/// partition whose list only grows gets it from its first old replica.
#[test]
fn leavers_of_a_partition_are_its_sources() {
    let mut m = three();
    let plan = join_n4_and_commit(&mut m);
    let previous = m.assignment().previous.clone().expect("the old ring");
    for t in &plan.transfers {
        let partition = PartitionId(t.partition);
        let before = previous.preference_list(partition, 3).primaries;
        let after = m.ring().preference_list(partition, 3).primaries;
        let from = t.from.clone().expect("a source");
        assert!(before.contains(&from) && !after.contains(&from), "{t:?}");
    }
    let (_, plan) = two_grown_to_three();
    assert_eq!(plan.transfers.len(), 8, "n3 gains every partition");
    assert!(plan.transfers.iter().all(|t| t.from.is_some()));
}

/// Goal: removing a member that has left and handed everything over (`admin remove` of a
/// stopped leaver) starts no copy again: its finished copies stay done, nothing is pending,
/// reads stay where they moved, and the next commit passes. A leaver removed before its
/// copies were done is still replaced as a source by a live old replica.
#[test]
fn removing_a_member_that_has_left_restarts_none_of_its_copies() {
    let mut m = four();
    m.stage_departure(&id("n1"), &id("n2"), MemberState::Leaving)
        .expect("leave");
    let plan = m.commit(&id("n1"), 3).expect("commit");
    assert!(plan.transfers.iter().all(|t| t.from == Some(id("n2"))));
    // A copy of n2's not yet done when it is removed: rebuilt from a live old replica.
    let mut early = m.clone();
    early
        .stage_departure(&id("n1"), &id("n2"), MemberState::Removed)
        .expect("remove");
    let rebuilt = early.pending_transfers(3);
    assert_eq!(rebuilt.len(), plan.transfers.len());
    assert!(rebuilt
        .iter()
        .all(|t| t.from.as_ref().is_some_and(|f| f != &id("n2"))));

    for t in &plan.transfers {
        assert!(m.mark_transferred(&id("n2"), t.partition, &t.to));
    }
    assert!(m.pending_transfers(3).is_empty());
    let serving: Vec<Vec<NodeId>> = (0..64).map(|p| m.serving(PartitionId(p), 3)).collect();
    m.stage_departure(&id("n1"), &id("n2"), MemberState::Removed)
        .expect("remove");
    assert_eq!(m.pending_transfers(3), Vec::new());
    let after: Vec<Vec<NodeId>> = (0..64).map(|p| m.serving(PartitionId(p), 3)).collect();
    assert_eq!(after, serving);
    m.stage_join(&id("n1"), Member::loopback("n5", 5))
        .expect("join n5");
    m.commit(&id("n1"), 3).expect("the next commit passes");
}

/// Goal: the rule behind the test above, where it is subtler. Two leavers of one partition
/// both removed, one's copy done and the other's not: the missing copy comes from a live old
/// replica (a write on the second leaver and that replica keeps a second copy); the same with
/// the other leaver still leaving, whose later removal restarts nothing. A cluster
/// smaller than N that grew copies from its first live replica; that replica removed after
/// its copies finished restarts none of them.
#[test]
fn copies_a_removed_node_finished_stay_done_and_the_rest_come_from_a_live_replica() {
    let five: Vec<Member> = (1..=5)
        .map(|i| Member::loopback(&format!("n{i}"), i as u16))
        .collect();
    let mut m = Membership::new(1, 64, five).expect("valid");
    for leaver in ["n2", "n3"] {
        m.stage_departure(&id("n1"), &id(leaver), MemberState::Leaving)
            .expect("leave");
    }
    let plan = m.commit(&id("n1"), 3).expect("commit");
    let previous = m.assignment().previous.clone().expect("the old ring");
    for t in plan.transfers.iter().filter(|t| t.from == Some(id("n2"))) {
        assert!(m.mark_transferred(&id("n2"), t.partition, &t.to));
    }
    for leaver in ["n2", "n3"] {
        m.stage_departure(&id("n1"), &id(leaver), MemberState::Removed)
            .expect("remove");
    }
    let pending = m.pending_transfers(3);
    for p in 0..64 {
        let before = previous.preference_list(PartitionId(p), 3).primaries;
        let after = m.ring().preference_list(PartitionId(p), 3).primaries;
        let of_p: Vec<&Transfer> = pending.iter().filter(|t| t.partition == p).collect();
        if !before.contains(&id("n3")) {
            assert!(of_p.is_empty(), "partition {p}: {of_p:?}");
            continue;
        }
        // Every new replica gets a copy from an old replica alive.
        for to in after.iter().filter(|to| !before.contains(to)) {
            assert!(
                of_p.iter().any(|t| &t.to == to
                    && t.from
                        .as_ref()
                        .is_some_and(|f| before.contains(f) && f != &id("n2") && f != &id("n3"))),
                "partition {p} to {to}: {of_p:?}"
            );
        }
    }
    assert!(
        !pending.is_empty(),
        "some partitions had n3 among their replicas"
    );

    // One leaver removed before its copy, the other still leaving: the missing copy comes
    // from an old replica that stays, not only from the other leaver. Once all are done and
    // the second leaver (now left) is removed too, nothing starts again.
    let five: Vec<Member> = (1..=5)
        .map(|i| Member::loopback(&format!("n{i}"), i as u16))
        .collect();
    let mut m = Membership::new(1, 64, five).expect("valid");
    for leaver in ["n2", "n3"] {
        m.stage_departure(&id("n1"), &id(leaver), MemberState::Leaving)
            .expect("leave");
    }
    let plan = m.commit(&id("n1"), 3).expect("commit");
    assert_eq!(
        plan.transfers,
        m.pending_transfers(3),
        "the plan is what pends"
    );
    let previous = m.assignment().previous.clone().expect("the old ring");
    m.stage_departure(&id("n1"), &id("n3"), MemberState::Removed)
        .expect("remove n3");
    let pending = m.pending_transfers(3);
    let mut both = 0;
    for p in 0..64 {
        let before = previous.preference_list(PartitionId(p), 3).primaries;
        if !(before.contains(&id("n2")) && before.contains(&id("n3"))) {
            continue;
        }
        both += 1;
        let after = m.ring().preference_list(PartitionId(p), 3).primaries;
        for to in after.iter().filter(|to| !before.contains(to)) {
            let from = |t: &&Transfer| t.partition == p && &t.to == to;
            let senders: Vec<&NodeId> = pending
                .iter()
                .filter(from)
                .filter_map(|t| t.from.as_ref())
                .collect();
            assert!(senders.contains(&&id("n2")), "partition {p}: {senders:?}");
            assert!(
                senders.iter().any(|s| **s != id("n2") && **s != id("n3")),
                "partition {p} to {to}: no copy from a replica that stays: {senders:?}"
            );
        }
    }
    assert!(both > 0, "some partitions had both leavers");
    for t in &pending {
        let from = t.from.clone().expect("a source");
        assert!(m.mark_transferred(&from, t.partition, &t.to));
    }
    assert!(m.has_left(&id("n2"), 3));
    m.stage_departure(&id("n1"), &id("n2"), MemberState::Removed)
        .expect("remove n2");
    assert_eq!(m.pending_transfers(3), Vec::new());

    let (mut small, plan) = two_grown_to_three();
    for t in &plan.transfers {
        let from = t.from.clone().expect("a source");
        assert!(small.mark_transferred(&from, t.partition, &t.to));
    }
    let source = plan.transfers[0].from.clone().expect("a source");
    small
        .stage_departure(&id("n3"), &source, MemberState::Removed)
        .expect("remove");
    assert_eq!(small.pending_transfers(3), Vec::new());
}

/// Goal: a join committed for a node that never comes up (a mistyped address) does not hold
/// membership forever: its copies can never finish, so its removal's commit undoes the join
/// (the ring goes back to the one every moving partition was still served from) instead of
/// being refused. Copies to a live node still refuse a commit.
#[test]
fn a_committed_join_that_never_comes_up_is_undone_by_its_removal() {
    let mut m = three();
    let before = m.ring().clone();
    m.stage_join(&id("n1"), Member::loopback("n9", 9))
        .expect("join n9");
    m.commit(&id("n1"), 3).expect("commit");
    assert!(!m.pending_transfers(3).is_empty());
    m.stage_departure(&id("n1"), &id("n9"), MemberState::Removed)
        .expect("remove n9");
    let (planned, _) = m.plan(3).expect("plan");
    assert_eq!(planned.removed, vec![id("n9")]);
    let undone = m.commit(&id("n1"), 3).expect("the removal commits");
    assert_eq!(undone, planned);
    assert!(undone.transfers.is_empty(), "nothing moves: {undone:?}");
    assert_eq!(m.ring(), &before, "the ring before the join");
    assert!(m.pending_transfers(3).is_empty());

    let mut both = three();
    both.stage_join(&id("n1"), Member::loopback("n4", 4))
        .expect("join n4");
    both.stage_join(&id("n1"), Member::loopback("n9", 9))
        .expect("join n9");
    let joined = both.commit(&id("n1"), 3).expect("commit");
    both.stage_departure(&id("n1"), &id("n9"), MemberState::Removed)
        .expect("remove n9");
    let pending = joined.transfers.len();
    let refused = Err(MembershipError::TransfersPending { pending });
    assert_eq!(both.commit(&id("n1"), 3), refused, "copies to n4 wait");
}

/// Goal: a join at a dead address committed together with one whose copies arrived does not
/// lock membership: removing the dead node commits, and each partition's data moves from the
/// replicas that were really serving it (those before the joins, for the partitions whose
/// copies waited for the dead node), so a write on any two of them is on two of its new
/// replicas once the copies are done, and none of them stops holding it before.
#[test]
fn a_dead_join_committed_with_a_live_one_is_taken_out_by_its_removal() {
    let (n, q) = (3, 64);
    let mut m = three();
    m.stage_join(&id("n1"), Member::loopback("n4", 4))
        .expect("join n4");
    m.stage_join(&id("n1"), Member::loopback("n9", 9))
        .expect("join n9");
    let joined = m.commit(&id("n1"), n).expect("commit");
    for t in joined.transfers.iter().filter(|t| t.to == id("n4")) {
        m.mark_transferred(t.from.as_ref().expect("a source"), t.partition, &t.to);
    }
    let serving: Vec<Vec<NodeId>> = (0..q)
        .map(|p| m.replicas(PartitionId(p), n).list.primaries)
        .collect();
    let ring_lists = |m: &Membership, p: u32| m.ring().preference_list(PartitionId(p), n);
    let waiting = (0..q).filter(|&p| serving[p as usize] != ring_lists(&m, p).primaries);
    assert!(waiting.count() > 0, "some partitions wait for n9's copies");
    assert!(serving.iter().all(|list| !list.contains(&id("n9"))));

    m.stage_departure(&id("n1"), &id("n9"), MemberState::Removed)
        .expect("remove n9");
    let (planned, _) = m.plan(n).expect("plan");
    let plan = m.commit(&id("n1"), n).expect("the removal commits");
    assert_eq!(plan, planned);
    assert!(!m.ring().contains(&id("n9")));
    assert!(m.check(q).is_ok(), "{:?}", m.check(q));
    let pending = m.pending_transfers(n);
    assert_eq!(
        plan.transfers, pending,
        "the plan shows the copies that follow"
    );
    let moving: BTreeSet<u32> = pending.iter().map(|t| t.partition).collect();
    assert!(!moving.is_empty());
    for &p in &moving {
        let partition = PartitionId(p);
        let during = m.replicas(partition, n).list.primaries;
        assert_eq!(
            during, serving[p as usize],
            "partition {p} stays where it was"
        );
        for node in &serving[p as usize] {
            assert!(m.holds(node, partition, n), "{node} keeps partition {p}");
        }
    }

    // Each partition's writes on any two of the replicas that served it, copied as the
    // transfers say.
    let mut copies: BTreeMap<u32, Vec<BTreeSet<NodeId>>> = BTreeMap::new();
    for p in 0..q {
        let list = &serving[p as usize];
        let pairs = (0..list.len()).flat_map(|i| (i + 1..list.len()).map(move |j| (i, j)));
        let writes = pairs.map(|(i, j)| BTreeSet::from([list[i].clone(), list[j].clone()]));
        copies.insert(p, writes.collect());
    }
    for t in m.pending_transfers(n) {
        let from = t.from.clone().expect("every partition has a live sender");
        for holders in copies.get_mut(&t.partition).expect("a partition") {
            if holders.contains(&from) {
                holders.insert(t.to.clone());
            }
        }
        m.mark_transferred(&from, t.partition, &t.to);
    }
    assert!(m.pending_transfers(n).is_empty());
    for (p, writes) in &copies {
        let now = m.replicas(PartitionId(*p), n).list.primaries;
        assert_eq!(now, ring_lists(&m, *p).primaries);
        for holders in writes {
            let kept = now.iter().filter(|node| holders.contains(*node)).count();
            assert!(
                kept >= 2,
                "partition {p}: a write on {holders:?} is on {kept} of {now:?}"
            );
        }
    }
}

/// Goal: a join at an address another member listens at is refused and names that member
/// (peers would reach one node under both names); the same node joining again is not.
#[test]
fn a_join_at_another_members_address_is_refused() {
    let mut m = three();
    let mut at_n2 = Member::loopback("n5", 2);
    assert_eq!(
        m.stage_join(&id("n1"), at_n2.clone()),
        Err(MembershipError::AddressTaken {
            addr: at_n2.addr,
            node: id("n2")
        })
    );
    let mut own = at_n2.clone();
    own.addr = Member::loopback("n5", 5).addr;
    m.stage_join(&id("n1"), own.clone())
        .expect("its own address");
    m.stage_join(&id("n1"), own).expect("again: a no-op");
    // A node staged to leave still listens until it is out of the ring.
    m.stage_departure(&id("n1"), &id("n3"), MemberState::Leaving)
        .expect("n3 leaves");
    let at_n3 = Member::loopback("n7", 3);
    assert_eq!(
        m.stage_join(&id("n1"), at_n3.clone()),
        Err(MembershipError::AddressTaken {
            addr: at_n3.addr,
            node: id("n3")
        })
    );
    // A removed node frees its address: it comes back under a new id.
    m.stage_departure(&id("n1"), &id("n2"), MemberState::Removed)
        .expect("remove n2");
    at_n2.id = id("n6");
    m.stage_join(&id("n1"), at_n2)
        .expect("n2's address, n2 removed");

    // Out of the ring but still sending its partitions, a leaver keeps its address.
    let mut left = three();
    join_n4_and_commit(&mut left);
    for t in left.pending_transfers(3) {
        left.mark_transferred(t.from.as_ref().expect("a source"), t.partition, &t.to);
    }
    left.stage_departure(&id("n1"), &id("n3"), MemberState::Leaving)
        .expect("n3 leaves");
    left.commit(&id("n1"), 3).expect("commit");
    assert!(!left.ring().contains(&id("n3")));
    assert!(left
        .pending_transfers(3)
        .iter()
        .any(|t| t.from == Some(id("n3"))));
    let at_n3 = Member::loopback("n7", 3);
    assert_eq!(
        left.stage_join(&id("n1"), at_n3.clone()),
        Err(MembershipError::AddressTaken {
            addr: at_n3.addr,
            node: id("n3")
        })
    );
}

/// Every pair of a partition's serving replicas: where a W = 2 write made now may be.
fn writes_on_pairs(m: &Membership, n: usize, copies: &mut BTreeMap<u32, Vec<BTreeSet<NodeId>>>) {
    for p in 0..m.ring().partition_count() {
        let list = m.replicas(PartitionId(p), n).list.primaries;
        let writes = copies.entry(p).or_default();
        for i in 0..list.len() {
            for j in i + 1..list.len() {
                writes.push(BTreeSet::from([list[i].clone(), list[j].clone()]));
            }
        }
    }
}

/// Carries out the pending transfers `which` picks, copying each write its sender holds.
fn copy(
    m: &mut Membership,
    n: usize,
    copies: &mut BTreeMap<u32, Vec<BTreeSet<NodeId>>>,
    which: impl Fn(&Transfer) -> bool,
) {
    for t in m.pending_transfers(n).into_iter().filter(|t| which(t)) {
        let from = t.from.clone().expect("a live sender");
        for holders in copies.get_mut(&t.partition).expect("a partition") {
            if holders.contains(&from) {
                holders.insert(t.to.clone());
            }
        }
        m.mark_transferred(&from, t.partition, &t.to);
    }
}

/// Goal: dead joins committed one after another (each with the removal of the one before)
/// still end with every write made on two serving replicas on two of its final replicas: a
/// commit on top of one that kept old replicas starts from those. (The undo path on top of
/// kept lists is not reached here: taking n9's place, n8 gets partitions whose kept lists lack
/// n4, so n4 is sent them again and some copies of that commit always arrive.)
#[test]
fn dead_joins_in_a_chain_are_taken_out_without_losing_a_copy() {
    let n = 3;
    let n1 = id("n1");
    let mut m = three();
    let mut copies = BTreeMap::new();
    writes_on_pairs(&m, n, &mut copies);
    m.stage_join(&n1, Member::loopback("n4", 4))
        .expect("join n4");
    m.stage_join(&n1, Member::loopback("n9", 9))
        .expect("join n9");
    m.commit(&n1, n).expect("commit 1");
    copy(&mut m, n, &mut copies, |t| t.to == id("n4"));
    writes_on_pairs(&m, n, &mut copies);
    // The removal of n9 goes with another dead join, n8.
    m.stage_departure(&n1, &id("n9"), MemberState::Removed)
        .expect("remove n9");
    m.stage_join(&n1, Member::loopback("n8", 8))
        .expect("join n8");
    m.commit(&n1, n).expect("commit 2");
    assert!(
        !m.assignment().old_replicas.is_empty(),
        "lists kept from commit 1"
    );
    assert!(m.check(64).is_ok(), "{:?}", m.check(64));
    copy(&mut m, n, &mut copies, |t| t.to != id("n8"));
    writes_on_pairs(&m, n, &mut copies);
    m.stage_departure(&n1, &id("n8"), MemberState::Removed)
        .expect("remove n8");
    m.commit(&n1, n).expect("commit 3");
    assert!(m.check(64).is_ok(), "{:?}", m.check(64));
    writes_on_pairs(&m, n, &mut copies);
    copy(&mut m, n, &mut copies, |_| true);
    assert!(m.pending_transfers(n).is_empty());
    assert!(!m.ring().contains(&id("n8")) && !m.ring().contains(&id("n9")));
    for (p, writes) in &copies {
        let now = m.replicas(PartitionId(*p), n).list.primaries;
        for holders in writes {
            let kept = now.iter().filter(|node| holders.contains(*node)).count();
            assert!(
                kept >= 2,
                "partition {p}: a write on {holders:?} is on {kept} of {now:?}"
            );
        }
    }
}

/// A membership whose last commit kept old replicas (a dead join committed with a live one,
/// then removed once the live one's copies arrived).
fn with_old_replicas() -> Membership {
    let n1 = id("n1");
    let mut m = three();
    m.stage_join(&n1, Member::loopback("n4", 4))
        .expect("join n4");
    m.stage_join(&n1, Member::loopback("n9", 9))
        .expect("join n9");
    let joined = m.commit(&n1, 3).expect("commit");
    for t in joined.transfers.iter().filter(|t| t.to == id("n4")) {
        m.mark_transferred(t.from.as_ref().expect("a source"), t.partition, &t.to);
    }
    m.stage_departure(&n1, &id("n9"), MemberState::Removed)
        .expect("remove n9");
    m.commit(&n1, 3).expect("the removal commits");
    assert!(!m.assignment().old_replicas.is_empty());
    m
}

/// Goal: kept old replicas are part of the value gossip compares and merges, and a value
/// whose kept lists repeat a node or name a stranger is refused.
#[test]
fn kept_old_replicas_are_merged_digested_and_checked() {
    let m = with_old_replicas();
    let mut other = m.clone();
    other.assignment.old_replicas.clear();
    assert_ne!(m.digest(), other.digest());
    let mut stale = three();
    assert!(stale.merge(&m));
    assert_eq!(stale.assignment(), m.assignment());
    let mut repeated = m.clone();
    if let Some(list) = repeated.assignment.old_replicas.values_mut().next() {
        list.push(list[0].clone());
    }
    assert!(matches!(
        repeated.check(64),
        Err(MembershipError::Invalid { .. })
    ));
    let mut stranger = m.clone();
    if let Some(list) = stranger.assignment.old_replicas.values_mut().next() {
        list[0] = id("n77");
    }
    assert!(matches!(
        stranger.check(64),
        Err(MembershipError::Invalid { .. })
    ));
}

/// Goal: a value written before `old_replicas` existed (named MessagePack, as gossip sends it
/// and the meta keyspace keeps it) still decodes, keeping none; one with kept lists round-trips.
#[test]
fn a_membership_from_before_old_replicas_still_decodes() {
    use crate::wire::{decode_membership, encode_membership};
    /// The value's shape before the field, field for field.
    #[derive(Serialize)]
    struct Before<'a> {
        version: u64,
        members: &'a BTreeMap<NodeId, MemberEntry>,
        assignment: AssignmentBefore<'a>,
    }
    #[derive(Serialize)]
    struct AssignmentBefore<'a> {
        ring: &'a Ring,
        stamp: &'a Stamp,
        previous: &'a Option<Ring>,
        done: &'a BTreeSet<(u32, Option<NodeId>, NodeId)>,
    }
    let m = with_old_replicas();
    let bytes = encode_membership(&m).expect("encodes");
    assert_eq!(decode_membership(&bytes).expect("decodes"), m);
    let a = &m.assignment;
    let before = Before {
        version: m.version,
        members: &m.members,
        assignment: AssignmentBefore {
            ring: &a.ring,
            stamp: &a.stamp,
            previous: &a.previous,
            done: &a.done,
        },
    };
    let older = rmp_serde::to_vec_named(&before).expect("encodes");
    let decoded = decode_membership(&older).expect("an older value decodes");
    assert!(decoded.assignment().old_replicas.is_empty());
    assert_eq!(decoded.ring(), m.ring());
    assert_eq!(decoded.assignment().done, a.done);
}
