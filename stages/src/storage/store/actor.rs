//! The actor that names this node's dots (Dynamo §4.4's "node" of a vector clock entry), its
//! counters' floor, and when both change.
//!
//! A dot's counter says "this actor's events 1..=c": a context holding `n1:7` covers every
//! dot `n1:c` with `c <= 7`. That is only true if every live version carrying a dot of `n1` is
//! in `n1`'s own stored set, where it was made (`VersionSet::write_context` relies on it, and a
//! read's context is the join of what it saw). Two things break it, and each ends the actor:
//! - **a crash**: a power loss with `sync = "none"` or `"periodic"` can take writes of this node
//!   that other replicas hold. A later dot of the same actor, whatever its counter, would make
//!   every context the node hands out cover them, so a client's next put would supersede
//!   writes it never saw. So an open after anything but a clean close (and in a new or wiped
//!   directory, whose old dots live on at the replicas) names a new actor, as Riak's vnodes
//!   take a new id after an unclean stop. A clean close (the commit stage's last flush) keeps
//!   the actor.
//! - **a dropped partition**: after a transfer the node removes the partition's sets, which
//!   live on at the new owners. If the partition comes back, a dot of the same actor would
//!   cover the dropped versions in the contexts the node hands out. So dropping a set that
//!   holds a counter of the current actor renews it first (rare: a membership change).
//!
//! And no dot is made twice: the floor is a high-water mark of every dot the actor made in this
//! run, so a key's new counter is above all of them even where nothing of an earlier one is
//! left in the key's set (a purged tombstone, a clock truncated by another node's write). A
//! purge needs nothing else: a tombstone leaves every replica, so covering it is harmless.

use super::*;

/// The node's epoch in this directory: raised at every start to the wall clock (µs) and at
/// least by one, and to one above the floor at every renewal; it starts the floor of a run's
/// dots and names every new actor, so no two runs or renewals share a name. The wall clock in
/// µs is above every counter an earlier run made: no node makes a million dots a second.
const META_EPOCH: &str = "epoch";
/// The actor that names this node's dots in this directory.
const META_ACTOR: &str = "actor";
/// Present while the directory is closed cleanly: written by [`Store::close_cleanly`] after
/// the last flush, removed (and flushed) at every open, so an open that finds it knows the
/// last run lost nothing. It holds the engine's instance (`storage/instance.rs`), which every
/// open renews: it counts only in the copy of the directory, the run and the boot that wrote
/// it, never in a copy restored after the actor went on making dots elsewhere.
const META_CLEAN: &str = "clean";
/// The mark of a clean close as builds before instances wrote it.
const MARK_WITHOUT_INSTANCE: &[u8] = &[1];

/// Why the run that opened the directory names its dots as it does; the node logs it at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorOrigin {
    /// Kept: the last run closed cleanly, in this copy of the directory, on this boot.
    Kept,
    /// New: the directory held no actor (new, wiped, or from before actors).
    NewDirectory,
    /// New: the last run did not close cleanly (kill -9, power loss, a failed last flush), or
    /// it did but found no instance file to name in its mark (removed while it ran).
    UncleanStop,
    /// New: the last run closed cleanly, but its mark is from a build before instances.
    MarkWithoutInstance,
    /// New: the last run closed cleanly, but the directory was copied or restored since, its
    /// instance file changed (a `chmod`, `chown` or hard link), or the machine restarted; also
    /// after an open that crashed between renewing the file and flushing the mark's removal.
    CopiedOrRebooted,
}

impl std::fmt::Display for ActorOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActorOrigin::Kept => "kept: the last run closed cleanly",
            ActorOrigin::NewDirectory => "new: the directory held none",
            ActorOrigin::UncleanStop => "new: the last run did not close cleanly",
            ActorOrigin::MarkWithoutInstance => {
                "new: the last run closed cleanly, but its mark is from an older build"
            }
            ActorOrigin::CopiedOrRebooted => {
                "new: since its clean close the directory was copied or restored, \
                 its instance file changed, or the machine restarted"
            }
        })
    }
}

/// The actor of the dots this node makes now, and the floor of their counters.
#[derive(Clone, Debug)]
pub(super) struct Actor {
    /// `<node>@<epoch>`.
    pub(super) name: NodeId,
    /// New dots' counters are above this: the epoch, raised by every dot made (see the
    /// module's doc).
    pub(super) floor: u64,
}

/// The node an actor ([`Store::actor`]) belongs to: its name before the last `@`.
pub fn actor_node(actor: &NodeId) -> &str {
    actor
        .as_str()
        .rsplit_once('@')
        .map_or(actor.as_str(), |(node, _)| node)
}

/// The actor's lock; a panic under it leaves a whole `Actor` behind.
pub(super) fn lock_actor(actor: &Mutex<Actor>) -> MutexGuard<'_, Actor> {
    actor.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// The epoch and the actor of the run that opens the directory (see the module's doc):
    /// the stored actor if the last run closed cleanly, else a new one, `<node>@<epoch>`. The
    /// epoch rises to `now_ms` (in µs: no key takes a million writes a second from one node,
    /// so counters never catch the clock) and by at least one (a clock set back still names a
    /// new actor). The marker of a clean close is removed, so a crash during this run counts as
    /// one. The caller flushes before the node serves.
    pub(super) fn open_actor(&self, now_ms: u64) -> Result<(Actor, ActorOrigin), StorageError> {
        let stored = match self.engine.get(Space::Meta, META_EPOCH.as_bytes())? {
            Some(bytes) => Some(
                <[u8; 8]>::try_from(bytes.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StorageError::UnknownFormat {
                        found: "2 with an unreadable epoch".to_string(),
                    })?,
            ),
            // A directory from before epochs, or one whose creation crashed before its epoch
            // was flushed.
            None => None,
        };
        let floor = match stored {
            Some(epoch) => epoch.checked_add(1).ok_or_else(|| self.epoch_exhausted())?,
            None => 0,
        }
        .max(now_ms.saturating_mul(1000));
        self.engine
            .insert(Space::Meta, META_EPOCH.as_bytes(), &floor.to_be_bytes())?;
        let mark = self.engine.get(Space::Meta, META_CLEAN.as_bytes())?;
        let instance = self.engine.instance()?;
        let stored = self
            .engine
            .get(Space::Meta, META_ACTOR.as_bytes())?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(NodeId::new)
            .filter(|actor| actor.is_valid_actor() && actor_node(actor) == self.node.as_str());
        let origin = match (&stored, mark.as_deref()) {
            (None, _) => ActorOrigin::NewDirectory,
            (Some(_), None) => ActorOrigin::UncleanStop,
            (Some(_), Some(MARK_WITHOUT_INSTANCE)) => ActorOrigin::MarkWithoutInstance,
            (Some(_), Some(mark)) if instance.as_deref().map(str::as_bytes) == Some(mark) => {
                ActorOrigin::Kept
            }
            (Some(_), Some(_)) => ActorOrigin::CopiedOrRebooted,
        };
        let name = match stored {
            Some(name) if origin == ActorOrigin::Kept => name,
            _ => self.name_actor(floor)?,
        };
        // This run's instance: only a mark this run's clean close writes can match it.
        self.engine.renew_instance()?;
        if mark.is_some() {
            self.engine.remove(Space::Meta, META_CLEAN.as_bytes())?;
        }
        Ok((Actor { name, floor }, origin))
    }

    /// A new actor named by `epoch`, stored (flushed by whatever flush comes next: a crash
    /// before it names another at the next open anyway).
    fn name_actor(&self, epoch: u64) -> Result<NodeId, StorageError> {
        let name = NodeId::new(format!("{}@{epoch}", self.node));
        self.engine
            .insert(Space::Meta, META_ACTOR.as_bytes(), name.as_str().as_bytes())?;
        Ok(name)
    }

    fn epoch_exhausted(&self) -> StorageError {
        StorageError::Version(crate::versioning::VersionError::CounterOverflow {
            node: self.node.clone(),
        })
    }

    /// The actor that names the dots this node makes now: its id and the epoch it took it at
    /// (`n1@1764860000000000`); kept over clean restarts, new after a crash and after a drop of
    /// a set that held its counters (see the module's doc).
    pub fn actor(&self) -> NodeId {
        lock_actor(&self.actor).name.clone()
    }

    /// The actor and floor for a new dot.
    pub(super) fn current_actor(&self) -> Actor {
        lock_actor(&self.actor).clone()
    }

    /// Raises the floor to a dot just made (called under its key's lock), so no later dot of
    /// this actor, of any key, is at or below it. Not past half the counters' range: a key whose
    /// counters a faulty peer pushed near the end would otherwise stop every other key's puts
    /// (that key still counts from its own set).
    pub(super) fn made_dot(&self, counter: u64) {
        let mut actor = lock_actor(&self.actor);
        actor.floor = actor.floor.max(counter.min(u64::MAX / 2));
    }

    /// Before a partition's drop removes `set`: if it holds a counter of the current actor, a
    /// new actor takes over, named by one above the floor (stored and flushed, so no later
    /// start or renewal can take the name again). A purge needs nothing (see the module's doc).
    pub(super) fn before_drop(&self, set: &VersionSet) -> Result<(), StorageError> {
        let mut actor = lock_actor(&self.actor);
        if set.max_counter(&actor.name) == 0 {
            return Ok(());
        }
        // The floor is at least the stored epoch (the open and every renewal store it).
        let epoch = actor
            .floor
            .checked_add(1)
            .ok_or_else(|| self.epoch_exhausted())?;
        self.engine
            .insert(Space::Meta, META_EPOCH.as_bytes(), &epoch.to_be_bytes())?;
        let name = self.name_actor(epoch)?;
        self.engine.persist()?;
        *actor = Actor { name, floor: epoch };
        Ok(())
    }

    /// Marks the directory closed cleanly, after a final flush: the next open of this copy of
    /// it, on this boot, keeps the actor. Called by the commit stage as it stops, after every
    /// other writer stopped; nothing may write after it (a write would then be lost by a crash
    /// the marker hides).
    pub fn close_cleanly(&self) -> Result<(), StorageError> {
        // No instance (its file was removed while the node ran): no mark, a new actor next.
        if let Some(instance) = self.engine.instance()? {
            self.engine
                .insert(Space::Meta, META_CLEAN.as_bytes(), instance.as_bytes())?;
        }
        self.engine.persist().map(|_| ())
    }

    /// Why this run's actor was kept or is new (see [`ActorOrigin`]).
    pub fn actor_origin(&self) -> ActorOrigin {
        self.actor_origin
    }
}
