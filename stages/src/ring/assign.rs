//! The assignment algorithm behind [`Ring::new`](super::Ring::new) and
//! [`Ring::rebalance`](super::Ring::rebalance): how many partitions each node should own
//! (weighted shares with a slack of one for minimal movement), and which free partitions go to
//! whom (stride scheduling in ring order, so each node's partitions are spread out).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::{NodeSpec, SPREAD_WINDOW};

#[derive(Clone, Copy, Debug)]
pub(super) struct Share {
    /// ⌊s⌋.
    floor: u32,
    /// ⌈s⌉.
    pub(super) ceil: u32,
    /// Q·w mod Σw: the fraction of s scaled by Σw, the same scale for every node, so
    /// remainders compare directly without floating point.
    remainder: u64,
}

/// The share of every node in `specs`.
pub(super) fn shares(partitions: u32, specs: &[&NodeSpec]) -> Vec<Share> {
    let total_weight = specs.iter().map(|spec| u64::from(spec.weight)).sum();
    specs
        .iter()
        .map(|spec| share_of(partitions, spec.weight, total_weight))
        .collect()
}

/// One node's share. u64 cannot overflow: Q <= 2^16 and w < 2^32.
pub(super) fn share_of(partitions: u32, weight: u32, total_weight: u64) -> Share {
    let scaled = u64::from(partitions) * u64::from(weight);
    // Weights are at least 1, so the total is too; max(1) only guards a misuse.
    let total_weight = total_weight.max(1);
    // w <= Σw, so the floor is at most Q and fits.
    let floor = u32::try_from(scaled / total_weight).unwrap_or(partitions);
    let remainder = scaled % total_weight;
    Share {
        floor,
        ceil: floor + u32::from(remainder > 0),
        remainder,
    }
}

/// Largest-remainder rounding of the shares: ⌊s⌋ each, plus one for the nodes with the
/// largest remainders (ties by id) until the counts sum to Q.
pub(super) fn fresh_targets(partitions: u32, shares: &[Share]) -> Vec<u32> {
    let mut targets: Vec<u32> = shares.iter().map(|share| share.floor).collect();
    let assigned: u32 = targets.iter().sum();
    let extra = partitions.saturating_sub(assigned) as usize;
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by_key(|&i| (Reverse(shares[i].remainder), i));
    for &i in order.iter().take(extra) {
        targets[i] += 1;
    }
    targets
}

/// A node's share and how many partitions it holds now (None for a newcomer).
#[derive(Clone, Copy, Debug)]
pub(super) struct Standing {
    /// The node's fair share under the new weights.
    pub(super) share: Share,
    /// Partitions it owns in the old ring; None if it was not a member, which also marks it
    /// as a newcomer that must reach its full floor.
    pub(super) held: Option<u32>,
}

impl Standing {
    fn held(&self) -> u32 {
        self.held.unwrap_or(0)
    }

    /// Fewest partitions the node may end with: a member may sit one below its floor rather
    /// than take a partition from a bystander; a newcomer gets its full floor.
    fn low(&self) -> u32 {
        match self.held {
            Some(_) => self.share.floor.saturating_sub(1),
            None => self.share.floor,
        }
    }

    /// Most partitions the node may end with: the SPEC §2 bound.
    fn high(&self) -> u32 {
        self.share.ceil + 1
    }

    /// Which nodes gain first when the clamped counts sum below Q (lower tier first), or None
    /// at the bound. Keeping a partition in place beats moving one; among moves: nodes below
    /// their floor (those receiving anyway first), then nodes receiving anyway, newcomers,
    /// anyone below ceil, anyone below the bound.
    fn grow_tier(&self, target: u32) -> Option<usize> {
        let (held, floor, ceil) = (self.held(), self.share.floor, self.share.ceil);
        let tiers = [
            target < held,
            target < floor && target > held,
            target < floor,
            target > held && target < ceil,
            self.held.is_none(),
            target < ceil,
        ];
        (target < self.high()).then(|| tiers.iter().take_while(|&&tier| !tier).count())
    }

    /// Which nodes give up first when the clamped counts sum above Q, or None at the low end:
    /// those only raised by the clamp (no partition moves), then those above ceil, then above
    /// floor, then anyone.
    fn shrink_tier(&self, target: u32) -> Option<usize> {
        let share = self.share;
        let tiers = [
            target > self.held(),
            target > share.ceil,
            target > share.floor,
        ];
        (target > self.low()).then(|| tiers.iter().take_while(|&&tier| !tier).count())
    }
}

/// Target counts for a rebalance: each node's current count clamped into its band
/// [`Standing::low`]..=[`Standing::high`], then nudged one partition at a time, by tier and
/// remainder, until the counts sum to Q. The band holds Q (Σlow <= Σ⌊s⌋ <= Q <= Σ⌈s⌉), so the
/// nudging always finishes.
pub(super) fn rebalance_targets(partitions: u32, standings: &[Standing]) -> Vec<u32> {
    let mut targets: Vec<u32> = standings
        .iter()
        .map(|standing| standing.held().clamp(standing.low(), standing.high()))
        .collect();
    let sum: u64 = targets.iter().map(|&target| u64::from(target)).sum();
    let wanted = u64::from(partitions);
    if sum < wanted {
        grow(&mut targets, standings, wanted - sum);
    } else if sum > wanted {
        shrink(&mut targets, standings, sum - wanted);
    }
    even_out(&mut targets, standings);
    debug_assert_eq!(targets.iter().map(|&t| u64::from(t)).sum::<u64>(), wanted);
    targets
}

/// Where the band's slack left one node above its ceil and another below its floor (after a
/// weight change, say), one partition moves between them: the slack exists to avoid moving
/// partitions between bystanders, not to keep a node off its share when another has too many.
/// Band ends are one off the fair range, so each swap fixes one node on either side.
fn even_out(targets: &mut [u32], standings: &[Standing]) {
    let mut over: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i] > standings[i].share.ceil)
        .collect();
    let mut under: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i] < standings[i].share.floor)
        .collect();
    // The mirror of the grow and shrink orders: smallest remainder gives, largest receives.
    over.sort_by_key(|&i| (standings[i].share.remainder, Reverse(i)));
    under.sort_by_key(|&i| (Reverse(standings[i].share.remainder), i));
    for (giver, taker) in over.into_iter().zip(under) {
        targets[giver] -= 1;
        targets[taker] += 1;
    }
}

/// Adds `missing` partitions to targets, best tier first, then largest remainder, then id.
fn grow(targets: &mut [u32], standings: &[Standing], missing: u64) {
    let key = |i: usize, target: u32| {
        let remainder = standings[i].share.remainder;
        standings[i]
            .grow_tier(target)
            .map(|tier| (tier, Reverse(remainder), i))
    };
    nudge(targets, missing, key, |target| target + 1);
}

/// Removes `excess` partitions from targets, best tier first, then smallest remainder, then
/// the later id (the mirror of [`grow`]).
fn shrink(targets: &mut [u32], standings: &[Standing], excess: u64) {
    let key = |i: usize, target: u32| {
        let remainder = standings[i].share.remainder;
        standings[i]
            .shrink_tier(target)
            .map(|tier| (tier, remainder, Reverse(i)))
    };
    nudge(targets, excess, key, |target| target - 1);
}

/// Steps the target that sorts first by `key` (None: may not step) `times` times.
fn nudge<K: Ord>(
    targets: &mut [u32],
    times: u64,
    key: impl Fn(usize, u32) -> Option<K>,
    step: impl Fn(u32) -> u32,
) {
    let mut queue: BTreeSet<(K, usize)> = (0..targets.len())
        .filter_map(|i| key(i, targets[i]).map(|k| (k, i)))
        .collect();
    for _ in 0..times {
        let Some((_, i)) = queue.pop_first() else {
            break; // unreachable: the bands hold Q
        };
        targets[i] = step(targets[i]);
        queue.extend(key(i, targets[i]).map(|k| (k, i)));
    }
}

/// Frees partitions of nodes holding more than their target. A first pass frees only
/// partitions with no free partition within [`SPREAD_WINDOW`], so the newly free partitions
/// are spread out and can go to one newcomer without giving it neighbouring partitions.
pub(super) fn release_excess(slots: &mut [Option<usize>], targets: &[u32]) {
    let mut excess: Vec<u32> = targets.iter().map(|_| 0).collect();
    for i in slots.iter().flatten() {
        excess[*i] += 1;
    }
    for (surplus, target) in excess.iter_mut().zip(targets) {
        *surplus = surplus.saturating_sub(*target);
    }
    for spaced in [true, false] {
        for p in 0..slots.len() {
            let Some(i) = slots[p] else { continue };
            if excess[i] > 0 && !(spaced && window(slots.len(), p).any(|n| slots[n].is_none())) {
                slots[p] = None;
                excess[i] -= 1;
            }
        }
    }
}

/// Gives every free slot an owner, in partition order, by stride scheduling: a node short of
/// d partitions should get its j-th one (from 0) at fraction (j + ½)/d of the way through the
/// free slots, and the earliest due node gets the next slot. That interleaves nodes evenly by
/// weight instead of leaving a heavy node a run of partitions at the end. Among the due order,
/// a node owning a partition within [`SPREAD_WINDOW`] is passed over, unless it is already
/// more than a slot behind schedule. Ties go to the lower id. Targets sum to Q, so the
/// deficits add up to exactly the free slots.
pub(super) fn fill_free(mut slots: Vec<Option<usize>>, targets: &[u32]) -> Vec<usize> {
    let mut deficit: Vec<u64> = targets.iter().map(|&t| u64::from(t)).collect();
    for i in slots.iter().flatten() {
        deficit[*i] = deficit[*i].saturating_sub(1);
    }
    let free = slots.iter().filter(|slot| slot.is_none()).count() as u64;
    let mut queue: BTreeSet<(u64, usize)> = (0..deficit.len())
        .filter(|&i| deficit[i] > 0)
        .map(|i| (due(0, deficit[i]), i))
        .collect();
    let mut given = vec![0u64; deficit.len()];
    let mut filled = 0u64;
    for p in 0..slots.len() {
        if slots[p].is_some() {
            continue;
        }
        let near: Vec<usize> = window(slots.len(), p).filter_map(|n| slots[n]).collect();
        let first = queue.first().copied();
        // A node is late if its next partition was due more than one slot ago; slot k's middle
        // is at (2k + 1) / (2·free) of the way.
        let late = first.is_some_and(|(_, i)| {
            filled > 0 && (2 * given[i] + 1) * free < (2 * filled - 1) * deficit[i]
        });
        // Without lateness at most 2·SPREAD_WINDOW entries are skipped, so the scan is short.
        let pick = match first {
            Some(first) if !late => queue
                .iter()
                .copied()
                .find(|(_, i)| !near.contains(i))
                .or(Some(first)),
            other => other,
        };
        let Some((key, i)) = pick else {
            break; // unreachable: deficits sum to the free slots
        };
        queue.remove(&(key, i));
        given[i] += 1;
        if given[i] < deficit[i] {
            queue.insert((due(given[i], deficit[i]), i));
        }
        slots[p] = Some(i);
        filled += 1;
    }
    debug_assert!(
        slots.iter().all(Option::is_some),
        "a partition was left without owner"
    );
    slots.into_iter().map(|slot| slot.unwrap_or(0)).collect()
}

/// When a node's next partition is due, (2·given + 1) / (2·deficit) of the way through the
/// free slots, as a fixed-point key. Both parts are at most 2^17 + 1, so two different
/// fractions differ by at least 2^-34: scaled by 2^40 they stay apart after rounding down,
/// and equal fractions get equal keys, so the key orders exactly like the fraction.
fn due(given: u64, deficit: u64) -> u64 {
    ((2 * given + 1) << 40) / (2 * deficit.max(1))
}

/// The partitions within [`SPREAD_WINDOW`] of `p` on either side, wrapping round the ring,
/// excluding `p` itself (which a small ring would otherwise reach).
pub(super) fn window(partitions: usize, p: usize) -> impl Iterator<Item = usize> {
    (1..=SPREAD_WINDOW)
        .flat_map(move |d| {
            [
                (p + d) % partitions,
                (p + partitions - d % partitions) % partitions,
            ]
        })
        .filter(move |&n| n != p)
}
