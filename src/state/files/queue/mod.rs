//! The outbound queue in the state folder (`files` backend): `{state_dir}/queue/`, `0700`,
//! every file `0600`.
//!
//! - `{id}.msg`: the message as accepted, in ONE file, so that an enqueue costs one file
//!   `fsync` and one folder `fsync`: a line of plain JSON (`{"version":1,"sealed_size":N,
//!   "entry":{...}}`, the [`Entry`] as accepted: envelopes are not secret), then the body,
//!   sealed with the state key ([`StateKey::seal_bytes`], for
//!   [`crate::state::queue::message_purpose`]: the id and a digest of the envelope, the
//!   same in every backend, so that an envelope changed in the folder no longer opens it).
//!   It is written as a temp file, synced, hard-linked as `{id}.msg` (never replacing a
//!   message of the same id: a new id is drawn), and the folder synced before `enqueue`
//!   returns; concurrent enqueues share the folder sync ([`dirsync`]). When that sync
//!   fails, the file is removed and the folder synced again (best effort).
//! - `{id}.json`: the entry's bookkeeping once it changed (attempts, next attempt, last
//!   reply, failed, warned), plain JSON, rewritten the same durable way; it wins over the
//!   header. Delivered or removed: the `.msg`, then the `.json` are deleted.
//! - `.changed`: rewritten by `queue retry` and `queue remove`, so that the running relay
//!   sees another process's change (below).
//!
//! At open the folder is created if missing (the state folder synced after) and read into
//! an index of entries (never bodies, [`index`]). What a crash left is deleted and logged:
//! temp files no writer holds (an OS lock marks a live writer's, in any process) and
//! bookkeeping without its message. A corrupt file is renamed `.bad`, logged, and kept for
//! the admin; a file that cannot be read now (an I/O error) is left in place and logged;
//! never silently dropped.
//!
//! Claims live in memory: one relay per state folder. `due`, `claim` and `stats` answer
//! from the index; `entries` and `entry` always read the folder, so that a second process
//! (the CLI) sees what the relay accepted. The relay honours the CLI's `retry` and
//! `remove`: it reloads its index when `.changed` changed (looked at by `due` and `stats`),
//! `claim` re-reads the entry's files (a removed message is not claimed), and `settle`
//! re-reads them before rewriting (a removed message stays removed). `settle`, `retry`
//! and `remove` take the state folder's lock across their read-and-rewrite.

mod dirsync;
mod disk;
mod index;
mod scan;

#[cfg(test)]
mod durability_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use disk::{Folder, MESSAGE, Stored};
use index::Index;

use crate::datetime::unix;
use crate::state::error::{StateError, StoreError};
use crate::state::files::lock::{self, StateLock};
use crate::state::queue::{
    Entry, EntryState, Envelope, OutboundQueue, QueueError, QueueId, QueueStats, Settlement,
    message_purpose,
};
use crate::state::seal::StateKey;

/// Folder of the queue inside the state folder.
pub const QUEUE_DIR: &str = "queue";

/// The outbound queue of one state folder.
pub struct FileQueue {
    state_dir: PathBuf,
    folder: Folder,
    key: StateKey,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl fmt::Debug for FileQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileQueue")
            .field("dir", &self.folder.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    unix(SystemTime::now())
}

fn io_error(file: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        file: file.to_owned(),
        source,
    }
}

impl FileQueue {
    /// The queue of `state_dir`, sealing with `key`, holding at most `max_bytes` of sealed
    /// messages: its folder is created if missing (the state folder synced after), then
    /// read.
    pub fn open(state_dir: &Path, key: StateKey, max_bytes: u64) -> Result<Self, StateError> {
        let folder = Folder::new(state_dir.join(QUEUE_DIR));
        let folder_error = |source| StateError::Folder {
            dir: folder.dir.clone(),
            source,
        };
        folder.create().map_err(folder_error)?;
        let stamp = folder.stamp();
        let entries = scan::open(&folder).map_err(folder_error)?;
        let mut index = Index::default();
        index.reload(entries, stamp);
        Ok(Self {
            state_dir: state_dir.to_owned(),
            folder,
            key,
            max_bytes,
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index, read again first when another process changed entries.
    fn current_index(&self) -> Result<MutexGuard<'_, Index>, StoreError> {
        let stamp = self.folder.stamp();
        let mut index = self.index();
        if index.stamp != stamp {
            let entries = scan::load(&self.folder).map_err(io_error(&self.folder.dir))?;
            index.reload(entries, stamp);
        }
        Ok(index)
    }

    /// The state folder's lock, across a read-and-rewrite another process may race.
    fn lock(&self) -> Result<StateLock, StoreError> {
        StateLock::acquire(&self.state_dir).map_err(io_error(&lock::lock_path(&self.state_dir)))
    }

    /// Stores the message file of `entry`; `Err` with nothing left of it.
    fn store(&self, entry: &Entry, message: &[u8]) -> Result<(), QueueError> {
        let path = self.folder.path(&entry.id, MESSAGE);
        let sealed = self
            .key
            .seal_bytes(&message_purpose(&entry.id, &entry.envelope), message)
            .map_err(|why| io_error(&path)(io::Error::other(format!("cannot seal: {why}"))))?;
        let size = sealed.len() as u64;
        self.index().reserve(size, self.max_bytes)?;
        let written = self.folder.write_message(entry, &sealed);
        let mut index = self.index();
        index.unreserve(size);
        written.map_err(io_error(&path))?;
        index.put(Stored {
            entry: entry.clone(),
            sealed_size: size,
        });
        Ok(())
    }

    /// Adds `entry` as it stands (its id, attempts, state and last reply) with its body
    /// `message`, sealed, durably (`state export`, `state::queue_transfer`).
    pub fn restore(&self, entry: &Entry, message: &[u8]) -> Result<(), QueueError> {
        self.store(entry, message)
    }

    /// `entry` changed as `settlement` says.
    fn settled(entry: &mut Entry, settlement: &Settlement) {
        match settlement {
            Settlement::Deferred {
                next_attempt_at,
                reply,
            } => {
                entry.attempts = entry.attempts.saturating_add(1);
                entry.next_attempt_at = *next_attempt_at;
                entry.last_reply = Some(reply.clone());
            }
            Settlement::Failed { reply } => {
                entry.attempts = entry.attempts.saturating_add(1);
                entry.state = EntryState::Failed;
                entry.last_reply = Some(reply.clone());
            }
            Settlement::Warned => entry.warned = true,
            Settlement::Delivered | Settlement::Released => {}
        }
    }

    /// Rewrites the bookkeeping of `id` as `change` says, under the folder's lock (unless
    /// nothing changed); the entry as stored now, `None` when the message is gone.
    fn rewrite(
        &self,
        id: &QueueId,
        change: impl FnOnce(&mut Entry),
    ) -> Result<Option<Stored>, StoreError> {
        let Some(mut stored) = self.folder.read_entry(id)? else {
            return Ok(None);
        };
        let before = stored.entry.clone();
        change(&mut stored.entry);
        if stored.entry == before {
            return Ok(Some(stored));
        }
        let path = self.folder.path(id, disk::BOOKKEEPING);
        self.folder
            .write_bookkeeping(&stored.entry)
            .map_err(io_error(&path))?;
        Ok(Some(stored))
    }
}

impl OutboundQueue for FileQueue {
    fn enqueue(&self, envelope: &Envelope, message: &[u8]) -> Result<Entry, QueueError> {
        let now = now();
        let mut tries = 0;
        loop {
            let entry = Entry::accepted(QueueId::new(), envelope, message.len() as u64, now);
            match self.store(&entry, message) {
                // Two ids alike (the same millisecond, the same random bits): a new one.
                Err(QueueError::Storage(StoreError::Io { source, .. }))
                    if source.kind() == io::ErrorKind::AlreadyExists && tries < 3 =>
                {
                    tries += 1;
                }
                stored => return stored.map(|()| entry),
            }
        }
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self.current_index()?.due(now, limit))
    }

    fn claim(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        let stored = self.folder.read_entry(id)?;
        let mut index = self.index();
        let Some(stored) = stored else {
            index.remove(id);
            return Ok(false);
        };
        index.put(stored);
        Ok(index.claim(id, now(), until))
    }

    fn renew(&self, id: &QueueId, until: u64) -> Result<bool, StoreError> {
        Ok(self.index().renew(id, now(), until))
    }

    fn message(&self, entry: &Entry) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        let id = &entry.id;
        let path = self.folder.path(id, MESSAGE);
        let sealed = self.folder.read_sealed(id)?.ok_or_else(|| {
            io_error(&path)(io::Error::new(
                io::ErrorKind::NotFound,
                "the message is no longer queued",
            ))
        })?;
        self.key
            .open_bytes(&message_purpose(id, &entry.envelope), &sealed)
            .map_err(|why| {
                io_error(&path)(io::Error::other(format!(
                    "cannot open the queued message {id} for its envelope (changed since \
                     its acceptance, or another key): {why}"
                )))
            })
    }

    fn settle(&self, id: &QueueId, settlement: &Settlement) -> Result<(), StoreError> {
        let stored = match settlement {
            Settlement::Released => None,
            Settlement::Delivered => {
                let lock = self.lock()?;
                self.folder.delete(id).map_err(io_error(&self.folder.dir))?;
                drop(lock);
                self.folder.sync().map_err(io_error(&self.folder.dir))?;
                None
            }
            _ => {
                let _lock = self.lock()?;
                self.rewrite(id, |entry| Self::settled(entry, settlement))?
            }
        };
        let mut index = self.index();
        match stored {
            Some(stored) => index.put(stored),
            None if *settlement == Settlement::Released => {}
            None => index.remove(id),
        }
        index.release(id);
        Ok(())
    }

    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut entries: Vec<Entry> = scan::load(&self.folder)
            .map_err(io_error(&self.folder.dir))?
            .into_iter()
            .map(|stored| stored.entry)
            .collect();
        entries.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(entries)
    }

    fn entry(&self, id: &QueueId) -> Result<Option<Entry>, StoreError> {
        Ok(self.folder.read_entry(id)?.map(|stored| stored.entry))
    }

    fn retry(&self, id: Option<&QueueId>) -> Result<usize, StoreError> {
        let lock = self.lock()?;
        let ids: Vec<QueueId> = match id {
            Some(id) => vec![id.clone()],
            None => scan::list(&self.folder)
                .map_err(io_error(&self.folder.dir))?
                .messages
                .into_iter()
                .collect(),
        };
        let now = now();
        let mut retried = Vec::new();
        for id in &ids {
            let stored = self.rewrite(id, |entry| {
                entry.state = EntryState::Queued;
                entry.next_attempt_at = entry.next_attempt_at.min(now);
            })?;
            retried.extend(stored);
        }
        if !retried.is_empty() {
            self.folder
                .touch_stamp()
                .map_err(io_error(&self.folder.dir))?;
        }
        drop(lock);
        let count = retried.len();
        let mut index = self.index();
        retried.into_iter().for_each(|stored| index.put(stored));
        Ok(count)
    }

    fn remove(&self, id: &QueueId) -> Result<bool, StoreError> {
        let lock = self.lock()?;
        let existed = self.folder.delete(id).map_err(io_error(&self.folder.dir))?;
        if existed {
            self.folder
                .touch_stamp()
                .map_err(io_error(&self.folder.dir))?;
        }
        drop(lock);
        if existed {
            self.folder.sync().map_err(io_error(&self.folder.dir))?;
        }
        self.index().remove(id);
        Ok(existed)
    }

    fn stats(&self) -> Result<QueueStats, StoreError> {
        Ok(self.current_index()?.stats())
    }
}
