//! The outbound queue moved with a state (`m365-relay state export` and `state import`):
//! from the configured state's queue into the state folder being built (the files
//! backend's [`FileQueue`]), and from a state folder's queue into the database
//! ([`PgQueue::restore`]). Each message keeps its id, envelope, attempts, state, last reply
//! and delay notice; its body is sealed again with the same key for the same purpose
//! ([`message_purpose`]: the id and the envelope's digest, the same in every backend).
//! Claims are not moved.

use crate::state::files::FileQueue;
use crate::state::postgres::queue::PgQueue;
use crate::state::queue::{Entry, OutboundQueue, QueueError, message_purpose};
use crate::state::seal::StateKey;
use crate::state::snapshot::TransferError;

/// Writes every message of `queue` into the state folder `dir` (being built), in the files
/// backend's layout. How many.
pub fn export_queue(
    queue: &dyn OutboundQueue,
    key: &StateKey,
    dir: &std::path::Path,
) -> Result<usize, TransferError> {
    let target = FileQueue::open(dir, key.clone(), u64::MAX).map_err(|e| TransferError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let entries = queue.entries()?;
    for entry in &entries {
        let body = queue.message(entry)?;
        target.restore(entry, &body).map_err(|e| match e {
            QueueError::Storage(e) => TransferError::Token(e),
            full => TransferError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(full.to_string()),
            },
        })?;
    }
    Ok(entries.len())
}

/// The queue of the state folder `dir`, every body checked to open with the queue's key
/// (so that nothing is written when one does not): its entries. Then [`import_queue`].
pub fn folder_queue(folder: &FileQueue) -> Result<Vec<Entry>, TransferError> {
    let entries = folder.entries()?;
    for entry in &entries {
        folder.message(entry)?;
    }
    Ok(entries)
}

/// Adds `entries` of `folder` (from [`folder_queue`]) to the database's `queue`, sealed
/// with `key`; a message the database already holds is left as it is. How many were added.
pub fn import_queue(
    folder: &FileQueue,
    queue: &PgQueue,
    key: &StateKey,
    entries: &[Entry],
) -> Result<usize, TransferError> {
    let mut added = 0;
    for entry in entries {
        let body = folder.message(entry)?;
        let sealed = key
            .seal_bytes(&message_purpose(&entry.id, &entry.envelope), &body)
            .map_err(|why| {
                TransferError::Token(crate::state::error::StoreError::Seal {
                    mailbox: entry.envelope.mailbox.clone(),
                    why,
                })
            })?;
        if queue.restore(entry, sealed)? {
            added += 1;
        }
    }
    Ok(added)
}
