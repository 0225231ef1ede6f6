//! fjall's journal files on disk, as the engine handles them: which one is active, how far
//! it is written, writing a range of it back, and how many a start will replay. fjall keeps
//! these to itself; the engine relies on its naming (`<id>.jnl`, the next one `id + 1`),
//! which is why fjall's version is pinned exactly.

use crate::storage::StorageError;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

/// How much of the journal's end `write_back` leaves alone: the page fjall appends to, and
/// some before it (at ~100 ms between calls, more than one call's worth of appends at the
/// rates seen here).
pub(super) const WRITE_BACK_TAIL: u64 = 1 << 20;

/// What the range's ends are rounded down to: a multiple of the page size on every Linux
/// target, so only whole pages are advised (a smaller range only writes back less).
pub(super) const WRITE_BACK_ALIGN: u64 = 64 << 10;

/// Where `file`'s written bytes end, looking from `from`: fjall sets a new journal's length to
/// 64 MiB before it writes anything (a sparse file), so the length says nothing; the first
/// hole after `from` does (a dirty page not yet on disk counts as data). The length when the
/// file system cannot say.
#[cfg(target_os = "linux")]
pub(super) fn written_end(file: &File, from: u64) -> io::Result<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(from)) {
        Ok(end) => Ok(end),
        Err(_) => Ok(file.metadata()?.len()),
    }
}

/// Elsewhere: the file's length.
#[cfg(not(target_os = "linux"))]
pub(super) fn written_end(file: &File, _from: u64) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

/// Starts the writeback of `len` bytes of `file` from `from` and drops their clean pages.
#[cfg(target_os = "linux")]
pub(super) fn write_back_range(file: &File, from: u64, len: NonZeroU64) -> io::Result<()> {
    Ok(rustix::fs::fadvise(
        file,
        from,
        Some(len),
        rustix::fs::Advice::DontNeed,
    )?)
}

/// Elsewhere the OS decides alone.
#[cfg(not(target_os = "linux"))]
pub(super) fn write_back_range(_file: &File, _from: u64, _len: NonZeroU64) -> io::Result<()> {
    Ok(())
}

pub(super) fn journal_error(path: &Path, error: io::Error) -> StorageError {
    StorageError::Journal {
        path: path.display().to_string(),
        error,
    }
}

/// The id of the newest journal file in `dir` (fjall names them `<id>.jnl`, the active one
/// the highest).
pub(super) fn newest_journal(dir: &Path) -> io::Result<u64> {
    journal_ids(dir)?
        .into_iter()
        .max()
        .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no journal file (*.jnl)"))
}

/// The ids of the journal files in `dir` (`<id>.jnl`), in no order.
fn journal_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".jnl"))
            .and_then(|id| id.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Whether journal `id`, open as `file`, is still fjall's active one: three system calls
/// where listing the directory (`newest_journal`) took four and a parse of every name, once
/// per flush (3 % of a 3-node cluster's CPU with `sync = "always"`). fjall rotates from `id`
/// by creating `id + 1` before it writes there, and deletes sealed journals oldest first
/// (fjall's `JournalManager::maintenance`; the version is pinned in Cargo.toml for this), so
/// `id + 1` cannot be gone while `id` is still there. Hence: `id + 1` absent (checked first),
/// then the name `id` still naming our file (same device and inode: a link count would not
/// do on NFS, where a removed open file lives on under another name), means no rotation had
/// happened when `id + 1` was looked for, as a listing at that moment would have said.
/// `false` sends the caller to the listing.
pub(super) fn still_active(dir: &Path, file: &File, id: u64) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let Some(next) = id.checked_add(1) else {
        return Ok(false);
    };
    match std::fs::symlink_metadata(journal_path(dir, next)) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let named = match std::fs::metadata(journal_path(dir, id)) {
        Ok(named) => named,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let held = file.metadata()?;
    Ok(named.dev() == held.dev() && named.ino() == held.ino())
}

/// How many journal files (`<id>.jnl`) `dir` holds: what an open will replay (fjall sizes
/// a new one to 64 MiB and seals it at a memtable flush once it holds about 61 MB, so each
/// is about that). 0 when `dir` cannot be read.
pub fn journal_files(dir: &Path) -> usize {
    journal_ids(dir).map_or(0, |ids| ids.len())
}

pub(super) fn journal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.jnl"))
}
