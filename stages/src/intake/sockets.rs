//! The loop's sockets: each connection's stream and unsent output, what the machine's socket
//! commands do to them, and the hand-off of a busy turn's output to the reply writer
//! (`writer.rs`) and back.

use super::linger::Linger;
use super::writer::{Job, Report, Writer};
use super::StatsSource;
use crate::event::{encode_reply, ConnId, SocketCommand};
use crate::wire::Message;
use crate::NodeId;
use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use slog::{debug, info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

/// A connection's output buffer is released once flushed if it grew beyond this, so one large
/// reply does not pin its peak size for the life of the connection.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// One socket and its unsent output.
pub(super) struct Socket {
    pub stream: TcpStream,
    /// Encoded frames not yet written; `written` bytes of its front are already sent.
    outgoing: Vec<u8>,
    written: usize,
    /// Close once `outgoing` is flushed.
    pub closing: bool,
    /// Closing, and every byte of its output written: the node chose this close, so the
    /// socket lingers (`linger.rs`) instead of resetting unread input.
    finished: bool,
    /// Unsent output exceeded `max_write_buffer_bytes`: a slow reader, dropped at next flush.
    overflowed: bool,
    /// An outgoing peer connection whose connect has not completed: output waits.
    pub connecting: bool,
    /// The peer shut its side or the socket reported an error: read until end of file or the
    /// error, since no further readiness edge will come to report what a short read left.
    pub read_closed: bool,
    /// A duplicate of the socket for the reply writer (`None`: no writer runs, or the
    /// duplicate failed: the loop writes this connection itself).
    shared: Option<Arc<std::net::TcpStream>>,
    /// Unsent bytes at the reply writer now (0: none); new frames wait behind them in
    /// `outgoing`, and they count against `max_write_buffer_bytes` like those.
    at_writer: usize,
    /// The socket refused output (`WouldBlock`) at the writer: the loop writes it itself until
    /// it takes everything, so a full socket is retried on its writable edge, not handed back
    /// and forth between the threads.
    refused: bool,
}

impl Socket {
    /// A socket; `for_writer`: duplicate its descriptor for the reply writer.
    pub fn new(stream: TcpStream, connecting: bool, for_writer: bool) -> Socket {
        let shared = for_writer
            .then(|| stream.as_fd().try_clone_to_owned().ok())
            .flatten()
            .map(|fd| Arc::new(std::net::TcpStream::from(fd)));
        Socket {
            stream,
            outgoing: Vec::new(),
            written: 0,
            closing: false,
            finished: false,
            overflowed: false,
            connecting,
            read_closed: false,
            shared,
            at_writer: 0,
            refused: false,
        }
    }
}

/// The sockets of the loop and what the machine's commands did to them this turn.
pub(super) struct Sockets {
    pub poll: Poll,
    pub open: BTreeMap<ConnId, Socket>,
    /// Connections with new output, to flush.
    pub dirty: BTreeSet<ConnId>,
    /// Connections to close now (failed dials, aborted ones), reported to the machine.
    pub dead: BTreeSet<ConnId>,
    pub max_write_buffer_bytes: usize,
    /// The reply writer, when the node runs one.
    pub writer: Option<Writer>,
    /// `[pool] reply_writer_from`: connections with output a turn needs before they are
    /// handed to the writer.
    pub reply_writer_from: usize,
    /// Connections the node closed whose input is still read and thrown away.
    pub linger: Linger,
    pub logger: Logger,
}

impl Sockets {
    /// Appends a frame to a connection's output (if it still exists), unless that would take
    /// its unsent bytes past the bound: then the connection is marked for dropping instead.
    fn enqueue(&mut self, conn: ConnId, frame: &[u8]) {
        if let Some(socket) = self.open.get_mut(&conn) {
            let unsent = socket.outgoing.len() - socket.written + socket.at_writer;
            if unsent + frame.len() > self.max_write_buffer_bytes {
                socket.overflowed = true;
            } else {
                socket.outgoing.extend_from_slice(frame);
            }
            self.dirty.insert(conn);
        }
    }

    /// Carries out one of the machine's socket commands.
    pub fn execute(&mut self, command: SocketCommand, stats: &StatsSource) {
        match command {
            SocketCommand::Write { conn, frame } => self.enqueue(conn, &frame),
            SocketCommand::Dial { conn, peer, addr } => self.dial(conn, &peer, addr),
            SocketCommand::Close { conn } => {
                if let Some(socket) = self.open.get_mut(&conn) {
                    socket.closing = true;
                    self.dirty.insert(conn);
                }
            }
            SocketCommand::Abort { conn } => {
                self.dead.insert(conn);
            }
            SocketCommand::Stats { origin } => {
                let reply = Message::StatsReply(stats.snapshot());
                self.enqueue(origin.conn, &encode_reply(origin.request_id, &reply));
            }
            SocketCommand::Throttle { origin, change } => {
                // An operator's pin or release is logged: it lasts until the node stops (a
                // restart starts every stage under the controller again), and a trial's pause
                // set during an incident was lost in a restart with no trace of it.
                match change {
                    crate::event::GateChange::Show => {}
                    crate::event::GateChange::Pin(stage, rate) => {
                        info!(self.logger, "admin throttle pinned a background stage's rate (until this node stops)";
                              "background_stage" => stage.name(), "rate_per_sec" => rate)
                    }
                    crate::event::GateChange::Auto(stage) => {
                        info!(self.logger, "admin throttle released a background stage's rate (to the controller, or the configured rate while it is off)";
                              "background_stage" => stage.name())
                    }
                }
                let reply = Message::ThrottleReply(stats.throttle(change));
                self.enqueue(origin.conn, &encode_reply(origin.request_id, &reply));
            }
            SocketCommand::Aae { origin } => {
                let reply = Message::AaeReply(Box::new(stats.aae.report()));
                self.enqueue(origin.conn, &encode_reply(origin.request_id, &reply));
            }
        }
    }

    /// Starts a non-blocking connect to a peer; a failure is reported as a closed connection.
    fn dial(&mut self, conn: ConnId, peer: &NodeId, addr: SocketAddr) {
        let registered = TcpStream::connect(addr).and_then(|mut stream| {
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.poll
                .registry()
                .register(&mut stream, token(conn), interest)?;
            Ok(stream)
        });
        match registered {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let for_writer = self.writer.is_some();
                self.open
                    .insert(conn, Socket::new(stream, true, for_writer));
            }
            Err(e) => {
                warn!(self.logger, "cannot dial peer"; "peer" => %peer, "error" => %e);
                self.dead.insert(conn);
            }
        }
    }

    /// Writes as much pending output as the socket takes. Returns false when the connection
    /// must close (error, slow reader over its bound, or closing and flushed).
    pub fn flush(&mut self, conn: ConnId) -> bool {
        let Some(socket) = self.open.get_mut(&conn) else {
            return true;
        };
        if socket.connecting || socket.at_writer > 0 {
            return true; // output waits for the connect, or behind what the writer holds
        }
        if socket.overflowed {
            warn!(self.logger, "dropping slow reader"; "conn" => conn.0, "limit_bytes" => self.max_write_buffer_bytes);
            return false;
        }
        while socket.written < socket.outgoing.len() {
            match socket.stream.write(&socket.outgoing[socket.written..]) {
                Ok(0) => return false,
                Ok(n) => socket.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if socket.written == socket.outgoing.len() {
            socket.refused = false;
            if socket.outgoing.capacity() > KEEP_BUFFER_BYTES {
                socket.outgoing = Vec::new();
            } else {
                socket.outgoing.clear();
            }
            socket.written = 0;
            socket.finished = socket.closing;
            return !socket.closing;
        }
        true
    }

    /// Writes every connection with new output: inline, or, when at least `reply_writer_from`
    /// of them have output to send, by the reply writer while the loop goes on.
    pub fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let (mut sending, mut inline): (Vec<ConnId>, Vec<ConnId>) =
            dirty.into_iter().partition(|conn| self.may_hand_off(conn));
        if self.writer.is_none() || sending.len() < self.reply_writer_from {
            inline.append(&mut sending);
        }
        for conn in inline {
            if !self.flush(conn) {
                self.dead.insert(conn);
            }
        }
        let jobs: Vec<Job> = sending
            .into_iter()
            .filter_map(|conn| self.hand_off(conn))
            .collect();
        if jobs.is_empty() {
            return;
        }
        if let Some(Err(jobs)) = self.writer.as_mut().map(|writer| writer.send(jobs)) {
            self.writer_gone(jobs);
        }
    }

    /// Whether a connection's output may go to the writer: it has some, and nothing the
    /// inline flush must handle (a connect to finish, a bound passed, a close after the flush,
    /// output already at the writer, a full socket).
    fn may_hand_off(&self, conn: &ConnId) -> bool {
        self.open.get(conn).is_some_and(|socket| {
            socket.written < socket.outgoing.len()
                && socket.shared.is_some()
                && !(socket.connecting
                    || socket.overflowed
                    || socket.closing
                    || socket.refused
                    || socket.at_writer > 0)
        })
    }

    /// Moves a connection's unsent output into a writer job (see [`Sockets::may_hand_off`]).
    fn hand_off(&mut self, conn: ConnId) -> Option<Job> {
        let socket = self.open.get_mut(&conn)?;
        let stream = Arc::clone(socket.shared.as_ref()?);
        socket.at_writer = socket.outgoing.len() - socket.written;
        Some(Job {
            conn,
            stream,
            bytes: std::mem::take(&mut socket.outgoing),
            written: std::mem::replace(&mut socket.written, 0),
        })
    }

    /// Takes back a job from the writer: output the socket did not take goes before what
    /// queued meanwhile (and the loop writes the connection itself until the socket takes
    /// everything); a failed socket, or one now over its bound, is closed. The connection is
    /// flushed next.
    pub fn on_report(&mut self, report: Report) {
        let Some(socket) = self.open.get_mut(&report.conn) else {
            return; // closed meanwhile (connection ids are never reused)
        };
        socket.at_writer = 0;
        if report.failed {
            self.dead.insert(report.conn);
            return;
        }
        let mut bytes = report.bytes;
        if report.written < bytes.len() {
            socket.refused = true;
            bytes.drain(..report.written);
            bytes.extend_from_slice(&socket.outgoing[socket.written..]);
            socket.overflowed |= bytes.len() > self.max_write_buffer_bytes;
            socket.outgoing = bytes;
            socket.written = 0;
        } else if socket.outgoing.is_empty() && bytes.capacity() <= KEEP_BUFFER_BYTES {
            bytes.clear();
            socket.outgoing = bytes; // keeps its allocation for the next reply
        }
        self.dirty.insert(report.conn);
    }

    /// The writer thread is gone (it cannot panic on a write, but if it did): what it
    /// finished is taken back and written, the jobs it never got are written inline, and a
    /// connection whose output it still held is closed (that output is lost with it). From
    /// then on the loop writes everything itself.
    pub fn writer_gone(&mut self, unsent: Vec<Job>) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let mut returned = Vec::new();
        while let Some(report) = writer.try_collect() {
            returned.push(report.conn);
            self.on_report(report);
        }
        for job in unsent {
            returned.push(job.conn);
            self.on_report(Report {
                conn: job.conn,
                bytes: job.bytes,
                written: job.written,
                failed: false,
            });
        }
        for conn in returned {
            self.dirty.remove(&conn);
            if !self.flush(conn) {
                self.dead.insert(conn);
            }
        }
        let stranded = self.open.iter().filter(|(_, socket)| socket.at_writer > 0);
        let stranded: Vec<ConnId> = stranded.map(|(conn, _)| *conn).collect();
        warn!(self.logger, "the reply writer stopped: the loop writes every reply itself"; "connections_lost" => stranded.len());
        self.dead.extend(stranded);
        for socket in self.open.values_mut() {
            socket.shared = None; // no second descriptor per connection any more
        }
    }

    /// Whether the reply writer has finished jobs to collect.
    pub fn writer_done(&self) -> bool {
        self.writer.as_ref().is_some_and(Writer::has_done)
    }

    /// Closes and forgets a connection. One the node closed after writing everything, whose
    /// peer may still be sending, lingers instead (`linger.rs`).
    pub fn close(&mut self, conn: ConnId, now: Instant) {
        let Some(socket) = self.open.remove(&conn) else {
            return;
        };
        let mut stream = socket.stream;
        if socket.finished {
            match self.linger.start(conn, stream, now, self.poll.registry()) {
                Ok(()) => return,
                Err(back) => stream = back,
            }
        }
        let _ = self.poll.registry().deregister(&mut stream);
        debug!(self.logger, "connection closed"; "conn" => conn.0);
    }
}

/// The poll token of a connection.
pub(super) fn token(conn: ConnId) -> Token {
    Token(conn.0 as usize)
}
