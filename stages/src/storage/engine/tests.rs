//! fjall's journal as the engine handles it: the active file found, followed across rotations,
//! written out, flushed and written back; a failed flush final, and fjall's own poisoning seen
//! as one.

use super::*;

fn journal_files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("data dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
        .collect()
}

/// A fresh engine whose key `k` (`v`) is flushed, in its temp dir.
fn engine_holding_k() -> (tempfile::TempDir, FjallEngine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = FjallEngine::open(dir.path()).expect("opens");
    engine.insert(Space::Objects, b"k", b"v").expect("insert");
    engine.persist().expect("persist");
    (dir, engine)
}

/// Goal: the flush finds fjall's active journal by its name: the highest `<id>.jnl`,
/// whatever else the directory holds.
#[test]
fn the_newest_journal_is_the_highest_numbered_jnl_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in [
        "0.jnl", "3.jnl", "12.jnl", "7.jnl", "20.tmp", "lock", "x.jnl",
    ] {
        std::fs::write(dir.path().join(name), b"").expect("file");
    }
    assert_eq!(newest_journal(dir.path()).expect("found"), 12);
    let empty = tempfile::tempdir().expect("temp dir");
    let error = newest_journal(empty.path()).expect_err("no journal");
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

/// Goal: a flush keeps its handle without listing the directory only while that journal
/// is still the active one: its successor `id + 1` absent and the file itself still there.
#[test]
fn the_held_journal_is_active_until_its_successor_appears_or_it_is_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("3.jnl"), b"").expect("file");
    let file = File::open(dir.path().join("3.jnl")).expect("open");
    assert!(still_active(dir.path(), &file, 3).expect("checked"));
    std::fs::write(dir.path().join("4.jnl"), b"").expect("file");
    assert!(!still_active(dir.path(), &file, 3).expect("checked"));
    std::fs::remove_file(dir.path().join("4.jnl")).expect("remove");
    assert!(still_active(dir.path(), &file, 3).expect("checked"));
    // Renamed away (as NFS does with a removed open file): still linked, no longer `3.jnl`.
    std::fs::rename(dir.path().join("3.jnl"), dir.path().join("3.moved")).expect("rename");
    assert!(!still_active(dir.path(), &file, 3).expect("checked"));
    std::fs::rename(dir.path().join("3.moved"), dir.path().join("3.jnl")).expect("rename");
    assert!(still_active(dir.path(), &file, 3).expect("checked"));
    // Another file under the held one's name is not the held file.
    std::fs::remove_file(dir.path().join("3.jnl")).expect("remove");
    std::fs::write(dir.path().join("3.jnl"), b"").expect("file");
    assert!(!still_active(dir.path(), &file, 3).expect("checked"));
    std::fs::remove_file(dir.path().join("3.jnl")).expect("remove");
    assert!(!still_active(dir.path(), &file, 3).expect("checked"));
    assert!(!still_active(dir.path(), &file, u64::MAX).expect("checked"));
}

/// Goal: the flush follows fjall's journal when fjall rotates it (here by flushing a
/// memtable after more than 64 MB of journal): the next flush syncs the new file, and
/// the write after the rotation is in it.
#[test]
fn persist_follows_the_journal_across_a_rotation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, second) = rotated(dir.path());
    let marker = b"written-after-the-rotation".repeat(16);
    engine
        .insert(Space::Objects, b"after", &marker)
        .expect("insert");
    engine.persist().expect("persist after the rotation");
    assert_eq!(
        active(&engine),
        Some(second),
        "the flush synced an old journal"
    );
    let bytes = std::fs::read(journal_path(dir.path(), second)).expect("journal");
    assert!(bytes.windows(marker.len()).any(|window| window == marker));
}

/// Goal: `sync = "none"`'s writeback works on the journal fjall writes now, across a
/// rotation, and does nothing (not even a look for the journal) when nothing was written
/// since the last one.
#[test]
fn write_back_follows_the_journal_across_a_rotation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, second) = rotated(dir.path());
    engine.write_back().expect("write back after the rotation");
    assert_eq!(active(&engine), Some(second), "wrote back an old journal");
    *engine.journal.lock().expect("lock") = None;
    engine.write_back().expect("nothing written since");
    assert_eq!(
        active(&engine),
        None,
        "looked for the journal with nothing to do"
    );
    engine
        .insert(Space::Objects, b"after", b"v")
        .expect("insert");
    engine.write_back().expect("write back after a write");
    assert_eq!(active(&engine), Some(second));
}

/// Goal: the writeback follows what fjall wrote, not the journal file's length (fjall
/// sets a new journal's length to 64 MiB before writing): it covers the written bytes
/// but the last MiB, and moves on as more are written.
#[test]
fn write_back_covers_what_was_written_and_moves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = FjallEngine::open(dir.path()).expect("opens");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let advised = |engine: &FjallEngine| engine.advised.lock().expect("lock").1;
    write_mib(&engine, 0..3, &mut state);
    engine.write_back().expect("write back");
    let first = advised(&engine);
    assert!(
        first > 0 && first <= 3 << 20,
        "advised up to {first} after 3 MiB written"
    );
    write_mib(&engine, 3..6, &mut state);
    engine.write_back().expect("write back");
    let second = advised(&engine);
    assert!(
        second > first && second <= 6 << 20,
        "advised up to {second} after 6 MiB written (first {first})"
    );
}

/// Writes one MiB of incompressible bytes (xorshift from `state`, so the journal grows by
/// what is written) under each key of `keys`.
fn write_mib(engine: &FjallEngine, keys: std::ops::Range<u32>, state: &mut u64) {
    for i in keys {
        let value: Vec<u8> = (0..1 << 17)
            .flat_map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                state.to_le_bytes()
            })
            .collect();
        engine
            .insert(Space::Objects, &i.to_be_bytes(), &value)
            .expect("insert");
    }
}

/// The journal file our handle is on.
fn active(engine: &FjallEngine) -> Option<u64> {
    engine
        .journal
        .lock()
        .expect("lock")
        .as_ref()
        .map(|(id, _)| *id)
}

/// An engine in `dir` whose handle is on its first journal, after fjall rotated to a new
/// one (by flushing a memtable after more than 64 MB of journal); the new one's id.
fn rotated(dir: &Path) -> (FjallEngine, u64) {
    let engine = FjallEngine::open(dir).expect("opens");
    engine.persist().expect("persist");
    let first = newest_journal(dir).expect("journal");
    write_mib(&engine, 0..66, &mut 0x9e37_79b9_7f4a_7c15);
    engine
        .keyspace(Space::Objects)
        .rotate_memtable_and_wait()
        .expect("memtable flushed");
    let second = newest_journal(dir).expect("journal");
    // `still_active` relies on a rotation's next journal being `id + 1`.
    assert_eq!(second, first + 1, "a rotation from journal {first}");
    (engine, second)
}

/// Goal: a flush that cannot find the journal fails alone (nothing written was lost, so
/// the next flush that finds it succeeds), and says where it looked.
#[test]
fn a_flush_that_cannot_find_the_journal_fails_alone() {
    let (dir, engine) = engine_holding_k();
    for path in journal_files_in(dir.path()) {
        std::fs::remove_file(path).expect("remove journal");
    }
    match engine.persist() {
        Err(StorageError::Journal { path, .. }) => {
            assert_eq!(
                Path::new(&path),
                std::path::absolute(dir.path()).expect("abs")
            )
        }
        other => panic!("expected a journal error, got {other:?}"),
    }
    std::fs::write(dir.path().join("999.jnl"), b"").expect("a journal again");
    engine
        .persist()
        .expect("the next flush that finds a journal");
    engine
        .insert(Space::Objects, b"k2", b"v")
        .expect("writes go on");
}

/// Goal: a failed fdatasync is final: every later flush and write is refused with its
/// reason (after a writeback error a later fdatasync could succeed over the lost pages),
/// and reads go on. Method: the fdatasync of a pipe, which Linux refuses (EINVAL).
#[test]
fn after_a_failed_fdatasync_every_write_and_flush_is_refused() {
    let (_dir, engine) = engine_holding_k();
    let (_reader, writer) = std::io::pipe().expect("pipe");
    let pipe = File::from(std::os::fd::OwnedFd::from(writer));
    assert!(engine.sync_or_fail(&pipe, 7).is_err());
    let refused = |result: Result<(), StorageError>| match result {
        Err(StorageError::JournalFailed { reason }) => assert!(reason.contains("7.jnl")),
        other => panic!("expected a refusal, got {other:?}"),
    };
    refused(engine.persist().map(drop));
    refused(engine.insert(Space::Objects, b"k2", b"v"));
    refused(engine.remove(Space::Objects, b"k"));
    assert_eq!(
        engine.get(Space::Objects, b"k").expect("reads go on"),
        Some(b"v".to_vec())
    );
    assert!(engine.failure().is_some_and(|f| f.contains("7.jnl")));
}

/// Goal: when fjall poisons itself (one of its own syncs failed), the engine records it
/// as its failure: writes and flushes are refused with that reason, `failure` (what
/// `/health` reports) says so, and reads go on. Method: fjall's `Poisoned` error passed
/// through `checked`, which insert, remove and persist route fjall's results through
/// (fjall's own sync failures cannot be caused from a test, so that routing is read, not
/// tested; an I/O error on a healthy fjall is also checked to leave it healthy).
#[test]
fn fjall_poisoning_itself_counts_as_the_engines_failure() {
    let (_dir, engine) = engine_holding_k();
    assert_eq!(engine.failure(), None);
    let io = engine.checked::<()>(Err(fjall::Error::Io(std::io::Error::other("disk"))));
    assert!(matches!(io, Err(StorageError::Engine(_))));
    assert_eq!(engine.failure(), None, "an I/O error alone does not poison");
    let refused = engine.checked::<()>(Err(fjall::Error::Poisoned));
    assert!(matches!(refused, Err(StorageError::JournalFailed { .. })));
    assert!(engine
        .failure()
        .is_some_and(|f| f.contains("poisoned itself")));
    assert!(matches!(
        engine.insert(Space::Objects, b"k2", b"v"),
        Err(StorageError::JournalFailed { .. })
    ));
    assert_eq!(
        engine.get(Space::Objects, b"k").expect("reads go on"),
        Some(b"v".to_vec())
    );
}

/// Whether a journal file in `dir`, as the OS has it, contains `marker` (fjall preallocates
/// its journal files, so their length says nothing).
fn journal_holds(dir: &Path, marker: &[u8]) -> bool {
    journal_files_in(dir).iter().any(|path| {
        let bytes = std::fs::read(path).expect("journal readable");
        bytes.windows(marker.len()).any(|window| window == marker)
    })
}

/// Goal: a write stays in fjall's buffer until a write-out hands it to the OS (so a batch of
/// writes costs one `write(2)`), and a write-out never counts as covered a write that was
/// still under way when it began (a read-only batch skips fjall's lock only when every write
/// begun is out). Fails if fjall wrote each insert out itself, if `write_out` left a write
/// buffered, or if it marked a write under way as covered.
#[test]
fn a_write_reaches_the_os_at_the_write_out_and_one_under_way_is_never_counted_out() {
    let (dir, engine) = engine_holding_k();
    engine
        .insert(Space::Objects, b"a", b"first-value-marker")
        .expect("insert");
    assert!(
        !journal_holds(dir.path(), b"first-value-marker"),
        "buffered in the process"
    );
    engine.write_out().expect("write-out");
    assert!(
        journal_holds(dir.path(), b"first-value-marker"),
        "handed to the OS"
    );
    let covered = engine.written_out.load(Ordering::SeqCst);
    assert_eq!(covered, engine.writes_begun.load(Ordering::SeqCst));

    // A write under way (begun, not yet in fjall's buffer) while a write-out runs.
    engine.writes_begun.fetch_add(1, Ordering::SeqCst);
    engine
        .insert(Space::Objects, b"b", b"second-value-marker")
        .expect("insert");
    engine.write_out().expect("write-out");
    assert!(
        journal_holds(dir.path(), b"second-value-marker"),
        "b is out"
    );
    assert_eq!(
        engine.written_out.load(Ordering::SeqCst),
        covered,
        "the write under way is not counted out"
    );
    engine.writes_done.fetch_add(1, Ordering::SeqCst);
    engine.write_out().expect("write-out");
    assert_eq!(
        engine.written_out.load(Ordering::SeqCst),
        engine.writes_begun.load(Ordering::SeqCst),
        "counted once it is done"
    );
}

/// Goal: a rarely written keyspace does not hold the journal past its bound: once the
/// sealed journal reaches `JOURNAL_BYTES`, fjall flushes the keyspace holding its oldest file
/// back (here the meta keyspace, written once before the objects) and the files every
/// keyspace flushed past go, so a crash's restart replays little. At fjall's default bound
/// (512 MiB) every file stays.
#[test]
fn a_rarely_written_keyspace_does_not_hold_the_journal_past_its_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = FjallEngine::open(dir.path()).expect("opens");
    let first = newest_journal(dir.path()).expect("journal");
    engine.insert(Space::Meta, b"m", b"1").expect("insert");
    // One memtable and a little more per round, each then flushed, which seals a file: one
    // round more than the bound holds.
    let per_round = (MEMTABLE_BYTES >> 20) as u32 + 2;
    let rounds = (JOURNAL_BYTES / MEMTABLE_BYTES) as u32 + 1;
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for round in 0..rounds {
        write_mib(
            &engine,
            round * per_round..(round + 1) * per_round,
            &mut state,
        );
        engine
            .keyspace(Space::Objects)
            .rotate_memtable_and_wait()
            .expect("memtable flushed");
    }
    let newest = newest_journal(dir.path()).expect("journal");
    assert_eq!(newest, first + u64::from(rounds), "a file sealed per round");
    // The meta keyspace's flush and the removals run on fjall's workers: give them a moment.
    let started = Instant::now();
    while journal_files(dir.path()) > 2 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept = journal_files_in(dir.path());
    assert!(
        (1..=2).contains(&kept.len()),
        "journal files kept: {kept:?}"
    );
    assert_eq!(
        engine.get(Space::Meta, b"m").expect("get"),
        Some(b"1".to_vec())
    );
}
