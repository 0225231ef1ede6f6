//! One storage test suite, run against both engines (fjall, the product's, and memory, the
//! simulator's), so the simulator's engine behaves as the product's does; then the memory
//! engine's faults, and the machine's group commit.

use super::*;
use crate::event::{Hint, OpId};
use crate::vclock::VClock;
use crate::versioning::{Version, VersionSet};
use std::sync::Arc;

const LIMITS: VersionLimits = VersionLimits {
    max_clock_entries: 10,
    max_siblings: 3,
};

/// Q for the tests' stores.
const Q: u32 = 8;

fn node() -> NodeId {
    NodeId::new("n1")
}

/// A store over each engine; the temp dir (if any) lives as long as the store.
fn engines() -> Vec<(&'static str, Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let fjall = Store::open(dir.path(), &node(), Q, 0).expect("fjall opens");
    let memory = Store::with_engine(MemoryEngine::new(), &node(), Q, 0).expect("memory opens");
    vec![("fjall", fjall, Some(dir)), ("memory", memory, None)]
}

fn put(store: &Store, key: &[u8], context: &VClock, value: &[u8]) -> (VersionSet, Version) {
    store
        .coordinate_put(key, &node(), context, Some(value.to_vec()), 1, &LIMITS)
        .expect("put")
}

/// Goal: an absent key reads as no versions; a put creates one version with this node's
/// dot; a put with the returned context replaces it; blind puts add siblings up to the limit
/// and past it fail with nothing stored. Both engines.
#[test]
fn puts_version_and_bound_siblings_on_both_engines() {
    for (name, store, _dir) in engines() {
        assert!(store.read(b"k").expect("read").is_empty(), "{name}");
        let (set, version) = put(&store, b"k", &VClock::new(), b"a");
        assert_eq!(set.len(), 1, "{name}");
        assert_eq!(version.dot.node, node(), "{name}");
        let (set, _) = put(&store, b"k", &set.context(), b"b");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"b"[..]],
            "{name}"
        );
        put(&store, b"k", &VClock::new(), b"c");
        put(&store, b"k", &VClock::new(), b"d");
        let refused = store.coordinate_put(
            b"k",
            &node(),
            &VClock::new(),
            Some(b"e".to_vec()),
            1,
            &LIMITS,
        );
        assert!(
            matches!(
                refused,
                Err(StorageError::TooManySiblings { count: 4, max: 3 })
            ),
            "{name}"
        );
        assert_eq!(
            store.read(b"k").expect("read").len(),
            3,
            "{name}: nothing stored"
        );
    }
}

/// Goal: a replica merge is idempotent and keeps what neither side dominates.
#[test]
fn merges_are_idempotent_on_both_engines() {
    for (name, store, _dir) in engines() {
        let other = Store::with_engine(MemoryEngine::new(), &NodeId::new("n2"), Q, 0).expect("n2");
        let (theirs, _) = other
            .coordinate_put(
                b"k",
                &NodeId::new("n2"),
                &VClock::new(),
                Some(b"x".to_vec()),
                1,
                &LIMITS,
            )
            .expect("put");
        put(&store, b"k", &VClock::new(), b"a");
        let once = store.merge(b"k", &theirs).expect("merge");
        let twice = store.merge(b"k", &theirs).expect("merge again");
        assert_eq!(once, twice, "{name}");
        assert_eq!(once.len(), 2, "{name}: concurrent versions both kept");
    }
}

/// Goal: hints are kept apart from objects, read together with them for replica reads,
/// scanned in order with resumption, counted per target (and in all, without a scan), and
/// deleted only if unchanged.
#[test]
fn hints_round_trip_on_both_engines() {
    for (name, store, _dir) in engines() {
        let (set, _) = put(&store, b"k", &VClock::new(), b"a");
        let target = NodeId::new("n3");
        store.store_hint(&target, b"h1", &set).expect("hint");
        store.store_hint(&target, b"h2", &set).expect("hint");
        store
            .store_hint(&NodeId::new("n4"), b"h2", &set)
            .expect("hint");
        store
            .store_hint(&target, b"h1", &set)
            .expect("a hint again");
        assert_eq!(
            store.hints_held(),
            3,
            "{name}: a merged hint is not a new one"
        );
        assert!(
            store.read(b"h1").expect("read").is_empty(),
            "{name}: hints are not objects"
        );
        assert_eq!(store.read_with_hints(b"h1").expect("read"), set, "{name}");
        let first = store.hints_batch(None, 2).expect("batch");
        assert_eq!(first.len(), 2, "{name}");
        let rest = store
            .hints_batch(Some(&first[1].hint_key), 10)
            .expect("batch");
        assert_eq!(rest.len(), 1, "{name}: resumes after the cursor");
        let counts = store.pending_hints().expect("count");
        assert_eq!(counts.get(&target), Some(&2), "{name}");
        let stale = Hint {
            versions: VersionSet::new(),
            ..first[0].clone()
        };
        assert!(
            !store.delete_hint_if_unchanged(&stale).expect("delete"),
            "{name}"
        );
        assert!(
            store.delete_hint_if_unchanged(&first[0]).expect("delete"),
            "{name}"
        );
        assert_eq!(
            store.pending_hints().expect("count").values().sum::<u64>(),
            2,
            "{name}"
        );
        assert_eq!(
            store.hints_held(),
            2,
            "{name}: the kept count agrees with a scan"
        );
    }
}

/// The memory engine, counting the scans of the hints keyspace.
struct CountingHintScans {
    inner: Arc<MemoryEngine>,
    scans: std::sync::atomic::AtomicUsize,
}

impl Engine for CountingHintScans {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(space, key)
    }
    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.inner.insert(space, key, value)
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        self.inner.remove(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<engine::Entries, StorageError> {
        if space == Space::Hints {
            self.scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.scan(space, prefix, after, limit)
    }
    fn persist(&self) -> Result<std::time::Duration, StorageError> {
        self.inner.persist()
    }
    fn write_back(&self) -> Result<(), StorageError> {
        self.inner.write_back()
    }
}

/// Goal: with no hint held (the exact count says so), handoff's every-tick read of the next
/// hints and the per-node count read nothing from the engine: after a delivered backlog its
/// tombstones would make each such scan walk thousands of deleted hints. Once a hint is
/// held, both find it. Method: the memory engine behind a wrapper that counts hint scans.
#[test]
fn no_hint_held_means_no_scan_of_the_hints_keyspace() {
    let engine = Arc::new(CountingHintScans {
        inner: MemoryEngine::new(),
        scans: Default::default(),
    });
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    let scans = || engine.scans.load(std::sync::atomic::Ordering::Relaxed);
    let at_open = scans();

    assert!(store.hints_batch(None, 100).expect("batch").is_empty());
    assert!(store.pending_hints().expect("count").is_empty());
    assert_eq!(scans(), at_open, "nothing held: nothing scanned");

    let (set, _) = put(&store, b"k", &VClock::new(), b"a");
    store
        .store_hint(&NodeId::new("n3"), b"h", &set)
        .expect("hint");
    let batch = store.hints_batch(None, 100).expect("batch");
    assert_eq!(batch.len(), 1, "a held hint is found");
    assert_eq!(store.pending_hints().expect("count").len(), 1);

    assert!(store.delete_hint_if_unchanged(&batch[0]).expect("delete"));
    let after_delete = scans();
    assert!(store.hints_batch(None, 100).expect("batch").is_empty());
    assert_eq!(scans(), after_delete, "all delivered: no scan again");
}

/// Goal: an engine that holds another node's data is refused with an error naming both.
#[test]
fn another_nodes_data_is_refused_on_both_engines() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(Store::open(dir.path(), &node(), Q, 0).expect("opens"));
    let error = Store::open(dir.path(), &NodeId::new("n9"), Q, 0)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("n1"), "{error}");
    let memory = MemoryEngine::new();
    drop(Store::with_engine(memory.clone(), &node(), Q, 0).expect("opens"));
    assert!(Store::with_engine(memory, &NodeId::new("n9"), Q, 0).is_err());
}

/// Goal: what was flushed survives a crash and what was not is lost, exactly (the
/// simulator's model of power loss); a failed flush keeps the writes pending and poisons the
/// engine, as fjall's: every later write and flush is refused until the process restarts,
/// and the first flush after that makes them durable. The store reports that state (what
/// `admin stats` and `/health` show) while it lasts.
#[test]
fn memory_engine_crash_loses_exactly_the_unflushed_writes() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("opens");
    put(&store, b"flushed", &VClock::new(), b"a");
    store.persist().expect("flush");
    put(&store, b"unflushed", &VClock::new(), b"b");
    assert_eq!(engine.unflushed_writes(), 1);
    engine.lose_power();
    let store = Store::with_engine(engine.clone(), &node(), Q, 0).expect("reopens");
    assert_eq!(store.read(b"flushed").expect("read").len(), 1);
    assert!(store.read(b"unflushed").expect("read").is_empty());

    assert_eq!(
        store.failure(),
        None,
        "a healthy store has no failure to report"
    );
    engine.fail_flushes(1);
    put(&store, b"retried", &VClock::new(), b"c");
    assert!(matches!(
        store.persist(),
        Err(StorageError::Simulated { .. })
    ));
    assert!(matches!(
        store.persist(),
        Err(StorageError::JournalFailed { .. })
    ));
    assert!(engine.poisoned());
    let refused = store.coordinate_put(
        b"refused",
        &node(),
        &VClock::new(),
        Some(b"d".to_vec()),
        1,
        &LIMITS,
    );
    assert!(matches!(refused, Err(StorageError::JournalFailed { .. })));
    let failure = store.failure().expect("a poisoned store reports why");
    assert!(
        failure.contains("refused until the node restarts"),
        "{failure}"
    );
    engine.restart();
    assert_eq!(store.failure(), None, "the poison goes with the process");
    store
        .persist()
        .expect("the first flush after the restart succeeds");
    engine.lose_power();
    assert_eq!(store.read(b"retried").expect("read").len(), 1);
}

/// Storage and its commit stage over one store, as a node runs them.
struct Pair {
    storage: StorageMachine,
    commit: CommitMachine,
}

/// A storage machine (worker 0) with `sync` and its commit machine over a fresh memory
/// engine, and that engine.
fn memory_machine(sync: SyncMode) -> (Arc<MemoryEngine>, Pair) {
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

fn event(op: u64, request: StorageRequest) -> StorageEvent {
    StorageEvent {
        op: OpId(op),
        reply_to: ReplyTo::Coordinate,
        request,
    }
}

/// What a node does with a batch: storage's batch, then the commit stage's flush.
fn whole_batch(machines: &mut Pair, now: Now, batch: &mut Vec<StorageEvent>, out: &mut Outbox) {
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
    let read = StorageRequest::Read {
        key: b"other".to_vec(),
        with_hints: true,
    };
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
    let write = StorageRequest::CoordinatePut {
        key: b"k".to_vec(),
        context: VClock::new(),
        value: Some(b"v".to_vec()),
        now_ms: 1,
        durable: false,
        overwrite: false,
    };
    let read = StorageRequest::Read {
        key: b"other".to_vec(),
        with_hints: true,
    };
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
fn storage_answers(out: &mut Outbox) -> Vec<(u64, bool, bool)> {
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
    let read = StorageRequest::Read {
        key: b"other".to_vec(),
        with_hints: true,
    };
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

/// Goal: an overwrite (the Redis door's `SET`) supersedes every version stored, whatever its
/// context covers, so repeated blind overwrites leave one value, where blind puts leave
/// siblings; versions merged in from another coordinator are superseded by the next
/// overwrite too. Both engines.
#[test]
fn overwrites_supersede_every_stored_version_on_both_engines() {
    for (name, store, _dir) in engines() {
        put(&store, b"blind", &VClock::new(), b"a");
        put(&store, b"blind", &VClock::new(), b"b");
        assert_eq!(store.read(b"blind").expect("read").len(), 2, "{name}");

        let overwrite = |value: &[u8]| {
            store
                .coordinate_overwrite(
                    b"k",
                    &node(),
                    &VClock::new(),
                    Some(value.to_vec()),
                    1,
                    &LIMITS,
                )
                .expect("overwrite")
        };
        overwrite(b"a");
        let (set, _) = overwrite(b"b");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"b"[..]],
            "{name}"
        );

        // A concurrent version from another coordinator: a sibling until the next overwrite.
        let mut other = VersionSet::new();
        other
            .coordinate_put(
                &NodeId::new("n2"),
                &VClock::new(),
                Some(b"x".to_vec()),
                2,
                10,
            )
            .expect("a version");
        assert_eq!(store.merge(b"k", &other).expect("merge").len(), 2, "{name}");
        let (set, _) = overwrite(b"c");
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&b"c"[..]],
            "{name}"
        );
    }
}

/// Goal: a merge of many objects (a hint batch, an anti-entropy exchange) holds the storage
/// stage at most [`MERGE_CHUNK`] objects at a time: each pass merges one chunk, unflushed, and
/// queues the rest behind the foreground work that arrived meanwhile (answered first); the
/// asker hears once, after the last chunk's one flush, with the reads; a rest refused by a
/// full queue answers the asker `Overloaded`. Method: a machine over the memory engine, its
/// queue played by hand, a foreground read arriving while each rest waits.
#[test]
fn a_large_merge_yields_to_the_queue_in_chunks_and_answers_once_when_whole() {
    let (engine, mut machine) = memory_machine(SyncMode::Always);
    let objects: Vec<(Vec<u8>, VersionSet)> = (0..70u8)
        .map(|i| (vec![b'k', i], version_of("peer", i)))
        .collect();
    // A key stored before: a sync reads before it merges.
    let kept = version_of("peer", 1);
    let mut out = Outbox::new();
    let first = StorageRequest::sync(vec![(b"kept".to_vec(), kept)], Vec::new());
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(9, first)],
        &mut out,
    );
    out.take();
    let sync = StorageRequest::sync(objects, vec![b"kept".to_vec()]);
    let read = |op| {
        let request = StorageRequest::Read {
            key: b"other".to_vec(),
            with_hints: false,
        };
        event(op, request)
    };
    let mut queue = std::collections::VecDeque::from([event(1, sync)]);
    let mut rests = Vec::new();
    let mut unflushed_between = Vec::new();
    let mut answers = Vec::new();
    while let Some(next) = queue.pop_front() {
        let mut out = Outbox::new();
        whole_batch(&mut machine, Now::real(), &mut vec![next], &mut out);
        for effect in out.take() {
            match effect {
                crate::seda::Effect::Send {
                    event: crate::event::Event::Storage(rest),
                    ..
                } => {
                    if let StorageRequest::Sync { merge, .. } = &rest.request {
                        rests.push(merge.len());
                    }
                    unflushed_between.push(engine.unflushed_writes());
                    // A foreground read arrives while the rest waits in the queue.
                    queue.push_back(read(100 + rests.len() as u64));
                    queue.push_back(rest);
                }
                crate::seda::Effect::Send {
                    event:
                        crate::event::Event::Coordinate(crate::event::CoordinateEvent::Storage(done)),
                    ..
                } => answers.push(done),
                _ => {}
            }
        }
    }
    assert_eq!(rests, vec![70 - MERGE_CHUNK, 70 - 2 * MERGE_CHUNK]);
    assert!(
        unflushed_between.iter().all(|&n| n > 0),
        "a chunk with a rest is not flushed: {unflushed_between:?}"
    );
    assert_eq!(
        engine.unflushed_writes(),
        0,
        "the last chunk flushed it all"
    );
    let order: Vec<u64> = answers.iter().map(|done| done.op.0).collect();
    assert_eq!(
        order,
        vec![101, 102, 1],
        "the reads first, the merge once, last"
    );
    let done = answers.pop().expect("the merge's answer");
    assert!(done.durable, "answered after the last chunk's flush");
    match done.result {
        Ok(StorageOutcome::Objects(read)) => {
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].0, b"kept".to_vec());
        }
        other => panic!("the reads, not {other:?}"),
    }
    assert_eq!(machine.storage.store.objects().expect("scan").len(), 71);

    // A rest refused by a full queue: the asker hears Overloaded.
    let objects: Vec<(Vec<u8>, VersionSet)> = (0..40u8)
        .map(|i| (vec![b'r', i], VersionSet::new()))
        .collect();
    let sync = StorageRequest::sync(objects, Vec::new());
    let mut out = Outbox::new();
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(2, sync)],
        &mut out,
    );
    let rest = out
        .take()
        .into_iter()
        .find_map(|effect| match effect {
            crate::seda::Effect::Send {
                event: crate::event::Event::Storage(rest),
                ..
            } => Some(rest),
            _ => None,
        })
        .expect("a rest was queued");
    let full = ServiceError::Overloaded {
        stage: "storage".into(),
    };
    machine.storage.on_refused(
        Now::real(),
        crate::event::Event::Storage(rest),
        full,
        &mut out,
    );
    assert_eq!(storage_answers(&mut out), vec![(2, false, false)]);
}

/// Goal: the object cache never disagrees with the engine. With a cache small enough to evict
/// all the time, every read through the caching store equals a cache-less store's read of the
/// same engine, after coordinated puts, merges from another node and purges, and the cache
/// keeps within its budget.
#[test]
fn the_object_cache_always_agrees_with_the_engine() {
    let engine = MemoryEngine::new();
    let budget = 256 * 600; // about one entry per lock stripe
    let cached = Store::with_engine(engine.clone(), &node(), Q, 0)
        .expect("opens")
        .with_object_cache(budget);
    let uncached = Store::with_engine(engine, &node(), Q, 0)
        .expect("opens")
        .with_object_cache(0);
    let other = NodeId::new("n2");
    for step in 0..600u32 {
        let key = format!("key-{}", step % 40).into_bytes();
        let seen = cached.read(&key).expect("read");
        // Every key sees each kind of step in turn (rounds of 40 steps).
        match (step / 40) % 5 {
            0 | 1 => {
                put(
                    &cached,
                    &key,
                    &seen.context(),
                    format!("v{step}").as_bytes(),
                );
            }
            2 => {
                let mut incoming = VersionSet::new();
                let written = incoming.coordinate_put(&other, &VClock::new(), Some(vec![1]), 1, 10);
                assert!(written.is_ok());
                cached.merge(&key, &incoming).expect("merge");
            }
            3 if !seen.is_empty() => {
                assert!(cached.purge_if_unchanged(&key, &seen).expect("purge"));
            }
            _ => {
                put(&cached, &key, &VClock::new(), b"blind");
            }
        }
        assert_eq!(
            cached.read(&key).expect("cached read"),
            uncached.read(&key).expect("engine read"),
            "step {step}"
        );
        assert!(cached.object_cache_bytes() <= budget);
    }
    assert!(uncached.object_cache_bytes() == 0);
}

/// Runs `request` as op 1 through the machine, playing storage's queue by hand with a
/// foreground read arriving while each rest waits; returns the final answer and how many
/// A version set of one version, written by `writer` with `value`.
fn version_of(writer: &str, value: u8) -> VersionSet {
    let mut set = VersionSet::new();
    set.coordinate_put(
        &NodeId::new(writer),
        &VClock::new(),
        Some(vec![value]),
        1,
        10,
    )
    .expect("a version");
    set
}

/// rests were queued.
fn run_in_steps(machine: &mut Pair, request: StorageRequest) -> (StorageDone, usize) {
    let mut queue = std::collections::VecDeque::from([event(1, request)]);
    let mut rests = 0;
    let mut answer = None;
    while let Some(next) = queue.pop_front() {
        let mut out = Outbox::new();
        whole_batch(machine, Now::real(), &mut vec![next], &mut out);
        for effect in out.take() {
            match effect {
                crate::seda::Effect::Send {
                    event: crate::event::Event::Storage(rest),
                    ..
                } => {
                    rests += 1;
                    let read = StorageRequest::Read {
                        key: b"other".to_vec(),
                        with_hints: false,
                    };
                    queue.push_back(event(100 + rests as u64, read));
                    queue.push_back(rest);
                }
                crate::seda::Effect::Send {
                    event:
                        crate::event::Event::Coordinate(crate::event::CoordinateEvent::Storage(done)),
                    ..
                } if done.op == OpId(1) => answer = Some(done),
                _ => {}
            }
        }
    }
    (answer.expect("the request was answered"), rests)
}

/// Goal: anti-entropy's reads hold the storage stage (and so the intake loop it runs on) a
/// step at a time: a sync reads at most [`READ_CHUNK`] keys a step and a digest scan about
/// [`DIGEST_CHUNK`] keys' worth of segments, each rest queued behind the foreground work
/// that arrived meanwhile; the one answer is the same as an uncut request's, and a scan
/// that reaches its limit answers without scanning the rest. Issue 10's benchmark saw loop
/// turns of 20-90 ms while a wiped replica was rebuilt.
#[test]
fn large_reads_and_digest_scans_yield_to_the_queue_in_steps() {
    let (_engine, mut machine) = memory_machine(SyncMode::None);
    let objects: Vec<(Vec<u8>, VersionSet)> = (0..600u16)
        .map(|i| (format!("key-{i}").into_bytes(), version_of("peer", 1)))
        .collect();
    let keys: Vec<Vec<u8>> = objects.iter().map(|(key, _)| key.clone()).collect();
    let (stored, _) = run_in_steps(&mut machine, StorageRequest::sync(objects, Vec::new()));
    assert!(stored.result.is_ok(), "{stored:?}");

    // 150 reads (and a missing key): three steps of at most 64, in the order asked.
    let mut wanted: Vec<Vec<u8>> = keys[..150].to_vec();
    wanted.insert(70, b"missing".to_vec());
    let (done, rests) = run_in_steps(&mut machine, StorageRequest::sync(Vec::new(), wanted));
    assert_eq!(rests, 2, "151 keys: steps of {READ_CHUNK}");
    match done.result {
        Ok(StorageOutcome::Objects(read)) => {
            let read: Vec<Vec<u8>> = read.into_iter().map(|(key, _)| key).collect();
            assert_eq!(read, keys[..150].to_vec());
        }
        other => panic!("the reads, not {other:?}"),
    }

    // Every segment of the partition holding the most keys, in steps; the same digests as
    // one scan.
    let store = machine.storage.store.clone();
    let shape = crate::merkle::TreeShape::for_partitions(Q);
    let all: Vec<u16> = (0..shape.segments() as u16).collect();
    let partition = (0..Q)
        .max_by_key(|&p| {
            store
                .segment_digests(p, &all, usize::MAX)
                .map_or(0, |d| d.len())
        })
        .expect("a partition");
    let whole = store
        .segment_digests(partition, &all, usize::MAX)
        .expect("one scan");
    assert!(whole.len() > 10, "{} keys", whole.len());
    let request = StorageRequest::segment_digests(partition, all.clone(), usize::MAX);
    let (done, rests) = run_in_steps(&mut machine, request);
    let per_step = (DIGEST_CHUNK / store.keys_per_segment(partition)).max(1);
    assert_eq!(rests, all.len().div_ceil(per_step) - 1);
    assert!(rests > 0, "{} segments, {per_step} a step", all.len());
    match done.result {
        Ok(StorageOutcome::Digests(digests)) => assert_eq!(digests, whole),
        other => panic!("the digests, not {other:?}"),
    }

    // A limit reached in the first step: answered then, the rest never queued.
    let first_step = store
        .segment_digests(partition, &all[..per_step], usize::MAX)
        .expect("one step's scan")
        .len();
    assert!(first_step > 0, "the first step's segments hold keys");
    let request = StorageRequest::segment_digests(partition, all, first_step);
    let (done, rests) = run_in_steps(&mut machine, request);
    assert_eq!(rests, 0);
    match done.result {
        Ok(StorageOutcome::Digests(digests)) => {
            assert_eq!(digests, whole[..first_step].to_vec())
        }
        other => panic!("the digests, not {other:?}"),
    }
}

/// Goal: a sync reads before it merges: a key it both merges and reads is answered as it
/// was stored before (the asker merges that into its own and ends with the same union as
/// this node), and is stored merged. Anti-entropy's exchange sends such a key both ways.
#[test]
fn a_sync_answers_a_key_it_also_merges_as_it_was_stored_before() {
    let (_engine, mut machine) = memory_machine(SyncMode::None);
    let stored = version_of("a", 1);
    let incoming = version_of("b", 2);
    let first = StorageRequest::sync(vec![(b"k".to_vec(), stored.clone())], Vec::new());
    let (done, _) = run_in_steps(&mut machine, first);
    assert!(done.result.is_ok(), "{done:?}");

    let both = StorageRequest::sync(vec![(b"k".to_vec(), incoming.clone())], vec![b"k".to_vec()]);
    let (done, _) = run_in_steps(&mut machine, both);
    match done.result {
        Ok(StorageOutcome::Objects(read)) => {
            assert_eq!(read, vec![(b"k".to_vec(), stored.clone())])
        }
        other => panic!("the read, not {other:?}"),
    }
    let mut union = stored;
    union.merge(&incoming);
    assert_eq!(union.len(), 2, "concurrent versions: siblings");
    let now = machine.storage.store.read(b"k").expect("a read");
    assert_eq!(now, union);
}
