//! The simulated network as the nodes use it: their socket commands carried out, frames
//! transmitted over links that may reset (a loss), delay, reorder or duplicate them, or lose
//! them across a partition (`idempotent` says which may be duplicated), dials, and closed links.

use super::*;

/// How long a dial across a partition hangs before it fails.
const CONNECT_TIMEOUT_US: u64 = 1_000_000;

/// Percent of node-to-node frames the drop, duplicate, reorder and delay faults touch.
const DROP_PERCENT: u64 = 2;
const DUPLICATE_PERCENT: u64 = 2;
const REORDER_PERCENT: u64 = 5;
const DELAY_PERCENT: u64 = 3;

impl World {
    /// Tells the node's intake that `conn` closed, if the node is still the incarnation that
    /// opened it.
    pub(super) fn conn_closed(&mut self, node: usize, incarnation: u32, conn: ConnId) {
        if self.current(node, incarnation) {
            self.with_machines(node, |machines, now, post| machines.closed(now, conn, post));
        }
    }

    /// Carries out a node's socket command on the simulated network.
    pub(super) fn socket(&mut self, node: usize, command: SocketCommand) {
        match command {
            SocketCommand::Write { conn, frame } => {
                if let Some(link) = self.net.by_conn.get(&(node, conn)).copied() {
                    self.transmit(
                        link,
                        End::Node {
                            node,
                            incarnation: self.nodes[node].incarnation,
                            conn,
                        },
                        frame,
                    );
                }
            }
            SocketCommand::Dial { conn, addr, .. } => self.dial(node, conn, addr),
            SocketCommand::Close { conn } => {
                if let Some(link) = self.net.by_conn.get(&(node, conn)).copied() {
                    // After what this end already sent.
                    let at = self
                        .net
                        .links
                        .get(&link)
                        .map_or(0, |l| l.last_at.iter().copied().max().unwrap_or(0));
                    self.sched.at(at + 1, Job::Closed { link });
                }
            }
            SocketCommand::Abort { conn } => {
                if let Some(link) = self.net.by_conn.get(&(node, conn)).copied() {
                    self.sched.after(0, Job::Closed { link });
                }
            }
            // The simulated clients ask for neither; an empty answer keeps one reply per
            // request if one ever does.
            SocketCommand::Stats { origin }
            | SocketCommand::Throttle { origin, .. }
            | SocketCommand::Aae { origin } => {
                let reply = Message::StatsReply(StatsReply {
                    node: self.nodes[node].id.clone(),
                    stages: Vec::new(),
                    operations: Vec::new(),
                    controller: Default::default(),
                    background: Vec::new(),
                    storage_failure: self.nodes[node].engine.failure(),
                });
                let frame = encode_reply(origin.request_id, &reply);
                self.socket(
                    node,
                    SocketCommand::Write {
                        conn: origin.conn,
                        frame,
                    },
                );
            }
        }
    }

    /// Sends a frame from end `from` of a link: lost across a partition, and touched by the
    /// message faults between nodes; FIFO per direction unless reordered.
    pub(super) fn transmit(&mut self, link_id: u64, from: End, frame: Vec<u8>) {
        let noisy = self.noisy;
        let Some(link) = self.net.links.get(&link_id) else {
            return;
        };
        if !link.open {
            return;
        }
        let Some(side) = link.ends.iter().position(|e| *e == from) else {
            return;
        };
        let (a, b) = (link.ends[side].node(), link.ends[1 - side].node());
        if !self.net.reachable(a, b) {
            return;
        }
        let between_nodes = a.is_some() && b.is_some();
        let rng = &mut self.sched.rng;
        if between_nodes && noisy && self.faults.drop && rng.percent(DROP_PERCENT) {
            // TCP loses no frame inside a connection: a loss it cannot recover from resets
            // the connection, and whatever was in flight on it is lost with it.
            let latency = rng.range(30, 300);
            return self.sched.after(latency, Job::Closed { link: link_id });
        }
        let mut latency = rng.range(30, 300);
        if between_nodes && noisy && self.faults.delay && rng.percent(DELAY_PERCENT) {
            latency += rng.range(10_000, 400_000);
        }
        let reorder = between_nodes && noisy && self.faults.reorder && rng.percent(REORDER_PERCENT);
        let duplicate = between_nodes
            && noisy
            && self.faults.duplicate
            && idempotent(&frame)
            && rng.percent(DUPLICATE_PERCENT);
        let again = rng.range(1, 2_000);
        let mut at = self.sched.time + latency;
        if let Some(link) = self.net.links.get_mut(&link_id) {
            // A reordered frame may overtake others, but never a handshake frame: the proof
            // must arrive before the requests it makes acceptable, as TCP would deliver them.
            let handshake = is_handshake(&frame);
            if reorder && !handshake {
                at = at.max(link.barrier_at[side]);
            } else {
                at = at.max(link.last_at[side]);
                link.last_at[side] = at;
            }
            if handshake {
                link.barrier_at[side] = at;
            }
        }
        let to = 1 - side;
        if duplicate {
            self.sched.at(
                at + again,
                Job::Frame {
                    link: link_id,
                    to,
                    frame: frame.clone(),
                },
            );
        }
        self.sched.at(
            at,
            Job::Frame {
                link: link_id,
                to,
                frame,
            },
        );
    }

    fn dial(&mut self, node: usize, conn: ConnId, addr: SocketAddr) {
        let incarnation = self.nodes[node].incarnation;
        let latency = self.sched.rng.range(50, 500);
        let failed = Job::DialFailed {
            node,
            incarnation,
            conn,
        };
        let Some(&target) = self.addrs.get(&addr) else {
            return self.sched.after(latency, failed);
        };
        if !self.net.reachable(Some(node), Some(target)) {
            return self.sched.after(CONNECT_TIMEOUT_US, failed);
        }
        let target_incarnation = self.nodes[target].incarnation;
        let accepted = self.nodes[target]
            .machines
            .as_mut()
            .and_then(|m| m.intake.accept());
        let Some(target_conn) = accepted else {
            return self.sched.after(latency, failed); // refused: down, or at its limit
        };
        let ready = self.sched.time + latency;
        self.net.open(
            End::Node {
                node,
                incarnation,
                conn,
            },
            End::Node {
                node: target,
                incarnation: target_incarnation,
                conn: target_conn,
            },
            ready,
        );
    }

    pub(super) fn frame(&mut self, link: u64, to: usize, frame: Vec<u8>) {
        let Some(end) = self
            .net
            .links
            .get(&link)
            .filter(|l| l.open)
            .map(|l| l.ends[to])
        else {
            return;
        };
        match end {
            End::Node {
                node,
                incarnation,
                conn,
            } => {
                if !self.current(node, incarnation) {
                    return;
                }
                let paused_until = self.nodes[node].paused_until;
                if paused_until > self.sched.time {
                    return self.sched.at(paused_until, Job::Frame { link, to, frame });
                }
                self.record(format!(
                    "{:>10} n{} intake     {} B on conn {conn}",
                    self.sched.time,
                    node + 1,
                    frame.len()
                ));
                self.with_machines(node, |machines, now, post| {
                    machines.received(now, conn, &frame, post)
                });
            }
            End::Client { client } => self.client_frame(client, &frame),
        }
    }

    pub(super) fn closed(&mut self, link: u64) {
        let Some(ends) = self.net.close(link) else {
            return;
        };
        for end in ends {
            match end {
                End::Node {
                    node,
                    incarnation,
                    conn,
                } => self.conn_closed(node, incarnation, conn),
                End::Client { client } => {
                    self.clients[client].link = None;
                    self.clients[client].client.on_closed();
                    self.sched.after(10_000, Job::ClientStart { client });
                }
            }
        }
    }
}

/// Whether a frame may be duplicated by the network fault. TCP never duplicates; what
/// duplicates in practice are retries, and a retried (forwarded) put completes before its
/// client hears "ok". A put delivered again *after* its acknowledgement would rightly appear
/// as a new sibling later, which is not a behaviour of the real system, so puts and deletes
/// are not duplicated, nor are the handshake's frames (each is valid once per connection);
/// replica reads and writes (idempotent merges), pings and every reply are.
fn idempotent(frame: &[u8]) -> bool {
    !matches!(frame_kind(frame), Some(kind::PUT | kind::DELETE)) && !is_handshake(frame)
}

/// Whether a frame is one of the peer handshake's.
fn is_handshake(frame: &[u8]) -> bool {
    matches!(
        frame_kind(frame),
        Some(kind::PEER_HELLO | kind::PEER_CHALLENGE | kind::PEER_PROOF)
    )
}

fn frame_kind(frame: &[u8]) -> Option<u16> {
    encoded_header(frame).map(|(kind, _)| kind)
}
