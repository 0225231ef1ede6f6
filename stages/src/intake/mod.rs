//! The network intake stage: one mio event loop (one thread) that owns every socket.
//!
//! The loop is the I/O half: it accepts connections, reads bytes, dials peers and writes
//! frames (`sockets.rs`; a busy turn's writes go to the reply-writer thread, `writer.rs`, so
//! the loop reads and runs its stages while they are sent). Every decision about those bytes
//! is the [`IntakeMachine`]'s (`machine.rs`): frames are checked (declared length before
//! buffering) and handed to the parse stage with a request delivery, so a full parse queue is
//! answered `Overloaded` on the spot. Other stages send frames through the intake's own queue
//! and wake the loop with a `mio::Waker`.
//!
//! Bounds: at most `max_connections` sockets, and `linger::MAX_LINGERING_SOCKETS` closed ones
//! still read so they end without a reset (`linger.rs`); per connection, at most one maximal frame plus one
//! read of input buffered and at most `max_write_buffer_bytes` of unsent output (a client that
//! never reads is disconnected rather than allowed to grow the buffer).

mod connections;
mod handshake;
mod linger;
mod machine;
mod peers;
mod sockets;
mod stats_source;
#[cfg(test)]
mod tests;
mod writer;

pub use connections::ConnectionBoard;
pub use machine::{IntakeMachine, IntakeSettings, FIRST_CONN, HANDSHAKE_TIMEOUT};
pub use stats_source::StatsSource;

use crate::event::{ConnId, IntakeEvent, Now};
use crate::seda::{
    deliver, Domain, Machine, Outbox, Router, SlowWatch, SlowestBatch, StageReceiver, Threads, Wake,
};
use linger::Linger;
pub use linger::{LINGER_MAX_BYTES, LINGER_TIMEOUT};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slog::{debug, info, warn, Logger};
use sockets::{token, Socket, Sockets};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::Writer;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Bytes read from a socket per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest the loop sleeps before re-checking its stop flag; also how often the machine is
/// ticked (frame deadlines are seconds long).
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest the loop sleeps while a clean stop drains.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Longest a clean stop waits for client connections still lingering once every client's
/// answers are written: an active client closes at once on reading the end, an idle one only
/// when it next sends, and waiting the whole `LINGER_TIMEOUT` for it held every stop for 2 s.
const DRAIN_LINGER: Duration = Duration::from_millis(250);
/// Longest a clean stop waits, once it told the peers, for their connections to close (each
/// closes once its `Stopping` frame is written).
const DRAIN_ANNOUNCE: Duration = Duration::from_millis(500);
/// Socket events handled per `poll` call.
const EVENTS_PER_POLL: usize = 1024;
/// Reads from one connection per turn of the loop. A client that sends faster than the loop
/// drains would otherwise never yield `WouldBlock` and starve every other socket and the
/// outgoing queue; past this it waits for the next turn.
pub(super) const READS_PER_TURN: usize = 16;
/// Passes over the domain's stages per loop turn.
const DOMAIN_PASSES_PER_TURN: usize = 16;
/// A loop turn this long is warned of: every client of the node waited that long, whatever
/// its request.
const SLOW_TURN: Duration = Duration::from_millis(20);
/// Rounds of closing per loop turn: closing a peer link makes the machine report it, which
/// closes nothing more, so one extra round suffices.
const CLOSE_ROUNDS: usize = 4;

/// Wakes the intake loop from other threads, but only when it sleeps in `poll`: a wake-up
/// is a syscall, and while the loop is awake it drains its queue every turn anyway.
struct MioWake {
    waker: Waker,
    sleeping: AtomicBool,
}

impl Wake for MioWake {
    fn wake(&self) {
        // Pairs with the fence in `Intake::run`: either this sees the loop asleep, or the
        // loop's check of its queue after announcing sleep sees the event just queued.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed wake only delays delivery until the next poll timeout.
            let _ = self.waker.wake();
        }
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
        let waker = Arc::new(MioWake {
            waker: Waker::new(poll.registry(), WAKER)?,
            sleeping: AtomicBool::new(false),
        });
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

/// Where a loop turn's time went: its sockets (reading, parsing, writing), the stages of its
/// domain (coordination and storage on this thread) with the longest batch among them, and
/// the rest (frames from other stages, the machine's tick).
#[derive(Clone, Copy)]
struct TurnSplit {
    sockets: Duration,
    domain: Duration,
    slowest: (&'static str, Duration),
    rest: Duration,
}

/// The running intake loop.
pub struct Intake {
    machine: IntakeMachine,
    sockets: Sockets,
    listener: TcpListener,
    local_addr: SocketAddr,
    receiver: StageReceiver<IntakeEvent>,
    router: Router,
    stats: StatsSource,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
    logger: Logger,
    scratch: Vec<u8>,
    /// Connections that used their read turn without draining the socket; serviced again on
    /// the next turn (edge-triggered readiness will not report them again).
    ready: BTreeSet<ConnId>,
    /// When the machine is next ticked.
    next_tick: Instant,
    /// Wakes this loop; told when the loop sleeps.
    waker: Arc<MioWake>,
    /// The pool stages this thread runs between its turns (a thread domain).
    domain: Option<Domain>,
    /// Turns that took too long, with where each one's time went.
    slow: SlowWatch<TurnSplit>,
    /// A clean stop's drain, when the node asks for one ([`Intake::with_drain`]).
    drain: Option<DrainControl>,
}

/// How a clean stop ends the loop: the node sets `flag`; the loop then answers what clients
/// are owed, refuses the rest, closes their connections and ends, or ends when `timeout`
/// has passed since the flag was first seen, whichever comes first.
struct DrainControl {
    flag: Arc<AtomicBool>,
    timeout: Duration,
    /// When the client part must end (set when the flag is first seen).
    deadline: Option<Instant>,
    /// When the last client connection closed (lingering ones are waited for a little more).
    clients_closed: Option<Instant>,
    /// When the peers were told (their connections are then waited for a little more).
    announced: Option<Instant>,
}

impl Intake {
    /// An intake over `socket` running `machine`, draining `receiver`, reaching the other
    /// stages through `stats.router`; it also runs `domain`'s pool stages between its turns,
    /// so a request whose stages are all in the domain is served on this thread without a
    /// wake-up.
    pub fn new(
        socket: IntakeSocket,
        machine: IntakeMachine,
        receiver: StageReceiver<IntakeEvent>,
        stats: StatsSource,
        stop: Arc<AtomicBool>,
        logger: Logger,
        domain: Option<Domain>,
    ) -> Intake {
        let IntakeSocket {
            poll,
            listener,
            local_addr,
            waker,
        } = socket;
        let sockets = Sockets {
            poll,
            open: BTreeMap::new(),
            dirty: BTreeSet::new(),
            dead: BTreeSet::new(),
            max_write_buffer_bytes: machine.settings().max_write_buffer_bytes,
            writer: None,
            reply_writer_from: 0,
            linger: Linger::new(logger.clone()),
            logger: logger.clone(),
        };
        Intake {
            machine,
            sockets,
            listener,
            local_addr,
            receiver,
            router: stats.router.clone(),
            stats,
            outbox: Outbox::new(),
            stop,
            logger,
            scratch: vec![0; READ_CHUNK_BYTES],
            ready: BTreeSet::new(),
            next_tick: Instant::now(),
            waker,
            domain,
            slow: SlowWatch::new(SLOW_TURN),
            drain: None,
        }
    }

    /// Lets the node stop the loop cleanly: once `flag` is set, client requests already taken
    /// are answered and new ones refused `ShuttingDown`, then the client connections close and
    /// the loop ends; after `timeout` it ends whatever is still owed. The stop flag still
    /// ends it at once.
    pub fn with_drain(mut self, flag: Arc<AtomicBool>, timeout: Duration) -> Intake {
        self.drain = Some(DrainControl {
            flag,
            timeout,
            deadline: None,
            clients_closed: None,
            announced: None,
        });
        self
    }

    /// Starts the reply writer: a turn with at least `from` connections to write hands their
    /// output to it (`writer.rs`). 0 starts none: the loop writes everything itself.
    pub fn with_reply_writer(mut self, from: usize) -> io::Result<Intake> {
        if from > 0 {
            let wake = Arc::clone(&self.waker) as Arc<dyn Wake>;
            self.sockets.writer = Some(Writer::start(wake)?);
            self.sockets.reply_writer_from = from;
        }
        Ok(self)
    }

    /// Runs the loop until the stop flag is set, then closes every socket.
    pub fn run(mut self) {
        info!(self.logger, "intake listening"; "addr" => %self.local_addr);
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        if let Some(domain) = &self.domain {
            domain.enter();
        }
        while !self.stop.load(Ordering::Acquire) && !self.drained() {
            // Connections left with unread input, and domain work, must not wait for the
            // poll timeout; otherwise the loop sleeps until a socket or the waker fires.
            let busy = !self.ready.is_empty()
                || self.sockets.linger.busy()
                || self.domain.as_ref().is_some_and(Domain::runnable);
            let mut timeout = Duration::ZERO;
            if !busy {
                self.waker.sleeping.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                // The writer wakes the loop after each batch it wrote (`writer.rs`).
                if self.receiver.is_empty() && !self.sockets.writer_done() {
                    timeout = POLL_TIMEOUT;
                }
                if self.drain.as_ref().is_some_and(|d| d.deadline.is_some()) {
                    // A drain's last steps (closes, lingers) raise no event to wake the loop.
                    timeout = timeout.min(DRAIN_POLL);
                }
            }
            let polled = self.sockets.poll.poll(&mut events, Some(timeout));
            self.waker.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() != ErrorKind::Interrupted {
                    warn!(self.logger, "poll failed"; "error" => %e);
                }
                continue;
            }
            let started = Instant::now();
            for event in events.iter() {
                self.on_poll_event(event);
            }
            self.collect_written();
            for conn in std::mem::take(&mut self.ready) {
                self.service(conn);
            }
            let sockets_done = Instant::now();
            let slowest = self.run_domain();
            let domain_done = Instant::now();
            self.deliver_outgoing();
            self.tick();
            if self.sockets.linger.busy() {
                let Sockets { linger, poll, .. } = &mut self.sockets;
                linger.drain_ready(poll.registry());
            }
            let ended = Instant::now();
            let split = TurnSplit {
                sockets: sockets_done - started,
                domain: domain_done - sockets_done,
                slowest: slowest.unwrap_or(("none", Duration::ZERO)),
                rest: ended - domain_done,
            };
            self.warn_if_slow(ended - started, ended, split);
        }
        info!(self.logger, "intake stopped"; "connections" => self.sockets.open.len());
    }

    /// Whether a clean stop's drain is over; each call takes it a step. First every client
    /// request taken is answered and the client connections close (`drain_timeout_ms` at
    /// most), lingering ones waited for [`DRAIN_LINGER`] at most (a client that holds an idle
    /// connection only notices the close when it next sends); then the peers are told and
    /// their connections close once that is written ([`DRAIN_ANNOUNCE`] at most).
    fn drained(&mut self) -> bool {
        let Some(drain) = self.drain.as_mut() else {
            return false;
        };
        if !drain.flag.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        let timeout = drain.timeout;
        if drain.deadline.is_none() {
            drain.deadline = Some(now + timeout);
            self.machine.begin_drain();
            let owed = self.machine.owed();
            if timeout.is_zero() {
                info!(self.logger, "stopping at once: drain_timeout_ms is 0, requests already taken are cut off"; "owed" => owed);
            } else {
                info!(self.logger, "stopping: answering the client requests already taken, refusing new ones"; "owed" => owed, "for_at_most_ms" => timeout.as_millis());
            }
        }
        // Copied out: the steps below need the whole loop.
        let (deadline, clients_closed, announced) =
            (drain.deadline, drain.clients_closed, drain.announced);
        if let Some(at) = announced {
            return self.machine.peers_open() == 0 || now >= at + DRAIN_ANNOUNCE;
        }
        let closed = self.machine.drain_step(&mut self.outbox);
        self.settle(Now::real());
        let clients_closed = clients_closed.or(closed.then_some(now));
        let lingered = !self.sockets.linger.lingering()
            || clients_closed.is_some_and(|at| now >= at + DRAIN_LINGER);
        let timed_out = deadline.is_some_and(|at| now >= at);
        if closed && lingered {
            info!(
                self.logger,
                "stopping: every client request taken was answered"
            );
        } else if !timed_out {
            if let Some(drain) = self.drain.as_mut() {
                drain.clients_closed = clients_closed;
            }
            return false;
        } else if !timeout.is_zero() {
            let (owed, open) = (self.machine.owed(), self.machine.clients_open());
            if owed > 0 || open > 0 {
                warn!(self.logger, "stopping with client requests taken and not answered, or answers not yet written: the drain's time is up; they may have been applied (a client that sends them again may write twice)";
                      "owed" => owed, "client_connections_open" => open, "drain_timeout_ms" => timeout.as_millis());
            }
        }
        self.machine.announce_stop(&mut self.outbox);
        self.settle(Now::real());
        if let Some(drain) = self.drain.as_mut() {
            drain.announced = Some(now);
        }
        false
    }

    /// One readiness event: new connections, or a socket to read and write (a lingering one
    /// only to drain).
    fn on_poll_event(&mut self, event: &mio::event::Event) {
        match event.token() {
            LISTENER => self.accept_all(),
            WAKER => {}
            Token(conn) => {
                let conn = ConnId(conn as u64);
                if self.sockets.linger.has(conn) {
                    let Sockets { linger, poll, .. } = &mut self.sockets;
                    return linger.drain(conn, poll.registry());
                }
                if event.is_read_closed() || event.is_error() {
                    if let Some(socket) = self.sockets.open.get_mut(&conn) {
                        socket.read_closed = true;
                    }
                }
                self.service(conn);
            }
        }
    }

    /// Warns of slow turns (at most once a second, with the worst one's split).
    fn warn_if_slow(&mut self, took: Duration, now: Instant, split: TurnSplit) {
        if let Some(stalls) = self.slow.observe(took, now, split) {
            let ms = |d: Duration| d.as_millis() as u64;
            let worst = stalls.detail;
            warn!(self.logger, "slow intake loop turn";
                "turns" => stalls.count, "worst_ms" => ms(stalls.worst),
                "sockets_ms" => ms(worst.sockets), "domain_ms" => ms(worst.domain),
                "slowest_stage" => worst.slowest.0, "slowest_stage_ms" => ms(worst.slowest.1),
                "outgoing_and_tick_ms" => ms(worst.rest));
        }
    }

    /// Carries out the machine's outbox, then flushes and closes what it touched.
    fn settle(&mut self, now: Now) {
        for _ in 0..CLOSE_ROUNDS {
            let Intake {
                machine,
                outbox,
                router,
                stats,
                sockets,
                ..
            } = self;
            let mut post = Threads {
                router,
                latencies: &stats.latencies,
                counters: &stats.counters,
                sockets: |command| sockets.execute(command, stats),
            };
            deliver(machine, now, outbox, &mut post);
            self.sockets.flush_dirty();
            let dead = std::mem::take(&mut self.sockets.dead);
            if dead.is_empty() {
                return;
            }
            for conn in dead {
                self.ready.remove(&conn);
                self.sockets.close(conn, now.instant);
                self.machine.on_closed(now, conn, &mut self.outbox);
            }
        }
    }

    /// Takes back what the reply writer finished, then flushes what queued behind it.
    fn collect_written(&mut self) {
        let mut collected = false;
        while let Some(report) = self.sockets.writer.as_mut().and_then(Writer::try_collect) {
            self.sockets.on_report(report);
            collected = true;
        }
        if self.sockets.writer.as_ref().is_some_and(Writer::gone) {
            self.sockets.writer_gone(Vec::new());
            collected = true;
        }
        if collected {
            self.settle(Now::real());
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
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
        let Some(conn) = self.machine.accept() else {
            return; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .sockets
            .poll
            .registry()
            .register(&mut stream, token(conn), interest)
        {
            warn!(self.logger, "cannot register connection"; "error" => %e);
            self.machine.on_closed(Now::real(), conn, &mut self.outbox);
            return;
        }
        debug!(self.logger, "connection opened"; "conn" => conn.0, "peer" => %peer);
        let for_writer = self.sockets.writer.is_some();
        self.sockets
            .open
            .insert(conn, Socket::new(stream, false, for_writer));
    }

    /// Completes a pending connect, reads what the socket has into the machine, and writes
    /// pending output.
    fn service(&mut self, conn: ConnId) {
        if !self.finish_connect(conn) || !self.read(conn) {
            self.sockets.dead.insert(conn);
        }
        self.sockets.dirty.insert(conn);
        self.settle(Now::real());
    }

    /// For a connection still connecting: whether it is usable or still pending (true), or
    /// failed (false, to be closed).
    fn finish_connect(&mut self, conn: ConnId) -> bool {
        let Some(socket) = self.sockets.open.get_mut(&conn) else {
            return false;
        };
        if !socket.connecting {
            return true;
        }
        if let Ok(Some(_)) | Err(_) = socket.stream.take_error() {
            return false;
        }
        match socket.stream.peer_addr() {
            Ok(_) => {
                socket.connecting = false;
                true
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => true,
            Err(_) => false,
        }
    }

    /// Reads up to `READS_PER_TURN` times; returns false when the connection is finished.
    fn read(&mut self, conn: ConnId) -> bool {
        for _ in 0..READS_PER_TURN {
            let Some(socket) = self.sockets.open.get_mut(&conn) else {
                return false;
            };
            if socket.closing || socket.connecting {
                return true;
            }
            match socket.stream.read(&mut self.scratch) {
                Ok(0) => return self.machine.on_read_closed(conn, &mut self.outbox),
                Ok(n) => {
                    // A stream socket that fills less than the buffer has been drained (epoll(7)):
                    // the next read would only say `WouldBlock`, a syscall per request for
                    // nothing. Data arriving later raises a new edge.
                    let drained = n < self.scratch.len() && !socket.read_closed;
                    self.machine.on_received(
                        Now::real(),
                        conn,
                        &self.scratch[..n],
                        &mut self.outbox,
                    );
                    if drained {
                        return true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.ready.insert(conn);
        true
    }

    /// Runs the domain's stages until they have nothing left (bounded, so sockets are not
    /// starved by a stage that keeps refilling).
    ///
    /// The domain's stages answer into this loop's own queue with reply deliveries, which
    /// wait for room; only this thread drains that queue, so it must never fill while this
    /// thread runs them. A pass runs only while at least half the queue is free: a pass adds
    /// at most a batch of frames per stage, far less than half of any sane bound.
    fn run_domain(&mut self) -> SlowestBatch {
        let mut slowest = None;
        if let Some(domain) = &self.domain {
            let room = self.receiver.stats().queue_capacity / 2;
            for _ in 0..DOMAIN_PASSES_PER_TURN {
                if self.receiver.len() > room || !domain.run_pass(&mut slowest) {
                    break;
                }
            }
        }
        slowest
    }

    /// Frames other stages queued for clients and peers: every queued one (the queue is kept
    /// near empty, see `run_domain`), then each touched connection is written once (one
    /// `write` per connection per turn, not per frame).
    fn deliver_outgoing(&mut self) {
        let started = Instant::now();
        let now = Now::real();
        let mut waits = Vec::new();
        while let Some(queued) = self.receiver.try_recv() {
            waits.push(started.saturating_duration_since(queued.enqueued_at));
            self.machine.on_event(now, queued.event, &mut self.outbox);
        }
        if waits.is_empty() {
            return;
        }
        self.settle(now);
        self.receiver.stats().on_batch(&waits, started.elapsed());
    }

    fn tick(&mut self) {
        let now = Now::real();
        if now.instant < self.next_tick {
            return;
        }
        self.next_tick = now.instant + POLL_TIMEOUT;
        let Sockets { linger, poll, .. } = &mut self.sockets;
        linger.expire(now.instant, poll.registry());
        self.machine.on_tick(now, &mut self.outbox);
        self.settle(now);
    }
}
