//! What anti-entropy has done since the node started: the totals `admin aae` reports, and the
//! one log line that says the node has caught up. A node started on an empty directory (its
//! disk lost) is refilled by exchanges alone, and a trial found its log silent throughout:
//! only `admin aae` told when it was done. Now the node logs once, when every partition it
//! holds has been found in sync with each of its other replicas by an exchange that began
//! after its start: from then on it holds at least what they held when it started.

use super::AntiEntropyMachine;
use slog::info;

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Totals {
    pub(super) exchanges: u64,
    pub(super) in_sync_exchanges: u64,
    pub(super) keys_sent: u64,
    pub(super) keys_received: u64,
    pub(super) digests_compared: u64,
    pub(super) bytes_exchanged: u64,
    pub(super) rebuilds: u64,
    pub(super) rot_found: u64,
    pub(super) tombstones_purged: u64,
}

/// Whether the node has caught up since its start (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CatchUp {
    /// The wall clock at the machine's first event or tick.
    started_ms: Option<u64>,
    /// Logged already (once per start; a membership change later is not a start).
    pub(super) done: bool,
}

impl CatchUp {
    /// Notes the wall clock of an event or tick: the first one is the start.
    pub(super) fn saw(&mut self, wall_ms: u64) {
        self.started_ms.get_or_insert(wall_ms);
    }
}

impl AntiEntropyMachine {
    /// After an exchange found its pair in sync: logs the catch-up if it is the last pair.
    pub(super) fn note_catch_up(&mut self) {
        let Some(started_ms) = self.catch_up.started_ms else {
            return;
        };
        if self.catch_up.done || self.partitions.is_empty() {
            return;
        }
        let mut pairs = 0;
        for state in self.partitions.values() {
            for peer in state.peers.values() {
                if peer.report.in_sync_since_ms < started_ms {
                    return;
                }
                pairs += 1;
            }
        }
        if pairs == 0 {
            return;
        }
        self.catch_up.done = true;
        info!(self.logger, "anti-entropy: every partition this node holds was found in sync with each of its other replicas since the start";
            "partitions" => self.partitions.len(), "pairs" => pairs,
            "objects_received" => self.totals.keys_received,
            "took_s" => self.wall_ms.saturating_sub(started_ms) / 1000);
    }
}
