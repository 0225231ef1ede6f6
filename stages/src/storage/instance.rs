//! Which copy of a data directory this is, in which run: what the mark of a clean close
//! carries (`store/actor.rs`).
//!
//! The mark lets a restart keep the node's actor, which is safe only if every dot that actor
//! made is in this directory. A directory restored from a copy taken at an earlier clean close
//! breaks that: the actor went on making dots after the copy was taken, and other replicas hold
//! them, so the restored node's next dots would make its contexts cover writes it never had.
//! So the mark names one file of the directory, [`INSTANCE_FILE`], by device, inode and change
//! time (no tool can set a ctime back), and names the boot; every open replaces the file, so
//! a mark matches only the copy, the run and the boot that wrote it. After a copy, a restore
//! (even one into the live directory that skips files it finds unchanged), a move to another
//! filesystem or a reboot, the next open takes a new actor. A new actor is always safe (its
//! dots cover nothing before them); one too many costs a clock entry more in each key the node
//! then coordinates, which is also what a `chmod`, `chown` or hard link of the file costs. Not
//! caught: a restore over the live directory that leaves a newer journal behind (its run's own
//! mark can match), a filesystem snapshot of the directory rolled back in place, or a machine
//! resumed from a snapshot of its memory, without a reboot; README says to restore into an
//! emptied directory, and to delete the file before starting the node after any of these.

use super::StorageError;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The error of a failed call about `path` (the file, its replacement or the directory).
fn at(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |error| StorageError::Instance {
        path: path.display().to_string(),
        error,
    }
}

/// The file in the data directory whose identity the mark of a clean close records. fjall
/// ignores files in its directory that are not `*.jnl`.
pub const INSTANCE_FILE: &str = "shoal-instance";
/// Where a new instance file is written before it replaces the old one.
const NEXT_INSTANCE_FILE: &str = "shoal-instance.next";

/// What the file says to someone who finds it.
const INSTANCE_TEXT: &[u8] = b"This file names this copy of a shoal data directory, replaced \
at every start: a node keeps its vector-clock actor over a clean restart only in the copy, the \
run and the boot that closed. Delete it after rolling a snapshot of the directory back in place.\n";

/// This copy of `dir` in this run, as text: the boot id and [`INSTANCE_FILE`]'s device, inode
/// and change time; `None` if the file is missing.
pub fn instance_of(dir: &Path) -> Result<Option<String>, StorageError> {
    let path = dir.join(INSTANCE_FILE);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(&path)(e)),
    };
    Ok(Some(format!(
        "boot {} dev {} ino {} ctime {}.{:09}",
        boot_id(),
        meta.dev(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    )))
}

/// Replaces [`INSTANCE_FILE`] with a new file (written and flushed aside, renamed over it, the
/// directory flushed), so no mark written before matches it. A crash part-way may leave the
/// old file, and the mark that matches it: harmless, since the open that crashed made no dot
/// (the store flushes its open before the node serves).
pub fn renew_instance(dir: &Path) -> Result<(), StorageError> {
    let next = dir.join(NEXT_INSTANCE_FILE);
    let mut file = File::create(&next).map_err(at(&next))?;
    file.write_all(INSTANCE_TEXT).map_err(at(&next))?;
    file.sync_all().map_err(at(&next))?;
    let path = dir.join(INSTANCE_FILE);
    fs::rename(&next, &path).map_err(at(&path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(at(dir))
}

/// Linux's id of this boot; empty where there is none (a reboot then goes unseen, a copy
/// still does not).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}
