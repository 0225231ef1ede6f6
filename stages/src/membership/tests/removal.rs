//! Removals: a member that has left, a dead leaver, a join at an address nobody listens at.
//! The copies each needs and which stay done, and that no write on W serving replicas loses
//! its copies.

use super::*;

/// Goal: removing a member that has left and handed everything over (`admin remove` of a
/// stopped leaver) starts no copy again: its finished copies stay done, nothing is pending,
/// reads stay where they moved, and the next commit passes. A leaver removed before its
/// copies were done is still replaced as a source by a live old replica.
#[test]
fn removing_a_member_that_has_left_restarts_none_of_its_copies() {
    let mut m = members(4);
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

/// Five members, the leaves of n2 and n3 committed (N = 3): the plan.
fn n2_and_n3_leave_five() -> (Membership, Plan) {
    let mut m = members(5);
    for leaver in ["n2", "n3"] {
        m.stage_departure(&id("n1"), &id(leaver), MemberState::Leaving)
            .expect("leave");
    }
    let plan = m.commit(&id("n1"), 3).expect("commit");
    (m, plan)
}

/// Goal: the rule behind the test above, where it is subtler. Two leavers of one partition
/// both removed, one's copy done and the other's not: the missing copy comes from a live old
/// replica (a write on the second leaver and that replica keeps a second copy); the same with
/// the other leaver still leaving, whose later removal restarts nothing. A cluster
/// smaller than N that grew copies from its first live replica; that replica removed after
/// its copies finished restarts none of them.
#[test]
fn copies_a_removed_node_finished_stay_done_and_the_rest_come_from_a_live_replica() {
    let (mut m, plan) = n2_and_n3_leave_five();
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
    let (mut m, plan) = n2_and_n3_leave_five();
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
