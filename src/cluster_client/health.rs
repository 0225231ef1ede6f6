//! Which nodes the partition-aware client saw fail lately, and when each is tried again.
//! Shared by every client of one process that asks for it (`ClusterClient::share_health`: the
//! load tool's workers), so that once a failed node's wait is over one request tries it, not
//! every worker's at once: a trial's 16 workers all blocked on a paused node each time its
//! wait ran out, and the whole tool stood still 3 s, four times in 30 s.

use shoal_stages::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a node that failed is tried only after the others (doubled per failure since it
/// last answered, up to `DOWN_MAX`).
const DOWN_FOR: Duration = Duration::from_secs(2);

/// The longest a failing node is tried only after the others.
const DOWN_MAX: Duration = Duration::from_secs(16);

/// A node that failed: until when it is tried last, and its failures since it last answered.
#[derive(Clone, Copy, Debug)]
struct Down {
    until: Instant,
    failures: u32,
}

/// The failed nodes of one client, or of every client sharing it.
#[derive(Clone, Debug, Default)]
pub struct NodeHealth {
    down: Arc<Mutex<HashMap<NodeId, Down>>>,
    /// How many nodes `down` holds: a request while none failed takes no lock.
    held: Arc<AtomicUsize>,
    /// Failures seen in all that said a node's process was gone ([`Gone::Yes`]), by any
    /// client sharing this: a connection checked at the current epoch needs no look at
    /// `failed_at`. Moved only under `failed_at`'s lock, with it.
    epoch: Arc<AtomicU64>,
    /// Each node's latest such failure, as the epoch it made.
    failed_at: Arc<Mutex<HashMap<NodeId, u64>>>,
}

/// Whether a failure says the node's process is gone, so that every connection opened to it
/// before is dead (see [`NodeHealth::failed_since`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gone {
    /// It closed, reset or refused the connection, or said it is stopping.
    Yes,
    /// It stalled, or refused the request: its connections still work.
    No,
}

impl NodeHealth {
    /// Whether a request may try `node` now (else it goes last). A failed node whose wait is
    /// over is let through once: it is held `probe` longer, the most that request can wait
    /// for it, so the others keep going elsewhere until it answers or fails again.
    pub(super) fn may_try(&self, node: &NodeId, now: Instant, probe: Duration) -> bool {
        if self.held.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        match down.get_mut(node) {
            None => true,
            Some(entry) if entry.until > now => false,
            Some(entry) => {
                entry.until = now + probe;
                true
            }
        }
    }

    /// `node` answered (a value or a typed error): it is no longer tried last, and its next
    /// failure starts the wait over at `DOWN_FOR`.
    pub(super) fn answered(&self, node: &NodeId) {
        if self.held.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.remove(node).is_some() {
            self.held.fetch_sub(1, Ordering::Release);
        }
    }

    /// The failures seen so far by the clients sharing this that said a node's process was
    /// gone (a connection closed or reset, a connect refused, a stop): the epoch
    /// [`NodeHealth::failed_since`] counts by.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether `node`'s process was found gone after `epoch` (it stopped or restarted): a
    /// connection to it checked then is dialled again rather than tried, as another client's
    /// failure would otherwise be found again by each client.
    pub(super) fn failed_since(&self, node: &NodeId, epoch: u64) -> bool {
        let failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failed_at.get(node).is_some_and(|at| *at > epoch)
    }

    /// `node` failed: tried last for [`down_for`] of its failures in a row; if its process is
    /// `gone`, every connection to it opened before now is dialled again before its next use.
    pub(super) fn failed(&self, node: &NodeId, now: Instant, gone: Gone) {
        if gone == Gone::Yes {
            // Under the lock: a client that reads the new epoch then finds the failure.
            let mut failed_at = self
                .failed_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            failed_at.insert(node.clone(), epoch);
        }
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let failures = down
            .get(node)
            .map_or(0, |entry| entry.failures)
            .saturating_add(1);
        let until = now + down_for(failures);
        if down
            .insert(node.clone(), Down { until, failures })
            .is_none()
        {
            self.held.fetch_add(1, Ordering::Release);
        }
    }
}

/// How long a node is tried last after its `failures`-th failure in a row (1 = the first):
/// `DOWN_FOR`, doubled for each earlier one, at most `DOWN_MAX` (a stalled node cost each
/// retry a wait; a dead one, a refused connect).
fn down_for(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(DOWN_MAX.as_secs().ilog2());
    DOWN_FOR.saturating_mul(1 << doublings).min(DOWN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a failing node is tried last 2 s after its first failure in a row, doubled after
    /// each further one, never more than 16 s, however many.
    #[test]
    fn a_failing_node_waits_longer_after_each_failure_up_to_the_cap() {
        let waits: Vec<u64> = [1, 2, 3, 4, 5, 6, 40, u32::MAX]
            .into_iter()
            .map(|failures| down_for(failures).as_secs())
            .collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 16, 16, 16, 16]);
    }

    /// Goal: of clients sharing the health, only one tries a failed node once its wait is
    /// over; the others keep it last while that one waits for it; an answer clears it, and
    /// another failure doubles the wait.
    #[test]
    fn one_request_tries_a_failed_node_when_its_wait_is_over() {
        let health = NodeHealth::default();
        let shared = health.clone();
        let node = NodeId::new("n3");
        let start = Instant::now();
        let probe = Duration::from_secs(3);
        assert!(health.may_try(&node, start, probe), "never failed");
        health.failed(&node, start, Gone::Yes);
        assert!(!shared.may_try(&node, start + Duration::from_secs(1), probe));
        let over = start + Duration::from_secs(2);
        assert!(
            health.may_try(&node, over, probe),
            "the first after the wait"
        );
        assert!(
            !shared.may_try(&node, over, probe),
            "the others, while it tries"
        );
        health.failed(&node, over + probe, Gone::No);
        let second = over + probe + Duration::from_secs(3);
        assert!(
            !shared.may_try(&node, second, probe),
            "4 s after a second failure"
        );
        assert!(shared.may_try(&node, second + Duration::from_secs(1), probe));
        shared.answered(&node);
        assert!(
            health.may_try(&node, second, probe),
            "answered: tried first again"
        );
    }
}
