//! The stage table (STYLE habit 2): one typed row per stage, the only place a stage's name,
//! class, defaults and shutdown order are written. Config keys, thread names, stats rows and
//! logs all take the name from here, and a name that is not in the table is an error.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whether a stage serves client requests (its latency is the SLA) or background work (paced so
/// it does not hurt the SLA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageClass {
    /// Serves requests; a full queue rejects with `Overloaded`.
    Foreground,
    /// Anti-entropy, hint delivery, read repair, transfers: paced by a rate gate.
    Background,
}

impl fmt::Display for StageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageClass::Foreground => "foreground",
            StageClass::Background => "background",
        })
    }
}

/// Every stage of a node. The order is the pipeline order, which is also the shutdown order:
/// the intake stops first (no new work enters), storage next to last and commit last
/// (everything accepted is flushed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageId {
    /// Network intake: the mio loop that owns every socket.
    Intake,
    /// Request parsing: frames to typed, validated requests.
    Parse,
    /// Coordination: quorums, deadlines, sloppy quorum, failure detection.
    Coordinate,
    /// Replication fan-out: requests to peers and the routing of their answers.
    Replicate,
    /// Read repair (background).
    Repair,
    /// Hinted handoff (background).
    Handoff,
    /// Anti-entropy: Merkle tree exchanges, tree rebuilds, tombstone purges (background).
    AntiEntropy,
    /// Ownership transfer: streams moving partitions to their new replicas, drops partitions
    /// this node no longer holds (background).
    Transfer,
    /// Gossip: the membership, its merges with peers, and the operator's changes to it.
    Gossip,
    /// Storage's background lane: the same database, serving only what background stages ask
    /// (hint scans and merges, anti-entropy's digests and syncs, transfers, read repairs), on
    /// the background workers, never on the intake's loop. Not paced itself: the stages that
    /// ask take their tokens before they ask.
    BackgroundStorage,
    /// Storage: the node's database.
    Storage,
    /// The journal flush (group commit): answers the writes that must be on disk once one
    /// fdatasync covers them, off the thread that applied them.
    Commit,
}

/// One row of the stage table: a stage's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageRow {
    /// The noun used in types, thread names, config keys, stats and logs.
    pub name: &'static str,
    /// Foreground or background.
    pub class: StageClass,
    /// Default slots: the most pool workers that serve the stage at once (`threads` in a
    /// config).
    pub threads: usize,
    /// Whether the stage must have exactly one slot, so one worker at a time runs it (its
    /// machine holds a table that would otherwise be split: the coordinator's pending requests, replicate's outstanding
    /// operations, handoff's deliveries, repair's writes waiting for tokens (whose count is
    /// the backlog its gate reports), anti-entropy's exchanges, the intake's sockets).
    pub single_threaded: bool,
    /// Default queue bound.
    pub queue_capacity: usize,
    /// Default events a worker takes from the queue at a time (unused by the intake, which
    /// drains its queue every turn).
    pub batch_max: usize,
    /// How often the stage's machine is ticked: the coordinator's deadline resolution, the
    /// handoff round, the storage flush of `sync = "periodic"` (overridden by
    /// `sync_interval_ms`), the intake's check of half-sent frames.
    pub tick_ms: u64,
}

impl StageId {
    /// Every stage, in pipeline (and shutdown) order.
    pub const ALL: [StageId; 12] = [
        StageId::Intake,
        StageId::Parse,
        StageId::Coordinate,
        StageId::Replicate,
        StageId::Repair,
        StageId::Handoff,
        StageId::AntiEntropy,
        StageId::Transfer,
        StageId::Gossip,
        StageId::BackgroundStorage,
        StageId::Storage,
        StageId::Commit,
    ];

    /// The stage's row of the table.
    pub const fn row(self) -> StageRow {
        use StageClass::{Background, Foreground};
        let (name, class, threads, single_threaded, queue_capacity, batch_max, tick_ms) = match self
        {
            StageId::Intake => ("intake", Foreground, 1, true, 4096, 256, 100),
            StageId::Parse => ("parse", Foreground, 1, false, 1024, 64, 100),
            StageId::Coordinate => ("coordinate", Foreground, 1, true, 4096, 64, 5),
            StageId::Replicate => ("replicate", Foreground, 1, true, 4096, 64, 100),
            StageId::Repair => ("repair", Background, 1, true, 1024, 16, 100),
            StageId::Handoff => ("handoff", Background, 1, true, 1024, 64, 200),
            StageId::AntiEntropy => ("anti_entropy", Background, 1, true, 1024, 64, 100),
            StageId::Transfer => ("transfer", Background, 1, true, 1024, 64, 100),
            // Foreground: the membership must converge even while background work is paused,
            // and a round costs one small message a second.
            StageId::Gossip => ("gossip", Foreground, 1, true, 1024, 64, 100),
            // One slot: one background worker by default, and its work is paced upstream.
            StageId::BackgroundStorage => {
                ("background_storage", Background, 1, false, 1024, 64, 100)
            }
            StageId::Storage => ("storage", Foreground, 2, false, 1024, 64, 100),
            // One slot: while it flushes, the next writes queue and share the next flush.
            StageId::Commit => ("commit", Foreground, 1, true, 4096, 1024, 100),
        };
        StageRow {
            name,
            class,
            threads,
            single_threaded,
            queue_capacity,
            batch_max,
            tick_ms,
        }
    }

    /// The stage's name.
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The stage's class.
    pub const fn class(self) -> StageClass {
        self.row().class
    }

    /// Whether the stage takes tokens from a gate of its own (every background stage but
    /// storage's background lane, whose work was paid for by the stage that asked for it).
    pub fn paced(self) -> bool {
        self.class() == StageClass::Background && self != StageId::BackgroundStorage
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A stage name that is not in the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no stage is called {name:?}; the stages are {}", StageId::ALL.map(StageId::name).join(", "))]
pub struct UnknownStage {
    /// The name given.
    pub name: String,
}

impl FromStr for StageId {
    type Err = UnknownStage;

    fn from_str(name: &str) -> Result<StageId, UnknownStage> {
        StageId::ALL
            .into_iter()
            .find(|stage| stage.name() == name)
            .ok_or_else(|| UnknownStage {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every stage's name parses back to it, and a misspelled name is an error that
    /// lists the real ones (not a fallback to some other stage's row).
    #[test]
    fn stage_names_round_trip_and_misspellings_are_errors() {
        use serde::de::{value::Error, IntoDeserializer};
        for stage in StageId::ALL {
            assert_eq!(stage.name().parse::<StageId>(), Ok(stage));
            // Config sections and shares are keyed by the same name through serde.
            let name: serde::de::value::StrDeserializer<'_, Error> =
                stage.name().into_deserializer();
            assert_eq!(StageId::deserialize(name), Ok(stage), "{}", stage.name());
        }
        let error = "storge".parse::<StageId>().expect_err("misspelled");
        assert!(error.to_string().contains("storage"), "{error}");
    }
}
