//! How many connections the intake holds, by kind, as its machine last published them: read
//! by the metrics (`shoal_connections`) on their own thread, written by the machine once a
//! tick (never per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Open connections by kind. Cheap to clone: every clone shares the counts.
#[derive(Clone, Debug, Default)]
pub struct ConnectionBoard(Arc<[AtomicU64; 2]>);

impl ConnectionBoard {
    /// Client connections (a peer's incoming connection before its handshake completes
    /// counts here too).
    pub fn clients(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }

    /// Connections to and from other nodes: this node's links to its peers and the peers'
    /// links to it that completed the handshake.
    pub fn peers(&self) -> u64 {
        self.0[1].load(Ordering::Relaxed)
    }

    pub(super) fn publish(&self, clients: u64, peers: u64) {
        self.0[0].store(clients, Ordering::Relaxed);
        self.0[1].store(peers, Ordering::Relaxed);
    }
}
