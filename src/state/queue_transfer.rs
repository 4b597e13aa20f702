//! The outbound queue moved with a state (`m365-relay state export` and `state import`):
//! into a state folder in the files backend's layout (`queue/{id}.msg`, the body sealed for
//! `queue-message:{id}`; `queue/{id}.json`, the entry), and from one into the database.
//! Bodies stay sealed with the same state key: the purpose is the same in every backend.
//! Claims are not moved; a message is due again as it was, and its attempts, last reply
//! and delay notice are kept.

use std::io;
use std::path::{Path, PathBuf};

use crate::state::postgres::queue::{PgQueue, purpose};
use crate::state::private;
use crate::state::queue::{Entry, OutboundQueue, QueueId};
use crate::state::seal::StateKey;
use crate::state::snapshot::{QUEUE_DIR, TransferError};

/// The largest entry file read back (an envelope of many recipients).
const MAX_ENTRY_BYTES: u64 = 4 * 1024 * 1024;

/// Writes every message of `queue` into the state folder `dir` (being built) in the files
/// backend's layout: each body sealed for its id, then its entry. How many.
pub fn export_queue(
    queue: &dyn OutboundQueue,
    key: &StateKey,
    dir: &Path,
) -> Result<usize, TransferError> {
    let folder = dir.join(QUEUE_DIR);
    let entries = queue.entries()?;
    for entry in &entries {
        let body = queue.message(&entry.id)?;
        let sealed = key
            .seal_bytes(&purpose(&entry.id), &body)
            .map_err(|why| io_error(&folder, io::Error::other(why.to_string())))?;
        let json = serde_json::to_vec(entry).map_err(|e| io_error(&folder, e.into()))?;
        let (msg, meta) = files_of(&folder, &entry.id);
        private::write_private(&msg, &sealed).map_err(|e| io_error(&msg, e))?;
        private::write_private(&meta, &json).map_err(|e| io_error(&meta, e))?;
    }
    Ok(entries.len())
}

/// The entries of the state folder `dir`'s queue, each checked: it reads, and its body is
/// there and opens with `key`. Call it before writing anything, then [`import_queue`].
pub fn folder_queue(key: &StateKey, dir: &Path) -> Result<Vec<PathBuf>, TransferError> {
    let folder = dir.join(QUEUE_DIR);
    let mut found = Vec::new();
    match std::fs::read_dir(&folder) {
        Ok(listing) => {
            for item in listing {
                let path = item.map_err(|e| io_error(&folder, e))?.path();
                if path.extension().is_some_and(|x| x == "json") {
                    found.push(path);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_error(&folder, e)),
    }
    found.sort();
    for path in &found {
        read_message(key, &folder, path)?;
    }
    Ok(found)
}

/// Adds the messages of `entries` (from [`folder_queue`] of `dir`) to the database's
/// `queue`, their bodies as sealed; a message the database already holds is left as it is.
/// How many were added.
pub fn import_queue(
    queue: &PgQueue,
    key: &StateKey,
    dir: &Path,
    entries: &[PathBuf],
) -> Result<usize, TransferError> {
    let folder = dir.join(QUEUE_DIR);
    let mut added = 0;
    for path in entries {
        let (entry, sealed) = read_message(key, &folder, path)?;
        if queue.restore(&entry, sealed)? {
            added += 1;
        }
    }
    Ok(added)
}

/// The entry at `path` and its sealed body, checked to open with `key`.
fn read_message(
    key: &StateKey,
    folder: &Path,
    path: &Path,
) -> Result<(Entry, Vec<u8>), TransferError> {
    let bad = |why: String| io_error(path, io::Error::new(io::ErrorKind::InvalidData, why));
    let json = private::read_private(path, MAX_ENTRY_BYTES).map_err(|e| match e {
        private::PrivateRead::Io(e) => io_error(path, e),
        other => bad(format!("not readable as a queue entry ({other:?})")),
    })?;
    let entry: Entry =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not a queue entry: {e}")))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if QueueId::parse(stem).as_ref() != Some(&entry.id) {
        return Err(bad(format!("it holds the entry {}", entry.id)));
    }
    let (msg, _) = files_of(folder, &entry.id);
    let sealed = std::fs::read(&msg).map_err(|e| io_error(&msg, e))?;
    key.open_bytes(&purpose(&entry.id), &sealed)
        .map_err(|why| bad(format!("its body does not open with this key: {why}")))?;
    Ok((entry, sealed))
}

/// The body's and the entry's files of `id` in the queue folder.
fn files_of(folder: &Path, id: &QueueId) -> (PathBuf, PathBuf) {
    (
        folder.join(format!("{id}.msg")),
        folder.join(format!("{id}.json")),
    )
}

fn io_error(path: &Path, source: io::Error) -> TransferError {
    TransferError::Io {
        path: path.to_owned(),
        source,
    }
}
