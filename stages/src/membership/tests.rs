use super::*;
use proptest::prelude::*;

mod removal;

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

/// n1..n`count` on loopback, Q = 64.
fn members(count: u16) -> Membership {
    Membership::new(
        1,
        64,
        (1..=count)
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

/// Goal: two initial rings dealt from different member lists never replace each other in a
/// merge, whichever digest is larger (a restarted founder's shorter list once did, on every
/// node), while a committed ring replaces an initial one; and a founder names its initial ring
/// for the handshake only while no commit replaced it, a joiner never.
#[test]
fn an_initial_ring_from_another_member_list_is_never_merged_in() {
    let full = three();
    let short = Membership::new(
        1,
        64,
        vec![Member::loopback("n1", 1), Member::loopback("n3", 3)],
    )
    .expect("valid");
    for (ours, theirs) in [(&full, &short), (&short, &full)] {
        let mut merged = ours.clone();
        merged.merge(theirs);
        assert_eq!(
            merged.ring(),
            ours.ring(),
            "an initial ring replaced another"
        );
    }
    assert_ne!(full.genesis(&id("n1")), 0);
    assert_ne!(full.genesis(&id("n1")), short.genesis(&id("n1")));
    assert_eq!(
        short.genesis(&id("n2")),
        0,
        "a node outside the ring names none"
    );
    let mut grown = full.clone();
    join_n4_and_commit(&mut grown);
    assert_eq!(
        grown.genesis(&id("n1")),
        0,
        "a committed ring is no initial one"
    );
    let mut merged = short.clone();
    merged.merge(&grown);
    assert_eq!(
        merged.ring(),
        grown.ring(),
        "a commit replaces an initial ring"
    );
    // Two commits of one stamp (a claimant restored from a backup committed again) still
    // settle on one ring, whichever way they merge.
    let mut other = full.clone();
    other
        .stage_join(&id("n1"), Member::loopback("n5", 5))
        .expect("join");
    other.commit(&id("n1"), 3).expect("commit");
    assert_eq!(other.assignment().stamp, grown.assignment().stamp);
    assert_ne!(other.ring(), grown.ring());
    let (mut a, mut b) = (grown.clone(), other.clone());
    a.merge(&other);
    b.merge(&grown);
    assert_eq!(a.ring(), b.ring(), "equal commit stamps converge");
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

/// Goal: the same member changed through two nodes at once ends the same everywhere: a
/// removal wins whatever the stamps (here the leave's is lower; the reverse case is in
/// `a_move_and_a_concurrent_leave_or_remove_both_survive_the_merge`).
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
        "a removal wins"
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

/// Goal: the view a coordinator reads answers every key as the membership it holds does,
/// and a membership installed later is answered afresh (the replicas it remembers per
/// partition belong to one installed value): once the copies are done, reads move to n4.
#[test]
fn the_view_answers_as_its_membership_and_forgets_on_install() {
    let mut m = three();
    let plan = join_n4_and_commit(&mut m);
    let view = MembershipView::new(m.clone());
    let keys: Vec<Vec<u8>> = (0..500).map(|i| format!("k{i}").into_bytes()).collect();
    for _ in 0..2 {
        for key in &keys {
            assert_eq!(view.replicas_for_key(key, 3), m.replicas_for_key(key, 3));
        }
    }
    let moving = |v: &MembershipView| {
        keys.iter()
            .filter(|key| !v.replicas_for_key(key, 3).also_write.is_empty())
            .count()
    };
    assert!(
        moving(&view) > 0,
        "n4's copies are pending: writes also reach it"
    );
    for t in &plan.transfers {
        m.mark_transferred(t.from.as_ref().expect("a source"), t.partition, &t.to);
    }
    view.set(m.clone());
    assert_eq!(moving(&view), 0, "every copy is done");
    for key in &keys {
        assert_eq!(view.replicas_for_key(key, 3), m.replicas_for_key(key, 3));
        assert_eq!(view.replicas_for_key(key, 2), m.replicas_for_key(key, 2));
    }
}

/// Goal: a removed node is never a transfer's source, and it cannot rejoin under its id.
#[test]
fn a_removed_node_is_never_copied_from_and_cannot_rejoin() {
    let mut m = members(4);
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

/// Goal: a leave that brings no new replica into a partition's list (three members, N=3, one
/// leaves) hands the leaver's data to every replica that stays, so a write the leaver holds
/// and a staying replica lost (a backup restored) is not dropped with the leaver's copy
/// (the simulator's seed 2602 lost acknowledged writes that way); a removed member gives
/// nothing.
#[test]
fn a_leave_below_n_hands_the_leavers_data_to_every_replica_that_stays() {
    let mut m = three();
    m.stage_departure(&id("n1"), &id("n3"), MemberState::Leaving)
        .expect("leave");
    let plan = m.commit(&id("n1"), 3).expect("commit");
    let expected: BTreeSet<(u32, Option<NodeId>, NodeId)> = (0..64)
        .flat_map(|p| [(p, Some(id("n3")), id("n1")), (p, Some(id("n3")), id("n2"))])
        .collect();
    let planned: BTreeSet<(u32, Option<NodeId>, NodeId)> = plan
        .transfers
        .iter()
        .map(|t| (t.partition, t.from.clone(), t.to.clone()))
        .collect();
    assert_eq!(planned, expected);
    let mut removed = three();
    removed
        .stage_departure(&id("n1"), &id("n3"), MemberState::Removed)
        .expect("remove");
    let plan = removed.commit(&id("n1"), 3).expect("commit");
    assert!(plan.transfers.is_empty(), "{:?}", plan.transfers);
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

/// Goal: a member that moved is recorded at its new address without a commit: the ring, the
/// plan and its partitions stay as they were, and a node that merges the value dials the new
/// address (the register's newer stamp wins); moving to the address it has changes nothing.
#[test]
fn a_moved_member_keeps_its_partitions_and_its_new_address_spreads_by_merge() {
    let mut m = three();
    let mut other = three();
    let ring = m.ring().clone();
    let new_addr = SocketAddr::from(([127, 0, 0, 1], 13));
    m.stage_move(&id("n1"), &id("n3"), new_addr).expect("move");
    assert_eq!(m.addr_of(&id("n3")), Some(new_addr));
    assert_eq!(m.ring(), &ring);
    let (plan, next) = m.plan(3).expect("plan");
    assert!(plan.is_empty(), "a move plans nothing: {plan:?}");
    assert_eq!(next, ring);
    assert!(other.merge(&m));
    assert_eq!(other.addr_of(&id("n3")), Some(new_addr));
    assert_eq!(other.digest(), m.digest());
    let version = m.version;
    m.stage_move(&id("n2"), &id("n3"), new_addr)
        .expect("same address");
    assert_eq!(
        m.version, version,
        "a move to the address it has is a no-op"
    );
}

/// Goal: a move to an address another member listens at, or of a node that is not a member
/// or was removed, is refused and changes nothing.
#[test]
fn a_move_to_a_taken_address_or_of_a_non_member_is_refused() {
    let mut m = three();
    let before = m.clone();
    let n2_addr = SocketAddr::from(([127, 0, 0, 1], 2));
    assert_eq!(
        m.stage_move(&id("n1"), &id("n3"), n2_addr),
        Err(MembershipError::AddressTaken {
            addr: n2_addr,
            node: id("n2")
        })
    );
    let free = SocketAddr::from(([127, 0, 0, 1], 9));
    assert_eq!(
        m.stage_move(&id("n1"), &id("n9"), free),
        Err(MembershipError::UnknownMember { node: id("n9") })
    );
    assert_eq!(m, before);
    m.stage_departure(&id("n1"), &id("n3"), MemberState::Removed)
        .expect("remove");
    assert_eq!(
        m.stage_move(&id("n1"), &id("n3"), free),
        Err(MembershipError::WasRemoved { node: id("n3") })
    );
}

/// Goal: a move and a leave (or a remove) of one member staged at about the same time through
/// two nodes both survive the merge, in either order: the role and the address are registers
/// of their own (one register once let the later stamp undo the other change). A removal
/// outlasts any later write, so a move never brings a removed member back.
#[test]
fn a_move_and_a_concurrent_leave_or_remove_both_survive_the_merge() {
    let moved_to = SocketAddr::from(([127, 0, 0, 1], 13));
    for departure in [MemberState::Leaving, MemberState::Removed] {
        for move_later in [false, true] {
            let (mut a, mut b) = (three(), three());
            let (first, second) = if move_later {
                (&mut b, &mut a)
            } else {
                (&mut a, &mut b)
            };
            // Stamps: the first change gets counter 3, the second 4 (versions bumped apart).
            first.version += 1;
            second.version += 2;
            a.stage_move(&id("n1"), &id("n3"), moved_to).expect("move");
            b.stage_departure(&id("n2"), &id("n3"), departure)
                .expect("departure");
            let (mut ab, mut ba) = (a.clone(), b.clone());
            ab.merge(&b);
            ba.merge(&a);
            for merged in [&ab, &ba] {
                assert_eq!(merged.state_of(&id("n3")), Some(departure), "{departure:?}");
                let entry = &merged.members[&id("n3")];
                assert_eq!(entry.member.addr, moved_to, "{departure:?}");
            }
            assert_eq!(ab, ba, "merges in either order agree");
        }
    }
    // A removal staged earlier than a later move stays.
    let mut removed = three();
    removed
        .stage_departure(&id("n2"), &id("n3"), MemberState::Removed)
        .expect("remove");
    let mut moved = three();
    moved.version += 10;
    moved
        .stage_move(&id("n1"), &id("n3"), moved_to)
        .expect("move");
    removed.merge(&moved);
    assert_eq!(removed.state_of(&id("n3")), Some(MemberState::Removed));
}

/// Goal: a leave staged by a node that has not seen a move yet keeps the moved address once
/// the two meet (a departure writes the role, not the address).
#[test]
fn a_leave_staged_before_a_move_arrives_keeps_the_new_address() {
    let moved_to = SocketAddr::from(([127, 0, 0, 1], 13));
    let mut mover = three();
    mover
        .stage_move(&id("n1"), &id("n3"), moved_to)
        .expect("move");
    let mut leaver = three();
    leaver.version += 5;
    leaver
        .stage_departure(&id("n2"), &id("n3"), MemberState::Leaving)
        .expect("leave");
    leaver.merge(&mover);
    assert_eq!(leaver.addr_of(&id("n3")), Some(moved_to));
    assert_eq!(leaver.state_of(&id("n3")), Some(MemberState::Leaving));
}

/// Goal: an address peers cannot dial (port 0, 0.0.0.0, ::) is refused for a move and a join.
#[test]
fn an_address_peers_cannot_dial_is_refused() {
    let mut m = three();
    for bad in ["127.0.0.1:0", "0.0.0.0:7403", "[::]:7403"] {
        let addr: SocketAddr = bad.parse().expect("addr");
        assert_eq!(
            m.stage_move(&id("n1"), &id("n3"), addr),
            Err(MembershipError::NotDialable { addr })
        );
        let joiner = Member {
            addr,
            ..Member::loopback("n4", 4)
        };
        assert_eq!(
            m.stage_join(&id("n1"), joiner),
            Err(MembershipError::NotDialable { addr })
        );
    }
    assert_eq!(m, three());
}

/// Goal: a node is told it listens elsewhere than its membership says exactly when peers
/// could not reach it there: another address or port, or another port on every interface.
#[test]
fn a_node_listening_elsewhere_than_its_membership_is_noticed() {
    let m = three();
    let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let elsewhere = |listen| m.listed_elsewhere(&id("n1"), at(listen));
    assert_eq!(elsewhere("127.0.0.1:1"), None);
    assert_eq!(elsewhere("0.0.0.0:1"), None);
    assert_eq!(elsewhere("127.0.0.1:11"), Some(at("127.0.0.1:1")));
    assert_eq!(elsewhere("127.0.0.2:1"), Some(at("127.0.0.1:1")));
    assert_eq!(elsewhere("0.0.0.0:11"), Some(at("127.0.0.1:1")));
    assert_eq!(m.listed_elsewhere(&id("n9"), at("127.0.0.1:9")), None);
}

/// Goal: two copies of a member with one stamp and different values (as a build before the
/// split registers passes them on: it claims both were written at the entry's stamp) merge to
/// the same value in either order, so nodes cannot split for good over them; and a value
/// whose register claims to be newer than its entry's stamp is refused.
#[test]
fn equal_stamps_with_different_values_merge_alike_and_a_register_above_its_stamp_is_refused() {
    let stamp = Stamp {
        counter: 9,
        node: id("n1"),
    };
    let copy = |port: u16, state: MemberState| {
        let mut m = three();
        let entry = m.members.get_mut(&id("n3")).expect("n3");
        entry.member.addr = SocketAddr::from(([127, 0, 0, 1], port));
        entry.state = state;
        entry.stamp = stamp.clone();
        m.version = 9;
        m
    };
    let (a, b) = (
        copy(13, MemberState::Active),
        copy(23, MemberState::Leaving),
    );
    let (mut ab, mut ba) = (a.clone(), b.clone());
    ab.merge(&b);
    ba.merge(&a);
    assert_eq!(ab, ba);
    assert_eq!(ab.digest(), ba.digest());
    let mut bad = three();
    let entry = bad.members.get_mut(&id("n3")).expect("n3");
    entry.addr_stamp = Some(Stamp {
        counter: 5,
        node: id("n2"),
    });
    assert!(
        bad.check(64).is_err(),
        "a register newer than its entry's stamp"
    );
}

/// One operator change, or a gossip exchange, in the merge-law property below.
#[derive(Clone, Debug)]
enum Step {
    /// Copy `at` stages a join of member `who` (n1..n5) at port `port`.
    Join { at: usize, who: u16, port: u16 },
    /// Copy `at` stages a leave of `who`.
    Leave { at: usize, who: u16 },
    /// Copy `at` stages a removal of `who`.
    Remove { at: usize, who: u16 },
    /// Copy `at` moves `who` to port `port`.
    Move { at: usize, who: u16, port: u16 },
    /// Copy `to` merges copy `from`.
    Merge { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let (at, who, port) = (0..3usize, 1..=5u16, 1..=6u16);
    prop_oneof![
        (at.clone(), who.clone(), port.clone()).prop_map(|(at, who, port)| Step::Join {
            at,
            who,
            port
        }),
        (at.clone(), who.clone()).prop_map(|(at, who)| Step::Leave { at, who }),
        (at.clone(), who.clone()).prop_map(|(at, who)| Step::Remove { at, who }),
        (at.clone(), who, port).prop_map(|(at, who, port)| Step::Move { at, who, port }),
        (at.clone(), at).prop_map(|(from, to)| Step::Merge { from, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: the members' merge is a join of a semilattice, so gossip converges however the
    /// changes and exchanges interleave: three copies changed through n1, n2 and n3 (joins,
    /// leaves, removals and moves, refused ones included) and merged now and then end equal,
    /// digests too, whichever order the last merges take; merging a copy into itself changes
    /// nothing; and a member removed on any copy is removed in the end. Method: random steps.
    /// Reference: Dynamo §4.8 (membership by gossip); the address and role registers of
    /// `MemberEntry`.
    #[test]
    fn copies_changed_and_merged_in_any_order_converge(steps in prop::collection::vec(step(), 0..24)) {
        let mut copies = [three(), three(), three()];
        let writer = |at: usize| id(&format!("n{}", at + 1));
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], 100 + port));
        let mut removed = BTreeSet::new();
        for step in steps {
            match step {
                Step::Join { at, who, port } => {
                    let member = Member { addr: addr(port), ..Member::loopback(&format!("n{who}"), who) };
                    let _ = copies[at].stage_join(&writer(at), member);
                }
                Step::Leave { at, who } => {
                    let _ = copies[at].stage_departure(&writer(at), &id(&format!("n{who}")), MemberState::Leaving);
                }
                Step::Remove { at, who } => {
                    let node = id(&format!("n{who}"));
                    if copies[at].stage_departure(&writer(at), &node, MemberState::Removed).is_ok() {
                        removed.insert(node);
                    }
                }
                Step::Move { at, who, port } => {
                    let _ = copies[at].stage_move(&writer(at), &id(&format!("n{who}")), addr(port));
                }
                Step::Merge { from, to } => {
                    let theirs = copies[from].clone();
                    copies[to].merge(&theirs);
                }
            }
        }
        let mut same = copies[0].clone();
        prop_assert!(!same.merge(&copies[0].clone()), "a merge with itself changed it");
        let [a, b, c] = copies;
        let mut abc = a.clone();
        abc.merge(&b);
        abc.merge(&c);
        let mut cba = c.clone();
        cba.merge(&b);
        cba.merge(&a);
        let mut bca = b;
        bca.merge(&c);
        bca.merge(&a);
        prop_assert_eq!(&abc, &cba);
        prop_assert_eq!(&abc, &bca);
        prop_assert_eq!(abc.digest(), cba.digest());
        for node in &removed {
            prop_assert_eq!(abc.state_of(node), Some(MemberState::Removed));
        }
    }
}
