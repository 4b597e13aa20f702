//! Group commit of the queue folder's `fsync`: a rename (a message accepted, its
//! bookkeeping rewritten) is durable only once the folder itself is synced. Enqueues that
//! finish their renames at the same moment share one folder `fsync` instead of one each.
//!
//! A caller counts its rename, then waits until a sync that *started after* its rename has
//! succeeded: either it runs that sync itself (when none is running), or it waits for the
//! running one to end and looks again. A failed sync covers no one: each waiter tries
//! again itself, so every caller gets its own error or a sync that covers it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The folder's syncs, shared by every writer of one queue.
#[derive(Debug)]
pub(super) struct DirSync {
    dir: PathBuf,
    state: Mutex<Syncs>,
    ended: Condvar,
}

#[derive(Debug, Default)]
struct Syncs {
    /// Renames counted so far.
    renamed: u64,
    /// Every rename up to this one is durable.
    synced: u64,
    /// A sync is running.
    running: bool,
}

impl DirSync {
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            state: Mutex::default(),
            ended: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Syncs> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the folder was synced after the caller's rename (made before the call).
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut syncs = self.lock();
        syncs.renamed += 1;
        let mine = syncs.renamed;
        loop {
            if syncs.synced >= mine {
                return Ok(());
            }
            if syncs.running {
                syncs = self.ended.wait(syncs).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            syncs.running = true;
            let covers = syncs.renamed;
            drop(syncs);
            let result = File::open(&self.dir).and_then(|dir| dir.sync_all());
            syncs = self.lock();
            syncs.running = false;
            if result.is_ok() {
                syncs.synced = syncs.synced.max(covers);
            }
            self.ended.notify_all();
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_all_return_synced() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(DirSync::new(dir.path()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let sync = sync.clone();
                std::thread::spawn(move || (0..20).try_for_each(|_| sync.sync()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let syncs = sync.lock();
        assert_eq!(syncs.renamed, 320);
        assert_eq!(syncs.synced, 320);
        assert!(!syncs.running);
    }

    #[test]
    fn a_missing_folder_is_an_error_for_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let sync = DirSync::new(&dir.path().join("gone"));
        assert!(sync.sync().is_err());
        assert_eq!(sync.lock().synced, 0);
    }
}
