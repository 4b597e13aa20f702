//! The background refresher: one task that keeps every mailbox's tokens alive, so that
//! logins never wait for Entra and refresh tokens never expire from disuse.
//!
//! Contract:
//! - A schedule ordered by due time holds one entry per mailbox with its own app
//!   registration (shared mailboxes use their delegate's token). It sleeps until the
//!   earliest entry is due, until the token cache says a token changed (a login refreshed
//!   one), or for at most [`RESYNC`] to pick up mailboxes added or removed.
//! - An access token is refreshed at about 80% of its lifetime, and at least 10 minutes
//!   before it expires (for very short tokens: at half their life), with jitter so that
//!   many mailboxes do not refresh together. Every refresh token is used at least every
//!   [`KEEP_ALIVE`], so Microsoft's 90-day inactivity expiry (AADSTS700082) never bites.
//! - A transient failure is retried with exponential back-off ([`RETRY_FIRST`] doubling up
//!   to [`RETRY_MAX`]); meanwhile a still-valid access token keeps serving logins.
//! - A permanent failure (invalid_grant and the like) puts the mailbox in needs-reauth
//!   (the cache logs it once); the refresher then only checks every [`RECHECK_REAUTH`]
//!   whether an admin stored a new refresh token, without asking Entra.
//! - Due mailboxes are refreshed side by side, up to [`MAX_PARALLEL_REFRESHES`] at once:
//!   a token request that hangs for one mailbox (up to the token timeout) delays no other.
//! - It stops when the shutdown token is cancelled.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::cache::{ScheduleInfo, TokenCache, TokenSource};
use super::health::State;
use crate::mailbox::{Registration, Registry};

/// Longest sleep before the registry is looked at again.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Token requests the refresher has in flight at once, over all mailboxes.
pub const MAX_PARALLEL_REFRESHES: usize = 8;
/// Every refresh token is used at least this often.
pub const KEEP_ALIVE: Duration = Duration::from_secs(24 * 60 * 60);
/// First retry after a transient failure; it doubles with every failure in a row.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(15 * 60);
pub use super::health::RECHECK_REAUTH;
/// An access token is refreshed at least this long before it expires.
pub const MIN_LEAD: Duration = Duration::from_secs(10 * 60);

/// How long after obtaining a token of `lifetime` to refresh it: at 80%, but at least
/// [`MIN_LEAD`] before expiry, and for tokens too short for that, at half their life.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let lead = (lifetime / 5).max(MIN_LEAD).min(lifetime / 2);
    lifetime - lead
}

/// A client secret or certificate this close to expiry is warned about, daily.
pub const CREDENTIAL_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Logs (WARN) every app credential that expires within [`CREDENTIAL_WARNING`] or has
/// expired. Returns how many it warned about.
pub fn warn_of_expiring_credentials(registry: &Registry, now: std::time::SystemTime) -> usize {
    let now = crate::datetime::unix(now);
    let mut warned = 0;
    for mailbox in registry.iter() {
        let Some(expires) = mailbox.credential_expires() else {
            continue;
        };
        if expires > now + CREDENTIAL_WARNING.as_secs() {
            continue;
        }
        warned += 1;
        let days = expires.saturating_sub(now) / 86_400;
        if expires <= now {
            tracing::warn!(mailbox = %mailbox.address, "the app's client secret or certificate has expired: create a new one in Entra ID and register it with `m365-relay mailbox credential`");
        } else {
            tracing::warn!(mailbox = %mailbox.address, days_left = days, "the app's client secret or certificate expires soon: create a new one in Entra ID and register it with `m365-relay mailbox credential`");
        }
    }
    warned
}

/// The back-off after `failures` transient failures in a row.
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// Runs until `shutdown`. `registry` gives the current mailbox registry.
pub async fn run<S, R>(cache: Arc<TokenCache<S>>, registry: R, shutdown: CancellationToken)
where
    S: TokenSource,
    R: Fn() -> Arc<Registry> + Send,
{
    let changed = cache.changed();
    let mut schedule = Schedule::default();
    let mut warned: Option<Instant> = None;
    let mut in_flight = InFlight::default();
    loop {
        let registry = registry();
        schedule.sync(&registry, &cache);
        for address in &in_flight.busy {
            schedule.remove(address);
        }
        if warned.is_none_or(|at| at.elapsed() >= KEEP_ALIVE) {
            warn_of_expiring_credentials(&registry, std::time::SystemTime::now());
            warned = Some(Instant::now());
        }
        // With every slot in flight, only a refresh ending (or a resync) is worth waking for.
        let wake = match schedule.next() {
            Some(due) if !in_flight.full() => due.min(Instant::now() + RESYNC),
            _ => Instant::now() + RESYNC,
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                in_flight.tasks.abort_all();
                return;
            }
            () = sleep_until(wake) => {}
            () = changed.notified() => {
                schedule.reschedule_all(&cache);
                continue;
            }
            Some(done) = in_flight.tasks.join_next(), if !in_flight.tasks.is_empty() => {
                if let Ok(address) = done {
                    in_flight.busy.remove(&address);
                    let at = schedule.due_for(&address, cache.schedule_info(&address));
                    schedule.insert(address, at);
                }
                continue;
            }
        }
        in_flight.start_due(&mut schedule, &registry, &cache);
    }
}

/// The refreshes in flight. They run side by side (a hung token request for one mailbox
/// delays no other); a mailbox in flight is out of the schedule until its refresh ends.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<String>,
    busy: HashSet<String>,
}

impl InFlight {
    fn full(&self) -> bool {
        self.tasks.len() >= MAX_PARALLEL_REFRESHES
    }

    /// Starts the refreshes that are due, up to [`MAX_PARALLEL_REFRESHES`] in flight.
    fn start_due<S: TokenSource>(
        &mut self,
        schedule: &mut Schedule,
        registry: &Registry,
        cache: &Arc<TokenCache<S>>,
    ) {
        while !self.full()
            && let Some(address) = schedule.pop_due(Instant::now())
        {
            let Some(mailbox) = registry.get_arc(&address).cloned() else {
                continue;
            };
            let seen = cache
                .schedule_info(&address)
                .token
                .map(|(obtained, _)| obtained);
            let cache = cache.clone();
            self.busy.insert(address.clone());
            self.tasks.spawn(async move {
                if let Err(e) = cache.refresh_now(&mailbox, seen).await {
                    tracing::debug!(mailbox = %address, error = %e, "background refresh failed");
                }
                address
            });
        }
    }
}

/// Due times, ordered, with the reverse index to move an entry.
#[derive(Default)]
struct Schedule {
    order: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    jitter: std::hash::RandomState,
}

impl Schedule {
    fn next(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    fn insert(&mut self, address: String, at: Instant) {
        if let Some(old) = self.due.insert(address.clone(), at) {
            self.order.remove(&(old, address.clone()));
        }
        self.order.insert((at, address));
    }

    fn remove(&mut self, address: &str) {
        if let Some(at) = self.due.remove(address) {
            self.order.remove(&(at, address.to_owned()));
        }
    }

    fn pop_due(&mut self, now: Instant) -> Option<String> {
        let (at, _) = self.order.first()?;
        if *at > now {
            return None;
        }
        let (_, address) = self.order.pop_first()?;
        self.due.remove(&address);
        Some(address)
    }

    /// Adds mailboxes with their own registration that are new, drops removed ones.
    fn sync<S: TokenSource>(&mut self, registry: &Registry, cache: &TokenCache<S>) {
        let owners: Vec<&str> = registry
            .iter()
            .filter(|m| matches!(m.registration, Registration::App { .. }))
            .map(|m| m.address.as_str())
            .collect();
        let gone: Vec<String> = self
            .due
            .keys()
            .filter(|a| !owners.contains(&a.as_str()))
            .cloned()
            .collect();
        for address in gone {
            if let Some(at) = self.due.remove(&address) {
                self.order.remove(&(at, address));
            }
        }
        for address in owners {
            if !self.due.contains_key(address) {
                let at = self.due_for(address, cache.schedule_info(address));
                self.insert(address.to_owned(), at);
            }
        }
    }

    /// Recomputes every entry from the cache (a login may have refreshed a token).
    fn reschedule_all<S: TokenSource>(&mut self, cache: &TokenCache<S>) {
        let addresses: Vec<String> = self.due.keys().cloned().collect();
        for address in addresses {
            let info = cache.schedule_info(&address);
            if info.state == State::Ok {
                let at = self.due_for(&address, info);
                self.insert(address, at);
            }
        }
    }

    /// When `address` is next due, given what the cache knows; never sooner than a
    /// second from now, so that no state can make the refresher spin.
    fn due_for(&self, address: &str, info: ScheduleInfo) -> Instant {
        let now = Instant::now();
        let soonest = now + Duration::from_secs(1);
        let at = match (info.state, info.token) {
            (State::Ok, Some((obtained, expires))) => {
                let lifetime = expires.saturating_duration_since(obtained);
                let after = refresh_after(lifetime).min(KEEP_ALIVE);
                // Up to 5% earlier, so that mailboxes spread out, and so do the relays of
                // a fleet that adopted one shared token (the hasher's keys are random per
                // process): the first to fire refreshes, the others take its token.
                obtained + after - self.jitter(address, after / 20)
            }
            (State::Failing, _) => {
                let wait = retry_after(info.failures);
                let backed_off = now + wait + self.jitter(address, wait / 10);
                // Never before Entra's own `Retry-After`.
                info.not_before.map_or(backed_off, |t| backed_off.max(t))
            }
            (State::NeedsReauth | State::NoToken, _) => now + RECHECK_REAUTH,
            // Not refreshed yet: now, spread over a second.
            _ => now + self.jitter(address, Duration::from_secs(1)),
        };
        at.max(soonest)
    }

    /// A stable-per-run, pseudo-random duration up to `max` for `address`.
    fn jitter(&self, address: &str, max: Duration) -> Duration {
        let h = self.jitter.hash_one((address, Instant::now()));
        max.mul_f64((h % 10_000) as f64 / 10_000.0)
    }
}

#[cfg(test)]
mod tests;
