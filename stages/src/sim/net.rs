//! The simulated network: connections between two ends (a node's intake connection, or a
//! client), each direction FIFO like TCP unless the reorder fault lets a frame overtake; a
//! partition splits the nodes in two groups whose frames are lost between them.

use crate::event::ConnId;
use std::collections::{BTreeMap, BTreeSet};

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// A node's intake connection, in one incarnation of the node.
    Node {
        node: usize,
        incarnation: u32,
        conn: ConnId,
    },
    /// A simulated client.
    Client { client: usize },
}

impl End {
    /// The node this end is on (a client is on no node).
    pub fn node(&self) -> Option<usize> {
        match self {
            End::Node { node, .. } => Some(*node),
            End::Client { .. } => None,
        }
    }
}

/// A connection.
#[derive(Clone, Debug)]
pub struct Link {
    /// The two ends; `ends[0]` opened it.
    pub ends: [End; 2],
    /// When the last frame in each direction (from `ends[i]`) arrives, so the next arrives
    /// after it.
    pub last_at: [u64; 2],
    /// When the last handshake frame in each direction arrives (nothing may overtake it).
    pub barrier_at: [u64; 2],
    /// Closed links carry nothing more.
    pub open: bool,
}

/// Every connection, and the partition.
#[derive(Default)]
pub struct Network {
    pub links: BTreeMap<u64, Link>,
    next_link: u64,
    /// A node's connection → its link.
    pub by_conn: BTreeMap<(usize, ConnId), u64>,
    /// One side of the partition (the other side is every other node); `None`: no partition.
    pub partition: Option<BTreeSet<usize>>,
}

impl Network {
    /// Opens a link between two ends, ready to carry frames from `ready_at`.
    pub fn open(&mut self, a: End, b: End, ready_at: u64) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        for end in [a, b] {
            if let End::Node { node, conn, .. } = end {
                self.by_conn.insert((node, conn), id);
            }
        }
        self.links.insert(
            id,
            Link {
                ends: [a, b],
                last_at: [ready_at; 2],
                barrier_at: [ready_at; 2],
                open: true,
            },
        );
        id
    }

    /// Whether frames pass between two nodes (clients sit with their node: always).
    pub fn reachable(&self, a: Option<usize>, b: Option<usize>) -> bool {
        match (&self.partition, a, b) {
            (Some(side), Some(a), Some(b)) => side.contains(&a) == side.contains(&b),
            _ => true,
        }
    }

    /// Closes a link; returns its ends (if it was open).
    pub fn close(&mut self, id: u64) -> Option<[End; 2]> {
        let link = self.links.get_mut(&id)?;
        if !link.open {
            return None;
        }
        link.open = false;
        let ends = link.ends;
        for end in ends {
            if let End::Node { node, conn, .. } = end {
                self.by_conn.remove(&(node, conn));
            }
        }
        Some(ends)
    }

    /// Forgets closed links (their frames in flight are dropped on arrival).
    pub fn sweep(&mut self) {
        self.links.retain(|_, link| link.open);
    }

    /// Every open link with an end on `node`.
    pub fn links_of(&self, node: usize) -> Vec<u64> {
        self.links
            .iter()
            .filter(|(_, link)| link.open && link.ends.iter().any(|e| e.node() == Some(node)))
            .map(|(id, _)| *id)
            .collect()
    }
}
