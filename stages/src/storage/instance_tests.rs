//! The mark of a clean close on real fjall directories copied and restored as operators do
//! (`instance.rs`, `store/actor.rs`).

use super::instance::INSTANCE_FILE;
use super::tests::{node, Q};
use super::*;
use crate::vclock::VClock;
use std::path::Path;

/// Copies the files of a closed fjall directory as `cp -r` does; `skip` names one to leave
/// out (a restore that finds it unchanged).
fn copy_directory(from: &Path, to: &Path, skip: Option<&str>) {
    std::fs::create_dir_all(to).expect("creates the copy");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        if skip.is_some_and(|name| entry.file_name() == name) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_directory(&entry.path(), &target, None);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies");
        }
    }
}

/// A store of node n1 opened at `now_ms` that writes one key and closes cleanly.
fn run_and_close(dir: &Path, now_ms: u64) -> (NodeId, ActorOrigin) {
    let store = Store::open(dir, &node(), Q, now_ms).expect("opens");
    let run = (store.actor(), store.actor_origin());
    store
        .coordinate_put(b"k", &VClock::new(), Some(b"v".to_vec()), 1, &tests::LIMITS)
        .expect("put");
    store.close_cleanly().expect("closes");
    run
}

/// A directory where node n1 ran once and closed cleanly, its actor, and a copy taken then.
fn closed_with_backup() -> (tempfile::TempDir, NodeId, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (actor, _) = run_and_close(dir.path(), 1_000);
    let backup = tempfile::tempdir().expect("temp dir");
    copy_directory(dir.path(), backup.path(), None);
    (dir, actor, backup)
}

/// Goal: the mark of a clean close counts only in the copy of the directory that wrote it. A
/// copy taken at a clean close and opened later (a restore from a backup: the original's actor
/// may have made dots since, which other replicas hold) takes a new actor, while the original
/// keeps its own over its clean restarts; so does a directory whose instance file was removed.
#[test]
fn a_directory_restored_from_a_copy_takes_a_new_actor_and_the_original_keeps_its_own() {
    let (original, actor, backup) = closed_with_backup();
    let restored = Store::open(backup.path(), &node(), Q, 2_000).expect("the copy opens");
    assert_ne!(restored.actor(), actor, "a restored copy takes a new actor");
    assert_eq!(restored.actor_origin(), ActorOrigin::CopiedOrRebooted);
    let held = restored.read(b"k").expect("reads");
    assert_eq!(held.live_values().count(), 1, "the copy holds the data");
    drop(restored);

    assert_eq!(
        run_and_close(original.path(), 3_000),
        (actor.clone(), ActorOrigin::Kept),
        "the original keeps its actor"
    );
    std::fs::remove_file(original.path().join(INSTANCE_FILE)).expect("removes");
    let recreated = Store::open(original.path(), &node(), Q, 4_000).expect("reopens");
    assert_ne!(recreated.actor(), actor, "no instance file: a new actor");
    assert_eq!(recreated.actor_origin(), ActorOrigin::CopiedOrRebooted);
}

/// Goal: a backup restored into the live directory by a tool that skips files it judges
/// unchanged (`rsync --checksum`, or one that compares sizes alone) still takes a new actor:
/// the instance file is renewed by every open, so the live one is never the backup's even when
/// the restore leaves it in place.
#[test]
fn a_backup_restored_over_the_live_directory_takes_a_new_actor() {
    let (live, actor, backup) = closed_with_backup();
    // The node runs on, with the same actor, and stops cleanly again.
    assert_eq!(
        run_and_close(live.path(), 2_000),
        (actor.clone(), ActorOrigin::Kept)
    );

    // fjall's files and the backup's mark come back; the instance file is left as it is.
    copy_directory(backup.path(), live.path(), Some(INSTANCE_FILE));
    let restored = Store::open(live.path(), &node(), Q, 3_000).expect("opens");
    assert_ne!(restored.actor(), actor, "the backup's mark must not match");
    assert_eq!(restored.actor_origin(), ActorOrigin::CopiedOrRebooted);
}

/// Goal: the mark a build before instances wrote (`[1]` under `clean` in `meta`) does not keep
/// the actor, since it names no copy: an upgraded node takes a new actor once, says why, and
/// keeps that one over its next clean restart.
#[test]
fn a_mark_from_before_instances_takes_a_new_actor_once() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let actor = store.actor();
    drop(store);
    engine
        .insert(Space::Meta, b"clean", &[1])
        .expect("the old build's mark");
    let upgraded = Store::with_engine(engine.clone(), &node(), Q, 2_000).expect("reopens");
    assert_ne!(upgraded.actor(), actor, "an old mark names no copy");
    assert_eq!(upgraded.actor_origin(), ActorOrigin::MarkWithoutInstance);
    let renewed = upgraded.actor();
    upgraded.close_cleanly().expect("closes");
    drop(upgraded);
    let again = Store::with_engine(engine, &node(), Q, 3_000).expect("reopens");
    assert_eq!(
        (again.actor(), again.actor_origin()),
        (renewed, ActorOrigin::Kept)
    );
}

/// Goal: the memory engine, which the simulator restores from backups, models the instance
/// as fjall's engine does: a clean restart keeps the actor, a restored copy (taken at a clean
/// close, restored after the actor went on) does not, the restored node keeps its new actor
/// over its next clean restart, and a copy restored at once is still another file. Fails with
/// a constant instance (the first restore keeps the actor) and if `MemoryEngine::restore`
/// keeps the instance (the last one does).
#[test]
fn a_memory_engine_restored_from_a_backup_takes_a_new_actor() {
    let engine = MemoryEngine::new();
    let store = Store::with_engine(engine.clone(), &node(), Q, 1_000).expect("opens");
    let actor = store.actor();
    store.close_cleanly().expect("closes");
    drop(store);
    let backup = engine.backup();
    let kept = Store::with_engine(engine.clone(), &node(), Q, 2_000).expect("reopens");
    assert_eq!(
        (kept.actor(), kept.actor_origin()),
        (actor.clone(), ActorOrigin::Kept)
    );
    kept.close_cleanly().expect("closes");
    drop(kept);
    engine.restore(&backup);
    let restored = Store::with_engine(engine.clone(), &node(), Q, 3_000).expect("reopens");
    assert_ne!(
        restored.actor(),
        actor,
        "the backup's mark names another copy"
    );
    assert_eq!(restored.actor_origin(), ActorOrigin::CopiedOrRebooted);
    let renewed = restored.actor();
    restored.close_cleanly().expect("closes");
    drop(restored);
    let again = Store::with_engine(engine.clone(), &node(), Q, 4_000).expect("reopens");
    assert_eq!(
        (again.actor(), again.actor_origin()),
        (renewed, ActorOrigin::Kept)
    );
    again.close_cleanly().expect("closes");
    drop(again);
    let backup = engine.backup();
    engine.restore(&backup);
    let copied = Store::with_engine(engine, &node(), Q, 5_000).expect("reopens");
    assert_eq!(copied.actor_origin(), ActorOrigin::CopiedOrRebooted);
}

/// Goal: the simulator's backups hold what a copy of the files would: what was written out,
/// flushed or not, and not what the process still buffered; a restore drops what came after
/// the copy, and what it brings back survives a power loss (it is on the new disk). Fails if
/// `restore` only renewed the instance, or if `backup` copied the process's buffer.
#[test]
fn a_memory_engine_backup_holds_what_was_written_out_and_a_restore_drops_what_came_after() {
    let engine = MemoryEngine::new();
    let value = |key: &[u8]| engine.get(Space::Meta, key).expect("reads");
    engine
        .insert(Space::Meta, b"flushed", b"1")
        .expect("writes");
    engine.persist().expect("flushes");
    engine
        .insert(Space::Meta, b"written-out", b"2")
        .expect("writes");
    engine.write_out().expect("writes out");
    engine
        .insert(Space::Meta, b"buffered", b"3")
        .expect("writes");
    let backup = engine.backup();
    engine.insert(Space::Meta, b"after", b"4").expect("writes");
    engine.persist().expect("flushes");
    engine.restore(&backup);
    assert_eq!(value(b"flushed"), Some(b"1".to_vec()));
    assert_eq!(value(b"written-out"), Some(b"2".to_vec()));
    assert_eq!(value(b"buffered"), None, "a process's buffer is in no file");
    assert_eq!(value(b"after"), None, "written after the copy");
    engine.lose_power();
    assert_eq!(
        value(b"written-out"),
        Some(b"2".to_vec()),
        "restored data is on disk"
    );
}
