//! Login abuse and per-source connection counts: what the relay remembers about client
//! addresses, in bounded memory.
//!
//! **Failed logins** ([`LoginGuard`]) are counted per source address and per mailbox name.
//! - After [`Policy::failures_before_delay`] failures from a source, each further login
//!   from it waits 1 s, 2 s, 4 s, ... up to [`Policy::max_delay`] *before* its password is
//!   checked, so that a client cannot learn the verdict early by giving up on a slow
//!   reply. The wait is a `tokio::time::sleep` in the session's task: no thread is held,
//!   and a waiting session costs only its task and its socket.
//! - A source with [`Policy::failures_before_block`] failures within [`Policy::window`]
//!   is refused for [`Policy::block_for`]: new connections get the protocol's "try again
//!   later" and are closed, logins on connections it still has open fail the same way.
//! - A mailbox name with more failures than one source may have (from many sources,
//!   together) makes every login for it wait the same way: a distributed guess at one
//!   password is slowed down too. Mailboxes are never blocked: that would lock the real
//!   user out.
//! - A successful login clears its source's count (not the mailbox's: the attack on it may
//!   go on).
//!
//! A failure counts only when the password is wrong or the mailbox unknown; token and
//! upstream trouble are not the client's doing. Loopback sources are not exempt: behind a
//! port forwarder that makes every client look like 127.0.0.1, one bad client slows all.
//!
//! **Sources.** An IPv4 address is a source; an IPv6 client counts by its /64 prefix (the
//! usual assignment to one site or host: anyone with one address has 2^64 of them); an
//! IPv4-mapped IPv6 address is its IPv4 address. See [`source_key`].
//!
//! **Memory.** Each table holds at most [`TRACKED_KEYS`] entries of a few dozen bytes;
//! mailbox names are kept as a keyed 64-bit hash, so a long user name costs nothing. When
//! a table is full, entries whose window has passed go first, then the least recently
//! active, blocked sources last. Counting windows are fixed: they start at a key's first
//! failure and end `window` later. The open-connection counts ([`SourceConnections`]) hold
//! an entry only per source with a connection open, so at most `max_connections` entries.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Most sources, and most mailbox names, whose failed logins are remembered (each table).
pub const TRACKED_KEYS: usize = 10_000;

/// The key a client address is counted under: IPv4 as it is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// When logins wait and when sources are refused; taken from `[limits]` at each use, so a
/// reload applies at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failures_before_delay: u32,
    pub max_delay: Duration,
    pub failures_before_block: u32,
    pub window: Duration,
    pub block_for: Duration,
}

impl Policy {
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            failures_before_delay: limits.login_failures_before_delay,
            max_delay: Duration::from_secs(limits.login_delay_max_secs),
            failures_before_block: limits.login_failures_before_block,
            window: Duration::from_secs(limits.login_failure_window_secs),
            block_for: Duration::from_secs(limits.login_block_secs),
        }
    }

    /// 0 below `threshold` failures, then 1 s, 2 s, 4 s, ... capped at `max_delay`.
    fn delay(&self, failures: u32, threshold: u32) -> Duration {
        match failures.checked_sub(threshold) {
            None => Duration::ZERO,
            Some(over) => Duration::from_secs(1u64 << over.min(32)).min(self.max_delay),
        }
    }

    /// A source's wait.
    pub fn source_delay(&self, failures: u32) -> Duration {
        self.delay(failures, self.failures_before_delay)
    }

    /// A mailbox's wait: only once it has more failures than one source may make.
    pub fn mailbox_delay(&self, failures: u32) -> Duration {
        self.delay(failures, self.failures_before_block.saturating_add(1))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_limits(&Limits::default())
    }
}

/// What one key's failures look like now.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// The first failure of the current counting window.
    window_start: Instant,
    /// Failures since `window_start`.
    failures: u32,
    blocked_until: Option<Instant>,
    /// The last failure, for eviction.
    last: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            failures: 0,
            blocked_until: None,
            last: now,
        }
    }

    /// Forgets a block that ended and a window that passed.
    fn settle(&mut self, policy: &Policy, now: Instant) {
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
            self.failures = 0;
        }
        if now.saturating_duration_since(self.window_start) >= policy.window {
            self.failures = 0;
        }
    }

    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
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
struct Table<K> {
    records: HashMap<K, Record>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy> Table<K> {
    fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The key's record, settled; `None` if there is none.
    fn get(&mut self, key: &K, policy: &Policy, now: Instant) -> Option<Record> {
        let record = self.records.get_mut(key)?;
        record.settle(policy, now);
        Some(*record)
    }

    /// The key's record, created (making room) if needed, settled.
    fn entry(&mut self, key: K, policy: &Policy, now: Instant) -> &mut Record {
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

    /// Counts one failure; returns the record after it.
    fn fail(&mut self, key: K, policy: &Policy, now: Instant) -> Record {
        let record = self.entry(key, policy, now);
        if record.failures == 0 {
            record.window_start = now;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        *record
    }
}

/// What a failed login led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The source's failures in its current window.
    pub source_failures: u32,
    /// This failure got the source refused (it was not before): log it, once.
    pub newly_blocked: bool,
}

/// Failed-login counts per source and per mailbox. Every method takes the time, so that
/// the policy is a pure function of the calls (and tests need no clock).
#[derive(Debug)]
pub struct LoginGuard {
    sources: Mutex<Table<IpAddr>>,
    mailboxes: Mutex<Table<u64>>,
    /// Keys the mailbox-name hash, so that nobody can aim collisions at a mailbox.
    hasher: RandomState,
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::with_capacity(TRACKED_KEYS)
    }
}

impl LoginGuard {
    /// Tables of `capacity` entries each.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            sources: Mutex::new(Table::new(capacity)),
            mailboxes: Mutex::new(Table::new(capacity)),
            hasher: RandomState::new(),
        }
    }

    fn mailbox_key(&self, user: &str) -> u64 {
        self.hasher.hash_one(user.trim().to_lowercase())
    }

    /// Whether `source` is refused now.
    pub fn is_blocked(&self, source: IpAddr, policy: &Policy, now: Instant) -> bool {
        lock(&self.sources)
            .get(&source_key(source), policy, now)
            .is_some_and(|r| r.blocked(now))
    }

    /// Whether `source` is refused or has failed logins in the current window (the relay
    /// then opens no upstream connection for it before it logs in).
    pub fn has_failures(&self, source: IpAddr, policy: &Policy, now: Instant) -> bool {
        lock(&self.sources)
            .get(&source_key(source), policy, now)
            .is_some_and(|r| r.failures > 0 || r.blocked(now))
    }

    /// How long a login from `source` for `user` waits before its password is checked.
    pub fn delay(&self, source: IpAddr, user: &str, policy: &Policy, now: Instant) -> Duration {
        let by_source = lock(&self.sources)
            .get(&source_key(source), policy, now)
            .map_or(0, |r| r.failures);
        let by_mailbox = lock(&self.mailboxes)
            .get(&self.mailbox_key(user), policy, now)
            .map_or(0, |r| r.failures);
        policy
            .source_delay(by_source)
            .max(policy.mailbox_delay(by_mailbox))
    }

    /// Counts a wrong password (or unknown mailbox) from `source` for `user`.
    pub fn failed(&self, source: IpAddr, user: &str, policy: &Policy, now: Instant) -> Failure {
        lock(&self.mailboxes).fail(self.mailbox_key(user), policy, now);
        let mut sources = lock(&self.sources);
        let record = sources.fail(source_key(source), policy, now);
        let newly_blocked = record.failures >= policy.failures_before_block && !record.blocked(now);
        if newly_blocked {
            let record = sources.entry(source_key(source), policy, now);
            record.blocked_until = Some(now + policy.block_for);
        }
        Failure {
            source_failures: record.failures,
            newly_blocked,
        }
    }

    /// A successful login from `source`: its count starts over.
    pub fn succeeded(&self, source: IpAddr) {
        lock(&self.sources).records.remove(&source_key(source));
    }

    /// Sources remembered now (for tests and metrics).
    pub fn tracked_sources(&self) -> usize {
        lock(&self.sources).records.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Open connections per source address.
#[derive(Debug, Default)]
pub struct SourceConnections {
    open: Mutex<HashMap<IpAddr, Open>>,
}

#[derive(Debug, Default)]
struct Open {
    count: usize,
    /// A connection over the limit was refused since the source last had none open (so
    /// that the refusal is logged once, not per connection).
    refused: bool,
}

/// Why a source may not open another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// The first refusal since the source last had no connection open.
    pub first: bool,
}

impl SourceConnections {
    /// Counts a new connection from `source` if it has fewer than `max` open.
    pub fn open(self: &Arc<Self>, source: IpAddr, max: usize) -> Result<SourceSlot, OverLimit> {
        let key = source_key(source);
        let mut open = lock(&self.open);
        let entry = open.entry(key).or_default();
        if entry.count >= max {
            let first = !std::mem::replace(&mut entry.refused, true);
            if entry.count == 0 {
                open.remove(&key);
            }
            return Err(OverLimit { first });
        }
        entry.count += 1;
        Ok(SourceSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `source` now.
    pub fn count(&self, source: IpAddr) -> usize {
        lock(&self.open)
            .get(&source_key(source))
            .map_or(0, |o| o.count)
    }

    /// Sources with a connection open now.
    pub fn sources(&self) -> usize {
        lock(&self.open).len()
    }
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<SourceConnections>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(entry) = open.get_mut(&self.key) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(source_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("::1")), ip("::"));
    }

    #[test]
    fn delays_grow_from_the_threshold_and_are_capped() {
        let p = Policy::default();
        let waits: Vec<u64> = (0..10).map(|f| p.source_delay(f).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(p.source_delay(u32::MAX), secs(16));
        // A mailbox waits only past what one source may do before it is refused.
        assert_eq!(p.mailbox_delay(10), Duration::ZERO);
        assert_eq!(p.mailbox_delay(11), secs(1));
        assert_eq!(p.mailbox_delay(14), secs(8));
    }

    #[test]
    fn a_source_waits_then_is_refused_and_comes_back_later() {
        let (guard, p, t0) = (LoginGuard::default(), Policy::default(), Instant::now());
        let attacker = ip("203.0.113.9");
        let mut refused_at = None;
        for n in 1..=10u32 {
            let now = t0 + secs(u64::from(n));
            assert!(!guard.is_blocked(attacker, &p, now));
            let wait = guard.delay(attacker, "alice@x.com", &p, now);
            assert_eq!(wait, p.source_delay(n - 1), "attempt {n}");
            let f = guard.failed(attacker, "alice@x.com", &p, now);
            assert_eq!(f.source_failures, n);
            assert_eq!(f.newly_blocked, n == 10, "attempt {n}");
            if f.newly_blocked {
                refused_at = Some(now);
            }
        }
        let at = refused_at.unwrap();
        assert!(guard.is_blocked(attacker, &p, at + secs(899)));
        // A failure while refused (a login already in flight) does not log again.
        assert!(
            !guard
                .failed(attacker, "alice@x.com", &p, at + secs(1))
                .newly_blocked
        );
        assert!(!guard.is_blocked(attacker, &p, at + secs(900)));
        // After the block the count starts over.
        let after = at + secs(901);
        assert_eq!(
            guard.delay(attacker, "bob@x.com", &p, after),
            Duration::ZERO
        );
        assert_eq!(
            guard
                .failed(attacker, "bob@x.com", &p, after)
                .source_failures,
            1
        );
    }

    #[test]
    fn other_sources_are_not_affected_and_a_success_clears_the_count() {
        let (guard, p, now) = (LoginGuard::default(), Policy::default(), Instant::now());
        let (typo, other) = (ip("198.51.100.1"), ip("198.51.100.2"));
        for _ in 0..5 {
            guard.failed(typo, "carol@x.com", &p, now);
        }
        assert_eq!(guard.delay(typo, "carol@x.com", &p, now), secs(4));
        assert_eq!(
            guard.delay(other, "carol@x.com", &p, now),
            Duration::ZERO,
            "five failures on a mailbox are one source's business"
        );
        assert!(!guard.is_blocked(other, &p, now));
        guard.succeeded(typo);
        assert_eq!(guard.delay(typo, "carol@x.com", &p, now), Duration::ZERO);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let (guard, p, t0) = (LoginGuard::default(), Policy::default(), Instant::now());
        let slow = ip("192.0.2.50");
        for n in 0..9 {
            guard.failed(slow, "a@x.com", &p, t0 + secs(n));
        }
        assert_eq!(guard.delay(slow, "a@x.com", &p, t0 + secs(599)), secs(16));
        let later = t0 + secs(600);
        assert_eq!(guard.delay(slow, "a@x.com", &p, later), Duration::ZERO);
        let f = guard.failed(slow, "a@x.com", &p, later);
        assert_eq!((f.source_failures, f.newly_blocked), (1, false));
    }

    #[test]
    fn a_mailbox_attacked_from_many_sources_makes_every_login_wait() {
        let (guard, p, now) = (LoginGuard::default(), Policy::default(), Instant::now());
        // 40 addresses, two guesses each: none of them is even delayed on its own.
        for i in 0..40u8 {
            let source = IpAddr::from([10, 0, 0, i]);
            guard.failed(source, "CEO@x.com", &p, now);
            guard.failed(source, "ceo@x.com ", &p, now);
        }
        let newcomer = ip("10.9.9.9");
        assert_eq!(guard.delay(newcomer, "ceo@x.com", &p, now), secs(16));
        assert_eq!(guard.delay(newcomer, "cfo@x.com", &p, now), Duration::ZERO);
        assert!(!guard.is_blocked(newcomer, &p, now));
    }

    #[test]
    fn ipv6_neighbours_share_a_count() {
        let (guard, p, now) = (LoginGuard::default(), Policy::default(), Instant::now());
        for i in 0..10u16 {
            let source = IpAddr::from([0x2001, 0xdb8, 0, 1, i, 0, 0, 1]);
            guard.failed(source, "a@x.com", &p, now);
        }
        assert!(guard.is_blocked(ip("2001:db8:0:1::42"), &p, now));
        assert!(!guard.is_blocked(ip("2001:db8:0:2::42"), &p, now));
    }

    #[test]
    fn tables_stay_bounded_and_keep_blocked_sources_longest() {
        let (guard, p, t0) = (
            LoginGuard::with_capacity(100),
            Policy::default(),
            Instant::now(),
        );
        let blocked = ip("192.0.2.1");
        for _ in 0..10 {
            guard.failed(blocked, "a@x.com", &p, t0);
        }
        assert!(guard.is_blocked(blocked, &p, t0));
        // A spray from 10,000 addresses with a fresh user name each.
        for i in 0..10_000u32 {
            let source = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            guard.failed(source, &format!("user{i}@x.com"), &p, t0 + secs(1));
        }
        assert!(guard.tracked_sources() <= 100);
        assert!(lock(&guard.mailboxes).records.len() <= 100);
        assert!(guard.is_blocked(blocked, &p, t0 + secs(2)), "evicted last");
    }

    #[test]
    fn stale_records_make_room_first() {
        let (guard, p, t0) = (
            LoginGuard::with_capacity(2),
            Policy::default(),
            Instant::now(),
        );
        let (old, recent, new) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        for _ in 0..5 {
            guard.failed(old, "a", &p, t0);
        }
        for _ in 0..5 {
            guard.failed(recent, "a", &p, t0 + secs(300));
        }
        // `old`'s window has passed by now; it goes, `recent` stays.
        guard.failed(new, "a", &p, t0 + secs(700));
        let now = t0 + secs(700);
        assert_eq!(guard.delay(recent, "b", &p, now), secs(4));
        assert_eq!(guard.tracked_sources(), 2);
    }

    #[test]
    fn connections_are_counted_per_source_and_released() {
        let table = Arc::new(SourceConnections::default());
        let a = ip("192.0.2.1");
        let slots: Vec<_> = (0..3).map(|_| table.open(a, 3).unwrap()).collect();
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: true });
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: false });
        let b = table.open(ip("192.0.2.2"), 3).unwrap();
        assert_eq!((table.count(a), table.sources()), (3, 2));
        drop(slots);
        drop(b);
        assert_eq!(
            table.sources(),
            0,
            "nothing is kept for a source with none open"
        );
        let again: Vec<_> = (0..3).map(|_| table.open(a, 3).unwrap()).collect();
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: true });
        drop(again);
        // IPv6 by /64.
        let _one = table.open(ip("2001:db8::1"), 1).unwrap();
        assert!(table.open(ip("2001:db8::2"), 1).is_err());
    }
}
