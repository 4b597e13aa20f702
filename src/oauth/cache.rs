//! Access tokens in memory, one slot per mailbox, on the login hot path.
//!
//! A login takes the cached access token while it has more than the asked-for validity
//! left, without waiting for anything. Otherwise it joins the slot's single refresh: at most
//! one token request per mailbox is in flight, and logins that arrive meanwhile wait for
//! its result instead of sending their own. A refresh redeems the stored refresh token and
//! persists the rotated one *before* the new access token is handed out.
//!
//! The map hands out `Arc<Slot>` clones; no map guard is ever held across an `.await`
//! (dashmap#79).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;

use super::endpoint::{App, TokenEndpoint};
use super::store::TokenStore;
use super::{DELEGATED_SCOPES, TokenError};
use crate::mailbox::{Mailbox, Registration};
use crate::secret::AccessToken;

/// Access tokens are reused until this long before they expire (issue #2: 5 minutes).
pub const SMTP_MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);

/// Per-mailbox access tokens with single-flight refresh.
pub struct TokenCache {
    slots: DashMap<String, Arc<Slot>>,
    endpoint: TokenEndpoint,
    store: Arc<TokenStore>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Cached>>,
    /// Held while a refresh is in flight; waiters queue on it.
    refresh: tokio::sync::Mutex<Option<TokenError>>,
    /// Bumped at the end of every refresh, success or not.
    generation: AtomicU64,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    obtained: SystemTime,
    expires_at: SystemTime,
}

impl Cached {
    /// Whether the token has more than `min` of life left. A token whose whole lifetime
    /// is shorter than twice `min` (short-lived tenant policy) is used for half its life,
    /// so that not every login refreshes.
    fn fresh_for(&self, min: Duration, now: SystemTime) -> bool {
        let lifetime = self
            .expires_at
            .duration_since(self.obtained)
            .unwrap_or_default();
        let min = min.min(lifetime / 2);
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left > min)
    }
}

impl Slot {
    fn fresh(&self, min: Duration) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| c.fresh_for(min, SystemTime::now()))
            .map(|c| c.token.clone())
    }
}

impl TokenCache {
    pub fn new(endpoint: TokenEndpoint, store: Arc<TokenStore>) -> Self {
        Self {
            slots: DashMap::new(),
            endpoint,
            store,
        }
    }

    fn slot(&self, mailbox: &str) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(mailbox) {
            return slot.clone();
        }
        self.slots.entry(mailbox.to_owned()).or_default().clone()
    }

    /// An access token for `mailbox` with more than `min_validity` left (see
    /// [`Cached::fresh_for`] for short-lived tokens).
    ///
    /// `mailbox` must be the token owner from [`crate::mailbox::Registry::token_owner`]:
    /// a mailbox that takes its token from another one (a shared mailbox) has no refresh
    /// token of its own, and gets [`TokenError::UnknownMailbox`].
    pub async fn access_token(
        &self,
        mailbox: &Mailbox,
        min_validity: Duration,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(&mailbox.address);
        if let Some(token) = slot.fresh(min_validity) {
            return Ok(token);
        }
        let seen = slot.generation.load(Ordering::Acquire);
        let mut last_error = slot.refresh.lock().await;
        if let Some(token) = slot.fresh(min_validity) {
            return Ok(token);
        }
        if slot.generation.load(Ordering::Acquire) != seen {
            // A refresh finished while we waited for it. If it failed, share its verdict
            // rather than asking the endpoint again at once.
            if let Some(error) = last_error.as_ref() {
                return Err(error.clone());
            }
        }
        let result = self.refresh(mailbox).await;
        *last_error = result.as_ref().err().cloned();
        if let Ok(cached) = &result {
            *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Some(cached.clone());
        }
        slot.generation.fetch_add(1, Ordering::Release);
        result.map(|c| c.token)
    }

    /// Forgets `token` if it is still the cached one (upstream refused it), so that the
    /// next request refreshes.
    pub fn invalidate(&self, mailbox: &str, token: &AccessToken) {
        let Some(slot) = self.slots.get(mailbox).map(|s| s.clone()) else {
            return;
        };
        let mut current = slot.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| &c.token == token) {
            *current = None;
        }
    }

    /// When the cached access token of `mailbox` expires, if there is one.
    pub fn expires_at(&self, mailbox: &str) -> Option<SystemTime> {
        let slot = self.slots.get(mailbox).map(|s| s.clone())?;
        let current = slot.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|c| c.expires_at)
    }

    async fn refresh(&self, mailbox: &Mailbox) -> Result<Cached, TokenError> {
        let Registration::App {
            tenant,
            client_id,
            client_secret,
        } = &mailbox.registration
        else {
            tracing::error!(
                mailbox = %mailbox.address,
                "asked for the token of a mailbox that takes its token from another; \
                 the caller must ask for its token owner"
            );
            return Err(TokenError::UnknownMailbox);
        };
        let address = mailbox.address.clone();
        let store = self.store.clone();
        let refresh_token = blocking(move || store.load(&address))
            .await?
            .ok_or(TokenError::NotAuthorized)?;
        let app = App {
            tenant,
            client_id,
            client_secret: client_secret.as_ref(),
        };
        let obtained = SystemTime::now();
        let grant = self
            .endpoint
            .refresh(&app, &refresh_token, DELEGATED_SCOPES)
            .await
            .inspect_err(
                |e| tracing::warn!(mailbox = %mailbox.address, error = %e, "token refresh failed"),
            )?;
        if let Some(rotated) = grant.refresh_token {
            let (address, store) = (mailbox.address.clone(), self.store.clone());
            blocking(move || store.save(&address, &rotated)).await?;
        }
        tracing::info!(
            mailbox = %mailbox.address,
            expires_in_secs = grant.expires_at.duration_since(obtained).unwrap_or_default().as_secs(),
            "access token refreshed"
        );
        Ok(Cached {
            token: grant.access_token,
            obtained,
            expires_at: grant.expires_at,
        })
    }
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
mod tests {
    use super::*;

    fn cached(lifetime_secs: u64, age_secs: u64) -> (Cached, SystemTime) {
        let obtained = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = Cached {
            token: AccessToken::new("t"),
            obtained,
            expires_at: obtained + Duration::from_secs(lifetime_secs),
        };
        (c, obtained + Duration::from_secs(age_secs))
    }

    #[test]
    fn a_token_is_reused_until_five_minutes_before_expiry() {
        let (c, now) = cached(3599, 3599 - 301);
        assert!(c.fresh_for(SMTP_MIN_VALIDITY, now));
        let (c, now) = cached(3599, 3599 - 300);
        assert!(!c.fresh_for(SMTP_MIN_VALIDITY, now));
    }

    #[test]
    fn imap_sessions_get_tokens_with_ten_minutes_left() {
        let imap = crate::server::Protocol::Imap.min_token_validity();
        let (c, now) = cached(3599, 3599 - 601);
        assert!(c.fresh_for(imap, now));
        let (c, now) = cached(3599, 3599 - 599);
        assert!(
            !c.fresh_for(imap, now),
            "a token with < 10 min left is refreshed first"
        );
    }

    #[test]
    fn a_short_lived_token_is_used_for_half_its_life() {
        let (c, now) = cached(400, 100);
        assert!(c.fresh_for(SMTP_MIN_VALIDITY, now));
        let (c, now) = cached(400, 201);
        assert!(!c.fresh_for(SMTP_MIN_VALIDITY, now));
    }
}
