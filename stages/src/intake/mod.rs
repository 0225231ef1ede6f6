//! The network intake stage: one mio event loop (one thread) that owns every socket.
//!
//! It accepts connections, reads bytes and splits them into frames (checking each frame's
//! declared length before buffering it), and hands each frame to the parse stage with
//! `try_send`; when parse's queue is full the frame is answered `Overloaded` on the spot. Other
//! stages send replies through the intake's own queue and wake the loop with a `mio::Waker`.
//!
//! Bounds: at most `max_connections` sockets; per connection, at most one maximal frame plus one
//! read of input buffered and at most `max_write_buffer_bytes` of unsent output (a client that
//! never reads is disconnected rather than allowed to grow the buffer).

mod peering;
mod peers;

use crate::coordinate::OperationLatencies;
use crate::coordinate::Origin;
use crate::error::ServiceError;
use crate::membership::MembershipView;
use crate::parse::ParseEvent;
use crate::replicate::ReplicateEvent;
use crate::seda::StageSnapshot;
use crate::seda::{SendError, StageReceiver, StageSender, Wake};
use crate::wire::StatsReply;
use crate::wire::{kind, Bytes, ContextSeal, Frame, FrameDecoder, FrameError, Message, PeerHello};
use crate::NodeId;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use peers::{PeerLinks, Route};
use slog::{debug, info, warn, Logger};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies a client connection for the life of the node (never reused).
pub type ConnId = u64;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids start here so they never collide with the two fixed tokens.
const FIRST_CONN: ConnId = 2;
/// Bytes read from a socket per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest the loop sleeps before re-checking its stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How far a peer's hello timestamp may be from this node's clock. It bounds replays of a
/// recorded hello; clocks of a cluster's nodes are assumed within this of each other.
const HELLO_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Socket events handled per `poll` call.
const EVENTS_PER_POLL: usize = 1024;
/// Reads from one connection per turn of the loop. A client that sends faster than the loop
/// drains would otherwise never yield `WouldBlock` and starve every other socket and the
/// outgoing queue; past this it waits for the next turn.
const READS_PER_TURN: usize = 16;
/// A connection's output buffer is released once flushed if it grew beyond this, so one large
/// reply does not pin its peak size for the life of the connection.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// Reads the live statistics of every stage of the node.
pub type StageProbe = Arc<dyn Fn() -> StageSnapshot + Send + Sync>;

/// What a stats reply is assembled from.
#[derive(Clone)]
pub struct StatsSource {
    /// This node.
    pub node: NodeId,
    /// One probe per stage, in pipeline order.
    pub stages: Vec<StageProbe>,
    /// Client operation latencies.
    pub latencies: OperationLatencies,
}

impl StatsSource {
    /// The node's statistics now.
    pub fn snapshot(&self) -> StatsReply {
        StatsReply {
            node: self.node.clone(),
            stages: self.stages.iter().map(|probe| probe()).collect(),
            operations: self.latencies.snapshot(),
        }
    }
}

/// Replies and commands for the intake loop.
#[derive(Debug)]
pub enum IntakeEvent {
    /// Write an encoded frame to a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// A complete encoded frame.
        frame: Vec<u8>,
    },
    /// Write an encoded frame to a peer, over the connection this node keeps to it (opened
    /// on first use).
    ToPeer {
        /// The peer.
        peer: NodeId,
        /// A complete encoded frame.
        frame: Vec<u8>,
    },
}

impl IntakeEvent {
    /// A reply to a request, encoded. If the reply cannot be encoded (a bug), the client gets
    /// an error frame naming the failure instead of silence.
    pub fn reply(origin: Origin, message: &Message) -> IntakeEvent {
        let frame = message.encode(origin.request_id).unwrap_or_else(|e| {
            let error = ServiceError::MalformedFrame {
                reason: format!("reply not encodable: {e}"),
            };
            Message::Error(error)
                .encode(origin.request_id)
                .unwrap_or_default()
        });
        IntakeEvent::Send {
            conn: origin.conn,
            frame,
        }
    }
}

impl fmt::Display for IntakeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntakeEvent::Send { conn, frame } => write!(f, "send {} B to conn {conn}", frame.len()),
            IntakeEvent::ToPeer { peer, frame } => {
                write!(f, "send {} B to peer {peer}", frame.len())
            }
        }
    }
}

/// Limits of the intake.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// Largest frame accepted (bytes after the length prefix).
    pub max_frame_bytes: usize,
    /// Most open client connections; further ones are closed at once.
    pub max_connections: usize,
    /// Most unsent reply bytes per connection before it is dropped as a slow reader.
    pub max_write_buffer_bytes: usize,
    /// Longest a connection may take to complete a frame it started: a client that trickles
    /// a frame (or stops half-way) would otherwise hold a connection slot and its buffer for
    /// ever (slowloris).
    pub frame_timeout: Duration,
}

/// Wakes the intake loop from other threads.
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) {
        // A failed wake only delays delivery until the next poll timeout.
        let _ = self.0.wake();
    }
}

/// The poller and listener, created before the intake's queue so that the queue can wake it.
pub struct IntakeSocket {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<MioWake>,
    local_addr: SocketAddr,
}

impl IntakeSocket {
    /// Binds the listening socket.
    pub fn bind(addr: SocketAddr) -> io::Result<IntakeSocket> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(MioWake(Waker::new(poll.registry(), WAKER)?));
        let local_addr = listener.local_addr()?;
        Ok(IntakeSocket {
            poll,
            listener,
            waker,
            local_addr,
        })
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The waker to give the intake's queue.
    pub fn waker(&self) -> Arc<dyn Wake> {
        Arc::clone(&self.waker) as Arc<dyn Wake>
    }
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    decoder: FrameDecoder,
    /// Encoded frames not yet written; `written` bytes of its front are already sent.
    outgoing: Vec<u8>,
    written: usize,
    /// Close once `outgoing` is flushed (after a fatal frame error).
    closing: bool,
    /// Unsent output exceeded `max_write_buffer_bytes`: a slow reader, dropped at next flush.
    overflowed: bool,
    /// An outgoing peer connection whose connect has not completed: output waits.
    connecting: bool,
    /// When the incomplete frame now buffered began arriving (`None`: nothing partial).
    frame_started: Option<Instant>,
    /// The peer this incoming connection proved to be with a valid `PeerHello` (SPEC §11);
    /// `None` for clients. Peer-only requests are served only when set.
    authenticated: Option<NodeId>,
}

/// Where the intake sends what it reads, and what it consults.
pub struct IntakeRoutes {
    /// Every frame read goes to parse.
    pub parse: StageSender<ParseEvent>,
    /// Told when a peer link fails.
    pub replicate: StageSender<ReplicateEvent>,
    /// Where peers listen.
    pub membership: MembershipView,
    /// Answers `Stats` without entering the pipeline.
    pub stats: StatsSource,
    /// This node (named in the hello it sends on the links it opens).
    pub node: NodeId,
    /// The cluster key: signs this node's hellos, checks its peers'.
    pub seal: ContextSeal,
}

impl Connection {
    /// A connection with empty buffers; `connecting` for an outgoing dial not yet completed.
    fn new(stream: TcpStream, max_frame_bytes: usize, connecting: bool) -> Connection {
        Connection {
            stream,
            decoder: FrameDecoder::new(max_frame_bytes),
            outgoing: Vec::new(),
            written: 0,
            closing: false,
            overflowed: false,
            connecting,
            frame_started: None,
            authenticated: None,
        }
    }
}

/// The running intake loop.
pub struct Intake {
    socket: IntakeSocket,
    settings: IntakeSettings,
    receiver: StageReceiver<IntakeEvent>,
    parse: StageSender<ParseEvent>,
    connections: HashMap<ConnId, Connection>,
    next_conn: ConnId,
    stop: Arc<AtomicBool>,
    logger: Logger,
    scratch: Vec<u8>,
    /// Connections that used their read turn without draining the socket; serviced again on
    /// the next turn (edge-triggered readiness will not report them again).
    ready: BTreeSet<ConnId>,
    /// Answers `Stats` here, outside the request pipeline, so an overloaded node can be seen.
    stats: StatsSource,
    /// When partial frames are next checked against the frame timeout.
    next_stall_check: Instant,
    /// Outgoing connections to peers, by peer.
    links: PeerLinks,
    /// Where peers listen.
    membership: MembershipView,
    /// Told when a peer link fails, so operations on it fail at once.
    replicate: StageSender<ReplicateEvent>,
    /// This node, for its hellos.
    node: NodeId,
    /// The cluster key.
    seal: ContextSeal,
}

impl Intake {
    /// An intake over `socket`, feeding `parse`, draining `receiver`.
    pub fn new(
        socket: IntakeSocket,
        settings: IntakeSettings,
        receiver: StageReceiver<IntakeEvent>,
        routes: IntakeRoutes,
        stop: Arc<AtomicBool>,
        logger: Logger,
    ) -> Intake {
        let IntakeRoutes {
            parse,
            replicate,
            membership,
            stats,
            node,
            seal,
        } = routes;
        Intake {
            socket,
            settings,
            receiver,
            parse,
            connections: HashMap::new(),
            next_conn: FIRST_CONN,
            stop,
            logger,
            scratch: vec![0; READ_CHUNK_BYTES],
            ready: BTreeSet::new(),
            stats,
            next_stall_check: Instant::now(),
            links: PeerLinks::default(),
            membership,
            replicate,
            node,
            seal,
        }
    }

    /// Runs the loop until the stop flag is set, then closes every socket.
    pub fn run(mut self) {
        info!(self.logger, "intake listening"; "addr" => %self.socket.local_addr);
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        while !self.stop.load(Ordering::Acquire) {
            // Connections left with unread input must not wait for the poll timeout.
            let timeout = if self.ready.is_empty() {
                POLL_TIMEOUT
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.socket.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!(self.logger, "poll failed"; "error" => %e);
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(conn) => self.service(conn as ConnId),
                }
            }
            for conn in std::mem::take(&mut self.ready) {
                self.service(conn);
            }
            self.deliver_outgoing();
            self.close_stalled_frames();
        }
        info!(self.logger, "intake stopped"; "connections" => self.connections.len());
    }

    fn accept_all(&mut self) {
        loop {
            match self.socket.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(self.logger, "accept failed"; "error" => %e);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if self.connections.len() >= self.settings.max_connections {
            warn!(self.logger, "connection refused: limit reached"; "peer" => %peer, "limit" => self.settings.max_connections);
            return; // dropping the stream closes it
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let _ = stream.set_nodelay(true);
        let registry: &Registry = self.socket.poll.registry();
        if let Err(e) = registry.register(
            &mut stream,
            Token(conn as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(self.logger, "cannot register connection"; "error" => %e);
            return;
        }
        debug!(self.logger, "connection opened"; "conn" => conn, "peer" => %peer);
        self.connections.insert(
            conn,
            Connection::new(stream, self.settings.max_frame_bytes, false),
        );
    }

    /// Reads what the socket has, dispatches complete frames, and writes pending output.
    fn service(&mut self, conn: ConnId) {
        let keep = self.finish_connect(conn) && self.read_frames(conn) && self.flush(conn);
        if !keep {
            self.close(conn);
        }
    }

    /// Returns false when the connection is finished.
    fn read_frames(&mut self, conn: ConnId) -> bool {
        for _ in 0..READS_PER_TURN {
            let Some(connection) = self.connections.get_mut(&conn) else {
                return false;
            };
            if connection.closing {
                return true;
            }
            match connection.stream.read(&mut self.scratch) {
                Ok(0) => return false,
                Ok(n) => {
                    connection.decoder.extend(&self.scratch[..n]);
                    self.dispatch_frames(conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.ready.insert(conn);
        true
    }

    fn dispatch_frames(&mut self, conn: ConnId) {
        let received_at = Instant::now();
        loop {
            let Some(connection) = self.connections.get_mut(&conn) else {
                return;
            };
            match connection.decoder.next_frame() {
                Ok(Some(frame)) => self.hand_to_parse(conn, frame, received_at),
                Ok(None) => {
                    // Start (or stop) the clock on a partial frame.
                    let partial = connection.decoder.buffered_bytes() > 0;
                    connection.frame_started =
                        partial.then(|| connection.frame_started.unwrap_or(received_at));
                    return;
                }
                Err(error) => {
                    warn!(self.logger, "unreadable stream, closing connection"; "conn" => conn, "error" => %error);
                    let reply = match error {
                        FrameError::TooLarge { declared, max } => {
                            ServiceError::FrameTooLarge { declared, max }
                        }
                        other => ServiceError::MalformedFrame {
                            reason: other.to_string(),
                        },
                    };
                    let origin = Origin {
                        conn,
                        request_id: 0,
                    };
                    if let IntakeEvent::Send { frame, .. } =
                        IntakeEvent::reply(origin, &Message::Error(reply))
                    {
                        self.enqueue(conn, &frame);
                    }
                    if let Some(connection) = self.connections.get_mut(&conn) {
                        connection.closing = true;
                    }
                    return;
                }
            }
        }
    }

    fn hand_to_parse(&mut self, conn: ConnId, frame: Frame, received_at: Instant) {
        let request_id = frame.request_id;
        if frame.kind == kind::PEER_HELLO {
            return self.accept_hello(conn, &frame);
        }
        let peer = self.links.peer_of(conn).cloned();
        let authenticated = self
            .connections
            .get(&conn)
            .is_some_and(|c| c.authenticated.is_some());
        if frame.kind == kind::STATS {
            let reply = match Message::decode(&frame) {
                Ok(_) => Message::StatsReply(self.stats.snapshot()),
                Err(error) => Message::Error(error.into()),
            };
            if let IntakeEvent::Send { frame, .. } =
                IntakeEvent::reply(Origin { conn, request_id }, &reply)
            {
                self.enqueue(conn, &frame);
            }
            return;
        }
        if let Err(refused) = self.parse.try_send(ParseEvent {
            conn,
            frame,
            received_at,
            peer,
            authenticated,
        }) {
            let error = match refused {
                SendError::Full(_) => ServiceError::Overloaded {
                    stage: "parse".into(),
                },
                SendError::Closed(_) => ServiceError::ShuttingDown,
            };
            if let IntakeEvent::Send { frame, .. } =
                IntakeEvent::reply(Origin { conn, request_id }, &Message::Error(error))
            {
                self.enqueue(conn, &frame);
            }
        }
    }

    fn deliver_outgoing(&mut self) {
        while let Some(queued) = self.receiver.try_recv() {
            let started = Instant::now();
            let conn = match queued.event {
                IntakeEvent::Send { conn, frame } => {
                    self.enqueue(conn, &frame);
                    Some(conn)
                }
                IntakeEvent::ToPeer { peer, frame } => self.send_to_peer(peer, &frame),
            };
            if let Some(conn) = conn {
                if !self.flush(conn) {
                    self.close(conn);
                }
            }
            let wait = started.saturating_duration_since(queued.enqueued_at);
            self.receiver.stats().on_batch(&[wait], started.elapsed());
        }
    }

    /// Appends a frame to a connection's output (if it still exists), unless that would take
    /// its unsent bytes past the bound: then the connection is marked for dropping instead.
    fn enqueue(&mut self, conn: ConnId, frame: &[u8]) {
        let limit = self.settings.max_write_buffer_bytes;
        if let Some(connection) = self.connections.get_mut(&conn) {
            let unsent = connection.outgoing.len() - connection.written;
            if unsent + frame.len() > limit {
                connection.overflowed = true;
            } else {
                connection.outgoing.extend_from_slice(frame);
            }
        }
    }

    /// Writes as much pending output as the socket takes. Returns false when the connection
    /// must close (error, slow reader over its bound, or closing and flushed).
    fn flush(&mut self, conn: ConnId) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return true;
        };
        if connection.connecting {
            return true; // output waits for the connect to complete
        }
        if connection.overflowed {
            warn!(self.logger, "dropping slow reader"; "conn" => conn, "limit_bytes" => self.settings.max_write_buffer_bytes);
            return false;
        }
        while connection.written < connection.outgoing.len() {
            match connection
                .stream
                .write(&connection.outgoing[connection.written..])
            {
                Ok(0) => return false,
                Ok(n) => connection.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if connection.written == connection.outgoing.len() {
            if connection.outgoing.capacity() > KEEP_BUFFER_BYTES {
                connection.outgoing = Vec::new();
            } else {
                connection.outgoing.clear();
            }
            connection.written = 0;
            return !connection.closing;
        }
        true
    }

    /// Closes connections whose partial frame has been arriving for longer than the frame
    /// timeout (checked at most once per poll timeout, since deadlines are seconds long).
    fn close_stalled_frames(&mut self) {
        let now = Instant::now();
        if now < self.next_stall_check {
            return;
        }
        self.next_stall_check = now + POLL_TIMEOUT;
        let timeout = self.settings.frame_timeout;
        let stalled: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.frame_started
                    .is_some_and(|started| now.saturating_duration_since(started) > timeout)
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stalled {
            warn!(self.logger, "closing connection: frame not completed in time"; "conn" => conn, "timeout_ms" => timeout.as_millis() as u64);
            self.close(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.ready.remove(&conn);
        if let Some(peer) = self.links.peer_of(conn).cloned() {
            warn!(self.logger, "peer link lost"; "peer" => %peer, "conn" => conn);
            self.links.failed(&peer, Some(conn), Instant::now());
            self.report_failed(peer);
        }
        if let Some(mut connection) = self.connections.remove(&conn) {
            let _ = self
                .socket
                .poll
                .registry()
                .deregister(&mut connection.stream);
            debug!(self.logger, "connection closed"; "conn" => conn);
        }
    }
}
