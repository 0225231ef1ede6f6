//! Where the store's bytes live: the [`Engine`] trait, and fjall behind it (the product). The
//! simulator's engine is in `memory.rs`. Both pass one shared test suite (`storage/tests.rs`); fjall's own
//! journal handling is tested in `engine/tests.rs`.

use super::instance::{instance_of, renew_instance};
use super::StorageError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
pub use journal::journal_files;
use journal::{
    journal_error, journal_path, newest_journal, still_active, write_back_range, written_end,
    WRITE_BACK_ALIGN, WRITE_BACK_TAIL,
};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::num::NonZeroU64;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Times the journal flush looks again for the active journal file when the one it found was
/// removed meanwhile (a rotation between listing and opening it).
const JOURNAL_LOOKUPS: usize = 3;

/// A keyspace's memtable size: fjall's default, fixed when the keyspace is created (fjall
/// stores it; a directory keeps its own). Up to two memtables (the active one and the one
/// being flushed) live in memory. Measured for a node filled with 1M keys of 1 KiB
/// (`benches/results/memory-2026-12-04-stop37.txt`, five runs each): at 64 MiB, RSS at rest
/// 227-260 MiB, peak 240-266, the fill 40-47 s; at 16 MiB, 122-150 MiB at rest but no lower
/// a peak (233-298) and the fill 48-51 s (more, smaller flushes and compactions). The write
/// throughput was kept; the side-by-side load did not tell the two apart.
const MEMTABLE_BYTES: u64 = 64 * 1024 * 1024;

/// The sealed journal fjall keeps before it flushes the keyspaces that hold its oldest file
/// back (fjall's default 512 MiB, its floor 64 MiB). fjall removes a journal file only once
/// every keyspace that held unflushed data when it was sealed has flushed past it, and the
/// meta keyspace, written rarely (at a start, a clean close, a membership change), rarely
/// fills a memtable: so the journal grew to the bound, and a start after a kill -9 replayed
/// all of it. Measured on one node (`benches/restart.sh`: 300k keys of 1 KiB, 5 s of
/// workload A, then a stop): at 512 MiB a start found up to 8 files and took up to 1.1 s. A
/// lower bound also pushes the objects keyspace's memtable out early: at 128 MiB fjall's
/// workers spent 30-120 % more CPU over the same run (304-359 ticks against 161-235), and
/// half the clean stops waited 0.1-0.9 s for a flush in progress (about 60 ms otherwise); at
/// 256 MiB neither (173-251 ticks, stops 57-65 ms).
const JOURNAL_BYTES: u64 = 256 * 1024 * 1024;

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

    /// Hands the writes this process still buffers to the OS (a `write(2)` of the journal's
    /// buffer): after it they survive the process's death (kill -9), not the machine's. A
    /// write is buffered in the process, yet visible to every reader, until this or
    /// [`Engine::persist`] runs, so storage calls it at the end of every batch that wrote or
    /// read objects, before answering any of it: what the batch wrote or read is then in the
    /// OS (one system call per batch, not one per write; none when nothing is buffered). Its
    /// failure is final, as a flush's is.
    fn write_out(&self) -> Result<(), StorageError>;

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

    /// Which copy of the stored data this is, in which run, for the mark of a clean close
    /// (`instance.rs`); `None` when it has none (no mark is then written). A directory copied
    /// or restored since, or opened again, has another. No default: an engine that answered
    /// the same for every copy would keep the actor of a restored backup.
    fn instance(&self) -> Result<Option<String>, StorageError>;

    /// Gives the stored data a new instance, which no mark written before matches (every open
    /// does).
    fn renew_instance(&self) -> Result<(), StorageError>;
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
    /// Inserts and removals begun (counted before fjall makes them visible) and finished,
    /// and how many begun ones a write-out is known to have covered: `write_out` skips
    /// fjall's journal lock when every write begun is covered (see `would_cover`).
    writes_begun: AtomicU64,
    writes_done: AtomicU64,
    written_out: AtomicU64,
    /// `writes_begun` at the last `write_back`: none since, nothing to write back.
    written_back: AtomicU64,
    /// The journal `write_back` last started writing out, and up to where: the next one
    /// starts there (a page still being written then stays cached, which costs nothing).
    advised: Mutex<(u64, u64)>,
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<FjallEngine, StorageError> {
        // Absolute, as fjall keeps it: a relative path would follow the working directory.
        let dir = std::path::absolute(dir).map_err(|error| journal_error(dir, error))?;
        // Journal writes stay in fjall's buffer until `write_out` (storage's, once per batch)
        // or a flush: fjall's default, a `write(2)` per insert, was 5 % of a node's CPU under
        // the side-by-side load. A keyspace keeps the setting it was created with (fjall
        // stores it), so a directory from before writes each insert out, as it did.
        let db = Database::builder(&dir)
            .manual_journal_persist(true)
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        let open = |space: Space| {
            db.keyspace(space.name(), || {
                KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .max_memtable_size(MEMTABLE_BYTES)
            })
        };
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
            writes_begun: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
            written_out: AtomicU64::new(0),
            written_back: AtomicU64::new(0),
            advised: Mutex::new((0, 0)),
        })
    }

    /// How many writes a write-out starting now will have handed to the OS: every write
    /// begun, if each of them has finished (reached fjall's buffer) by now; `None` while one
    /// is under way (it may reach the buffer after the write-out). `done` is read before
    /// `begun`: equal, no write was under way at the first read, nor begun in between.
    fn would_cover(&self) -> Option<u64> {
        let done = self.writes_done.load(Ordering::SeqCst);
        let begun = self.writes_begun.load(Ordering::SeqCst);
        (done >= begun).then_some(begun)
    }

    /// Records a finished write-out of the buffer that `would_cover` said (before it) covers.
    fn covered(&self, covers: Option<u64>) {
        if let Some(begun) = covers {
            self.written_out.fetch_max(begun, Ordering::SeqCst);
        }
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
        if let Some((id, file)) = cached.as_ref() {
            // A shortcut only: if it cannot tell (a failed stat), the listing below decides.
            if still_active(&self.dir, file, *id).unwrap_or(false) {
                return act(file, *id);
            }
        }
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
        let _counted = CountedWrite::begin(self);
        self.checked(self.keyspace(space).insert(key, value))
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        let _counted = CountedWrite::begin(self);
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

    fn write_out(&self) -> Result<(), StorageError> {
        self.refuse_after_failure()?;
        let covers = self.would_cover();
        if covers.is_some_and(|begun| begun <= self.written_out.load(Ordering::SeqCst)) {
            return Ok(()); // every write begun so far is in the OS already
        }
        self.checked(self.db.persist(PersistMode::Buffer))?;
        self.covered(covers);
        Ok(())
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
        let covers = self.would_cover();
        self.checked(self.db.persist(PersistMode::Buffer))?;
        self.covered(covers);
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

    fn instance(&self) -> Result<Option<String>, StorageError> {
        instance_of(&self.dir)
    }

    fn renew_instance(&self) -> Result<(), StorageError> {
        renew_instance(&self.dir)
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
        let begun = self.writes_begun.load(Ordering::SeqCst);
        if self.written_back.swap(begun, Ordering::SeqCst) == begun {
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

/// One insert or removal, counted as begun before fjall makes it visible to readers and as
/// done once fjall returned (whatever it returned): a write-out covers it only if it was done
/// before the write-out began (see `FjallEngine::would_cover`).
struct CountedWrite<'a>(&'a FjallEngine);

impl<'a> CountedWrite<'a> {
    fn begin(engine: &'a FjallEngine) -> CountedWrite<'a> {
        engine.writes_begun.fetch_add(1, Ordering::SeqCst);
        CountedWrite(engine)
    }
}

impl Drop for CountedWrite<'_> {
    fn drop(&mut self) {
        self.0.writes_done.fetch_add(1, Ordering::SeqCst);
    }
}

mod journal;
#[cfg(test)]
mod tests;
