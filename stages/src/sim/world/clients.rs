//! The world's side of the clients: connecting them to a live node, sending their requests
//! as frames, and handing them the replies.

use super::*;

/// A client's pause between tasks, at most (µs).
const THINK_US: u64 = 20_000;

impl World {
    /// Connects the client if it has no connection, then starts its next task.
    pub(super) fn client_start(&mut self, client: usize) {
        if self.clients[client].link.is_none() && !self.connect_client(client) {
            return self.sched.after(50_000, Job::ClientStart { client });
        }
        let working = self.working;
        let time = self.sched.time;
        let sim = &mut self.clients[client];
        if let Some((request_id, message)) =
            sim.client
                .start(working, time, &mut self.sched.rng, &mut self.history)
        {
            self.client_send(client, request_id, &message);
        }
    }

    /// Opens a connection from the client to a random running node.
    fn connect_client(&mut self, client: usize) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].machines.is_some())
            .collect();
        if live.is_empty() {
            return false;
        }
        let node = live[self.sched.rng.index(live.len())];
        let incarnation = self.nodes[node].incarnation;
        let Some(conn) = self.nodes[node]
            .machines
            .as_mut()
            .and_then(|m| m.intake.accept())
        else {
            return false;
        };
        let time = self.sched.time;
        let link = self.net.open(
            End::Client { client },
            End::Node {
                node,
                incarnation,
                conn,
            },
            time,
        );
        let sim = &mut self.clients[client];
        sim.link = Some(link);
        sim.decoder = FrameDecoder::new(4 << 20);
        true
    }

    fn client_send(&mut self, client: usize, request_id: u64, message: &Message) {
        let Some(link) = self.clients[client].link else {
            return;
        };
        self.record(format!(
            "{:>10} client {client} request {request_id}: {message} {}",
            self.sched.time,
            key_of(message)
        ));
        match message.encode(request_id) {
            Ok(frame) => self.transmit(link, End::Client { client }, frame),
            Err(error) => self.history.violation(
                checker::ONE_REPLY,
                format!("client {client} could not encode its request: {error}"),
            ),
        }
    }

    /// A frame for a client: a reply to its request.
    pub(super) fn client_frame(&mut self, client: usize, bytes: &[u8]) {
        let sim = &mut self.clients[client];
        sim.decoder.extend(bytes);
        let frame = match sim.decoder.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                return self.history.violation(
                    checker::ONE_REPLY,
                    format!("client {client} got an unreadable frame: {error}"),
                )
            }
        };
        let message = match Message::decode(&frame) {
            Ok(message) => message,
            Err(error) => {
                return self.history.violation(
                    checker::ONE_REPLY,
                    format!("client {client} got an undecodable reply: {error}"),
                )
            }
        };
        if matches!(message, Message::Error(_)) {
            self.requests_failed += 1;
        } else {
            self.requests_ok += 1;
        }
        self.record(format!(
            "{:>10} client {client} reply {} to request {}",
            self.sched.time, message, frame.request_id
        ));
        let time = self.sched.time;
        let next = self.clients[client].client.on_reply(
            frame.request_id,
            message,
            time,
            &mut self.history,
        );
        match next {
            Some((request_id, message)) => self.client_send(client, request_id, &message),
            None => {
                let think = self.sched.rng.range(0, THINK_US);
                self.sched.after(think, Job::ClientStart { client });
            }
        }
    }

    /// A request unanswered past the client's patience breaks "exactly one reply"; the client
    /// drops the connection (so a late reply is not counted again) and goes on.
    pub(super) fn check_patience(&mut self) {
        let time = self.sched.time;
        for client in 0..self.clients.len() {
            let Some((request_id, sent_at)) = self.clients[client].client.outstanding else {
                continue;
            };
            if time.saturating_sub(sent_at) < PATIENCE_US {
                continue;
            }
            self.history.violation(
                checker::ONE_REPLY,
                format!(
                    "client {client}'s request {request_id} got no reply in {} ms",
                    PATIENCE_US / 1000
                ),
            );
            if let Some(link) = self.clients[client].link {
                self.sched.after(0, Job::Closed { link });
            }
        }
    }
}

/// The key a client request names, for the trace.
fn key_of(message: &Message) -> String {
    let key = match message {
        Message::Get(get) => &get.key,
        Message::Put(put) => &put.key,
        Message::Delete(delete) => &delete.key,
        _ => return String::new(),
    };
    String::from_utf8_lossy(key).into_owned()
}
