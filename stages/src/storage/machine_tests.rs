//! The storage machine and its commit stage over a memory engine, as a node runs them:
//! answers before and after the group commit, durable and buffered writes, refused and
//! failed flushes.

use super::tests::{node, LIMITS, Q};
use super::*;
use crate::event::{Hint, OpId};
use crate::vclock::VClock;
use crate::versioning::VersionSet;
use std::sync::Arc;

/// Storage and its commit stage over one store, as a node runs them.
pub(super) struct Pair {
    pub(super) storage: StorageMachine,
    commit: CommitMachine,
}

/// A storage machine (worker 0) with `sync` and its commit machine over a fresh memory
/// engine, and that engine.
pub(super) fn memory_machine(sync: SyncMode) -> (Arc<MemoryEngine>, Pair) {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let commit = CommitMachine::new(store.clone(), logger);
    let storage = storage_worker(0, store, sync);
    (engine, Pair { storage, commit })
}

/// Storage worker `index` with `sync` over `store`.
fn storage_worker(index: usize, store: Store, sync: SyncMode) -> StorageMachine {
    let settings = StorageSettings {
        node: node(),
        sync,
        limits: LIMITS,
        ownership: None,
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    StorageMachine::new(index, store, settings, logger)
}

/// What the runtime does with storage's outbox: its answers go on, its commit events go to
/// the commit stage, whose answers (after its one flush) follow.
fn commit(machines: &mut Pair, now: Now, out: &mut Outbox) {
    let mut flushed = Outbox::new();
    for effect in out.take() {
        match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Commit(event),
                ..
            } => machines.commit.on_event(now, event, &mut flushed),
            crate::seda::Effect::Send { delivery, event } => out.send(delivery, event),
            other => panic!("storage produced {other:?}"),
        }
    }
    for effect in flushed.take() {
        if let crate::seda::Effect::Send { delivery, event } = effect {
            out.send(delivery, event);
        }
    }
}

pub(super) fn event(op: u64, request: StorageRequest) -> StorageEvent {
    StorageEvent {
        op: OpId(op),
        reply_to: ReplyTo::Coordinate,
        request,
    }
}

/// What a node does with a batch: storage's batch, then the commit stage's flush.
pub(super) fn whole_batch(
    machines: &mut Pair,
    now: Now,
    batch: &mut Vec<StorageEvent>,
    out: &mut Outbox,
) {
    machines.storage.on_batch(now, batch, out);
    commit(machines, now, out);
}

/// Goal: storage never waits for the disk: a batch's reads (and the early answer of its
/// durable write) leave it at once, and the durable write's final answer goes to the commit
/// stage in one event, answered as durable only after the commit stage's flush. Before the
/// commit stage, storage flushed on the thread that ran it, so it could not run on the
/// intake's loop with `sync = "always"`. Reference: SPEC §7.
#[test]
fn storage_answers_its_reads_at_once_and_the_commit_stage_answers_after_the_flush() {
    let (engine, mut machine) = memory_machine(SyncMode::Always);
    let read = read(b"other");
    let mut out = Outbox::new();
    machine.storage.on_batch(
        Now::real(),
        &mut vec![event(1, coordinate_put(b"k", false)), event(2, read)],
        &mut out,
    );
    let commits = out
        .effects()
        .iter()
        .filter(|effect| {
            matches!(
                effect,
                crate::seda::Effect::Send {
                    delivery: crate::seda::Delivery::Request,
                    event: crate::event::Event::Commit(commit),
                } if commit.waiting.len() == 1
            )
        })
        .count();
    // A request, never a waiting reply: storage runs on the intake's loop.
    assert_eq!(commits, 1, "one commit event, sent as a request");
    assert!(
        engine.unflushed_writes() > 0,
        "storage itself flushes nothing"
    );
    commit(&mut machine, Now::real(), &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, true, false), (2, true, false), (1, true, true)]
    );
    assert_eq!(engine.unflushed_writes(), 0);
}

/// The commit events in `out`, taken out of it (the other effects stay, in order).
fn commit_events(out: &mut Outbox) -> Vec<CommitEvent> {
    let mut events = Vec::new();
    for effect in out.take() {
        match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Commit(event),
                ..
            } => events.push(event),
            crate::seda::Effect::Send { delivery, event } => out.send(delivery, event),
            other => panic!("storage produced {other:?}"),
        }
    }
    events
}

/// Goal: group commit across batches: the commit stage flushes once for every commit event of
/// its batch (the writes of storage batches that queued while it was flushing), so one failed
/// flush fails them all and acknowledges none (were it one flush per event, only the first
/// would fail). With `sync = "periodic"`, storage's tick asks the commit stage for the flush
/// instead of flushing on storage's own thread. Reference: SPEC §7.
#[test]
fn the_commit_stage_flushes_once_for_the_batches_that_queued() {
    let (engine, mut machines) = memory_machine(SyncMode::Always);
    let now = Now::real();
    let mut out = Outbox::new();
    let mut first = vec![event(1, coordinate_put(b"a", false))];
    machines.storage.on_batch(now, &mut first, &mut out);
    let mut second = vec![event(2, coordinate_put(b"b", false))];
    machines.storage.on_batch(now, &mut second, &mut out);
    let mut events = commit_events(&mut out);
    assert_eq!(events.len(), 2, "one commit event per storage batch");
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, true, false), (2, true, false)],
        "applied at once, not yet durable"
    );
    engine.fail_flushes(1);
    machines.commit.on_batch(now, &mut events, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, false, false), (2, false, false)]
    );

    let (engine, mut machines) = memory_machine(SyncMode::Periodic);
    let mut out = Outbox::new();
    let mut batch = vec![event(3, coordinate_put(b"c", false))];
    machines.storage.on_batch(now, &mut batch, &mut out);
    assert_eq!(storage_answers(&mut out), vec![(3, true, false)]);
    machines.storage.on_tick(now, &mut out);
    assert_eq!(
        engine.unflushed_writes(),
        1,
        "storage's tick flushes nothing itself"
    );
    let mut events = commit_events(&mut out);
    assert_eq!(events.len(), 1, "the tick asks the commit stage");
    machines.commit.on_batch(now, &mut events, &mut out);
    assert_eq!(engine.unflushed_writes(), 0);
}

/// Goal: with `sync = "none"`, storage's tick (worker 0 only) asks the commit stage to start
/// the journal's writeback, which makes nothing durable and flushes nothing; a batch with a
/// write that must be on disk beside it flushes instead; "always" asks for nothing on its tick.
#[test]
fn sync_none_starts_the_journal_writeback_on_its_tick_and_flushes_nothing() {
    let now = Now::real();
    let (engine, mut machines) = memory_machine(SyncMode::None);
    let mut out = Outbox::new();
    let mut batch = vec![event(1, coordinate_put(b"a", false))];
    machines.storage.on_batch(now, &mut batch, &mut out);
    assert_eq!(storage_answers(&mut out), vec![(1, true, false)]);
    machines.storage.on_tick(now, &mut out);
    let mut events = commit_events(&mut out);
    assert_eq!(events.len(), 1, "the tick asks the commit stage");
    assert!(events[0].write_back && events[0].waiting.is_empty());
    machines.commit.on_batch(now, &mut events, &mut out);
    assert_eq!(engine.write_backs(), 1);
    assert_eq!(engine.unflushed_writes(), 1, "a writeback flushes nothing");
    assert!(storage_answers(&mut out).is_empty(), "and answers nobody");

    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    let mut other = storage_worker(1, store, SyncMode::None);
    other.on_tick(now, &mut out);
    assert!(commit_events(&mut out).is_empty(), "only worker 0 asks");

    machines.storage.on_tick(now, &mut out);
    let mut events = commit_events(&mut out);
    machines.storage.on_batch(
        now,
        &mut vec![event(2, coordinate_put(b"b", true))],
        &mut out,
    );
    events.extend(commit_events(&mut out));
    assert_eq!(events.len(), 2);
    machines.commit.on_batch(now, &mut events, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(2, true, false), (2, true, true)],
        "applied, then durable after the flush"
    );
    assert_eq!(engine.write_backs(), 1, "the flush covers the writeback");
    assert_eq!(engine.unflushed_writes(), 0);

    let (engine, mut machines) = memory_machine(SyncMode::Always);
    machines.storage.on_tick(now, &mut out);
    assert!(commit_events(&mut out).is_empty());
    assert_eq!(engine.write_backs(), 0);
}

/// Hands every commit event in `out` back to storage as refused with `error` (a full or
/// stopped commit queue), as the runtime does.
fn refuse_commits(storage: &mut StorageMachine, now: Now, error: &ServiceError, out: &mut Outbox) {
    for refused in commit_events(out) {
        storage.on_refused(now, refused.into(), error.clone(), out);
    }
}

/// Goal: storage never waits for a full commit queue (it runs on the intake's loop) and never
/// loses an answer to one: a refused commit event's answers go with the next batch's event (or
/// the next tick's), and are acknowledged only after that flush; a stopped commit stage's
/// answers are errors (not flushed, so not acknowledged).
#[test]
fn a_full_commit_queue_delays_the_answers_and_a_stopped_one_fails_them() {
    let (engine, mut machines) = memory_machine(SyncMode::Always);
    let now = Now::real();
    let full = ServiceError::Overloaded {
        stage: "commit".to_string(),
    };
    let mut out = Outbox::new();
    machines.storage.on_batch(
        now,
        &mut vec![event(1, coordinate_put(b"a", false))],
        &mut out,
    );
    refuse_commits(&mut machines.storage, now, &full, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, true, false)],
        "applied only"
    );
    machines.storage.on_batch(
        now,
        &mut vec![event(2, coordinate_put(b"b", false))],
        &mut out,
    );
    let mut events = commit_events(&mut out);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].waiting.len(),
        2,
        "the refused answer rides the next event"
    );
    machines.commit.on_batch(now, &mut events, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(2, true, false), (1, true, true), (2, true, true)]
    );
    assert_eq!(engine.unflushed_writes(), 0);

    machines.storage.on_batch(
        now,
        &mut vec![event(3, coordinate_put(b"c", false))],
        &mut out,
    );
    refuse_commits(&mut machines.storage, now, &full, &mut out);
    let _ = storage_answers(&mut out);
    machines.storage.on_tick(now, &mut out);
    let events = commit_events(&mut out);
    assert_eq!(events.len(), 1, "the tick sends what waits");
    machines.storage.on_refused(
        now,
        events.into_iter().next().expect("one").into(),
        ServiceError::ShuttingDown,
        &mut out,
    );
    assert_eq!(storage_answers(&mut out), vec![(3, false, false)]);
}

/// Goal: with `sync = "always"`, a batch whose flush fails acknowledges none of its writes
/// (each answer is a storage error) but still answers its reads; every answer goes to the
/// stage the event named. Reference: SPEC §7 group commit.
#[test]
fn failed_group_commit_acknowledges_no_write_of_the_batch() {
    let (engine, mut machine) = memory_machine(SyncMode::Always);
    engine.fail_flushes(1);
    let write = coordinate_put(b"k", false);
    let read = read(b"other");
    let mut out = Outbox::new();
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(1, write), event(2, read)],
        &mut out,
    );
    let answers: Vec<(u64, bool)> = out
        .take()
        .into_iter()
        .filter_map(|effect| match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Coordinate(crate::event::CoordinateEvent::Storage(done)),
                ..
            } => Some((done.op.0, done.result.is_ok())),
            _ => None,
        })
        .collect();
    // The write is answered as applied at once (its coordinator replicates meanwhile), the
    // read does not wait for the flush, and the failed flush is the write's final answer.
    assert_eq!(answers, vec![(1, true), (2, true), (1, false)]);
    let _ = Arc::clone(&engine);
}

/// The coordinator's storage answers of a batch: (op, succeeded, durable), in answer order.
pub(super) fn storage_answers(out: &mut Outbox) -> Vec<(u64, bool, bool)> {
    out.take()
        .into_iter()
        .filter_map(|effect| match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Coordinate(crate::event::CoordinateEvent::Storage(done)),
                ..
            } => Some((done.op.0, done.result.is_ok(), done.durable)),
            _ => None,
        })
        .collect()
}

/// A replica read of `key` (hints merged in).
fn read(key: &[u8]) -> StorageRequest {
    StorageRequest::Read {
        key: key.to_vec(),
        with_hints: true,
    }
}

fn coordinate_put(key: &[u8], durable: bool) -> StorageRequest {
    StorageRequest::CoordinatePut {
        key: key.to_vec(),
        context: VClock::new(),
        value: Some(b"v".to_vec()),
        now_ms: 1,
        durable,
        overwrite: false,
    }
}

/// Goal: Dynamo's buffered writes (§6.1) at one node with `sync = "none"`: in a batch, a
/// write that asked to be durable is answered after the batch's one flush and says it is on
/// disk; a buffered write and a read are answered before it and say they are not; a batch of
/// buffered writes alone does not flush, and a crash (power loss) then loses exactly those.
#[test]
fn durable_writes_wait_for_the_flush_and_buffered_ones_do_not() {
    let (engine, mut machine) = memory_machine(SyncMode::None);
    let read = read(b"other");
    let mut out = Outbox::new();
    let mut batch = vec![
        event(1, coordinate_put(b"durable", true)),
        event(2, coordinate_put(b"buffered", false)),
        event(3, read),
    ];
    whole_batch(&mut machine, Now::real(), &mut batch, &mut out);
    // The durable write's first answer says applied (not yet on disk), its second flushed.
    assert_eq!(
        storage_answers(&mut out),
        vec![
            (1, true, false),
            (2, true, false),
            (3, true, false),
            (1, true, true)
        ]
    );
    assert_eq!(
        engine.unflushed_writes(),
        0,
        "the durable write flushed the batch"
    );

    let mut batch = vec![event(4, coordinate_put(b"lost", false))];
    whole_batch(&mut machine, Now::real(), &mut batch, &mut out);
    assert_eq!(storage_answers(&mut out), vec![(4, true, false)]);
    assert_eq!(
        engine.unflushed_writes(),
        1,
        "a buffered batch does not flush"
    );

    engine.lose_power();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("reopens");
    assert_eq!(store.read(b"durable").expect("read").len(), 1);
    assert_eq!(store.read(b"buffered").expect("read").len(), 1);
    assert!(store.read(b"lost").expect("read").is_empty());
}

/// Goal: a node whose own `sync = "always"` flushes every write whatever the request asked,
/// and its answers say so (the reply's count of durable copies is honest).
#[test]
fn sync_always_makes_every_write_durable_even_when_not_asked() {
    let (engine, mut machine) = memory_machine(SyncMode::Always);
    let mut out = Outbox::new();
    let merge = StorageRequest::Merge {
        key: b"merged".to_vec(),
        versions: VersionSet::new(),
        durable: false,
    };
    let mut batch = vec![event(1, coordinate_put(b"k", false)), event(2, merge)];
    whole_batch(&mut machine, Now::real(), &mut batch, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, true, false), (1, true, true), (2, true, true)]
    );
    assert_eq!(engine.unflushed_writes(), 0);
}

/// Goal: under `sync = "always"` a delivered hint's deletion is answered without a flush of
/// its own (losing it only delivers the hint again), and the next write's flush takes it to
/// disk; a hint stored is flushed like any write.
#[test]
fn a_hint_deletion_waits_for_no_flush_even_with_sync_always() {
    let (engine, mut machine) = memory_machine(SyncMode::Always);
    let mut out = Outbox::new();
    let mut versions = VersionSet::new();
    versions
        .coordinate_put(&node(), &VClock::new(), Some(b"v".to_vec()), 1, 10)
        .expect("a version");
    let store = StorageRequest::StoreHint {
        target: NodeId::new("n2"),
        key: b"k".to_vec(),
        versions,
        durable: false,
    };
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(1, store)],
        &mut out,
    );
    assert_eq!(engine.unflushed_writes(), 0, "a stored hint is flushed");
    let read = StorageRequest::ReadHints {
        after: None,
        limit: 10,
    };
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(2, read)],
        &mut out,
    );
    let hints: Vec<Hint> = out
        .take()
        .into_iter()
        .filter_map(|effect| match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Coordinate(crate::event::CoordinateEvent::Storage(done)),
                ..
            } => match done.result {
                Ok(StorageOutcome::Hints { hints, .. }) => Some(hints),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(hints.len(), 1);

    let delete = StorageRequest::DeleteHints { hints };
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(3, delete)],
        &mut out,
    );
    assert_eq!(storage_answers(&mut out), vec![(3, true, false)]);
    assert_eq!(engine.unflushed_writes(), 1, "the deletion did not flush");

    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(4, coordinate_put(b"next", false))],
        &mut out,
    );
    assert_eq!(
        engine.unflushed_writes(),
        0,
        "the next write's flush took the deletion to disk"
    );
}

/// Goal: kill -9 loses no acknowledged write, whatever `sync` says: storage hands a batch's
/// writes to the OS before it answers any of them (one write-out per batch), a batch of reads
/// does too (another worker's write it read is out before the read is answered; a batch of
/// tree summaries, hashes only, does not), and when
/// the write-out fails it acknowledges none of the batch's writes and still answers its
/// reads. Fails if storage answered before writing out (the process crash would take the
/// acknowledged write, or the value a read passed on).
#[test]
fn writes_reach_the_os_before_their_answer_and_a_failed_write_out_acknowledges_none() {
    let (engine, mut machines) = memory_machine(SyncMode::None);
    let now = Now::real();
    let mut out = Outbox::new();
    let mut batch = vec![event(1, coordinate_put(b"a", false)), event(2, read(b"b"))];
    machines.storage.on_batch(now, &mut batch, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, true, false), (2, true, false)]
    );
    assert_eq!(engine.write_outs(), 1, "one write-out for the batch");
    engine.lose_process();
    // A new process's store: the old one's object cache went with it.
    let restarted = Store::with_engine(engine.clone(), &node(), Q, 0).expect("reopens");
    let kept = restarted.read(b"a").expect("reads");
    assert_eq!(kept.len(), 1, "the acknowledged write survives the process");

    // Another worker's write, visible before its own batch ends and writes it out.
    let other = machines.storage.store.clone();
    let written = other.coordinate_put(b"d", &VClock::new(), Some(vec![4]), 1, &LIMITS);
    assert!(written.is_ok());
    machines
        .storage
        .on_batch(now, &mut vec![event(3, read(b"d"))], &mut out);
    assert_eq!(storage_answers(&mut out), vec![(3, true, false)]);
    engine.lose_process();
    // A new process's store: the old one's object cache went with it.
    let restarted = Store::with_engine(engine.clone(), &node(), Q, 0).expect("reopens");
    let kept = restarted.read(b"d").expect("reads");
    assert_eq!(
        kept.len(),
        1,
        "what a read answered with survives the process"
    );

    // Trees and digests carry hashes only: a batch of them alone writes nothing out.
    let outs = engine.write_outs();
    machines.storage.on_batch(
        now,
        &mut vec![event(6, StorageRequest::TreeSummaries)],
        &mut out,
    );
    let _ = out.take();
    assert_eq!(engine.write_outs(), outs, "no write-out for hashes alone");

    engine.fail_write_outs(1);
    let mut batch = vec![event(4, coordinate_put(b"c", false)), event(5, read(b"a"))];
    machines.storage.on_batch(now, &mut batch, &mut out);
    assert_eq!(
        storage_answers(&mut out),
        vec![(4, false, false), (5, true, false)],
        "the write is refused, the read answered"
    );
}

/// Goal: the commit stage's stop marks the directory closed cleanly: the next open keeps the
/// actor after a good stop, and names a new one after a stop whose final flush failed (what it
/// covered may be lost). The second half holds by the stage's check and by the engine, which
/// refuses every write once a flush failed, as fjall does.
#[test]
fn the_commit_stage_marks_a_clean_close_only_after_its_final_flush() {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut out = Outbox::default();
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let actor = store.actor();
    CommitMachine::new(store, logger.clone()).on_stop(&mut out);
    let store = Store::with_engine(engine.clone(), &node(), Q, 2_000).expect("reopens");
    assert_eq!(store.actor(), actor, "a good stop keeps the actor");

    store
        .coordinate_put(b"k", &VClock::new(), Some(b"v".to_vec()), 1, &LIMITS)
        .expect("put");
    engine.fail_flushes(1);
    CommitMachine::new(store, logger).on_stop(&mut out);
    engine.restart();
    let store = Store::with_engine(engine, &node(), Q, 3_000).expect("reopens");
    assert_ne!(
        store.actor(),
        actor,
        "a failed final flush is no clean close"
    );
}
