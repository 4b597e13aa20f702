//! Access tokens in memory, one slot per token owner, on the login hot path.
//!
//! A login takes the cached access token while it has more than the asked-for validity
//! left, without waiting for anything. Otherwise it joins the slot's single refresh: at most
//! one token request per mailbox is in flight, and logins that arrive meanwhile wait for
//! its result instead of sending their own; only a login that still has a valid token (see
//! [`LAST_RESORT_VALIDITY`]) takes that one at once rather than wait behind a refresh in
//! flight or a failing Entra. A refresh redeems the stored refresh token and
//! persists the rotated one *before* the new access token is handed out.
//!
//! Each slot also keeps the mailbox's [`health`](super::health): a refresh token Entra
//! refused puts the mailbox in needs-reauth, and logins then fail at once, without asking
//! Entra again, until a new refresh token is stored. When Entra is merely unavailable, a
//! cached token that is still valid keeps serving.
//!
//! An app-only mailbox has no refresh token: its tokens come from the client-credentials
//! grant with the app's secret or certificate, and its scopes are its cloud's `.default`.
//! When Entra refuses those credentials (`invalid_client`, missing consent, ...), the
//! mailbox is in needs-reauth too, and logins share that verdict without asking Entra for
//! [`APP_ONLY_RECHECK`]; after that the next login or the refresher asks again, since the
//! fix (consent, an uploaded certificate) is made in Entra, not in the relay.
//!
//! The map hands out `Arc<Slot>` clones; no map guard is ever held across an `.await`
//! (dashmap#79). Expiry is measured on tokio's clock, so tests can pause time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::endpoint::{App, TokenEndpoint};
use super::health::{MailboxStatus, State};
use super::{IdpError, TokenError, TokenGrant};
use crate::mailbox::{Credential, Mailbox, Registration};
use crate::secret::{AccessToken, RefreshToken};
use crate::state::{MailboxStatuses, RefreshTokens};

/// SMTP and POP3 sessions get tokens with at least this much life left.
pub const SMTP_MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// When Entra is unavailable, a cached token with at least this much life left (or a
/// tenth of its lifetime, if that is less) still serves logins.
pub const LAST_RESORT_VALIDITY: Duration = Duration::from_secs(60);
/// The longest `Retry-After` of Entra's that the cache and the refresher honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long an app-only mailbox whose credentials Entra refused fails at once, without
/// asking Entra: as long as the refresher waits before it looks at a mailbox in
/// needs-reauth again.
pub const APP_ONLY_RECHECK: Duration = super::refresher::RECHECK_REAUTH;

/// What an access token is for: the mail servers (IMAP, POP3, SMTP), or Microsoft Graph
/// (sending mail with `Mail.Send`, and `Mail.Send.Shared` for a delegate that sends as
/// shared mailboxes). One refresh token serves both; each has its own cache slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Mail,
    Graph { shared: bool },
}

impl Resource {
    /// The scopes a token for this resource is asked with, in `mailbox`'s cloud.
    fn scopes(self, app: &App<'_>, app_only: bool) -> &'static [&'static str] {
        match (self, app_only) {
            (Resource::Mail, false) => app.cloud.delegated_scopes(),
            (Resource::Mail, true) => app.cloud.app_only_scopes(),
            (Resource::Graph { shared }, false) => app.cloud.graph_delegated_scopes(shared),
            (Resource::Graph { .. }, true) => app.cloud.graph_app_only_scopes(),
        }
    }

    /// The cache key of `address`'s token for this resource.
    fn key(self, address: &str) -> String {
        match self {
            Resource::Mail => address.to_owned(),
            Resource::Graph { shared: false } => format!("{address}#graph"),
            Resource::Graph { shared: true } => format!("{address}#graph-shared"),
        }
    }
}

/// Where tokens come from: Entra's token endpoint, or a script in tests.
pub trait TokenSource: Send + Sync + 'static {
    /// The refresh-token grant.
    fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send;

    /// The client-credentials grant (app-only mailboxes).
    fn client_credentials(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send;
}

impl TokenSource for TokenEndpoint {
    fn refresh(
        &self,
        app: &App<'_>,
        refresh_token: &RefreshToken,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send {
        TokenEndpoint::refresh(self, app, refresh_token, scopes)
    }

    fn client_credentials(
        &self,
        app: &App<'_>,
        scopes: &[&str],
    ) -> impl Future<Output = Result<TokenGrant, IdpError>> + Send {
        TokenEndpoint::client_credentials(self, app, scopes)
    }
}

/// Per-mailbox access tokens with single-flight refresh and health.
pub struct TokenCache<S = TokenEndpoint> {
    slots: DashMap<String, Arc<Slot>>,
    source: S,
    store: Arc<dyn RefreshTokens>,
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

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Cached>>,
    /// Held while a refresh is in flight; waiters queue on it.
    refresh: tokio::sync::Mutex<()>,
    /// Bumped at the end of every refresh, success or not.
    generation: AtomicU64,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    status: MailboxStatus,
    last_error: Option<TokenError>,
    /// A digest of the refresh token (or, app-only, of the client credentials) Entra
    /// refused: until another one is stored, asking again is pointless.
    refused_token: Option<Vec<u8>>,
    /// When Entra refused it.
    refused_at: Option<Instant>,
    /// Transient failures in a row (for back-off).
    failures: u32,
    /// Entra's `Retry-After` on the last transient failure: no request before then.
    not_before: Option<Instant>,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    obtained: Instant,
    expires: Instant,
}

impl Cached {
    /// Whether the token has more than `min` of life left. A token whose whole lifetime
    /// is shorter than twice `min` (short-lived tenant policy) is used for half its life,
    /// so that not every login refreshes.
    fn fresh_for(&self, min: Duration, now: Instant) -> bool {
        let lifetime = self.expires.saturating_duration_since(self.obtained);
        let min = min.min(lifetime / 2);
        self.expires.saturating_duration_since(now) > min
    }
}

impl Slot {
    fn fresh(&self, min: Duration) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| c.fresh_for(min, Instant::now()))
            .map(|c| c.token.clone())
    }

    /// The cached token if it has at least `min` left (a tenth of its lifetime for tokens
    /// shorter than ten times `min`).
    fn valid_for(&self, min: Duration) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|c| {
                let lifetime = c.expires.saturating_duration_since(c.obtained);
                c.expires.saturating_duration_since(Instant::now()) >= min.min(lifetime / 10)
            })
            .map(|c| c.token.clone())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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
    pub fn new(
        source: S,
        store: Arc<dyn RefreshTokens>,
        statuses: Option<Arc<dyn MailboxStatuses>>,
    ) -> Self {
        Self {
            slots: DashMap::new(),
            source,
            store,
            statuses,
            changed: Arc::new(Notify::new()),
            outcomes: Default::default(),
        }
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
        let (last_error, not_before) = {
            let health = slot.health();
            (health.last_error.clone(), health.not_before)
        };
        let result = match last_error {
            // Entra asked for a pause (`Retry-After`): share its last answer until then.
            Some(e) if not_before.is_some_and(|t| t > Instant::now()) => Err(e),
            // A refresh finished while we waited for it, and failed: share its verdict
            // rather than asking the endpoint again at once.
            Some(e) if slot.generation.load(Ordering::Acquire) != seen => Err(e),
            _ => self.refresh_locked(&slot, mailbox, resource).await,
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
        let obtained = slot
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.obtained);
        if obtained.is_some() && obtained != seen {
            return Ok(());
        }
        self.refresh_locked(&slot, mailbox, Resource::Mail)
            .await
            .map(drop)
    }

    /// Forgets `token` if it is still the cached one (upstream refused it), so that the
    /// next request refreshes.
    pub fn invalidate(&self, mailbox: &str, token: &AccessToken) {
        let Some(slot) = self.existing(mailbox) else {
            return;
        };
        let mut current = slot.current.write().unwrap_or_else(PoisonError::into_inner);
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
        let token = slot
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| (c.obtained, c.expires));
        let health = slot.health();
        ScheduleInfo {
            state: health.status.state,
            token,
            failures: health.failures,
            not_before: health.not_before,
        }
    }

    /// One refresh, with the slot's refresh lock held: stored refresh token → Entra →
    /// rotated token persisted → access token cached. Records the outcome in the
    /// mailbox's health.
    async fn refresh_locked(
        &self,
        slot: &Slot,
        mailbox: &Mailbox,
        resource: Resource,
    ) -> Result<AccessToken, TokenError> {
        let result = self.redeem(slot, mailbox, resource).await;
        let now = SystemTime::now();
        let status = {
            let mut health = slot.health();
            match &result {
                Ok(cached) => {
                    let left = cached.expires.saturating_duration_since(Instant::now());
                    health.status.refreshed(now + left, now);
                    health.last_error = None;
                    health.refused_token = None;
                    health.refused_at = None;
                    health.failures = 0;
                    health.not_before = None;
                }
                Err((error, digest)) => {
                    let was = health.status.state;
                    health.status.failed(error, now);
                    health.last_error = Some(error.clone());
                    if error.needs_admin() {
                        health.refused_token = digest.clone();
                        health.refused_at = Some(Instant::now());
                        if was != State::NeedsReauth {
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
                    } else {
                        health.failures = health.failures.saturating_add(1);
                        health.not_before = match error {
                            TokenError::Idp(IdpError::Unavailable {
                                retry_after: Some(wait),
                                ..
                            }) => Some(Instant::now() + (*wait).min(MAX_RETRY_AFTER)),
                            _ => None,
                        };
                    }
                }
            }
            health.status.clone()
        };
        if let Ok(cached) = &result {
            *slot.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cached.clone());
        }
        slot.generation.fetch_add(1, Ordering::Release);
        let outcome = match &result {
            Ok(_) => 0,
            Err((TokenError::NotAuthorized, _)) => 3,
            Err((e, _)) if e.needs_admin() => 2,
            Err(_) => 1,
        };
        self.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        if resource == Resource::Mail {
            self.write_status(&mailbox.address, status).await;
            self.changed.notify_one();
        }
        result.map(|c| c.token).map_err(|(e, _)| e)
    }

    /// The refresh itself: the refresh-token grant, or for an app-only mailbox the
    /// client-credentials grant. On failure, also the digest of the refresh token (or
    /// client credentials) that failed.
    async fn redeem(
        &self,
        slot: &Slot,
        mailbox: &Mailbox,
        resource: Resource,
    ) -> Result<Cached, (TokenError, Option<Vec<u8>>)> {
        let Some(app) = App::of(&mailbox.registration) else {
            tracing::error!(mailbox = %mailbox.address,
                "asked for the token of a mailbox that takes its token from another; the caller must ask for its token owner");
            return Err((TokenError::UnknownMailbox, None));
        };
        if is_app_only(mailbox) {
            let scopes = resource.scopes(&app, true);
            return self.redeem_app_only(slot, mailbox, &app, scopes).await;
        }
        let (address, store) = (mailbox.address.clone(), self.store.clone());
        let refresh_token = blocking(move || store.load(&address))
            .await
            .map_err(|e| (e, None))?
            .ok_or((TokenError::NotAuthorized, None))?;
        // The refresh token and the app's credentials together: a new secret or
        // certificate (`mailbox credential`) is worth asking Entra again, as is a new token.
        let digest = [digest(&refresh_token), credential_digest(&app)].concat();
        {
            let health = slot.health();
            if health.refused_token.as_ref() == Some(&digest)
                && let Some(error) = &health.last_error
            {
                // Entra refused exactly this token already; wait for a new one.
                return Err((error.clone(), Some(digest)));
            }
        }
        let obtained = Instant::now();
        let grant = self
            .source
            .refresh(&app, &refresh_token, resource.scopes(&app, false))
            .await
            .map_err(|e| {
                tracing::warn!(mailbox = %mailbox.address, error = %e, "token refresh failed");
                (TokenError::Idp(e), Some(digest.clone()))
            })?;
        if let Some(rotated) = grant.refresh_token.clone() {
            let (address, store) = (mailbox.address.clone(), self.store.clone());
            // Only over the token redeemed: one imported meanwhile is newer and stays.
            let replaced = blocking(move || store.replace(&address, &refresh_token, &rotated))
                .await
                .map_err(|e| (e, None))?;
            if !replaced {
                tracing::info!(mailbox = %mailbox.address,
                    "a new refresh token was stored while this one was redeemed; it is kept");
            }
        }
        Ok(cached(mailbox, grant, obtained))
    }

    /// The client-credentials grant of an app-only mailbox. A refusal of the same
    /// credentials less than [`APP_ONLY_RECHECK`] ago is shared without asking Entra.
    async fn redeem_app_only(
        &self,
        slot: &Slot,
        mailbox: &Mailbox,
        app: &App<'_>,
        scopes: &[&str],
    ) -> Result<Cached, (TokenError, Option<Vec<u8>>)> {
        let digest = credential_digest(app);
        {
            let health = slot.health();
            if health.refused_token.as_ref() == Some(&digest)
                && health
                    .refused_at
                    .is_some_and(|at| at.elapsed() < APP_ONLY_RECHECK)
                && let Some(error) = &health.last_error
            {
                return Err((error.clone(), Some(digest)));
            }
        }
        let obtained = Instant::now();
        let grant = self
            .source
            .client_credentials(app, scopes)
            .await
            .map_err(|e| {
                tracing::warn!(mailbox = %mailbox.address, error = %e, "client credentials grant failed");
                (TokenError::Idp(e), Some(digest.clone()))
            })?;
        Ok(cached(mailbox, grant, obtained))
    }

    async fn write_status(&self, mailbox: &str, status: MailboxStatus) {
        let Some(statuses) = self.statuses.clone() else {
            return;
        };
        let mailbox = mailbox.to_owned();
        let written = tokio::task::spawn_blocking(move || statuses.write(&mailbox, &status)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "cannot write a mailbox status file");
        }
    }
}

/// The cache entry of `grant`, asked for at `obtained`.
fn cached(mailbox: &Mailbox, grant: TokenGrant, obtained: Instant) -> Cached {
    let lifetime = grant
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tracing::info!(mailbox = %mailbox.address, expires_in_secs = lifetime.as_secs(), "access token refreshed");
    Cached {
        token: grant.access_token,
        obtained,
        expires: obtained + lifetime,
    }
}

/// Whether `mailbox` gets its tokens with the client-credentials grant.
fn is_app_only(mailbox: &Mailbox) -> bool {
    matches!(
        mailbox.registration,
        Registration::App { app_only: true, .. }
    )
}

/// A digest of an app's client credentials (tenant, client, and the secret or the
/// certificate's thumbprint), to recognise them without keeping them.
fn credential_digest(app: &App<'_>) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [app.tenant, app.client_id, app.cloud.name()] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    match app.credential {
        Credential::None => ctx.update(b"public"),
        Credential::Secret { secret, .. } => ctx.update(secret.expose().as_bytes()),
        Credential::Certificate(c) => ctx.update(c.x5t_s256().as_bytes()),
    }
    ctx.finish().as_ref().to_vec()
}

/// A digest of a refresh token, to recognise it without keeping it.
fn digest(token: &RefreshToken) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.expose().as_bytes())
        .as_ref()
        .to_vec()
}

/// Runs a token-store call off the async threads.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, TokenError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| TokenError::Store(e.to_string())),
        Err(e) => Err(TokenError::Store(format!("token store task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests;
