//! Where the store's bytes live: the [`Engine`] trait, and fjall behind it (the product). The
//! simulator's engine is in `memory.rs`. Both pass one shared test suite (`tests.rs`).

use super::StorageError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::num::NonZeroU64;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Times the journal flush looks again for the active journal file when the one it found was
/// removed meanwhile (a rotation between listing and opening it).
const JOURNAL_LOOKUPS: usize = 3;

/// Key-value pairs of a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The store's keyspaces, kept apart so a scan of one never sees another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// `[partition: u32][segment: u16][key]` → encoded version set (format 2): one partition is
    /// one range scan, one Merkle segment of it another.
    Objects,
    /// `[key length][key][target]` → encoded version set (hinted handoff).
    Hints,
    /// The node's identity, format version and Q.
    Meta,
    /// Key → encoded version set: format 1's objects, read once to migrate them and then
    /// empty.
    LegacyObjects,
}

impl Space {
    /// Every keyspace.
    pub const ALL: [Space; 4] = [
        Space::Objects,
        Space::Hints,
        Space::Meta,
        Space::LegacyObjects,
    ];

    /// The keyspace's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Objects => "partitioned_objects",
            Space::Hints => "hints",
            Space::Meta => "meta",
            Space::LegacyObjects => "objects",
        }
    }
}

/// An ordered key-value engine with a journal: writes are visible at once and durable after
/// [`Engine::persist`]. Shared by the storage workers (the store serialises read-modify-write
/// of one key with its own locks).
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Sets `key` to `value`.
    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError>;

    /// Removes `key` (nothing if absent).
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError>;

    /// Up to `limit` entries whose keys start with `prefix`, in key order, after the key
    /// `after` when given.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError>;

    /// Makes every write so far durable (fdatasync of the journal); how long the disk took.
    /// A failed fdatasync is final: every later write and flush is refused until the process
    /// restarts (fjall's engine; the simulator's models the same).
    fn persist(&self) -> Result<Duration, StorageError>;

    /// Starts writing the journal's pages out and returns without waiting for the disk
    /// (`sync = "none"`'s writeback): it makes nothing durable, but it leaves little for
    /// the engine's own syncs to write while every writer waits on them. Default: nothing.
    fn write_back(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Why the engine refuses every write until the process restarts (a journal flush
    /// failed), or `None` while it takes them. Operators and `/health` read it: a node in
    /// that state still answers reads, so nothing else about it looks wrong.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// fjall: one database per node, one keyspace per [`Space`].
pub struct FjallEngine {
    db: Database,
    /// In [`Space::ALL`] order.
    keyspaces: [Keyspace; 4],
    /// The data directory, where fjall keeps its journal files (`<id>.jnl`).
    dir: PathBuf,
    /// The active journal file as last flushed: its id and our own handle on it.
    journal: Mutex<Option<(u64, File)>>,
    /// Why a journal flush failed, once one has: from then on every write and flush is
    /// refused (see `persist`).
    failed: OnceLock<String>,
    /// Whether anything was written since the last `write_back`.
    written: AtomicBool,
    /// The journal `write_back` last started writing out, and up to where: the next one
    /// starts there (a page still being written then stays cached, which costs nothing).
    advised: Mutex<(u64, u64)>,
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<FjallEngine, StorageError> {
        // Absolute, as fjall keeps it: a relative path would follow the working directory.
        let dir = std::path::absolute(dir).map_err(|error| journal_error(dir, error))?;
        let db = Database::builder(&dir).open()?;
        let open = |space: Space| db.keyspace(space.name(), KeyspaceCreateOptions::default);
        let keyspaces = [
            open(Space::Objects)?,
            open(Space::Hints)?,
            open(Space::Meta)?,
            open(Space::LegacyObjects)?,
        ];
        Ok(FjallEngine {
            db,
            keyspaces,
            dir,
            journal: Mutex::new(None),
            failed: OnceLock::new(),
            written: AtomicBool::new(false),
            advised: Mutex::new((0, 0)),
        })
    }

    /// Refuses once a journal flush has failed.
    fn refuse_after_failure(&self) -> Result<(), StorageError> {
        match self.failed.get() {
            Some(reason) => Err(StorageError::JournalFailed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// fdatasync of the active journal file through our own handle, outside fjall's lock;
    /// how long the disk took. A failed lookup fails this flush alone; a failed fdatasync is
    /// final (`sync_or_fail`), and it is decided under the handle's lock, so a flush that
    /// waited for the failed one sees it rather than syncing over its hole.
    fn sync_active_journal(&self) -> Result<Duration, StorageError> {
        self.with_active_journal(|file, id| {
            let started = Instant::now();
            self.sync_or_fail(file, id)?;
            Ok(started.elapsed())
        })
    }

    /// Runs `act` on the active journal file through our own handle (see
    /// `sync_active_journal`), under the handle's lock.
    fn with_active_journal<T>(
        &self,
        act: impl FnOnce(&File, u64) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut cached = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        self.refuse_after_failure()?;
        for _ in 0..JOURNAL_LOOKUPS {
            let id = newest_journal(&self.dir).map_err(|e| journal_error(&self.dir, e))?;
            if cached.as_ref().is_none_or(|(open, _)| *open != id) {
                let path = journal_path(&self.dir, id);
                // Never written through: fdatasync flushes the file, whoever wrote its pages.
                let file = match OpenOptions::new().append(true).open(&path) {
                    Ok(file) => file,
                    // Rotated and removed since the listing: look again.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(journal_error(&path, e)),
                };
                // The file left behind is synced once more: a rotation that failed after
                // creating the new file leaves fjall writing to the old one until it poisons
                // itself, which it does only once its lock is free. After a rotation that
                // worked, this sync finds nothing to write.
                if let Some((old, old_file)) = cached.take() {
                    self.sync_or_fail(&old_file, old)?;
                }
                *cached = Some((id, file));
            }
            if let Some((id, file)) = cached.as_ref() {
                return act(file, *id);
            }
        }
        Err(journal_error(
            &self.dir,
            io::Error::new(ErrorKind::NotFound, "the active journal kept moving"),
        ))
    }

    /// fdatasync of journal `id`; a failure is final (see `persist`).
    fn sync_or_fail(&self, file: &File, id: u64) -> Result<(), StorageError> {
        file.sync_data().map_err(|error| {
            let failure = journal_error(&journal_path(&self.dir, id), error);
            let _ = self.failed.set(failure.to_string());
            failure
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space as usize]
    }

    /// A write's or flush's result from fjall. fjall poisons itself when one of its own
    /// writes or syncs fails (a journal write, a rotation's or a memtable flush's sync) or a
    /// worker of its own panics, and then refuses every write and flush: that is final as our
    /// failure is, so it is recorded as ours too, which is what `/health` and `admin stats`
    /// report. The call that poisons it returns the I/O error itself, so after any other
    /// error fjall is asked once more (a buffer flush, which checks the poison first).
    fn checked<T>(&self, result: Result<T, fjall::Error>) -> Result<T, StorageError> {
        result.map_err(|error| {
            let poisoned = matches!(error, fjall::Error::Poisoned)
                || matches!(
                    self.db.persist(PersistMode::Buffer),
                    Err(fjall::Error::Poisoned)
                );
            if poisoned {
                let _ = self.failed.set(
                    "the storage engine (fjall) poisoned itself: one of its own journal writes, \
                     syncs or workers failed"
                        .to_string(),
                );
                if matches!(error, fjall::Error::Poisoned) {
                    if let Err(refusal) = self.refuse_after_failure() {
                        return refusal;
                    }
                }
            }
            StorageError::from(error)
        })
    }
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.keyspace(space).get(key)?.map(|value| value.to_vec()))
    }

    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        self.written.store(true, Ordering::Relaxed);
        self.checked(self.keyspace(space).insert(key, value))
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        self.written.store(true, Ordering::Relaxed);
        self.checked(self.keyspace(space).remove(key))
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let keyspace = self.keyspace(space);
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match after {
            Some(after) => {
                Box::new(keyspace.range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)))
            }
            None => Box::new(keyspace.prefix(prefix)),
        };
        let mut out = Vec::new();
        for guard in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = guard.into_inner()?;
            if !key.starts_with(prefix) {
                // Keys are ordered: past the prefix, nothing later matches.
                if key.as_ref() > prefix {
                    break;
                }
                continue;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// fjall's own `persist(SyncData)` holds its journal's lock through the fdatasync, and
    /// every write waits on that lock: measured in issue 9's benchmark, flushes of 20-40 ms
    /// (five nodes sharing a disk with their compactions) held the intake loop, where storage
    /// runs, for as long, so every client of the node waited, readers included. So the
    /// journal's buffer goes to the OS under the lock (a `write`), and the fdatasync is ours,
    /// on the active journal file, without it: writes go on while the disk works. (fjall
    /// still syncs under its lock when it flushes a memtable and when it rotates the journal,
    /// every 64 MiB or so of writes.)
    ///
    /// Why that covers every write so far: they are in the file that was active when the
    /// buffer was written, or an older one. fjall syncs a journal file when it rotates away
    /// from it (`Writer::rotate` persists with `SyncAll` under the lock before the new file
    /// exists), so if the newest file is no longer that one, that one is on disk already.
    ///
    /// A failed flush is final, as fjall's own poisoning made it: after a writeback error
    /// Linux marks the pages clean and reports the error once, so a later fdatasync would
    /// succeed over a hole in the journal, and writes acknowledged after it would be lost at
    /// recovery (which stops at the first torn batch). Every later write and flush is refused
    /// until the node restarts.
    fn persist(&self) -> Result<Duration, StorageError> {
        self.refuse_after_failure()?;
        self.checked(self.db.persist(PersistMode::Buffer))?;
        let took = self.sync_active_journal()?;
        // A rotation that failed after creating its new file leaves the writer on the old
        // one, which then is not the newest; fjall poisons itself once its lock is free.
        // Asking it again after the sync sees that poison if it is there by now (the old
        // file's extra sync above covers what was written to it before this flush).
        self.checked(self.db.persist(PersistMode::Buffer))?;
        Ok(took)
    }

    /// Set by our own failed fdatasync or by fjall's poisoning of itself (see `checked`).
    fn failure(&self) -> Option<String> {
        self.refuse_after_failure().err().map(|e| e.to_string())
    }

    /// fjall syncs the whole journal file under its lock when it rotates it (about every 64
    /// MB) and when it flushes a memtable: with `sync = "none"` nothing else wrote those pages
    /// out, so every writer, the intake loop's included, waited for up to 64 MB to reach the
    /// disk (storage turns of 100-160 ms on both nodes of issue 10's rebuild). This starts
    /// that writing early, a little at a time: `POSIX_FADV_DONTNEED` starts the writeback of
    /// the range's dirty pages without waiting for it (Linux: `WB_SYNC_NONE`) and drops its
    /// clean ones, which only recovery reads. The range stops [`WRITE_BACK_TAIL`] short of
    /// the end: a dropped page that fjall still appends to would be read back from the disk,
    /// under its lock, by the next write. Nothing written since the last call: nothing to do.
    ///
    /// It promises nothing, but it is not free of consequence: fadvise does not consume a
    /// writeback error, so the next fdatasync of the file (fjall's, or `persist`'s) reports
    /// it, and when fjall has moved to a new file, the old one is synced through our handle
    /// first (as `persist` does), where a failure is final.
    fn write_back(&self) -> Result<(), StorageError> {
        if !self.written.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.with_active_journal(|file, id| {
            let path = || journal_path(&self.dir, id);
            let mut advised = self.advised.lock().unwrap_or_else(PoisonError::into_inner);
            let from = if advised.0 == id { advised.1 } else { 0 };
            let end = written_end(file, from).map_err(|e| journal_error(&path(), e))?;
            let to = end.saturating_sub(WRITE_BACK_TAIL) & !(WRITE_BACK_ALIGN - 1);
            let Some(len) = NonZeroU64::new(to.saturating_sub(from)) else {
                return Ok(());
            };
            write_back_range(file, from, len).map_err(|e| journal_error(&path(), e))?;
            *advised = (id, to);
            Ok(())
        })
    }
}

/// How much of the journal's end `write_back` leaves alone: the page fjall appends to, and
/// some before it (at ~100 ms between calls, more than one call's worth of appends at the
/// rates seen here).
const WRITE_BACK_TAIL: u64 = 1 << 20;

/// What the range's ends are rounded down to: a multiple of the page size on every Linux
/// target, so only whole pages are advised (a smaller range only writes back less).
const WRITE_BACK_ALIGN: u64 = 64 << 10;

/// Where `file`'s written bytes end, looking from `from`: fjall sets a new journal's length to
/// 64 MiB before it writes anything (a sparse file), so the length says nothing; the first
/// hole after `from` does (a dirty page not yet on disk counts as data). The length when the
/// file system cannot say.
#[cfg(target_os = "linux")]
fn written_end(file: &File, from: u64) -> io::Result<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(from)) {
        Ok(end) => Ok(end),
        Err(_) => Ok(file.metadata()?.len()),
    }
}

/// Elsewhere: the file's length.
#[cfg(not(target_os = "linux"))]
fn written_end(file: &File, _from: u64) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

/// Starts the writeback of `len` bytes of `file` from `from` and drops their clean pages.
#[cfg(target_os = "linux")]
fn write_back_range(file: &File, from: u64, len: NonZeroU64) -> io::Result<()> {
    Ok(rustix::fs::fadvise(
        file,
        from,
        Some(len),
        rustix::fs::Advice::DontNeed,
    )?)
}

/// Elsewhere the OS decides alone.
#[cfg(not(target_os = "linux"))]
fn write_back_range(_file: &File, _from: u64, _len: NonZeroU64) -> io::Result<()> {
    Ok(())
}

fn journal_error(path: &Path, error: io::Error) -> StorageError {
    StorageError::Journal {
        path: path.display().to_string(),
        error,
    }
}

/// The id of the newest journal file in `dir` (fjall names them `<id>.jnl`, the active one
/// the highest).
fn newest_journal(dir: &Path) -> io::Result<u64> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|name| name.strip_suffix(".jnl"))
            .and_then(|id| id.parse::<u64>().ok());
        newest = newest.max(id);
    }
    newest.ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no journal file (*.jnl)"))
}

fn journal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.jnl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_files(dir: &Path) -> Vec<PathBuf> {
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
        assert!(second > first, "no rotation: still journal {first}");
        (engine, second)
    }

    /// Goal: a flush that cannot find the journal fails alone (nothing written was lost, so
    /// the next flush that finds it succeeds), and says where it looked.
    #[test]
    fn a_flush_that_cannot_find_the_journal_fails_alone() {
        let (dir, engine) = engine_holding_k();
        for path in journal_files(dir.path()) {
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
}
