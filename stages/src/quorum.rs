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
    /// Failures that were a full queue (`Overloaded`), and the first such refusal's stage.
    overloaded: usize,
    refused_by: Option<String>,
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
            overloaded: 0,
            refused_by: None,
        }
    }

    /// Sets how many replicas are asked (before any answer: a put asks itself and at most
    /// N - 1 others, whatever the list held).
    pub fn set_asked(&mut self, asked: usize) {
        self.asked = asked;
    }

    /// Counts one more replica asked: a forwarded put asks the list's nodes one at a time,
    /// so each it tries is one more (before, a forward that failed on three nodes said "1
    /// asked, 3 failed").
    pub fn ask_one_more(&mut self) {
        self.asked += 1;
    }

    /// Notes a replica that will not answer, and why ("not asked: held down 3.2 s, its link
    /// failed, 4 failures", "silent"):
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
    pub fn fail(&mut self, replica: &str, error: &ServiceError) -> QuorumState {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(format!("{replica}: {error}"));
        }
        if let ServiceError::Overloaded { stage } = error {
            self.overloaded += 1;
            self.refused_by.get_or_insert_with(|| stage.clone());
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

    /// The typed error reporting how many of how many answered; `Overloaded` when no replica
    /// took the request and every one that failed refused from a full queue, with none missing
    /// (SEDA's fail-fast answer, which tells a client to back off: a lone node whose storage
    /// queue was full has no quorum problem). One acknowledgement means a version may exist
    /// and spread: that is a quorum error, with its counts.
    pub fn error(&self, operation: &str) -> ServiceError {
        if let Some(stage) = &self.refused_by {
            if self.acked == 0 && self.overloaded == self.failed && self.missing.is_empty() {
                return ServiceError::Overloaded {
                    stage: stage.clone(),
                };
            }
        }
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
                        tracker.fail(
                            "n2",
                            &ServiceError::PeerUnreachable {
                                node: "n2".into(),
                                why: None,
                            },
                        )
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
        tracker.fail(
            "n2",
            &ServiceError::PeerUnreachable {
                node: "n2".into(),
                why: None,
            },
        );
        let storage = "storage".to_string();
        tracker.fail("n3", &ServiceError::Overloaded { stage: storage });
        tracker.missing(
            "n4",
            "not asked: held down 3.2 s, its link failed, 4 failures",
        );
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
                missing: vec![
                    "n4 (not asked: held down 3.2 s, its link failed, 4 failures)".into()
                ],
            }
        );
        assert_eq!(
            error.to_string(),
            "put quorum not reached: 1 of 3 needed acknowledged (3 asked, 2 failed; \
             first: n2: peer n2 is unreachable; missing: n4 (not asked: held down 3.2 s, its link \
             failed, 4 failures))"
        );
        // Given up before every replica answered (too few were left to reach W): the count
        // of those still silent is in the text, so asked = acknowledged + failed + silent.
        let mut early = QuorumTracker::new(2, 2);
        let state = early.fail(
            "n3",
            &ServiceError::PeerUnreachable {
                node: "n3".into(),
                why: None,
            },
        );
        assert_eq!(state, QuorumState::Unreachable);
        assert_eq!(
            early.error("put").to_string(),
            "put quorum not reached: 0 of 2 needed acknowledged (2 asked, 1 failed, \
             1 not answered; first: n3: peer n3 is unreachable)"
        );
        // A read's replicas answer, they acknowledge nothing.
        assert_eq!(
            early.error("get").to_string(),
            "get quorum not reached: 0 of 2 needed answered (2 asked, 1 failed, \
             1 not answered; first: n3: peer n3 is unreachable)"
        );
    }

    /// Goal: when no replica took the request and every one that failed refused from a full
    /// queue, the answer is `Overloaded`, naming the stage (a client backs off), not a quorum
    /// error; a replica that acknowledged (a version may spread), one that failed otherwise,
    /// or one that never answered keeps it a quorum error.
    #[test]
    fn a_quorum_lost_to_full_queues_only_is_answered_overloaded() {
        let full = |stage: &str| ServiceError::Overloaded {
            stage: stage.into(),
        };
        let mut lone = QuorumTracker::new(1, 1);
        assert_eq!(lone.fail("n1", &full("storage")), QuorumState::Unreachable);
        assert_eq!(lone.error("get"), full("storage"));

        let mut all_full = QuorumTracker::new(2, 3);
        all_full.fail("n1", &full("replicate"));
        all_full.fail("n2", &full("storage"));
        assert_eq!(
            all_full.error("get"),
            full("replicate"),
            "the first refusal's stage"
        );

        let mut one_took_it = QuorumTracker::new(2, 3);
        one_took_it.ack();
        one_took_it.fail("n2", &full("replicate"));
        one_took_it.fail("n3", &full("storage"));
        let error = one_took_it.error("put");
        assert!(
            matches!(error, ServiceError::Quorum { acked: 1, .. }),
            "{error:?}"
        );

        let mut mixed = QuorumTracker::new(2, 3);
        mixed.fail("n2", &full("storage"));
        mixed.fail(
            "n3",
            &ServiceError::PeerUnreachable {
                node: "n3".into(),
                why: None,
            },
        );
        assert!(matches!(mixed.error("get"), ServiceError::Quorum { .. }));

        let mut one_silent = QuorumTracker::new(2, 2);
        one_silent.fail("n2", &full("storage"));
        assert_eq!(
            one_silent.error("get"),
            full("storage"),
            "unreachable at once"
        );
        one_silent.missing("n3", "silent");
        assert!(matches!(
            one_silent.error("get"),
            ServiceError::Quorum { .. }
        ));
    }
}
