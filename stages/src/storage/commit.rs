//! The commit stage: group commit (SPEC §7) on a thread of its own.
//!
//! Storage applies a batch and sends the answers of its writes that must be on disk here (a
//! [`CommitEvent`]) instead of flushing itself. This machine flushes the journal once
//! (fdatasync) for every event of its batch and only then sends those answers, marked durable;
//! a failed flush turns each into the flush's error, so no write it covered is acknowledged.
//!
//! Why a stage: an fdatasync here takes ~200 µs, and the thread that flushes waits for it.
//! When storage flushed its own batches, storage could not join the intake loop's thread
//! domain with `sync = "always"` (the loop would stop reading for every flush), so every
//! request hopped to a worker and back. Now storage runs on the loop whatever `sync` is, and
//! only the flush waits, on a worker. It is one slot on purpose: while it flushes, the next
//! writes queue, and its next batch shares one flush among all of them.

use super::Store;
use crate::error::ServiceError;
use crate::event::{CommitEvent, Now, ReplyTo, StorageDone};
use crate::seda::{LogLimit, Machine, Outbox, SlowWatch};
use slog::{error, info, warn, Logger};
use std::time::Duration;

/// A journal flush this long is warned of: ~100x its usual time here, and every write it
/// covers waits that long for its answer.
const SLOW_FLUSH: Duration = Duration::from_millis(20);

/// The commit stage's machine.
pub struct CommitMachine {
    store: Store,
    logger: Logger,
    /// The batch's answers, held for its flush.
    waiting: Vec<(ReplyTo, StorageDone)>,
    /// Flushes of at least `SLOW_FLUSH`, with the writes each covered.
    slow: SlowWatch<usize>,
    /// Whether the last journal writeback failed (see `write_back`).
    write_back_failing: bool,
    /// Failed flushes' log lines, at most one a second (once one failed, all do).
    failures: LogLimit,
}

impl CommitMachine {
    /// A machine flushing `store`'s journal.
    pub fn new(store: Store, logger: Logger) -> CommitMachine {
        CommitMachine {
            store,
            logger,
            waiting: Vec::new(),
            slow: SlowWatch::new(SLOW_FLUSH),
            write_back_failing: false,
            failures: LogLimit::default(),
        }
    }

    /// `sync = "none"`'s writeback. No answer waits for it, and a page it could not write is
    /// reported by the journal's next fdatasync, so a failure is warned of when it starts and
    /// when it ends, not every tick (unless it is the final kind: see `Store::write_back`,
    /// after which every write is refused with the reason).
    fn write_back(&mut self) {
        match (self.store.write_back(), self.write_back_failing) {
            (Ok(()), true) => {
                self.write_back_failing = false;
                info!(self.logger, "journal writeback works again");
            }
            (Err(e), false) => {
                self.write_back_failing = true;
                warn!(self.logger, "journal writeback failed (warned once until it works)"; "error" => %e);
            }
            _ => {}
        }
    }
}

impl Machine for CommitMachine {
    type Input = CommitEvent;

    fn on_event(&mut self, now: Now, event: CommitEvent, out: &mut Outbox) {
        self.on_batch(now, &mut vec![event], out);
    }

    fn on_batch(&mut self, now: Now, batch: &mut Vec<CommitEvent>, out: &mut Outbox) {
        let mut flush = false;
        for event in batch.drain(..) {
            flush |= !event.write_back || !event.waiting.is_empty();
            self.waiting.extend(event.waiting);
        }
        if !flush {
            self.write_back();
            return;
        }
        // One flush for the whole batch, the periodic flush's empty events included.
        let outcome = self.store.persist();
        if let Ok(took) = &outcome {
            let writes = self.waiting.len();
            if let Some(stalls) = self.slow.observe(*took, now.instant, writes) {
                warn!(self.logger, "slow journal flush";
                    "flushes" => stalls.count, "worst_ms" => stalls.worst.as_millis() as u64,
                    "worst_writes" => stalls.detail);
            }
        }
        let outcome = outcome.map(drop);
        if let Err(e) = &outcome {
            // Final once it fails (every later flush is refused): a line a second.
            if let Some(held_back) = self.failures.admit(now.instant) {
                error!(self.logger, "journal flush failed"; "error" => %e, "writes" => self.waiting.len(),
                       "failures_not_logged_since_the_last" => held_back);
            }
        }
        for (reply_to, mut done) in self.waiting.drain(..) {
            match &outcome {
                Ok(()) => done.durable = done.result.is_ok(),
                Err(e) => {
                    if done.result.is_ok() {
                        done.result = Err(ServiceError::Storage {
                            reason: format!("journal flush failed: {e}"),
                        });
                    }
                }
            }
            if let Some(answer) = reply_to.storage_done(done) {
                out.reply(answer);
            }
        }
    }

    /// It holds nothing between batches and has no tick of its own.
    fn idle(&self) -> bool {
        true
    }

    /// The last flush, and the mark of a clean close (the next start keeps this run's dot
    /// actor: `Store::close_cleanly`); the commit stage stops last, after every writer.
    /// Its line gives the final fdatasync's own time: the rest of the commit stage's stop
    /// (the node logs it) went to waiting for fjall's journal lock and to closing fjall.
    fn on_stop(&mut self, _out: &mut Outbox) {
        let sync = match self.store.persist() {
            Ok(sync) => sync,
            Err(e) => {
                error!(self.logger, "final journal flush failed"; "error" => %e);
                return;
            }
        };
        match self.store.close_cleanly() {
            Ok(()) => info!(self.logger, "journal flushed, directory marked closed cleanly";
                            "final_sync_ms" => sync.as_millis() as u64),
            Err(e) => {
                error!(self.logger, "marking the directory closed cleanly failed"; "error" => %e)
            }
        }
    }
}
