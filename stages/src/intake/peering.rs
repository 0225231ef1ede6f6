//! The intake's node-to-node side (SPEC §11, Dynamo §4.6).
//!
//! DRIVER SIDE: the links this node opens to its peers, dialled on first use with a
//! `PeerHello` as their first frame, redialled after backoff, and reported to the replication
//! stage when they fail. RECEIVER SIDE: checking a peer's hello on an incoming connection
//! before anything it sends as a peer is acted on. A child of `intake`, so it works on the
//! loop's private state.

use super::*;

impl Intake {
    /// Queues a frame for a peer, dialling it if no link exists; returns the connection to
    /// flush, if any.
    pub(super) fn send_to_peer(&mut self, peer: NodeId, frame: &[u8]) -> Option<ConnId> {
        let now = Instant::now();
        match self.links.route(&peer, now) {
            Route::Via(conn) => {
                self.enqueue(conn, frame);
                Some(conn)
            }
            Route::BackingOff => {
                self.report_failed(peer);
                None
            }
            Route::Dial => {
                let conn = self.dial(&peer, now)?;
                self.enqueue(conn, frame);
                Some(conn)
            }
        }
    }

    /// Starts a non-blocking connect to a peer. Failure is reported at once.
    pub(super) fn dial(&mut self, peer: &NodeId, now: Instant) -> Option<ConnId> {
        let Some(addr) = self.membership.current().addr_of(peer) else {
            warn!(self.logger, "no address for peer"; "peer" => %peer);
            self.links.failed(peer, None, now);
            self.report_failed(peer.clone());
            return None;
        };
        let registered = TcpStream::connect(addr).and_then(|mut stream| {
            let conn = self.next_conn;
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.socket
                .poll
                .registry()
                .register(&mut stream, Token(conn as usize), interest)?;
            Ok((conn, stream))
        });
        match registered {
            Ok((conn, stream)) => {
                self.next_conn += 1;
                let _ = stream.set_nodelay(true);
                self.connections.insert(
                    conn,
                    Connection::new(stream, self.settings.max_frame_bytes, true),
                );
                // The hello goes first on the link, ahead of any request.
                let hello = self.hello();
                self.enqueue(conn, &hello);
                self.links.opened(peer, conn);
                debug!(self.logger, "dialling peer"; "peer" => %peer, "addr" => %addr, "conn" => conn);
                Some(conn)
            }
            Err(e) => {
                warn!(self.logger, "cannot dial peer"; "peer" => %peer, "error" => %e);
                self.links.failed(peer, None, now);
                self.report_failed(peer.clone());
                None
            }
        }
    }

    /// This node's `PeerHello`, signed now.
    pub(super) fn hello(&self) -> Vec<u8> {
        let timestamp_ms = crate::coordinate::wall_clock_ms();
        let mac = self
            .seal
            .sign(&PeerHello::signed_bytes(&self.node, timestamp_ms));
        let hello = Message::PeerHello(PeerHello {
            node: self.node.clone(),
            timestamp_ms,
            mac: Bytes::from(mac),
        });
        hello.encode(0).unwrap_or_default()
    }

    /// RECEIVER SIDE: checks a peer's hello; a valid one marks the connection as that peer's,
    /// an invalid one is answered `Unauthorized` and the connection closed.
    pub(super) fn accept_hello(&mut self, conn: ConnId, frame: &Frame) {
        let verdict = match Message::decode(frame) {
            Ok(Message::PeerHello(hello)) => self.check_hello(&hello).map(|()| hello.node),
            _ => Err("malformed hello".to_string()),
        };
        match verdict {
            Ok(peer) => {
                debug!(self.logger, "peer authenticated"; "conn" => conn, "peer" => %peer);
                if let Some(connection) = self.connections.get_mut(&conn) {
                    connection.authenticated = Some(peer);
                }
            }
            Err(reason) => {
                warn!(self.logger, "refusing peer hello"; "conn" => conn, "reason" => %reason);
                let origin = Origin {
                    conn,
                    request_id: frame.request_id,
                };
                if let IntakeEvent::Send { frame, .. } = IntakeEvent::reply(
                    origin,
                    &Message::Error(ServiceError::Unauthorized { reason }),
                ) {
                    self.enqueue(conn, &frame);
                }
                if let Some(connection) = self.connections.get_mut(&conn) {
                    connection.closing = true;
                }
            }
        }
    }

    pub(super) fn check_hello(&self, hello: &PeerHello) -> Result<(), String> {
        if self.membership.current().member(&hello.node).is_none() {
            return Err(format!("{} is not a member", hello.node));
        }
        let now_ms = crate::coordinate::wall_clock_ms();
        if now_ms.abs_diff(hello.timestamp_ms) > HELLO_WINDOW_MS {
            return Err(
                "hello timestamp outside the accepted window (clocks apart, or a replay)".into(),
            );
        }
        if !self.seal.verify(
            &PeerHello::signed_bytes(&hello.node, hello.timestamp_ms),
            &hello.mac,
        ) {
            return Err("hello not signed with this cluster's secret".into());
        }
        Ok(())
    }

    /// For a connection still connecting: whether it is usable or still pending (true), or
    /// failed (false, to be closed).
    pub(super) fn finish_connect(&mut self, conn: ConnId) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return false;
        };
        if !connection.connecting {
            return true;
        }
        if let Ok(Some(_)) | Err(_) = connection.stream.take_error() {
            return false;
        }
        match connection.stream.peer_addr() {
            Ok(_) => {
                connection.connecting = false;
                self.links.established(conn);
                true
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => true,
            Err(_) => false,
        }
    }

    /// Tells the replication stage a peer failed. try_send: the intake never blocks; if the
    /// queue is full the operations fail at their deadline instead.
    pub(super) fn report_failed(&self, peer: NodeId) {
        let _ = self.replicate.try_send(ReplicateEvent::PeerFailed { peer });
    }
}
