//! The reply writer: a thread that writes a busy loop turn's output to its sockets.
//!
//! On loopback a `send` carries the receiver's side too (the kernel delivers the segment and
//! wakes the reading thread in the sender's context): about 7 µs per reply here, 40 % of the
//! loop's time under 32 connections (benches/results/profile-nosync-2026-12-03.txt). The loop
//! is one thread, so while it sends nothing else of the node runs. When a turn has at least
//! `[pool] reply_writer_from` connections to write, the loop hands their output to this thread
//! and goes on reading and running its stages; the two overlap on two cores. A quiet turn (few
//! replies) writes inline: a hand-off costs a thread wake-up, which a lone reply would wait
//! for.
//!
//! Ownership: a connection's output is at the writer (`Socket::at_writer`) from hand-off until
//! the loop collects its [`Report`]; meanwhile new frames queue behind it in the loop, so the
//! byte order on the socket is the order the frames were queued. What the socket did not take
//! (`WouldBlock`) comes back to the loop, which writes that connection itself until the socket
//! took everything (retrying on its writable edge).
//! The writer holds a duplicate of the socket's descriptor, so a connection the loop closes
//! meanwhile stays open until its job ends: those bytes are still sent (the peer sees them
//! before the close), and the report for a connection the loop no longer has is ignored.

use crate::event::ConnId;
use crate::seda::Wake;
use crossbeam_channel::{Receiver, Sender};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;

/// One connection's output handed to the writer.
pub(super) struct Job {
    /// The connection.
    pub conn: ConnId,
    /// A duplicate of the connection's socket (same open file: non-blocking too).
    pub stream: Arc<TcpStream>,
    /// The output, from its first unsent byte at `written`.
    pub bytes: Vec<u8>,
    /// Bytes of `bytes` already sent.
    pub written: usize,
}

/// What became of a [`Job`], sent back to the loop.
pub(super) struct Report {
    /// The connection.
    pub conn: ConnId,
    /// The job's output, handed back (what was not sent is still to send).
    pub bytes: Vec<u8>,
    /// Bytes of `bytes` sent: all of them unless the socket was full.
    pub written: usize,
    /// The socket failed: the connection is to close.
    pub failed: bool,
}

/// The loop's end of the writer thread.
pub(super) struct Writer {
    jobs: Option<Sender<Vec<Job>>>,
    done: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; it wakes the loop through `wake` after each batch of jobs, so the
    /// loop collects what was written (and queued behind it) without waiting for a socket.
    pub fn start(wake: Arc<dyn Wake>) -> std::io::Result<Writer> {
        // Unbounded on purpose, yet bounded in fact: a connection has at most one job at the
        // writer until the loop collected its report, so neither channel holds more than
        // `max_connections` jobs.
        let (jobs, incoming) = crossbeam_channel::unbounded::<Vec<Job>>();
        let (report, done) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("reply-writer".into())
            .spawn(move || {
                // Ends when the loop drops its sender (the node stops).
                for batch in incoming.iter() {
                    for job in batch {
                        if report.send(write(job)).is_err() {
                            return;
                        }
                    }
                    wake.wake();
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Hands a turn's output over; returns the jobs back if the thread is gone.
    pub fn send(&mut self, batch: Vec<Job>) -> Result<(), Vec<Job>> {
        match &self.jobs {
            Some(jobs) => jobs.send(batch).map_err(|returned| returned.0),
            None => Err(batch),
        }
    }

    /// Whether the thread ended (it only does when the loop drops its sender, or on a panic).
    pub fn gone(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Whether finished jobs wait to be collected.
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// The next finished job, if any.
    pub fn try_collect(&mut self) -> Option<Report> {
        self.done.try_recv().ok()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // The thread only writes to non-blocking sockets, so it ends promptly.
            let _ = thread.join();
        }
    }
}

/// Sends what the socket takes.
fn write(mut job: Job) -> Report {
    let mut failed = false;
    let mut stream: &TcpStream = &job.stream;
    while job.written < job.bytes.len() {
        match stream.write(&job.bytes[job.written..]) {
            Ok(0) => {
                failed = true;
                break;
            }
            Ok(n) => job.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    Report {
        conn: job.conn,
        bytes: job.bytes,
        written: job.written,
        failed,
    }
}
