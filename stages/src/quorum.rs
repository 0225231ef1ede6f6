//! Quorum bookkeeping for one request (Dynamo §4.5): of `asked` replicas, `needed` must
//! acknowledge before the coordinator answers.
//!
//! What this does **not** guarantee: R + W > N makes a read's and a write's replica sets overlap
//! only when both used the same N nodes; with sloppy quorum (§4.6) they may not, and nothing
//! here is linearizable. A reached quorum says "enough replicas answered", nothing about the
//! others, which finish (or not) in the background.

use crate::error::ServiceError;

/// Where a request's quorum stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumState {
    /// Not enough answers yet, but enough replicas are still out.
    Pending,
    /// `needed` acknowledgements arrived.
    Reached,
    /// Too many replicas failed for `needed` to be reachable.
    Unreachable,
}

/// Counts acknowledgements and failures of one request's replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumTracker {
    needed: usize,
    asked: usize,
    acked: usize,
    failed: usize,
    /// Why the first failed replica failed ("n2: overloaded: ..."): the quorum error names it,
    /// so an operator can tell a stalled peer from a full queue without the node's log.
    first_failure: Option<String>,
    /// Replicas that never answered, and why (see `ServiceError::Quorum::missing`).
    missing: Vec<String>,
}

impl QuorumTracker {
    /// A tracker needing `needed` of `asked` replicas.
    pub fn new(needed: usize, asked: usize) -> QuorumTracker {
        QuorumTracker {
            needed,
            asked,
            acked: 0,
            failed: 0,
            first_failure: None,
            missing: Vec::new(),
        }
    }

    /// Sets how many replicas are asked (before any answer: a put asks itself and at most
    /// N - 1 others, whatever the list held).
    pub fn set_asked(&mut self, asked: usize) {
        self.asked = asked;
    }

    /// Notes a replica that will not answer, and why ("held down, not asked", "silent"):
    /// the quorum error names it.
    pub fn missing(&mut self, node: &str, why: &str) {
        self.missing.push(format!("{node} ({why})"));
    }

    /// Records a successful answer.
    pub fn ack(&mut self) -> QuorumState {
        self.acked += 1;
        self.state()
    }

    /// Records a failed answer and, if it is the first, why it failed.
    pub fn fail(&mut self, cause: impl FnOnce() -> String) -> QuorumState {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(cause());
        }
        self.state()
    }

    /// Where the quorum stands.
    pub fn state(&self) -> QuorumState {
        let outstanding = self.asked.saturating_sub(self.acked + self.failed);
        if self.acked >= self.needed {
            QuorumState::Reached
        } else if self.acked + outstanding < self.needed {
            QuorumState::Unreachable
        } else {
            QuorumState::Pending
        }
    }

    /// Whether every asked replica has answered.
    pub fn all_answered(&self) -> bool {
        self.acked + self.failed >= self.asked
    }

    /// The typed error reporting how many of how many answered.
    pub fn error(&self, operation: &str) -> ServiceError {
        ServiceError::Quorum {
            operation: operation.to_string(),
            needed: self.needed as u64,
            acked: self.acked as u64,
            asked: self.asked as u64,
            failed: self.failed as u64,
            first_failure: self.first_failure.clone(),
            missing: self.missing.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the tracker reaches, stays pending or becomes unreachable exactly as counting says,
    /// over every order of answers for N = 3. Reference: Dynamo §4.5.
    #[test]
    fn quorum_state_follows_the_counts_for_every_answer_order() {
        for needed in 1..=3usize {
            for pattern in 0..(1u32 << 3) {
                let mut tracker = QuorumTracker::new(needed, 3);
                let (mut acked, mut failed) = (0, 0);
                for i in 0..3 {
                    let state = if pattern & (1 << i) != 0 {
                        acked += 1;
                        tracker.ack()
                    } else {
                        failed += 1;
                        tracker.fail(|| "n2: overloaded".into())
                    };
                    let expected = if acked >= needed {
                        QuorumState::Reached
                    } else if acked + (3 - acked - failed) < needed {
                        QuorumState::Unreachable
                    } else {
                        QuorumState::Pending
                    };
                    assert_eq!(
                        state, expected,
                        "needed {needed} pattern {pattern:03b} step {i}"
                    );
                }
                assert!(tracker.all_answered());
            }
        }
    }

    /// Goal: the quorum error says how many of how many answered, why the first failed
    /// replica failed (not a later one's cause), and which replicas never answered.
    #[test]
    fn quorum_error_reports_counts_and_the_first_failure() {
        let mut tracker = QuorumTracker::new(3, 3);
        tracker.ack();
        tracker.fail(|| "n2: peer n2 is unreachable".into());
        tracker.fail(|| "n3: overloaded".into());
        tracker.missing("n4", "held down, not asked");
        let error = tracker.error("put");
        assert_eq!(
            error,
            ServiceError::Quorum {
                operation: "put".into(),
                needed: 3,
                acked: 1,
                asked: 3,
                failed: 2,
                first_failure: Some("n2: peer n2 is unreachable".into()),
                missing: vec!["n4 (held down, not asked)".into()],
            }
        );
        assert_eq!(
            error.to_string(),
            "put quorum not reached: 1 of 3 needed acknowledged (3 asked, 2 failed; \
             first: n2: peer n2 is unreachable; missing: n4 (held down, not asked))"
        );
    }
}
