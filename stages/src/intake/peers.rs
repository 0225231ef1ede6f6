//! The table of outgoing peer links: which connection carries frames to each peer, and how
//! long to wait after a failure before dialling again. Pure: `now` is passed in.
//!
//! Links are opened lazily (on the first frame for a peer), reused for every later frame, and
//! after a failure redialled only once the backoff has passed; the backoff doubles per failure
//! up to a cap and resets when a connection is established.

use crate::event::ConnId;
use crate::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First wait after a failed link.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between dial attempts. Every request to a peer whose link is backing off
/// fails at once, the failure detector's probes included, so this bounds how long a peer that
/// came back stays unused (hinted handoff waits for the detector): at 2 s, the hints for a node
/// back after 5 s started to flow up to 3.3 s after its return (`benches/hinted_handoff.sh`'s
/// node logs; 0.45-0.95 s at 500 ms). A dial to a dead peer is one refused or pending
/// non-blocking connect.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What to do with a frame for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Queue it on this connection (connected or still connecting).
    Via(ConnId),
    /// Open a connection first.
    Dial,
    /// The peer failed recently; fail the frame now.
    BackingOff,
}

#[derive(Debug, Default)]
struct Link {
    conn: Option<ConnId>,
    /// The address `conn` was dialled at: once the membership moves the peer elsewhere, the
    /// link is closed and redialled there.
    addr: Option<SocketAddr>,
    /// `conn` is being closed because the peer moved: its close is planned, not news.
    moved: bool,
    /// Whether `conn` completed its handshake (frames written to it may have been delivered;
    /// before, the intake holds them).
    established: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// A failure was reported since the last established link: the next ones are not news
    /// (a stopped peer is redialled every backoff, and each failed dial would warn).
    reported: bool,
    /// Why the peer last refused this node's handshake, until a link to it works: requests
    /// failed while the link backs off carry it (a quorum error read "peer n1 is unreachable"
    /// for a wrong cluster secret, which only the log explained).
    refused: Option<String>,
    /// The peer said it is stopping (a clean stop): its link's close and the failed redials
    /// while it is away are planned, not news to warn of. Cleared when a link works again.
    stopping: bool,
}

/// Outgoing links by peer.
#[derive(Debug, Default)]
pub struct PeerLinks {
    links: BTreeMap<NodeId, Link>,
    /// The peer of each outgoing connection.
    peers: BTreeMap<ConnId, NodeId>,
}

impl PeerLinks {
    /// Where a frame for `peer` goes now.
    pub fn route(&self, peer: &NodeId, now: Instant) -> Route {
        match self.links.get(peer) {
            Some(Link {
                conn: Some(conn), ..
            }) => Route::Via(*conn),
            Some(Link {
                retry_at: Some(at), ..
            }) if *at > now => Route::BackingOff,
            _ => Route::Dial,
        }
    }

    /// A connection to `peer` was opened at `addr` (it may still be connecting).
    pub fn opened(&mut self, peer: &NodeId, conn: ConnId, addr: SocketAddr) {
        let link = self.links.entry(peer.clone()).or_default();
        link.conn = Some(conn);
        link.addr = Some(addr);
        link.established = false;
        // The first dial at a moved peer's new address: its failure is news (the old link's
        // planned close was reported).
        if std::mem::take(&mut link.moved) {
            link.reported = false;
        }
        self.peers.insert(conn, peer.clone());
    }

    /// The peers last dialled at another address than `addr_of` gives them now (the
    /// membership moved them: `admin move`), as (open connection if any, peer, dialled
    /// address). A link to the old address would otherwise stay up while it works, and the
    /// peer become unreachable only once it breaks (a trial's move of a running node went
    /// unnoticed).
    pub fn dialled_elsewhere(
        &self,
        addr_of: impl Fn(&NodeId) -> Option<SocketAddr>,
    ) -> Vec<(Option<ConnId>, NodeId, SocketAddr)> {
        self.links
            .iter()
            .filter_map(|(peer, link)| {
                let dialled = link.addr?;
                let now = addr_of(peer)?;
                (now != dialled).then(|| (link.conn, peer.clone(), dialled))
            })
            .collect()
    }

    /// `peer` moved: its open link (if any) is being closed, and its new address is a fresh
    /// start. The first failure there is news again, whatever the peer said before it moved
    /// (a stopped peer's failed redials are quiet), so a move to a wrong address is warned
    /// of, naming it (a trial's peers said only "it said it stopped").
    pub fn moving(&mut self, peer: &NodeId) {
        let link = self.links.entry(peer.clone()).or_default();
        link.moved = link.conn.is_some();
        link.addr = None;
        link.reported = false;
        link.stopping = false;
    }

    /// Whether `peer`'s link was closed because it moved, and not dialled since.
    pub fn is_moving(&self, peer: &NodeId) -> bool {
        self.links.get(peer).is_some_and(|link| link.moved)
    }

    /// The connection proved usable: forget past failures.
    pub fn established(&mut self, conn: ConnId) {
        if let Some(link) = self
            .peers
            .get(&conn)
            .and_then(|peer| self.links.get_mut(peer))
        {
            link.backoff = Duration::ZERO;
            link.retry_at = None;
            link.established = true;
            link.reported = false;
            link.refused = None;
            link.stopping = false;
        }
    }

    /// `peer` said it is stopping.
    pub fn stopping(&mut self, peer: &NodeId) {
        self.links.entry(peer.clone()).or_default().stopping = true;
    }

    /// Whether `peer` said it is stopping and no link to it worked since.
    pub fn is_stopping(&self, peer: &NodeId) -> bool {
        self.links.get(peer).is_some_and(|link| link.stopping)
    }

    /// The outgoing connections whose handshake is done, with their peers.
    pub fn established_links(&self) -> Vec<(ConnId, NodeId)> {
        self.links
            .iter()
            .filter(|(_, link)| link.established)
            .filter_map(|(peer, link)| link.conn.map(|conn| (conn, peer.clone())))
            .collect()
    }

    /// Records why `peer` refused this node's handshake (`None`: it did not refuse; a hello
    /// went unanswered).
    pub fn set_refused(&mut self, peer: &NodeId, why: Option<String>) {
        self.links.entry(peer.clone()).or_default().refused = why;
    }

    /// Why `peer` last refused this node's handshake, while no link to it has worked since.
    pub fn refused(&self, peer: &NodeId) -> Option<String> {
        self.links.get(peer).and_then(|link| link.refused.clone())
    }

    /// Whether `conn` is the established link to its peer: if it breaks, requests written to
    /// it may have been delivered.
    pub fn is_established(&self, conn: ConnId) -> bool {
        self.peers
            .get(&conn)
            .and_then(|peer| self.links.get(peer))
            .is_some_and(|link| link.conn == Some(conn) && link.established)
    }

    /// The peer of an outgoing connection (`None` for client and incoming peer connections).
    pub fn peer_of(&self, conn: ConnId) -> Option<&NodeId> {
        self.peers.get(&conn)
    }

    /// A dial or connection to `peer` failed: back off before the next dial. Whether it is
    /// news to log: an established link broke, or the first failure since one last worked.
    pub fn failed(&mut self, peer: &NodeId, conn: Option<ConnId>, now: Instant) -> bool {
        if let Some(conn) = conn {
            self.peers.remove(&conn);
        }
        let link = self.links.entry(peer.clone()).or_default();
        let current = conn.is_none() || link.conn == conn;
        let broke = current && conn.is_some() && link.established;
        if current {
            link.conn = None;
            link.established = false;
        }
        if current && link.moved {
            // Closed because the peer moved: redialled at its new address at once, not after a
            // backoff that would fail every request to it meanwhile.
            link.retry_at = None;
        } else {
            link.backoff = (link.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
            link.retry_at = Some(now + link.backoff);
        }
        // A connection already replaced by a newer one says nothing of the peer now.
        let news = current && (broke || !link.reported);
        link.reported |= current;
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PeerLinks {
        fn opened_at_test_addr(&mut self, peer: &NodeId, conn: ConnId) {
            self.opened(peer, conn, SocketAddr::from(([127, 0, 0, 1], 2)));
        }
    }

    /// Goal: a failed peer is not redialled before its backoff, the backoff doubles up to its
    /// cap, and an established connection resets it.
    #[test]
    fn failures_back_off_exponentially_and_success_resets() {
        let mut links = PeerLinks::default();
        let peer = NodeId::new("n2");
        let start = Instant::now();
        assert_eq!(links.route(&peer, start), Route::Dial);
        links.opened_at_test_addr(&peer, ConnId(7));
        assert_eq!(links.route(&peer, start), Route::Via(ConnId(7)));
        assert_eq!(links.peer_of(ConnId(7)), Some(&peer));
        links.failed(&peer, Some(ConnId(7)), start);
        assert_eq!(links.route(&peer, start), Route::BackingOff);
        assert_eq!(links.route(&peer, start + BACKOFF_MIN), Route::Dial);
        for _ in 0..10 {
            links.failed(&peer, None, start);
        }
        assert_eq!(
            links.route(&peer, start + BACKOFF_MAX - Duration::from_millis(1)),
            Route::BackingOff
        );
        assert_eq!(links.route(&peer, start + BACKOFF_MAX), Route::Dial);
        links.opened_at_test_addr(&peer, ConnId(9));
        links.established(ConnId(9));
        assert!(
            links.failed(&peer, Some(ConnId(9)), start),
            "a working link broke"
        );
        assert_eq!(
            links.route(&peer, start + BACKOFF_MIN),
            Route::Dial,
            "backoff restarted from the minimum"
        );
    }

    /// Goal: a peer that stays unreachable is news once (its first failed dial), not at every
    /// redial; a link that worked and broke is news again.
    #[test]
    fn an_unreachable_peer_is_reported_once_until_a_link_works() {
        let mut links = PeerLinks::default();
        let peer = NodeId::new("n2");
        let now = Instant::now();
        links.opened_at_test_addr(&peer, ConnId(1));
        assert!(links.failed(&peer, Some(ConnId(1)), now));
        for conn in 2..10 {
            links.opened_at_test_addr(&peer, ConnId(conn));
            assert!(!links.failed(&peer, Some(ConnId(conn)), now), "dial {conn}");
        }
        assert!(!links.failed(&peer, None, now));
        links.opened_at_test_addr(&peer, ConnId(10));
        links.established(ConnId(10));
        assert!(links.failed(&peer, Some(ConnId(10)), now));
        links.opened_at_test_addr(&peer, ConnId(11));
        assert!(!links.failed(&peer, Some(ConnId(11)), now));
        // A stale connection failing while a newer link works is not news either.
        links.opened_at_test_addr(&peer, ConnId(12));
        links.established(ConnId(12));
        assert!(!links.failed(&peer, Some(ConnId(11)), now));
        assert_eq!(links.route(&peer, now), Route::Via(ConnId(12)));
    }

    /// Goal: a link dialled at an address the membership no longer gives its peer is found
    /// (to be closed and redialled there); one at the current address, and a peer the
    /// membership does not know, are not.
    #[test]
    fn a_link_to_a_moved_peers_old_address_is_found() {
        let mut links = PeerLinks::default();
        let (n2, n3) = (NodeId::new("n2"), NodeId::new("n3"));
        let old = SocketAddr::from(([127, 0, 0, 1], 2));
        let new = SocketAddr::from(([127, 0, 0, 1], 12));
        links.opened(&n2, ConnId(1), old);
        links.opened(&n3, ConnId(2), SocketAddr::from(([127, 0, 0, 1], 3)));
        let moved = |peer: &NodeId| match peer.as_str() {
            "n2" => Some(new),
            _ => None,
        };
        assert_eq!(
            links.dialled_elsewhere(moved),
            vec![(Some(ConnId(1)), n2.clone(), old)]
        );
        assert!(links
            .dialled_elsewhere(|_| Some(old))
            .iter()
            .all(|(_, p, _)| *p != n2));
        links.stopping(&n2);
        links.moving(&n2);
        assert!(links.is_moving(&n2) && !links.is_stopping(&n2));
        assert!(links.dialled_elsewhere(moved).is_empty(), "found once");
        assert!(
            links.failed(&n2, Some(ConnId(1)), Instant::now()),
            "its close is news"
        );
        assert_eq!(
            links.route(&n2, Instant::now()),
            Route::Dial,
            "redialled at once"
        );
        links.opened(&n2, ConnId(3), new);
        assert!(!links.is_moving(&n2));
        assert!(links.dialled_elsewhere(moved).is_empty());
        // A failure at the new address is news too (the first since the move), a second not.
        assert!(links.failed(&n2, Some(ConnId(3)), Instant::now()));
        links.opened(&n2, ConnId(4), new);
        assert!(!links.failed(&n2, Some(ConnId(4)), Instant::now()));
    }
}
