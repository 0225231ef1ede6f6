//! Large storage requests (merges, reads, digest scans) cut into steps that let the queue's
//! foreground events in between, and answered once, whole; and which steps a failed
//! write-out refuses.

use super::machine_tests::{event, memory_machine, storage_answers, whole_batch, Pair};
use super::tests::Q;
use super::*;
use crate::event::OpId;
use crate::vclock::VClock;
use crate::versioning::VersionSet;

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

/// Runs `request` as op 1 through the machine, playing storage's queue by hand with a
/// foreground read arriving while each rest waits; returns the final answer and how many
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

/// Goal: an anti-entropy sync is refused like a write after a failed write-out only if it
/// merges; one that only reads is answered, as a read is (a failed write-out makes the engine
/// refuse every later write, and what it answers with was read, not written).
#[test]
fn after_a_failed_write_out_a_merging_sync_is_refused_and_a_reading_one_answered() {
    let (engine, mut machine) = memory_machine(SyncMode::None);
    engine.fail_write_outs(1);
    let merging = StorageRequest::sync(vec![(b"m".to_vec(), version_of("peer", 1))], Vec::new());
    let reading = StorageRequest::sync(Vec::new(), vec![b"m".to_vec()]);
    let mut out = Outbox::new();
    whole_batch(
        &mut machine,
        Now::real(),
        &mut vec![event(1, merging), event(2, reading)],
        &mut out,
    );
    assert_eq!(
        storage_answers(&mut out),
        vec![(1, false, false), (2, true, false)]
    );
}
