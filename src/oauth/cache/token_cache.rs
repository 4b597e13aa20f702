//! The token cache itself: per token owner a [`Slot`], found without holding a map guard
//! across an `.await`; the login path's [`TokenCache::token_for`]; the refresher's
//! [`TokenCache::refresh_now`]; and what a refresh's outcome changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::fleet::{Failure, Fleet};
use super::redeem::{is_app_only, redeem};
use super::slot::{Cached, LAST_RESORT_VALIDITY, SMTP_MIN_VALIDITY, Slot, write_status};
use super::source::{Resource, TokenSource};
use crate::mailbox::Mailbox;
use crate::oauth::TokenError;
use crate::oauth::endpoint::TokenEndpoint;
use crate::oauth::health::{MailboxStatus, State};
use crate::secret::AccessToken;
use crate::state::files::leases::LocalLeases;
use crate::state::{MailboxStatuses, RefreshTokens, TokenLeases};

/// How long a lease is held beyond the token request's own bound: the database's writes
/// and a slow blocking pool.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Per-mailbox access tokens with single-flight refresh and health.
pub struct TokenCache<S = TokenEndpoint> {
    slots: DashMap<String, Arc<Slot>>,
    source: S,
    /// Where refreshes take their turn with the other relays of a fleet, and the refresh
    /// tokens are read and rotated.
    leases: Arc<dyn TokenLeases>,
    /// How long a refresh holds the mailbox's lease at most.
    lease_ttl: Duration,
    /// Where statuses are written; `None` writes none (unit tests).
    statuses: Option<Arc<dyn MailboxStatuses>>,
    /// Notified after every refresh, so the refresher can reschedule.
    changed: Arc<Notify>,
    /// Refresh attempts by outcome: ok, transient failure, refused (needs an admin),
    /// no token.
    outcomes: [AtomicU64; 4],
}

/// The outcome names of [`TokenCache::refresh_counts`], in order.
pub const REFRESH_OUTCOMES: [&str; 4] = ["ok", "transient_failure", "refused", "no_token"];

/// What the refresher needs to know about a mailbox to schedule it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleInfo {
    pub state: State,
    /// When the cached access token was obtained and when it expires.
    pub token: Option<(Instant, Instant)>,
    /// Transient failures in a row.
    pub failures: u32,
    /// When Entra asked to be left alone until (`Retry-After`).
    pub not_before: Option<Instant>,
}

impl<S: TokenSource> TokenCache<S> {
    /// The cache of a relay alone, its refresh tokens in `store`.
    pub fn new(
        source: S,
        store: Arc<dyn RefreshTokens>,
        statuses: Option<Arc<dyn MailboxStatuses>>,
    ) -> Self {
        Self {
            slots: DashMap::new(),
            source,
            leases: Arc::new(LocalLeases::new(store)),
            lease_ttl: LEASE_MARGIN,
            statuses,
            changed: Arc::new(Notify::new()),
            outcomes: Default::default(),
        }
    }

    /// This cache, taking turns with the other relays of a fleet through `leases` (the
    /// state's: `State::leases`); a lease is held at most the token request's bound
    /// `token_timeout` plus [`LEASE_MARGIN`].
    pub fn with_leases(mut self, leases: Arc<dyn TokenLeases>, token_timeout: Duration) -> Self {
        self.leases = leases;
        self.lease_ttl = token_timeout + LEASE_MARGIN;
        self
    }

    /// Refresh attempts so far, by outcome, in the order of [`REFRESH_OUTCOMES`].
    pub fn refresh_counts(&self) -> [u64; 4] {
        self.outcomes.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Notified after every refresh attempt.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    fn slot(&self, mailbox: &str) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(mailbox) {
            return slot.clone();
        }
        self.slots.entry(mailbox.to_owned()).or_default().clone()
    }

    fn existing(&self, mailbox: &str) -> Option<Arc<Slot>> {
        self.slots.get(mailbox).map(|s| s.clone())
    }

    /// An access token for `mailbox` (the token owner: callers resolve shared mailboxes
    /// first) with more than `min_validity` left.
    pub async fn access_token(
        &self,
        mailbox: &Mailbox,
        min_validity: Duration,
    ) -> Result<AccessToken, TokenError> {
        self.token_for(mailbox, Resource::Mail, min_validity).await
    }

    /// An access token of `mailbox` (a token owner) for `resource`, with more than
    /// `min_validity` left. Graph tokens are obtained when first needed and kept like mail
    /// tokens; only mail tokens make the mailbox's health and status file.
    pub async fn token_for(
        &self,
        mailbox: &Mailbox,
        resource: Resource,
        min_validity: Duration,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(&resource.key(&mailbox.address));
        if let Some(token) = slot.fresh(min_validity) {
            return Ok(token);
        }
        // While Entra is failing or a refresh is in flight, a token that is still valid
        // serves at once: a login never waits for the token endpoint while it has one
        // (the refresher keeps trying).
        if let Some(token) = slot.valid_for(LAST_RESORT_VALIDITY) {
            let failing = slot.health().failures > 0;
            if failing || slot.refresh.try_lock().is_err() {
                return Ok(token);
            }
        }
        let seen = slot.generation.load(Ordering::Acquire);
        let _flight = slot.refresh.lock().await;
        if let Some(token) = slot.fresh(min_validity) {
            return Ok(token);
        }
        let result = match shared_verdict(&slot, seen) {
            Some(e) => Err(e),
            None => {
                self.refresh_locked(&slot, mailbox, resource, min_validity)
                    .await
            }
        };
        match result {
            Ok(token) => Ok(token),
            // Entra is down, but the token we have still works for a while.
            Err(e) if !e.needs_admin() => slot.valid_for(LAST_RESORT_VALIDITY).ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// Refreshes `mailbox`'s access token now (the refresher's entry point), unless the
    /// token obtained at `seen` was meanwhile replaced by a login's refresh. Joins a
    /// refresh already in flight.
    pub async fn refresh_now(
        &self,
        mailbox: &Mailbox,
        seen: Option<Instant>,
    ) -> Result<(), TokenError> {
        let slot = self.slot(&mailbox.address);
        let _flight = slot.refresh.lock().await;
        let obtained = slot.token_times().map(|(obtained, _)| obtained);
        if obtained.is_some() && obtained != seen {
            return Ok(());
        }
        // Another relay's newer token is taken if logins can use it.
        self.refresh_locked(&slot, mailbox, Resource::Mail, SMTP_MIN_VALIDITY)
            .await
            .map(drop)
    }

    /// Forgets `token` if it is still the cached one (upstream refused it), so that the
    /// next request refreshes.
    pub fn invalidate(&self, mailbox: &str, token: &AccessToken) {
        let Some(slot) = self.existing(mailbox) else {
            return;
        };
        let mut current = slot
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| &c.token == token) {
            *current = None;
        }
    }

    /// [`TokenCache::invalidate`] for a token of `resource`.
    pub fn invalidate_for(&self, mailbox: &str, resource: Resource, token: &AccessToken) {
        self.invalidate(&resource.key(mailbox), token);
    }

    /// The mailbox's token status, as far as this process knows it.
    pub fn status(&self, mailbox: &str) -> MailboxStatus {
        self.existing(mailbox)
            .map(|slot| slot.health().status.clone())
            .unwrap_or_default()
    }

    /// What the refresher schedules by.
    pub fn schedule_info(&self, mailbox: &str) -> ScheduleInfo {
        let Some(slot) = self.existing(mailbox) else {
            return ScheduleInfo {
                state: State::Unknown,
                token: None,
                failures: 0,
                not_before: None,
            };
        };
        let token = slot.token_times();
        let health = slot.health();
        ScheduleInfo {
            state: health.status.state,
            token,
            failures: health.failures,
            not_before: health.not_before,
        }
    }

    /// One refresh, with the slot's refresh lock held: another relay's shared token with
    /// more than `min` left, or stored refresh token → Entra → rotated token persisted →
    /// access token cached. Records the outcome in the mailbox's health and its status
    /// file (waited for only when the refresh failed).
    async fn refresh_locked(
        &self,
        slot: &Arc<Slot>,
        mailbox: &Mailbox,
        resource: Resource,
        min: Duration,
    ) -> Result<AccessToken, TokenError> {
        let fleet = Fleet {
            leases: &self.leases,
            mailbox,
            key: resource.key(&mailbox.address),
            ttl: self.lease_ttl,
            min,
        };
        let result = redeem(&self.source, &fleet, slot, resource).await;
        record(slot, mailbox, resource, &result);
        if let Ok(cached) = &result {
            slot.store(cached.clone());
        }
        slot.generation.fetch_add(1, Ordering::Release);
        self.outcomes[outcome(&result)].fetch_add(1, Ordering::Relaxed);
        if resource == Resource::Mail {
            if let Some(statuses) = self.statuses.clone() {
                let written = write_status(slot, statuses, &mailbox.address);
                // A login that got its token does not wait for the status file; one that
                // failed is answered once the file says why (for `mailbox list`).
                if result.is_err() {
                    let _ = written.await;
                }
            }
            self.changed.notify_one();
        }
        result.map(|c| c.token).map_err(|(e, _)| e)
    }
}

/// The last refresh's failure, when a login that waited for the slot should share it
/// rather than ask Entra again at once: Entra asked for a pause (`Retry-After`) that is
/// not over, or a refresh finished (and failed) while the login waited (`seen` is the
/// slot's generation before the wait).
fn shared_verdict(slot: &Slot, seen: u64) -> Option<TokenError> {
    let health = slot.health();
    let error = health.last_error.clone()?;
    let paused = health.not_before.is_some_and(|t| t > Instant::now());
    (paused || slot.generation.load(Ordering::Acquire) != seen).then_some(error)
}

/// Moves the mailbox's health by a refresh's outcome; warns once when it enters
/// needs-reauth.
fn record(slot: &Slot, mailbox: &Mailbox, resource: Resource, result: &Result<Cached, Failure>) {
    let now = SystemTime::now();
    let mut health = slot.health();
    match result {
        Ok(cached) => {
            let left = cached.expires.saturating_duration_since(Instant::now());
            health.succeeded(now + left, now);
        }
        Err((error, digest)) => {
            if health.failed(error, digest.clone(), now) {
                warn_needs_admin(mailbox, resource, error);
            }
        }
    }
}

/// The one warning when Entra starts refusing a mailbox's token or credentials.
fn warn_needs_admin(mailbox: &Mailbox, resource: Resource, error: &TokenError) {
    if resource != Resource::Mail {
        tracing::warn!(mailbox = %mailbox.address, error = %error,
            "Entra refused a Microsoft Graph token: the app registration needs the Graph permission Mail.Send (Mail.Send.Shared for shared mailboxes; application Mail.Send for app-only) with consent");
    } else if is_app_only(mailbox) {
        tracing::warn!(mailbox = %mailbox.address, error = %error,
            "Entra refused the app-only mailbox's client credentials; check the app registration (secret or certificate, application permissions, admin consent)");
    } else {
        tracing::warn!(mailbox = %mailbox.address, error = %error,
            "mailbox needs re-authorization: `m365-relay mailbox authorize {}`", mailbox.address);
    }
}

/// The index in [`REFRESH_OUTCOMES`] of a refresh's outcome.
fn outcome(result: &Result<Cached, Failure>) -> usize {
    match result {
        Ok(_) => 0,
        Err((TokenError::NotAuthorized, _)) => 3,
        Err((e, _)) if e.needs_admin() => 2,
        Err(_) => 1,
    }
}
