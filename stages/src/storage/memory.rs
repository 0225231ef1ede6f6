//! The simulator's engine: ordered maps in memory, with a journal of the writes since the last
//! [`Engine::persist`] so that a simulated power loss loses exactly what was not flushed (and a
//! process crash what was not written out), injectable faults (a flush that fails), and copies
//! of its data restored over it (an operator's backup). Deterministic: no clock, no randomness
//! of its own.

use super::engine::{Engine, Space};
use super::StorageError;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Applies journal entries (`None`: a removal) to `maps`, in order.
fn replay(
    maps: &mut [Map; 4],
    entries: impl IntoIterator<Item = (Space, Vec<u8>, Option<Vec<u8>>)>,
) {
    for (space, key, value) in entries {
        let map = &mut maps[space as usize];
        match value {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
}

/// What an engine holds: what reads see, what survives a power loss, and what the faults are.
#[derive(Default)]
struct State {
    /// What reads see: every write, flushed or not. In [`Space::ALL`] order.
    current: [Map; 4],
    /// What was flushed: what a power loss leaves.
    durable: [Map; 4],
    /// Writes since the last successful flush, in order (`None`: a removal).
    journal: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
    /// How many of the journal's last writes are still in the process's buffer, not yet
    /// written out to the OS ([`Engine::write_out`]): what a process crash loses, as fjall's
    /// journal buffer is lost with its process.
    buffered: usize,
    /// Flushes still to fail (an injected fault).
    failing_flushes: u32,
    /// Write-outs still to fail (an injected fault).
    failing_write_outs: u32,
    /// Write-outs that succeeded.
    write_outs: u64,
    /// A flush or a write-out failed: writes, write-outs and flushes are refused until the
    /// process restarts ([`MemoryEngine::restart`]), as fjall's engine refuses them.
    poisoned: bool,
    /// Writebacks started ([`Engine::write_back`]): counted only, as they make nothing
    /// durable.
    write_backs: u64,
    /// The engine's instance ([`Engine::instance`]), the model of fjall's engine's instance
    /// file: renewed (one more) at every open, and new in a restored copy, whose file is
    /// another file. It is not data: a power loss or a restore never brings an older one back.
    instance: u64,
}

impl State {
    /// Refuses once a failed flush has poisoned the engine.
    fn refuse_if_poisoned(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::JournalFailed {
                reason: "simulated journal flush or write-out failure".to_string(),
            });
        }
        Ok(())
    }

    /// What the process has handed to the OS: the flushed data and the journal's written-out
    /// writes (what survives the process, and what a copy of the files holds).
    fn written_out(&self) -> [Map; 4] {
        let mut maps = self.durable.clone();
        let kept = self.journal.len() - self.buffered;
        replay(&mut maps, self.journal[..kept].iter().cloned());
        maps
    }
}

/// A copy of a stopped engine's data: what copying a stopped node's data directory takes
/// (everything written out, flushed or not; a process's unwritten buffer died with it).
#[derive(Clone)]
pub struct MemoryBackup {
    maps: [Map; 4],
}

/// An in-memory [`Engine`] that can lose power and fail.
#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Arc<MemoryEngine> {
        Arc::new(MemoryEngine::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves maps that are still whole; carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A simulated power loss: every write not flushed is lost.
    pub fn lose_power(&self) {
        let mut state = self.state();
        state.current = state.durable.clone();
        state.journal.clear();
        state.buffered = 0;
    }

    /// A simulated process crash: the writes still in the process's buffer are lost; what
    /// was written out stays (in the OS, at risk of a power loss until flushed).
    pub fn lose_process(&self) {
        let mut state = self.state();
        state.current = state.written_out();
        let kept = state.journal.len() - state.buffered;
        state.journal.truncate(kept);
        state.buffered = 0;
    }

    /// The next `count` flushes fail (and leave their writes unflushed). The first failure
    /// poisons the engine, as a failed fdatasync does fjall's: every later write and flush is
    /// refused until the process restarts.
    pub fn fail_flushes(&self, count: u32) {
        self.state().failing_flushes = count;
    }

    /// The next `count` write-outs fail (and leave their writes in the process's buffer);
    /// the first poisons the engine, as a failed journal write does fjall's.
    pub fn fail_write_outs(&self, count: u32) {
        self.state().failing_write_outs = count;
    }

    /// How many write-outs succeeded.
    pub fn write_outs(&self) -> u64 {
        self.state().write_outs
    }

    /// Whether a failed flush has poisoned the engine.
    pub fn poisoned(&self) -> bool {
        self.state().poisoned
    }

    /// The process using the engine restarted: the poison was its, and goes with it (what was
    /// written stays; a power loss is [`MemoryEngine::lose_power`]).
    pub fn restart(&self) {
        self.state().poisoned = false;
    }

    /// Writes not yet flushed.
    pub fn unflushed_writes(&self) -> usize {
        self.state().journal.len()
    }

    /// How many writebacks were started.
    pub fn write_backs(&self) -> u64 {
        self.state().write_backs
    }

    /// A copy of the data, as an operator's backup of the node takes it from its files:
    /// what was written out, flushed or not, and not what a running process still buffers.
    pub fn backup(&self) -> MemoryBackup {
        MemoryBackup {
            maps: self.state().written_out(),
        }
    }

    /// Replaces the data with a backup's, as an operator restores a stopped node's data
    /// directory from a copy onto a new disk: what was written since the copy is gone, the
    /// old disk's injected faults with it, and the instance is new (the copy's instance file
    /// is another file than the one its clean-close mark names).
    pub fn restore(&self, backup: &MemoryBackup) {
        let mut state = self.state();
        state.current = backup.maps.clone();
        state.durable = backup.maps.clone();
        state.journal.clear();
        state.buffered = 0;
        state.failing_flushes = 0;
        state.failing_write_outs = 0;
        state.instance += 1;
    }
}

impl Engine for MemoryEngine {
    /// The same from one open to the next clean close and the open after it; another after
    /// a restore ([`MemoryEngine::restore`]).
    fn instance(&self) -> Result<Option<String>, StorageError> {
        Ok(Some(self.state().instance.to_string()))
    }

    fn renew_instance(&self) -> Result<(), StorageError> {
        let mut state = self.state();
        state.instance += 1;
        Ok(())
    }

    fn failure(&self) -> Option<String> {
        self.state()
            .refuse_if_poisoned()
            .err()
            .map(|e| e.to_string())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state().current[space as usize].get(key).cloned())
    }

    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut state = self.state();
        state.refuse_if_poisoned()?;
        state.current[space as usize].insert(key.to_vec(), value.to_vec());
        state
            .journal
            .push((space, key.to_vec(), Some(value.to_vec())));
        state.buffered += 1;
        Ok(())
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        let mut state = self.state();
        state.refuse_if_poisoned()?;
        state.current[space as usize].remove(key);
        state.journal.push((space, key.to_vec(), None));
        state.buffered += 1;
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::engine::Entries, StorageError> {
        use std::ops::Bound;
        let state = self.state();
        let start = match after {
            Some(after) => Bound::Excluded(after.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(state.current[space as usize]
            .range((start, Bound::Unbounded))
            .skip_while(|(key, _)| !key.starts_with(prefix) && key.as_slice() < prefix)
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    /// Promises nothing, as fjall's does not: what was not flushed stays at risk of a power
    /// loss. Refused once poisoned, as fjall's is.
    fn write_back(&self) -> Result<(), StorageError> {
        let mut state = self.state();
        state.refuse_if_poisoned()?;
        state.write_backs += 1;
        Ok(())
    }

    /// Refused once poisoned, as fjall's is.
    fn write_out(&self) -> Result<(), StorageError> {
        let mut state = self.state();
        state.refuse_if_poisoned()?;
        if state.failing_write_outs > 0 {
            state.failing_write_outs -= 1;
            state.poisoned = true;
            return Err(StorageError::Simulated {
                what: "journal write-out",
            });
        }
        state.buffered = 0;
        state.write_outs += 1;
        Ok(())
    }

    /// Takes no time: the simulator's disk is instant. A failing flush has written the
    /// buffer out first, as fjall's engine does before its fdatasync.
    fn persist(&self) -> Result<Duration, StorageError> {
        let mut state = self.state();
        state.refuse_if_poisoned()?;
        state.buffered = 0;
        if state.failing_flushes > 0 {
            state.failing_flushes -= 1;
            state.poisoned = true;
            return Err(StorageError::Simulated {
                what: "journal flush",
            });
        }
        let journal = std::mem::take(&mut state.journal);
        replay(&mut state.durable, journal);
        Ok(Duration::ZERO)
    }
}
