//! The lingering close: a connection the node closes after answering (a refused frame, a
//! wrong token, a refused handshake) is shut for writing and read, its
//! input thrown away, until the peer closes too, it fails, or a bound is reached; only then is
//! the socket dropped.
//!
//! Why: closing a socket whose input is unread resets the stream, and a reset fails the
//! peer's send, often before the peer has read the answer that says why (an 8 MB put over the
//! frame limit got "connection reset by peer" rather than FrameTooLarge). HTTP servers do the
//! same (nginx's `lingering_close`).

use super::READS_PER_TURN;
use crate::event::ConnId;
use mio::net::TcpStream;
use mio::Registry;
use slog::{debug, Logger};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// How long a closed connection is read before it is dropped, whatever it still sends.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Input a closed connection may have thrown away before it is dropped anyway: a peer that
/// keeps sending is not read for ever.
pub const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Connections lingering at once; beyond this a closed connection is dropped at once, so a
/// flood of refused connections cannot hold descriptors the clients need.
pub const MAX_LINGERING_SOCKETS: usize = 64;

/// Bytes of one read of a lingering connection; with `READS_PER_TURN`, what one loop turn may
/// spend on it (256 KiB), so a client that keeps sending cannot hold the loop.
const DISCARD_CHUNK_BYTES: usize = 16 * 1024;

/// One closed connection still being read.
struct Lingering {
    stream: TcpStream,
    /// Dropped then.
    until: Instant,
    /// Bytes read and thrown away so far.
    discarded: usize,
}

/// The loop's lingering connections. They keep their poll token (connection ids are never
/// reused), so a readable edge of one reaches [`Linger::drain`]; the machine has forgotten them.
pub(super) struct Linger {
    open: BTreeMap<ConnId, Lingering>,
    /// Lingering connections whose last drain stopped at the turn's read bound: no new edge
    /// will come for what they already hold, so the next turn drains them again.
    ready: BTreeSet<ConnId>,
    discard: Box<[u8]>,
    logger: Logger,
}

impl Linger {
    pub fn new(logger: Logger) -> Linger {
        Linger {
            open: BTreeMap::new(),
            ready: BTreeSet::new(),
            discard: vec![0; DISCARD_CHUNK_BYTES].into_boxed_slice(),
            logger,
        }
    }

    /// Whether `conn` is lingering.
    pub fn has(&self, conn: ConnId) -> bool {
        self.open.contains_key(&conn)
    }

    /// Whether a lingering connection stopped at a turn's read bound and must be drained again
    /// without waiting for the poll (expiry is the tick's, at most `POLL_TIMEOUT` late).
    pub fn busy(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether any connection is lingering.
    pub fn lingering(&self) -> bool {
        !self.open.is_empty()
    }

    /// Starts `conn`'s lingering close (its output all written); gives the stream back when
    /// it cannot linger (too many do, or the shutdown failed), to be dropped at once.
    pub fn start(
        &mut self,
        conn: ConnId,
        stream: TcpStream,
        now: Instant,
        registry: &Registry,
    ) -> Result<(), TcpStream> {
        if self.open.len() >= MAX_LINGERING_SOCKETS || stream.shutdown(Shutdown::Write).is_err() {
            return Err(stream);
        }
        debug!(self.logger, "connection closed, lingering to discard its input"; "conn" => conn.0);
        let lingering = Lingering {
            stream,
            until: now + LINGER_TIMEOUT,
            discarded: 0,
        };
        self.open.insert(conn, lingering);
        // What arrived before the close raised its edge already: read it now.
        self.drain(conn, registry);
        Ok(())
    }

    /// Reads and throws away what `conn` has, up to the turn's read bound; drops it once its
    /// peer closed, it failed, or it sent more than [`LINGER_MAX_BYTES`].
    pub fn drain(&mut self, conn: ConnId, registry: &Registry) {
        self.ready.remove(&conn);
        let Some(lingering) = self.open.get_mut(&conn) else {
            return;
        };
        for _ in 0..READS_PER_TURN {
            match lingering.stream.read(&mut self.discard) {
                Ok(0) => return self.drop(conn, registry),
                Ok(n) => {
                    lingering.discarded += n;
                    if lingering.discarded > LINGER_MAX_BYTES {
                        return self.drop(conn, registry);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.drop(conn, registry),
            }
        }
        self.ready.insert(conn);
    }

    /// A loop turn's share: drains again the connections left at the read bound.
    pub fn drain_ready(&mut self, registry: &Registry) {
        for conn in std::mem::take(&mut self.ready) {
            self.drain(conn, registry);
        }
    }

    /// Drops the connections whose time is up (the loop's tick, every `POLL_TIMEOUT`).
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let expired: Vec<ConnId> = self
            .open
            .iter()
            .filter(|(_, lingering)| lingering.until <= now)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in expired {
            self.drop(conn, registry);
        }
    }

    fn drop(&mut self, conn: ConnId, registry: &Registry) {
        self.ready.remove(&conn);
        if let Some(mut lingering) = self.open.remove(&conn) {
            let _ = registry.deregister(&mut lingering.stream);
            debug!(self.logger, "lingering connection dropped"; "conn" => conn.0, "discarded_bytes" => lingering.discarded);
        }
    }
}
