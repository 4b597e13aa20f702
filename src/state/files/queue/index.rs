//! The queue's index in memory: every entry (never a body) with its sealed size, the
//! bytes used and reserved by enqueues in progress, and this relay's claims.

use std::collections::{BTreeMap, HashMap};

use super::disk::Stored;
use crate::state::queue::{Entry, EntryState, MailboxDepth, QueueError, QueueId, QueueStats};

#[derive(Debug, Default)]
pub(super) struct Index {
    entries: BTreeMap<QueueId, Stored>,
    /// Claims of this relay: until when (Unix seconds).
    claims: HashMap<QueueId, u64>,
    /// The sealed sizes of `entries`.
    bytes: u64,
    /// The sealed sizes of enqueues being written.
    reserved: u64,
    /// The folder's change stamp the entries were read under.
    pub(super) stamp: Option<Vec<u8>>,
}

impl Index {
    /// The index of `entries`, read under `stamp`, keeping the claims of those still there.
    pub(super) fn reload(&mut self, entries: Vec<Stored>, stamp: Option<Vec<u8>>) {
        self.entries.clear();
        self.bytes = 0;
        for stored in entries {
            self.put(stored);
        }
        let kept = &self.entries;
        self.claims.retain(|id, _| kept.contains_key(id));
        self.stamp = stamp;
    }

    /// Takes `size` bytes for an enqueue, unless `max_bytes` would be passed.
    pub(super) fn reserve(&mut self, size: u64, max_bytes: u64) -> Result<(), QueueError> {
        let used = self.bytes + self.reserved;
        if used.saturating_add(size) > max_bytes {
            return Err(QueueError::Full {
                bytes: used,
                max_bytes,
            });
        }
        self.reserved += size;
        Ok(())
    }

    /// Gives back bytes [`Index::reserve`] took.
    pub(super) fn unreserve(&mut self, size: u64) {
        self.reserved = self.reserved.saturating_sub(size);
    }

    /// Adds or replaces an entry.
    pub(super) fn put(&mut self, stored: Stored) {
        self.bytes += stored.sealed_size;
        if let Some(old) = self.entries.insert(stored.entry.id.clone(), stored) {
            self.bytes = self.bytes.saturating_sub(old.sealed_size);
        }
    }

    /// Forgets an entry and its claim.
    pub(super) fn remove(&mut self, id: &QueueId) {
        self.claims.remove(id);
        if let Some(old) = self.entries.remove(id) {
            self.bytes = self.bytes.saturating_sub(old.sealed_size);
        }
    }

    /// Ends this relay's claim on `id`.
    pub(super) fn release(&mut self, id: &QueueId) {
        self.claims.remove(id);
    }

    fn claimed(&self, id: &QueueId, now: u64) -> bool {
        self.claims.get(id).is_some_and(|until| *until > now)
    }

    fn is_due(&self, entry: &Entry, now: u64) -> bool {
        entry.state == EntryState::Queued
            && entry.next_attempt_at <= now
            && !self.claimed(&entry.id, now)
    }

    /// Up to `limit` entries due at `now` and not claimed, the earliest due first.
    pub(super) fn due(&self, now: u64, limit: usize) -> Vec<Entry> {
        let mut due: Vec<&Entry> = self
            .entries
            .values()
            .map(|stored| &stored.entry)
            .filter(|entry| self.is_due(entry, now))
            .collect();
        due.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        due.into_iter().take(limit).cloned().collect()
    }

    /// Claims `id` until `until` if it is due at `now` and not claimed.
    pub(super) fn claim(&mut self, id: &QueueId, now: u64, until: u64) -> bool {
        let due = self
            .entries
            .get(id)
            .is_some_and(|stored| self.is_due(&stored.entry, now));
        if due {
            self.claims.insert(id.clone(), until);
        }
        due
    }

    /// Extends a live claim on `id` until `until`; whether there was one.
    pub(super) fn renew(&mut self, id: &QueueId, now: u64, until: u64) -> bool {
        match self.claims.get_mut(id) {
            Some(claim) if *claim > now => {
                *claim = until;
                true
            }
            _ => false,
        }
    }

    /// Depth per mailbox (by name) and bytes used.
    pub(super) fn stats(&self) -> QueueStats {
        let mut mailboxes: BTreeMap<&str, MailboxDepth> = BTreeMap::new();
        for Stored { entry, .. } in self.entries.values() {
            let depth = mailboxes
                .entry(&entry.envelope.mailbox)
                .or_insert_with(|| MailboxDepth {
                    mailbox: entry.envelope.mailbox.clone(),
                    ..MailboxDepth::default()
                });
            match entry.state {
                EntryState::Failed => depth.failed += 1,
                EntryState::Queued => {
                    depth.queued += 1;
                    let oldest = depth.oldest_received_at.get_or_insert(entry.received_at);
                    *oldest = (*oldest).min(entry.received_at);
                }
            }
        }
        QueueStats {
            mailboxes: mailboxes.into_values().collect(),
            bytes: self.bytes,
        }
    }
}
