//! The coordinator's own stalls (a paused process, a starved thread) are not held against
//! its peers: Lifeguard's lesson, since on 2 cores starvation looks like death.

use super::*;
use crate::failure_detector::PeerBoard;

const REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

/// A coordinator for n1 of three (N = 3, R = 2) whose requests wait 10 s, publishing its
/// verdicts to the returned board, with a get of `k` sent to n2 and n3 at `start` and its
/// first tick 5 ms later.
fn get_in_flight(start: Instant) -> (Coordinator, PeerBoard) {
    let timeout = Duration::from_secs(10);
    let (c, _) = coordinator_of_three_timed((3, 2, 2), Durability::None, timeout, REPLICA_TIMEOUT);
    let board = PeerBoard::default();
    let mut c = c.with_peer_board(board.clone());
    let mut out = Vec::new();
    on_event(&mut c, start, get(1, start), &mut out);
    let asked = out
        .iter()
        .filter(|o| matches!(o, Output::Peer { .. }))
        .count();
    assert_eq!(asked, 2, "n2 and n3 asked: {out:?}");
    on_tick(&mut c, start + Duration::from_millis(5), &mut out);
    (c, board)
}

/// Goal: a coordinator that did not run for 2 s (no tick in between, though its get was
/// outstanding) does not mark its silent peers down on waking, since their answers may be
/// waiting unread; it does once they stay silent for the replica timeout while it runs.
#[test]
fn a_coordinator_that_stalled_does_not_blame_its_peers_for_its_own_silence() {
    let start = Instant::now();
    let (mut c, board) = get_in_flight(start);
    let mut out = Vec::new();
    let woke = start + Duration::from_secs(2);
    on_tick(&mut c, woke, &mut out);
    assert!(
        board.down().is_empty(),
        "blamed for the stall: {:?}",
        board.down()
    );
    let mut now = woke;
    while now < woke + REPLICA_TIMEOUT - Duration::from_millis(5) {
        now += Duration::from_millis(5);
        on_tick(&mut c, now, &mut out);
    }
    assert!(board.down().is_empty(), "blamed early: {:?}", board.down());
    on_tick(&mut c, woke + REPLICA_TIMEOUT, &mut out);
    let expected: std::collections::BTreeSet<NodeId> =
        [NodeId::new("n2"), NodeId::new("n3")].into();
    assert_eq!(board.down(), expected);
}

/// Goal: a coordinator that ran all along marks silent peers down at the replica timeout, as
/// before: ticks late by less than half of it (a busy box) are no stall.
#[test]
fn a_coordinator_that_ran_all_along_blames_silent_peers_at_the_replica_timeout() {
    let start = Instant::now();
    let (mut c, board) = get_in_flight(start);
    let mut out = Vec::new();
    // Ticks 200 ms apart: late, but under half the replica timeout.
    on_tick(&mut c, start + Duration::from_millis(205), &mut out);
    on_tick(&mut c, start + Duration::from_millis(405), &mut out);
    assert!(board.down().is_empty(), "blamed early: {:?}", board.down());
    on_tick(&mut c, start + Duration::from_millis(505), &mut out);
    assert_eq!(board.down().len(), 2, "{:?}", board.down());
}
