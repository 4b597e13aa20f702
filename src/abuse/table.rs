//! A bounded table of failed-login counts, one [`Record`] per key (a source, a source and
//! mailbox pair, or a mailbox). Counting windows are fixed: they start at a key's first
//! failure and end `window` later. When the table is full, entries whose window has passed
//! go first, then the least recently active, blocked ones last.

use std::collections::HashMap;
use std::time::Instant;

use super::policy::Policy;

/// What one key's failures look like now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    /// The first failure of the current counting window.
    pub(super) window_start: Instant,
    /// Failures since `window_start`, the attempts still being checked included (they
    /// count from the moment they start).
    pub(super) failures: u32,
    /// Of `failures`, the attempts still being checked (sources only).
    pub(super) pending: u32,
    pub(super) blocked_until: Option<Instant>,
    /// The last failure, for eviction.
    pub(super) last: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            failures: 0,
            pending: 0,
            blocked_until: None,
            last: now,
        }
    }

    /// Forgets a block that ended and a window that passed (attempts in flight stay).
    fn settle(&mut self, policy: &Policy, now: Instant) {
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
            self.failures = self.pending;
        }
        if now.saturating_duration_since(self.window_start) >= policy.window {
            self.failures = self.pending;
            self.window_start = now;
        }
    }

    pub(super) fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
    }

    /// Failures whose verdict is in.
    pub(super) fn resolved(&self) -> u32 {
        self.failures.saturating_sub(self.pending)
    }

    /// Nothing left worth remembering.
    fn stale(&self, policy: &Policy, now: Instant) -> bool {
        let mut settled = *self;
        settled.settle(policy, now);
        settled.failures == 0 && settled.blocked_until.is_none()
    }
}

/// A bounded map from key to [`Record`].
#[derive(Debug)]
pub(super) struct Table<K> {
    pub(super) records: HashMap<K, Record>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy> Table<K> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The key's record, settled; `None` if there is none.
    pub(super) fn get(&mut self, key: &K, policy: &Policy, now: Instant) -> Option<Record> {
        let record = self.records.get_mut(key)?;
        record.settle(policy, now);
        Some(*record)
    }

    /// The key's failures now (0 if none).
    #[cfg(test)]
    pub(super) fn failures(&mut self, key: &K, policy: &Policy, now: Instant) -> u32 {
        self.get(key, policy, now).map_or(0, |r| r.failures)
    }

    /// The key's record, created (making room) if needed, settled.
    pub(super) fn entry(&mut self, key: K, policy: &Policy, now: Instant) -> &mut Record {
        if !self.records.contains_key(&key) && self.records.len() >= self.capacity {
            self.make_room(policy, now);
        }
        let record = self.records.entry(key).or_insert_with(|| Record::new(now));
        record.settle(policy, now);
        record
    }

    /// Drops stale records; if none was, the least recently active one, blocked ones last.
    fn make_room(&mut self, policy: &Policy, now: Instant) {
        self.records.retain(|_, r| !r.stale(policy, now));
        if self.records.len() < self.capacity {
            return;
        }
        let oldest = self
            .records
            .iter()
            .min_by_key(|(_, r)| (r.blocked(now), r.last))
            .map(|(k, _)| *k);
        if let Some(key) = oldest {
            self.records.remove(&key);
        }
    }

    /// Counts one failure (`pending`: an attempt whose verdict is not in yet); returns the
    /// record before it.
    pub(super) fn fail(&mut self, key: K, pending: bool, policy: &Policy, now: Instant) -> Record {
        let record = self.entry(key, policy, now);
        let before = *record;
        if record.failures == 0 {
            record.window_start = now;
        }
        record.failures = record.failures.saturating_add(1);
        record.pending += u32::from(pending);
        record.last = now;
        before
    }

    /// Raises the key's failures whose verdict is in to `resolved` (another count saw
    /// more: the fleet's); the record.
    pub(super) fn raise(
        &mut self,
        key: K,
        resolved: u32,
        policy: &Policy,
        now: Instant,
    ) -> &mut Record {
        let record = self.entry(key, policy, now);
        if record.resolved() < resolved {
            record.failures = resolved.saturating_add(record.pending);
            record.last = now;
        }
        record
    }

    /// Takes back `n` failures of the key (forgiven, or counted in advance and not due).
    pub(super) fn forgive(&mut self, key: &K, n: u32) {
        if let Some(record) = self.records.get_mut(key) {
            record.failures = record.failures.saturating_sub(n);
            if record.failures == 0 && record.blocked_until.is_none() {
                self.records.remove(key);
            }
        }
    }

    /// An attempt counted in advance has its verdict.
    pub(super) fn settle_pending(&mut self, key: &K) {
        if let Some(record) = self.records.get_mut(key) {
            record.pending = record.pending.saturating_sub(1);
        }
    }

    /// Removes the key's record; its failures.
    pub(super) fn remove(&mut self, key: &K) -> u32 {
        self.records.remove(key).map_or(0, |r| r.failures)
    }
}
