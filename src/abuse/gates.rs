//! Waiting lines for logins, one per key (a source, or a mailbox under attack): a fair
//! (FIFO) semaphore per key that exists only while someone holds or waits for it, so the
//! map holds at most one entry per waiting login plus a few stale ones it sweeps.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::keys::lock;

/// Entries above which a new line sweeps away the unused ones (a waiter that gave up
/// leaves its entry behind).
const SWEEP_ABOVE: usize = 1024;

/// The lines, by key.
#[derive(Debug)]
pub(super) struct Gates<K> {
    lines: Mutex<HashMap<K, Arc<Semaphore>>>,
}

impl<K> Default for Gates<K> {
    fn default() -> Self {
        Self {
            lines: Mutex::new(HashMap::new()),
        }
    }
}

/// A place in a line; dropping it lets the next one in (and forgets the line when
/// nobody else holds or waits for it).
#[derive(Debug)]
pub(super) struct Pass<'a, K: Hash + Eq + Copy> {
    gates: &'a Gates<K>,
    key: K,
    permit: Option<OwnedSemaphorePermit>,
}

impl<K: Hash + Eq + Copy> Drop for Pass<'_, K> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let line = permit.semaphore().clone();
        drop(permit);
        let mut lines = lock(&self.gates.lines);
        // The map's copy and `line`: nobody else holds or waits.
        if lines.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &line))
            && Arc::strong_count(&line) == 2
        {
            lines.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq + Copy> Gates<K> {
    /// The line of `key`, which lets `width` in at once (fixed when the line is made).
    fn line(&self, key: K, width: usize) -> Arc<Semaphore> {
        let mut lines = lock(&self.lines);
        if lines.len() > SWEEP_ABOVE {
            lines.retain(|_, line| Arc::strong_count(line) > 1);
        }
        lines
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(width.max(1))))
            .clone()
    }

    /// Waits for a place in `key`'s line; `None` only if the line was closed (it never is).
    pub(super) async fn enter(&self, key: K, width: usize) -> Option<Pass<'_, K>> {
        let permit = self.line(key, width).acquire_owned().await.ok()?;
        Some(Pass {
            gates: self,
            key,
            permit: Some(permit),
        })
    }

    /// Lines that exist now (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.lines).len()
    }
}
