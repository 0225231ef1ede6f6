//! Failure detection (Dynamo §4.8.3): local and cheap. A peer is marked down when a request to
//! it fails or times out, and marked up when any request to it succeeds. Requests avoid down
//! peers (sloppy quorum sends their replicas to fallbacks), and each down peer is probed every
//! `probe_interval`, so it comes back by itself, without an operator. No gossip of liveness:
//! every node forms its own view from its own traffic, as the paper does.
//!
//! Pure: `now` is passed in. Ordered map, so iteration (probes, stats) is deterministic.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What this node believes about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Up,
    /// `why`: the failure that marked it down (a request's or probe's, or another stage's
    /// link), so an error naming a peer held down can say why.
    Down {
        since: Instant,
        next_probe: Instant,
        why: DownReason,
        /// The peer said it stopped: only a probe's answer brings it back, not an answer or
        /// gossip it sent before it stopped and that arrives after (`said_stopped`).
        until_probed: bool,
        /// When [`FailureDetector::still_down`] last named it (`None`: not yet).
        named: Option<Instant>,
    },
}

/// Why a peer is held down, by kind: which reason gives way to which is decided on the kind
/// (STYLE 22), the text is for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DownReason {
    /// A request, a probe or another stage's link failed (the text says which).
    Failed(&'static str),
    /// It said it stopped ([`SAID_STOPPED`]).
    SaidStopped,
    /// Its handshake with this node failed ([`REFUSED_HANDSHAKE`]).
    RefusedHandshake,
}

impl DownReason {
    fn text(self) -> &'static str {
        match self {
            DownReason::Failed(why) => why,
            DownReason::SaidStopped => SAID_STOPPED,
            DownReason::RefusedHandshake => REFUSED_HANDSHAKE,
        }
    }
}

/// Why a peer that said it stopped is down.
pub const SAID_STOPPED: &str = "it said it stopped";

/// Why a peer whose handshake failed is down (either side refused the other).
pub const REFUSED_HANDSHAKE: &str = "its handshake with this node failed \
    (another secret, ring or build, or not a member: the log says which)";

/// A peer's state for `admin members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer.
    pub node: NodeId,
    /// Whether requests go to it.
    pub up: bool,
    /// How long it has been down, milliseconds (0 when up).
    pub down_for_ms: u64,
    /// Failures seen since it was last up.
    pub failures: u64,
    /// What marked it down ("silent past the replica timeout", ...); empty when up.
    #[serde(default)]
    pub why: String,
}

/// Every peer's health as seen from this node.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    probe_interval: Duration,
    peers: BTreeMap<NodeId, (Health, u64)>,
    /// Where the peers held down are published as they change (the metrics read it).
    board: Option<PeerBoard>,
}

/// The peers a node's failure detector holds down, as it last published them: read by the
/// metrics (`shoal_peer_up`) on their own thread, written by the detector only when a peer
/// goes down or comes back (never per request).
#[derive(Clone, Debug, Default)]
pub struct PeerBoard(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<NodeId>>>);

impl PeerBoard {
    /// The peers held down now.
    pub fn down(&self) -> std::collections::BTreeSet<NodeId> {
        self.lock().clone()
    }

    fn set(&self, down: std::collections::BTreeSet<NodeId>) {
        *self.lock() = down;
    }

    /// The set, even after a panic while it was held: a plain set, whole after every write,
    /// so a poisoned lock must not leave the metrics reading "every peer up" for ever.
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<NodeId>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A peer held down long enough to be named again (see [`FailureDetector::still_down`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StillDown {
    /// The peer.
    pub node: NodeId,
    /// How long it has been down.
    pub down_for: Duration,
    /// What marked it down.
    pub why: &'static str,
}

/// A plain failure (`why`) of a peer held down for a refused handshake: the refusal no longer
/// holds, since a failure while it does carries it again (`FailureDetector::refused`); so the
/// newer reason replaces it, and `admin members` does not blame a handshake for a peer that
/// has since simply stopped. It stays held until a probe's answer, as a refused peer was: a
/// probe comes every interval, and an answer it sent before it failed must not bring it back.
fn outdate_refusal(held_for: &mut DownReason, why: &'static str) {
    if *held_for == DownReason::RefusedHandshake {
        *held_for = DownReason::Failed(why);
    }
}

impl FailureDetector {
    /// A detector that probes down peers every `probe_interval`. Unknown peers count as up.
    pub fn new(probe_interval: Duration) -> FailureDetector {
        FailureDetector {
            probe_interval,
            peers: BTreeMap::new(),
            board: None,
        }
    }

    /// Publishes the peers held down to `board` from now on, at each change.
    pub fn publish_to(&mut self, board: PeerBoard) {
        self.board = Some(board);
        self.publish();
    }

    fn publish(&self) {
        if let Some(board) = &self.board {
            let down = self
                .peers
                .iter()
                .filter(|(_, (health, _))| matches!(health, Health::Down { .. }))
                .map(|(peer, _)| peer.clone())
                .collect();
            board.set(down);
        }
    }

    /// Whether requests should go to `peer`.
    pub fn is_up(&self, peer: &NodeId) -> bool {
        !matches!(self.peers.get(peer), Some((Health::Down { .. }, _)))
    }

    /// Whether any peer is held down (and so will be probed).
    pub fn any_down(&self) -> bool {
        self.peers
            .values()
            .any(|(health, _)| matches!(health, Health::Down { .. }))
    }

    /// A request to `peer` failed or timed out (`why`, kept while it stays down). Returns true
    /// if this marked it down.
    pub fn failed(&mut self, peer: &NodeId, now: Instant, why: &'static str) -> bool {
        let next_probe = now + self.probe_interval;
        let entry = self.peers.entry(peer.clone()).or_insert((Health::Up, 0));
        entry.1 += 1;
        match &mut entry.0 {
            Health::Up => {
                entry.0 = Health::Down {
                    since: now,
                    next_probe,
                    why: DownReason::Failed(why),
                    until_probed: false,
                    named: None,
                };
                self.publish();
                true
            }
            // Down already: the rest stays; the next probe moves.
            Health::Down {
                next_probe: probe,
                why: held_for,
                ..
            } => {
                *probe = next_probe;
                outdate_refusal(held_for, why);
                false
            }
        }
    }

    /// Another stage could not reach `peer` (its link failed under background requests):
    /// an up peer is marked down, as [`FailureDetector::failed`] would; a peer already down
    /// is left as it is. Returns true if this marked it down.
    ///
    /// Why: a dead peer fails a dozen background requests a second, and counting each as a
    /// failed request would push its next probe back every time, so a returning node would
    /// wait for them to stop before a probe found it.
    pub fn suspect(&mut self, peer: &NodeId, now: Instant, why: &'static str) -> bool {
        if let Some((Health::Down { why: held_for, .. }, _)) = self.peers.get_mut(peer) {
            outdate_refusal(held_for, why);
            return false;
        }
        self.failed(peer, now, why)
    }

    /// `peer` said it stopped (a clean stop's last word): it is held down, as
    /// [`FailureDetector::suspect`] would, with that reason, until a probe's answer
    /// ([`FailureDetector::probe_answered`]); answers and gossip it sent before it stopped,
    /// which can arrive after it said so (they take a longer path through the stages), do not
    /// bring it back. Returns true if this marked it down.
    pub fn said_stopped(&mut self, peer: &NodeId, now: Instant) -> bool {
        self.hold_until_probed(peer, now, DownReason::SaidStopped).0
    }

    /// A handshake with `peer` failed, refused by either side: it runs, but the two cannot be
    /// peers (another secret, Q or protocol, or not a member). Marked down if it was up, and
    /// whatever held it down before (a stop it announced, a timeout) gives way to this newer
    /// reason, so `admin members` does not keep saying "it said it stopped" of a node that
    /// came back misconfigured. Only a probe's answer, after a handshake that works, brings
    /// it back. Returns true if this marked it down or changed why.
    pub fn refused(&mut self, peer: &NodeId, now: Instant) -> bool {
        let (marked, changed) = self.hold_until_probed(peer, now, DownReason::RefusedHandshake);
        marked || changed
    }

    /// Holds `peer` down for `why` until a probe's answer: marked down as
    /// [`FailureDetector::suspect`] would (a peer already down keeps its next probe and its
    /// failure count: a refused redial every backoff would push the probe back for ever),
    /// with `why` replacing its reason. Whether this marked it down, and whether the reason
    /// changed.
    fn hold_until_probed(&mut self, peer: &NodeId, now: Instant, why: DownReason) -> (bool, bool) {
        // `suspect`'s marking, without its outdating of a refusal: `why` replaces any reason.
        let marked = self.is_up(peer) && self.failed(peer, now, why.text());
        let mut changed = false;
        if let Some((
            Health::Down {
                why: held_for,
                until_probed,
                ..
            },
            _,
        )) = self.peers.get_mut(peer)
        {
            changed = *held_for != why;
            *held_for = why;
            *until_probed = true;
        }
        (marked, changed)
    }

    /// Why a request does not ask `peer`, for a failed quorum's error: "not asked: held down
    /// 3.2 s, its link failed, 4 failures" (flat: the error puts it in parentheses after the
    /// peer's name, and a trial found nested ones hard to read). A peer held up was not left
    /// out by the detector: "not asked".
    pub fn not_asked_note(&self, peer: &NodeId, now: Instant) -> String {
        match self.peers.get(peer) {
            Some((Health::Down { since, why, .. }, failures)) => format!(
                "not asked: held down {:.1} s, {}, {failures} failure{}",
                now.saturating_duration_since(*since).as_secs_f64(),
                why.text(),
                if *failures == 1 { "" } else { "s" }
            ),
            _ => "not asked".to_string(),
        }
    }

    /// A request to `peer` succeeded, or it was heard from: it is up, unless it said it stopped
    /// (then only a probe's answer counts). Returns true if this brought it back up.
    pub fn succeeded(&mut self, peer: &NodeId) -> bool {
        if let Some((
            Health::Down {
                until_probed: true, ..
            },
            _,
        )) = self.peers.get(peer)
        {
            return false;
        }
        self.probe_answered(peer)
    }

    /// A probe of `peer` was answered: it is up, whatever held it down. Returns true if it
    /// was down.
    pub fn probe_answered(&mut self, peer: &NodeId) -> bool {
        let was_down = !self.is_up(peer);
        self.peers.insert(peer.clone(), (Health::Up, 0));
        if was_down {
            self.publish();
        }
        was_down
    }

    /// Peers down for at least `every` and not named in the last `every`: each is returned
    /// once per `every` while it stays down. Why: after its first lines a peer that stays
    /// down is silent in the log; a planned stop that became an outage went unnoticed (a
    /// trial's node, down 100 s with 1,700 hints held for it, drew no line after the first).
    pub fn still_down(&mut self, now: Instant, every: Duration) -> Vec<StillDown> {
        let mut due = Vec::new();
        for (node, (health, _)) in self.peers.iter_mut() {
            let Health::Down {
                since, why, named, ..
            } = health
            else {
                continue;
            };
            let down_for = now.saturating_duration_since(*since);
            let named_lately = named.is_some_and(|at| now.saturating_duration_since(at) < every);
            if down_for >= every && !named_lately {
                *named = Some(now);
                due.push(StillDown {
                    node: node.clone(),
                    down_for,
                    why: why.text(),
                });
            }
        }
        due
    }

    /// Down peers whose probe is due; each is rescheduled, so it is returned once per interval.
    pub fn due_probes(&mut self, now: Instant) -> Vec<NodeId> {
        let interval = self.probe_interval;
        let mut due = Vec::new();
        for (peer, (health, _)) in self.peers.iter_mut() {
            if let Health::Down { next_probe, .. } = health {
                if *next_probe <= now {
                    *next_probe = now + interval;
                    due.push(peer.clone());
                }
            }
        }
        due
    }

    /// Every known peer's state.
    pub fn statuses(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(node, (health, failures))| {
                let (down_for, why) = match health {
                    Health::Up => (Duration::ZERO, ""),
                    Health::Down { since, why, .. } => {
                        (now.saturating_duration_since(*since), why.text())
                    }
                };
                PeerStatus {
                    node: node.clone(),
                    up: matches!(health, Health::Up),
                    down_for_ms: u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
                    failures: *failures,
                    why: why.to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `admin members` says `peer` is down.
    fn why_down(detector: &FailureDetector, peer: &NodeId, now: Instant) -> Option<String> {
        detector
            .statuses(now)
            .into_iter()
            .find(|s| &s.node == peer)
            .map(|s| s.why)
    }

    /// Goal: a failure marks a peer down, it is probed once per interval, and a success brings
    /// it back. Reference: Dynamo §4.8.3.
    #[test]
    fn failed_peer_is_down_probed_per_interval_and_recovers_on_success() {
        let interval = Duration::from_millis(100);
        let mut detector = FailureDetector::new(interval);
        let peer = NodeId::new("n2");
        let start = Instant::now();
        assert!(detector.is_up(&peer), "unknown peers are up");
        assert!(detector.failed(&peer, start, "its link failed"));
        assert!(
            !detector.failed(&peer, start, "a probe went unanswered"),
            "already down"
        );
        assert!(!detector.is_up(&peer));
        assert!(
            detector.due_probes(start).is_empty(),
            "not due before the interval"
        );
        assert_eq!(detector.due_probes(start + interval), vec![peer.clone()]);
        assert!(
            detector.due_probes(start + interval).is_empty(),
            "once per interval"
        );
        assert_eq!(
            detector.due_probes(start + interval * 2),
            vec![peer.clone()]
        );
        let status = &detector.statuses(start + interval * 2)[0];
        assert!(!status.up && status.failures == 2 && status.down_for_ms == 200);
        assert_eq!(
            status.why, "its link failed",
            "the failure that marked it down"
        );
        assert!(detector.succeeded(&peer));
        assert!(detector.is_up(&peer));
        assert!(detector.due_probes(start + interval * 10).is_empty());
    }

    /// Goal: another stage's failed link marks an up peer down, but does not push back the
    /// probe of a peer already down (a dead peer's background failures, a dozen a second,
    /// would otherwise keep it from ever being probed). Reference: Dynamo §4.8.3.
    #[test]
    fn a_suspected_peer_is_down_and_its_probe_is_not_postponed() {
        let interval = Duration::from_millis(100);
        let mut detector = FailureDetector::new(interval);
        let peer = NodeId::new("n2");
        let start = Instant::now();
        assert!(
            detector.suspect(&peer, start, "its link failed"),
            "marked down"
        );
        assert!(!detector.is_up(&peer));
        for ms in [30, 60, 90] {
            assert!(!detector.suspect(&peer, start + Duration::from_millis(ms), "its link failed"));
        }
        assert_eq!(
            detector.due_probes(start + interval),
            vec![peer.clone()],
            "probed on time"
        );
        assert_eq!(detector.statuses(start + interval)[0].failures, 1);
    }

    /// Goal: a failed quorum's error says why a replica it did not ask is held down, for how
    /// long and after how many failures (it said only "held down, not asked").
    #[test]
    fn a_peer_held_down_is_named_with_why_and_for_how_long() {
        let mut detector = FailureDetector::new(Duration::from_secs(1));
        let peer = NodeId::new("n2");
        let start = Instant::now();
        assert_eq!(detector.not_asked_note(&peer, start), "not asked");
        detector.failed(&peer, start, "silent past the replica timeout");
        detector.failed(&peer, start, "a probe went unanswered");
        assert_eq!(
            detector.not_asked_note(&peer, start + Duration::from_millis(3200)),
            "not asked: held down 3.2 s, silent past the replica timeout, 2 failures"
        );
    }

    /// Goal: a peer that said it stopped stays down through answers it sent before it stopped
    /// (they arrive after), with that reason, until a probe's answer; an ordinary failure is
    /// undone by any answer, as before.
    #[test]
    fn a_peer_that_said_it_stopped_is_up_again_only_on_a_probe_answer() {
        let mut detector = FailureDetector::new(Duration::from_secs(1));
        let (stopped, failed) = (NodeId::new("n2"), NodeId::new("n3"));
        let start = Instant::now();
        assert!(detector.said_stopped(&stopped, start));
        assert!(detector.failed(&failed, start, "its link failed"));
        assert!(!detector.succeeded(&stopped), "a late answer");
        assert!(!detector.is_up(&stopped));
        assert_eq!(
            why_down(&detector, &stopped, start).as_deref(),
            Some(SAID_STOPPED)
        );
        assert!(detector.probe_answered(&stopped));
        assert!(detector.is_up(&stopped));
        assert!(detector.succeeded(&failed), "any answer undoes a failure");
    }

    /// Goal: a peer that said it stopped and whose handshake then failed (a trial's
    /// node restarted with another secret read "it said it stopped" for minutes) is held down
    /// with the refusal as its reason, through late answers, until a probe's answer; a peer
    /// that was up is marked down by a refusal.
    #[test]
    fn a_refused_handshake_replaces_why_a_peer_is_down() {
        let mut detector = FailureDetector::new(Duration::from_secs(1));
        let (stopped, up) = (NodeId::new("n2"), NodeId::new("n3"));
        let start = Instant::now();
        assert!(detector.said_stopped(&stopped, start));
        assert!(detector.refused(&stopped, start), "the reason changed");
        assert!(!detector.refused(&stopped, start), "already that reason");
        assert!(detector.refused(&up, start), "marked down");
        for peer in [&stopped, &up] {
            assert_eq!(
                why_down(&detector, peer, start).as_deref(),
                Some(REFUSED_HANDSHAKE)
            );
        }
        assert!(!detector.succeeded(&up), "a late answer");
        assert!(detector.probe_answered(&up));
        assert!(detector.is_up(&up));
    }

    /// Goal: a peer held down for a refused handshake that then simply fails (it has since
    /// stopped: nothing listens) is held down for that, whether a request or another stage's
    /// link failed; a peer held down for another reason keeps it.
    #[test]
    fn a_plain_failure_after_a_refused_handshake_is_the_newer_reason() {
        let mut detector = FailureDetector::new(Duration::from_secs(1));
        let (by_request, by_stage, stopped) =
            (NodeId::new("n2"), NodeId::new("n3"), NodeId::new("n4"));
        let start = Instant::now();
        let (link, background) = (
            "its link failed",
            "a link to it failed under background traffic",
        );
        assert!(detector.refused(&by_request, start));
        assert!(!detector.failed(&by_request, start, link), "down already");
        assert_eq!(
            why_down(&detector, &by_request, start).as_deref(),
            Some(link)
        );
        assert!(detector.refused(&by_stage, start));
        assert!(!detector.suspect(&by_stage, start, background));
        assert_eq!(
            why_down(&detector, &by_stage, start).as_deref(),
            Some(background)
        );
        assert!(detector.said_stopped(&stopped, start));
        assert!(!detector.failed(&stopped, start, link));
        assert_eq!(
            why_down(&detector, &stopped, start).as_deref(),
            Some(SAID_STOPPED)
        );
    }

    /// Goal: a peer that stays down is named again once per interval, not before it has been
    /// down that long, and not once it is back.
    #[test]
    fn a_peer_that_stays_down_is_named_again_once_a_minute() {
        let mut detector = FailureDetector::new(Duration::from_secs(1));
        let peer = NodeId::new("n2");
        let minute = Duration::from_secs(60);
        let start = Instant::now();
        assert!(detector.said_stopped(&peer, start));
        assert!(detector.still_down(start + minute / 2, minute).is_empty());
        let named = detector.still_down(start + minute, minute);
        assert_eq!(
            named,
            vec![StillDown {
                node: peer.clone(),
                down_for: minute,
                why: SAID_STOPPED
            }]
        );
        assert!(detector
            .still_down(start + minute * 3 / 2, minute)
            .is_empty());
        assert_eq!(detector.still_down(start + minute * 2, minute).len(), 1);
        assert!(detector.probe_answered(&peer));
        assert!(detector.still_down(start + minute * 4, minute).is_empty());
    }
}
