//! A stage's logic as a machine (STYLE habit 19, raft-rs's `RawNode` + `Ready`): it takes
//! `(now, event)` and writes what should happen next to an [`Outbox`]; it owns no queue,
//! thread, socket or clock. Two drivers deliver outboxes: the threaded runtime ([`Driven`]
//! over the stage's bounded crossbeam queue, and the intake's mio loop) and the deterministic
//! simulator (`crate::sim`), which delivers them in a seeded order.

use crate::error::ServiceError;
use crate::event::{Event, Now, Operation, SocketCommand};
use std::time::Duration;

/// How an event in an outbox is to be delivered, which decides what a full queue means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A request moving forward: `try_send`. A full (or stopped) queue hands the event back
    /// to the machine that sent it ([`Machine::on_refused`]), which answers for it (the
    /// client hears `Overloaded`). Never waits.
    Request,
    /// An answer moving back: waits for room, because an answer must not be lost. The edges
    /// that wait form no cycle (ARCHITECTURE.md), so the pipeline cannot deadlock.
    Reply,
    /// Best effort: `try_send`, and dropped (counted as rejected) when the queue is full.
    /// For background work that is redone later anyway (read repair, failure reports).
    Offer,
}

/// One thing a machine wants done.
#[derive(Debug)]
pub enum Effect {
    /// Deliver an event to the stage it is for.
    Send {
        /// How.
        delivery: Delivery,
        /// What (it names its stage).
        event: Event,
    },
    /// A client operation finished after `latency` (recorded in the node's statistics).
    Latency {
        /// Which operation.
        operation: Operation,
        /// Its end-to-end latency.
        latency: Duration,
    },
    /// Something the node counts for its metrics.
    Count(super::Count),
    /// A socket command (the intake's machine only).
    Socket(SocketCommand),
}

/// What a machine produced while handling events, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    effects: Vec<Effect>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// A request for another stage (see [`Delivery::Request`]).
    pub fn request(&mut self, event: impl Into<Event>) {
        self.send(Delivery::Request, event.into());
    }

    /// An answer for another stage (see [`Delivery::Reply`]).
    pub fn reply(&mut self, event: impl Into<Event>) {
        self.send(Delivery::Reply, event.into());
    }

    /// Best-effort work for another stage (see [`Delivery::Offer`]).
    pub fn offer(&mut self, event: impl Into<Event>) {
        self.send(Delivery::Offer, event.into());
    }

    /// Any event with an explicit delivery.
    pub fn send(&mut self, delivery: Delivery, event: Event) {
        self.effects.push(Effect::Send { delivery, event });
    }

    /// A finished client operation's latency.
    pub fn latency(&mut self, operation: Operation, latency: Duration) {
        self.effects.push(Effect::Latency { operation, latency });
    }

    /// Something to count for the metrics.
    pub fn count(&mut self, count: super::Count) {
        self.effects.push(Effect::Count(count));
    }

    /// A socket command.
    pub fn socket(&mut self, command: SocketCommand) {
        self.effects.push(Effect::Socket(command));
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty()
    }

    /// Effects waiting.
    pub fn len(&self) -> usize {
        self.effects.len()
    }

    /// Takes every effect out, in the order they were written.
    pub fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The effects waiting, for tests that inspect a machine's output.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }
}

/// A stage's logic. No queues, threads, sockets or clocks inside: the driver passes `now`
/// and delivers the outbox. Decisions iterate ordered collections only, so one simulator seed
/// gives one run.
pub trait Machine: Send + 'static {
    /// The closed set of events the stage takes.
    type Input: Send + 'static;

    /// Handles one event.
    fn on_event(&mut self, now: Now, event: Self::Input, out: &mut Outbox);

    /// Handles a batch (SEDA's batching); the default handles each event in turn. Storage
    /// overrides it to apply the whole batch and send its durable writes' answers to the
    /// commit stage in one event; the commit stage, to flush once for its whole batch.
    fn on_batch(&mut self, now: Now, batch: &mut Vec<Self::Input>, out: &mut Outbox) {
        for event in batch.drain(..) {
            self.on_event(now, event, out);
        }
    }

    /// Runs every tick of the stage (deadlines, periodic work).
    fn on_tick(&mut self, _now: Now, _out: &mut Outbox) {}

    /// Whether a tick would do nothing until the next event (the pool then skips its ticks,
    /// so an idle node wakes no thread for it). Only a machine whose ticks are frequent and
    /// purely about work in flight says so.
    fn idle(&self) -> bool {
        false
    }

    /// A [`Delivery::Request`] this machine sent was refused: `event` comes back with the
    /// error the requester should hear (`Overloaded` naming the full stage, or
    /// `ShuttingDown`).
    fn on_refused(&mut self, _now: Now, _event: Event, _error: ServiceError, _out: &mut Outbox) {}

    /// Runs once when the stage stops, after its queue drained.
    fn on_stop(&mut self, _out: &mut Outbox) {}
}
