//! Replica balance: which receiver gets which free partition in a rebalance.
//!
//! Strategy 3 spreads the *owners* evenly, but a node stores every partition whose preference
//! list names it, and who follows whom on the ring decides that. Joins keep it even; leaves
//! did not (a leaver's partitions were dealt to the others in ring order): from 10 nodes down
//! to 6 (Q = 256, N = 3) one node stored 144 partitions and another 113 (mean 128), and a
//! trial's 4 nodes stored 44, 46, 44 and 58 of 192.
//!
//! A rebalance moves exactly the partitions it frees, and any permutation of their new owners
//! keeps both that and every node's owner count. So after the deal, owners of two freed
//! partitions are swapped while that brings the partitions each node stores closer to its
//! weighted share of N·Q. A swap is kept only if the copies the change needs (a node newly
//! in a partition's preference list receives that partition) do not grow past the deal's:
//! relabelling a slot changes the lists of the partitions before it too, so without that
//! check a balanced ring could move more data. Nor may a swap put a node nearer one of its
//! own partitions (within `SPREAD_WINDOW`) than the deal had it.
//! Hill climbing, deterministic (pairs in slot order), bounded by [`WORK_BUDGET`], and only
//! for rings of up to [`MAX_BALANCED_PARTITIONS`].

use super::assign::window;
use super::{PartitionId, Ring};
use crate::NodeId;

/// The search's work at most per rebalance, in pairs looked at plus [`WALK_COST`] per
/// preference list recomputed (a swap recomputes the lists whose walk passes either slot).
/// Bounds a rebalance of a large Q: its search stops early, and the ring is valid either way.
/// Measured (release, 10 nodes grown from 3, then leaves): Q = 1024 converges within it in
/// about 50 ms, Q = 4096 in about 80 ms.
const WORK_BUDGET: usize = 1_000_000;

/// Rings of more partitions are not balanced: the search's setup alone (every partition's
/// preference list before and after) took 5 s at Q = 65536 (release), and a plan or commit
/// must not stall the claimant that long. At Q = 4096 a leave's whole search took 78 ms.
const MAX_BALANCED_PARTITIONS: usize = 4096;

/// Work units of one preference list recomputed, against 1 for a pair looked at.
const WALK_COST: usize = 10;

/// Passes over all pairs at most; a pass without an improving swap ends the search (more
/// passes changed nothing in the cases measured).
const MAX_PASSES: usize = 8;

/// Swaps owners among `free` (slots a rebalance dealt anew from `old`) toward even replica
/// counts for a replication factor of `n`, never needing more copies than the deal.
pub(super) fn balance_replicas(ring: &mut Ring, free: &[usize], n: usize, old: &Ring) {
    let nodes = ring.nodes.len();
    let one_receiver = free
        .iter()
        .all(|&slot| ring.numbers.get(slot) == free.first().and_then(|&f| ring.numbers.get(f)));
    debug_assert_eq!(old.numbers.len(), ring.numbers.len(), "a rebalance keeps Q");
    if one_receiver || n == 0 || nodes <= n || ring.numbers.len() > MAX_BALANCED_PARTITIONS {
        // Nothing to permute (a join: every freed slot went to the newcomer), every node
        // stores every partition, or a ring too large to search in time.
        return;
    }
    let mut search = Search::new(ring, n, old);
    let mut budget = WORK_BUDGET;
    for _ in 0..MAX_PASSES {
        let mut improved = false;
        for (x, &a) in free.iter().enumerate() {
            for &b in &free[x + 1..] {
                let Some(left) = budget.checked_sub(1) else {
                    return search.finish();
                };
                budget = left;
                if search.ring.numbers[a] == search.ring.numbers[b] || !search.keeps_spread(a, b) {
                    continue;
                }
                let affected = search.affected(a, b);
                let Some(left) = budget.checked_sub(affected.len() * WALK_COST) else {
                    return search.finish();
                };
                budget = left;
                improved |= search.try_swap(a, b, &affected);
            }
        }
        if !improved {
            break;
        }
    }
    search.finish();
}

/// The search's state: the ring being changed, each partition's primaries and how far its
/// walk went, and how many partitions each node stores.
struct Search<'r> {
    ring: &'r mut Ring,
    n: usize,
    /// Each partition's primaries, as node numbers.
    primaries: Vec<Vec<usize>>,
    /// The longest walk (in slots, from the partition itself) any partition needed to find
    /// its primaries: a swap at slot s can change only the lists of s and the `reach`
    /// partitions before it.
    reach: usize,
    /// Partitions each node stores.
    stored: Vec<i64>,
    /// Each partition's primaries before the change, numbered as in the new ring (a node
    /// that left has no number and matches nothing).
    before: Vec<Vec<usize>>,
    /// Copies the change needs: a primary of a partition that was not one before.
    copies: i64,
    /// Each node's weighted share of N·Q, scaled by Σw (so the comparison stays integral).
    ideal: Vec<i128>,
    total_weight: i128,
}

impl<'r> Search<'r> {
    fn new(ring: &'r mut Ring, n: usize, old: &Ring) -> Search<'r> {
        let ids: Vec<&NodeId> = ring.nodes.keys().collect();
        let before: Vec<Vec<usize>> = (0..old.numbers.len())
            .map(|p| {
                old.preference_list(PartitionId(p as u32), n)
                    .primaries
                    .iter()
                    .filter_map(|id| ids.binary_search(&id).ok())
                    .collect()
            })
            .collect();
        let weights: Vec<i128> = ring
            .nodes
            .values()
            .map(|spec| i128::from(spec.weight))
            .collect();
        let total_weight: i128 = weights.iter().sum();
        let copies = (n * ring.owners.len()) as i128;
        let ideal = weights.iter().map(|w| copies * w).collect();
        let mut search = Search {
            primaries: Vec::new(),
            reach: 0,
            stored: vec![0; ring.nodes.len()],
            before,
            copies: 0,
            ideal,
            total_weight,
            n,
            ring,
        };
        for p in 0..search.ring.owners.len() {
            let (primaries, reach) = search.primaries_of(p);
            search.tally(p, &primaries, 1);
            search.reach = search.reach.max(reach);
            search.primaries.push(primaries);
        }
        search
    }

    /// Partition `p`'s primaries and the slots its walk took to meet them all (Q when one
    /// owns no partition).
    fn primaries_of(&self, p: usize) -> (Vec<usize>, usize) {
        let ids: Vec<_> = self.ring.nodes.keys().collect();
        let list = self.ring.preference_list(PartitionId(p as u32), self.n);
        let q = self.ring.numbers.len();
        let mut reach = 0;
        let mut numbers = Vec::with_capacity(list.primaries.len());
        for id in &list.primaries {
            // Preference lists name members only, and `ids` are all the members.
            let Ok(number) = ids.binary_search(&id) else {
                debug_assert!(false, "a primary that is not a member: {id}");
                continue;
            };
            let first = (0..q).find(|step| self.ring.numbers[(p + step) % q] as usize == number);
            reach = reach.max(first.unwrap_or(q));
            numbers.push(number);
        }
        (numbers, reach)
    }

    /// Copies partition `p` needs with `primaries`: those it did not have before.
    fn new_copies(&self, p: usize, primaries: &[usize]) -> i64 {
        primaries
            .iter()
            .filter(|node| !self.before[p].contains(node))
            .count() as i64
    }

    /// Counts partition `p`'s `primaries` in (`sign` 1) or out (-1) of what each node stores
    /// and of the copies the change needs.
    fn tally(&mut self, p: usize, primaries: &[usize], sign: i64) {
        for &node in primaries {
            self.stored[node] += sign;
        }
        let copies = self.new_copies(p, primaries);
        self.copies += sign * copies;
    }

    /// The partitions whose list a swap of slots `a` and `b` may change.
    fn affected(&self, a: usize, b: usize) -> Vec<usize> {
        let q = self.ring.numbers.len();
        let back = self.reach.min(q - 1);
        let mut partitions: Vec<usize> = [a, b]
            .iter()
            .flat_map(|&slot| (0..=back).map(move |d| (slot + q - d) % q))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// Σ over nodes of (stored·Σw − share)²: zero when every node stores its share exactly.
    fn imbalance(&self) -> i128 {
        self.stored
            .iter()
            .zip(&self.ideal)
            .map(|(&stored, &ideal)| {
                let off = i128::from(stored) * self.total_weight - ideal;
                off.saturating_mul(off)
            })
            .fold(0i128, i128::saturating_add)
    }

    /// Swaps the owners of `a` and `b` if that lowers the imbalance without needing more
    /// copies; whether it did. `affected` are the partitions whose lists the swap may change.
    fn try_swap(&mut self, a: usize, b: usize, affected: &[usize]) -> bool {
        let (imbalance, copies) = (self.imbalance(), self.copies);
        self.ring.numbers.swap(a, b);
        let mut reach = self.reach;
        let mut old = Vec::with_capacity(affected.len());
        for &p in affected {
            let list = std::mem::take(&mut self.primaries[p]);
            self.tally(p, &list, -1);
            let (new, walked) = self.primaries_of(p);
            self.tally(p, &new, 1);
            reach = reach.max(walked);
            self.primaries[p] = new;
            old.push((p, list));
        }
        if self.imbalance() < imbalance && self.copies <= copies {
            self.reach = reach;
            return true;
        }
        // Put back: the slots, the lists and the counts.
        self.ring.numbers.swap(a, b);
        for (p, list) in old {
            self.tally(p, &list, 1);
            let new = std::mem::replace(&mut self.primaries[p], list);
            self.tally(p, &new, -1);
        }
        false
    }

    /// Whether swapping `a` and `b` leaves neither owner with more of its own partitions
    /// within `SPREAD_WINDOW` of its new slot than of its old one.
    fn keeps_spread(&self, a: usize, b: usize) -> bool {
        let numbers = &self.ring.numbers;
        let near = |slot: usize, owner: u32, skip: usize| {
            window(numbers.len(), slot)
                .filter(|&s| s != skip && numbers[s] == owner)
                .count()
        };
        let (x, y) = (numbers[a], numbers[b]);
        near(b, x, a) <= near(a, x, a) && near(a, y, b) <= near(b, y, b)
    }

    /// Writes the owners' names back from their numbers.
    fn finish(self) {
        let ids: Vec<_> = self.ring.nodes.keys().cloned().collect();
        for (owner, &number) in self.ring.owners.iter_mut().zip(&self.ring.numbers) {
            *owner = ids[number as usize].clone();
        }
    }
}
