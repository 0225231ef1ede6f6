//! Which copy of a data directory this is, and on which boot: what the mark of a clean close
//! carries (`store/actor.rs`).
//!
//! The mark lets a restart keep the node's actor, which is safe only if every dot that actor
//! made is in this directory. A directory restored from a copy taken at an earlier clean close
//! breaks that: the actor went on making dots after the copy was taken, and other replicas hold
//! them, so the restored node's next dots would make its contexts cover writes it never had. A
//! copy or a restore makes new files, so the mark names one file of the directory by device,
//! inode and change time (no tool can set a ctime back), and names the boot: after a copy, a
//! restore, a move to another filesystem or a machine rolled back to a snapshot (which boots
//! again), the next open takes a new actor. A new actor is always safe (its dots cover nothing
//! before them); the cost of one too many is a clock entry. Not caught: a filesystem snapshot
//! rolled back in place while the machine stays up (same inode, same ctime); README says to
//! delete [`INSTANCE_FILE`] then.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The file in the data directory whose identity the mark of a clean close records. fjall
/// ignores files in its directory that are not `*.jnl`.
pub const INSTANCE_FILE: &str = "shoal-instance";

/// What the file says to someone who finds it.
const INSTANCE_TEXT: &[u8] = b"This file names this copy of a shoal data directory: a node keeps \
its vector-clock actor over a clean restart only in the copy, and on the boot, that closed. \
Delete it after rolling a filesystem snapshot of the directory back in place.\n";

/// This copy of `dir` on this boot, as text: the boot id and [`INSTANCE_FILE`]'s device,
/// inode and change time. Creates the file (flushed, with its directory entry) when it is
/// missing, so a directory that lost it never matches a mark written before.
pub fn instance_of(dir: &Path) -> io::Result<String> {
    let path = dir.join(INSTANCE_FILE);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut file = File::create_new(&path)?;
            file.write_all(INSTANCE_TEXT)?;
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
            file.metadata()?
        }
        Err(e) => return Err(e),
    };
    Ok(format!(
        "boot {} dev {} ino {} ctime {}.{:09}",
        boot_id(),
        meta.dev(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// Linux's id of this boot; empty where there is none (a reboot then goes unseen, a copy
/// still does not).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}
