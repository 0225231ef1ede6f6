//! The small typed values every stage passes around: operation and connection ids, where a
//! client request came from, and the time a machine is told it is.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One operation a stage asked another stage (or a peer) to do, chosen by the asking stage.
/// An answer carries it back so the asker can match it; ids of different askers may collide,
/// which is why answers are routed by [`super::ReplyTo`], never by the id's bits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection of the intake, for the life of the node (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a request came from, so its reply finds the way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The connection it arrived on.
    pub conn: ConnId,
    /// The request id the sender chose (echoed in the reply's frame).
    pub request_id: u64,
}

/// The time a machine is told it is: a monotonic instant for deadlines and a wall clock for
/// what is stored or signed (version timestamps, peer hellos). Machines never read a clock;
/// the threaded runtime passes the real one, the simulator its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// For deadlines and intervals.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

impl Now {
    /// The real clock (the threaded runtime's).
    pub fn real() -> Now {
        Now {
            instant: Instant::now(),
            wall_ms: wall_clock_ms(),
        }
    }

    /// `instant`, with the wall clock at 0 (for tests that do not read it).
    #[cfg(test)]
    pub(crate) fn at(instant: Instant) -> Now {
        Now {
            instant,
            wall_ms: 0,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
