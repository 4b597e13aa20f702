//! Reading the whole queue folder: at open (the index is built, what a crash left is
//! cleaned up, what cannot be read is set aside) and when another process changed entries
//! (the index is built again, nothing touched).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;

use super::disk::{self, BOOKKEEPING, Folder, MESSAGE, Stored, Unreadable};
use crate::state::queue::QueueId;

/// The queue folder's files by kind.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// The messages (their `.msg` files), oldest first.
    pub(super) messages: BTreeSet<QueueId>,
    /// The bookkeeping files.
    pub(super) bookkeeping: Vec<QueueId>,
    /// Temp files of writes in progress, or of a crash.
    pub(super) temps: Vec<PathBuf>,
}

/// What the folder holds; an empty listing when it does not exist yet.
pub(super) fn list(folder: &Folder) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let dir = match fs::read_dir(&folder.dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(e),
    };
    for file in dir {
        let file = file?;
        let name = file.file_name();
        let name = name.to_string_lossy();
        if disk::is_temp(&name) {
            listing.temps.push(file.path());
            continue;
        }
        let Some((stem, extension)) = name.rsplit_once('.') else {
            continue;
        };
        match (QueueId::parse(stem), extension) {
            (Some(id), MESSAGE) => {
                listing.messages.insert(id);
            }
            (Some(id), BOOKKEEPING) => listing.bookkeeping.push(id),
            _ => {}
        }
    }
    Ok(listing)
}

/// The entries of the folder at open. Temp files no writer holds (a crash's) and
/// bookkeeping files without their message (a crash during a deletion) are deleted; a
/// message file that is corrupt (its header not what this build writes) is set aside
/// (`.bad`) with its bookkeeping; a corrupt bookkeeping file is set aside and the entry
/// taken as accepted (delivered again rather than lost). A file that cannot be read now
/// (`EMFILE`, `EIO`) is left in place and its entry skipped. Each is logged.
///
/// Every process opening the queue runs this, a CLI command while the relay runs too: a
/// temp file is deleted only when no writer holds its OS lock (`flock`, taken by the
/// writer before it writes and held until the temp name is gone), so a live write of
/// another process is never taken.
pub(super) fn open(folder: &Folder) -> io::Result<Vec<Stored>> {
    let listing = list(folder)?;
    for temp in &listing.temps {
        if disk::remove_dead_temp(temp) {
            tracing::info!(file = %temp.display(), "removed an unacknowledged queue file a crash left");
        }
    }
    for id in listing
        .bookkeeping
        .iter()
        .filter(|id| !listing.messages.contains(*id))
    {
        let path = folder.path(id, BOOKKEEPING);
        if fs::remove_file(&path).is_ok() {
            tracing::info!(file = %path.display(), "removed the bookkeeping of a message no longer queued");
        }
    }
    let mut entries = Vec::with_capacity(listing.messages.len());
    for id in &listing.messages {
        let mut stored = match folder.read_header(id) {
            Ok(Some(stored)) => stored,
            Ok(None) => continue,
            Err(Unreadable::Corrupt(why)) => {
                folder.set_aside(&folder.path(id, MESSAGE), &why);
                folder.set_aside(&folder.path(id, BOOKKEEPING), &why);
                continue;
            }
            Err(Unreadable::Io(e)) => {
                left_in_place(&folder.path(id, MESSAGE), &e);
                continue;
            }
        };
        match folder.read_bookkeeping(id) {
            Ok(Some(entry)) => stored.entry = entry,
            Ok(None) => {}
            Err(Unreadable::Corrupt(why)) => folder.set_aside(&folder.path(id, BOOKKEEPING), &why),
            Err(Unreadable::Io(e)) => {
                // Taken as accepted it might be tried again although it failed: skipped.
                left_in_place(&folder.path(id, BOOKKEEPING), &e);
                continue;
            }
        }
        entries.push(stored);
    }
    Ok(entries)
}

/// A file that could not be read for a reason other than its content (too many open
/// files, an I/O error): kept where it is, logged, read again at the next start or reload.
fn left_in_place(path: &std::path::Path, error: &io::Error) {
    tracing::warn!(file = %path.display(), %error, "a queue file cannot be read now; left in place and skipped until the next start");
}

/// The entries of the folder as they stand, touching nothing (files that cannot be read
/// are left for the next start, which sets them aside).
pub(super) fn load(folder: &Folder) -> io::Result<Vec<Stored>> {
    let listing = list(folder)?;
    let mut entries = Vec::with_capacity(listing.messages.len());
    for id in &listing.messages {
        match folder.read_entry(id) {
            Ok(Some(stored)) => entries.push(stored),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "a queued message cannot be read; skipped"),
        }
    }
    Ok(entries)
}

/// The `.bad` files of the folder (set aside at some open), for tests and the admin.
#[cfg(test)]
pub(super) fn set_aside(folder: &Folder) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&folder.dir)
        .map(|dir| {
            dir.flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(&format!(".{}", disk::BAD)))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
