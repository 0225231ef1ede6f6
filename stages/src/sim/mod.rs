//! The deterministic cluster simulator (SPEC §8, TESTING.md §2; FoundationDB's simulation and
//! TigerBeetle's VOPR are the models). K whole nodes — every stage machine, the same code the
//! product runs, over the memory storage engine — run in one thread with a simulated clock and
//! a simulated network that can delay, drop, duplicate and reorder frames, partition and heal,
//! crash a node's process (what it wrote survives) or cut its power (its unflushed writes are
//! lost) and restart it, pause one, fail its flushes, join a node and remove a member, and
//! restore a member from a backup of its data. Seeded clients
//! run the set workload, blind puts, deletes and the same-context scenario through the nodes'
//! real intake; checkers judge the history and the replicas' final state.
//!
//! One seed gives one run: every choice comes from the seeded [`rng::SimRng`], every decision
//! path iterates ordered collections, and machines see only the simulated clock. The digest
//! of the run's trace proves it: the same seed on the same build prints the same digest.
//!
//! Replay a failing seed with `shoal sim --seed S --trace`.

mod check;
mod client;
mod net;
mod node;
pub mod rng;
mod world;

pub use check::{checker, Violation};

use crate::durability::Durability;
use crate::storage::SyncMode;
use std::fmt;
use std::str::FromStr;

/// The faults a run may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Latency spikes on frames.
    pub delay: bool,
    /// Frames lost.
    pub drop: bool,
    /// Frames delivered twice.
    pub duplicate: bool,
    /// Frames overtaking earlier ones on their connection.
    pub reorder: bool,
    /// The nodes split in two groups that cannot reach each other, then healed.
    pub partition: bool,
    /// A node's process crashes (what it handed to the OS survives, what it still buffered
    /// is lost) and restarts on its data; half the crashes are that machine's power loss
    /// instead (unflushed writes lost): any of them where every acknowledged write is flushed
    /// first (`sync = "always"`, or `durable_writes` "one" or "all"), else at most one per run
    /// (W = 2 machines hold every acknowledged write). With `restore`, unless every
    /// acknowledged write is flushed twice (`sync = "always"` or `durable_writes = "all"`),
    /// none: the restore is that run's one loss of a machine's writes.
    pub crash: bool,
    /// Every node loses power at once (unflushed writes lost everywhere) and restarts. Only
    /// flushed writes survive it: `durable_writes` "one" or "all", or `sync = "always"`.
    pub power: bool,
    /// A node stops processing for a while (a GC pause, a stalled VM).
    pub pause: bool,
    /// A node's journal flushes fail for a while (a disk error): the writes of those batches
    /// are not acknowledged, and are lost if the node loses power before a flush succeeds.
    /// The first failure poisons the node, as fjall's engine is: it refuses every write until
    /// its operator restarts it (a crash and restart 0.2-1 s later in the plan, and at heal).
    pub flush: bool,
    /// A node outside the ring joins during the workload (plan and commit through a member),
    /// and later a member leaves: their partitions are transferred while clients write.
    pub membership: bool,
    /// An operator stops a member cleanly (the next start keeps its dot actor), copies its
    /// data and starts it again; later the node's disk dies and the copy is restored. The
    /// restored node must take a new actor: its old one went on making dots that other
    /// replicas hold and the copy lacks. Left out (the trace says so) where `power` is on
    /// and acknowledged writes are not flushed twice: a power loss of every node could then
    /// take the other copy of a write the restore took.
    pub restore: bool,
    /// With `membership`: an operator moves a member to another address (`admin move`): it
    /// stops, restarts at the new address, and the move is staged through a running member
    /// before or after its restart. Not in `all` yet: with every other fault it breaks seed
    /// 189 of 1,500 (a join committed by a claimant whose storage refused writes spread
    /// unsaved, every other copy of it was then lost, and the joiner was left cut off with
    /// the writes it took), an open finding of stop 52 that is not the move's own.
    pub moves: bool,
}

impl Faults {
    /// Every fault but `power` (see below).
    pub const ALL: Faults = Faults {
        delay: true,
        drop: true,
        duplicate: true,
        reorder: true,
        partition: true,
        crash: true,
        // Not in `all`: with `sync = "none"` and `durable_writes = "none"` (a run `--faults
        // all` may ask for) it loses acknowledged writes by design. The tests add it where a
        // flushed copy must survive it, `cargo test`'s sweep among them. (It once found a join
        // staged while the joiner was down that never committed; the operator's commits now
        // stage the join again, and 1,400 seeds of every fault with it found nothing.)
        power: false,
        pause: true,
        flush: true,
        membership: true,
        restore: true,
        moves: false,
    };

    /// No fault.
    pub const NONE: Faults = Faults {
        delay: false,
        drop: false,
        duplicate: false,
        reorder: false,
        partition: false,
        crash: false,
        power: false,
        pause: false,
        flush: false,
        membership: false,
        restore: false,
        moves: false,
    };

    const NAMES: [&'static str; 12] = [
        "delay",
        "drop",
        "duplicate",
        "reorder",
        "partition",
        "crash",
        "power",
        "pause",
        "flush",
        "membership",
        "restore",
        "move",
    ];

    fn flags(&self) -> [bool; 12] {
        [
            self.delay,
            self.drop,
            self.duplicate,
            self.reorder,
            self.partition,
            self.crash,
            self.power,
            self.pause,
            self.flush,
            self.membership,
            self.restore,
            self.moves,
        ]
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = Faults::NAMES
            .iter()
            .zip(self.flags())
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

impl FromStr for Faults {
    type Err = String;

    /// `all`, `none`, or a comma-separated list of fault names.
    fn from_str(text: &str) -> Result<Faults, String> {
        match text.trim() {
            "all" => return Ok(Faults::ALL),
            "none" | "" => return Ok(Faults::NONE),
            _ => {}
        }
        let mut faults = Faults::NONE;
        for name in text.split(',').map(str::trim) {
            let flag = match name {
                "delay" => &mut faults.delay,
                "drop" => &mut faults.drop,
                "duplicate" => &mut faults.duplicate,
                "reorder" => &mut faults.reorder,
                "partition" => &mut faults.partition,
                "crash" => &mut faults.crash,
                "power" => &mut faults.power,
                "pause" => &mut faults.pause,
                "flush" => &mut faults.flush,
                "membership" => &mut faults.membership,
                "restore" => &mut faults.restore,
                "move" => &mut faults.moves,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; the faults are {}, or all, or none",
                        Faults::NAMES.join(", ")
                    ))
                }
            };
            *flag = true;
        }
        Ok(faults)
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes in the cluster; `None`: the seed picks 3, 4 or 5 (so fallbacks and hints exist
    /// in most runs, with N = 3).
    pub nodes: Option<usize>,
    /// The faults to inject.
    pub faults: Faults,
    /// Keep the trace's lines (not only its digest).
    pub trace: bool,
    /// Simulated milliseconds of client workload (faults happen in this window).
    pub workload_ms: u64,
    /// Every node's `sync` (`always` by default: every write flushed before its ack).
    pub sync: SyncMode,
    /// The cluster's `durable_writes` (matters when `sync` is not `always`).
    pub durable_writes: Durability,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: None,
            faults: Faults::ALL,
            trace: false,
            workload_ms: 6_000,
            sync: SyncMode::Always,
            durable_writes: Durability::None,
        }
    }
}

/// What one seed's run did and found.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Nodes simulated.
    pub nodes: usize,
    /// Broken properties, by checker.
    pub violations: Vec<Violation>,
    /// MD5 of the trace, hex: equal for equal seeds on one build.
    pub digest: String,
    /// The trace's lines (when asked for).
    pub trace: Vec<String>,
    /// Events the simulator delivered.
    pub events: u64,
    /// Client requests answered with success, and with an error.
    pub requests_ok: u64,
    /// See `requests_ok`.
    pub requests_failed: u64,
    /// Acknowledged set adds.
    pub acked_adds: u64,
    /// Set adds whose put a stopping node refused (`ShuttingDown`): how often the drain's
    /// refusal was exercised (the checker `refused-write-applied` watches them).
    pub refused_adds: u64,
    /// Simulated milliseconds the run lasted.
    pub simulated_ms: u64,
}

/// Runs one seed.
pub fn run(seed: u64, config: &SimConfig) -> SimReport {
    world::World::new(seed, config).run()
}

#[cfg(test)]
mod tests;
