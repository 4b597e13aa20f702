//! Login abuse and per-source connection counts: what the relay remembers about client
//! addresses, in bounded memory.
//!
//! **Failed logins** ([`LoginGuard`]) are counted per source address, per (source,
//! mailbox) pair and per mailbox name. An attempt counts as a failure **from the moment
//! its password check starts**; a correct password takes back what its own (source,
//! mailbox) pair had counted, and nothing else. So a client that guesses at one mailbox
//! and logs in to its own in between keeps its guesses on its record.
//! - After [`Policy::failures_before_delay`] failures from a source, each further login
//!   from it waits 1 s, 2 s, 4 s, ... up to [`Policy::max_delay`] *before* its password is
//!   checked, so that a client cannot learn the verdict early by giving up on a slow
//!   reply. The wait is a `tokio::time::sleep` in the session's task: no thread is held.
//! - **One line per source.** A source checks at most [`LOGINS_AT_ONCE_PER_SOURCE`]
//!   passwords at once (fewer than `failures_before_delay`, so that logins in parallel
//!   cannot skip a wait), the others wait their turn. Once it has a failure on record, its
//!   logins go one at a time: its waits add up instead of running side by side.
//! - A source with [`Policy::failures_before_block`] failures within [`Policy::window`]
//!   is refused for [`Policy::block_for`]: new connections get the protocol's "try again
//!   later" and are closed, logins on connections it still has open fail the same way.
//! - **A mailbox under attack** (more failures than one source may have, from many
//!   sources together) lets the sources that logged in to it successfully within
//!   [`recent::KNOWN_FOR`] in as usual; every other login for it waits in one line per
//!   mailbox, one at a time, each for the mailbox's wait: a distributed guesser gets one
//!   guess per wait, and its victim's usual client does not notice. Mailboxes are never
//!   blocked: that would lock the real user out.
//!
//! A failure is a wrong password or an unknown mailbox; token and upstream trouble come
//! after the password check and are not the client's doing. An attempt abandoned before
//! its verdict (the client left, the time ran out) counts as a failure. Loopback sources
//! are not exempt: behind a port forwarder that makes every client look like 127.0.0.1,
//! one bad client slows all.
//!
//! **Sources.** An IPv4 address is a source; an IPv6 client counts by its /64 prefix (the
//! usual assignment to one site or host: anyone with one address has 2^64 of them); an
//! IPv4-mapped IPv6 address is its IPv4 address. See [`source_key`].
//!
//! **Memory.** Each table holds at most [`TRACKED_KEYS`] entries of a few dozen bytes
//! ([`table`]); mailbox names are kept as a keyed 64-bit hash, so a long user name costs
//! nothing. Recent successful logins are bounded the same way ([`recent`]). The waiting
//! lines exist only while someone waits ([`gates`]). The open-connection counts
//! ([`SourceConnections`]) hold an entry only per source with a connection open.
//!
//! **Several relays.** With a state shared by several relays (the `postgres` backend),
//! failed logins are also counted for the whole fleet, and a block decided on one relay
//! applies on all ([`fleet`]); while the database cannot be reached, each relay counts
//! alone, as here.

mod connections;
mod fleet;
mod gates;
mod keys;
mod policy;
mod recent;
mod table;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use connections::{OverLimit, SourceConnections, SourceSlot};
pub use keys::source_key;
pub use policy::{LOGINS_AT_ONCE_PER_SOURCE, Policy};
pub use recent::KNOWN_FOR;

use gates::{Gates, Pass};
use keys::lock;
use recent::RecentLogins;
use table::Table;

use crate::state::FleetCounters;
use crate::state::counters::LoginKeys;

/// Most sources, pairs, and mailbox names whose failed logins are remembered (each table).
pub const TRACKED_KEYS: usize = 10_000;

/// What a failed login led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The source's failures in its current window.
    pub source_failures: u32,
    /// This failure got the source refused (it was not before): log it, once.
    pub newly_blocked: bool,
}

/// Why a login may not even be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The source failed too often and is refused for a while.
    Blocked,
}

/// Failed-login counts, recent successes, and the lines logins wait in.
#[derive(Debug)]
pub struct LoginGuard {
    sources: Mutex<Table<IpAddr>>,
    pairs: Mutex<Table<(IpAddr, u64)>>,
    mailboxes: Mutex<Table<u64>>,
    recent: Mutex<RecentLogins>,
    /// Per source: at most [`Policy::width`] password checks at once.
    source_lines: Gates<IpAddr>,
    /// Per source with failures on record: one login at a time.
    source_turns: Gates<IpAddr>,
    /// Per mailbox under attack: one login from a stranger at a time.
    mailbox_turns: Gates<u64>,
    /// Keys the mailbox-name hash, so that nobody can aim collisions at a mailbox.
    hasher: RandomState,
    /// The counts shared with the other relays of the state, if any.
    fleet: Option<Arc<dyn FleetCounters>>,
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::with_capacity(TRACKED_KEYS)
    }
}

/// `now - ago`, or `None` when that is before the clock's start (then: since ever).
fn since(now: Instant, ago: Duration) -> Option<Instant> {
    now.checked_sub(ago)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl LoginGuard {
    /// Failure tables of `capacity` entries each.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            sources: Mutex::new(Table::new(capacity)),
            pairs: Mutex::new(Table::new(capacity)),
            mailboxes: Mutex::new(Table::new(capacity)),
            recent: Mutex::new(RecentLogins::default()),
            source_lines: Gates::default(),
            source_turns: Gates::default(),
            mailbox_turns: Gates::default(),
            hasher: RandomState::new(),
            fleet: None,
        }
    }

    fn mailbox_key(&self, user: &str) -> u64 {
        self.hasher.hash_one(user.trim().to_lowercase())
    }

    /// Whether `source` is refused now (here, or by the fleet).
    pub fn is_blocked(&self, source: IpAddr, policy: &Policy, now: Instant) -> bool {
        let source = source_key(source);
        self.take_in_fleet(source, policy, now);
        lock(&self.sources)
            .get(&source, policy, now)
            .is_some_and(|r| r.blocked(now))
    }

    /// Whether a new login from `source` is refused: blocked, or as many failures on
    /// record as get it blocked.
    fn refuses(&self, source: IpAddr, policy: &Policy, now: Instant) -> bool {
        lock(&self.sources)
            .get(&source, policy, now)
            .is_some_and(|r| r.blocked(now) || r.resolved() >= policy.failures_before_block)
    }

    /// Whether `source` has failures whose verdict is in (its logins then go one by one).
    fn has_resolved_failures(&self, source: IpAddr, policy: &Policy) -> bool {
        lock(&self.sources)
            .get(&source, policy, now())
            .is_some_and(|r| r.resolved() > 0)
    }

    /// Whether `source` is refused or has failed logins in the current window.
    pub fn has_failures(&self, source: IpAddr, policy: &Policy, now: Instant) -> bool {
        let source = source_key(source);
        self.take_in_fleet(source, policy, now);
        lock(&self.sources)
            .get(&source, policy, now)
            .is_some_and(|r| r.failures > 0 || r.blocked(now))
    }

    /// Whether `source` logged in successfully (to any mailbox) within `within`.
    pub fn recently_logged_in(&self, source: IpAddr, within: Duration, now: Instant) -> bool {
        let key = source_key(source);
        lock(&self.recent).any_since(key, since(now, within))
    }

    /// Sources remembered now (for tests and metrics).
    pub fn tracked_sources(&self) -> usize {
        lock(&self.sources).records.len()
    }

    /// Starts a login of `user` from `source`: waits for its turn (its source's line, and
    /// a mailbox under attack's line if `source` is a stranger to it), counts it as a
    /// failure until [`Attempt::succeeded`], and tells how long it must still wait
    /// ([`Attempt::wait`]). The caller bounds all of it by the session's deadline.
    pub async fn begin(
        &self,
        source: IpAddr,
        user: &str,
        policy: &Policy,
    ) -> Result<Attempt<'_>, Refused> {
        let (source, mailbox) = (source_key(source), self.mailbox_key(user));
        self.take_in_fleet(source, policy, now());
        if self.refuses(source, policy, now()) {
            return Err(Refused::Blocked);
        }
        let (turn, place) = self.take_place(source, policy).await?;
        let now = now();
        if self.refuses(source, policy, now) {
            return Err(Refused::Blocked);
        }
        let known = {
            let recent = lock(&self.recent);
            let known_since = since(now, KNOWN_FOR);
            (
                recent.knows(source, mailbox, known_since),
                recent.any_since(source, known_since),
            )
        };
        let by_source = lock(&self.sources).fail(source, true, policy, now);
        lock(&self.pairs).fail((source, mailbox), false, policy, now);
        let by_mailbox = lock(&self.mailboxes).fail(mailbox, false, policy, now);
        let mut attempt = Attempt {
            guard: self,
            source,
            mailbox,
            policy: *policy,
            delay: policy.source_delay(by_source.failures),
            priority: known.1 || by_source.resolved() == 0,
            passes: (place, turn, None),
            done: false,
            keys: self.fleet_keys(source, user),
        };
        let mailbox_delay = policy.mailbox_delay(by_mailbox.failures);
        if !known.0 && !mailbox_delay.is_zero() {
            // A stranger to a mailbox under attack: one at a time, each waiting.
            let Some(pass) = self.mailbox_turns.enter(mailbox, 1).await else {
                return Err(Refused::Blocked);
            };
            attempt.passes.2 = Some(pass);
            attempt.delay = attempt.delay.max(mailbox_delay);
        }
        Ok(attempt)
    }

    /// A place in `source`'s line, and its turn if it has failures on record (taken before
    /// the place, so that the two are always taken in the same order).
    async fn take_place(
        &self,
        source: IpAddr,
        policy: &Policy,
    ) -> Result<(Option<Pass<'_, IpAddr>>, Pass<'_, IpAddr>), Refused> {
        let width = policy.width();
        let mut turn = None;
        if self.has_resolved_failures(source, policy) {
            turn = Some(
                self.source_turns
                    .enter(source, 1)
                    .await
                    .ok_or(Refused::Blocked)?,
            );
        }
        let mut place = self
            .source_lines
            .enter(source, width)
            .await
            .ok_or(Refused::Blocked)?;
        if turn.is_none() && self.has_resolved_failures(source, policy) {
            // It failed meanwhile: join the one-at-a-time line after all.
            drop(place);
            turn = Some(
                self.source_turns
                    .enter(source, 1)
                    .await
                    .ok_or(Refused::Blocked)?,
            );
            place = self
                .source_lines
                .enter(source, width)
                .await
                .ok_or(Refused::Blocked)?;
        }
        Ok((turn, place))
    }
}

/// One login's password check under the guard: counted as a failure from its start until
/// [`Attempt::succeeded`]; dropping it without a verdict leaves the failure counted.
#[derive(Debug)]
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    source: IpAddr,
    mailbox: u64,
    policy: Policy,
    delay: Duration,
    priority: bool,
    /// Held until the verdict: the source's line, its turn, the mailbox's turn.
    passes: (
        Pass<'a, IpAddr>,
        Option<Pass<'a, IpAddr>>,
        Option<Pass<'a, u64>>,
    ),
    done: bool,
    /// Its keys in the fleet's counts, when there is a fleet.
    keys: Option<LoginKeys>,
}

impl Attempt<'_> {
    /// How long to wait before checking the password.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits [`Attempt::delay`] (holding its places in line).
    pub async fn wait(&self) {
        tokio::time::sleep(self.delay).await;
    }

    /// Whether its password check may use the capacity kept for known clients: its source
    /// logged in recently, or has no failure on record.
    pub fn priority(&self) -> bool {
        self.priority
    }

    /// The password was right: its pair's failures are taken back (the source's count
    /// with them), and the pair is remembered as known.
    pub fn succeeded(mut self) {
        self.done = true;
        let guard = self.guard;
        let mut sources = lock(&guard.sources);
        sources.settle_pending(&self.source);
        let forgiven = lock(&guard.pairs).remove(&(self.source, self.mailbox));
        sources.forgive(&self.source, forgiven);
        drop(sources);
        lock(&guard.mailboxes).forgive(&self.mailbox, 1);
        lock(&guard.recent).record(self.source, self.mailbox, now());
        if let Some(keys) = &self.keys {
            // `forgiven` counts this attempt too.
            guard.succeed_in_fleet(keys, forgiven.saturating_sub(1));
        }
    }

    /// The password was wrong (or the mailbox unknown): the failure stays counted, here
    /// and in the fleet (whose counts this relay then takes in).
    pub async fn failed(mut self) -> Failure {
        self.done = true;
        let local = self.settle_failure();
        match self.keys.take() {
            Some(keys) => {
                let guard = self.guard;
                guard
                    .fail_in_fleet(&keys, self.mailbox, &self.policy, local)
                    .await
            }
            None => local,
        }
    }

    fn settle_failure(&self) -> Failure {
        let now = now();
        let mut sources = lock(&self.guard.sources);
        sources.settle_pending(&self.source);
        let policy = &self.policy;
        let record = sources.entry(self.source, policy, now);
        let newly_blocked =
            record.resolved() >= policy.failures_before_block && !record.blocked(now);
        if newly_blocked {
            record.blocked_until = Some(now + policy.block_for);
        }
        Failure {
            source_failures: record.failures,
            newly_blocked,
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.settle_failure();
            if let Some(keys) = &self.keys {
                self.guard.fail_in_fleet_later(keys, &self.policy);
            }
        }
    }
}
